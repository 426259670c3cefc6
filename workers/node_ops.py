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
from pathlib import Path
from typing import Any

from contract.attempt import AttemptTrace, OomCause, WorkerResult
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
    """End the process group of the attempt's command, if it recorded one and
    it is still that attempt's (workers.attempt.group_is_attempts): a
    force-killed worker takes its command with it (PDEATHSIG), but not the
    command's own children.  True if a group was there to end."""
    try:
        fields = RunPaths(Path(run_dir)).pgid.read_text().split()
        pgid = int(fields[0])
        leader_started = int(fields[1]) if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return False
    if not group_is_attempts(pgid, leader_started):
        return False
    return kill_process_group(pgid, grace=grace)


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
