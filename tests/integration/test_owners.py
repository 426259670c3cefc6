"""The owners of attempts (workers.owner) on real local Ray: a scheduler of a
newer labq adopts what an older owner runs and lets it finish there, starting
its own owner beside it; an owner refuses the launches of a scheduler older
than the one that adopted it, so a retry never runs beside a late original."""

from __future__ import annotations

import time

import pytest

from helpers import drive, make_scheduler, submit_spec, write_spec
from scheduler import ray_backend as rb
from scheduler.records import EndCause
from scheduler.states import AttemptState, JobState

pytestmark = pytest.mark.ray


def _owner_names(backend: rb.RayBackend) -> set[str]:
    return {name for name, _ in backend.owners()}


def test_a_newer_labq_lets_an_older_owner_finish_its_attempts_and_starts_its_own(tmp_path, ray_backend,
                                                                                monkeypatch):
    spec = write_spec(tmp_path, """
        experiment: upgrade
        stages:
          - {name: s, run: "testjobs:sleepy", params: {seconds: 3}, resources: {cpu: 0.5}}
    """)
    home = tmp_path / "home"
    # Given a job launched by a scheduler of an older labq (its owner is named for that version)
    monkeypatch.setattr(rb, "OWNER_VERSION", "0.0.1-p1")
    old_backend = rb.RayBackend(home=home)
    scheduler, store, settings = make_scheduler(home, old_backend)
    sub = submit_spec(spec, settings)
    scheduler.tick(time.time())
    (old_run,) = scheduler.running.values()
    old_names = _owner_names(old_backend)
    assert len(old_names) == 1 and next(iter(old_names)).endswith("-0.0.1-p1")
    # When that scheduler is gone and one of this labq starts (and a new job comes)
    monkeypatch.setattr(rb, "OWNER_VERSION", "9.9.9-p1")
    new_backend = rb.RayBackend(home=home)
    scheduler, store, settings = make_scheduler(home, new_backend)
    assert scheduler.reconcile(time.time()).adopted == 1
    later = submit_spec(spec, settings)
    jobs = drive(scheduler, store, later.experiment_id)
    # Then the new job ran under the new version's owner, beside the old one
    assert {n.rsplit("-", 2)[-2] for n in _owner_names(new_backend)} >= {"9.9.9"}
    drive(scheduler, store, sub.experiment_id)
    # And the old job finished under its owner: its one attempt succeeded
    (attempt,) = store.attempts(old_run.job.id)
    assert attempt.id == old_run.attempt.id and attempt.state is AttemptState.SUCCEEDED
    assert jobs[0].state is JobState.SUCCEEDED
    # and the older owner, holding nothing more, was ended
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(n.endswith("-0.0.1-p1") for n in _owner_names(new_backend)):
        time.sleep(0.2)
    assert not any(n.endswith("-0.0.1-p1") for n in _owner_names(new_backend))
    new_backend.end_idle_owners()


def test_an_owner_refuses_a_launch_from_a_scheduler_older_than_the_one_that_adopted_it(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: fence
        stages:
          - {name: s, run: "testjobs:sleepy", params: {seconds: 0.1}, resources: {cpu: 0.5}}
    """)
    home = tmp_path / "home"
    old_backend = rb.RayBackend(home=home)
    old_scheduler, store, settings = make_scheduler(home, old_backend)
    sub = submit_spec(spec, settings)
    # Given a newer scheduler life that has adopted the node's owner
    new_backend = rb.RayBackend(home=home)
    new_backend._owner(new_backend._local())  # the owner exists before the adoption
    new_backend.adopt()
    assert new_backend.epoch > old_backend.epoch
    # When the old one (as if its message arrived late) launches the job
    old_scheduler.tick(time.time())
    (job,) = drive(old_scheduler, store, sub.experiment_id, until=lambda jobs: len(store.attempts(jobs[0].id)) >= 1
                   and store.attempts(jobs[0].id)[0].state is not AttemptState.RUNNING)
    # Then the owner refused it: the attempt never started, and is not charged
    first = store.attempts(job.id)[0]
    assert first.state is AttemptState.LOST and "refused" in first.error
    from workers.paths import RunPaths
    from pathlib import Path

    assert not RunPaths(Path(first.run_dir)).root.exists()
    assert store.job(job.id).free_retries >= 1 and store.job(job.id).state is not JobState.FAILED
    new_backend.end_idle_owners()


def test_ray_errors_through_the_owner_keep_their_meaning():
    from ray import exceptions as rex

    crashed = rex.RayTaskError("run", "tb", rex.WorkerCrashedError())
    assert rb._classify(crashed).cause is EndCause.WORKER_DIED
    cancelled = rex.RayTaskError("run", "tb", rex.TaskCancelledError())
    assert rb._classify(cancelled).state is AttemptState.CANCELLED
    inner = rex.RayTaskError("run_attempt", "tb", OSError("No space left on device"))
    end = rb._classify(rex.RayTaskError("run", "tb", inner))
    assert end.cause is EndCause.WORKER_ERROR and "No space left" in end.error
    assert rb._classify(rex.ActorDiedError()).cause is EndCause.OWNER_DIED


def test_early_stopping_reads_curves_and_writes_verdicts_through_another_node_s_owner(tmp_path, ray_backend,
                                                                                      monkeypatch):
    """On a cluster without a shared disk a running attempt's curve is only on
    its node: the backend asks that node's owner to read it and to write the
    verdicts.  Here the one node is made to look like another node (the backend
    is told it runs elsewhere), and this process's own node_ops refuse, so what
    comes back was read, and written, by the owner's process."""
    run_dir = tmp_path / "runs" / "1" / "attempt-1"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_bytes(b'{"step": 1, "acc": 0.5}\n{"step": 2, "acc": 0.6}\n{"st')
    backend = rb.RayBackend(home=tmp_path / "home")
    node = ray_backend.local_node_id()
    backend._here = "not-this-node"

    def refuse(*_):
        raise AssertionError("read in the scheduler's process, not by the node's owner")

    monkeypatch.setattr(rb.node_ops, "curves_since", refuse)
    monkeypatch.setattr(rb.node_ops, "signal_attempts", refuse)
    ((used, data),) = backend.curves_since(node, [(str(run_dir), 0)])
    assert data == b'{"step": 1, "acc": 0.5}\n{"step": 2, "acc": 0.6}\n' and used == len(data)
    ((_, rest),) = backend.curves_since(node, [(str(run_dir), 24)])
    assert rest == b'{"step": 2, "acc": 0.6}\n'
    backend.signal_attempts(node, [(str(run_dir), "rung-cleared", "2"), (str(run_dir), "stop-requested", "pruned")])
    assert (run_dir / "rung-cleared").read_text() == "2" and (run_dir / "stop-requested").read_text() == "pruned"
