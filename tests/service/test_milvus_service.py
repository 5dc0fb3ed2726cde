"""The service with CHEXTRIEV_INDEX_BACKEND=milvus (milvus-lite): the same routes serve search, patient
exclusion, saliency from the occlusion sidecar, activation and rollback, which move the alias."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from milvus_lite.server_manager import server_manager_instance

from index_store.milvus_backend import MilvusBackend, MilvusConfig
from index_store.milvus_layout import collection_name
from service.app import create_app
from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    OCCLUDED_VERSION,
    PLAIN_VERSION,
    QUERY_CASE,
    SALIENCY_CASE,
    ServiceSetup,
    png_bytes,
    regions_json,
    service_gallery,
    service_setup,
)
from tests.service.test_api import search, wait_until_ready

ADMIN = {"Authorization": "Bearer milvus-admin-token"}


@pytest.fixture(scope="module")
def client(service_setup: ServiceSetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A service on Milvus holding "v1" (no occlusions) and "v2" (occlusions in the sidecar), serving "v1"."""
    root = tmp_path_factory.mktemp("milvus-service")
    config = MilvusConfig(uri=str(root / "milvus.db"), sidecar_root=root / "sidecars")
    publisher = MilvusBackend(config)
    for version, with_occlusions in ((PLAIN_VERSION, False), (OCCLUDED_VERSION, True)):
        publisher.publish_gallery(service_gallery(service_setup, with_occlusions=with_occlusions),
                                  model_fingerprint=service_setup.embedder.fingerprint, version=version)
    publisher.close()
    settings = service_setup.settings(index_backend="milvus", milvus_uri=config.uri,
                                      index_store=str(config.sidecar_root), admin_token="milvus-admin-token",
                                      occlusion_warm_results=0)
    with TestClient(create_app(settings)) as test_client:
        wait_until_ready(test_client)
        yield test_client


def _query(client: TestClient, service_setup: ServiceSetup, **fields) -> dict:
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    response = search(client, png_bytes(pixels), regions_json(boxes), **fields)
    assert response.status_code == 200, response.text
    return response.json()


def _alias_target(client: TestClient) -> str | None:
    return client.app.state.service.index.backend.active_collection()


def test_search_and_patient_exclusion_are_served_by_milvus(client, service_setup):
    found = _query(client, service_setup)
    assert found["index_version"] == PLAIN_VERSION and _alias_target(client) == collection_name(PLAIN_VERSION)
    assert found["results"][0]["case_id"] == QUERY_CASE and found["results"][0]["score"] > 0.999
    patient = service_setup.query_case.patient_id
    returned = {r["case_id"] for r in _query(client, service_setup, exclude_patient_id=patient)["results"]}
    same_patient = {case.case_id for case in service_setup.cases if case.patient_id == patient}
    assert len(returned) == len(service_setup.cases) - 2 and not returned & same_patient


def test_activation_saliency_from_the_sidecar_and_rollback(client, service_setup):
    listing = client.get("/admin/index", headers=ADMIN).json()
    assert {(s["version"], s["factory"]) for s in listing["available"]} == {
        (PLAIN_VERSION, "milvus:FLAT"), (OCCLUDED_VERSION, "milvus:FLAT")}
    activated = client.post("/admin/index/activate", json={"version": OCCLUDED_VERSION}, headers=ADMIN)
    assert activated.status_code == 200, activated.text
    assert _alias_target(client) == collection_name(OCCLUDED_VERSION)
    found = _query(client, service_setup, k=1)
    assert found["index_version"] == OCCLUDED_VERSION
    saliency = client.get("/saliency", params={"query_id": found["query_id"], "case_id": SALIENCY_CASE}).json()
    assert saliency["occlusion_source"] == "snapshot" and len(saliency["regions"]) == 18

    rolled_back = client.post("/admin/index/rollback", headers=ADMIN)
    assert rolled_back.status_code == 200 and rolled_back.json()["active"]["version"] == PLAIN_VERSION
    assert _alias_target(client) == collection_name(PLAIN_VERSION)
    assert _query(client, service_setup)["index_version"] == PLAIN_VERSION


def test_an_incompatible_snapshot_is_refused_and_the_active_one_stays(client, service_setup, tmp_path: Path):
    backend = client.app.state.service.index.backend
    backend.publish_gallery(service_gallery(service_setup, with_occlusions=False), model_fingerprint="0" * 64,
                            version="other-model")
    refused = client.post("/admin/index/activate", json={"version": "other-model"}, headers=ADMIN)
    assert refused.status_code == 409, refused.text
    assert _alias_target(client) == collection_name(PLAIN_VERSION)
    assert _query(client, service_setup)["index_version"] == PLAIN_VERSION


def test_a_milvus_that_stops_answering_is_a_503(client, service_setup):  # last: it stops this module's Milvus
    server_manager_instance.release_server(client.app.state.service.index.backend.config.uri)
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    response = search(client, png_bytes(pixels), regions_json(boxes))
    assert response.status_code == 503 and response.json()["type"].endswith("index-unavailable"), response.text
