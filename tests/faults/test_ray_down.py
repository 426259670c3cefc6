"""Ray stopped under a running scheduler: it does not crash-loop, says Ray is
down, keeps accepting submissions, and dispatches again once Ray is back."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from helpers import free_port, kill_processes_naming  # noqa: E402

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def test_scheduler_survives_ray_going_down_and_resumes(tmp_path):
    port = free_port()
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "LABQ_HOME": str(tmp_path / "h"),
           # Ray ends a driver whose GCS is gone after this long (default 60 s): shorter keeps the test quick.
           "RAY_gcs_rpc_server_reconnect_timeout_s": "10"}
    env.pop("RAY_ADDRESS", None)
    temps = []

    def start_ray() -> None:
        temp = Path(tempfile.mkdtemp(prefix="lqd-", dir="/tmp"))
        temps.append(temp)
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                        f"--temp-dir={temp}", "--disable-usage-stats"], env=env, check=True, capture_output=True,
                       timeout=120)

    def labq(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=REPO)

    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        experiment: after
        stages:
          - {name: s, command: "echo ok", resources: {cpu: 0.5}}
    """))
    start_ray()
    try:
        assert labq("scheduler", "start", "--address", f"127.0.0.1:{port}").returncode == 0
        supervisor = int((tmp_path / "h" / "scheduler.pid").read_text())
        # When Ray goes away under the scheduler
        kill_processes_naming(temps[0])
        # Then the scheduler says so (stuck Ray calls, then Ray ends the driver and
        # the supervisor records Ray as down) and keeps the same supervisor
        deadline = time.monotonic() + 150
        ray_state = None
        while time.monotonic() < deadline:
            ray_state = json.loads(labq("scheduler", "status", "--json").stdout)["ray"]
            if ray_state == "down":
                break
            assert ray_state in ("up", "not responding", "starting", "down")
            time.sleep(2)
        assert ray_state == "down"
        assert psutil.pid_exists(supervisor) and labq("scheduler", "status").returncode == 0
        # ...and submissions are still accepted
        out = labq("submit", str(spec), "--json")
        assert out.returncode == 0, out.stderr
        job_id = json.loads(out.stdout)["job_ids"][0]
        # When Ray is back, the job runs
        start_ray()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = json.loads(labq("status", str(job_id), "--json").stdout)["state"]
            if state == "succeeded":
                break
            time.sleep(1)
        assert state == "succeeded"
        assert json.loads(labq("scheduler", "status", "--json").stdout)["ray"] == "up"
    finally:
        labq("scheduler", "stop")
        for temp in temps:
            kill_processes_naming(temp)


def test_a_dead_local_raylet_counts_as_ray_down_and_the_scheduler_recovers(tmp_path):
    # Given a scheduler with its own local Ray, one job done on it
    env = {**os.environ, "LABQ_HOME": str(tmp_path / "h")}
    env.pop("RAY_ADDRESS", None)

    def labq(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], env=env, capture_output=True,
                              text=True, timeout=180, cwd=REPO)

    spec = tmp_path / "spec.yaml"
    spec.write_text("experiment: raylet\nstages:\n  - {name: s, command: 'echo ok', resources: {cpu: 0.5}}\n")
    assert labq("scheduler", "start", "--cpus", "2").returncode == 0
    try:
        supervisor = int((tmp_path / "h" / "scheduler.pid").read_text())
        assert labq("submit", str(spec), "--wait").returncode == 0
        # (what the scheduler and its workers wrote is private to this account)
        home = tmp_path / "h"
        run = home / "runs" / "1" / "attempt-1"
        private = {p: stat.S_IMODE(p.stat().st_mode) for p in
                   [run, run / "stdout.log", run / "result.json", home / "scheduler.log", home / "scheduler.json",
                    home / "scheduler.pid", home / "code"]}
        assert all(mode & 0o077 == 0 for mode in private.values()), {str(k): oct(v) for k, v in private.items()}
        # ...and one long job running on it
        long_spec = tmp_path / "long.yaml"
        long_spec.write_text("experiment: long\nstages:\n  - {name: s, command: 'sleep 8; echo done', "
                             "resources: {cpu: 0.5}}\n")
        (long_id,) = json.loads(labq("submit", str(long_spec), "--json").stdout)["job_ids"]
        first_run = home / "runs" / str(long_id) / "attempt-1"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (first_run / "pgid").exists():
            time.sleep(0.2)
        assert (first_run / "pgid").exists()
        # When its raylet is killed
        # (the local Ray runs under a keeper of its own, so that jobs outlive the scheduler)
        keeper = psutil.Process(json.loads((home / "scheduler.json").read_text())["local_ray"]["pid"])
        raylets = [p for p in keeper.children(recursive=True)
                   if p.name() == "raylet" or "raylet/raylet" in " ".join(p.cmdline()[:1])]
        assert raylets, "no raylet under the local Ray's keeper"
        for p in raylets:
            p.kill()
        # Then within seconds the scheduler says Ray is down (not "up" for minutes),
        # restarts on a new Ray, and new jobs run
        states = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states.append(json.loads(labq("scheduler", "status", "--json").stdout)["ray"])
            if "down" in states and states[-1] == "up":
                break
            time.sleep(1)
        assert "down" in states and states[-1] == "up", states
        assert psutil.pid_exists(supervisor)
        out = labq("submit", str(spec), "--wait", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        # ...and the long job, lost with its Ray (the cause in `labq status`), ran again to the end
        # while nothing of its first attempt ran on beside it (its command was ended first)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = json.loads(labq("status", str(long_id), "--json").stdout)
            if status["state"] == "succeeded":
                break
            time.sleep(1)
        first, *rest = status["attempts_detail"]
        assert status["state"] == "succeeded" and first["state"] == "lost", status
        assert "owner" in first["error"] or "node" in first["error"], first["error"]
        assert "done" not in (first_run / "stdout.log").read_text()
    finally:
        labq("scheduler", "stop")
