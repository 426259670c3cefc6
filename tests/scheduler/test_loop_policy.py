"""The live loop around the policy, tick by tick with plain data: fair-share usage
follows starts and ends even while nothing waits, gpu_memory requests wait for
the cards' sizes instead of being judged unschedulable, and one preemption
at a time.  A real Scheduler and SQLite store; FakeBackend stands in for Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.records import EndCause
from scheduler.fake_backend import FakeBackend, make_nodes
from scheduler import accounting
from scheduler.config import Queue, Settings
from scheduler.loop import Scheduler
from scheduler.states import AttemptState, JobState
from scheduler.store import Store
from workers.paths import RunPaths

from test_store import NOW, _submit_yaml


def _spec(tmp_path: Path, name: str, resources: str, n: int = 1, queue: str = "default") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
experiment: {name}
queue: {queue}
stages:
  - name: train
    command: "true"
    sweep: {{grid: {{seed: {list(range(n))}}}}}
    resources: {resources}
""")
    return path


def _done(run) -> dict:
    return {"outcome": "succeeded", "metrics": {}, "artifacts": [], "exit_code": 0}


def test_usage_stops_growing_when_jobs_end_while_nothing_waits(tmp_path):
    node = make_nodes(1, cpu=16, gpu=0)[0]
    store, backend = Store(tmp_path / "home"), FakeBackend([node])
    sched = Scheduler(store, backend, Settings(home=str(tmp_path / "home")))
    _submit_yaml(store, _spec(tmp_path, "a", "{cpu: 4}", n=4))
    sched.tick(NOW)
    assert len(sched.running) == 4
    for run in list(sched.running.values()):
        backend.end(run.handle, AttemptState.SUCCEEDED, _done(run))
    sched.tick(NOW + 60)  # the four end a minute in; the queue is empty now
    assert not sched.running
    later = NOW + 10 * 3600
    _submit_yaml(store, _spec(tmp_path, "b", "{cpu: 1}"))
    sched.tick(later)
    # The loop's decayed usage equals what the store's history says: 1 minute, not 10 hours
    truth = accounting.decayed_usage(store.held_since(0), later, sched._usage.half_life, sched._usage.capacity.dominant)
    assert sched._usage.snapshot()["default"] == pytest.approx(truth["default"], rel=0.01)
    store.close()


def test_a_gpu_memory_request_waits_for_the_cards_sizes_instead_of_failing(tmp_path):
    node = make_nodes(1, cpu=4, gpu=2)[0]
    store, backend = Store(tmp_path / "home"), FakeBackend([node])
    backend.gpu_readings[node.node_id] = [{"index": i, "memory_total": 80 * 2**30, "pids": []} for i in range(2)]
    sched = Scheduler(store, backend, Settings(home=str(tmp_path / "home")))
    _, (job_id,), _ = _submit_yaml(store, _spec(tmp_path, "gm", "{cpu: 1, gpu_memory: 8GiB}"))
    sched.tick(NOW)  # no NVML reading has come back yet
    assert store.job(job_id).state is JobState.PENDING
    for t in (1, 2, 3):  # the reading is started, picked up, and the job placed at 8/80 of a card
        sched.tick(NOW + t)
    (run,) = sched.running.values()
    assert run.attempt.gpu_share == pytest.approx(0.1)
    store.close()


def test_one_preemption_at_a_time_while_the_first_victims_share_drains(tmp_path):
    nodes = make_nodes(2, cpu=4, gpu=1)
    store, backend = Store(tmp_path / "home"), FakeBackend(nodes)
    for n in nodes:
        backend.gpu_readings[n.node_id] = [{"index": 0, "memory_total": 80 * 2**30, "pids": []}]
    settings = Settings(home=str(tmp_path / "home"),
                        queues=[Queue(name="low"), Queue(name="high", guarantee={"gpu": 1}, preempt=True)])
    sched = Scheduler(store, backend, settings)
    _submit_yaml(store, _spec(tmp_path, "lo", "{cpu: 1, gpu: 1}", n=2, queue="low"))
    sched.tick(NOW)
    sched.tick(NOW + 3)
    assert len(sched.running) == 2
    _submit_yaml(store, _spec(tmp_path, "hi", "{cpu: 1, gpu: 1}", queue="high"))
    sched.tick(NOW + 6)
    (victim,) = [r for r in sched.running.values() if (r.stop and r.stop.state) is AttemptState.PREEMPTED]
    # The victim ends, but NVML still lists its process for a while
    RunPaths(Path(victim.attempt.run_dir)).create()
    RunPaths(Path(victim.attempt.run_dir)).write_gpu_pids({4242})
    backend.gpu_readings[victim.attempt.node_id][0]["pids"] = [4242]
    backend.end(victim.handle, AttemptState.CANCELLED)
    for t in (6.3, 6.6, 6.9):
        sched.tick(NOW + t)
    # No second job was stopped for the same guarantee
    assert not [r for r in sched.running.values() if r.stop is not None]
    assert sched.gpus.draining
    store.close()


def test_a_job_lost_with_its_node_is_not_placed_there_again_before_ray_reports_it_dead(tmp_path):
    nodes = make_nodes(2, cpu=2, gpu=0)
    store, backend = Store(tmp_path / "home"), FakeBackend(nodes)
    sched = Scheduler(store, backend, Settings(home=str(tmp_path / "home")))
    _, job_ids, _ = _submit_yaml(store, _spec(tmp_path, "two", "{cpu: 2}", n=2))
    sched.tick(NOW)
    assert {r.attempt.node_id for r in sched.running.values()} == {n.node_id for n in nodes}
    victim = next(r for r in sched.running.values() if r.attempt.node_id == nodes[1].node_id)
    # Its node dies, but Ray still lists it alive (health checks have not failed yet),
    # and the node view was refreshed a moment ago
    backend.end(victim.handle, AttemptState.LOST, error="NodeDiedError: Task failed because the node it was "
                                                     "running on is dead or unavailable.", cause=EndCause.NODE_DIED)
    sched.tick(NOW + 0.1)
    sched.tick(NOW + 0.2)
    # Then the requeued job waits for the other node instead of being lost there a second time
    assert store.job(victim.job.id).state is JobState.PENDING
    assert all(r.attempt.node_id == nodes[0].node_id for r in sched.running.values())
    assert [a.state for a in store.attempts(victim.job.id)] == [AttemptState.LOST]
    store.close()


def test_the_loop_writes_start_estimates_the_cli_reads_instead_of_replaying(tmp_path):
    node = make_nodes(1, cpu=2, gpu=0)[0]
    store, backend = Store(tmp_path / "home"), FakeBackend([node])
    sched = Scheduler(store, backend, Settings(home=str(tmp_path / "home")))
    spec = _spec(tmp_path, "est", "{cpu: 2}", n=3)
    spec.write_text(spec.read_text().replace("command:", "timeout: 60s\n    command:"))
    _, ids, _ = _submit_yaml(store, spec)
    sched.tick(NOW)
    # One runs; the other two start when the one before reaches its time limit
    at, starts = store.estimates(ids)
    assert at == NOW and starts == {ids[1]: NOW + 60, ids[2]: NOW + 120}
    # Not again before ESTIMATE_SECONDS; then the queue is empty, so none are left
    for run in list(sched.running.values()):
        backend.end(run.handle, AttemptState.CANCELLED)
    store.cancel(ids, NOW + 1)
    sched.tick(NOW + 1)
    assert store.estimates(ids)[0] == NOW
    sched.tick(NOW + 11)
    assert store.estimates(ids) == (NOW + 11, {})
    store.close()


def test_the_loop_predicts_durations_from_finished_runs_and_the_queue_shows_them(tmp_path):
    """Three jobs of a stage end after a minute each: the loop's outlook for the
    rest and the running one says ~60 s from those runs, with their tier in a
    tiered queue; a new stage's job is predicted from its user's runs of that
    shape; `labq queue` shows them."""
    from scheduler import api, render

    node = make_nodes(1, cpu=2, gpu=0)[0]
    home = tmp_path / "home"
    store, backend = Store(home), FakeBackend([node])
    settings = Settings(home=str(home), queues=[Queue(name="default", tiers=[3600, 7200])])
    sched = Scheduler(store, backend, settings)
    _, slow, _ = _submit_yaml(store, _spec(tmp_path, "slow", "{cpu: 2}", n=6))
    now = NOW
    for _ in range(3):
        sched.tick(now)
        (run,) = sched.running.values()
        now += 60
        backend.end(run.handle, AttemptState.SUCCEEDED, _done(run))
    sched.tick(now)  # the fourth starts
    assert len(sched.running) == 1
    _, (quick,), _ = _submit_yaml(store, _spec(tmp_path, "quick", "{cpu: 2}"), now=now)
    sched._durations_at = -float("inf")  # re-read the history now, not in 30 s
    sched._estimated_at = None
    sched._dirty = True  # (a submit from another process changes the data version the loop watches)
    sched.tick(now + 1)
    outlooks = store.outlooks(slow[3:] + [quick])
    assert outlooks[slow[5]].predicted == pytest.approx(60)
    assert outlooks[slow[5]].basis == "median of 3 recent run(s) of the same experiment stage, user and shape"
    assert (outlooks[slow[5]].tier, outlooks[slow[5]].tiers) == (0, 3)
    assert outlooks[quick].basis.endswith("user and shape")  # no runs of its own stage yet
    assert outlooks[slow[3]].predicted == pytest.approx(60)  # the running one too
    # ... which has run 1 s of the 60 its stage's runs took: 59 s left; a pending job has none
    assert outlooks[slow[3]].remaining == pytest.approx(59) and outlooks[slow[5]].remaining is None
    view = api.queue(store, api.EstimateSettings(3600.0, settings.queue_configs()), now=now + 2)
    rows = {r["id"]: r for r in view.to_json()}
    assert rows[slow[5]]["predicted_duration"] == pytest.approx(60) and rows[slow[5]]["tier"] == 0
    # read 1 s after the scheduler wrote it: 58 s left now
    assert rows[slow[3]]["expected_left"] == pytest.approx(58) and rows[slow[5]]["expected_left"] is None
    with render.console.capture() as captured:
        render.console.print(render.queue_table(view.jobs, view.now, view.total or 0, outlook=view.starts.outlook))
    assert captured.get().count("~1m00s t0/2") == 4 and "~1m00s t0/2, 58.0s left" in captured.get()
    assert render.outlook_text(view.starts.outlook[slow[3]], long=True).endswith("tier 0 of 2; about 58.0s left")
    # Past every run of its kind (100 s against 60), it is expected to run about as long again
    sched._estimated_at = None
    sched.tick(now + 100)
    assert store.outlooks([slow[3]])[slow[3]].remaining == pytest.approx(100)
    store.close()
