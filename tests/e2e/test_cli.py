"""The `labq` command end to end, in subprocesses with a temporary LABQ_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def labq(*args: str, home: Path, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABQ_HOME": str(home)}
    env.pop("LABQ_CLUSTER", None)
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"labq {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    yield home
    labq("scheduler", "stop", home=home)


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("body, key, expected", [
    ("experiment: x\nstages:\n  - {name: a, run: 'jobs.prep:tabular', params: {dataset: iris}, resources: {gpu: 1.5}}\n",
     "stages[a].resources", "whole number"),
    ("experiment: x\nstages:\n  - {name: a, run: 'jobs.prep:tabular', colour: red}\n", "stages[a].colour", "unknown key"),
    ("experiment: x\nstages:\n  - {name: a, run: 'nosuchmodule:main'}\n", "stages[a].run", "not found"),
    ("experiment: x\nstages:\n  - {name: a, run: 'jobs.prep:tabular', params: {dataset: iris}, after: [b]}\n"
     "  - {name: b, run: 'jobs.prep:tabular', params: {dataset: iris}, after: [a]}\n", "after", "cycle"),
    ("experiment: x\nstages:\n  - {name: a, run: 'jobs.prep:tabular', params: {dataset: iris}, resources: {cpu: -1}}\n",
     "stages[a].resources.cpu", "greater than or equal to 0"),
    ("experiment: [unclosed\n", "line", "invalid YAML"),
])
def test_bad_spec_exits_2_with_one_line_and_writes_nothing(tmp_path, body, key, expected):
    home = tmp_path / "home"
    spec = write(tmp_path, body)
    proc = labq("submit", str(spec), home=home)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(spec) in lines[0] and key in lines[0] and expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (home / "labq.db").exists()


def test_bad_arguments_and_unknown_ids_exit_2(tmp_path):
    home = tmp_path / "home"
    for args in (["status", "999"], ["results", "nosuch"], ["logs", "42"], ["queue", "--limit", "zero"],
                 ["cancel"], ["frobnicate"], ["submit", str(tmp_path / "missing.yaml")]):
        proc = labq(*args, home=home)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_run_quickstart_end_to_end(home):
    # When the user runs the quickstart (this starts a local scheduler and Ray)
    proc = labq("run", "examples/quickstart.yaml", "--cpus", "2", home=home, timeout=240)
    # Then all seven jobs succeed and the results table is printed, best first
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded: 7" in proc.stdout and "★" in proc.stdout
    rows = json.loads(labq("results", "quickstart", "--json", home=home, check=True).stdout)
    train = [r for r in rows if r["stage"] == "train"]
    assert len(train) == 6 and all(r["state"] == "succeeded" for r in train)
    assert train[0]["best"] and train[0]["metrics"]["accuracy"] >= max(r["metrics"]["accuracy"] for r in train)
    assert {"n_estimators", "max_depth", "estimator"} <= set(train[0]["params"])
    # The jobs overlapped in time: the sweep really ran in parallel.
    spans = sorted((r["started_at"], r["ended_at"]) for r in train)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    csv_out = labq("results", "quickstart", "--csv", home=home, check=True).stdout.splitlines()
    assert len(csv_out) == 8 and "metrics.accuracy" in csv_out[0]
    assert json.loads(labq("queue", "--json", home=home, check=True).stdout) == []
    status = json.loads(labq("status", str(train[0]["job_id"]), "--json", home=home, check=True).stdout)
    assert status["state"] == "succeeded" and status["attempts_detail"][0]["metrics"]["accuracy"] > 0.8
    nodes = json.loads(labq("nodes", "--json", home=home, check=True).stdout)
    assert nodes["scheduler"]["running"] and nodes["nodes"][0]["total"]["CPU"] == 2
    assert labq("results", "quickstart", "--plot", str(home / "q.png"), home=home).returncode == 0
    assert (home / "q.png").stat().st_size > 1000
    # A table shows the best rows only, and says how many it left out
    top = labq("results", "quickstart", "--limit", "2", home=home, check=True).stdout
    assert "7 jobs" in top and "5 more" in top and str(train[0]["job_id"]) in top
    assert len(json.loads(labq("results", "quickstart", "--json", "--limit", "3", home=home, check=True).stdout)) == 3
    # Accounting: the user's seven jobs and the cpu time they held, in the default queue
    usage = json.loads(labq("usage", "--since", "1h", "--json", home=home, check=True).stdout)
    (row,) = usage["rows"]
    assert row["queue"] == "default" and row["jobs"] == 7 and row["attempts"] == 7
    assert 0 < row["cpu_hours"] < 1 and row["decayed_cpu_hours"] == pytest.approx(row["cpu_hours"], rel=0.01)
    assert labq("usage", "--since", "soon", home=home).returncode == 2


def test_queue_shows_why_jobs_wait_and_cancel_by_experiment(tmp_path, home):
    spec = write(tmp_path, """
        experiment: waiting
        stages:
          - {name: prep, run: "jobs.prep:tabular", params: {dataset: iris}}
          - name: train
            after: [prep]
            run: jobs.train:sklearn
            params: {estimator: sklearn.linear_model.LogisticRegression}
            sweep: {grid: {C: [0.1, 1.0]}}
    """)
    out = json.loads(labq("submit", str(spec), "--no-start", "--json", home=home, check=True).stdout)
    assert len(out["job_ids"]) == 3 and not out["scheduler_started"]
    rows = json.loads(labq("queue", "--json", home=home, check=True).stdout)
    assert [r["state"] for r in rows] == ["pending", "blocked", "blocked"]
    assert all(r["reason"] == f"waiting for job {out['job_ids'][0]} (prep)" for r in rows[1:])
    table = labq("queue", home=home, check=True).stdout
    assert "no scheduler is running" in table and "waiting for job" in table
    done = json.loads(labq("cancel", "--experiment", "waiting", "--json", home=home, check=True).stdout)
    assert sorted(done["cancelled"]) == sorted(out["job_ids"])
    assert json.loads(labq("queue", "--json", home=home, check=True).stdout) == []


def test_concurrent_submitters_pollers_and_cancels(tmp_path, home):
    # Given 16 processes submitting 1,000 jobs in total, while others poll the queue and cancel
    sizes = [62] * 8 + [63] * 8
    specs = []
    for n, size in enumerate(sizes):
        specs.append(write(tmp_path, f"""
            experiment: many
            stages:
              - name: s
                command: "echo {{i}}"
                sweep: {{grid: {{i: {list(range(size))}}}}}
        """, name=f"spec{n}.yaml"))
    stop = threading.Event()
    polls: list[subprocess.CompletedProcess] = []

    def poll() -> None:
        while not stop.is_set():
            polls.append(labq("queue", "--json", "--limit", "5000", home=home))

    pollers = [threading.Thread(target=poll) for _ in range(2)]
    for t in pollers:
        t.start()
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(labq, "submit", str(spec), "--no-start", "--json", home=home) for spec in specs]
        # Cancel while the others still submit: once the first submission landed
        # (16 interpreters starting at once on 2 cores can take more than a second)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and labq("status", "many", "--json", home=home).returncode != 0:
            time.sleep(0.1)
        cancel = labq("cancel", "--experiment", "many", "--json", home=home)
        procs = [f.result() for f in futures]
    stop.set()
    for t in pollers:
        t.join()
    # Then every submission and poll succeeded, none saw a locked database
    everything = procs + polls + [cancel]
    assert all(p.returncode == 0 for p in everything), [p.stderr for p in everything if p.returncode][:3]
    assert not any("locked" in p.stderr for p in everything)
    assert len(polls) >= 2
    # ...and exactly the submitted jobs exist, each once
    ids = [i for p in procs for i in json.loads(p.stdout)["job_ids"]]
    assert len(ids) == len(set(ids)) == 1000
    import sqlite3

    db = sqlite3.connect(home / "labq.db")
    assert sorted(r[0] for r in db.execute("SELECT id FROM jobs")) == sorted(ids)
    cancelled = set(json.loads(cancel.stdout)["cancelled"])
    states = dict(db.execute("SELECT id, state FROM jobs"))
    assert all(states[i] == "cancelled" for i in cancelled)
    assert set(states.values()) <= {"pending", "cancelled"}


def test_scheduler_start_status_stop_and_logs(tmp_path, home):
    spec = write(tmp_path, """
        experiment: talk
        stages:
          - {name: s, command: "for i in 1 2 3; do echo line $i; sleep 0.3; done", resources: {cpu: 0.5}}
    """)
    assert labq("scheduler", "status", home=home).returncode == 1
    started = labq("scheduler", "start", "--cpus", "2", home=home, timeout=120, check=True)
    assert "scheduler started" in started.stdout
    assert "running" in labq("scheduler", "status", home=home, check=True).stdout
    out = json.loads(labq("submit", str(spec), "--json", "--wait", home=home, timeout=120, check=True).stdout)
    job_id = out["job_ids"][0]
    assert labq("logs", str(job_id), home=home, check=True).stdout.split() == ["line", "1", "line", "2", "line", "3"]
    assert "line 3" in labq("logs", str(job_id), "-f", home=home, timeout=30, check=True).stdout
    assert "scheduler stopped" in labq("scheduler", "stop", home=home, check=True).stdout
    assert labq("scheduler", "status", home=home).returncode == 1
