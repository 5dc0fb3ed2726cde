"""The HTTP API through TestClient, over a real small setup (tests/service/service_setup.py): bundled
radiographs, a CheXtriev checkpoint, published snapshots and a migrated SQLite database."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import sessionmaker

from index_store.gallery import GalleryData
from index_store.manifest import CASE_IDS_FILE
from index_store.store import publish_gallery
from model.anatomy import box_iou, boxes_by_name, validate_regions
from model.anatomy_model import AnatomyModel
from model.catalogue import NUM_REGIONS, REGION_NAMES
from model.region_derivation import derive_regions
from model.saliency import region_saliency
from model.saliency_scale import DEFAULT_NOISE_FLOOR, DEFAULT_SCALE_MAX
from service.app import create_app
from service.db.repository import list_activations, list_recent_searches
from service.db.session import session_scope
from service.logging_setup import JsonFormatter
from service.problems import PROBLEM_MEDIA_TYPE, Problem
from service.routes import search as search_route
from service.upload_limit import FORM_OVERHEAD_BYTES
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, dicom_bytes
from tests.service.databases import BACKENDS
from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    OCCLUDED_VERSION,
    PLAIN_VERSION,
    QUERY_CASE,
    SALIENCY_CASE,
    ServiceSetup,
    png_bytes,
    regions_json,
    service_database,
    service_setup,
)

ADMIN_TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READY_TIMEOUT_SECONDS = 120
# Lung boxes of the SIIM PA radiograph in ../shared/data/dicom (1024 x 1024), read off the image.
SIIM_RIGHT_LUNG, SIIM_LEFT_LUNG = (150, 140, 480, 790), (590, 150, 910, 760)


# ---- helpers ---------------------------------------------------------------------------------------

def wait_until_ready(client: TestClient) -> dict:
    """Poll /readyz until the background load finished; the readiness body."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            return response.json()
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.05)


def scene_graph_json(boxes: np.ndarray) -> str:
    objects = [{"bbox_name": name, "x1": 0, "y1": 0, "x2": 1, "y2": 1,
                **dict(zip(("original_x1", "original_y1", "original_x2", "original_y2"), map(float, box)))}
               for name, box in boxes_by_name(boxes).items()]
    return json.dumps({"image_id": "query", "objects": objects})


def search(client: TestClient, image: bytes, regions: str | None, **fields) -> object:
    """POST /search with the image, the regions (None: none sent) and other form fields."""
    data = {**({} if regions is None else {"regions": regions}), **{name: str(value) for name, value in fields.items()}}
    return client.post("/search", files={"image": ("upload", image, "application/octet-stream")}, data=data)


def derived_boxes(right_lung, left_lung, width: int, height: int) -> np.ndarray:
    return validate_regions(derive_regions(right_lung, left_lung, width, height), width, height)


def assert_problem(response, status: int, *fields: str) -> dict:
    """The problem document of `response`, checked for shape, status and the fields it names."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    problem = response.json()
    assert {"type", "title", "status", "detail", "errors"} <= set(problem) and problem["status"] == status
    assert problem["detail"]
    named = {entry["field"] for entry in problem["errors"]}
    assert set(fields) <= named, problem
    return problem


def expected_saliency(setup: ServiceSetup):
    """The saliency of the saliency case for the query case, straight from the model functions."""
    occlusion = setup.saliency_occlusion
    return region_saliency(setup.embeddings[QUERY_CASE], occlusion.unoccluded, occlusion.embeddings,
                           setup.inputs[SALIENCY_CASE][1])


# ---- fixtures --------------------------------------------------------------------------------------

@contextmanager
def running_service(setup: ServiceSetup, backend: str, tmp_path: Path, **overrides) -> Iterator[TestClient]:
    """A started, ready service over its own database on `backend` holding the gallery cases."""
    with service_database(setup, backend, tmp_path) as url, \
            TestClient(create_app(setup.settings(database_url=url, **overrides))) as test_client:
        wait_until_ready(test_client)
        yield test_client


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database of this module's services: SQLite, then PostgreSQL (which compose deploys)."""
    return request.param


@pytest.fixture(scope="module")
def client(service_setup: ServiceSetup, backend: str, tmp_path_factory) -> Iterator[TestClient]:
    """The service on snapshot "v1" (no occlusion embeddings), without admin routes, computing
    occlusions only when saliency asks (none in the background)."""
    with running_service(service_setup, backend, tmp_path_factory.mktemp("client"),
                         occlusion_warm_results=0) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin_client(service_setup: ServiceSetup, backend: str, tmp_path_factory) -> Iterator[TestClient]:
    """The service on snapshot "v2" (with occlusion embeddings) and an admin token."""
    with running_service(service_setup, backend, tmp_path_factory.mktemp("admin"),
                         admin_token=ADMIN_TOKEN, active_version=OCCLUDED_VERSION) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def sessions(client: TestClient) -> sessionmaker:
    """Sessions on the database of `client`, to read what the service recorded."""
    return client.app.state.service.sessions


@pytest.fixture(scope="module")
def admin_sessions(admin_client: TestClient) -> sessionmaker:
    """Sessions on the database of `admin_client`."""
    return admin_client.app.state.service.sessions


@pytest.fixture(scope="module")
def query_search(client: TestClient, service_setup: ServiceSetup) -> dict:
    """A PNG search with the query case's own radiograph and its boxes as a name -> box object."""
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    response = search(client, png_bytes(pixels), regions_json(boxes))
    assert response.status_code == 200, response.text
    return response.json()


# ---- search ----------------------------------------------------------------------------------------

def test_png_search_finds_the_same_radiograph_first_with_its_record(query_search, service_setup):
    results = query_search["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert results[0]["case_id"] == QUERY_CASE and results[0]["score"] > 0.999
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert results[0]["findings"] == [service_setup.query_case.finding]
    assert results[0]["metadata"]["view"] == service_setup.query_case.metadata["view"]
    assert query_search["index_version"] == PLAIN_VERSION
    assert query_search["model_version"] == service_setup.embedder.fingerprint
    timings = query_search["timing_ms"]
    assert set(timings) == {"fetch", "decode", "anatomy", "embed", "search", "db", "total"} and timings["fetch"] == 0
    assert timings["total"] >= timings["embed"] > 0


def test_jpeg_search_with_scene_graph_regions_matches_the_png_search(client, service_setup, query_search):
    case = service_setup.query_case
    response = search(client, case.image_path.read_bytes(), scene_graph_json(service_setup.inputs[QUERY_CASE][1]))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["case_id"] for r in results] == [r["case_id"] for r in query_search["results"]]
    assert results[0]["score"] > 0.999
    assert response.json()["query_id"] != query_search["query_id"]


def test_monochrome1_dicom_search_finds_its_radiograph_and_returns_no_patient_identifier(client, service_setup):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    stored = 255 - np.round(pixels * 255).astype(np.uint8)  # MONOCHROME1: low values are bright
    response = search(client, dicom_bytes(stored, photometric="MONOCHROME1"), regions_json(boxes), k=3)
    assert response.status_code == 200, response.text
    assert [r["rank"] for r in response.json()["results"]] == [1, 2, 3]
    first = response.json()["results"][0]
    assert first["case_id"] == QUERY_CASE and first["score"] > 0.999
    assert PATIENT_ID not in response.text and PATIENT_NAME.split("^")[0] not in response.text


@pytest.mark.parametrize("name", ["siim_cr_pa_jpeg_baseline.dcm", "siim_cr_pa_monochrome1.dcm"])
def test_shared_chest_dicoms_are_searched(client, shared_data, name):
    boxes = derived_boxes(SIIM_RIGHT_LUNG, SIIM_LEFT_LUNG, 1024, 1024)
    response = search(client, (shared_data / "dicom" / name).read_bytes(), scene_graph_json(boxes))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5 and {r["case_id"] for r in results} <= {QUERY_CASE} | {
        f"cxrlb-{n}" for n in ("0007", "0154", "0311", "0312", "0313")}


def test_dog_radiograph_is_searched_as_sent(client, shared_data):
    """A DX "THORAX" DICOM of a dog declares nothing the service refuses (no lateral view position,
    a radiograph modality): it cannot tell a dog from a patient, so it searches with the boxes sent."""
    upload = (shared_data / "dicom" / "not_chest_dx_lateral_dog.dcm").read_bytes()
    boxes = derived_boxes((20, 20, 100, 140), (110, 20, 190, 140), 211, 169)
    response = search(client, upload, regions_json(boxes), k=2)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 2


def test_dog_radiograph_without_regions_is_refused_as_not_a_chest(client, shared_data, sessions):
    upload = (shared_data / "dicom" / "not_chest_dx_lateral_dog.dcm").read_bytes()
    problem = assert_problem(search(client, upload, None), 422, "image")
    assert problem["type"].endswith("no-chest-found") and "frontal chest" in problem["detail"]
    assert_problem(client.post("/regions", files={"image": ("dog.dcm", upload)}), 422, "image")


def test_dicom_declaring_a_lateral_view_is_refused(client, service_setup):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(np.round(pixels * 255).astype(np.uint8))))
    dataset.ViewPosition = "LL"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    problem = assert_problem(search(client, buffer.getvalue(), regions_json(boxes)), 422, "image")
    assert "LL" in problem["detail"]


# ---- without regions: the anatomy model places them ----------------------------------------------------

def _upload_forms(pixels: np.ndarray) -> dict[str, bytes]:
    grey = np.round(pixels * 255).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(grey).save(jpeg, format="JPEG", quality=92)
    return {"png": png_bytes(pixels), "jpeg": jpeg.getvalue(), "dicom": dicom_bytes(grey)}


def _region_iou(found: list[dict], expected: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    boxes = {entry["name"]: entry["box"] for entry in found}
    return {name: box_iou(boxes[name], expected[REGION_NAMES.index(name)]) for name in names}


@pytest.mark.parametrize("form", ["png", "jpeg", "dicom"])
def test_search_without_regions_uses_the_anatomy_model(client, service_setup, sessions, form):
    pixels, expert = service_setup.inputs[QUERY_CASE]
    response = search(client, _upload_forms(pixels)[form], None, k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["regions_source"] == "model" and len(body["anatomy_model_version"]) == 64
    assert [entry["name"] for entry in body["regions"]] == list(REGION_NAMES)
    assert min(_region_iou(body["regions"], expert, ("right lung", "left lung")).values()) > 0.7
    assert body["results"][0]["case_id"] == QUERY_CASE
    assert body["timing_ms"]["anatomy"] > 0
    with session_scope(sessions) as session:
        audited = next(r for r in list_recent_searches(session, 50) if r.query_id == body["query_id"])
    assert audited.status_code == 200


def test_the_clients_regions_win_and_are_returned(client, service_setup):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    body = search(client, png_bytes(pixels), regions_json(boxes), k=1).json()
    assert body["regions_source"] == "client" and body["anatomy_model_version"] is None
    np.testing.assert_allclose([entry["box"] for entry in body["regions"]], boxes, atol=1e-3)


@pytest.mark.parametrize("form", ["png", "jpeg", "dicom"])
def test_regions_endpoint_returns_the_18_boxes_and_the_outlines(client, service_setup, form):
    pixels, expert = service_setup.inputs[QUERY_CASE]
    response = client.post("/regions", files={"image": ("upload", _upload_forms(pixels)[form])})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (pixels.shape[1], pixels.shape[0])
    assert [entry["name"] for entry in body["regions"]] == list(REGION_NAMES)
    structures = {entry["name"]: entry for entry in body["structures"]}
    assert {"right lung", "left lung"} <= set(structures)
    for name in ("right lung", "left lung"):
        assert len(structures[name]["outline"]) >= 8 and structures[name]["confidence"] > 0.75
        assert structures[name]["box"] == pytest.approx(next(r["box"] for r in body["regions"] if r["name"] == name))
    assert min(_region_iou(body["regions"], expert, ("right lung", "left lung")).values()) > 0.7


def test_an_image_without_a_chest_is_refused_naming_the_problem(client, sessions):
    blank = png_bytes(np.full((400, 400), 0.5, dtype=np.float32))
    for response in (search(client, blank, None), client.post("/regions", files={"image": ("blank.png", blank)})):
        problem = assert_problem(response, 422, "image")
        assert problem["type"].endswith("no-chest-found") and "no right lung found" in problem["detail"]
    with session_scope(sessions) as session:
        assert list_recent_searches(session, 1)[0].status_code == 422


def test_region_search_on_a_snapshot_without_region_vectors_is_refused(client, service_setup):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    response = search(client, png_bytes(pixels), regions_json(boxes), regions_of_interest='["right lung"]')
    problem = assert_problem(response, 422, "regions_of_interest")
    assert problem["type"].endswith(":region-search-unavailable") and PLAIN_VERSION in problem["detail"]
    assert search(client, png_bytes(pixels), regions_json(boxes)).json()["regions_of_interest"] is None


def test_exclude_patient_id_leaves_out_every_case_of_that_patient(client, service_setup, caplog):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    patient = service_setup.query_case.patient_id
    with caplog.at_level(logging.INFO):
        response = search(client, png_bytes(pixels), regions_json(boxes), exclude_patient_id=patient)
    assert response.status_code == 200, response.text
    returned = {r["case_id"] for r in response.json()["results"]}
    same_patient = {c.case_id for c in service_setup.cases if c.patient_id == patient}
    assert len(same_patient) == 2 and not returned & same_patient
    assert len(returned) == len(service_setup.cases) - 2  # k=5, four eligible cases
    formatter = JsonFormatter()
    assert not any(f'"{patient}"' in formatter.format(record) for record in caplog.records)


def test_request_log_line_names_route_status_and_query_id(client, service_setup, caplog):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    upload = png_bytes(pixels[:64, :64])
    with caplog.at_level(logging.INFO, logger="service.requests"):
        response = search(client, upload, regions_json(np.tile([0, 0, 64, 64], (NUM_REGIONS, 1))), k=1)
    assert response.status_code == 200, response.text
    lines = [r for r in caplog.records if r.name == "service.requests"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.route, line.method, line.status, line.query_id) == ("/search", "POST", 200,
                                                                      response.json()["query_id"])
    assert line.ms > 0


# ---- refused searches ------------------------------------------------------------------------------

def test_body_over_the_upload_limit_is_refused_with_413(client, service_setup):
    limit = service_setup.settings().max_upload_bytes
    problem = assert_problem(search(client, b"\0" * (limit + 3_000_000), "{}"), 413)
    assert "exceeds the limit" in problem["detail"]
    problem = assert_problem(search(client, b"\x89PNG" + b"\0" * limit, "{}"), 413, "image")
    assert str(limit) in problem["detail"]


def test_chunked_upload_is_not_read_past_the_limit(client, service_setup):
    """Without a Content-Length the body is counted as it arrives: reading stops at the limit."""
    limit = service_setup.settings().max_upload_bytes
    preamble = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")
    chunk = b"\0" * 1_000_000
    chunks_read, sent = 0, []

    async def receive() -> dict:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": preamble if chunks_read == 1 else chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/search", "raw_path": b"/search", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"testserver"), (b"content-type", b"multipart/form-data; boundary=x"),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413
    body_bytes_read = len(preamble) + (chunks_read - 1) * len(chunk)
    assert body_bytes_read <= limit + FORM_OVERHEAD_BYTES + len(chunk)  # stopped within a chunk of the limit
    assert json.loads(sent[1]["body"])["status"] == 413


def test_image_over_the_pixel_limit_is_refused_before_decoding(client):
    upload = png_bytes(np.zeros((2000, 2100), dtype=np.float32))  # 4.2 MP > the 4 MP limit
    boxes = regions_json(np.tile([0, 0, 100, 100], (NUM_REGIONS, 1)))
    problem = assert_problem(search(client, upload, boxes), 413, "image")
    assert "pixels" in problem["detail"]


def test_unsupported_file_type_is_415(client):
    boxes = regions_json(np.tile([0, 0, 10, 10], (NUM_REGIONS, 1)))
    assert_problem(search(client, b"GIF89a not a radiograph", boxes), 415, "image")


def test_truncated_png_is_422(client, service_setup):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    upload = png_bytes(pixels)
    assert_problem(search(client, upload[: len(upload) // 2], regions_json(boxes)), 422, "image")


def test_invalid_regions_name_each_bad_region(client, service_setup):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    regions = boxes_by_name(boxes)
    regions["rigth lung"] = regions.pop("right lung")
    regions["trachea"] = [50, 50, 10, 10]
    del regions["left apical zone"]
    problem = assert_problem(search(client, png_bytes(pixels), json.dumps(regions)), 422, "regions")
    by_region = {entry["region"]: entry["problem"] for entry in problem["errors"]}
    assert "did you mean 'right lung'" in by_region["rigth lung"]
    assert by_region["right lung"] == "missing" and by_region["left apical zone"] == "missing"
    assert "inverted" in by_region["trachea"]


@pytest.mark.parametrize("form", ["boxes", "scene graph"])
def test_a_region_name_holding_a_lone_surrogate_is_named_in_a_422(client, service_setup, sessions, form):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    if form == "boxes":
        regions = '{"\\ud800": [0, 0, 1, 1]}'  # the JSON escape of a lone surrogate, as a client may send it
    else:
        regions = scene_graph_json(boxes).replace('"bbox_name": "trachea"', '"bbox_name": "\\ud800"')
    problem = assert_problem(search(client, png_bytes(pixels), regions), 422, "regions")
    named = {entry["region"]: entry["problem"] for entry in problem["errors"]}
    if form == "boxes":
        assert "unknown region name" in named["\ud800"]
    else:  # a scene graph's objects outside the 18 regions are left out: the trachea is missing
        assert named == {"trachea": "missing"}
    with session_scope(sessions) as session:
        assert list_recent_searches(session, limit=1)[0].status_code == 422


def test_regions_that_are_not_json_are_422(client, service_setup):
    pixels, _ = service_setup.inputs[QUERY_CASE]
    problem = assert_problem(search(client, png_bytes(pixels), "right lung: 1,2,3,4"), 422, "regions")
    assert "not valid JSON" in problem["errors"][0]["problem"]


@pytest.mark.parametrize("k", ["0", "101", "many"])
def test_k_out_of_range_is_422_naming_k(client, k):
    assert_problem(search(client, b"unused", "{}", k=k), 422, "k")


def test_missing_fields_are_named(client):
    problem = assert_problem(client.post("/search", data={"k": "3"}), 422, "image")
    assert all(entry["location"] == "body" for entry in problem["errors"])


def test_refused_search_is_audited_with_its_status(client, sessions):
    boxes = regions_json(np.tile([0, 0, 10, 10], (NUM_REGIONS, 1)))
    assert_problem(search(client, b"not an image at all", boxes, k=7), 415, "image")
    with session_scope(sessions) as session:
        latest = list_recent_searches(session, limit=1)[0]
    assert (latest.status_code, latest.k, latest.result_case_ids, latest.index_version) == (415, 7, [], None)


def test_a_case_id_holding_a_nul_byte_is_an_unknown_case(client, query_search):
    assert_problem(client.get("/cases/%00"), 404)
    assert_problem(client.get("/saliency", params={"query_id": query_search["query_id"], "case_id": "\x00"}), 404)


def test_unknown_path_and_method_are_problems(client):
    assert_problem(client.get("/nowhere"), 404)
    problem = assert_problem(client.get("/search"), 405)
    assert problem["title"] == "Method Not Allowed"


# ---- audit, metrics, docs --------------------------------------------------------------------------

def test_search_is_audited_without_patient_data(query_search, service_setup, sessions):
    with session_scope(sessions) as session:
        audits = {audit.query_id: audit for audit in list_recent_searches(session, limit=100)}
    audit = audits[query_search["query_id"]]
    assert audit.result_case_ids == [r["case_id"] for r in query_search["results"]]
    assert (audit.k, audit.status_code, audit.index_version) == (5, 200, PLAIN_VERSION)
    assert audit.model_fingerprint == service_setup.embedder.fingerprint and audit.latency_ms > 0


def test_metrics_count_requests_per_route_and_show_the_index(client, query_search):
    client.get("/nowhere")
    text = client.get("/metrics").text
    assert 'chextriev_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'route="unmatched"' in text
    assert "chextriev_http_request_duration_seconds_bucket" in text
    assert "chextriev_index_size 6.0" in text and "chextriev_ready 1.0" in text
    assert f'version="{PLAIN_VERSION}"' in text


def test_unknown_http_methods_share_one_metrics_label(client):
    for method in ("FOO123", "X-INVENTED", "BAR"):
        assert_problem(client.request(method, "/healthz"), 405)
    text = client.get("/metrics").text
    assert 'chextriev_http_requests_total{method="other",route="/healthz",status="405"} 3.0' in text
    assert not any(method in text for method in ("FOO123", "X-INVENTED", "BAR"))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_load_nothing_from_outside_the_service(client, page):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    references = re.findall(r'(?:src|href)="([^"]+)"', response.text) + re.findall(r"url: '([^']+)'", response.text)
    assert references and not [url for url in references if "://" in url or url.startswith("//")]
    assets = [url for url in references if url.startswith("/docs-assets/")]
    assert any(url.endswith(".js") for url in assets)
    for url in assets:  # each script, style and icon is served by the service itself
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url


def test_openapi_documents_the_public_routes_only(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/saliency", "/cases/{case_id}", "/cases/{case_id}/thumbnail", "/healthz",
            "/readyz", "/metrics"} <= set(paths)
    assert not any(path.startswith("/admin") for path in paths)


# ---- saliency --------------------------------------------------------------------------------------

def test_saliency_recomputes_occlusions_when_the_snapshot_has_none(client, query_search, service_setup):
    response = client.get("/saliency", params={"query_id": query_search["query_id"], "case_id": SALIENCY_CASE})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["occlusion_source"] == "recomputed"
    # the grid's boxes only touch: blanking one blanks its own crop whole and changes no other
    assert body["timing_ms"]["recomputed_crops"] == service_setup.saliency_occlusion.recomputed_crops == 0
    assert body["timing_ms"]["blanked_crops"] == service_setup.saliency_occlusion.blanked_crops == 18
    expected = expected_saliency(service_setup)
    assert [r["name"] for r in body["regions"]] == list(REGION_NAMES)
    np.testing.assert_allclose([r["similarity_drop"] for r in body["regions"]], expected.similarity_drop, atol=1e-4)
    np.testing.assert_allclose([r["importance"] for r in body["regions"]], expected.importance, atol=1e-3)
    np.testing.assert_allclose([r["box"] for r in body["regions"]], service_setup.inputs[SALIENCY_CASE][1], atol=1e-3)
    assert body["similarity"] == pytest.approx(expected.similarity, abs=1e-4)
    assert (body["noise_floor"], body["scale_max"]) == (DEFAULT_NOISE_FLOOR, DEFAULT_SCALE_MAX)
    drops = [r["similarity_drop"] for r in body["regions"]]
    assert [r["stands_out"] for r in body["regions"]] == [drop > DEFAULT_NOISE_FLOOR for drop in drops]
    assert body["stands_out"] == any(r["stands_out"] for r in body["regions"])


def test_saliency_below_a_configured_floor_says_no_region_stands_out(service_setup, tmp_path):
    """With the floor above every drop of the pair, nothing stands out: no importance, no colour."""
    largest = float(np.abs(expected_saliency(service_setup).similarity_drop).max())
    with running_service(service_setup, "sqlite", tmp_path, saliency_noise_floor=largest + 0.001,
                         saliency_scale_max=largest + 0.1) as service:
        pixels, boxes = service_setup.inputs[QUERY_CASE]
        found = search(service, png_bytes(pixels), regions_json(boxes), k=3).json()
        params = {"query_id": found["query_id"], "case_id": SALIENCY_CASE}
        body = service.get("/saliency", params=params).json()
        assert body["stands_out"] is False and body["noise_floor"] == pytest.approx(largest + 0.001)
        assert not any(r["stands_out"] for r in body["regions"]) and all(r["importance"] == 0 for r in body["regions"])
        png = service.get("/saliency", params={**params, "format": "png"}).content
        height = service_setup.inputs[SALIENCY_CASE][0].shape[0]
        picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)[:height]
        assert np.abs(picture[..., 0] - picture[..., 2]).max() == 0  # the radiograph alone, grey


def test_saliency_png_blends_a_heatmap_over_the_retrieved_radiograph(client, query_search, service_setup):
    response = client.get("/saliency", params={"query_id": query_search["query_id"], "case_id": SALIENCY_CASE,
                                               "format": "png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)
    pixels, _ = service_setup.inputs[SALIENCY_CASE]
    assert picture.shape[1] == pixels.shape[1] and picture.shape[0] > pixels.shape[0]  # legend below
    radiograph = picture[: pixels.shape[0]]
    coloured = np.abs(radiograph[..., 0] - radiograph[..., 2]).max() > 40
    assert coloured == expected_saliency(service_setup).any_stands_out  # heat only where a region stands out


def test_saliency_uses_precomputed_occlusions_from_the_snapshot(admin_client, service_setup):
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    found = search(admin_client, png_bytes(pixels), regions_json(boxes), k=1).json()
    assert found["index_version"] == OCCLUDED_VERSION
    response = admin_client.get("/saliency", params={"query_id": found["query_id"], "case_id": SALIENCY_CASE})
    body = response.json()
    assert body["occlusion_source"] == "snapshot" and body["timing_ms"]["recomputed_crops"] == 0
    expected = expected_saliency(service_setup)
    np.testing.assert_allclose([r["similarity_drop"] for r in body["regions"]], expected.similarity_drop, atol=1e-4)
    png = admin_client.get("/saliency", params={"query_id": found["query_id"], "case_id": SALIENCY_CASE,
                                                "format": "png"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_an_occlusion_file_truncated_after_activation_is_a_503_not_a_crash(service_setup, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(service_setup.store / OCCLUDED_VERSION, store / OCCLUDED_VERSION)
    settings = service_setup.settings(index_store=str(store), active_version=OCCLUDED_VERSION)
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    with TestClient(create_app(settings)) as service:
        wait_until_ready(service)
        found = search(service, png_bytes(pixels), regions_json(boxes), k=1).json()
        occlusion = store / OCCLUDED_VERSION / "occlusion.npy"
        with open(occlusion, "r+b") as handle:  # the trainer's volume: rewritten in place
            handle.truncate(256)  # the .npy header and a few values: no case has its rows any more
        damaged = service.get("/saliency", params={"query_id": found["query_id"], "case_id": SALIENCY_CASE})
        problem = assert_problem(damaged, 503)
        assert problem["type"].endswith("snapshot-damaged") and str(store) not in problem["detail"]
        assert damaged.headers["retry-after"]
        assert service.get("/healthz").status_code == 200


def test_saliency_of_an_unknown_query_or_case_is_404(client, query_search):
    problem = assert_problem(client.get("/saliency", params={"query_id": "0" * 32, "case_id": QUERY_CASE}),
                             404, "query_id")
    assert "expired" in problem["detail"]
    assert_problem(client.get("/saliency", params={"query_id": query_search["query_id"], "case_id": "nope"}),
                   404, "case_id")
    assert_problem(client.get("/saliency", params={"query_id": "bad id!", "case_id": QUERY_CASE}), 422, "query_id")


# ---- cases -----------------------------------------------------------------------------------------

def test_cases_are_listed_with_links_to_their_images(client, service_setup):
    listing = client.get("/cases", params={"limit": 4})
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["total"] == len(service_setup.cases) and len(body["cases"]) == 4
    ids = [case["case_id"] for case in body["cases"]]
    assert ids == sorted(ids)
    rest = client.get("/cases", params={"limit": 200, "offset": 4}).json()["cases"]
    assert [case["case_id"] for case in rest] == sorted(case.case_id for case in service_setup.cases)[4:]
    first = body["cases"][0]
    assert first["thumbnail_url"] == f"/cases/{first['case_id']}/thumbnail" and "patient" not in listing.text
    image = client.get(first["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    pixels, _ = service_setup.inputs[first["case_id"]]
    decoded = np.asarray(Image.open(io.BytesIO(image.content)))
    assert decoded.shape == pixels.shape  # the whole image, in the pixels its boxes refer to
    np.testing.assert_allclose(decoded / 255.0, pixels, atol=0.5 / 255 + 1e-6)
    assert_problem(client.get("/cases", params={"limit": 0}), 422, "limit")
    assert_problem(client.get("/cases/unknown-case/image"), 404, "case_id")


def test_preview_shows_a_dicom_as_a_png_and_refuses_what_a_search_refuses(client, service_setup):
    pixels, _ = service_setup.inputs[QUERY_CASE]
    upload = dicom_bytes(np.round(pixels * 4095).astype(np.uint16), bits_stored=12)
    response = client.post("/preview", files={"image": ("chest.dcm", upload, "application/dicom")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    preview = np.asarray(Image.open(io.BytesIO(response.content)))
    assert preview.shape == pixels.shape  # at most 1024 pixels on the longer side: this one is smaller
    assert np.abs(preview / 255.0 - pixels).max() < 2 / 255
    assert (int(response.headers["x-image-width"]), int(response.headers["x-image-height"])) == pixels.shape[::-1]
    large = np.kron(pixels, np.ones((3, 3), dtype=pixels.dtype))  # longer side above 1024: scaled down
    scaled = client.post("/preview", files={"image": ("large.png", png_bytes(large), "image/png")})
    assert max(Image.open(io.BytesIO(scaled.content)).size) == 1024
    assert (int(scaled.headers["x-image-width"]), int(scaled.headers["x-image-height"])) == large.shape[::-1]
    refused = client.post("/preview", files={"image": ("notes.png", b"not an image at all", "image/png")})
    assert "not a DICOM, PNG or JPEG" in assert_problem(refused, 415, "image")["detail"]


def test_case_record_shows_findings_and_regions_but_no_patient(client, service_setup):
    response = client.get(f"/cases/{QUERY_CASE}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["findings"] == [service_setup.query_case.finding]
    assert [region["name"] for region in body["regions"]] == list(REGION_NAMES)
    assert "patient" not in response.text
    assert body["thumbnail_url"] == f"/cases/{QUERY_CASE}/thumbnail"
    assert_problem(client.get("/cases/unknown-case"), 404, "case_id")


def test_thumbnail_is_a_small_jpeg_with_caching_headers(client):
    response = client.get(f"/cases/{QUERY_CASE}/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(response.content))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) == 256
    etag = response.headers["etag"]
    assert "max-age" in response.headers["cache-control"]
    again = client.get(f"/cases/{QUERY_CASE}/thumbnail", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert_problem(client.get("/cases/unknown-case/thumbnail"), 404, "case_id")


# ---- health and readiness --------------------------------------------------------------------------

def test_readyz_is_503_until_the_model_and_index_are_loaded(service_setup):
    app = create_app(service_setup.settings())
    unstarted = TestClient(app)  # no lifespan: nothing loaded
    assert unstarted.get("/healthz").json() == {"status": "ok"}
    problem = assert_problem(unstarted.get("/readyz"), 503)
    assert "not been loaded" in problem["detail"]
    assert_problem(search(unstarted, b"x", "{}"), 503)
    with TestClient(app) as started:
        body = wait_until_ready(started)
    assert body == {"status": "ready", "index_version": PLAIN_VERSION,
                    "model_version": service_setup.embedder.fingerprint,
                    "anatomy_model_version": AnatomyModel.load().fingerprint}


def test_an_unusable_anatomy_model_keeps_the_service_unready_naming_it(service_setup, tmp_path, caplog):
    broken = tmp_path / "anatomy.onnx"
    broken.write_bytes(b"not an ONNX model")
    settings = service_setup.settings(anatomy_model=str(broken))
    with caplog.at_level(logging.ERROR, logger="service.state"), TestClient(create_app(settings)) as failing:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while "AnatomyModelError" not in (problem := failing.get("/readyz").json())["detail"]:
            assert time.monotonic() < deadline, problem
            time.sleep(0.05)
        assert_problem(failing.post("/regions", files={"image": ("x.png", b"x")}), 503)
    assert "cannot load the anatomy model anatomy.onnx" in next(
        record.problem for record in caplog.records if record.getMessage() == "service load failed")


def test_readyz_reports_why_loading_failed_without_the_error_text(service_setup, caplog):
    settings = service_setup.settings(checkpoint=str(service_setup.root / "no-checkpoint"))
    with caplog.at_level(logging.ERROR, logger="service.state"), TestClient(create_app(settings)) as failing:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while "CheckpointError" not in (problem := failing.get("/readyz").json())["detail"]:
            assert time.monotonic() < deadline, problem
            time.sleep(0.05)
        assert problem["status"] == 503 and "service log" in problem["detail"]
        assert "config.json" not in problem["detail"] and str(service_setup.root) not in problem["detail"]
        assert failing.get("/healthz").status_code == 200
    assert "config.json is missing" in next(record.problem for record in caplog.records
                                            if record.getMessage() == "service load failed")


def test_a_failed_load_is_retried_until_the_model_appears(service_setup, tmp_path):
    late = tmp_path / "checkpoint-published-late"
    settings = service_setup.settings(checkpoint=str(late), load_retry_seconds=0.2)
    with TestClient(create_app(settings)) as service:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while "CheckpointError" not in service.get("/readyz").json().get("detail", ""):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shutil.copytree(service_setup.checkpoint, late)  # published after the service started
        readiness = wait_until_ready(service)
    assert readiness["index_version"] == PLAIN_VERSION


def test_health_answers_while_every_worker_thread_is_busy(client, service_setup, monkeypatch):
    import anyio.to_thread

    release, entered = threading.Event(), threading.Event()

    def blocked_search(*args, **kwargs):
        entered.set()
        release.wait(60)
        raise Problem(503, "test-blocked", "held by the test")

    monkeypatch.setattr(search_route, "run_search", blocked_search)
    limiter = client.portal.call(anyio.to_thread.current_default_thread_limiter)
    tokens = limiter.total_tokens
    client.portal.call(setattr, limiter, "total_tokens", 1)  # one worker thread, and a search holds it
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    searching = threading.Thread(target=search, args=(client, png_bytes(pixels), regions_json(boxes)))
    try:
        searching.start()
        assert entered.wait(30)
        answers = {}
        probe = threading.Thread(target=lambda: answers.update(
            {path: client.get(path).status_code for path in ("/healthz", "/readyz", "/metrics")}))
        probe.start()
        probe.join(10)
        assert answers == {"/healthz": 200, "/readyz": 200, "/metrics": 200}
    finally:
        release.set()
        searching.join(30)
        client.portal.call(setattr, limiter, "total_tokens", tokens)


# ---- administration --------------------------------------------------------------------------------

def test_admin_routes_are_absent_without_a_token(client):
    assert_problem(client.get("/admin/index", headers=ADMIN), 404)


def test_admin_needs_the_bearer_token(admin_client):
    missing = assert_problem(admin_client.get("/admin/index"), 401)
    assert admin_client.get("/admin/index").headers["www-authenticate"].startswith("Bearer")
    wrong = admin_client.post("/admin/index/activate", json={"version": PLAIN_VERSION},
                              headers={"Authorization": "Bearer wrong-token"})
    assert_problem(wrong, 401)
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert missing["type"].endswith("unauthorized")


def test_admin_lists_the_active_and_available_snapshots(admin_client):
    listing = admin_client.get("/admin/index", headers=ADMIN).json()
    assert listing["active"]["version"] == OCCLUDED_VERSION and listing["active"]["count"] == 6
    assert {PLAIN_VERSION, OCCLUDED_VERSION} <= {entry["version"] for entry in listing["available"]}


def test_activate_and_roll_back_are_recorded(admin_client, admin_sessions):
    activated = admin_client.post("/admin/index/activate", json={"version": PLAIN_VERSION}, headers=ADMIN)
    assert activated.status_code == 200, activated.text
    assert activated.json()["active"]["version"] == PLAIN_VERSION
    assert activated.json()["previous_version"] == OCCLUDED_VERSION
    assert admin_client.get("/readyz").json()["index_version"] == PLAIN_VERSION
    rolled_back = admin_client.post("/admin/index/rollback", headers=ADMIN)
    assert rolled_back.status_code == 200 and rolled_back.json()["active"]["version"] == OCCLUDED_VERSION
    assert admin_client.get("/readyz").json()["index_version"] == OCCLUDED_VERSION
    with session_scope(admin_sessions) as session:
        latest = list_activations(session, limit=2)
    assert [(a.version, a.actor, a.outcome) for a in latest] == [
        (OCCLUDED_VERSION, "admin-token", "rolled_back"), (PLAIN_VERSION, "admin-token", "activated")]


def test_refused_activations_keep_the_active_snapshot(admin_client, service_setup, admin_sessions):
    setup = service_setup
    embeddings = np.stack(list(setup.embeddings.values()))
    ids = tuple(setup.embeddings)
    if not (setup.store / "corrupt").exists():  # published by the first backend's run of this module
        publish_gallery(setup.store, GalleryData(embeddings, ids), model_fingerprint="0" * 64,
                        version="other-model")
        publish_gallery(setup.store, GalleryData(embeddings, ids), model_fingerprint=setup.embedder.fingerprint,
                        version="corrupt")
        case_ids = setup.store / "corrupt" / CASE_IDS_FILE
        case_ids.write_text(case_ids.read_text().replace(QUERY_CASE, "cxrlb-9999"))

    def activate(version: str):
        return admin_client.post("/admin/index/activate", json={"version": version}, headers=ADMIN)

    assert_problem(activate("other-model"), 409)
    assert CASE_IDS_FILE in assert_problem(activate("corrupt"), 422)["detail"]
    assert_problem(activate("never-published"), 404)
    assert_problem(activate("../escape"), 422)
    assert_problem(admin_client.post("/admin/index/activate", json={}, headers=ADMIN), 422, "version")
    assert admin_client.get("/readyz").json()["index_version"] == OCCLUDED_VERSION
    with session_scope(admin_sessions) as session:
        refused = list_activations(session, limit=4)
    assert [(a.version, a.outcome) for a in refused] == [
        ("../escape", "refused"), ("never-published", "refused"), ("corrupt", "refused"),
        ("other-model", "refused")]
    assert all(a.detail for a in refused)


def test_rollback_without_a_previous_snapshot_is_refused(service_setup):
    settings = service_setup.settings(admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings)) as fresh:
        wait_until_ready(fresh)
        assert_problem(fresh.post("/admin/index/rollback", headers=ADMIN), 409)
        assert fresh.get("/readyz").json()["index_version"] == PLAIN_VERSION
