"""An attempt's process group is ended only while it is still that attempt's:
the worker records the group id with its leader's start time, and a group
whose leader started at another time (a reused id) is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from workers import node_ops
from workers.attempt import group_is_attempts, start_ticks


def _group(tmp_path: Path) -> subprocess.Popen:
    """A shell leading its own group, with a child of its own (what a command job is)."""
    return subprocess.Popen(["/bin/sh", "-c", "sleep 30 & wait"], start_new_session=True)


def test_the_attempts_group_is_ended_with_its_children(tmp_path):
    proc = _group(tmp_path)
    try:
        time.sleep(0.2)
        (tmp_path / "pgid").write_text(f"{proc.pid} {start_ticks(proc.pid)}")
        assert group_is_attempts(proc.pid, start_ticks(proc.pid))
        ticks = start_ticks(proc.pid)
        assert node_ops.end_process_group(str(tmp_path), grace=0.5)
        proc.wait(5)
        assert _gone(proc.pid, ticks)
    finally:
        _kill(proc)


def test_a_group_whose_leader_started_at_another_time_is_left_alone(tmp_path):
    proc = _group(tmp_path)
    try:
        time.sleep(0.2)
        other_start = start_ticks(proc.pid) - 100  # what an earlier process with this id would have recorded
        (tmp_path / "pgid").write_text(f"{proc.pid} {other_start}")
        assert not group_is_attempts(proc.pid, other_start)
        assert not node_ops.end_process_group(str(tmp_path), grace=0.5)
        assert proc.poll() is None
    finally:
        _kill(proc)


def test_a_group_whose_leader_exited_is_still_ended_while_newer_members_remain(tmp_path):
    leader = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & exit 0"], start_new_session=True)
    ticks = start_ticks(leader.pid)
    leader.wait(5)
    time.sleep(0.2)
    try:
        assert group_is_attempts(leader.pid, ticks)  # its `sleep` is left in the group, and newer
        (tmp_path / "pgid").write_text(f"{leader.pid} {ticks}")
        assert node_ops.end_process_group(str(tmp_path), grace=0.5)
        assert _gone(leader.pid, ticks)  # nothing is left of it
    finally:
        _kill(leader)


def _gone(pgid: int, ticks: int) -> bool:
    """No live process is left in the group (a killed member may stay a zombie a moment)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if not group_is_attempts(pgid, ticks):
            return True
        time.sleep(0.05)
    return False


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(5)
