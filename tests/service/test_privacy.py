"""Privacy of what the API shows: a case whose metadata was taken from a DICOM header carrying a
patient, an institution, a physician, dates and UIDs answers with allow-listed fields only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.db.repository import IDENTIFYING_KEYS, get_case, upsert_cases
from service.db.session import make_engine, make_session_factory, session_scope
from service.public_fields import PUBLIC_METADATA_KEYS
from tests.dicom_factory import chest_dataset
from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    QUERY_CASE,
    ServiceSetup,
    png_bytes,
    regions_json,
    service_setup,
)
from tests.service.test_api import search, wait_until_ready

IDENTIFYING_TAGS = {"InstitutionName": "St Elsewhere General", "ReferringPhysicianName": "House^Gregory",
                    "StudyDate": "20240229", "AcquisitionDateTime": "20240229081500",
                    "StationName": "XRAY-ROOM-7", "OperatorsName": "Tech^Tina"}


def header_metadata(dataset) -> dict[str, str]:
    """Every text element of `dataset` by keyword, as a gallery builder might keep it; without the
    patient identifiers, which the case store refuses outright."""
    return {element.keyword: str(element.value) for element in dataset
            if element.keyword and element.VR in {"CS", "DA", "DT", "LO", "PN", "SH", "TM", "UI"}
            and element.keyword.lower() not in IDENTIFYING_KEYS}


@pytest.fixture
def client_with_dicom_case(service_setup: ServiceSetup):
    """A service whose query case was imported with the metadata of a DICOM header full of identifiers."""
    settings = service_setup.settings()
    dataset = chest_dataset(np.zeros((8, 8), dtype=np.uint8))
    for keyword, value in IDENTIFYING_TAGS.items():
        setattr(dataset, keyword, value)
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    engine = make_engine(settings.database_url)
    with session_scope(make_session_factory(engine)) as session:
        stored = get_case(session, QUERY_CASE)
        upsert_cases(session, [dataclasses.replace(
            stored, study_uid=dataset.StudyInstanceUID, series_uid=dataset.SeriesInstanceUID,
            sop_uid=dataset.SOPInstanceUID, metadata={**header_metadata(dataset), "view": "PA", "modality": "CR"})])
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        yield client, dataset


def test_a_case_imported_from_dicom_shows_none_of_its_identifying_tags(client_with_dicom_case, service_setup):
    client, dataset = client_with_dicom_case
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    found = search(client, png_bytes(pixels), regions_json(boxes), k=1)
    case = client.get(f"/cases/{QUERY_CASE}")
    assert found.json()["results"][0]["case_id"] == QUERY_CASE and case.status_code == 200
    identifying = [*IDENTIFYING_TAGS.values(), dataset.StudyInstanceUID, dataset.SeriesInstanceUID,
                   dataset.SOPInstanceUID, str(dataset.PatientName), dataset.PatientID]
    for response in (found, case):
        assert [value for value in identifying if value in response.text] == []
    assert found.json()["results"][0]["metadata"] == case.json()["metadata"] == {"view": "PA", "modality": "CR"}
    assert set(case.json()) >= {"case_id", "findings", "regions", "metadata"}


def test_the_openapi_schema_names_the_allow_list(client_with_dicom_case):
    client, _ = client_with_dicom_case
    schema = client.get("/openapi.json").json()["components"]["schemas"]["CaseResponse"]
    assert "study_uid" not in schema["properties"]
    assert all(key in schema["properties"]["metadata"]["description"] for key in PUBLIC_METADATA_KEYS)
