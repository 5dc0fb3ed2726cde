"""Capacity through the real app: beyond CHEXTRIEV_MAX_CONCURRENT_SEARCHES requests in progress a search
or saliency request is answered 503 with Retry-After at once, before its upload is read, while health,
readiness and metrics still answer; running out of memory in a request is a 503 too, not a 500."""

from __future__ import annotations

import io
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.catalogue import NUM_REGIONS
from model.preprocessing import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from service.app import create_app
from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    QUERY_CASE,
    ServiceSetup,
    png_bytes,
    regions_json,
    service_setup,
)
from tests.service.test_api import assert_problem, search, wait_until_ready

REFUSAL_SECONDS = 5  # "at once": far less than a search takes on these CPUs
RESPONSE_TIMEOUT_SECONDS = 120
# Address space allowed beyond what the process holds: room to decode a 16384 x 3050 PNG into 8-bit
# pixels (50 MB), not for its float32 copy (200 MB).
MEMORY_HEADROOM_BYTES = 160_000_000


class StalledUpload:
    """A request run on the client's event loop whose body stops halfway until `finish()` sends the rest."""

    def __init__(self, client: TestClient, request: httpx.Request):
        body = request.read()
        self.body_asked = threading.Event()
        self.messages: list[dict] = []
        self._client = client
        self._rest = client.portal.call(anyio.Event)

        async def receive() -> dict:
            if not self.body_asked.is_set():
                self.body_asked.set()
                return {"type": "http.request", "body": body[: len(body) // 2], "more_body": True}
            await self._rest.wait()
            return {"type": "http.request", "body": body[len(body) // 2:], "more_body": False}

        async def send(message: dict) -> None:
            self.messages.append(message)

        self._done = client.portal.start_task_soon(client.app, _scope(request), receive, send)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body, once the app has answered."""
        self._done.result(RESPONSE_TIMEOUT_SECONDS)
        start, *parts = self.messages
        headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
        return start["status"], headers, b"".join(part.get("body", b"") for part in parts)

    def finish(self) -> tuple[int, dict[str, str], bytes]:
        """Send the rest of the body; the response."""
        self._client.portal.call(self._rest.set)
        return self.response()


def _scope(request: httpx.Request) -> dict:
    """The ASGI scope of `request`, as a server would pass it to the app."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "scheme": "http", "path": request.url.path, "raw_path": request.url.path.encode(), "root_path": "",
            "query_string": request.url.query, "client": ("127.0.0.1", 1), "server": ("testserver", 80),
            "headers": [(name.lower(), value) for name, value in request.headers.raw]}


def search_request(client: TestClient, image: bytes, regions: str) -> httpx.Request:
    """A POST /search of `image` and `regions`, built but not sent."""
    return client.build_request("POST", "/search", files={"image": ("upload", image, "application/octet-stream")},
                                data={"regions": regions})


@pytest.fixture
def one_at_a_time(service_setup: ServiceSetup) -> Iterator[TestClient]:
    """The service admitting one search at a time, none waiting."""
    with TestClient(create_app(service_setup.settings(max_concurrent_searches=1, max_queued_searches=0))) as client:
        wait_until_ready(client)
        yield client


def test_a_search_beyond_the_bound_is_refused_at_once_and_the_next_one_after_is_served(one_at_a_time,
                                                                                        service_setup):
    client = one_at_a_time
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    image, regions = png_bytes(pixels), regions_json(boxes)
    held = StalledUpload(client, search_request(client, image, regions))
    assert held.body_asked.wait(RESPONSE_TIMEOUT_SECONDS)  # admitted, and reading its upload
    try:
        started = time.monotonic()
        refused = search(client, image, regions)
        assert time.monotonic() - started < REFUSAL_SECONDS
        assert assert_problem(refused, 503)["type"].endswith("over-capacity")
        assert int(refused.headers["retry-after"]) > 0
        unread = StalledUpload(client, search_request(client, image, regions))
        status, headers, _ = unread.response()
        assert (status, "retry-after" in headers, unread.body_asked.is_set()) == (503, True, False)
        saliency = client.get("/saliency", params={"query_id": "0" * 32, "case_id": QUERY_CASE})
        assert assert_problem(saliency, 503)["type"].endswith("over-capacity")  # not the 404 it would be
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
        assert 'chextriev_capacity_refused_total{route="/search"} 2.0' in metrics
        assert 'chextriev_capacity_refused_total{route="/saliency"} 1.0' in metrics
        assert "chextriev_capacity_in_progress 1.0" in metrics
    finally:
        status, _, body = held.finish()
    assert status == 200, body
    assert search(client, image, regions).status_code == 200
    assert "chextriev_capacity_in_progress 0.0" in client.get("/metrics").text


def test_a_search_waits_for_a_slot_while_the_queue_has_room(service_setup):
    settings = service_setup.settings(max_concurrent_searches=1, max_queued_searches=1)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        pixels, boxes = service_setup.inputs[QUERY_CASE]
        image, regions = png_bytes(pixels), regions_json(boxes)
        held = StalledUpload(client, search_request(client, image, regions))
        assert held.body_asked.wait(RESPONSE_TIMEOUT_SECONDS)
        try:
            waiting = StalledUpload(client, search_request(client, image, regions))
            deadline = time.monotonic() + REFUSAL_SECONDS
            while "chextriev_capacity_waiting 1.0" not in client.get("/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert not waiting.body_asked.is_set()  # its upload stays unread until it is admitted
            assert assert_problem(search(client, image, regions), 503)["type"].endswith("over-capacity")
        finally:
            held_status, _, _ = held.finish()
        assert held_status == 200
        assert waiting.body_asked.wait(RESPONSE_TIMEOUT_SECONDS)
        assert waiting.finish()[0] == 200


@contextmanager
def address_space_limited(headroom_bytes: int) -> Iterator[None]:
    """The process may map at most `headroom_bytes` more memory inside the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    if hard != resource.RLIM_INFINITY and hard < mapped + headroom_bytes:
        pytest.skip(f"the address space is already limited to {hard} bytes")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_running_out_of_memory_is_a_503_and_the_service_goes_on(service_setup):
    settings = service_setup.settings(max_image_pixels=MAX_IMAGE_PIXELS, max_upload_bytes=MAX_IMAGE_BYTES)
    tall = _png(Image.new("L", (3050, 16384), 128))
    regions = regions_json(np.tile([0, 0, 100, 100], (NUM_REGIONS, 1)))
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        with address_space_limited(MEMORY_HEADROOM_BYTES):
            response = search(client, tall, regions)
        problem = assert_problem(response, 503)
        assert problem["type"].endswith("insufficient-memory") and int(response.headers["retry-after"]) > 0
        assert search(client, png_bytes(pixels), regions_json(boxes)).status_code == 200


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
