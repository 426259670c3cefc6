"""kill -9 of the scheduler mid-run, then a restart: every acknowledged job is
still there, reaches exactly one terminal state, and nothing stays running."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def labq(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "LABQ_HOME": str(home)}, cwd=REPO, timeout=timeout)


def test_scheduler_killed_mid_run_loses_nothing(tmp_path):
    home = tmp_path / "home"
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        experiment: crash
        stages:
          - name: s
            command: "sleep 2; echo done {i}"
            sweep: {grid: {i: [1, 2, 3, 4, 5, 6, 7, 8]}}
            resources: {cpu: 0.5}
    """))
    assert labq(home, "scheduler", "start", "--cpus", "2").returncode == 0
    try:
        ids = json.loads(labq(home, "submit", str(spec), "--json").stdout)["job_ids"]
        # Given some jobs running and some pending
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [j["state"] for j in json.loads(labq(home, "queue", "--json").stdout)]
            if "running" in states:
                break
            time.sleep(0.2)
        pid = int((home / "scheduler.pid").read_text())
        old = psutil.Process(pid)
        ray_children = old.children(recursive=True)
        # When the scheduler is killed outright
        os.kill(pid, signal.SIGKILL)
        old.wait(10)
        # Then a restart reconciles and runs everything to the end
        assert labq(home, "scheduler", "start", "--cpus", "2").returncode == 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and json.loads(labq(home, "queue", "--json").stdout):
            time.sleep(0.5)
        db = sqlite3.connect(home / "labq.db")
        jobs = dict(db.execute("SELECT id, state FROM jobs"))
        assert sorted(jobs) == sorted(ids) and set(jobs.values()) == {"succeeded"}
        assert db.execute("SELECT COUNT(*) FROM attempts WHERE state = 'running'").fetchone()[0] == 0
        # exactly one successful attempt per job, and one result per attempt
        per_job = dict(db.execute("SELECT job_id, COUNT(*) FROM attempts WHERE state = 'succeeded' GROUP BY job_id"))
        assert per_job == {i: 1 for i in ids}
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT attempt_id) FROM results").fetchone() in [(n, n) for n in range(100)]
        lost = db.execute("SELECT COUNT(*) FROM attempts WHERE state = 'lost'").fetchone()[0]
        assert lost >= 1  # the attempts running at the kill were recorded, not forgotten
        # The killed scheduler's Ray was reaped by the next scheduler (no leaked processes)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                                  for p in ray_children):
            time.sleep(0.5)
        leftovers = [p for p in ray_children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not leftovers, [" ".join(p.cmdline()[:2]) for p in leftovers]
    finally:
        labq(home, "scheduler", "stop")
