"""Index administration (present only when CHEXTRIEV_ADMIN_TOKEN is set): list, activate, roll back."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.index_admin import activate_version, index_listing, roll_back
from service.routes.dependencies import Admin, State, problem_responses
from service.schemas import ActivateRequest, ActivationResponse, IndexListing

router = APIRouter(prefix="/admin", tags=["admin"], responses=problem_responses(401, 503))


@router.get("/index", response_model=IndexListing)
async def list_index(state: State, actor: Admin) -> IndexListing:
    """The active snapshot, the rollback target and every snapshot in the store."""
    return await run_in_threadpool(index_listing, state)


@router.post("/index/activate", response_model=ActivationResponse,
             responses=problem_responses(400, 404, 409, 413, 422))
async def activate(body: ActivateRequest, state: State, actor: Admin) -> ActivationResponse:
    """Verify, load, canary-check and atomically swap in a published snapshot; the old one stays on failure."""
    return await run_in_threadpool(activate_version, state, body.version, actor)


@router.post("/index/rollback", response_model=ActivationResponse, responses=problem_responses(404, 409, 422))
async def rollback(state: State, actor: Admin) -> ActivationResponse:
    """Swap the previously active snapshot back in."""
    return await run_in_threadpool(roll_back, state, actor)
