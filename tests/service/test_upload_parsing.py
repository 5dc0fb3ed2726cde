"""A DICOM upload is parsed once on its way through `POST /search`: the service's study checks read the
header that decoding parsed, not the uploaded bytes again."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.dicom_factory import dicom_bytes
from tests.model.test_imaging import dicom_parses  # noqa: F401 - a fixture
from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    QUERY_CASE,
    ServiceSetup,
    regions_json,
    service_setup,
)

READY_TIMEOUT_SECONDS = 120


@pytest.fixture(scope="module")
def client(service_setup: ServiceSetup) -> Iterator[TestClient]:
    """The service on its default snapshot, ready to search."""
    with TestClient(create_app(service_setup.settings())) as test_client:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.05)
        yield test_client


def query_dicom(setup: ServiceSetup, view_position: str) -> bytes:
    """The query case's radiograph as a CR DICOM declaring `view_position`."""
    pixels, _ = setup.inputs[QUERY_CASE]
    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(np.round(pixels * 255).astype(np.uint8))))
    dataset.ViewPosition = view_position
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("view_position, status", [("PA", 200), ("LL", 422)])
def test_a_dicom_search_parses_the_upload_once(client, service_setup, dicom_parses, view_position, status):
    upload, (_, boxes) = query_dicom(service_setup, view_position), service_setup.inputs[QUERY_CASE]
    parses_before = len(dicom_parses)
    response = client.post("/search", files={"image": ("upload", upload, "application/octet-stream")},
                           data={"regions": regions_json(boxes)})
    assert response.status_code == status, response.text
    assert len(dicom_parses) == parses_before + 1
