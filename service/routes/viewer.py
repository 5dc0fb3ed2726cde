"""`GET /`: the viewer page, and `/static/...`: its script and style sheet. Plain HTML, CSS and JavaScript
from the package (service/static), no build step; the Content-Security-Policy lets the page load and
call nothing but this service."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_URL = "/static"
# Everything from this origin only: no CDN, no fonts or scripts from elsewhere, no inline script or
# style, no framing; blob: for the preview of an upload the page builds in the browser.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def viewer_page() -> FileResponse:
    """The viewer page for clinicians."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


class PageFiles(StaticFiles):
    """The page's static files, with the page's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def page_files() -> PageFiles:
    """The static files application to mount at STATIC_URL."""
    return PageFiles(directory=STATIC_DIR)
