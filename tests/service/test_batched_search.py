"""Searches through the real app with dynamic micro-batching on (CHEXTRIEV_BATCH_WAIT_MS): concurrent
searches answer exactly what each answers alone, and shutting the app down stops the batcher."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.service_setup import ServiceSetup, png_bytes, regions_json, service_setup  # noqa: F401
from tests.service.test_api import search, wait_until_ready

CONCURRENT_SEARCHES = 4


def _ranked(response) -> list[tuple[str, float]]:
    assert response.status_code == 200, response.text
    return [(result["case_id"], result["score"]) for result in response.json()["results"]]


def test_concurrent_searches_get_the_results_each_gets_alone(service_setup: ServiceSetup, caplog):
    settings = service_setup.settings(batch_wait_ms=500, batch_max_images=CONCURRENT_SEARCHES,
                                      max_concurrent_searches=CONCURRENT_SEARCHES)
    queries = [(png_bytes(pixels), regions_json(boxes))
               for pixels, boxes in list(service_setup.inputs.values())[:CONCURRENT_SEARCHES]]
    app = create_app(settings)
    with TestClient(app) as client:
        wait_until_ready(client)
        batcher = app.state.service.batcher
        assert batcher.batching
        alone = [_ranked(search(client, image, regions, k=5)) for image, regions in queries]
        caplog.set_level(logging.DEBUG, logger="service.embed_batcher")
        with ThreadPoolExecutor(CONCURRENT_SEARCHES) as pool:
            together = list(pool.map(lambda query: _ranked(search(client, *query, k=5)), queries))
    assert not batcher.batching  # the app's shutdown stopped the batching thread
    assert max(record.images for record in caplog.records if hasattr(record, "images")) > 1
    for own, shared in zip(alone, together, strict=True):
        assert [case_id for case_id, _ in shared] == [case_id for case_id, _ in own]
        assert [score for _, score in shared] == pytest.approx([score for _, score in own], abs=1e-5)
    assert len({ranking[0][0] for ranking in together}) > 1  # different queries, different answers
