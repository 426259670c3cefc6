"""What the scheduler asks of the node an attempt ran on, done on that node.

The scheduler never reads a run directory or signals a process itself: its
backend runs these functions on the attempt's node (in the scheduler's own
process when that node is its own), so a cluster without a shared disk, and a
process group on another machine, are handled where they live.  Each takes the
attempt's run directory, which names the attempt: the process group killed is
the one that attempt's own worker recorded, never one found by name.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from contract.attempt import AttemptTrace, OomCause, WorkerResult
from jobs.api import CLEARED_FILE, METRICS_FILE, STOP_FILE
from workers import bundle
from workers.attempt import OOM_MARKER, group_is_attempts, kill_process_group
from workers.paths import RunPaths


def trace(run_dir: str) -> dict[str, Any]:
    """What this node holds of the attempt (contract.attempt.AttemptTrace, as JSON)."""
    paths = RunPaths(Path(run_dir))
    saved = paths.read_result()
    note, cause = _oom_marker(paths)
    return AttemptTrace(started=paths.root.exists(), saved=WorkerResult.from_json(saved) if saved else None,
                        oom_note=note, oom_cause=cause, gpu_ids=_tuple(paths.read_gpu_ids()),
                        gpu_pids=frozenset(paths.read_gpu_pids())).to_json()


def gpu_ids(run_dir: str) -> list[int] | None:
    """The GPUs Ray gave the attempt, once its worker wrote them."""
    return RunPaths(Path(run_dir)).read_gpu_ids()


def end_process_group(run_dir: str, grace: float = 0.5) -> bool:
    """End what still runs of an attempt that has been judged ended: the
    process group of its command, if it recorded one and it is still that
    attempt's (workers.attempt.group_is_attempts), and any process that still
    holds its logs open (the Ray worker of a Python job whose owner just died:
    Ray ends it too, but a moment later, and its retry may already start).  A
    force-killed worker takes its command with it (PDEATHSIG), but not the
    command's own children.  True if something was there to end."""
    paths = RunPaths(Path(run_dir))
    ended = False
    try:
        fields = paths.pgid.read_text().split()
        pgid = int(fields[0])
        leader_started = int(fields[1]) if len(fields) > 1 else None
        if group_is_attempts(pgid, leader_started):
            ended = kill_process_group(pgid, grace=grace)
    except (OSError, ValueError, IndexError):
        pass
    return _end_holders(paths) or ended


def _end_holders(paths: RunPaths) -> bool:
    """SIGKILL every Ray worker (a process titled ``ray::...``) that has the
    attempt's stdout or stderr log open: a worker holds them only while it
    runs that attempt.  Anything else reading them (`labq logs -f`) is left alone."""
    logs = {str(paths.stdout), str(paths.stderr)}
    if not paths.root.exists() or not os.path.isdir("/proc"):
        return False
    ended = False
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{name}/fd/{fd}") in logs:
                    if _is_ray_worker(name):
                        os.kill(int(name), signal.SIGKILL)
                        ended = True
                    break
            except OSError:
                continue
    return ended


# At most this much of one metrics.jsonl per read: a job writing faster is
# read over several passes.
CURVE_READ_BYTES = 4 << 20
# The files early stopping may write into a running attempt's run dir.
SIGNALS = frozenset({STOP_FILE, CLEARED_FILE})


def curves_since(reads: list[tuple[str, int]]) -> list[tuple[int, bytes]]:
    """For each (run dir, offset): (bytes consumed past ``offset``, the
    complete lines read); a line still being written is left for the next read,
    and one longer than CURVE_READ_BYTES (not a metrics record) is skipped
    unread.  (0, b"") for a run dir without a metrics.jsonl."""
    out = []
    for run_dir, offset in reads:
        try:
            fd = os.open(Path(run_dir) / METRICS_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            out.append((0, b""))
            continue
        with os.fdopen(fd, "rb") as f:
            f.seek(max(0, int(offset)))
            data = f.read(CURVE_READ_BYTES)
            end = data.rfind(b"\n") + 1
            if end or len(data) < CURVE_READ_BYTES:
                out.append((end, data[:end]))
                continue
            skipped = len(data)  # a whole chunk without a newline: skip to the end of its line
            while chunk := f.read(CURVE_READ_BYTES):
                newline = chunk.find(b"\n")
                if newline >= 0:
                    out.append((skipped + newline + 1, b""))
                    break
                skipped += len(chunk)
            else:
                out.append((0, b""))  # still being written: next time
    return out


def signal_attempts(signals: list[tuple[str, str, str]]) -> None:
    """Write each (run dir, file, text) of early stopping's verdicts into a
    running attempt's run dir (jobs.api reads them at report()): whole, by
    rename, so a reader never sees half; a run dir that is gone is skipped."""
    for run_dir, name, text in signals:
        if name not in SIGNALS:
            raise ValueError(f"not an early-stopping signal: {name!r}")
        root = Path(run_dir)
        if not root.is_dir():
            continue
        tmp = root / f".{name}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, root / name)
        except OSError:
            pass


def keep_bundle(data: bytes, run_dir: str) -> None:
    """Unpack a run dir carried back from a node without a shared disk."""
    bundle.unpack(data, Path(run_dir))


def artifacts_bundle(run_dir: str) -> bytes:
    """An upstream run dir's artifacts, zipped, for a node that cannot read it."""
    return bundle.pack(Path(run_dir), only="artifacts")


def _oom_marker(paths: RunPaths) -> tuple[str | None, OomCause | None]:
    """The memory watchdog's marker (workers.attempt writes it as JSON before
    the worker kills itself): its message and which memory ran out."""
    try:
        text = (paths.root / OOM_MARKER).read_text()
    except OSError:
        return None, None
    try:
        data = json.loads(text)
        return str(data["message"]), OomCause(data["cause"])
    except (ValueError, KeyError, TypeError):  # a marker of an older labq: its text only
        return text, OomCause.MEMORY


def _tuple(ids: list[int] | None) -> tuple[int, ...] | None:
    return tuple(ids) if ids is not None else None


def _is_ray_worker(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"ray::")
    except OSError:
        return False
