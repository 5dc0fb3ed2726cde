"""`chextriev gallery import` and `chextriev cases import` against a real Orthanc archive: the bundled
radiographs stored as DICOM with STOW-RS, found with QIDO-RS (modality, dates, study limit), fetched
with WADO-RS, recorded with allow-listed metadata only; an archive stopped in the middle of an import,
then resumed; the manifest read by the trainer; the archive link of `/cases/{id}`; `--publish`."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid

from index_store.store import list_snapshots
from model.anatomy_model import AnatomyModel
from model.imaging import ImageLimits, decode_image
from service.app import create_app
from service.cli import main
from service.db.repository import get_cases
from service.db.session import make_engine, make_session_factory, session_scope
from service.dicomweb import ArchiveUnavailableError, DicomwebArchive
from service.gallery_import import LOG_NAME, MANIFEST_NAME, ImportRequest, import_gallery, read_import_log
from service.public_fields import PUBLIC_METADATA_KEYS
from service.settings import get_settings
from tests.dicom_factory import PATIENT_ID
from tests.service.orthanc import PASSWORD, USERNAME, OrthancServer, radiograph_dicom
from tests.service.service_setup import ServiceSetup, service_setup  # noqa: F401 - a fixture
from tests.service.test_api import wait_until_ready
from trainer.datasets.manifest import read_manifest
from trainer.demo.samples import load_sample_cases

SALT = "gallery-import-test-salt"
VIEWER = "http://viewer.example/study?uid={study_uid}"


class Archive:
    """Five studies of the bundled radiographs: four frontal CR studies in January 2024 (one with a lateral
    instance beside its frontal one), one DX study in 2023."""

    def __init__(self, directory: Path):
        self.server = OrthancServer(directory)
        samples = load_sample_cases()[:5]
        self.studies = [generate_uid() for _ in samples]
        self.files = [radiograph_dicom(sample.image_path, study_uid=study, accession_number=f"ACC{number}",
                                       study_date="20240115" if number < 4 else "20230601",
                                       modality="CR" if number < 4 else "DX")
                      for number, (sample, study) in enumerate(zip(samples, self.studies))]
        self.files.append(radiograph_dicom(samples[0].image_path, study_uid=self.studies[0], view="LL"))


@pytest.fixture
def archive(orthanc_directory: Path, tmp_path: Path) -> Iterator[Archive]:
    stored = Archive(tmp_path / "orthanc")
    stored.server.start()
    stored.server.store(stored.files)
    yield stored
    stored.server.stop()


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, archive: Archive) -> Iterator[str]:
    """The command line's settings: the archive with basic authentication, a fresh database, a salt."""
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    database_url = f"sqlite:///{tmp_path / 'chextriev.db'}"
    for name, value in {"DATABASE_URL": database_url, "DICOMWEB_USERNAME": USERNAME,
                        "DICOMWEB_PASSWORD_FILE": str(password), "PATIENT_SALT": SALT}.items():
        monkeypatch.setenv(f"CHEXTRIEV_{name}", value)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def stored_cases(database_url: str, out: Path) -> dict:
    """The database's cases of the import into `out`, by id."""
    log = read_import_log(out / LOG_NAME)
    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return get_cases(session, [entry["case"]["case_id"] for entry in log.values() if "case" in entry])
    finally:
        engine.dispose()


def write_findings(path: Path, archive: Archive) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["accession_number", "study_uid", "findings"])
        writer.writerow(["ACC0", "", "Pneumonia|Effusion"])
        writer.writerow(["", archive.studies[1], "Cardiomegaly"])
    return path


def test_import_finds_fetches_and_records_the_frontal_chest_instances(environment, archive, tmp_path, capsys):
    out = tmp_path / "out"
    findings = write_findings(tmp_path / "findings.csv", archive)
    assert main(["gallery", "import", "--dicomweb", archive.server.dicomweb_url, "--out", str(out),
                 "--findings", str(findings)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["studies"], report["instances"], report["imported"], report["inserted"]) == (5, 5, 5, 5)

    cases = stored_cases(environment, out)
    assert len(cases) == 5
    by_study = {case.study_uid: case for case in cases.values()}
    assert set(by_study) == set(archive.studies)
    assert by_study[archive.studies[0]].findings == ["Pneumonia", "Effusion"]
    assert by_study[archive.studies[1]].findings == ["Cardiomegaly"] and by_study[archive.studies[2]].findings == []
    for case in cases.values():
        assert set(case.metadata) <= PUBLIC_METADATA_KEYS and case.metadata["view"] == "PA"
        assert case.patient_hash is not None and PATIENT_ID not in json.dumps(case.metadata)
        assert case.sop_uid not in case.case_id and len(case.region_boxes) == 18
        image = Image.open(out / case.image_path)
        assert image.mode == "I;16" and image.size == (case.width, case.height)
    assert {case.metadata["modality"] for case in cases.values()} == {"CR", "DX"}

    dataset = read_manifest(out / MANIFEST_NAME)  # what `chextriev features --manifest` reads
    assert sorted(record.case_id for record in dataset.records) == sorted(cases)
    first = by_study[archive.studies[0]]
    record = next(record for record in dataset.records if record.case_id == first.case_id)
    assert set(record.labels) == {"Pneumonia", "Effusion"} and record.patient_id == PATIENT_ID
    assert np.allclose(record.anatomy.boxes_for(decode_image(record.image_path)), first.region_boxes, atol=1e-3)


def test_dates_modality_and_study_limit_narrow_the_import(environment, archive, tmp_path, capsys):
    arguments = ["gallery", "import", "--dicomweb", archive.server.dicomweb_url]
    assert main([*arguments, "--out", str(tmp_path / "january"), "--from-date", "20240101",
                 "--to-date", "20240131"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["imported"] == 4
    assert main([*arguments, "--out", str(tmp_path / "dx"), "--modality", "DX"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["imported"] == 1
    assert main([*arguments, "--out", str(tmp_path / "two"), "--study-limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["studies"] == 2


def test_an_archive_stopped_mid_import_leaves_what_was_imported_and_the_rerun_resumes(
        environment, archive, tmp_path, capsys):
    out = tmp_path / "out"
    settings = get_settings().model_copy(update={"dicomweb_url": archive.server.dicomweb_url})

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            archive.server.stop()

    with pytest.raises(ArchiveUnavailableError):
        import_gallery(DicomwebArchive.from_settings(settings), ImportRequest(out=out), AnatomyModel.load(),
                       ImageLimits(), progress=stop_after_two)
    assert len(read_import_log(out / LOG_NAME)) == 2 and not (out / MANIFEST_NAME).exists()
    command = ["gallery", "import", "--dicomweb", archive.server.dicomweb_url, "--out", str(out)]
    assert main(command) == 1
    assert "run the same command again to resume" in capsys.readouterr().err
    archive.server.start()
    assert main(command) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (report["already_imported"], report["imported"], report["cases"]) == (2, 3, 5)
    assert len(stored_cases(environment, out)) == 5


def test_cases_link_to_the_archive_and_cases_import_loads_a_manifest(environment, archive, tmp_path, capsys,
                                                                      monkeypatch, service_setup):
    out = tmp_path / "out"
    assert main(["gallery", "import", "--dicomweb", archive.server.dicomweb_url, "--out", str(out)]) == 0
    case = next(iter(stored_cases(environment, out).values()))
    settings = service_setup.settings(database_url=environment, image_root=str(out), study_url_template=VIEWER)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        shown = client.get(f"/cases/{case.case_id}").json()
        assert shown["archive_url"] == VIEWER.format(study_uid=case.study_uid)
        assert client.get(shown["thumbnail_url"]).status_code == 200

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("CHEXTRIEV_DATABASE_URL", fresh)
    get_settings.cache_clear()
    assert main(["cases", "import", "--manifest", str(out / MANIFEST_NAME)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["inserted"] == 5
    engine = make_engine(fresh)
    with session_scope(make_session_factory(engine)) as session:
        loaded = get_cases(session, [case.case_id])[case.case_id]
    engine.dispose()
    assert np.allclose(loaded.region_boxes, case.region_boxes, atol=1e-3)
    assert loaded.image_path == case.image_path and loaded.patient_hash == case.patient_hash
    assert loaded.metadata == {"view": "PA"} and loaded.study_uid is None  # no archive link


def test_publish_goes_on_to_a_published_snapshot(environment, archive, tmp_path, monkeypatch, service_setup):
    store = tmp_path / "index"
    monkeypatch.setenv("CHEXTRIEV_CHECKPOINT", str(service_setup.checkpoint))
    monkeypatch.setenv("CHEXTRIEV_INDEX_STORE", str(store))
    get_settings.cache_clear()
    assert main(["gallery", "import", "--dicomweb", archive.server.dicomweb_url, "--out", str(tmp_path / "out"),
                 "--publish", "--version", "pacs-1"]) == 0
    snapshot = next(entry for entry in list_snapshots(store) if entry.version == "pacs-1")
    assert snapshot.manifest.count == 5
    assert snapshot.manifest.model_fingerprint == service_setup.embedder.fingerprint
