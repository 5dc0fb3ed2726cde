"""Fuzz the HTTP API with schemathesis against its own OpenAPI document: nothing a client sends may
get a 5xx, and every answer must conform to the document (a documented status code and content
type, a body matching its schema), besides schemathesis' other checks.

The application runs in-process (ASGI, no network) over the real test setup of
tests/service/service_setup.py, once per backend (SQLite, and PostgreSQL at
$CHEXTRIEV_TEST_POSTGRES_URL) and admin token mode (the valid token, none, a wrong one), each time
on a fresh database and its own copy of the index store. A run is schemathesis' engine (schema
examples, coverage, fuzzing with valid and invalid data), deterministic, then a few targeted
requests checked the same way: valid ones that generated data never makes (a search with a real
radiograph, its saliency, a case and its thumbnail, an activation and a rollback) and the refusals
that fuzzing once found answered outside the document.

Usage, from the repository root (writes a JSON summary; exits 1 if anything failed):
    CHEXTRIEV_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/test \\
        .venv/bin/python -m scripts.fuzz --cases 12000 bench/results/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.engine import events, from_schema
from schemathesis.python import asgi

from service.app import create_app
from service.upload_limit import FORM_OVERHEAD_BYTES
from tests.service.databases import BACKENDS, POSTGRES_URL_ENV
from tests.service.service_setup import (
    OCCLUDED_VERSION,
    PLAIN_VERSION,
    QUERY_CASE,
    SALIENCY_CASE,
    ServiceSetup,
    build_service_setup,
    png_bytes,
    regions_json,
    service_database,
)

ADMIN_TOKEN = "fuzz-admin-token"
TOKEN_HEADERS: dict[str, dict[str, str]] = {
    "valid": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    "missing": {},
    "wrong": {"Authorization": "Bearer not-the-admin-token"},
}
SEED = 20240610
DEFAULT_CASES = 12_000
READY_TIMEOUT_SECONDS = 120
# The checks that compare an answer with the document; the others judge the behaviour.
SCHEMA_CHECKS = frozenset({"status_code_conformance", "content_type_conformance",
                           "response_schema_conformance", "response_headers_conformance"})
# What POST /search, /regions and /preview answer to schema-valid bytes that are no radiograph (or no
# chest), or regions that are no boxes.
SEARCH_REFUSALS = ("413", "415", "422")
UPLOAD_PATHS = ("/search", "/regions", "/preview")
TARGETED_PHASE = "targeted"
FAILURE_DETAILS_KEPT = 50
DISTINCT_FAILURE_KEYS = ("backend", "token", "operation", "phase", "check", "status")
CURL_CHARACTERS_KEPT = 1000


@dataclass(frozen=True)
class Exchange:
    """One request sent: its operation and phase, the status answered, the failed checks and, when
    any failed, a curl command that repeats it."""

    operation: str
    phase: str
    status: int | None
    failures: tuple[Failure, ...]
    curl: str


@dataclass
class Tally:
    """Requests, statuses, 5xx answers and check failures per backend, token mode and operation."""

    cases: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    phases: Counter[str] = field(default_factory=Counter)
    server_errors: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    engine_errors: list[str] = field(default_factory=list)

    def add(self, backend: str, token: str, exchange: Exchange) -> None:
        """Count one exchange of the run on `backend` with token mode `token`."""
        self.cases[backend, token, exchange.operation] += 1
        self.statuses[exchange.operation, str(exchange.status)] += 1
        self.phases[exchange.phase] += 1
        self.server_errors += exchange.status is not None and exchange.status >= 500
        self.failures += [_failure_record(backend, token, exchange, failure) for failure in exchange.failures]

    def summary(self) -> dict[str, Any]:
        """The totals, JSON-ready; distinct failures are listed, at most FAILURE_DETAILS_KEPT of them."""
        distinct = {tuple(f[name] for name in DISTINCT_FAILURE_KEYS): f for f in self.failures}
        return {
            "cases": sum(self.cases.values()),
            "cases_by_route": _totals(self.cases, 2),
            "cases_by_backend": _totals(self.cases, 0),
            "cases_by_token_mode": _totals(self.cases, 1),
            "cases_by_phase": dict(sorted(self.phases.items())),
            "cases_by_run": {"/".join(key): count for key, count in sorted(self.cases.items())},
            "statuses_by_route": _nested(self.statuses),
            "server_errors": self.server_errors,
            "failures": len(self.failures),
            "schema_failures": sum(f["schema"] for f in self.failures),
            "engine_errors": self.engine_errors,
            "failure_details": list(distinct.values())[:FAILURE_DETAILS_KEPT],
        }


def fuzz_config(headers: dict[str, str], max_examples: int) -> schemathesis.Config:
    """Every schemathesis check, deterministic generation of valid and invalid data (failures kept as
    found, not shrunk), `headers` on every request; POST /search and POST /preview may refuse
    schema-valid bytes that are no radiograph, and POST /regions those that hold no chest.

    The stateful phase is off: its links start from the cases a search returns, and no generated
    upload is a radiograph, so it would only spend the budget on GET /cases/{case_id} 404s."""
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "headers": headers,
        "continue-on-failure": True,
        "generation": {"mode": "all", "max-examples": max_examples, "deterministic": True, "no-shrink": True,
                       "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "operations": [{"include-path": path, "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2XX", *SEARCH_REFUSALS]}}}
            for path in UPLOAD_PATHS],
    })


def fuzz_run(setup: ServiceSetup, backend: str, token: str, max_examples: int, workdir: Path,
             tally: Tally) -> list[str]:
    """Fuzz a fresh service on `backend` with token mode `token`, adding what was sent to `tally`;
    the operations of the service's OpenAPI document ("POST /search", ...)."""
    headers = TOKEN_HEADERS[token]
    with running_app(setup, backend, workdir) as app:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=fuzz_config(headers, max_examples))
        for exchange in engine_exchanges(schema, tally.engine_errors):
            tally.add(backend, token, exchange)
        for exchange in targeted_exchanges(schema, setup, headers):
            tally.add(backend, token, exchange)
    return [operation.ok().label for operation in schema.get_all_operations()]


@contextmanager
def running_app(setup: ServiceSetup, backend: str, workdir: Path) -> Iterator[Any]:
    """The service with an admin token, over a fresh database on `backend` and a copy of the setup's
    two snapshots (so administration changes nothing other tests use); started and ready."""
    store = workdir / "index"
    for version in (PLAIN_VERSION, OCCLUDED_VERSION):
        shutil.copytree(setup.store / version, store / version)
    with service_database(setup, backend, workdir) as url:
        app = create_app(setup.settings(database_url=url, index_store=str(store), admin_token=ADMIN_TOKEN))
        try:
            with asgi.get_client(app) as client:  # starts the lifespan, which schemathesis keeps running
                wait_until_ready(client)
            yield app
        finally:
            asgi.shutdown_lifespans()


def wait_until_ready(client: Any) -> None:
    """Poll /readyz until the model and the snapshot are loaded."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service was not ready within {READY_TIMEOUT_SECONDS} s")
        time.sleep(0.05)


def engine_exchanges(schema: Any, errors: list[str]) -> Iterator[Exchange]:
    """Run schemathesis' engine over `schema`: every request it sent, in order. Errors of the engine
    itself (a request it could not build, an exception out of the application) go to `errors`."""
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            yield from _recorded_exchanges(event.recorder, str(event.phase))
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {type(event.value).__name__}: {event.value}")
        elif isinstance(event, events.FatalError):
            errors.append(f"fatal: {type(event.exception).__name__}: {event.exception}")


def targeted_exchanges(schema: Any, setup: ServiceSetup, headers: dict[str, str]) -> Iterator[Exchange]:
    """Valid requests generated data never makes: a search with a real radiograph and its boxes, the
    regions of that radiograph and a search without boxes, the saliency of a gallery case for the
    first search as JSON and PNG, the preview of the radiograph, a case, its whole image, its thumbnail
    (then 304 for its ETag),
    the index listing, an activation and a rollback; then the refusals of `found_refusals`."""
    pixels, boxes = setup.inputs[QUERY_CASE]
    exchange, response = _call(schema["/search"]["POST"].Case(
        body={"image": png_bytes(pixels), "regions": regions_json(boxes), "k": 3},
        media_type="multipart/form-data"), headers)
    yield exchange
    yield _call(schema["/regions"]["POST"].Case(body={"image": png_bytes(pixels)}, media_type="multipart/form-data"),
                headers)[0]
    yield _call(schema["/preview"]["POST"].Case(body={"image": png_bytes(pixels)}, media_type="multipart/form-data"),
                headers)[0]
    yield _call(schema["/search"]["POST"].Case(body={"image": png_bytes(pixels), "k": 3},
                                               media_type="multipart/form-data"), headers)[0]
    query_id = response.json()["query_id"] if response.status_code == 200 else "unknown-query"
    for image_format in ("json", "png"):
        yield _call(schema["/saliency"]["GET"].Case(
            query={"query_id": query_id, "case_id": SALIENCY_CASE, "format": image_format}), headers)[0]
    yield _call(schema["/cases/{case_id}"]["GET"].Case(path_parameters={"case_id": QUERY_CASE}), headers)[0]
    yield _call(schema["/cases/{case_id}/image"]["GET"].Case(path_parameters={"case_id": QUERY_CASE}), headers)[0]
    thumbnail = schema["/cases/{case_id}/thumbnail"]["GET"]
    exchange, response = _call(thumbnail.Case(path_parameters={"case_id": QUERY_CASE}), headers)
    yield exchange
    etag = (response.headers.get("etag") or ["*"])[0]
    yield _call(thumbnail.Case(path_parameters={"case_id": QUERY_CASE}, headers={"If-None-Match": etag}), headers)[0]
    yield _call(schema["/admin/index"]["GET"].Case(), headers)[0]
    yield _call(schema["/admin/index/activate"]["POST"].Case(
        body={"version": OCCLUDED_VERSION}, media_type="application/json"), headers)[0]
    yield _call(schema["/admin/index/rollback"]["POST"].Case(), headers)[0]
    for case in found_refusals(schema, setup.settings().max_upload_bytes + FORM_OVERHEAD_BYTES):
        yield _call(case, headers)[0]


def found_refusals(schema: Any, max_body_bytes: int) -> list[Any]:
    """Requests that fuzzing found answered outside the document or with a 5xx, sent in every run: an
    activation body that is no UTF-8 JSON (400), a version with a NUL (422; it was a 500 on
    PostgreSQL), and bodies past the upload limit (413)."""
    activate, search = schema["/admin/index/activate"]["POST"], schema["/search"]["POST"]
    oversized = b"x" * (max_body_bytes + 1)
    return [activate.Case(body=b"\x15\xe0\x0c\x87\xea", media_type="application/json"),
            activate.Case(body={"version": "v\x00"}, media_type="application/json"),
            activate.Case(body=oversized, media_type="application/json"),
            search.Case(body={"image": oversized, "regions": "{}"}, media_type="multipart/form-data")]


def _call(case: Any, headers: dict[str, str]) -> tuple[Exchange, Any]:
    """Send `case` with `headers` and run the configured checks on the answer."""
    response = case.call(headers=headers)
    try:
        case.validate_response(response, headers=headers)
        failures: tuple[Failure, ...] = ()
    except FailureGroup as group:
        failures = tuple(group.exceptions)
    curl = case.as_curl_command(headers=headers) if failures else ""
    return Exchange(case.operation.label, TARGETED_PHASE, response.status_code, failures, curl), response


def _recorded_exchanges(recorder: Any, phase: str) -> Iterator[Exchange]:
    for case_id, interaction in recorder.interactions.items():
        failed = [node.failure_info for node in recorder.checks.get(case_id, []) if node.failure_info is not None]
        status = interaction.response.status_code if interaction.response is not None else None
        yield Exchange(recorder.cases[case_id].value.operation.label, phase, status,
                       tuple(info.failure for info in failed), failed[0].code_sample if failed else "")


def _failure_record(backend: str, token: str, exchange: Exchange, failure: Failure) -> dict[str, Any]:
    return {"backend": backend, "token": token, "operation": exchange.operation, "phase": exchange.phase,
            "check": ",".join(failure.checks) or failure.code, "title": failure.title,
            "schema": bool(SCHEMA_CHECKS & set(failure.checks)), "status": exchange.status,
            "message": failure.message, "curl": exchange.curl[:CURL_CHARACTERS_KEPT]}


def _totals(counts: Counter[tuple[str, ...]], position: int) -> dict[str, int]:
    """`counts` summed over every key part but the one at `position`."""
    totals: Counter[str] = Counter()
    for key, count in counts.items():
        totals[key[position]] += count
    return dict(sorted(totals.items()))


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (outer, inner), count in sorted(counts.items()):
        nested.setdefault(outer, {})[inner] = count
    return nested


def examples_per_operation(setup: ServiceSetup, cases: int) -> int:
    """Hypothesis examples per operation and run for about `cases` requests over every backend and
    token mode: they go to the operations that take parameters or a body (the others have a single
    request to make); the coverage phase and the targeted requests come on top."""
    paths = create_app(setup.settings(admin_token=ADMIN_TOKEN)).openapi()["paths"]
    with_input = sum("parameters" in operation or "requestBody" in operation
                     for methods in paths.values() for operation in methods.values())
    return max(1, math.ceil(cases / (len(BACKENDS) * len(TOKEN_HEADERS) * with_input)))


def fuzz_everything(setup: ServiceSetup, max_examples: int, workdir: Path) -> dict[str, Any]:
    """Fuzz every backend and token mode; the summary, with the seconds it took."""
    started = time.perf_counter()
    tally = Tally()
    for backend in BACKENDS:
        for token in TOKEN_HEADERS:
            fuzz_run(setup, backend, token, max_examples, workdir / f"{backend}-{token}", tally)
    return {**tally.summary(), "seconds": round(time.perf_counter() - started, 1)}


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as temporary:
        json.dump(payload, temporary, indent=2)
        temporary.write("\n")
        temporary.flush()
        os.fsync(temporary.fileno())
    os.chmod(temporary.name, 0o644)  # a temporary file is private; the summary is not
    os.replace(temporary.name, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="where to write the JSON summary")
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES,
                        help=f"about how many requests to send in all (default {DEFAULT_CASES})")
    args = parser.parse_args()
    if not os.environ.get(POSTGRES_URL_ENV):
        parser.error(f"${POSTGRES_URL_ENV} must name a PostgreSQL server, "
                     "e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    logging.disable(logging.WARNING)  # the service logs each refusal; errors still show
    with tempfile.TemporaryDirectory(prefix="chextriev-fuzz-") as scratch:
        setup = build_service_setup(Path(scratch) / "setup")
        max_examples = examples_per_operation(setup, args.cases)
        summary = fuzz_everything(setup, max_examples, Path(scratch))
    write_json_atomically(args.summary, {
        **summary, "cases_requested": args.cases, "examples_per_operation": max_examples, "seed": SEED,
        "schemathesis_version": schemathesis.__version__, "arguments": sys.argv[1:]})
    return 1 if summary["failures"] or summary["server_errors"] or summary["engine_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
