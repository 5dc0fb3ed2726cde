"""Every error as `application/problem+json` (RFC 9457): type, title, status, detail and `errors`.

`errors` lists each bad field as ``{"field": ..., "problem": ...}`` (region problems add
``"region"``). Typed errors of the model and index store map to their statuses here, FastAPI's own
validation errors and Starlette's routing errors are rewritten into the same shape, running out of
memory, losing the database or the DICOMweb archive are 503s with `Retry-After` (an archive too
slow is 504), and anything unexpected becomes a 500
whose detail carries only an error id (the traceback goes to the log).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from index_store.errors import (
    IndexUnavailableError,
    RegionSearchUnavailableError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotExistsError,
    SnapshotFileChangedError,
    SnapshotIncompatibleError,
    SnapshotInputError,
    SnapshotNotFoundError,
)
from model.anatomy_model import NoChestFoundError
from model.errors import (
    ChextrievError,
    CorruptImageError,
    ImageTooLargeError,
    RegionError,
    UnsupportedImageError,
)
from service.db.session import driver_message
from service.dicomweb import ArchiveNotFoundError, ArchiveTimeoutError, ArchiveUnavailableError
from service.study_checks import UnsupportedStudyError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:chextriev:problem:"
# Seconds a client is asked to wait after the database was unreachable or memory ran out.
RETRY_AFTER_SECONDS = 5


@dataclass(eq=False)
class Problem(Exception):
    """An error answered as a problem document; raise it from routes and services."""

    status: int
    slug: str
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        super().__init__(self.detail)


def unavailable(slug: str, detail: str, retry_after_seconds: int = RETRY_AFTER_SECONDS) -> Problem:
    """A 503 problem asking the client to try again after `retry_after_seconds`."""
    return Problem(503, slug, detail, headers={"Retry-After": str(retry_after_seconds)})


def database_unavailable() -> Problem:
    """The 503 problem of a database that cannot be reached or does not answer."""
    return unavailable("database-unavailable", "the database cannot be reached; try again shortly")


def field_problem(field_name: str, problem: str, **extra: Any) -> dict[str, Any]:
    """One entry of a problem's `errors` list."""
    return {"field": field_name, "problem": problem, **extra}


class ProblemResponse(JSONResponse):
    """problem+json, written in ASCII with JSON escapes: a problem may quote what the client sent (a
    region name), and a lone surrogate such as "\\ud800" cannot be encoded as UTF-8, so it is answered
    as the escape the client sent rather than failing the response."""

    media_type = PROBLEM_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def problem_response(problem: Problem) -> JSONResponse:
    """The problem+json response of `problem`."""
    body = {
        "type": TYPE_PREFIX + problem.slug,
        "title": _title(problem.status),
        "status": problem.status,
        "detail": problem.detail,
        "errors": problem.errors,
    }
    return ProblemResponse(body, status_code=problem.status, headers=problem.headers)


# (error class, HTTP status, type slug, field named in `errors`), most specific first.
_CHEXTRIEV_ERRORS: tuple[tuple[type[Exception], int, str, str], ...] = (
    (ImageTooLargeError, 413, "image-too-large", "image"),
    (UnsupportedImageError, 415, "unsupported-image", "image"),
    (CorruptImageError, 422, "corrupt-image", "image"),
    (UnsupportedStudyError, 422, "unsupported-study", "image"),
    (NoChestFoundError, 422, "no-chest-found", "image"),
    (ArchiveNotFoundError, 404, "unknown-study", "study_uid"),
    (ArchiveTimeoutError, 504, "archive-timeout", "study_uid"),
)
_SNAPSHOT_ERRORS: tuple[tuple[type[SnapshotError], int, str], ...] = (
    (SnapshotNotFoundError, 404, "snapshot-not-found"),
    (SnapshotIncompatibleError, 409, "snapshot-incompatible"),
    (SnapshotExistsError, 409, "snapshot-exists"),
    (SnapshotCorruptError, 422, "snapshot-corrupt"),
    (SnapshotInputError, 422, "snapshot-input-invalid"),
)


def problem_from_error(error: ChextrievError | SnapshotError) -> Problem:
    """The problem for a typed error of the model or the index store."""
    if isinstance(error, SnapshotFileChangedError):  # the server's fault; its path stays in the log
        logger.error("the active snapshot changed on disk", extra={"problem": str(error)})
        return unavailable("snapshot-damaged", "the active index snapshot changed on disk after it was "
                           "activated; an administrator must activate a sound snapshot")
    if isinstance(error, IndexUnavailableError):  # the back end's fault (Milvus down); details in the log
        logger.error("the index back end failed", extra={"problem": str(error)})
        return unavailable("index-unavailable", "the index back end cannot answer now; try again later")
    if isinstance(error, ArchiveUnavailableError):  # the archive's fault; a client may try again later
        return unavailable("archive-unavailable", str(error))
    if isinstance(error, RegionSearchUnavailableError):
        return Problem(422, "region-search-unavailable", str(error), [
            field_problem("regions_of_interest", "the active index snapshot has no per-region vectors")])
    if isinstance(error, RegionError):
        return Problem(422, "invalid-regions", str(error), [
            field_problem("regions", p.problem, region=p.region) for p in error.problems])
    for error_class, status, slug, field_name in _CHEXTRIEV_ERRORS:
        if isinstance(error, error_class):
            return Problem(status, slug, str(error), [field_problem(field_name, str(error))])
    for error_class, status, slug in _SNAPSHOT_ERRORS:
        if isinstance(error, error_class):
            return Problem(status, slug, str(error))
    return Problem(422, "invalid-input", str(error))


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error raised in `app` with a problem document."""
    app.add_exception_handler(Problem, _problem_handler)
    app.add_exception_handler(ChextrievError, _typed_error_handler)
    app.add_exception_handler(SnapshotError, _typed_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    for error_class in (MemoryError, torch.OutOfMemoryError):
        app.add_exception_handler(error_class, _out_of_memory_handler)
    for error_class in (DBAPIError, PoolTimeoutError):
        app.add_exception_handler(error_class, _database_handler)
    app.add_exception_handler(Exception, _unexpected_handler)


async def _problem_handler(request: Request, problem: Problem) -> JSONResponse:
    return problem_response(problem)


async def _typed_error_handler(request: Request, error: Exception) -> JSONResponse:
    return problem_response(problem_from_error(error))


async def _validation_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = [field_problem(_field_name(item.get("loc", ())), item.get("msg", "invalid"),
                            location=_location(item.get("loc", ())))
              for item in error.errors()]
    fields = ", ".join(dict.fromkeys(entry["field"] for entry in errors))
    return problem_response(Problem(422, "invalid-request", f"invalid request fields: {fields}", errors))


async def _http_exception_handler(request: Request, error: StarletteHTTPException) -> JSONResponse:
    slugs = {404: "not-found", 405: "method-not-allowed", 413: "request-too-large"}
    detail = error.detail if isinstance(error.detail, str) else _title(error.status_code)
    if error.status_code == 404 and detail == "Not Found":
        detail = f"no resource at {request.url.path}"
    return problem_response(Problem(error.status_code, slugs.get(error.status_code, "http-error"),
                                    detail, headers=dict(error.headers or {})))


async def _out_of_memory_handler(request: Request, error: Exception) -> JSONResponse:
    logger.error("out of memory", exc_info=error, extra={"route": _route_template(request)})
    return problem_response(unavailable("insufficient-memory",
                                        "the service ran out of memory for this request; try again later"))


async def _database_handler(request: Request, error: Exception) -> JSONResponse:
    """503 for a database that cannot be reached (a refused or lost connection, a full pool); any other
    database error (a constraint, a bad statement) is a bug and answered as one."""
    if isinstance(error, DBAPIError) and not (isinstance(error, OperationalError) or error.connection_invalidated):
        return await _unexpected_handler(request, error)
    logger.error("database unavailable", extra={"route": _route_template(request), "problem": driver_message(error)})
    return problem_response(database_unavailable())


async def _unexpected_handler(request: Request, error: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex
    logger.error("unexpected error", exc_info=error,
                 extra={"error_id": error_id, "route": _route_template(request)})
    return problem_response(Problem(500, "internal-error",
                                    f"an unexpected error occurred (error id {error_id})"))


def _field_name(loc: tuple[Any, ...]) -> str:
    """`("body", "k")` -> "k"; the location prefix is reported separately."""
    parts = [str(part) for part in loc[1:]] if len(loc) > 1 else [str(part) for part in loc]
    return ".".join(parts) or "request"


def _location(loc: tuple[Any, ...]) -> str:
    return str(loc[0]) if loc else "request"


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _route_template(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")
