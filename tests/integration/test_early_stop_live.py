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
