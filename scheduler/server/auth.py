"""Who is calling: every request but the health check carries a token (the
``Authorization: Bearer`` header; the dashboard's pages send it as a cookie),
and each token is a labq user, admin when cluster.yaml's
``metadata.labq.admins`` lists them.

A cookie is accepted for reading only (GET and HEAD): a change (submit,
cancel) needs the header, which another site's page cannot make a browser
send, so the dashboard's cookie cannot be used for cross-site requests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import HTTPException, Request

TOKEN_COOKIE = "labq_token"
log = logging.getLogger("labq.server")


@dataclass(frozen=True)
class Caller:
    user: str
    admin: bool


def verify_token(app, token: str | None) -> Caller | None:
    user = app.state.tokens.verify(token)
    if user is None:
        return None
    return Caller(user, user in app.state.admins)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def page_caller(request: Request) -> Caller | None:
    """The dashboard's user, from the cookie its login page set."""
    return verify_token(request.app, request.cookies.get(TOKEN_COOKIE))


def api_caller(request: Request) -> Caller:
    """A FastAPI dependency: the caller, or 401 (logged without the token)."""
    token = _bearer(request)
    if token is None and request.method in ("GET", "HEAD"):
        token = request.cookies.get(TOKEN_COOKIE)
    caller = verify_token(request.app, token)
    if caller is None:
        client = request.client.host if request.client else "?"
        log.warning("401 %s %s from %s: %s", request.method, request.url.path, client,
                    "no token" if token is None else "wrong token")
        raise HTTPException(401, "a valid labq token is needed: `labq login URL` (or a header "
                                 "'Authorization: Bearer TOKEN'); `labq token create NAME` on the head makes one",
                            headers={"WWW-Authenticate": "Bearer"})
    return caller
