"""Liveness, readiness and Prometheus metrics.

The handlers are coroutines and do no blocking work, so they answer on the event loop at once even
when every worker thread is busy with searches (a container health check must not queue behind them);
readiness pings the database on a thread of its own (service.db.session.DatabaseProbe)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.problems import database_unavailable
from service.routes.dependencies import State, problem_responses
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (whether or not the model and index are loaded)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
async def readyz(request: Request, state: State) -> Readiness:
    """200 once the models and an index snapshot are loaded and the database answers; 503 with the
    reason otherwise."""
    embedder, index = state.require_ready()
    if not await request.app.state.database_probe.reachable():
        raise database_unavailable()
    return Readiness(index_version=index.manifest.version, model_version=embedder.fingerprint,
                     anatomy_model_version=state.anatomy.fingerprint)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(state: State) -> Response:
    """Prometheus text exposition: requests per route and status, latency, index size and version."""
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)

