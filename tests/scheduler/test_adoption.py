"""A scheduler that starts after another stopped or died adopts the attempts
the nodes' owners still hold (FakeBackend outlives its schedulers as the owners
outlive theirs): they go on holding their share, end once, and can still be
cancelled or time out; only attempts nothing holds are lost.  A real Scheduler
and SQLite store, tick by tick with plain data."""

from __future__ import annotations

from pathlib import Path

from scheduler.config import Settings
from scheduler.fake_backend import FakeBackend, make_nodes
from scheduler.loop import Scheduler
from scheduler.records import EndCause
from scheduler.states import AttemptState, JobState
from scheduler.store import Store

from test_store import NOW, _submit_yaml


def _spec(tmp_path: Path, name: str, resources: str, n: int = 1, timeout: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
experiment: {name}
stages:
  - name: train
    command: "true"
    sweep: {{grid: {{seed: {list(range(n))}}}}}
    resources: {resources}
    {f"timeout: {timeout}" if timeout else ""}
""")
    return path


def _done() -> dict:
    return {"outcome": "succeeded", "metrics": {}, "artifacts": [], "exit_code": 0}


def _restart(store: Store, backend: FakeBackend, home: Path) -> Scheduler:
    """A new scheduler life over the same store and the same (surviving) backend."""
    return Scheduler(store, backend, Settings(home=str(home), scheduler={"pack_seconds": 0}))


def _start(tmp_path: Path, resources: str, n: int, node_cpu: float = 4, timeout: str = ""):
    home = tmp_path / "home"
    store, backend = Store(home), FakeBackend(make_nodes(1, cpu=node_cpu, gpu=2))
    first = _restart(store, backend, home)
    _, job_ids, _ = _submit_yaml(store, _spec(tmp_path, "a", resources, n=n, timeout=timeout))
    first.tick(NOW)
    return home, store, backend, first, job_ids


def test_a_restarted_scheduler_adopts_what_runs_and_records_each_end_once(tmp_path):
    home, store, backend, first, job_ids = _start(tmp_path, "{cpu: 1, gpu: 1}", n=3)
    assert len(first.running) == 2  # the third waits for a GPU
    before = {r.attempt.id for r in first.running.values()}
    gpus = sorted(r.gpu_indices for r in first.running.values())
    # When the scheduler dies (nothing of it is called again) and a new one starts
    second = _restart(store, backend, home)
    found = second.reconcile(NOW + 5)
    # Then both running attempts are adopted, none lost, and they still hold their CPUs
    assert (found.adopted, found.lost) == (2, 0)
    assert set(second.running) == before
    assert sorted(r.gpu_indices for r in second.running.values()) == gpus == [(0,), (1,)]
    second.tick(NOW + 6)
    assert store.job(job_ids[2]).state is JobState.PENDING  # no GPU was given away twice
    # When they end, each is recorded once and the third job starts
    for run in list(second.running.values()):
        backend.end(run.handle, AttemptState.SUCCEEDED, _done())
    second.tick(NOW + 10)
    assert [store.job(j).state for j in job_ids[:2]] == [JobState.SUCCEEDED] * 2
    assert all(len(store.attempts(j)) == 1 for j in job_ids[:2])
    assert store.job(job_ids[2]).state is JobState.RUNNING
    # and the recorded ends are let go, so a third life would not adopt them again
    assert not any(h.key in {a.run_dir for j in job_ids[:2] for a in store.attempts(j)} for h in backend.held.values())


def test_an_attempt_no_owner_holds_is_lost_and_its_process_group_is_ended_first(tmp_path):
    home, store, backend, first, job_ids = _start(tmp_path, "{cpu: 1}", n=2)
    (lost_run, kept_run) = sorted(first.running.values(), key=lambda r: r.job.id)
    backend.held.pop(lost_run.handle)  # its owner died with it
    second = _restart(store, backend, home)
    found = second.reconcile(NOW + 5)
    assert (found.adopted, found.lost) == (1, 1)
    first_attempt = store.attempts(lost_run.job.id)[0]
    assert first_attempt.state is AttemptState.LOST and "no labq owner held it" in first_attempt.error
    assert store.job(lost_run.job.id).state is JobState.PENDING  # requeued, not charged
    assert lost_run.attempt.run_dir in backend.groups_ended
    assert kept_run.attempt.run_dir not in backend.groups_ended
    assert set(second.running) == {kept_run.attempt.id}


def test_cancel_and_timeout_still_reach_an_adopted_attempt(tmp_path):
    home, store, backend, first, job_ids = _start(tmp_path, "{cpu: 1}", n=2, timeout="30s")
    second = _restart(store, backend, home)
    second.reconcile(NOW + 1)
    runs = sorted(second.running.values(), key=lambda r: r.job.id)
    store.cancel([runs[0].job.id], NOW + 1)
    second.tick(NOW + 2)
    assert (runs[0].handle, False) in backend.cancels
    second.tick(NOW + 40)  # past the 30 s timeout, counted from the first life's dispatch
    assert (runs[1].handle, False) in backend.cancels
    backend.end(runs[0].handle, AttemptState.CANCELLED, cause=EndCause.CANCELLED)
    backend.end(runs[1].handle, AttemptState.CANCELLED, cause=EndCause.CANCELLED)
    second.tick(NOW + 41)
    assert store.job(runs[0].job.id).state is JobState.CANCELLED
    assert store.attempts(runs[1].job.id)[0].state is AttemptState.TIMED_OUT


def test_a_held_task_whose_end_is_already_recorded_is_stopped_and_let_go(tmp_path):
    home, store, backend, first, job_ids = _start(tmp_path, "{cpu: 1}", n=1)
    (run,) = first.running.values()
    # The end was recorded, but the scheduler died before telling the owner to forget it
    backend.end(run.handle, AttemptState.SUCCEEDED, _done())
    first.attempts.take([run.handle])  # as _record_ends would, without the release
    store.finish_attempt(first.attempts.ends([run], NOW + 1)[0][1], NOW + 1)
    second = _restart(store, backend, home)
    found = second.reconcile(NOW + 2)
    assert (found.adopted, found.lost) == (0, 0)
    assert run.handle in backend.released
    assert store.job(run.job.id).state is JobState.SUCCEEDED and len(store.attempts(run.job.id)) == 1


def test_draining_starts_nothing_new(tmp_path):
    home, store, backend, first, job_ids = _start(tmp_path, "{cpu: 2}", n=3)
    first.draining = True
    for run in list(first.running.values()):
        backend.end(run.handle, AttemptState.SUCCEEDED, _done())
    first.tick(NOW + 5)
    assert not first.running and store.job(job_ids[2]).state is JobState.PENDING
