"""`GET /cases` (a page of the gallery), `GET /cases/{case_id}`, its thumbnail and its whole image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.case_images import case_png, make_thumbnail, thumbnail_etag
from service.db.repository import CaseRecord, get_case, list_cases
from service.db.session import session_scope
from service.problems import Problem, field_problem
from service.routes.dependencies import State, problem_responses
from service.schemas import CaseListing, CaseResponse, CaseSummary, region_entries

router = APIRouter(tags=["cases"])

CaseId = Annotated[str, Path(min_length=1, max_length=128)]
THUMBNAIL_CACHE_CONTROL = "private, max-age=86400"


@router.get("/cases", response_model=CaseListing, responses=problem_responses(422, 503))
def read_cases(state: State, request: Request,
               limit: Annotated[int, Query(ge=1, le=200, description="cases per page")] = 50,
               offset: Annotated[int, Query(ge=0, le=10**9, description="cases to skip")] = 0) -> CaseListing:
    """A page of the gallery's cases in case id order (findings, allow-listed metadata, image links)."""
    with session_scope(state.sessions) as session:
        cases, total = list_cases(session, limit, offset)
    return CaseListing(total=total, cases=[
        CaseSummary(case_id=case.case_id, findings=case.findings, metadata=case.metadata,
                    thumbnail_url=str(request.url_for("case_thumbnail", case_id=case.case_id).path),
                    image_url=str(request.url_for("case_image", case_id=case.case_id).path))
        for case in cases])


@router.get("/cases/{case_id}", response_model=CaseResponse, responses=problem_responses(404, 422, 503))
def read_case(case_id: CaseId, state: State, request: Request) -> CaseResponse:
    """The stored case: findings, region boxes, size and allow-listed metadata (never the patient)."""
    case = _stored_case(state, case_id)
    return CaseResponse(
        case_id=case.case_id, findings=case.findings, regions=region_entries(case.region_boxes),
        width=case.width, height=case.height, metadata=case.metadata,
        thumbnail_url=str(request.url_for("case_thumbnail", case_id=case.case_id).path),
        archive_url=archive_url(state.settings.study_url_template, case))


def archive_url(template: str | None, case: CaseRecord) -> str | None:
    """The case's study in the archive's viewer, when a template is configured and the case has a study UID."""
    if template is None or case.study_uid is None:
        return None
    return template.format(study_uid=case.study_uid, series_uid=case.series_uid or "", sop_uid=case.sop_uid or "")


@router.get("/cases/{case_id}/thumbnail", name="case_thumbnail", response_class=Response,
            responses={**problem_responses(404, 422, 503), 200: {"content": {"image/jpeg": {}}}, 304: {}})
async def case_thumbnail(case_id: CaseId, state: State,
                         if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """A JPEG of the case's radiograph, longer side at most CHEXTRIEV_THUMBNAIL_MAX_SIDE pixels."""
    root, max_side = state.settings.image_root, state.settings.thumbnail_max_side
    case = await run_in_threadpool(_stored_case, state, case_id)
    headers = {"Cache-Control": THUMBNAIL_CACHE_CONTROL}
    etag = await run_in_threadpool(thumbnail_etag, root, case, max_side)
    if if_none_match and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={**headers, "ETag": etag})
    thumbnail = await run_in_threadpool(make_thumbnail, root, case, max_side)
    return Response(thumbnail.jpeg, media_type="image/jpeg", headers={**headers, "ETag": thumbnail.etag})


@router.get("/cases/{case_id}/image", name="case_image", response_class=Response,
            responses={**problem_responses(404, 422, 503), 200: {"content": {"image/png": {}}}})
async def case_image(case_id: CaseId, state: State) -> Response:
    """The case's whole radiograph as an 8-bit grey PNG, in the pixels its region boxes refer to."""
    case = await run_in_threadpool(_stored_case, state, case_id)
    png = await run_in_threadpool(case_png, state.settings.image_root, case)
    return Response(png, media_type="image/png", headers={"Cache-Control": THUMBNAIL_CACHE_CONTROL})


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match's weak comparison: "*" or any listed tag equal to `etag` ignoring a W/ prefix."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _stored_case(state: State, case_id: str) -> CaseRecord:
    with session_scope(state.sessions) as session:
        case = get_case(session, case_id)
    if case is None:
        raise Problem(404, "unknown-case", f"case {case_id} is not in the gallery",
                      [field_problem("case_id", "unknown case")])
    return case
