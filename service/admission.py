"""Admission control: at most `limit` expensive requests (searches, saliency, region finding) are in
progress at once, and at most `queue` more wait for a slot, in arrival order, before their upload is
read. One more is answered 503 with `Retry-After` at once, rather than queued without bound or
decoded alongside the others until a few dozen large radiographs exhaust memory.

Waiting requests cost only their connection: their bodies stay unread in the socket until admitted.
"""

from __future__ import annotations

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from service.problems import problem_response, unavailable

# The routes that decode uploads or run the model; health, metrics and cases are never refused here.
ADMITTED_PATHS = frozenset({"/search", "/saliency", "/regions", "/preview"})
# A search takes about a second on a CPU, so a slot is likely free again by then.
BUSY_RETRY_AFTER_SECONDS = 1


class AdmissionMiddleware:
    """Run at most `limit` requests to ADMITTED_PATHS at once with `queue` more waiting; refuse the
    rest at once, counting them in `registry`."""

    def __init__(self, app: ASGIApp, limit: int, queue: int, registry: CollectorRegistry):
        self.app = app
        self.slots = anyio.CapacityLimiter(limit)
        self.queue = queue
        self.waiting = 0  # only touched on the event loop, between awaits
        self.refused = Counter("chextriev_capacity_refused", "requests refused because the service was at "
                               "capacity", ("route",), registry=registry)
        Gauge("chextriev_capacity_in_progress", "searches, saliency and region requests in progress",
              registry=registry).set_function(lambda: self.slots.borrowed_tokens)
        Gauge("chextriev_capacity_waiting", "searches, saliency and region requests waiting for a slot",
              registry=registry).set_function(lambda: self.waiting)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].removeprefix(scope.get("root_path", "")) if scope["type"] == "http" else None
        if path not in ADMITTED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.slots.available_tokens == 0 and self.waiting >= self.queue:
            self.refused.labels(path).inc()
            problem = unavailable("over-capacity", f"the service is busy with {self.slots.total_tokens} "
                                  f"searches and {self.waiting} waiting; try again shortly",
                                  BUSY_RETRY_AFTER_SECONDS)
            await problem_response(problem)(scope, receive, send)
            return
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release()
