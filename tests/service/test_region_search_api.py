"""`POST /search` with `regions_of_interest` on the built demo: results ranked by the region score (checked
against the embedder and the snapshot's region file directly), patient exclusion, and bad values refused
with 422 (a snapshot without region vectors: tests/service/test_api.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index_store.snapshot import read_gallery
from model.catalogue import REGION_INDEX
from model.embedder import Embedder
from model.imaging import decode_image
from service.app import create_app
from service.commands.demo import demo_settings
from service.problems import TYPE_PREFIX
from trainer.demo.build import DemoPaths, read_build_record
from trainer.demo.samples import load_sample_cases

READY_TIMEOUT_S = 60
LOWER_ZONES = ["right lower lung zone", "left lower lung zone"]


@pytest.fixture(scope="module")
def demo(demo_dir: Path) -> tuple[DemoPaths, dict, str]:
    paths = DemoPaths(demo_dir)
    return paths, read_build_record(paths.record), paths.salt.read_text()


@pytest.fixture(scope="module")
def client(demo) -> TestClient:
    paths, record, salt = demo
    with TestClient(create_app(demo_settings(paths, salt, record))) as test_client:
        _wait_until_ready(test_client)
        yield test_client


def _search(client: TestClient, **fields: str):
    query = load_sample_cases()[1]
    return client.post("/search", files={"image": ("query.jpg", query.image_path.read_bytes(), "image/jpeg")},
                       data={"k": "5", **fields})


def _region_scores(demo, body: dict, regions: list[str]) -> dict[str, float]:
    """Every gallery case's region score for the query, from the embedder and the snapshot's region file."""
    paths, record, _ = demo
    boxes = np.asarray([entry["box"] for entry in body["regions"]], dtype=np.float32)
    nodes = Embedder.from_checkpoint(paths.checkpoint).embed(
        decode_image(load_sample_cases()[1].image_path).pixels, boxes).nodes[0]
    gallery, _ = read_gallery(paths.index_store / record["snapshot_version"])
    indices = [REGION_INDEX[name] for name in regions]
    scores = np.mean([np.asarray(gallery.region_embeddings[:, r]) @ nodes[r] for r in indices], axis=0)
    return dict(zip(gallery.case_ids, scores.tolist(), strict=True))


def test_region_search_ranks_by_the_regions_of_interest(client: TestClient, demo) -> None:
    response = _search(client, regions_of_interest=json.dumps(LOWER_ZONES))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["regions_of_interest"] == LOWER_ZONES
    query_case = load_sample_cases()[1].case_id
    assert body["results"][0]["case_id"] == query_case  # a gallery image still finds itself first
    expected = _region_scores(demo, body, LOWER_ZONES)
    sixth_best = sorted(expected.values(), reverse=True)[5]
    returned = [(result["case_id"], result["score"]) for result in body["results"]]
    assert [score for _, score in returned] == sorted((score for _, score in returned), reverse=True)
    for case_id, score in returned:
        assert score == pytest.approx(expected[case_id], abs=1e-3)
        assert score >= sixth_best - 1e-3  # the five best region scores, none left out
    whole = _search(client).json()
    assert whole["regions_of_interest"] is None
    assert [r["score"] for r in whole["results"]] != [score for _, score in returned]


def test_region_search_excludes_the_patient(client: TestClient) -> None:
    query = load_sample_cases()[1]
    response = _search(client, regions_of_interest=json.dumps(["right lung"]), exclude_patient_id=query.patient_id)
    assert response.status_code == 200, response.text
    assert query.case_id not in {result["case_id"] for result in response.json()["results"]}


@pytest.mark.parametrize(("value", "named"), [
    ("[right lung", "not valid JSON"),
    ('"right lung"', "JSON list"),
    ("[]", "JSON list"),
    ('["right lung", "spleen"]', '"spleen"'),
    ('["right lung", 7]', "7"),
    ('["right lung", "right lung"]', 'repeats the region "right lung"'),
])
def test_bad_regions_of_interest_are_refused(client: TestClient, value: str, named: str) -> None:
    response = _search(client, regions_of_interest=value)
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == TYPE_PREFIX + "invalid-regions-of-interest"
    assert any(entry["field"] == "regions_of_interest" and named in entry["problem"] for entry in body["errors"])


def _wait_until_ready(client: TestClient) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.2)
