"""Dependencies shared by the routes: the service state, admin authentication, problem responses."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.problems import PROBLEM_MEDIA_TYPE, Problem
from service.schemas import ProblemDocument
from service.state import ServiceState

ADMIN_ACTOR = "admin-token"
# Documents the admin routes' bearer authentication in the OpenAPI document; require_admin answers a
# missing or wrong token itself (401 problem with a challenge), so the scheme never raises.
ADMIN_BEARER = HTTPBearer(auto_error=False, scheme_name="adminToken",
                          description="the token configured as CHEXTRIEV_ADMIN_TOKEN")


async def get_state(request: Request) -> ServiceState:
    """The state of the application serving `request` (async: it never waits for a worker thread)."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


def require_admin(state: State,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Security(ADMIN_BEARER)]) -> str:
    """The actor name of an authenticated administrator; 401 unless the bearer token matches."""
    token = state.settings.admin_token
    given = credentials.credentials if credentials is not None else ""
    if token is None or not given or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        challenge = 'Bearer realm="chextriev-admin"' + (', error="invalid_token"' if given else "")
        raise Problem(401, "unauthorized", "administration needs the bearer token configured as "
                      "CHEXTRIEV_ADMIN_TOKEN in an 'Authorization: Bearer <token>' header",
                      headers={"WWW-Authenticate": challenge})
    return ADMIN_ACTOR


Admin = Annotated[str, Depends(require_admin)]


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI descriptions of the problem documents a route may answer with."""
    return {status: {"model": ProblemDocument, "content": {PROBLEM_MEDIA_TYPE: {}}} for status in statuses}
