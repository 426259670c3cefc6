"""A job's files: which attempt, the outputs and artifacts it kept, one file of
them, and its stdout/stderr as they grow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.errors import UserError
from scheduler.store import Store


def chosen_attempt(store: Store, job_id: int, number: int | None, what: str = "files") -> Any:
    """Attempt ``number`` of a job (default: its latest); UserError if none."""
    job = store.job(job_id)
    attempts = store.attempts(job_id)
    if not attempts:
        raise UserError(f"job {job_id} has not started yet (state {job.state.value}); no {what}")
    chosen = attempts[-1] if number is None else next((a for a in attempts if a.number == number), None)
    if chosen is None:
        raise UserError(f"job {job_id} has no attempt {number}; attempts: 1-{len(attempts)}")
    return chosen


def attempt_file(attempt: Any, path: str) -> Path:
    """The file behind ``path``, one of the attempt's kept outputs or its
    artifacts, as recorded: nothing else under the run dir, nothing outside it."""
    from workers.paths import RunPaths
    from workers.workdir import OUTPUTS

    paths = RunPaths(Path(attempt.run_dir))
    if any(o["path"] == path and o.get("kept", True) for o in attempt.outputs):
        base = paths.root / OUTPUTS
    elif path in attempt.artifacts:
        base = paths.artifacts
    else:
        known = [o["path"] for o in attempt.outputs if o.get("kept", True)] + list(attempt.artifacts)
        hint = f"; it has: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''}" if known else "; it has none"
        raise UserError(f"attempt {attempt.number} of job {attempt.job_id} kept no file {path!r}{hint}")
    target = (base / path).resolve()
    if base.resolve() not in target.parents or not target.is_file():
        raise UserError(f"{path}: no longer in {base} (moved or deleted since the job ended)")
    return target


@dataclass(frozen=True)
class AttemptFiles:
    """What `labq artifacts` lists: the files an attempt kept."""

    job_id: int
    attempt: Any  # records.Attempt

    def to_json(self) -> dict[str, Any]:
        a = self.attempt
        return {"job_id": self.job_id, "attempt": a.number, "state": a.state.value, "run_dir": a.run_dir,
                "outputs": a.outputs, "artifacts": a.artifacts}

    def to_wire(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "attempt": self.attempt.to_json()}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> AttemptFiles:
        from scheduler.records import Attempt

        return cls(int(data["job_id"]), Attempt.from_json(data["attempt"]))


def attempt_files(store: Store, job_id: int, number: int | None = None) -> AttemptFiles:
    return AttemptFiles(job_id, chosen_attempt(store, job_id, number))


# ---------------------------------------------------------------- logs

STREAMS = ("stdout", "stderr")


def log_ready(store: Store, job_id: int) -> bool:
    """Whether a follower may start reading: the job has an attempt, or has
    ended without one (a follower waits while neither holds)."""
    return bool(store.attempts(job_id)) or store.job(job_id).state.is_terminal()


class LogCursor:
    """One reader of an attempt's stdout and stderr: each :meth:`read` returns
    what was written since the last; :meth:`finished` says when a follower has
    seen all there will be (the job ended, or a newer attempt took over, and
    every stream is read to its end)."""

    def __init__(self, store: Store, job_id: int, attempt: Any, streams: tuple[str, ...] = STREAMS):
        from workers.paths import RunPaths

        paths = RunPaths(Path(attempt.run_dir))
        self.store, self.job_id, self.attempt = store, job_id, attempt
        self.paths = {name: getattr(paths, name) for name in streams}
        self.offsets = {name: 0 for name in streams}

    def read(self, max_bytes: int | None = None) -> list[tuple[str, bytes]]:
        """[(stream, new bytes)] for each stream with something new, at most
        ``max_bytes`` of each (a server must not hold a whole multi-GB log)."""
        out = []
        for name, path in self.paths.items():
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[name])
                    chunk = f.read(-1 if max_bytes is None else max_bytes)
            except FileNotFoundError:
                continue
            self.offsets[name] += len(chunk)
            if chunk:
                out.append((name, chunk))
        return out

    def finished(self) -> bool:
        if not (self.store.job(self.job_id).state.is_terminal()
                or self.store.attempts(self.job_id)[-1].number != self.attempt.number):
            return False
        return all(self.offsets[n] >= (p.stat().st_size if p.exists() else 0) for n, p in self.paths.items())


def logs(store: Store, job_id: int, number: int | None = None, streams: tuple[str, ...] = STREAMS) -> LogCursor:
    """A reader of attempt ``number``'s output (default: the latest attempt)."""
    unknown = set(streams) - set(STREAMS)
    if unknown:
        raise UserError(f"no log stream {sorted(unknown)[0]!r}; streams: {', '.join(STREAMS)}")
    return LogCursor(store, job_id, chosen_attempt(store, job_id, number, what="logs"), streams)


@dataclass(frozen=True)
class LogRead:
    """What one :func:`read_logs` found: the new bytes of each stream, where each
    stream now ends (pass ``offsets`` and ``attempt`` back to read on), and
    ``done``: the job ended or a newer attempt took over, and every stream is
    read to its end, so a follower stops."""

    job_id: int
    attempt: int
    chunks: tuple[tuple[str, bytes], ...]
    offsets: dict[str, int]
    done: bool

    def to_json(self) -> dict[str, Any]:
        import base64

        return {"job_id": self.job_id, "attempt": self.attempt, "offsets": self.offsets, "done": self.done,
                "chunks": [{"stream": name, "data": base64.b64encode(data).decode("ascii")}
                           for name, data in self.chunks]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogRead:
        import base64

        return cls(int(data["job_id"]), int(data["attempt"]),
                   tuple((c["stream"], base64.b64decode(c["data"])) for c in data["chunks"]),
                   {str(k): int(v) for k, v in data["offsets"].items()}, bool(data["done"]))


def read_logs(store: Store, job_id: int, attempt: int | None = None, streams: tuple[str, ...] = STREAMS,
              offsets: dict[str, int] | None = None, max_bytes: int | None = None) -> LogRead:
    """The output of attempt ``attempt`` (default: the latest) written past
    ``offsets`` (default: from the start): one stateless step of a follower,
    which waits while :func:`log_ready` is false, then calls this with the
    attempt and offsets the last call returned until ``done``.  ``max_bytes``:
    at most this much of each stream (`labq server` reads in steps)."""
    cursor = logs(store, job_id, attempt, streams)
    for name, at in (offsets or {}).items():
        if name in cursor.offsets:
            cursor.offsets[name] = max(0, int(at))
    chunks = tuple(cursor.read(max_bytes))
    return LogRead(job_id, cursor.attempt.number, chunks, dict(cursor.offsets), cursor.finished())


# ---------------------------------------------------------------- per-step metrics

@dataclass(frozen=True)
class StepCurve:
    """One job's metric per reported step (``report(step=...)``, metrics.jsonl)."""

    job_id: int
    metric: str
    steps: list
    values: list
    pruned: bool = False  # stopped early (scheduler.early_stop): its curve ends where it was stopped

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "metric": self.metric, "steps": self.steps, "values": self.values,
                "pruned": self.pruned}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepCurve:
        return cls(int(data["job_id"]), data["metric"], list(data["steps"]), list(data["values"]),
                   bool(data.get("pruned")))


def step_curves(rows: list[dict[str, Any]], metric: str | None) -> list[StepCurve]:
    """The curve of each results row whose job reported two steps or more: of
    ``metric`` when it reported that, else of its first metric."""
    from workers.paths import RunPaths

    def reported_steps(run_dir: Path) -> list[dict[str, Any]]:
        _, steps = RunPaths(run_dir).read_reported_metrics()
        return [s for s in steps if isinstance(s.get("step"), (int, float))]

    curves = []
    for r in rows:
        if not r.get("run_dir"):
            continue
        latest = Path(r["run_dir"])
        steps = reported_steps(latest)
        # A job resumed from a checkpoint (promoted after a pause, or preempted)
        # reported its first steps in its earlier attempts (run dirs beside this
        # one): they lead its curve, up to where the next attempt took over.
        tail = latest.name.removeprefix("attempt-")
        number = int(tail) if tail.isdigit() else 1
        for n in range(number - 1, 0, -1):
            earlier = reported_steps(latest.parent / f"attempt-{n}")
            first = steps[0]["step"] if steps else float("inf")
            steps = [s for s in earlier if s["step"] < first] + steps
        if len(steps) < 2:
            continue
        # Every metric reported (a script's output gives one line per metric and step)
        names = list(dict.fromkeys(k for s in steps for k in s if k not in ("time", "step")))
        name = metric if metric in names else (names[0] if names else None)
        if name:
            pts = [(s["step"], s[name]) for s in steps if isinstance(s.get(name), (int, float))]
            curves.append(StepCurve(r["job_id"], name, [p[0] for p in pts], [p[1] for p in pts],
                                    r.get("state") == "pruned"))
    return curves
