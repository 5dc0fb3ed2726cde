"""End to end: `chextriev serve` as a real uvicorn process on a free local port, driven over HTTP."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    OCCLUDED_VERSION,
    QUERY_CASE,
    SALIENCY_CASE,
    ServiceSetup,
    png_bytes,
    regions_json,
    service_setup,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 120
REQUEST_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30


@dataclass
class Server:
    """A running `chextriev serve` process and where it listens and logs."""

    process: subprocess.Popen
    base_url: str
    log_path: Path

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited in time; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        return self.process.returncode

    def log_lines(self) -> list[dict]:
        """The JSON log lines the server wrote."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def wait_until_ready(server: Server, client: httpx.Client) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log_path.read_text()
        try:
            response = client.get("/readyz")
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"not ready after {START_TIMEOUT_SECONDS} s:\n{server.log_path.read_text()}")


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
