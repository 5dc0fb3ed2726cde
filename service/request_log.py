"""One structured log line and one metrics observation per request.

The line names the route template (never the raw path, which may carry ids), the method, the
status, the milliseconds and, for searches and saliency, the query id; never image bytes, form
fields or patient identifiers.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ServiceMetrics

logger = logging.getLogger("service.requests")

UNMATCHED_ROUTE = "unmatched"
# The methods HTTP defines (RFC 9110, plus PATCH); any other is logged and counted as OTHER_METHOD, so a
# client cannot create metric series (or log values) of its own choosing.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
OTHER_METHOD = "other"


def route_template(scope: Scope) -> str:
    """The path template of the route that served `scope` ("/cases/{case_id}"), or "unmatched"."""
    return getattr(scope.get("route"), "path", UNMATCHED_ROUTE)


class RequestLogMiddleware:
    """Time each HTTP request, count it in the metrics, and log it once."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
            self.metrics.observe(route, method, status, seconds)
            logger.info("request", extra={
                "route": route, "method": method, "status": status,
                "ms": round(seconds * 1000, 2), "query_id": scope.get("state", {}).get("query_id")})
