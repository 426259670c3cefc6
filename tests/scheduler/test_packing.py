"""Packing short jobs several to a Ray task (scheduler.packing): the pure sizing
and follower choice with plain data, then the live loop tick by tick (a real
Scheduler and SQLite store; FakeBackend stands in for Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.fake_backend import FakeBackend, make_nodes
from scheduler import packing
from scheduler.config import SchedulerSettings, Settings
from scheduler.loop import Scheduler
from scheduler.policy import Demand, PendingIndex
from scheduler.states import AttemptState, JobState
from scheduler.store import Store
from workers.paths import RunPaths

from test_store import NOW, _submit_yaml

# ---------------------------------------------------------------- sizing


def test_a_stage_runs_alone_until_enough_of_its_jobs_were_seen_to_end():
    short = packing.ShortJobs(budget=0.25)
    assert short.pack_size("s") == 1 and not short.any_packable()
    for _ in range(packing.SAMPLES - 1):
        short.observe("s", 0.01)
    assert short.pack_size("s") == 1
    short.observe("s", 0.01)
    assert short.any_packable()
    assert short.pack_size("s") == 25  # 0.25 s of work at 0.01 s each


def test_the_mean_recent_duration_sizes_the_pack_and_a_stage_with_a_long_job_runs_alone():
    short = packing.ShortJobs(budget=0.25)
    for seconds in (0.001, 0.001, 0.1):
        short.observe("s", seconds)
    assert short.pack_size("s") == 5  # 0.25 s at the mean of 34 ms is 7; twice it at the longest, 100 ms, is 5
    short.observe("s", 0.2)  # one job alone took most of the budget: not packed while it is recent
    assert short.pack_size("s") == 1
    for _ in range(3):
        short.observe("noop", 0.0)
    assert short.pack_size("noop") == packing.MAX_PACK  # no-ops: capped, not infinite


def test_a_short_time_limit_or_a_zero_budget_turns_packing_off():
    short = packing.ShortJobs(budget=0.25)
    for _ in range(3):
        short.observe("s", 0.001)
    assert short.pack_size("s", time_limit=1.0) == 1  # its clock starts at the pack's launch
    assert short.pack_size("s", time_limit=packing.TIMEOUT_FACTOR * 0.25) > 1
    off = packing.ShortJobs(budget=0)
    for _ in range(3):
        off.observe("s", 0.001)
    assert off.pack_size("s") == 1 and not off.any_packable()


def test_followers_come_next_in_the_class_and_leaders_of_a_class_share_them():
    index = PendingIndex([Demand(job_id=i, cpu=0.1, seq=i) for i in range(1, 11)]
                         + [Demand(job_id=100 + i, cpu=2.0, seq=100 + i) for i in range(3)])
    taken = {1, 2, 100}  # placed this pass
    picked = packing.pick_followers([(1, 3), (2, 3), (100, 5)], index.peers, taken)
    assert picked == {1: [3, 4], 2: [5, 6], 100: [101, 102]}
    assert taken >= {3, 4, 5, 6, 101, 102}
    assert packing.pick_followers([(7, 1)], index.peers, set()) == {}  # size 1: alone


# ---------------------------------------------------------------- the loop


def _spec(tmp_path: Path, name: str, n: int, resources: str = "{cpu: 1}", stage: str = "train",
          extra: str = "") -> Path:
    path = tmp_path / f"{name}-{stage}.yaml"
    path.write_text(f"""
experiment: {name}
stages:
  - name: {stage}
    command: "true"
    sweep: {{grid: {{seed: {list(range(n))}}}}}
    resources: {resources}
{extra}""")
    return path


def _result(start: float, seconds: float = 0.001) -> dict:
    return {"outcome": "succeeded", "metrics": {"x": 1}, "artifacts": [], "exit_code": 0, "started_at": start,
            "ended_at": start + seconds}


def _started(run, result: dict | None = None) -> None:
    """What the worker leaves for a packed job: its run dir, and result.json once it ended."""
    paths = RunPaths(Path(run.attempt.run_dir))
    paths.create()
    if result is not None:
        paths.write_result(result)


def _scheduler(tmp_path: Path, cpu: float = 2, pack_seconds: float = 0.25):
    store = Store(tmp_path / "home")
    backend = FakeBackend(make_nodes(1, cpu=cpu, gpu=2))
    settings = Settings(home=str(tmp_path / "home"), scheduler=SchedulerSettings(pack_seconds=pack_seconds))
    return store, backend, Scheduler(store, backend, settings)


def _packed(tmp_path, n: int, extra: str = "", cpu: float = 1):
    """A scheduler whose one slot runs a pack of the last ``n - 3`` of ``n`` jobs
    (the first three ran alone and were seen to end short)."""
    store, backend, sched = _scheduler(tmp_path, cpu=cpu)
    _submit_yaml(store, _spec(tmp_path, "s", n, extra=extra))
    for t in range(3):
        sched.tick(NOW + t)
        (run,) = sched.running.values()
        backend.end(run.handle, AttemptState.SUCCEEDED, _result(NOW + t))
    sched.tick(NOW + 3)
    ((ref, members),) = _packs(sched).items()
    return store, backend, sched, ref, members


def _learn(store, backend, sched, tmp_path, name="warm", n=3) -> None:
    """Run ``n`` jobs of ``name``/train alone and end them as short."""
    _submit_yaml(store, _spec(tmp_path, name, n))
    sched.tick(NOW)
    assert len(sched.running) == n and not backend.packs
    for run in list(sched.running.values()):
        backend.end(run.handle, AttemptState.SUCCEEDED, _result(NOW))
    sched.tick(NOW + 1)
    assert not sched.running


def _packs(sched) -> dict:
    """Ray handle -> the Running of each job it runs, for the packs running now."""
    out: dict = {}
    for run in sched.running.values():
        if run.pack:
            out.setdefault(run.handle, []).append(run)
    return out


def test_a_backlog_of_short_jobs_is_packed_one_share_per_pack_and_each_job_recorded_alone(tmp_path):
    store, backend, sched = _scheduler(tmp_path, cpu=2)  # two slots of cpu 1
    _, big, _ = _submit_yaml(store, _spec(tmp_path, "big", 24))
    _, other, _ = _submit_yaml(store, _spec(tmp_path, "other", 4))  # same class, another experiment
    for t in range(2):  # the stage is new: its first jobs run alone until three were seen to end
        sched.tick(NOW + t)
        assert len(sched.running) == 2 and not backend.packs
        for run in list(sched.running.values()):
            backend.end(run.handle, AttemptState.SUCCEEDED, _result(NOW + t))
    sched.tick(NOW + 2)
    packs = _packs(sched)
    assert len(packs) == 2, "a backlog of a stage measured short was not packed"
    assert sum(r.holds for r in sched.running.values()) == 2  # one share per pack, however many jobs
    assert sched.free_capacity()[0].cpu_free == pytest.approx(0.0)
    for members in packs.values():
        assert {r.job.id for r in members} <= set(big) and sum(r.holds for r in members) == 1
        assert [r.job.id for r in members] == sorted(r.job.id for r in members)  # submission order
        assert 2 < len(members) <= packing.MAX_PACK
    assert all(store.job(j).state is JobState.PENDING for j in other)
    # Each job ends with its own result; a follower is booked from its own start.
    for ref, members in packs.items():
        backend.end(ref, AttemptState.SUCCEEDED, [_result(NOW + 2 + 0.01 * i) for i in range(len(members))])
    sched.tick(NOW + 3)
    lead, follower = next(iter(packs.values()))[:2]
    assert store.attempts(follower.job.id)[0].dispatched_at == pytest.approx(NOW + 2.01, abs=1e-6)
    assert store.attempts(lead.job.id)[0].dispatched_at == pytest.approx(NOW + 2, abs=1e-6)
    ended = [j for members in packs.values() for j in (r.job.id for r in members)]
    assert all(store.job(j).state is JobState.SUCCEEDED and len(store.attempts(j)) == 1 for j in ended)
    store.close()


def test_a_pack_killed_mid_way_keeps_what_finished_charges_the_job_running_and_requeues_the_rest(tmp_path):
    store, backend, sched, ref, members = _packed(tmp_path, 8, extra="    retries: 0\n")
    assert len(members) == 5  # the rest of the backlog, in submission order
    assert [r.job.id for r in members] == sorted(r.job.id for r in members)
    done, running, *never = members
    _started(done, _result(NOW + 3))
    _started(running)  # started, no result: the one the worker died in
    backend.end(ref, AttemptState.LOST, None, "WorkerCrashedError: the worker died")
    sched.tick(NOW + 4)
    assert store.job(done.job.id).state is JobState.SUCCEEDED
    assert store.job(running.job.id).state is JobState.FAILED  # its own loss, charged (retries: 0)
    for run in never:
        job = store.job(run.job.id)
        (attempt,) = store.attempts(job.id)[:1]
        assert attempt.state is AttemptState.LOST and "not started" in attempt.error
        assert job.state in (JobState.PENDING, JobState.RUNNING)  # requeued without being charged
    store.close()


@pytest.mark.parametrize("stop", [AttemptState.PAUSED, AttemptState.PRUNED])
def test_a_packed_job_early_stopping_paused_or_pruned_ends_so_not_failed(tmp_path, stop):
    """Early stopping stops one job of a pack through its run dir (its report()
    raises StopTrial, which its worker records as a failure); the pack runs on.
    That job ends paused (waiting for promotion, uncharged) or pruned, the rest
    as they ended."""
    store, backend, sched, ref, members = _packed(tmp_path, 7, extra="    retries: 0\n")
    first, stopped, *rest = members
    sched._ask_stop(stopped, stop, NOW + 3.5, detail=f"{stop.value}: rung 1 of 2")
    raised = {**_result(NOW + 3.6), "outcome": "failed", "error": "StopTrial: labq paused this job"}
    _started(stopped, raised)  # it stopped at a report(): its result is in its run dir
    sched.tick(NOW + 3.5 + 11)  # past the wait for a job that does not stop by itself
    assert not backend.cancels, "an early stop of a job that stopped must not stop its pack"
    backend.end(ref, AttemptState.SUCCEEDED,
                [_result(NOW + 3.5), raised] + [_result(NOW + 3.7 + 0.01 * i) for i in range(len(rest))])
    sched.tick(NOW + 15)
    assert store.job(stopped.job.id).state is JobState(stop.value)
    (attempt,) = store.attempts(stopped.job.id)
    assert attempt.state is stop and attempt.error == f"{stop.value}: rung 1 of 2"
    assert all(store.job(r.job.id).state is JobState.SUCCEEDED for r in [first, *rest])
    store.close()


def test_a_packed_job_that_failed_before_early_stopping_judged_it_stays_failed(tmp_path):
    """The scheduler learns of a packed job's end when its pack returns: a stop
    asked after the job had already failed does not rename its failure."""
    store, backend, sched, ref, members = _packed(tmp_path, 7, extra="    retries: 0\n")
    first, failed, *rest = members
    sched._ask_stop(failed, AttemptState.PRUNED, NOW + 3.5, detail="pruned: rung 1 of 2")
    boom = {**_result(NOW + 3.1), "outcome": "failed", "error": "ValueError: boom"}
    backend.end(ref, AttemptState.SUCCEEDED,
                [_result(NOW + 3.0), boom] + [_result(NOW + 3.7 + 0.01 * i) for i in range(len(rest))])
    sched.tick(NOW + 4)
    assert store.job(failed.job.id).state is JobState.FAILED
    assert store.attempts(failed.job.id)[0].error == "ValueError: boom"
    store.close()


def test_cancelling_one_packed_job_stops_its_pack_and_requeues_the_others(tmp_path):
    store, backend, sched, ref, members = _packed(tmp_path, 7)
    running, target, *rest = members
    _started(running)
    store.cancel([target.job.id], NOW + 3.5)
    sched.tick(NOW + 4)  # asks the pack to stop
    assert (target.stop and target.stop.state) is AttemptState.CANCELLED and running.stop is None
    backend.end(ref, AttemptState.CANCELLED, None, "cancelled")
    sched.tick(NOW + 5)
    assert store.job(target.job.id).state is JobState.CANCELLED
    interrupted = store.attempts(running.job.id)[0]
    assert interrupted.state is AttemptState.LOST and "interrupted" in interrupted.error
    assert store.job(running.job.id).state in (JobState.PENDING, JobState.RUNNING)
    for run in rest:
        assert store.attempts(run.job.id)[0].state is AttemptState.LOST
        assert store.job(run.job.id).state in (JobState.PENDING, JobState.RUNNING)
    store.close()


def test_gpu_jobs_and_a_zero_budget_are_never_packed(tmp_path):
    store, backend, sched = _scheduler(tmp_path, cpu=8)
    _submit_yaml(store, _spec(tmp_path, "g", 12, resources="{cpu: 1, gpu: 0.5}"))
    for t in range(4):
        sched.tick(NOW + t)
        for run in list(sched.running.values()):
            backend.end(run.handle, AttemptState.SUCCEEDED, _result(NOW + t))
    assert not backend.packs and sched._short.any_packable()
    store.close()

    off_store, off_backend, off = _scheduler(tmp_path / "off", cpu=1, pack_seconds=0)
    _submit_yaml(off_store, _spec(tmp_path, "n", 6))
    for t in range(6):
        off.tick(NOW + t)
        for run in list(off.running.values()):
            off_backend.end(run.handle, AttemptState.SUCCEEDED, _result(NOW + t))
    assert not off_backend.packs and len(off_backend.launched) == 6
    off_store.close()


def _jobs_row(store, job_id: int):
    return store._conn.execute("SELECT free_retries, node_requeues FROM jobs WHERE id = ?", (job_id,)).fetchone()


def test_a_pack_past_its_timeout_times_out_only_the_job_running_and_keeps_or_requeues_the_rest(tmp_path):
    store, backend, sched, ref, members = _packed(tmp_path, 8, extra="    timeout: 100\n    retries: 0\n")
    done, failed, running, *never = members
    for run, outcome in ((done, "succeeded"), (failed, "failed")):
        _started(run, {**_result(NOW + 3), "outcome": outcome, "error": "boom"})
    _started(running)
    sched.tick(NOW + 104)  # every member's clock says 101 s: the pack is stopped once
    assert all((r.stop and r.stop.state) is AttemptState.TIMED_OUT for r in members)
    backend.end(ref, AttemptState.CANCELLED, None, "cancelled")
    sched.tick(NOW + 105)
    assert store.job(done.job.id).state is JobState.SUCCEEDED
    assert store.job(failed.job.id).state is JobState.FAILED  # its own end, not a timeout
    assert store.job(running.job.id).state is JobState.TIMED_OUT
    for run in never:
        assert store.attempts(run.job.id)[0].state is AttemptState.LOST
        assert store.job(run.job.id).state in (JobState.PENDING, JobState.RUNNING)
        assert tuple(_jobs_row(store, run.job.id)) == (1, 0)  # not charged, not counted as a node loss
    store.close()


def test_a_pack_killed_by_force_for_another_jobs_cancel_does_not_charge_the_job_running(tmp_path):
    store, backend, sched, ref, members = _packed(tmp_path, 7, extra="    retries: 0\n")
    running, target, *rest = members
    _started(running)
    store.cancel([target.job.id], NOW + 3.5)
    sched.tick(NOW + 4)
    sched.tick(NOW + 4 + sched.settings.scheduler.cancel_grace)  # not stopped politely: killed
    assert target.stop.forced and running.stop is None  # the cancelled job's stop was forced; the other was not asked
    assert backend.cancels == [(ref, False), (ref, True)]  # the pack's task once politely, once by force
    backend.end(ref, AttemptState.LOST, None, "WorkerCrashedError: killed")  # what Ray says after a force cancel
    sched.tick(NOW + 10)
    assert store.job(target.job.id).state is JobState.CANCELLED
    assert store.job(running.job.id).state in (JobState.PENDING, JobState.RUNNING)
    assert "interrupted" in store.attempts(running.job.id)[0].error
    store.close()


def test_a_pack_whose_code_could_not_be_set_up_charges_its_first_job_only(tmp_path):
    store, backend, sched, ref, members = _packed(tmp_path, 7, extra="    retries: 0\n")
    backend.end(ref, AttemptState.FAILED, None, "could not set up the job's code on the node: no such package")
    sched.tick(NOW + 4)
    first, *rest = members
    assert store.job(first.job.id).state is JobState.FAILED
    assert all(store.job(r.job.id).state in (JobState.PENDING, JobState.RUNNING) for r in rest)
    store.close()


def test_a_clean_stop_keeps_what_a_running_pack_already_finished(tmp_path):
    store, backend, sched, ref, members = _packed(tmp_path, 7)
    done, running, *never = members
    _started(done, _result(NOW + 3))
    _started(running)
    sched.release_all(NOW + 4, "scheduler stopped")
    assert store.job(done.job.id).state is JobState.SUCCEEDED
    for run in [running, *never]:
        assert store.attempts(run.job.id)[0].state is AttemptState.LOST
        assert store.job(run.job.id).state is JobState.PENDING
    assert store.attempts(never[0].job.id)[0].dispatched_at == pytest.approx(NOW + 4, abs=1e-6)  # held nothing
    store.close()


def test_a_job_that_ended_on_its_own_during_the_wait_is_not_then_timed_out(tmp_path):
    store, backend, sched = _scheduler(tmp_path, cpu=1)
    _, (job_id,), _ = _submit_yaml(store, _spec(tmp_path, "t", 1, extra="    timeout: 60\n    retries: 0\n"))
    sched.tick(NOW)
    (run,) = sched.running.values()
    backend.end(run.handle, AttemptState.FAILED, {**_result(NOW + 59), "outcome": "failed", "error": "boom"}, "boom")
    sched.tick(NOW + 61)  # the end is seen only now, past the timeout
    assert store.job(job_id).state is JobState.FAILED  # its own failure, not a timeout
    store.close()


def test_a_pack_timed_out_before_any_job_started_times_out_its_first_job_only(tmp_path):
    store, backend, sched, ref, members = _packed(tmp_path, 8, extra="    timeout: 100\n")
    sched.tick(NOW + 104)  # no job of it has started (its node is slow to set up its code, say)
    backend.end(ref, AttemptState.CANCELLED, None, "cancelled")
    sched.tick(NOW + 105)
    first, *rest = members
    assert store.job(first.job.id).state is JobState.TIMED_OUT  # as a lone job would: no endless requeue
    for run in rest:
        assert store.job(run.job.id).state in (JobState.PENDING, JobState.RUNNING)
        assert tuple(_jobs_row(store, run.job.id)) == (1, 0)
    store.close()


def test_a_job_running_when_its_pack_times_out_is_requeued_if_it_has_not_run_that_long_itself(tmp_path):
    store, backend, sched, ref, members = _packed(tmp_path, 6, extra="    timeout: 100\n    retries: 0\n")
    done, running, *never = members
    _started(done, _result(NOW + 3, seconds=90))  # the first took 90 s
    _started(running)
    sched.tick(NOW + 104)
    backend.end(ref, AttemptState.CANCELLED, None, "cancelled")
    sched.tick(NOW + 105)
    assert store.job(done.job.id).state is JobState.SUCCEEDED
    attempt = store.attempts(running.job.id)[0]
    assert attempt.state is AttemptState.LOST and "before this job had" in attempt.error  # 12 s of its own
    assert store.job(running.job.id).state in (JobState.PENDING, JobState.RUNNING)
    store.close()


def test_cancelling_a_packed_job_that_already_finished_leaves_its_pack_running(tmp_path):
    store, backend, sched, ref, members = _packed(tmp_path, 7)
    done, running, *rest = members
    _started(done, _result(NOW + 3))
    store.cancel([done.job.id], NOW + 3.5)
    sched.tick(NOW + 4)
    assert not backend.cancels and all(r.stop is None for r in members)
    backend.end(ref, AttemptState.SUCCEEDED, [_result(NOW + 3 + 0.01 * i) for i in range(len(members))])
    sched.tick(NOW + 5)
    assert store.job(done.job.id).state is JobState.SUCCEEDED  # it ended before the cancel could matter
    store.close()


def test_a_pack_ray_would_not_take_charges_its_first_job_only(tmp_path):
    class Refusing(FakeBackend):
        def launch_pack(self, tasks, **kwargs):
            raise RuntimeError("runtime env rejected")

    store = Store(tmp_path / "home")
    backend = Refusing(make_nodes(1, cpu=1, gpu=0))
    sched = Scheduler(store, backend, Settings(home=str(tmp_path / "home")))
    _submit_yaml(store, _spec(tmp_path, "s", 8, extra="    retries: 0\n"))
    for t in range(3):
        sched.tick(NOW + t)
        (run,) = sched.running.values()
        backend.end(run.handle, AttemptState.SUCCEEDED, _result(NOW + t))
    sched.tick(NOW + 3)  # the pack of the other five is refused
    states = sorted(store.job(j.id).state.value for j in store.jobs_of_experiment(1)[3:])
    assert states.count("failed") == 1 and states.count("pending") + states.count("running") == 4
    store.close()
