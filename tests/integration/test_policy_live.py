"""The policy's rules through the real loop on real Ray (the session's local Ray:
4 CPUs, 2 logical GPUs): preemption requeues a borrower that resumes from its
checkpoint, and fair share lets a light user in ahead of a heavy user's backlog."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import assert_resources_released, drive, submit_spec, write_spec
from scheduler.api import submit
from scheduler.config import Settings
from scheduler import loop
from scheduler.loop import Scheduler
from scheduler.states import AttemptState, JobState
from scheduler.store import Store

pytestmark = pytest.mark.ray


def _scheduler(home, backend, queues):
    settings = Settings.model_validate({"home": str(home), "queues": queues,
                                        "scheduler": {"poll_interval": 0.05, "cancel_grace": 1.0}})
    store = Store(home)
    return Scheduler(store, backend, settings), store, settings


def _steps_done(store, job_id) -> int:
    """How far the job's running attempt has checkpointed (a GPU job's worker may still be starting)."""
    mark = Path(store.attempts(job_id)[-1].run_dir) / "checkpoints" / "step.txt"
    try:
        return int(mark.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _run_long_checkpointing_job(tmp_path, sched, store, settings, steps: int):
    """Submit a 6 s checkpointing job holding every CPU in queue research, and
    drive the scheduler until it has checkpointed ``steps`` steps."""
    long_spec = write_spec(tmp_path, """
        experiment: long
        queue: research
        stages:
          - {name: train, run: "testjobs:checkpointed", params: {steps: 60}, resources: {cpu: 4}, checkpoints: true}
    """, name="long.yaml")
    long_run = submit_spec(long_spec, settings)
    drive(sched, store, long_run.experiment_id, until=lambda jobs: _steps_done(store, jobs[0].id) >= steps)
    return long_run


def test_a_queue_below_its_guarantee_preempts_a_borrower_which_resumes_from_its_checkpoint(tmp_path, ray_backend):
    sched, store, settings = _scheduler(tmp_path / "home", ray_backend, [
        {"name": "batch", "borrow": True},
        {"name": "prod", "guarantee": {"gpu": 1}, "preempt": True},
    ])
    # Given a batch queue (no guarantee) borrowing both GPUs with two long checkpointing jobs
    batch = write_spec(tmp_path, """
        experiment: borrow
        queue: batch
        stages:
          - {name: long, run: "testjobs:checkpointed", params: {steps: 60},
             sweep: {grid: {i: [1, 2]}}, resources: {cpu: 0.5, gpu: 1}}
    """)
    borrowed = submit_spec(batch, settings)
    drive(sched, store, borrowed.experiment_id, until=lambda jobs: all(j.state is JobState.RUNNING for j in jobs))
    drive(sched, store, borrowed.experiment_id, until=lambda jobs: all(_steps_done(store, j.id) >= 3 for j in jobs))
    # When the prod queue, guaranteed one GPU, submits a job needing it
    prod = write_spec(tmp_path, """
        experiment: urgent
        queue: prod
        stages:
          - {name: now, run: "testjobs:sleepy", params: {seconds: 0.5}, resources: {cpu: 0.5, gpu: 1}}
    """, name="prod.yaml")
    urgent = submit_spec(prod, settings)
    (done,) = drive(sched, store, urgent.experiment_id, timeout=60)
    # Then one borrower was preempted to make room, and prod's job ran
    assert done.state is JobState.SUCCEEDED
    jobs = drive(sched, store, borrowed.experiment_id, timeout=90)
    assert all(j.state is JobState.SUCCEEDED for j in jobs)
    histories = {j.id: store.attempts(j.id) for j in jobs}
    preempted = [h for h in histories.values() if len(h) == 2]
    assert len(preempted) == 1, {k: [a.state.value for a in h] for k, h in histories.items()}
    first, second = preempted[0]
    assert first.state is AttemptState.PREEMPTED and "queue 'prod'" in (first.error or "")
    # ...it kept its history, was not charged a retry (it has none), and resumed from its checkpoint
    assert second.state is AttemptState.SUCCEEDED and second.metrics["resumed_from"] > 0
    assert second.dispatched_at >= store.attempts(done.id)[0].dispatched_at
    assert_resources_released()
    store.close()


def test_a_tiered_queue_lets_a_new_job_preempt_one_that_has_had_its_share(tmp_path, ray_backend):
    # Tiers at 2 s of service (a CPU-only job counts as one GPU): the long job,
    # holding every CPU, passes it 2 s in
    sched, store, settings = _scheduler(tmp_path / "home", ray_backend, [
        {"name": "research", "tiers": ["2s"], "max_preemptions": 1}])
    long_run = _run_long_checkpointing_job(tmp_path, sched, store, settings, steps=25)
    # When a new job of the same queue needs a CPU
    short_spec = write_spec(tmp_path, """
        experiment: short
        queue: research
        stages:
          - {name: eval, run: "testjobs:sleepy", params: {seconds: 0.5}, resources: {cpu: 1}}
    """, name="short.yaml")
    short = submit_spec(short_spec, settings)
    (done,) = drive(sched, store, short.experiment_id, timeout=60)
    assert done.state is JobState.SUCCEEDED
    (long_job,) = drive(sched, store, long_run.experiment_id, timeout=90)
    # Then the long job, in tier 1, yielded to it and resumed from its checkpoint
    first, second = store.attempts(long_job.id)
    assert first.state is AttemptState.PREEMPTED and "yields to job" in (first.error or "")
    assert "tier 1" in first.error and "preempted 1 of at most 1 times" in first.error
    assert second.state is AttemptState.SUCCEEDED and second.metrics["resumed_from"] > 0
    assert store.attained([long_job.id])[long_job.id][1] == 1
    assert_resources_released()
    store.close()


def test_a_queue_running_the_shortest_expected_first_preempts_a_job_that_outlived_its_kind(tmp_path, ray_backend,
                                                                                           monkeypatch):
    # The run times predictions come from are re-read every 0.2 s, not 30 s
    monkeypatch.setattr(loop, "DURATIONS_REFRESH_SECONDS", 0.2)
    sched, store, settings = _scheduler(tmp_path / "home", ray_backend, [
        {"name": "research", "preempt_longer": 2, "max_preemptions": 1}])
    # Given three short evaluations that have run (what the book learns from)...
    short_spec = write_spec(tmp_path, """
        experiment: short
        queue: research
        stages:
          - {name: eval, run: "testjobs:sleepy", params: {seconds: 0.2}, sweep: {grid: {i: [1, 2, 3]}},
             resources: {cpu: 1}}
    """)
    warm = drive(sched, store, submit_spec(short_spec, settings).experiment_id, timeout=60)
    assert all(j.state is JobState.SUCCEEDED for j in warm)
    # ...and a checkpointing job holding every CPU for far longer than anything seen so far
    long_run = _run_long_checkpointing_job(tmp_path, sched, store, settings, steps=30)
    # When another short evaluation is submitted
    again = submit_spec(short_spec, settings)
    done = drive(sched, store, again.experiment_id, timeout=60)
    assert all(j.state is JobState.SUCCEEDED for j in done)
    (long_job,) = drive(sched, store, long_run.experiment_id, timeout=90)
    # Then the long job, expected to run as long again, yielded and resumed from its checkpoint
    first, second = store.attempts(long_job.id)
    assert first.state is AttemptState.PREEMPTED and "more; yields to job" in (first.error or "")
    assert "runs the shortest expected first (preempted 1 of at most 1 times)" in first.error
    assert second.state is AttemptState.SUCCEEDED and second.metrics["resumed_from"] >= 30
    assert second.dispatched_at >= min(store.attempts(j.id)[0].dispatched_at for j in done)
    assert_resources_released()
    store.close()


def test_fair_share_starts_a_light_users_jobs_ahead_of_a_heavy_users_backlog(tmp_path, ray_backend):
    sched, store, settings = _scheduler(tmp_path / "home", ray_backend, [{"name": "default"}])
    # Given a heavy user whose 12-job sweep fills the 4 CPUs with a backlog behind it
    heavy_spec = write_spec(tmp_path, """
        experiment: heavy
        stages:
          - {name: s, run: "testjobs:sleepy", params: {seconds: 1.0}, sweep: {grid: {i: [1,2,3,4,5,6,7,8,9,10,11,12]}},
             resources: {cpu: 1}}
    """)
    heavy = submit(heavy_spec, [], settings, user="heavy")
    drive(sched, store, heavy.experiment_id, until=lambda jobs: sum(j.state is JobState.RUNNING for j in jobs) == 4)
    # When a light user submits two jobs after it
    light_spec = write_spec(tmp_path, """
        experiment: light
        stages:
          - {name: s, run: "testjobs:sleepy", params: {seconds: 1.0}, sweep: {grid: {i: [1, 2]}}, resources: {cpu: 1}}
    """, name="light.yaml")
    light = submit(light_spec, [], settings, user="light")
    drive(sched, store, light.experiment_id, timeout=90)
    drive(sched, store, heavy.experiment_id, timeout=90)
    # Then both light jobs started before the heavy user's backlog (jobs 5-12) drained:
    # first come first served would have started them last.
    starts = sorted((store.attempts(j.id)[0].dispatched_at, j.user)
                    for j in store.jobs_of_experiment(heavy.experiment_id) + store.jobs_of_experiment(light.experiment_id))
    order = [user for _, user in starts]
    assert order.index("light") < 6 and order[:4] == ["heavy"] * 4, order
    assert sum(1 for u in order[4:8] if u == "light") == 2, order
    assert_resources_released()
    store.close()
