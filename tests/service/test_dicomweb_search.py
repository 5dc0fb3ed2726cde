"""`POST /search` by reference against a real Orthanc archive: the bundled radiographs stored as DICOM
with STOW-RS, fetched by the service with WADO-RS, searched exactly as the same file uploaded; the
404, 422, 503 and 504 answers; basic authentication read from a secret file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from service.dicomweb import ArchiveUnavailableError, DicomwebArchive
from service.problems import Problem
from service.reference_search import StudyReference, fetch_reference
from tests.service.orthanc import PASSWORD, USERNAME, OrthancServer, radiograph_dicom
from tests.service.service_setup import QUERY_CASE, ServiceSetup, regions_json, service_setup  # noqa: F401
from tests.service.test_api import assert_problem, running_service, search

TIMEOUT_S = 2.0


class Studies:
    """The studies stored in the archive: the query case as a frontal and a lateral instance; a study of
    lateral and non-radiograph instances only."""

    def __init__(self, setup: ServiceSetup):
        self.frontal_study, self.lateral_study = generate_uid(), generate_uid()
        image = setup.query_case.image_path
        self.frontal = radiograph_dicom(image, study_uid=self.frontal_study, view="PA")
        self.files = [radiograph_dicom(image, study_uid=self.frontal_study, view="LL"), self.frontal,
                      radiograph_dicom(image, study_uid=self.lateral_study, view="LL"),
                      radiograph_dicom(image, study_uid=self.lateral_study, view="", modality="OT")]


@pytest.fixture(scope="module")
def archive(orthanc_directory: Path) -> Iterator[OrthancServer]:
    server = OrthancServer(orthanc_directory / "search")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def studies(archive: OrthancServer, service_setup: ServiceSetup) -> Studies:
    stored = Studies(service_setup)
    archive.store(stored.files)
    return stored


@pytest.fixture(scope="module")
def client(service_setup: ServiceSetup, archive: OrthancServer, tmp_path_factory) -> Iterator[TestClient]:
    """The service reading the archive with basic authentication, its password in a secret file."""
    directory = tmp_path_factory.mktemp("dicomweb-client")
    password = directory / "dicomweb_password"
    password.write_text(PASSWORD + "\n")
    with running_service(service_setup, "sqlite", directory, dicomweb_url=archive.dicomweb_url,
                         dicomweb_timeout_s=TIMEOUT_S, dicomweb_username=USERNAME,
                         dicomweb_password_file=str(password), occlusion_warm_results=0) as test_client:
        yield test_client


def by_reference(client: TestClient, regions: str | None = None, **uids: str):
    return client.post("/search", data={**uids, **({} if regions is None else {"regions": regions})})


def test_a_study_is_searched_with_its_frontal_instance_exactly_as_the_uploaded_file(client, studies, service_setup):
    regions = regions_json(service_setup.inputs[QUERY_CASE][1])
    response = by_reference(client, regions, study_uid=studies.frontal_study)
    assert response.status_code == 200, response.text
    found = response.json()
    assert found["source"]["study_uid"] == studies.frontal_study
    assert (found["source"]["modality"], found["source"]["view_position"]) == ("CR", "PA")
    assert found["results"][0]["case_id"] == QUERY_CASE and found["timing_ms"]["fetch"] > 0
    uploaded = search(client, studies.frontal, regions).json()
    assert [(r["case_id"], r["score"]) for r in found["results"]] == [
        (r["case_id"], r["score"]) for r in uploaded["results"]]
    assert uploaded["source"] is None


def test_the_anatomy_model_places_the_regions_of_a_referenced_study(client, studies):
    response = by_reference(client, study_uid=studies.frontal_study)
    assert response.status_code == 200, response.text
    assert response.json()["regions_source"] == "model"


def test_an_instance_named_by_its_uids_is_searched_and_a_lateral_one_refused(client, studies):
    frontal = by_reference(client, study_uid=studies.frontal_study).json()["source"]
    named = by_reference(client, **{key: frontal[key] for key in ("study_uid", "series_uid", "sop_uid")})
    assert named.status_code == 200 and named.json()["source"] == frontal
    archive = client.app.state.service.settings
    lateral = next(instance for instance in DicomwebArchive.from_settings(archive).instances(studies.frontal_study)
                   if instance.view_position == "LL")
    refused = by_reference(client, study_uid=lateral.study_uid, series_uid=lateral.series_uid,
                           sop_uid=lateral.sop_uid)
    assert assert_problem(refused, 422, "image")["type"].endswith("unsupported-study")


def test_a_study_without_a_frontal_chest_instance_is_refused_naming_what_it_holds(client, studies):
    problem = assert_problem(by_reference(client, study_uid=studies.lateral_study), 422, "study_uid")
    assert problem["type"].endswith("no-frontal-chest-instance")
    assert "CR LL CHEST" in problem["detail"] and "OT - CHEST" in problem["detail"]


def test_unknown_uids_get_404(client, studies):
    assert_problem(by_reference(client, study_uid=generate_uid()), 404, "study_uid")
    frontal = by_reference(client, study_uid=studies.frontal_study).json()["source"]
    assert_problem(by_reference(client, study_uid=frontal["study_uid"], series_uid=frontal["series_uid"],
                                sop_uid=generate_uid()), 404, "study_uid")


@pytest.mark.parametrize("fields", [{}, {"study_uid": "1.2.3", "with_image": True}, {"sop_uid": "1.2.3"},
                                    {"study_uid": "1.2.3", "sop_uid": "1.2.3"}, {"study_uid": "1.2.x"}])
def test_exactly_one_of_an_image_and_a_study_must_be_named(client, studies, fields):
    fields = dict(fields)
    files = {"image": ("upload", studies.frontal, "application/dicom")} if fields.pop("with_image", False) else None
    response = client.post("/search", data=fields, files=files)
    assert_problem(response, 422)


def test_an_archive_that_is_down_gets_503_and_a_slow_one_504(client, studies, archive):
    archive.stop()
    try:
        down = by_reference(client, study_uid=studies.frontal_study)
    finally:
        archive.start()
    assert_problem(down, 503)["type"].endswith("archive-unavailable")
    assert down.headers["Retry-After"]
    archive.freeze()
    started = time.monotonic()
    try:
        slow = by_reference(client, study_uid=studies.frontal_study)
    finally:
        archive.thaw()
    assert assert_problem(slow, 504)["type"].endswith("archive-timeout")
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 5
    assert by_reference(client, study_uid=studies.frontal_study).status_code == 200


def test_credentials_are_required_and_come_from_the_configuration(archive, studies):
    refused = DicomwebArchive(archive.dicomweb_url, TIMEOUT_S, username=USERNAME, password="wrong")
    with pytest.raises(ArchiveUnavailableError, match="401"):
        refused.instances(studies.frontal_study)
    with pytest.raises(Problem) as no_archive:
        fetch_reference(None, StudyReference(studies.frontal_study))
    assert no_archive.value.status == 422
