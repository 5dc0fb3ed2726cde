"""A corpus of bad `POST /search` inputs: each is answered with its documented 4xx problem+json and
changes nothing (no query kept for saliency, the same active snapshot and gallery cases, at most the
audit row of the refused search). The valid inputs among them (a 16-bit PNG, a CMYK JPEG, a 10 x 10
image) are searched."""

from __future__ import annotations

import asyncio
import json
import math
import struct
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless
from sqlalchemy.orm import sessionmaker

from model.anatomy import boxes_by_name
from service.db.repository import SearchAuditRecord, get_cases, list_recent_searches
from service.db.session import session_scope
from service.peak_memory import whole_image_regions
from service.upload_limit import FORM_OVERHEAD_BYTES
from tests.dicom_factory import chest_dataset, dicom_bytes, dicom_file_bytes, encapsulated_dicom_bytes
from tests.model.test_imaging import encode
from tests.service.service_setup import QUERY_CASE, ServiceSetup, png_bytes
from tests.service.test_api import (  # noqa: F401 - backend, client, service_setup and sessions are fixtures
    assert_problem,
    backend,
    client,
    service_setup,
    sessions,
)

UPLOAD_CHUNK = b"\0" * 1_000_000
MAX_AUDIT_ROWS = 100_000


@dataclass(frozen=True)
class Query:
    """The query case's radiograph (grey in [0, 1]) and its 18 boxes."""

    pixels: np.ndarray
    boxes: np.ndarray

    @property
    def grey8(self) -> np.ndarray:
        return np.round(self.pixels * 255).astype(np.uint8)

    @property
    def png(self) -> bytes:
        return png_bytes(self.pixels)

    def regions(self, **changes: list) -> str:
        """The regions JSON of the boxes, with some regions' boxes replaced or added."""
        return json.dumps({**boxes_by_name(self.boxes), **changes})


@dataclass(frozen=True)
class Observed:
    """What a refused search must leave as it was."""

    readiness: dict
    cases: dict
    audits: dict[str, SearchAuditRecord]


# ---- inputs ----------------------------------------------------------------------------------------

def multipart(image: bytes | None, regions: str | None, filename: str = "upload",
              content_type: str = "application/octet-stream", **fields: str) -> dict:
    """The keyword arguments of `client.post` for a multipart search; None leaves a field out."""
    data = {name: value for name, value in {"regions": regions, **fields}.items() if value is not None}
    files = {"image": (filename, image, content_type)} if image is not None else None
    return {"data": data, "files": files}


def dicom_without_pixel_data(pixels: np.ndarray) -> bytes:
    dataset = chest_dataset(pixels)
    del dataset.PixelData
    return dicom_file_bytes(dataset)


def dicom_with_a_damaged_length(pixels: np.ndarray) -> bytes:
    """A Part 10 file whose patient name element claims 32767 bytes (explicit VR: tag, "PN", length)."""
    data = bytearray(dicom_bytes(pixels))
    length_at = data.index(b"\x10\x00\x10\x00PN") + 6
    data[length_at:length_at + 2] = b"\xff\x7f"
    return bytes(data)


def deflated_dicom() -> bytes:
    """A deflated DICOM of 2000 x 2000 black 16-bit pixels: 8 kB that inflate to 8 MB."""
    dataset = chest_dataset(np.zeros((2000, 2000), dtype=np.uint16))
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return dicom_file_bytes(dataset)


def rle_bomb() -> bytes:
    """A 64 x 64 RLE DICOM whose one segment of 64 kB would decode to 4 MB."""
    frame = struct.pack("<16I", 1, 64, *[0] * 14) + b"\x81\x00" * 32_768  # 2 bytes: a byte 128 times
    return encapsulated_dicom_bytes(RLELossless, [frame], rows=64, columns=64)


def dicom_hiding_a_large_jpeg() -> bytes:
    """A 64 x 64 header over a 2100 x 2000 JPEG codestream (4.2 MP, over the 4 MP limit)."""
    codestream = encode(Image.new("L", (2100, 2000)), "JPEG")
    return encapsulated_dicom_bytes(JPEGBaseline8Bit, [codestream], rows=64, columns=64)


def png_bomb() -> bytes:
    """A 5000 x 5000 black PNG: 25 kB that declare 25 MP, over the 4 MP limit."""
    return encode(Image.new("L", (5000, 5000)), "PNG")


# Each: the keyword arguments of `client.post` for the query case, then the status, the fields and
# a phrase of the detail of the problem that answers it.
REFUSED = [
    pytest.param(lambda q: multipart(dicom_bytes(q.grey8)[:100_000], q.regions()),
                 422, ("image",), "truncated", id="DICOM cut in its pixel data"),
    pytest.param(lambda q: multipart(dicom_bytes(q.grey8)[:400], q.regions()),
                 422, ("image",), "truncated", id="DICOM cut in its header"),
    pytest.param(lambda q: multipart(dicom_with_a_damaged_length(q.grey8), q.regions()),
                 422, ("image",), "damaged", id="DICOM with a damaged element length"),
    pytest.param(lambda q: multipart(dicom_without_pixel_data(q.grey8), q.regions()),
                 422, ("image",), "pixel data are missing", id="DICOM without pixel data"),
    pytest.param(lambda q: multipart(dicom_hiding_a_large_jpeg(), whole_image_regions(64, 64)),
                 422, ("image",), "compressed pixel data hold 2100 x 2000 pixels",
                 id="DICOM hiding a 4.2 MP JPEG behind a 64 x 64 header"),
    pytest.param(lambda q: multipart(rle_bomb(), whole_image_regions(64, 64)),
                 422, ("image",), "RLE pixel data decode to more than",
                 id="RLE DICOM decoding to 1000 times its header's size"),
    pytest.param(lambda q: multipart(deflated_dicom(), whole_image_regions(2000, 2000)),
                 415, ("image",), "deflated DICOM files are not supported", id="deflated DICOM"),
    pytest.param(lambda q: multipart(b"right lung looks fine\n", q.regions(), "chest.png", "image/png"),
                 415, ("image",), "not a DICOM, PNG or JPEG", id="text named .png"),
    pytest.param(lambda q: multipart(png_bomb(), whole_image_regions(5000, 5000)),
                 413, ("image",), "25000000 pixels", id="PNG decompression bomb"),
    pytest.param(lambda q: multipart(encode(Image.new("L", (400, 300), 128), "PNG"), None),
                 422, ("image",), "no right lung found", id="no regions, and no chest for the anatomy model"),
    pytest.param(lambda q: multipart(q.png, q.regions(**{"left kidney": [1, 2, 3, 4]})),
                 422, ("regions",), "unknown region name", id="unknown region name"),
    pytest.param(lambda q: multipart(q.png, q.regions(trachea=[math.nan, 10, 20, 20])),
                 422, ("regions",), "non-finite", id="NaN coordinate"),
    pytest.param(lambda q: multipart(q.png, q.regions(trachea=[300, 300, 200, 200])),
                 422, ("regions",), "inverted", id="inverted box"),
    pytest.param(lambda q: multipart(q.png, q.regions(trachea=[600, 600, 700, 700])),
                 422, ("regions",), "entirely outside", id="box outside the image"),
    pytest.param(lambda q: multipart(q.png, "right lung: 10 10 200 400"),
                 422, ("regions",), "not valid JSON", id="regions not JSON"),
    pytest.param(lambda q: multipart(q.png, q.regions(), k="0"), 422, ("k",), "fields: k", id="k = 0"),
    pytest.param(lambda q: multipart(q.png, q.regions(), k="10000"), 422, ("k",), "fields: k", id="k = 10,000"),
    pytest.param(lambda q: multipart(None, q.regions()), 422, ("image",), "fields: image",
                 id="image field missing"),
    pytest.param(lambda q: multipart(None, None), 422, ("image",), "fields: image",
                 id="every field missing"),
    pytest.param(lambda q: {"json": {"image": "aGVsbG8=", "regions": q.regions()}},
                 422, ("image",), "fields: image", id="JSON body"),
    pytest.param(lambda q: {"data": {"image": "hello", "regions": q.regions()}},
                 422, ("image",), "fields: image", id="urlencoded body"),
]

# Valid inputs among the bad ones: each is searched. Each: the keyword arguments of `client.post`
# for the query case, and the case found first (the query case itself for its own radiograph).
ACCEPTED = [
    pytest.param(lambda q: multipart(encode(Image.fromarray(q.grey8.astype(np.uint16) * 257), "PNG"),
                                     q.regions()), QUERY_CASE, id="16-bit PNG"),
    pytest.param(lambda q: multipart(encode(Image.fromarray(q.grey8).convert("CMYK"), "JPEG"), q.regions()),
                 QUERY_CASE, id="CMYK JPEG"),
    pytest.param(lambda q: multipart(png_bytes(q.pixels[:10, :10]), whole_image_regions(10, 10)), None,
                 id="10 x 10 PNG"),
]


# ---- fixtures and checks ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def query(service_setup: ServiceSetup) -> Query:
    return Query(*service_setup.inputs[QUERY_CASE])


def observe(client: TestClient, sessions: sessionmaker, setup: ServiceSetup) -> Observed:
    with session_scope(sessions) as session:
        cases = get_cases(session, [case.case_id for case in setup.cases])
        audits = {audit.query_id: audit for audit in list_recent_searches(session, limit=MAX_AUDIT_ROWS)}
    return Observed(client.get("/readyz").json(), cases, audits)


def assert_nothing_kept(client: TestClient, before: Observed, after: Observed, status: int, body: dict) -> None:
    """The same snapshot and cases; at most one audit row added, the refusal's; no query kept for saliency."""
    assert after.readiness == before.readiness and after.cases == before.cases
    added = [audit for query_id, audit in after.audits.items() if query_id not in before.audits]
    assert len(added) <= 1, added
    assert all((audit.status_code, audit.result_case_ids) == (status, []) for audit in added)
    for query_id in {audit.query_id for audit in added} | ({body["query_id"]} if "query_id" in body else set()):
        saliency = client.get("/saliency", params={"query_id": query_id, "case_id": QUERY_CASE})
        assert_problem(saliency, 404, "query_id")


async def post_endless_upload(client: TestClient, headers: list[tuple[bytes, bytes]]) -> tuple[list[dict], int]:
    """POST /search straight to the ASGI app with a body that never ends; the messages sent back and
    how many body bytes the app read before answering."""
    preamble = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")
    read, sent = 0, []

    async def receive() -> dict:
        nonlocal read
        body = preamble if read == 0 else UPLOAD_CHUNK
        read += len(body)
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/search", "raw_path": b"/search", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"testserver"), (b"content-type", b"multipart/form-data; boundary=x"),
                         *headers],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    await client.app(scope, receive, send)
    return sent, read


def refused_endless_upload(client: TestClient, sessions: sessionmaker, setup: ServiceSetup,
                           header: tuple[bytes, bytes]) -> int:
    """How many bytes of an endless upload sent with `header` were read; checked to be answered 413
    and to change nothing."""
    before = observe(client, sessions, setup)
    sent, read = asyncio.run(post_endless_upload(client, [header]))
    problem = json.loads(sent[1]["body"])
    assert sent[0]["status"] == problem["status"] == 413 and "exceeds the limit" in problem["detail"]
    assert_nothing_kept(client, before, observe(client, sessions, setup), 413, problem)
    return read


# ---- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("request_for, status, fields, detail", REFUSED)
def test_bad_input_is_refused_and_changes_nothing(client, sessions, service_setup, query, request_for, status,
                                                  fields, detail):
    before = observe(client, sessions, service_setup)
    response = client.post("/search", **request_for(query))
    problem = assert_problem(response, status, *fields)
    assert detail in problem["detail"]
    assert_nothing_kept(client, before, observe(client, sessions, service_setup), status, problem)


def test_upload_declaring_a_length_over_the_limit_is_refused_before_a_byte_is_read(client, sessions,
                                                                                 service_setup):
    limit = client.app.state.service.settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    read = refused_endless_upload(client, sessions, service_setup, (b"content-length", str(limit + 1).encode()))
    assert read == 0


def test_chunked_upload_over_the_limit_is_refused_within_a_chunk_of_it(client, sessions, service_setup):
    limit = client.app.state.service.settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    read = refused_endless_upload(client, sessions, service_setup, (b"transfer-encoding", b"chunked"))
    assert limit < read <= limit + len(UPLOAD_CHUNK)


@pytest.mark.parametrize("request_for, found_first", ACCEPTED)
def test_valid_input_among_the_bad_ones_is_searched(client, query, request_for, found_first):
    response = client.post("/search", **request_for(query))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5 and found_first in (None, results[0]["case_id"])
