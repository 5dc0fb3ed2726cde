"""`GET /saliency`: which regions of a retrieved case the match rests on (JSON or PNG)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.routes.dependencies import State, problem_responses
from service.saliency_service import run_saliency
from service.schemas import SaliencyResponse

router = APIRouter(tags=["search"])

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


@router.get("/saliency", response_model=SaliencyResponse,
            responses={**problem_responses(404, 422, 503),
                       200: {"content": {"image/png": {}}, "description": "JSON, or a PNG with format=png"}})
async def saliency(
    request: Request,
    state: State,
    query_id: Annotated[str, Query(pattern=ID_PATTERN, description="query_id of a recent search")],
    case_id: Annotated[str, Query(min_length=1, max_length=128, description="a case the search returned")],
    format: Annotated[Literal["json", "png"], Query(description="json (default) or png")] = "json",
) -> SaliencyResponse | Response:
    """The similarity drop when each of the case's 18 regions is blanked, or the heatmap as a PNG."""
    request.state.query_id = query_id
    outcome = await run_in_threadpool(run_saliency, state, query_id, case_id, render=format == "png")
    if outcome.png is not None:
        return Response(outcome.png, media_type="image/png",
                        headers={"Cache-Control": "private, no-store"})
    return outcome.response
