"""`labq --server URL`: the CLI's verbs against a `labq server`, from any machine.

Each method asks the server's HTTP API and rebuilds the same record the local
``scheduler.api`` function returns (``from_wire``/``from_json``), so the CLI
prints a remote queue, status or result table exactly as a local one.  A
server's 4xx comes back as the same error class the local verb raises (exit 2
and its one line); a server that cannot be reached or fails is a LabqError
(exit 3).  Standard library only: a CLI call must stay fast.

The token comes from ``LABQ_TOKEN`` or from what `labq login URL` saved
(``$XDG_CONFIG_HOME/labq/credentials.json``, mode 0600).
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from scheduler.errors import LabqError, PermissionDenied, UnknownIdError, UserError

TIMEOUT_SECONDS = 60.0
STREAM_SILENCE_SECONDS = 60.0


class RemoteUserError(UserError):
    """A user mistake the server reported, with its lines (a spec's problems)."""

    def __init__(self, message: str, lines: list[str] | None = None):
        self._lines = lines or [message]
        super().__init__(message)

    def lines(self) -> list[str]:
        return self._lines


# ---------------------------------------------------------------- credentials

def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "labq" / "credentials.json"


def normal_url(url: str) -> str:
    """``http(s)://host[:port]`` with no trailing slash; UserError otherwise."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--server {url}: expected http://HOST:PORT or https://HOST:PORT")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def saved_token(url: str) -> str | None:
    try:
        saved = json.loads(credentials_path().read_text())
    except (FileNotFoundError, ValueError):
        return None
    return saved.get("servers", {}).get(normal_url(url))


def save_token(url: str, token: str) -> Path:
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        saved = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        saved = {}
    saved.setdefault("servers", {})[normal_url(url)] = token
    tmp = path.with_name(f".credentials.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(saved, f, indent=1)
    os.replace(tmp, path)
    return path


def forget_token(url: str) -> bool:
    path = credentials_path()
    try:
        saved = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return False
    if saved.get("servers", {}).pop(normal_url(url), None) is None:
        return False
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(saved, f, indent=1)
    return True


# ---------------------------------------------------------------- the client

class Remote:
    """One labq server, called as a given token's user."""

    def __init__(self, url: str, token: str | None = None, cafile: str | None = None):
        self.url = normal_url(url)
        token = token or os.environ.get("LABQ_TOKEN") or saved_token(self.url)
        if not token:
            raise UserError(f"no token for {self.url}: `labq login {self.url}` first (or set LABQ_TOKEN)")
        self.token = token
        host = urllib.parse.urlsplit(self.url).hostname or ""
        if self.url.startswith("http:") and host not in ("localhost", "127.0.0.1", "::1"):
            import sys

            print(f"warning: {self.url} is plain HTTP: the token crosses the network in clear; use https://",
                  file=sys.stderr)
        cafile = cafile or os.environ.get("LABQ_CA_FILE")
        self._tls = ssl.create_default_context(cafile=cafile) if self.url.startswith("https") else None

    # ------------------------------------------------------------ transport
    def _open(self, method: str, path: str, params: dict[str, Any] | None = None, body: bytes | None = None,
              content_type: str | None = None, timeout: float | None = TIMEOUT_SECONDS):
        query = urllib.parse.urlencode([(k, v) for k, vs in (params or {}).items() if vs is not None
                                        for v in (vs if isinstance(vs, list) else [vs])])
        request = urllib.request.Request(f"{self.url}{path}{'?' + query if query else ''}", data=body, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(request, timeout=timeout, context=self._tls)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LabqError(f"cannot reach the labq server at {self.url}: {reason}") from None

    def _error(self, exc: urllib.error.HTTPError) -> Exception:
        try:
            data = json.loads(exc.read() or b"{}")
        except ValueError:
            data = {}
        message = data.get("error") or f"HTTP {exc.code} {exc.reason}"
        if exc.code == 401:
            return UserError(f"{self.url}: {message}")
        if exc.code == 403:
            return PermissionDenied(message)
        if exc.code == 404:
            return UnknownIdError(message)
        if 400 <= exc.code < 500:
            return RemoteUserError(message, data.get("lines"))
        return LabqError(f"the labq server at {self.url} failed: {message}")

    def _json(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        with self._open(method, path, params, data, "application/json" if data is not None else None) as response:
            return json.loads(response.read())

    def _get(self, path: str, **params: Any) -> Any:
        return self._json("GET", path, params)

    # ------------------------------------------------------------ verbs
    def whoami(self) -> dict[str, Any]:
        return self._get("/api/v1/whoami")

    def submit(self, spec: str, overrides: list[str]) -> tuple[Any, bool]:
        """Pack the spec's directory as a local submit would snapshot it, upload
        it; (Submitted, whether the server started a scheduler)."""
        from scheduler.api.submission import Submitted
        from scheduler.errors import SpecError
        from scheduler.server.uploads import pack_directory

        path = Path(spec)
        if not path.is_file():
            raise SpecError(spec, [("", "no such file" if not path.exists() else "cannot read: not a regular file")])
        path = path.resolve()  # a link to a spec ships the directory it is in, as a local submit does
        archive = pack_directory(path.parent, spec)
        params = {"spec": path.name, "shown_as": spec, "shown_dir": str(path.parent), "set": list(overrides)}
        with self._open("POST", "/api/v1/submit", params, archive, "application/zip", timeout=600) as response:
            data = json.loads(response.read())
        return Submitted.from_json(data), bool(data.get("scheduler_started"))

    def experiment_jobs(self, experiment_id: int) -> list[Any]:
        from scheduler.records import Job

        return [Job.from_json(j) for j in self._get(f"/api/v1/experiments/{experiment_id}/jobs")["jobs"]]

    def wait(self, experiment_id: int, on_update: Callable[[list[Any]], None] | None = None,
             poll: float = 1.0) -> list[Any]:
        while True:
            jobs = self.experiment_jobs(experiment_id)
            if on_update:
                on_update(jobs)
            if all(j.state.is_terminal() for j in jobs):
                return jobs
            time.sleep(poll)

    def queue(self, limit: int | None, summary: bool) -> Any:
        from scheduler.api.queue_view import QueueView

        return QueueView.from_wire(self._get("/api/v1/queue", limit=limit, summary=str(summary).lower()))

    def status(self, ref: str) -> Any:
        from scheduler.api.queue_view import status_from_wire

        return status_from_wire(self._get(f"/api/v1/status/{_segment(ref)}"))

    def cancel(self, ids: list[str], experiment: str | None) -> dict[str, list[int]]:
        return self._json("POST", "/api/v1/cancel", body={"ids": list(ids), "experiment": experiment})

    def extend_search(self, experiment: str, samples: int) -> dict[str, Any]:
        return self._json("POST", "/api/v1/sweep/extend", body={"experiment": experiment, "samples": samples})

    def log_ready(self, job_id: int) -> bool:
        return bool(self._get(f"/api/v1/jobs/{job_id}/logs/ready")["ready"])

    def read_logs(self, job_id: int, attempt: int | None, streams: tuple[str, ...],
                  offsets: dict[str, int] | None = None) -> Any:
        """One step: what was written past ``offsets`` (the server sends at most
        1 MiB of each stream a step; read on until a step brings nothing)."""
        from scheduler.api.files import LogRead

        stream = streams[0] if len(streams) == 1 else "both"
        at = {f"{name}_at": value for name, value in (offsets or {}).items()}
        return LogRead.from_json(self._get(f"/api/v1/jobs/{job_id}/logs", attempt=attempt, stream=stream, **at))

    def follow_logs(self, job_id: int, attempt: int | None, streams: tuple[str, ...]) -> Iterator[tuple[str, str]]:
        """(stream, text) as the job writes it, until its attempt is done."""
        stream = streams[0] if len(streams) == 1 else "both"
        # The server writes at least every few seconds (a heartbeat): a minute of
        # silence means it or the network is gone.
        with self._open("GET", f"/api/v1/jobs/{job_id}/logs/stream", {"attempt": attempt, "stream": stream},
                        timeout=STREAM_SILENCE_SECONDS) as response:
            for line in response:
                item = json.loads(line)
                if item.get("done"):
                    return
                if "error" in item:
                    raise RemoteUserError(item["error"])
                if "data" in item:  # else a heartbeat of a quiet job
                    yield item["stream"], item["data"]
        raise LabqError(f"the labq server at {self.url} closed the log stream before the job's output ended")

    def attempt_files(self, job_id: int, attempt: int | None) -> Any:
        from scheduler.api.files import AttemptFiles

        return AttemptFiles.from_wire(self._get(f"/api/v1/jobs/{job_id}/files", attempt=attempt))

    def download(self, job_id: int, path: str, attempt: int | None, out: BinaryIO) -> int:
        """Write one kept file to ``out``; returns its size."""
        size = 0
        with self._open("GET", f"/api/v1/jobs/{job_id}/files/{urllib.parse.quote(path)}",
                        {"attempt": attempt}, timeout=600) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                size += len(chunk)
        return size

    def results(self, experiment: str, sort: str | None = None, ascending: bool | None = None,
                limit: int | None = None) -> Any:
        from scheduler.api.ranking import Results

        asc = None if ascending is None else str(ascending).lower()
        return Results.from_wire(self._get(f"/api/v1/results/{_segment(experiment)}", sort=sort, ascending=asc,
                                           limit=limit))

    def step_curves(self, experiment: str, metric: str | None) -> list[Any]:
        from scheduler.api.files import StepCurve

        data = self._get(f"/api/v1/results/{_segment(experiment)}/curves", metric=metric)
        return [StepCurve.from_json(c) for c in data["curves"]]

    def usage(self, since: str, by: str) -> Any:
        from scheduler.api.cluster_view import UsageReport

        return UsageReport.from_wire(self._get("/api/v1/usage", since=since, by=by))

    def nodes(self) -> Any:
        from scheduler.api.cluster_view import NodesView

        return NodesView.from_json(self._get("/api/v1/nodes"))


def _segment(text: str) -> str:
    """A name as one path segment (an experiment may be called 'a/b' or '..')."""
    return urllib.parse.quote(text, safe="")
