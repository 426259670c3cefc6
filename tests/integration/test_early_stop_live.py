"""Early stopping through the real loop on real Ray (the session's local Ray):
a sweep of callables reporting a curve per step; ASHA stops the losing ones,
which end pruned within a second of the stop, keep their curve, and give their
CPUs back; the best runs to the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import assert_resources_released, drive, make_scheduler, submit_spec, write_spec
from scheduler.states import AttemptState, JobState

pytestmark = pytest.mark.ray


def test_asha_prunes_losing_curves_and_their_cpus_come_back(tmp_path, ray_backend):
    sched, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    spec = write_spec(tmp_path, """
        experiment: curves
        metric: acc
        mode: max
        stages:
          - name: train
            run: "testjobs:curve"
            params: {steps: 16, pause: 0.2}
            sweep: {grid: {q: [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]}}  # the best first: the rest meet it at each rung
            resources: {cpu: 0.5}
            early_stop: {method: asha, grace: 2, eta: 2, max_t: 16}
    """)
    sub = submit_spec(spec, settings)
    notes: set[str] = set()

    def seen(jobs) -> bool:  # what `labq queue` says of the running trials, as they go
        notes.update(j.reason for j in jobs if j.state is JobState.RUNNING and j.reason)
        return all(j.state.is_terminal() for j in jobs)

    jobs = drive(sched, store, sub.experiment_id, timeout=120, until=seen)
    assert any(n.startswith("rung ") and n.endswith("/3") for n in notes), notes
    by_q = {j.params["q"]: j for j in jobs}
    pruned = [j for j in jobs if j.state is JobState.PRUNED]
    assert by_q[0.9].state is JobState.SUCCEEDED
    assert pruned, [j.state.value for j in jobs]
    assert all(j.state in (JobState.SUCCEEDED, JobState.PRUNED) for j in jobs)
    for job in pruned:
        (attempt,) = store.attempts(job.id)
        assert attempt.state is AttemptState.PRUNED and "asha: acc" in attempt.error
        # It stopped at its own report() (jobs.StopTrial), so its result is there: its start, its last metrics
        assert attempt.started_at is not None and attempt.metrics.get("acc") is not None, attempt
        run_dir = Path(attempt.run_dir)
        curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert 2 <= curve[-1]["step"] < 16  # stopped past the grace, before the end; its curve kept
        # Its share came back within a second of the stop (its next report raised)
        asked = (run_dir / "stop-requested").stat().st_mtime
        assert attempt.ended_at - asked < 1.0, attempt.ended_at - asked
    # `labq results --plot` draws the pruned curves ending where they were stopped
    from scheduler import api
    from scheduler.plots import plot_results

    res = api.results(store, "curves")
    curves = api.step_curves(res.rows, res.metric)
    assert {c.job_id for c in curves if c.pruned} == {j.id for j in pruned}
    plot_results(res, curves, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert_resources_released()
    store.close()


def test_pause_mode_pauses_at_rungs_and_promoted_jobs_resume_from_their_checkpoints(tmp_path, ray_backend):
    """One job at a time, the best first: it reaches rung 1 (step 2) alone and
    pauses (the top floor(1/2) is nobody); the next, worse, pauses there too and
    puts it in the top floor(2/2), so it is promoted and resumes from its
    checkpoint, pauses alone at rung 2 (step 4), and is promoted again once a
    second job gets there."""
    sched, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    spec = write_spec(tmp_path, """
        experiment: promoted
        metric: acc
        mode: max
        stages:
          - name: train
            run: "testjobs:resumable_curve"
            params: {steps: 8, pause: 0.05}
            sweep: {grid: {q: [0.9, 0.3, 0.5, 0.4, 0.6, 0.8]}}
            resources: {cpu: 4}  # one at a time on the session's 4 CPUs: who reaches a rung first is known
            early_stop: {method: asha, grace: 2, eta: 2, max_t: 8, pause: true}
    """)
    sub = submit_spec(spec, settings)
    seen_paused: set[int] = set()

    def watch(jobs) -> bool:
        seen_paused.update(j.id for j in jobs if j.state is JobState.PAUSED)
        return all(j.state.is_terminal() for j in jobs)

    jobs = drive(sched, store, sub.experiment_id, timeout=120, until=watch)
    by_q = {j.params["q"]: j for j in jobs}
    assert by_q[0.9].state is JobState.SUCCEEDED
    assert all(j.state in (JobState.SUCCEEDED, JobState.PRUNED) for j in jobs), [j.state.value for j in jobs]
    assert seen_paused, "no job was ever paused"
    resumed = 0
    for job in jobs:
        attempts = store.attempts(job.id)
        for earlier, later in zip(attempts, attempts[1:]):
            assert earlier.state is AttemptState.PAUSED and "paused: asha: acc" in earlier.error
            # Paused at its rung: report() waited there for the verdict, so it went no step past it
            curve = [json.loads(line) for line in (Path(earlier.run_dir) / "metrics.jsonl").read_text().splitlines()]
            assert curve[-1]["step"] in (2, 4), curve
            # Promoted: the next attempt resumed from the paused one's checkpoint, at the next step
            first = json.loads((Path(later.run_dir) / "metrics.jsonl").read_text().splitlines()[0])
            assert first["step"] == curve[-1]["step"] + 1
            resumed += 1
        if job.state is JobState.PRUNED:  # paused and never promoted: its last attempt was the pause
            assert attempts[-1].state is AttemptState.PAUSED and "never promoted" in job.reason
        if job.state is JobState.SUCCEEDED and len(attempts) > 1:
            assert attempts[-1].metrics["resumed_from"] > 1
    best = store.attempts(by_q[0.9].id)
    assert [a.state for a in best] == [AttemptState.PAUSED, AttemptState.PAUSED, AttemptState.SUCCEEDED]
    assert best[-1].metrics["resumed_from"] == 5  # paused at step 4, resumed at 5
    assert resumed >= 3
    assert store.attempts(by_q[0.3].id)[0].state is AttemptState.PAUSED  # the worst paused at its first rung
    # The plot draws a promoted job's whole curve, its attempts joined
    from scheduler import api

    res = api.results(store, "promoted")
    curves = {c.job_id: c for c in api.step_curves(res.rows, res.metric)}
    assert curves[by_q[0.9].id].steps[-1] == 8 and curves[by_q[0.9].id].steps[0] == 1
    assert_resources_released()
    store.close()


def test_a_script_that_knows_nothing_of_labq_is_pruned_from_the_metrics_in_its_output(tmp_path, ray_backend):
    """metrics_from.stdout is read while the command runs: ASHA stops the
    losing scripts mid-run (SIGTERM), from what they print."""
    import sys

    sched, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    spec = write_spec(tmp_path, f"""
        experiment: printed
        metric: acc
        mode: max
        stages:
          - name: train
            command: "{sys.executable} curve.py {{q}}"
            sweep: {{grid: {{q: [0.9, 0.2, 0.3, 0.4]}}}}
            resources: {{cpu: 0.5}}
            metrics_from: {{stdout: {{acc: 'acc=([0-9.]+)'}}}}
            early_stop: {{method: asha, grace: 2, eta: 2, max_t: 12}}
    """)
    (spec.parent / "curve.py").write_text(
        "import math, sys, time\n"
        "q = float(sys.argv[1])\n"
        "for step in range(12):\n"
        "    time.sleep(0.3 if step < 9 else 1.0)\n"  # past the last rung (8), time for the stop to land under load
        "    print(f'step {step} acc={q * (1 - math.exp(-(step + 1) / 4)):.4f}', flush=True)\n")
    sub = submit_spec(spec, settings)
    jobs = drive(sched, store, sub.experiment_id, timeout=120)
    by_q = {j.params["q"]: j for j in jobs}
    assert by_q[0.9].state is JobState.SUCCEEDED
    pruned = [j for j in jobs if j.state is JobState.PRUNED]
    assert pruned, [j.state.value for j in jobs]
    for job in pruned:
        (attempt,) = store.attempts(job.id)
        assert "asha: acc" in attempt.error
        printed = (Path(attempt.run_dir) / "stdout.log").read_text().splitlines()
        assert len(printed) < 12  # stopped mid-run, from the lines it had printed
        curve = [json.loads(line) for line in (Path(attempt.run_dir) / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in curve] == list(range(len(curve))) and len(curve) >= 2  # each step once
    (done,) = store.attempts(by_q[0.9].id)
    steps = [json.loads(line) for line in (Path(done.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(12)) and done.metrics["acc"] == steps[-1]["acc"]
    assert_resources_released()
    store.close()
