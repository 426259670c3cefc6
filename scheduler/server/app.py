"""`labq server`'s HTTP API: every CLI verb over HTTP, for `labq --server URL`
and the dashboard.

Each route calls the same ``scheduler.api`` function the local CLI calls and
returns its record whole (``to_wire``), so a remote verb prints exactly what a
local one would.  Every route but ``/api/health`` needs a token (auth); the
caller's token names the labq user that submits and cancels.  A user's mistake
is a 4xx with ``{"error": one line}`` (and ``lines`` for a spec's problems),
written nothing.  The server reads and writes LABQ_HOME only: it never runs a
job; a submit starts the scheduler daemon (its own process) when none runs.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import mimetypes
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any, AsyncIterator

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler import __version__, api
from scheduler.errors import LabqError, PermissionDenied, SpecError, UnknownIdError, UserError, one_line
from scheduler.server import auth, pages
from scheduler.server.auth import Caller
from scheduler.server.tokens import TokenBook

log = logging.getLogger("labq.server")

LOG_POLL_SECONDS = 0.3
HEARTBEAT_SECONDS = 5.0  # the longest a log stream stays silent
LOG_READ_BYTES = 1 << 20  # the most of a log one read takes into memory
LOG_STREAMS_PER_USER = 16  # followers one user may hold open at once
MAX_PAGE = 10_000  # rows one request may ask for
MAX_ID = 2**62  # ids and offsets past what SQLite's integers hold are a 400, not a 500
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
AttemptNumber = Annotated[int | None, Query(ge=1, le=10_000)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
SUBMIT_SECONDS = 120.0  # the most a submit's checks (which import the user's module) may take
SUBMITS_AT_ONCE = 2  # uploads held (up to 100 MiB each) and checked at once; the rest wait their turn


class CancelRequest(BaseModel):
    ids: list[str] = Field(default_factory=list, max_length=100_000)
    experiment: str | None = Field(default=None, max_length=1000)


class ExtendRequest(BaseModel):
    experiment: str = Field(max_length=1000)
    samples: int = Field(ge=1, le=100_000)


class _Stores(threading.local):
    """One Store per server thread: an SQLite connection is not shared between
    threads that may each be inside a transaction."""

    store = None


def create_app(settings, cluster: str | None = None, start_scheduler: bool = True) -> FastAPI:
    """The API (and the dashboard's pages) over ``settings.home_path``.
    ``start_scheduler``: a submit starts the scheduler daemon when none runs, as
    a local `labq submit` does."""
    app = FastAPI(title="labq", version=__version__, openapi_url=None, docs_url=None, redoc_url=None,
                  description="labq's queue over HTTP: every request but /api/health needs "
                              "'Authorization: Bearer TOKEN'.")
    home = settings.home_path
    app.state.settings, app.state.home, app.state.cluster = settings, home, cluster
    app.state.tokens = TokenBook(home)
    app.state.admins = frozenset(settings.admins)
    app.state.start_scheduler = start_scheduler
    app.state.log_streams = {}  # user -> log streams open (counted on the event loop: no lock)
    app.state.submit_slots = asyncio.Semaphore(SUBMITS_AT_ONCE)
    app.state.estimates = api.EstimateSettings(settings.scheduler.usage_half_life, settings.queue_configs(),
                                               settings.scheduler.stretch)
    stores = _Stores()

    def store():
        if stores.store is None:
            from scheduler.store import Store

            stores.store = Store(home)
        return stores.store

    _install_error_handlers(app)
    _install_security_headers(app)
    caller = Depends(auth.api_caller)

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """The only route without a token: is the server up."""
        return {"ok": True, "version": __version__}

    @app.get("/api/v1/openapi.json", tags=["meta"])
    def openapi(_: Caller = caller) -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/v1/whoami", tags=["meta"])
    def whoami(who: Caller = caller) -> dict[str, Any]:
        return {"user": who.user, "admin": who.admin}

    # ------------------------------------------------------------ putting work in
    @app.post("/api/v1/submit", tags=["work"], status_code=201)
    async def submit(request: Request, spec: str = Query(..., max_length=1000, description="the spec's path inside "
                                                          "the archive"),
                     shown_as: str = Query(..., max_length=4096, description="the spec's path as its user knows it"),
                     shown_dir: str | None = Query(None, max_length=4096, description="its directory, as the user's "
                                                   "machine resolves it (errors name it)"),
                     set_: list[str] = Query(default=[], alias="set", max_length=1000),
                     who: Caller = caller) -> dict[str, Any]:
        """The body is a zip of the spec's directory (what `labq --server URL
        submit` packs: labq's exclusions, at most packaging.MAX_PACKAGE_BYTES)."""
        from scheduler.packaging import MAX_PACKAGE_BYTES

        async with app.state.submit_slots:  # a waiting upload is not read yet: memory stays bounded
            body = await _read_limited(request, MAX_PACKAGE_BYTES)
            return await asyncio.to_thread(_submit_upload, app, body, spec, shown_as, shown_dir, list(set_), who)

    @app.post("/api/v1/cancel", tags=["work"])
    def cancel(body: CancelRequest, who: Caller = caller) -> dict[str, Any]:
        if not body.ids and not body.experiment:
            raise UserError("labq cancel: give job ids or --experiment NAME")
        return api.cancel(store(), body.ids, body.experiment, app.state.settings, user=who.user)

    @app.post("/api/v1/sweep/extend", tags=["work"])
    def sweep_extend(body: ExtendRequest, who: Caller = caller) -> dict[str, Any]:
        """`labq sweep extend`: the experiment's searches may ask for ``samples`` more trials."""
        return api.extend_search(store(), body.experiment, body.samples, app.state.settings, user=who.user)

    # ------------------------------------------------------------ reading
    @app.get("/api/v1/queue", tags=["read"])
    def queue(limit: int | None = Query(None, ge=1, le=MAX_PAGE), offset: Offset = 0,
              summary: bool = True, _: Caller = caller) -> dict[str, Any]:
        return api.queue(store(), app.state.estimates, limit=limit, offset=offset, summary=summary).to_wire()

    @app.get("/api/v1/experiments", tags=["read"])
    def experiments(limit: int = Query(50, ge=1, le=MAX_PAGE), offset: Offset = 0,
                    _: Caller = caller) -> dict[str, Any]:
        return api.experiment_page(store(), limit, offset)

    @app.get("/api/v1/experiments/{experiment_id}/jobs", tags=["read"])
    def experiment_jobs(experiment_id: JobId, _: Caller = caller) -> dict[str, Any]:
        """An experiment's jobs by id (what `labq run` waits on)."""
        s = store()
        s.experiment(experiment_id)  # 404 for an unknown one
        return {"jobs": [j.to_json() for j in s.jobs_of_experiment(experiment_id)]}

    @app.get("/api/v1/status/{ref}", tags=["read"])
    def status(ref: str, _: Caller = caller) -> dict[str, Any]:
        return api.status(store(), ref, app.state.estimates).to_wire()

    @app.get("/api/v1/results/{experiment}", tags=["read"])
    def results(experiment: str, sort: str | None = Query(None, max_length=200), ascending: bool | None = None,
                limit: int | None = Query(None, ge=1, le=10_000_000), offset: Offset = 0,
                _: Caller = caller) -> dict[str, Any]:
        return api.results(store(), experiment, sort=sort, ascending=ascending, limit=limit, offset=offset).to_wire()

    @app.get("/api/v1/results/{experiment}/curves", tags=["read"])
    def curves(experiment: str, jobs: str | None = Query(None, max_length=100_000), metric: str | None = None,
               _: Caller = caller) -> dict[str, Any]:
        """Per-step curves of ``jobs`` (comma-separated ids; default: the whole
        experiment) of ``metric`` (default: the main one)."""
        s = store()
        exp = s.experiment(experiment)
        if jobs:
            ids = _ids(jobs)
            wanted = [j for j in s.jobs_by_ids(ids) if j.experiment_id == exp.id]
            finals = s.final_attempts([j.id for j in wanted])
            rows = [{"job_id": j.id, "run_dir": finals[j.id][0].run_dir if j.id in finals else None} for j in wanted]
            metric = metric or api.results(s, experiment, limit=1).metric
        else:
            res = api.results(s, experiment)
            rows, metric = res.rows, metric or res.metric
        return {"metric": metric, "curves": [c.to_json() for c in api.step_curves(rows, metric)]}

    @app.get("/api/v1/jobs/{job_id}/logs", tags=["read"])
    def logs(job_id: JobId, attempt: AttemptNumber = None, stream: str = "both",
             stdout_at: Offset = 0, stderr_at: Offset = 0, _: Caller = caller) -> dict[str, Any]:
        """One step of reading a job's output: pass the returned ``attempt`` and
        offsets back to read on (LogRead)."""
        s = store()
        names = _streams(stream)
        offsets = {"stdout": stdout_at, "stderr": stderr_at}
        return api.read_logs(s, job_id, attempt, names, {n: offsets[n] for n in names},
                             max_bytes=LOG_READ_BYTES).to_json()

    @app.get("/api/v1/jobs/{job_id}/logs/ready", tags=["read"])
    def log_ready(job_id: JobId, _: Caller = caller) -> dict[str, Any]:
        return {"ready": api.log_ready(store(), job_id)}

    @app.get("/api/v1/jobs/{job_id}/logs/stream", tags=["read"])
    def log_stream(job_id: JobId, attempt: AttemptNumber = None, stream: str = "both",
                   who: Caller = caller) -> StreamingResponse:
        """The output as it grows, one JSON line per chunk ({"stream", "data"}),
        then {"done": true, "attempt": n} when the attempt has ended and all is read."""
        names = _streams(stream)
        store().job(job_id)  # 404 before the stream starts
        open_streams = app.state.log_streams
        if open_streams.get(who.user, 0) >= LOG_STREAMS_PER_USER:
            raise HTTPException(429, f"{who.user} already follows {LOG_STREAMS_PER_USER} logs; close one first")

        async def counted() -> AsyncIterator[bytes]:
            open_streams[who.user] = open_streams.get(who.user, 0) + 1
            try:
                async for line in _follow(store, job_id, attempt, names):
                    yield line
            finally:
                open_streams[who.user] -= 1

        return StreamingResponse(counted(), media_type="application/x-ndjson")

    @app.get("/api/v1/jobs/{job_id}/files", tags=["read"])
    def files(job_id: JobId, attempt: AttemptNumber = None, _: Caller = caller) -> dict[str, Any]:
        return api.attempt_files(store(), job_id, attempt).to_wire()

    @app.get("/api/v1/jobs/{job_id}/files/{path:path}", tags=["read"])
    def file(path: str, job_id: JobId,
             attempt: AttemptNumber = None, _: Caller = caller) -> FileResponse:
        """One kept output or artifact, as the attempt recorded it: nothing else
        under its run dir, nothing outside LABQ_HOME."""
        chosen = api.chosen_attempt(store(), job_id, attempt)
        target = api.attempt_file(chosen, path)
        if Path(home).resolve() not in target.parents:
            raise UserError(f"{path}: not under labq's home")
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        inline = kind.startswith("image/") or kind in ("text/plain", "text/csv", "application/json")
        # An artifact is the job's output, not labq's page: never let it run
        # script in the dashboard's origin (an SVG or HTML a job wrote).
        headers = {"Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
                   "X-Content-Type-Options": "nosniff"}
        return FileResponse(target, media_type=kind, headers=headers,
                            content_disposition_type="inline" if inline else "attachment", filename=target.name)

    @app.get("/api/v1/nodes", tags=["read"])
    def nodes(_: Caller = caller) -> dict[str, Any]:
        return api.nodes(store()).to_json()

    @app.get("/api/v1/usage", tags=["read"])
    def usage(since: str = Query("7d", max_length=50), by: str = Query("both", max_length=10),
              _: Caller = caller) -> dict[str, Any]:
        return api.usage(store(), since, by, app.state.settings.scheduler.usage_half_life).to_wire()

    app.include_router(pages.router)
    pages.mount_static(app)
    return app


# ---------------------------------------------------------------- helpers

def _ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"jobs={text[:50]!r}: expected job ids separated by commas") from None
    if len(ids) > 1000:
        raise UserError("jobs: at most 1000 ids at a time")
    return ids


def _streams(stream: str) -> tuple[str, ...]:
    chosen = {"both": ("stdout", "stderr"), "stdout": ("stdout",), "stderr": ("stderr",)}.get(stream)
    if chosen is None:
        raise UserError(f"stream={stream!r}: expected both, stdout or stderr")
    return chosen


async def _follow(store, job_id: int, attempt: int | None, names: tuple[str, ...]) -> AsyncIterator[bytes]:
    """What a `labq logs -f` prints, as JSON lines, until the attempt is done.
    It waits on the event loop, not in a worker thread (a thousand quiet
    followers hold no thread), and reads at most LOG_READ_BYTES at a time.  A
    quiet job still gets a line every HEARTBEAT_SECONDS: writing is how a server
    learns that its reader has gone.  A mistake found once the stream has begun
    (the job was cancelled before it started) is a line {"error": ...}."""
    quiet_since = time.monotonic()

    def beat() -> bytes | None:
        nonlocal quiet_since
        if time.monotonic() - quiet_since < HEARTBEAT_SECONDS:
            return None
        quiet_since = time.monotonic()
        return b'{"alive": true}\n'

    def read(offsets):
        return api.read_logs(store(), job_id, attempt, names, offsets, max_bytes=LOG_READ_BYTES)

    try:
        while not await asyncio.to_thread(lambda: api.log_ready(store(), job_id)):
            if line := beat():
                yield line
            await asyncio.sleep(0.5)
        decoders = {n: codecs.getincrementaldecoder("utf-8")(errors="replace") for n in names}
        offsets = None
        while True:
            got = await asyncio.to_thread(read, offsets)
            for name, chunk in got.chunks:
                text = decoders[name].decode(chunk)
                if text:
                    quiet_since = time.monotonic()
                    yield (json.dumps({"stream": name, "data": text}) + "\n").encode()
            if got.done:
                yield (json.dumps({"done": True, "attempt": got.attempt}) + "\n").encode()
                return
            if line := beat():
                yield line
            attempt, offsets = got.attempt, got.offsets
            if not got.chunks:  # all read: wait for more
                await asyncio.sleep(LOG_POLL_SECONDS)
    except UserError as exc:
        yield (json.dumps({"error": one_line(str(exc))}) + "\n").encode()


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (counted as it
    arrives: a client may lie in Content-Length, or send none)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the upload is {int(declared):,} bytes; labq takes at most {limit:,} "
                                 "(see packaging's exclusions: data belongs beside the code, not in it)")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the upload is over {limit:,} bytes, the most labq takes")
        parts.append(chunk)
    return b"".join(parts)


def _submit_upload(app: FastAPI, body: bytes, spec: str, shown_as: str, shown_dir: str | None,
                   overrides: list[str], who: Caller) -> dict[str, Any]:
    """Unpack the upload in a private directory under LABQ_HOME, submit from it
    as ``who`` (the snapshot copies it), then remove it."""
    from scheduler.server.uploads import unpack

    home: Path = app.state.home
    uploads = home / "server" / "uploads"
    uploads.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=uploads))
    try:
        code = work / "code"
        code.mkdir(mode=0o700)
        written = unpack(body, code)
        spec_path = (code / spec).resolve()
        if spec not in written or code.resolve() not in spec_path.parents:
            raise UserError(f"{shown_as}: the uploaded archive has no file {spec!r}")
        submitted = _submit_in_child(app, {"spec_path": str(spec_path), "overrides": overrides, "user": who.user,
                                           "shown_as": shown_as, "shown_dir": shown_dir,
                                           "cluster": app.state.cluster}, cwd=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    started = False
    if app.state.start_scheduler:
        started = _ensure_scheduler(app)
    return {**submitted.to_json(), "scheduler_started": started}


def _submit_in_child(app: FastAPI, request: dict[str, Any], cwd: Path):
    """api.submit in a process of its own (scheduler.server.submitter): the
    spec's checks import the user's module, which must not run in the server."""
    from scheduler.api.submission import Submitted
    from scheduler.server import submitter

    env = {**os.environ, "LABQ_HOME": str(app.state.home)}
    try:
        proc = subprocess.run([sys.executable, "-m", "scheduler.server.submitter"], input=json.dumps(request),
                              capture_output=True, text=True, cwd=cwd, env=env, timeout=SUBMIT_SECONDS)
    except subprocess.TimeoutExpired:
        raise UserError(f"{request['shown_as']}: checking the spec took over {SUBMIT_SECONDS:.0f}s (does importing "
                        "its module run work at import time?); nothing was submitted") from None
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if "submitted" in answer:
        return Submitted.from_json(answer["submitted"])
    if "error" in answer:
        submitter.raise_from(answer)
    tail = one_line(proc.stderr.strip().splitlines()[-1]) if proc.stderr.strip() else "no output"
    raise UserError(f"{request['shown_as']}: checking the spec ended the checking process (exit code "
                    f"{proc.returncode}: {tail}); nothing was submitted")


def _ensure_scheduler(app: FastAPI) -> bool:
    """Start the scheduler daemon (a process of its own) if none serves this home."""
    from scheduler import daemon

    settings = app.state.settings
    if daemon.is_running(settings.home_path):
        return False
    try:
        daemon.start(settings, cluster=app.state.cluster, address=None, cpus=None, gpus=None,
                     idle_timeout=settings.scheduler.idle_timeout, wait=False)
    except (LabqError, OSError) as exc:
        log.error("the jobs are queued, but no scheduler could be started: %s", exc)
        return False
    return True


# ---------------------------------------------------------------- errors and headers

def _error(status: int, message: str, lines: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": one_line(message)}
    if lines:
        body["lines"] = lines
    return JSONResponse(body, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        status = 404 if isinstance(exc, UnknownIdError) else 403 if isinstance(exc, PermissionDenied) else 400
        lines = exc.lines() if isinstance(exc, SpecError) else None
        return _error(status, lines[0] if lines else str(exc), lines)

    @app.exception_handler(LabqError)
    async def labq_error(_: Request, exc: LabqError) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(sqlite3.DatabaseError)
    async def database_error(_: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
        from scheduler.errors import state_database_error

        return _error(503, state_database_error(exc))

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and Starlette's own 404, 405
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, str(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return _error(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")


def _install_security_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        # setdefault: a response with a policy of its own keeps it (the
        # experiment page's, an artifact's sandbox).
        response.headers.setdefault("Content-Security-Policy", pages.CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response
