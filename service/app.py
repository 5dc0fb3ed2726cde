"""The FastAPI application: `create_app(settings)` wires the routes, the problem handlers, admission
control, the upload limit, request logging, metrics, the viewer page and the database probe of `/readyz`; its lifespan
loads the model and the index in a worker thread, and tries again every `load_retry_seconds` after a
failure until it succeeds or the service stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.admission import AdmissionMiddleware
from service.db.session import DatabaseProbe
from service.problems import install_problem_handlers
from service.request_log import RequestLogMiddleware
from service.routes import admin, cases, health, regions, saliency, search, viewer
from service.settings import Settings, get_settings
from service.state import ServiceState
from service.upload_limit import FORM_OVERHEAD_BYTES, UploadLimitMiddleware

DOCS_ASSETS_URL = "/docs-assets"
DESCRIPTION = ("Case-based retrieval of chest radiographs (CheXtriev): upload a frontal radiograph (with its "
               "18 anatomical region boxes, or without them: an anatomy model finds them), get the most "
               "similar past cases with their findings, and see which regions each match rests on. "
               "Errors are application/problem+json (RFC 9457).")


async def keep_loading(state: ServiceState, retry_seconds: float, stopping: asyncio.Event) -> None:
    """Load the model and the index in a worker thread; after a failure, try again every `retry_seconds`
    (a checkpoint or snapshot published late, a database back up) until ready or `stopping` is set."""
    while not stopping.is_set():
        await asyncio.to_thread(state.load)
        if state.ready:
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), retry_seconds)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service application for `settings` (default: the CHEXTRIEV_* environment)."""
    settings = settings or get_settings()
    state = ServiceState(settings)
    database_probe = DatabaseProbe(state.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stopping = asyncio.Event()
        loading = asyncio.create_task(keep_loading(state, settings.load_retry_seconds, stopping))
        try:
            yield
        finally:
            stopping.set()
            await loading  # a load in progress finishes first: its thread cannot be interrupted
            database_probe.close()
            state.close()

    # /docs and /redoc with their scripts, styles and favicon served from the fastapi-offline package:
    # a hospital network without internet access still shows them (FastAPI's own pages use a CDN).
    app = FastAPIOffline(title="CheXtriev retrieval service", description=DESCRIPTION, version="1",
                         lifespan=lifespan, static_url=DOCS_ASSETS_URL)
    app.state.service = state
    app.state.database_probe = database_probe
    install_problem_handlers(app)
    app.add_middleware(UploadLimitMiddleware, max_body_bytes=settings.max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.add_middleware(AdmissionMiddleware, limit=settings.max_concurrent_searches,
                       queue=settings.max_queued_searches, registry=state.metrics.registry)
    app.add_middleware(RequestLogMiddleware, metrics=state.metrics)
    for router in (search.router, regions.router, saliency.router, cases.router, health.router, viewer.router):
        app.include_router(router)
    app.mount(viewer.STATIC_URL, viewer.page_files(), name="static")
    if settings.admin_token is not None:
        app.include_router(admin.router)
    return app
