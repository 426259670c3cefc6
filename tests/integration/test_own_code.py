"""Users' own scripts, unchanged, swept on real Ray: every attempt in a private
working directory, its files kept, its metrics read from what it prints or
writes, the snapshot unchanged.  The scripts in own_project/ import nothing of
labq; train_lm.py saves model.pt and loads it back, so runs sharing a directory
would report each other's model."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import assert_resources_released, drive, make_scheduler, submit_spec
from scheduler import api
from scheduler.states import JobState

pytestmark = pytest.mark.ray
HERE = Path(__file__).parent
LRS = [0.05, 0.2, 0.5, 1.0]


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _project(tmp_path: Path, spec: str) -> Path:
    code = tmp_path / "project"
    shutil.copytree(HERE / "own_project", code, ignore=shutil.ignore_patterns("__pycache__"))
    path = code / "spec.yaml"
    path.write_text(textwrap.dedent(spec))
    return path


def _most_at_once(attempts) -> int:
    edges = sorted([(a.started_at, 1) for a in attempts] + [(a.ended_at, -1) for a in attempts])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


SWEEP = r"""
    experiment: own-code
    metric: test_ppl
    mode: min
    stages:
      - name: lm
        command: "python train_lm.py --lr {lr} --pause 2"
        sweep: {grid: {lr: [0.05, 0.2, 0.5, 1.0]}}
        resources: {cpu: 0.5}
        metrics_from:
          stdout: {test_ppl: 'test ppl\s+([0-9.]+)', valid_ppl: 'valid ppl\s+([0-9.]+)',
                   model_lr: 'trained with lr (\S+)'}
      - name: digits
        command: "python fit_digits.py {C}"
        sweep: {grid: {C: [0.01, 1.0]}}
        resources: {cpu: 0.5}
        metrics_from: {json: results/metrics.json}
      - name: here
        run: ownjobs:write_here
        sweep: {grid: {tag: [a, b, c, d]}}
        resources: {cpu: 0.25}
"""


def test_a_sweep_of_unmodified_scripts_keeps_each_attempts_own_files(tmp_path, ray_backend):
    # Given a project of plain scripts, swept four ways at once
    spec = _project(tmp_path, SWEEP)
    source_digest = _tree_digest(spec.parent)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    # When the scheduler runs it
    jobs = drive(scheduler, store, sub.experiment_id, timeout=240)
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * len(jobs), [(j.id, j.reason) for j in jobs]
    finals = store.final_results(sub.experiment_id)
    lm = [j for j in jobs if j.stage == "lm"]
    # Then the four training runs overlapped, each wrote model.pt in its own
    # directory, and each evaluated its own model (a shared cwd would mix them)
    assert _most_at_once([finals[j.id][0] for j in lm]) >= 4
    for job in lm:
        attempt, metrics = finals[job.id]
        assert metrics["model_lr"] == job.params["lr"]
        assert metrics["test_ppl"] > 1 and metrics["valid_ppl"] > 1
        kept = {o["path"]: o for o in attempt.outputs}
        assert set(kept) == {"model.pt"} and kept["model.pt"]["kept"]
        saved = torch.load(Path(attempt.run_dir) / "outputs" / "model.pt")
        assert saved["lr"] == job.params["lr"]
        # every epoch's line is a step of the curve (appended as printed, one line a match, so
        # early stopping can read it while the script runs), the last is the final value
        steps = [json.loads(line) for line in (Path(attempt.run_dir) / "metrics.jsonl").read_text().splitlines()]
        valid = [s for s in steps if "valid_ppl" in s]
        assert [s["step"] for s in valid] == [0, 1, 2] and all("time" in s for s in steps)
        assert valid[-1]["valid_ppl"] == metrics["valid_ppl"]
        assert [s["test_ppl"] for s in steps if "test_ppl" in s] == [metrics["test_ppl"]]
    # And the results rank the sweep by the metric read from stdout, best first
    res = api.results(store, "own-code")
    assert (res.metric, res.mode) == ("test_ppl", "min")
    ranked = [r["metrics"]["test_ppl"] for r in res.rows if r["stage"] == "lm"]
    assert ranked == sorted(ranked) and len(ranked) == 4
    assert all(r["outputs"] for r in res.rows if r["stage"] == "lm")
    # The sklearn script's JSON file gave its metrics; its model and metrics file
    # are its outputs; the config it deleted was only its own copy
    for job in (j for j in jobs if j.stage == "digits"):
        attempt, metrics = finals[job.id]
        assert metrics["C"] == job.params["C"] and 0.5 < metrics["accuracy"] <= 1
        assert {o["path"] for o in attempt.outputs} == {"model.joblib", "results/metrics.json"}
    # The callable wrote out.txt in its cwd and read back its own
    for job in (j for j in jobs if j.stage == "here"):
        attempt, metrics = finals[job.id]
        assert metrics == {"read_back_ok": 1.0, "config_found": 1.0}
        assert (Path(attempt.run_dir) / "outputs" / "out.txt").read_text() == job.params["tag"]
    # And neither the user's directory nor labq's snapshot of it changed
    assert _tree_digest(spec.parent) == source_digest
    exp = store.experiment("own-code")
    snapshot = Path(settings.home_path) / "code" / Path(exp.package).stem
    # (Python may leave byte-code caches beside the callables' modules it imported there)
    assert _tree_digest_of_zip_source(snapshot) == _tree_digest_of_zip_source(spec.parent)
    assert_resources_released()


def _tree_digest_of_zip_source(project: Path) -> str:
    """The project as labq snapshots it (no spec-dir caches)."""
    h = hashlib.sha256()
    for p in sorted(project.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        h.update(str(p.relative_to(project)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_a_retry_starts_from_a_clean_copy_with_the_previous_run_dir(tmp_path, ray_backend):
    # Given a command that leaves a marker in its cwd and fails the first time
    spec = _project(tmp_path, """
        experiment: retry-clean
        stages:
          - name: s
            command: >-
              if test -e marker; then echo dirty; exit 3; fi;
              touch marker;
              test -n "$LABQ_PREVIOUS_RUN_DIR" && test -e "$LABQ_PREVIOUS_RUN_DIR/outputs/marker" && exit 0;
              exit 1
            retries: 1
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    (job,) = drive(scheduler, store, sub.experiment_id, timeout=60)
    # Then the second attempt did not see the first one's marker, but could read it
    # from the previous run dir, and succeeded
    assert job.state is JobState.SUCCEEDED, job.reason
    attempts = store.attempts(job.id)
    assert [a.exit_code for a in attempts] == [1, 0]
    assert all([o["path"] for o in a.outputs] == ["marker"] for a in attempts)


def test_the_stage_env_vars_reach_commands_and_callables(tmp_path, ray_backend):
    spec = _project(tmp_path, r"""
        experiment: env-vars
        env: {vars: {GREETING: hello}}
        stages:
          - name: cmd
            command: 'echo "greeting=$GREETING depth=$DEPTH"'
            env: {vars: {DEPTH: 3}}
            metrics_from: {stdout: {depth: 'depth=(\d+)'}}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    (job,) = drive(scheduler, store, sub.experiment_id, timeout=60)
    assert job.state is JobState.SUCCEEDED
    attempt = store.attempts(job.id)[-1]
    assert (Path(attempt.run_dir) / "stdout.log").read_text().strip() == "greeting=hello depth=3"
    assert attempt.metrics["depth"] == 3


def test_labq_artifacts_lists_and_fetches_an_output(tmp_path, ray_backend):
    spec = _project(tmp_path, """
        experiment: fetch-me
        stages:
          - name: s
            command: "mkdir -p out && printf 'weights' > out/w.bin && ln -s /etc/hostname leak"
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    (job,) = drive(scheduler, store, sub.experiment_id, timeout=60)
    assert job.state is JobState.SUCCEEDED

    def labq(*args):
        return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True,
                              env={"LABQ_HOME": str(settings.home_path), "PATH": "/usr/bin:/bin"},
                              cwd=Path(__file__).resolve().parents[2], timeout=60)

    listing = json.loads(labq("artifacts", str(job.id), "--json").stdout)
    assert listing["outputs"] == [{"path": "out/w.bin", "bytes": 7, "kept": True}]
    got = labq("artifacts", str(job.id), "--get", "out/w.bin")
    assert got.returncode == 0 and got.stdout == b"weights"
    # A path the attempt did not keep (the link it made, a file outside) is refused
    for path in ("leak", "../../../labq.db", "/etc/hostname"):
        refused = labq("artifacts", str(job.id), "--get", path)
        assert refused.returncode == 2 and refused.stdout == b""
        assert b"kept no file" in refused.stderr and b"Traceback" not in refused.stderr
    status = labq("status", str(job.id))
    assert b"out/w.bin" in status.stdout


def test_env_pip_installs_once_per_set_and_a_failed_install_is_the_jobs_error(tmp_path, ray_backend):
    # Given a stage that needs a package labq's environment lacks (humanize), and
    # one that names a package no index has
    spec = _project(tmp_path, r"""
        experiment: env-pip
        stages:
          - name: uses
            command: "python -c 'import humanize; print(\"version\", humanize.__version__)'"
            env: {pip: [humanize==4.9.0]}
            sweep: {grid: {i: [1, 2]}}
            metrics_from: {stdout: {major: 'version (\d+)\.'}}
          - name: broken
            command: "true"
            env: {pip: [labq-no-such-package-zz==1.0]}
    """)
    with pytest.raises(ImportError):
        __import__("humanize")
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp_path / "dl"),
                            "humanize==4.9.0"], capture_output=True, timeout=120)
    if probe.returncode != 0:  # Ray's pip install needs a package index, as a user's would
        pytest.skip("no package index reachable from this machine")
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    jobs = drive(scheduler, store, sub.experiment_id, timeout=300)
    uses = [j for j in jobs if j.stage == "uses"]
    (broken,) = [j for j in jobs if j.stage == "broken"]
    # Then both jobs ran with it, in Ray's environment for that list
    assert [j.state for j in uses] == [JobState.SUCCEEDED] * 2, [j.reason for j in uses]
    assert all(store.attempts(j.id)[-1].metrics["major"] == 4 for j in uses)
    # And the install that could not work failed the job, named as such
    assert broken.state is JobState.FAILED
    error = store.attempts(broken.id)[-1].error
    assert error.startswith("could not install the stage's env.pip packages") and "labq-no-such-package-zz" in error
    assert_resources_released()


def test_a_node_that_cannot_read_the_labq_home_gets_the_code_from_ray(tmp_path, ray_backend):
    # Given a snapshot the scheduler left in Ray's key-value store, and a worker
    # that cannot read the zip on the head (its path does not exist "here")
    import ray

    from scheduler.packaging import snapshot
    from workers.attempt import run_attempt

    project = _project(tmp_path, "experiment: x\nstages:\n  - {name: s, command: 'true'}\n").parent
    package = snapshot(project, tmp_path / "head-home", "spec.yaml")
    ray_backend.share_code(str(package))
    task = {"job_id": 1, "attempt": 1, "experiment": "x", "stage": "s", "params": {}, "target_kind": "command",
            "target": "cat configs/digits.yaml", "resources": {"cpu": 0.5}, "inputs": [],
            "run_dir": str(tmp_path / "node-home" / "runs" / "1" / "attempt-1"),
            "package": str(tmp_path / "not-on-this-node" / package.name),
            "code_root": str(tmp_path / "node-home" / "code")}
    result = ray.get(ray.remote(num_cpus=0.5)(run_attempt).remote(task), timeout=120)
    # Then the job ran in a copy of it
    assert result["outcome"] == "succeeded", result["error"]
    assert (tmp_path / "node-home" / "runs" / "1" / "attempt-1" / "stdout.log").read_text() == "C: 1.0\n"
    assert (tmp_path / "node-home" / "code" / package.stem / "train_lm.py").exists()
