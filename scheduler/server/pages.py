"""The dashboard: HTML pages served by `labq server` beside its JSON API.

Each page is a thin shell (templates/) whose script (static/) reads the JSON
API with the login cookie and renders it; nothing a user or a job wrote is
put into HTML here but through Jinja's escaping, and the scripts write data
with ``textContent`` only.  The charts use the plotly.js that the ``plotly``
Python package ships, served from this process: no CDN, no network.

``CONTENT_SECURITY_POLICY`` is what the app sends with every response: scripts
from this origin only (no inline script, no eval), inline styles (plotly.js
writes its own), images from this origin and ``data:``/``blob:`` (plotly's
modebar icons and exports).  One page needs more: plotly.js draws a
parallel-coordinates plot with WebGL through regl, which compiles its draw
calls with ``new Function``, so the experiment page alone is sent
``EXPERIMENT_PAGE_POLICY``, the same with ``'unsafe-eval'`` (the app's
middleware keeps a policy a response already has).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from scheduler import __version__
from scheduler.server import auth

CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                           "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                           "form-action 'self'")

# plotly.js's parcoords (regl) compiles its WebGL commands with `new Function`.
EXPERIMENT_PAGE_POLICY = CONTENT_SECURITY_POLICY.replace("script-src 'self'", "script-src 'self' 'unsafe-eval'")

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
router = APIRouter(include_in_schema=False)


def plotly_js() -> Path:
    """plotly.js as the installed ``plotly`` package ships it."""
    return Path(str(importlib.resources.files("plotly") / "package_data" / "plotly.min.js"))


def _plotly_version() -> str:
    try:
        from importlib.metadata import version

        return version("plotly")
    except Exception:  # a missing dist-info costs only the cache-busting query
        return "0"


_ASSET_VERSION = {"labq": __version__, "plotly": _plotly_version()}


class _Revalidated(StaticFiles):
    """labq's own scripts and styles: cached, but checked (ETag) on every load,
    so an upgrade is seen at once."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_static(app: FastAPI) -> None:
    """``/static``: the pages' scripts and styles, and plotly.js at
    ``/static/vendor/plotly.min.js`` (cached a week: its URL carries plotly's version)."""
    source = plotly_js()

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly() -> FileResponse:
        return FileResponse(source, media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=604800"})

    app.mount("/static", _Revalidated(directory=str(STATIC_DIR)), name="static")


# ---------------------------------------------------------------- login

def _local_path(target: str | None) -> str:
    """``target`` when it is a path on this site ("/x", not "//host" nor "/\\host"), else "/"."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 32 for c in target):
        return "/"
    return target


def _same_origin(request: Request) -> bool:
    """Whether a form post may come from this site's own page: another site's
    page may not log a visitor in or out.  A browser says where a request comes
    from in Sec-Fetch-Site; one too old for that sends Origin (``null`` under
    the app's no-referrer policy, which proves nothing either way)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _render(request: Request, name: str, status_code: int = 200, **context) -> Response:
    context.setdefault("caller", None)
    return templates.TemplateResponse(request, name, {"assets": _ASSET_VERSION, **context},
                                      status_code=status_code)


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    return _render(request, "login.html", next=_local_path(next), error=None,
                   caller=auth.page_caller(request))


@router.post("/login")
def login(request: Request, token: str = Form("", max_length=4096), next: str = Form("/", max_length=4096)) -> Response:
    target = _local_path(next)
    if not _same_origin(request):
        return _render(request, "login.html", 403, next=target, error="this form must be sent from labq's own page")
    caller = auth.verify_token(request.app, token.strip())
    if caller is None:
        return _render(request, "login.html", 401, next=target, error="wrong token")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(auth.TOKEN_COOKIE, token.strip(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    if not _same_origin(request):
        return Response("this form must be sent from labq's own page", status_code=403, media_type="text/plain")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.TOKEN_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


# ---------------------------------------------------------------- pages

def _page(request: Request, name: str, nav: str, title: str, **context) -> Response:
    """The page for a logged-in caller, else a redirect to the login form."""
    caller = auth.page_caller(request)
    if caller is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(path, safe='')}", status_code=303)
    return _render(request, name, caller=caller, nav=nav, title=title, **context)


@router.get("/")
def queue_page(request: Request) -> Response:
    return _page(request, "queue.html", "queue", "Queue")


@router.get("/experiments")
def experiments_page(request: Request) -> Response:
    return _page(request, "experiments.html", "experiments", "Experiments")


@router.get("/experiments/{name:path}")
def experiment_page(request: Request, name: str) -> Response:
    response = _page(request, "experiment.html", "experiments", name, experiment=name)
    if response.status_code == 200:
        response.headers["Content-Security-Policy"] = EXPERIMENT_PAGE_POLICY
    return response


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: int) -> Response:
    return _page(request, "job.html", "queue", f"job {job_id}", job_id=job_id)


@router.get("/nodes")
def nodes_page(request: Request) -> Response:
    return _page(request, "nodes.html", "nodes", "Nodes")


@router.get("/usage")
def usage_page(request: Request) -> Response:
    return _page(request, "usage.html", "usage", "Usage")
