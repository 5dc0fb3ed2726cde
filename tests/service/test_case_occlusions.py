"""Occlusion embeddings of cases the snapshot lacks: computed once per case however many ask at once,
prepared in the background only while no search runs, and, through the app, ready for the results a
search returned before the user asks for their saliency."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.backbones import build_backbone
from model.config import ModelConfig
from model.embedder import Embedder
from model.network import CheXtriev
from model.saliency import OcclusionResult, occlusion_embeddings
from service.app import create_app
from service.case_occlusions import CaseOcclusions
from service.db.repository import CaseRecord
from tests.service.service_setup import QUERY_CASE, ServiceSetup, png_bytes, regions_json, service_setup  # noqa: F401
from tests.service.test_api import search, wait_until_ready
from trainer.demo.samples import sample_case_input

WAIT_SECONDS = 120


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    backbone = build_backbone("efficientnet_lite0")
    config = ModelConfig.for_variant("V6", input_dim=backbone.feature_dim, width=64, num_heads=4, head_dim=16,
                                     ff_dim=128)
    return Embedder(backbone, CheXtriev(config), "untrained")


@pytest.fixture(scope="module")
def cases(sample_cases) -> list[tuple[CaseRecord, np.ndarray]]:
    """Two bundled radiographs as gallery case records, with their pixels."""
    records = []
    for case in sample_cases[:2]:
        pixels, boxes = sample_case_input(case)
        record = CaseRecord(case_id=case.case_id, patient_hash=None, study_uid=None, series_uid=None, sop_uid=None,
                            findings=[case.finding], region_boxes=boxes.tolist(), image_path=case.image_path.name,
                            width=pixels.shape[1], height=pixels.shape[0], metadata={})
        records.append((record, pixels))
    return records


class CountingCompute:
    """The real occlusion computation of the cases' pixels, counting the calls per case."""

    def __init__(self, embedder: Embedder, cases):
        self.embedder = embedder
        self.pixels = {record.case_id: pixels for record, pixels in cases}
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, case: CaseRecord, before_pass) -> OcclusionResult:
        with self.lock:
            self.calls[case.case_id] = self.calls.get(case.case_id, 0) + 1
        return occlusion_embeddings(self.embedder, self.pixels[case.case_id],
                                    np.asarray(case.region_boxes, dtype=np.float32), before_pass=before_pass)


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_concurrent_requests_for_one_case_compute_it_once(embedder, cases):
    compute = CountingCompute(embedder, cases)
    occlusions = CaseOcclusions(compute, busy=lambda: False, capacity=4, ttl_seconds=600)
    record = cases[0][0]
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: occlusions.get(record), range(3)))
        assert compute.calls == {record.case_id: 1}
        assert sorted(source for _, source in answers) == ["cache", "cache", "recomputed"]
        for result, _ in answers:
            np.testing.assert_array_equal(result.embeddings, answers[0][0].embeddings)
        assert occlusions.get(record)[1] == "cache"
    finally:
        occlusions.close()


def test_background_work_waits_until_no_search_runs(embedder, cases):
    compute = CountingCompute(embedder, cases)
    searching = threading.Event()
    searching.set()
    occlusions = CaseOcclusions(compute, busy=searching.is_set, capacity=4, ttl_seconds=600)
    try:
        occlusions.warm(record for record, _ in cases)
        time.sleep(0.5)
        assert compute.calls == {}  # a search is in progress: nothing computed behind it
        searching.clear()
        _wait_until(lambda: all(occlusions.cached(record.case_id) for record, _ in cases), "both cases are cached")
        assert compute.calls == {record.case_id: 1 for record, _ in cases}
        assert occlusions.get(cases[1][0])[1] == "cache"
    finally:
        occlusions.close()


def test_a_case_that_fails_in_the_background_fails_again_when_asked(embedder, cases):
    def broken(case: CaseRecord, before_pass) -> OcclusionResult:
        raise FileNotFoundError(f"{case.image_path} is gone")

    occlusions = CaseOcclusions(broken, busy=lambda: False, capacity=4, ttl_seconds=600)
    try:
        occlusions.warm([cases[0][0]])
        time.sleep(0.3)
        with pytest.raises(FileNotFoundError, match="is gone"):
            occlusions.get(cases[0][0])
    finally:
        occlusions.close()


def test_a_search_prepares_the_saliency_of_its_first_results(service_setup: ServiceSetup):
    app = create_app(service_setup.settings(occlusion_warm_results=2))  # snapshot "v1": no occlusions
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    with TestClient(app) as client:
        wait_until_ready(client)
        found = search(client, png_bytes(pixels), regions_json(boxes), k=5)
        assert found.status_code == 200, found.text
        body = found.json()
        first, second, third = (result["case_id"] for result in body["results"][:3])
        occlusions = app.state.service.occlusions
        _wait_until(lambda: occlusions.cached(first) and occlusions.cached(second), "the first two are cached")
        assert not occlusions.cached(third)
        answers = {case_id: client.get("/saliency", params={"query_id": body["query_id"], "case_id": case_id}).json()
                   for case_id in (first, third)}
    assert answers[first]["occlusion_source"] == "cache" and answers[first]["timing_ms"]["recomputed_crops"] == 0
    assert answers[third]["occlusion_source"] == "recomputed"


def test_background_work_pauses_between_passes_when_a_search_arrives(embedder, cases):
    record, pixels = cases[0]
    searching = threading.Event()
    passes: list[int] = []

    def compute(case: CaseRecord, before_pass) -> OcclusionResult:
        def counted() -> None:
            passes.append(len(passes))
            if len(passes) == 2:
                searching.set()  # a search arrives in the middle of the case
            before_pass()

        return occlusion_embeddings(embedder, pixels, np.asarray(case.region_boxes, dtype=np.float32),
                                    before_pass=counted)

    occlusions = CaseOcclusions(compute, busy=searching.is_set, capacity=4, ttl_seconds=600)
    try:
        occlusions.warm([record])
        _wait_until(lambda: len(passes) >= 2, "the second pass is due")
        time.sleep(0.5)
        assert len(passes) == 2 and not occlusions.cached(record.case_id)  # held before its next pass
        searching.clear()
        _wait_until(lambda: occlusions.cached(record.case_id), "the case is cached")
        assert len(passes) > 2
    finally:
        occlusions.close()
