"""Running attempts outlive the scheduler (workers.owner, scheduler.local_ray):
kill -9 of the whole daemon, `labq scheduler stop` / `start`, a drain and the
old cancel-on-stop, and kill -9 of a node's owner, each against a real daemon
with its own local Ray.  Every test checks the database (one attempt per job
unless the owner died, the same attempt ids) and the processes (none of a job
left once it is recorded, the local Ray gone once the scheduler stops idle)."""

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from helpers import wait_until  # noqa: E402

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def labq(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABQ_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc




def attempts(home: Path) -> list[dict]:
    db = sqlite3.connect(home / "labq.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM attempts ORDER BY id")]
    finally:
        db.close()


def job_states(home: Path) -> dict[int, str]:
    db = sqlite3.connect(home / "labq.db")
    try:
        return dict(db.execute("SELECT id, state FROM jobs"))
    finally:
        db.close()


def running_with_processes(home: Path, n: int) -> bool:
    """``n`` attempts are running and each one's command has started."""
    rows = [a for a in attempts(home) if a["state"] == "running"]
    return len(rows) == n and all((Path(a["run_dir"]) / "pgid").exists() for a in rows)


def job_processes(home: Path) -> list[psutil.Process]:
    """Processes of this home's jobs: a command's processes carry its run dir in LABQ_RUN_DIR."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LABQ_RUN_DIR", "").startswith(str(home)):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def keeper(home: Path) -> psutil.Process | None:
    """The local Ray's keeper process the scheduler recorded, if it still runs."""
    state = json.loads((home / "scheduler.json").read_text())
    local = state.get("local_ray")
    if not local:
        return None
    try:
        proc = psutil.Process(local["pid"])
        return proc if abs(proc.create_time() - local["started"]) < 0.01 else None
    except psutil.Error:
        return None


def kill_daemon(home: Path) -> None:
    """kill -9 of the supervisor and its child at once: nothing of the scheduler runs any more."""
    supervisor = psutil.Process(int((home / "scheduler.pid").read_text()))
    procs = [supervisor, *supervisor.children()]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def stop_and_check_nothing_left(home: Path) -> None:
    kept = keeper(home) if (home / "scheduler.json").exists() else None
    labq(home, "scheduler", "stop", "--cancel-running")
    if kept is not None:
        psutil.wait_procs([kept], timeout=30)
        assert not kept.is_running() or kept.status() == psutil.STATUS_ZOMBIE, "the local Ray outlived an idle stop"
    wait_until(lambda: not job_processes(home), 15, "no job process left")


def test_kill_9_and_stop_of_the_scheduler_leave_attempts_running_and_the_next_adopts_them(tmp_path):
    home = tmp_path / "home"
    path = spec(tmp_path, """
        experiment: outlive
        stages:
          - name: s
            command: "sleep 10; echo done {i}"
            sweep: {grid: {i: [1, 2, 3, 4]}}
            resources: {cpu: 0.5}
    """)
    ok(labq(home, "scheduler", "start", "--cpus", "2"))
    try:
        ids = json.loads(ok(labq(home, "submit", str(path), "--json")).stdout)["job_ids"]
        wait_until(lambda: running_with_processes(home, 4), 60, "four attempts running")
        before = {a["job_id"]: a["id"] for a in attempts(home)}
        # When the whole daemon is killed with -9 a moment after the jobs started
        kill_daemon(home)
        # Then their processes run on, and a new scheduler adopts them at once
        assert len({p.environ()["LABQ_RUN_DIR"] for p in job_processes(home)}) == 4
        ok(labq(home, "scheduler", "start", "--cpus", "2"))
        assert "adopted 4 attempts" in (home / "scheduler.log").read_text()
        assert [a["state"] for a in attempts(home)] == ["running"] * 4
        # And a routine stop leaves them running too, for the start after it
        out = ok(labq(home, "scheduler", "stop")).stdout
        assert "4 running jobs go on" in out, out
        assert len({p.environ()["LABQ_RUN_DIR"] for p in job_processes(home)}) == 4
        ok(labq(home, "scheduler", "start", "--cpus", "2"))
        wait_until(lambda: set(job_states(home).values()) == {"succeeded"}, 60, "every job to succeed")
        rows = attempts(home)
        # The same attempt ids ended succeeded, one attempt per job, in about one job's length
        assert {a["job_id"]: a["id"] for a in rows} == before and sorted(before) == sorted(ids)
        assert [a["state"] for a in rows] == ["succeeded"] * 4
        assert max(a["ended_at"] for a in rows) - min(a["dispatched_at"] for a in rows) < 16
        assert all("done" in (Path(a["run_dir"]) / "stdout.log").read_text() for a in rows)
        wait_until(lambda: not job_processes(home), 15, "no job process left")
        kept = keeper(home)
        assert kept is not None
        # When the scheduler stops with nothing running, its local Ray stops with it
        assert "go on" not in ok(labq(home, "scheduler", "stop")).stdout
        psutil.wait_procs([kept], timeout=30)
        assert not kept.is_running() or kept.status() == psutil.STATUS_ZOMBIE
    finally:
        stop_and_check_nothing_left(home)


def test_cancel_and_timeout_reach_attempts_a_restarted_scheduler_adopted(tmp_path):
    home = tmp_path / "home"
    path = spec(tmp_path, """
        experiment: stops
        stages:
          - name: s
            command: "sleep 60 # {i}"
            sweep: {grid: {i: [1, 2]}}
            resources: {cpu: 0.5}
            timeout: 8s
            retries: 0
    """)
    ok(labq(home, "scheduler", "start", "--cpus", "2"))
    try:
        first, second = json.loads(ok(labq(home, "submit", str(path), "--json")).stdout)["job_ids"]
        wait_until(lambda: running_with_processes(home, 2), 60, "both attempts running")
        kill_daemon(home)
        ok(labq(home, "scheduler", "start", "--cpus", "2"))
        # When one adopted attempt is cancelled and the other runs past its timeout
        ok(labq(home, "cancel", str(first)))
        wait_until(lambda: job_states(home) == {first: "cancelled", second: "timed_out"}, 60,
                   "a cancel and a timeout")
        # Then each ended with its one attempt, and its command is gone
        assert [(a["job_id"], a["state"]) for a in attempts(home)] == [(first, "cancelled"), (second, "timed_out")]
        wait_until(lambda: not job_processes(home), 15, "the commands to end")
    finally:
        stop_and_check_nothing_left(home)


def test_drain_waits_for_what_runs_and_cancel_running_requeues_it(tmp_path):
    home = tmp_path / "home"
    path = spec(tmp_path, """
        experiment: drain
        stages:
          - name: s
            command: "sleep 5 # {i}"
            sweep: {grid: {i: [1, 2, 3, 4]}}
            resources: {cpu: 1}
    """)
    ok(labq(home, "scheduler", "start", "--cpus", "2"))
    try:
        ids = json.loads(ok(labq(home, "submit", str(path), "--json")).stdout)["job_ids"]
        wait_until(lambda: running_with_processes(home, 2), 60, "two attempts running")
        kept = keeper(home)
        # When the scheduler is drained: the two running end, the two waiting do not start
        started = time.monotonic()
        ok(labq(home, "scheduler", "stop", "--drain"))
        assert time.monotonic() - started > 2
        states = job_states(home)
        assert sorted(states.values()) == ["pending", "pending", "succeeded", "succeeded"], states
        psutil.wait_procs([kept], timeout=30)  # nothing runs: the local Ray stopped too
        assert not kept.is_running() or kept.status() == psutil.STATUS_ZOMBIE
        # When the next scheduler is stopped with --cancel-running (the old behaviour)
        ok(labq(home, "scheduler", "start", "--cpus", "2"))
        wait_until(lambda: running_with_processes(home, 2), 60, "the other two running")
        ok(labq(home, "scheduler", "stop", "--cancel-running"))
        # Then its attempts ended lost, their jobs are queued again, and nothing of them runs
        lost = [a for a in attempts(home) if a["state"] == "lost"]
        assert len(lost) == 2 and all("cancel-running" in a["error"] for a in lost)
        assert sorted(job_states(home).values()) == ["pending", "pending", "succeeded", "succeeded"]
        wait_until(lambda: not job_processes(home), 15, "the cancelled commands to end")
        ok(labq(home, "scheduler", "start", "--cpus", "2"))
        wait_until(lambda: set(job_states(home).values()) == {"succeeded"}, 60, "the rest to succeed")
        assert sorted(job_states(home)) == sorted(ids)
    finally:
        stop_and_check_nothing_left(home)


def test_kill_9_of_a_nodes_owner_loses_its_attempts_which_rerun_never_beside_themselves(tmp_path):
    home = tmp_path / "home"
    code = tmp_path / "code"
    code.mkdir()
    (code / "sleeper.py").write_text("import time\n\ndef nap(ctx):\n    time.sleep(ctx.params['s'])\n    print('done')\n")
    path = code / "spec.yaml"
    path.write_text(textwrap.dedent("""
        experiment: owner
        stages:
          - {name: cmd, command: "sleep 6; echo done", resources: {cpu: 0.5}}
          - {name: py, run: "sleeper:nap", params: {s: 6}, resources: {cpu: 0.5}}
    """))
    ok(labq(home, "scheduler", "start", "--cpus", "2"))
    try:
        ok(labq(home, "submit", str(path), "--json"))
        wait_until(lambda: len([a for a in attempts(home) if a["state"] == "running"]) == 2
                   and (Path(attempts(home)[0]["run_dir"]) / "pgid").exists()
                   and (Path(attempts(home)[1]["run_dir"]) / "stdout.log").exists(), 60, "both attempts running")
        kept = keeper(home)
        owner = next(p for p in kept.children(recursive=True) if p.name().startswith("ray::AttemptOwner")
                     or (p.cmdline() or [""])[0].startswith("ray::AttemptOwner"))
        first_dirs = {a["run_dir"] for a in attempts(home)}
        # When labq's owner of the node's attempts is killed
        owner.kill()
        # Then both attempts are lost for it, requeued without charge, and succeed on a second attempt
        wait_until(lambda: set(job_states(home).values()) == {"succeeded"}, 90, "both jobs to succeed")
        rows = attempts(home)
        lost = [a for a in rows if a["state"] == "lost"]
        assert len(lost) == 2 and all("owner" in a["error"] for a in lost), [a["error"] for a in lost]
        assert sorted(a["state"] for a in rows) == ["lost", "lost", "succeeded", "succeeded"]
        # and no first attempt ran on beside its retry: each was ended seconds before its end (it
        # never printed "done"), while its retry ran to the end
        for job_id in {a["job_id"] for a in rows}:
            first, retry = [a for a in rows if a["job_id"] == job_id]
            assert "done" not in (Path(first["run_dir"]) / "stdout.log").read_text()
            assert "done" in (Path(retry["run_dir"]) / "stdout.log").read_text()
        assert not [p for p in job_processes(home) if p.environ().get("LABQ_RUN_DIR") in first_dirs]
        out = json.loads(ok(labq(home, "status", str(lost[0]["job_id"]), "--json")).stdout)
        assert "owner" in out["attempts_detail"][0]["error"]  # the cause, as `labq status` shows it
    finally:
        stop_and_check_nothing_left(home)


def test_kill_9_in_the_middle_of_a_search_loses_and_repeats_no_trial(tmp_path):
    home = tmp_path / "home"
    path = spec(tmp_path, f"""
        experiment: tune
        metric: score
        mode: max
        stages:
          - name: fit
            command: "sleep 0.3; {sys.executable} -c 'print(\\"score\\", -({{x}} - 0.3) ** 2)'"
            metrics_from: {{stdout: {{score: 'score (\\S+)'}}}}
            sweep: {{search: {{algo: tpe, samples: 8, parallel: 2, seed: 5}}, space: {{x: {{uniform: [0, 1]}}}}}}
            resources: {{cpu: 0.5}}
    """)
    ok(labq(home, "scheduler", "start", "--cpus", "2"))
    try:
        ok(labq(home, "submit", str(path), "--no-start"))
        # When the scheduler is killed with -9 once the search has asked for a third and fourth trial
        wait_until(lambda: len(job_states(home)) >= 4, 90, "four trials asked")
        kill_daemon(home)
        # Then a new scheduler carries the search on from the database to its eight trials
        ok(labq(home, "scheduler", "start", "--cpus", "2"))
        wait_until(lambda: len(job_states(home)) == 8 and set(job_states(home).values()) == {"succeeded"}, 120,
                   "eight trials to succeed")
        time.sleep(1.5)  # (a pass or two more: none is asked beyond the eight)
        db = sqlite3.connect(home / "labq.db")
        try:
            xs = [json.loads(p)["x"] for (p,) in db.execute("SELECT params FROM jobs ORDER BY id")]
        finally:
            db.close()
        assert len(xs) == 8 and len(set(xs)) == 8, xs
        out = ok(labq(home, "status", "tune")).stdout
        assert "search fit (tpe): 8 of 8 trials asked, 2 at a time" in out, out
    finally:
        stop_and_check_nothing_left(home)
