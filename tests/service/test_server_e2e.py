"""End to end: `chextriev serve` as a real uvicorn process on a free local port, driven over HTTP."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from tests.service.server_process import REPO_ROOT, REQUEST_TIMEOUT_SECONDS, Server, free_port, wait_until_ready
from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    OCCLUDED_VERSION,
    QUERY_CASE,
    SALIENCY_CASE,
    ServiceSetup,
    png_bytes,
    regions_json,
    service_setup,
)


def environment(setup: ServiceSetup) -> dict[str, str]:
    """The CHEXTRIEV_* variables of the setup's settings, on snapshot "v2"."""
    settings = setup.settings(active_version=OCCLUDED_VERSION)
    variables = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            variables[f"CHEXTRIEV_{name.upper()}"] = text
    return {**os.environ, **variables}


@pytest.fixture
def server(service_setup: ServiceSetup, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=environment(service_setup), stdout=log, stderr=subprocess.STDOUT)
    running = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        yield running
    finally:
        running.stop()


def test_served_search_saliency_and_health(server: Server, service_setup: ServiceSetup):
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        readiness = wait_until_ready(server, client)
        assert readiness["index_version"] == OCCLUDED_VERSION
        assert client.get("/healthz").json() == {"status": "ok"}

        pixels, boxes = service_setup.inputs[QUERY_CASE]
        found = client.post("/search", files={"image": ("query.png", png_bytes(pixels), "image/png")},
                            data={"regions": regions_json(boxes), "k": "3"})
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["results"][0]["case_id"] == QUERY_CASE and len(body["results"]) == 3

        params = {"query_id": body["query_id"], "case_id": SALIENCY_CASE}
        saliency = client.get("/saliency", params=params)
        assert saliency.status_code == 200, saliency.text
        assert saliency.json()["occlusion_source"] == "snapshot" and len(saliency.json()["regions"]) == 18
        picture = client.get("/saliency", params={**params, "format": "png"})
        assert picture.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(picture.content)).width == service_setup.inputs[SALIENCY_CASE][0].shape[1]

        unknown = client.get("/saliency", params={"query_id": "f" * 32, "case_id": SALIENCY_CASE})
        assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"
        assert 'route="/search"' in client.get("/metrics").text

    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    lines = server.log_lines()
    searches = [line for line in lines if line.get("logger") == "service.requests" and line["route"] == "/search"]
    assert [(line["status"], line["query_id"]) for line in searches] == [(200, body["query_id"])]
    messages = [line["message"] for line in lines]
    assert "service ready" in messages and "Application shutdown complete." in messages
