"""A request body limit enforced while the body is read: nothing past the limit is ever read.

A declared Content-Length over the limit is refused before the first byte is read; a body without
one (chunked) is counted as it arrives and refused as soon as it passes the limit. The refusal is
an HTTP 413 raised from the body stream, which the problem handlers answer as problem+json.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Room for the multipart framing and the small form fields (regions JSON, k, patient id) of
# `POST /search` on top of the largest accepted image file.
FORM_OVERHEAD_BYTES = 2 * 1024 * 1024


class RequestTooLargeError(HTTPException):
    """The request body is larger than the service accepts."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes "
                              f"(an image of at most {limit - FORM_OVERHEAD_BYTES} bytes plus the form fields)")


class UploadLimitMiddleware:
    """Refuse request bodies larger than `max_body_bytes` without reading past the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > self.max_body_bytes:
                raise RequestTooLargeError(self.max_body_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise RequestTooLargeError(self.max_body_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _declared_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
