"""Estimated start times: the live policy replayed forward, on plain records, then
through the store and the `labq queue` / `labq status` commands."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from contract.attempt import WorkerOutcome, WorkerResult
from scheduler import estimate, policy
from scheduler.config import Settings
from scheduler.records import AttemptEnd, EndCause, NodeSnapshot
from scheduler.render import start_text
from scheduler.simulator import node
from scheduler.spec import load_spec
from scheduler.states import AttemptState
from scheduler.store import Store
from scheduler.sweep import plan_jobs

NOW = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[2]


def demand(job_id: int, gpu: float = 0.0, cpu: float = 1.0, **kw) -> policy.Demand:
    return policy.Demand(job_id=job_id, cpu=cpu, gpu=gpu, seq=job_id, **kw)


def running(job_id: int, gpu: float, gpus: tuple[int, ...] = (0,), started: float = NOW, **kw) -> policy.RunningJob:
    return policy.RunningJob(job_id=job_id, cpu=1.0, gpu=gpu, node_id="n0", gpu_indices=gpus, started_at=started, **kw)


# ---------------------------------------------------------------- durations

def test_expected_duration_is_the_median_of_past_runs_else_the_timeout():
    assert estimate.expected_duration([10.0, 30.0, 20.0], None) == 20.0
    assert estimate.expected_duration([], 600.0) == 600.0
    assert estimate.expected_duration([900.0, 1000.0], 600.0) == 600.0  # stopped at its timeout
    assert estimate.expected_duration([], None) is None


# ---------------------------------------------------------------- the replay

def test_a_job_that_fits_starts_now_and_a_whole_gpu_job_when_the_running_one_ends():
    # Given one GPU, half held by a job that ends in 60 s
    busy = running(1, 0.5, started=NOW - 30)
    # When a half-GPU job (30 s) and a whole-GPU job wait
    starts = estimate.estimate_starts([demand(2, 0.5), demand(3, 1.0)], [busy], [node("n0", 4, 1)],
                                      durations={1: 90.0, 2: 30.0, 3: 10.0}, now=NOW)
    # Then the half-GPU job starts now, the whole-GPU one when the GPU is empty
    assert starts == {2: NOW, 3: pytest.approx(NOW + 60)}


def test_a_job_without_history_is_expected_to_run_until_its_timeout():
    # Given a running job with no successes of its stage yet, timeout 120 s, running for 20 s
    busy = running(1, 1.0, started=NOW - 20, time_limit=120.0)
    durations = {1: estimate.expected_duration([], 120.0), 2: None}
    starts = estimate.estimate_starts([demand(2, 1.0)], [busy], [node("n0", 4, 1)], durations=durations, now=NOW)
    assert starts[2] == pytest.approx(NOW + 100)


def test_what_waits_for_a_job_of_unknown_duration_gets_no_estimate():
    # Given a job of unknown duration holding the only GPU
    busy = running(1, 1.0)
    starts = estimate.estimate_starts([demand(2, 1.0), demand(3, 0.0)], [busy], [node("n0", 4, 1)],
                                      durations={2: 60.0, 3: 60.0}, now=NOW)
    # Then the GPU job cannot be estimated, while the CPU-only job starts now
    assert starts == {2: None, 3: NOW}


def test_a_pending_job_of_unknown_duration_starts_but_then_holds_its_room():
    starts = estimate.estimate_starts([demand(1, 1.0), demand(2, 1.0)], [], [node("n0", 4, 1)],
                                      durations={2: 60.0}, now=NOW)
    assert starts == {1: NOW, 2: None}


def test_a_running_job_past_its_expected_end_ends_any_moment():
    busy = running(1, 1.0, started=NOW - 500)
    starts = estimate.estimate_starts([demand(2, 1.0)], [busy], [node("n0", 4, 1)], durations={1: 100.0, 2: 1.0},
                                      now=NOW)
    assert starts[2] == pytest.approx(NOW + estimate.MIN_REMAINING)


def test_the_live_policy_orders_the_queue_priority_first():
    # Given one GPU and three whole-GPU jobs of 100 s, the last submitted with a higher priority
    jobs = [demand(1, 1.0), demand(2, 1.0), demand(3, 1.0, priority=5)]
    starts = estimate.estimate_starts(jobs, [], [node("n0", 4, 1)], durations={1: 100.0, 2: 100.0, 3: 100.0},
                                      now=NOW)
    assert starts == {3: NOW, 1: NOW + 100, 2: NOW + 200}


def test_fair_share_interleaves_users():
    jobs = [demand(i, 1.0, user="alice") for i in range(1, 4)] + [demand(i, 1.0, user="bob") for i in range(4, 7)]
    starts = estimate.estimate_starts(jobs, [], [node("n0", 4, 1)], durations={i: 100.0 for i in range(1, 7)},
                                      now=NOW)
    order = sorted(starts, key=starts.get)
    assert [j <= 3 for j in order] in ([True, False] * 3, [False, True] * 3)


def test_estimates_are_capped_at_the_first_limit_jobs_to_start():
    # Given 10,000 one-cpu jobs of 60 s on a 4-cpu node
    jobs = [demand(i, 0.0) for i in range(1, 10_001)]
    began = time.perf_counter()
    starts = estimate.estimate_starts(jobs, [], [node("n0", 4, 0)], durations={i: 60.0 for i in range(1, 10_001)},
                                      now=NOW, limit=500)
    took = time.perf_counter() - began
    # Then exactly the first 500 have a start, four at a time, a minute apart; the rest None
    known = {j: t for j, t in starts.items() if t is not None}
    assert sorted(known) == list(range(1, 501))
    assert known[1] == NOW and known[5] == NOW + 60 and known[500] == NOW + 124 * 60
    assert len(starts) == 10_000
    assert took < 2.0, took


def test_many_classes_stop_the_replay_early_but_not_before_the_first_decision():
    jobs = [demand(i, 0.0, time_limit=600.0 + i) for i in range(1, 5001)]  # 5,000 classes
    starts = estimate.estimate_starts(jobs, [], [node("n0", 4, 0)], durations={i: 60.0 for i in range(1, 5001)},
                                      now=NOW, work_budget=20_000)
    known = [j for j, t in starts.items() if t is not None]
    assert 4 <= len(known) < 500
    assert all(starts[j] == NOW for j in (1, 2, 3, 4))


def test_a_job_on_a_dead_node_holds_nothing_placeable():
    gone = policy.RunningJob(job_id=1, cpu=4.0, gpu=1.0, node_id="dead", gpu_indices=(0,), started_at=NOW)
    starts = estimate.estimate_starts([demand(2, 1.0), demand(3, 1.0)], [gone], [node("n0", 4, 1)],
                                      known=[node("n0", 4, 1), node("dead", 4, 1)],
                                      durations={1: 10.0, 2: 60.0, 3: 60.0}, now=NOW)
    assert starts == {2: NOW, 3: NOW + 60}


def test_a_queue_owed_its_guarantee_starts_by_preempting_a_borrower():
    # Given a borrowing batch job of unknown duration holding the only GPU
    queues = [policy.QueueConfig("prod", guarantee={"gpu": 1.0}, preempt=True), policy.QueueConfig("batch")]
    borrower = running(1, 1.0, queue="batch")
    starts = estimate.estimate_starts([demand(2, 1.0, queue="prod"), demand(3, 1.0, queue="batch")], [borrower],
                                      [node("n0", 4, 1)], durations={2: 60.0, 3: 60.0}, now=NOW, queues=queues)
    # Then the prod job starts now; the preempted job, requeued first, runs forever (unknown): job 3 waits for ever
    assert starts == {2: NOW, 3: None}


def test_a_job_no_node_can_hold_gets_no_estimate():
    starts = estimate.estimate_starts([demand(1, 2.0)], [], [node("n0", 4, 1)], durations={1: 5.0}, now=NOW)
    assert starts == {1: None}


# ---------------------------------------------------------------- records to inputs

def test_running_jobs_go_on_the_gpus_the_node_snapshot_shows_allocated():
    nodes = [node("n0", 8, 2)]
    jobs = [running(1, 0.5, gpus=()), running(2, 0.5, gpus=())]
    spread = estimate.place_running(jobs, nodes, {"n0": [0.5, 0.5]})
    assert sorted(j.gpu_indices for j in spread) == [(0,), (1,)]
    packed = estimate.place_running(jobs, nodes, {"n0": [0.0, 1.0]})
    assert [j.gpu_indices for j in packed] == [(1,), (1,)]
    # so a whole-GPU job waits for the first to end in one case, and starts now in the other
    durations = {1: 60.0, 2: 120.0, 3: 10.0}
    assert estimate.estimate_starts([demand(3, 1.0)], spread, nodes, durations=durations, now=NOW)[3] == NOW + 60
    assert estimate.estimate_starts([demand(3, 1.0)], packed, nodes, durations=durations, now=NOW)[3] == NOW


def test_nodes_from_snapshots():
    gib = 2**30
    alive = NodeSnapshot(node_id="a", address="10.0.0.1", alive=True,
                         total={"CPU": 8.0, "GPU": 2.0, "memory": 16 * gib, "object_store_memory": gib, "ssd": 1.0,
                                "accelerator_type:A100": 1.0},
                         allocated={}, running_jobs=1,
                         gpus=[{"index": 0, "allocated": 0.5, "memory_total": 40 * gib},
                               {"index": 1, "allocated": 0.0, "memory_total": 40 * gib}], updated_at=NOW)
    dead = NodeSnapshot(node_id="b", address="10.0.0.2", alive=False, total={"CPU": 4.0}, allocated={},
                        running_jobs=0, gpus=[], updated_at=NOW)
    placeable, known, allocated = estimate.nodes_from_snapshots([alive, dead])
    assert [n.node_id for n in placeable] == ["a"] and [n.node_id for n in known] == ["a", "b"]
    a = placeable[0]
    assert (a.cpu_total, a.gpu_total, a.memory_total, a.custom_total) == (8.0, 2, 16 * gib, {"ssd": 1.0})
    assert a.gpu_memory == [40 * gib, 40 * gib]
    assert allocated == {"a": [0.5, 0.0]}


def test_start_text():
    assert start_text(None, NOW) == "-"
    assert start_text(NOW + 10, NOW) == "<1m"
    assert start_text(NOW + 180, NOW) == "~3m"
    assert start_text(NOW + 70 * 60, NOW) == "~1h10m"
    assert start_text(NOW + 2 * 3600, NOW) == "~2h"
    assert start_text(NOW + 27 * 3600, NOW) == "~1d3h"


# ---------------------------------------------------------------- through the store

def _submit(store: Store, tmp_path: Path, text: str, now: float) -> list[int]:
    path = tmp_path / f"spec{len(list(tmp_path.glob('spec*.yaml')))}.yaml"
    path.write_text(textwrap.dedent(text))
    spec, raw = load_spec(path)
    drafts = plan_jobs(spec, str(path))
    _, ids = store.submit(name=spec.experiment, user=getpass.getuser(), queue=spec.queue, priority=spec.priority,
                          spec_path=str(path), spec=raw, package=None, metric=None, mode=None, drafts=drafts,
                          stages={s.name: s for s in spec.stages}, now=now)
    return ids


SWEEP = """
    experiment: sweep
    stages:
      - name: train
        command: "echo {i}"
        resources: {cpu: 1, gpu: 1}
        timeout: 1h
        sweep: {grid: {i: [0, 1, 2, 3, 4, 5]}}
"""


def _run(store: Store, job_id: int, start: float, end: float | None, outcome=AttemptState.SUCCEEDED) -> None:
    [attempt] = store.start_attempts([(job_id, "n0", 1.0)], lambda j, n: f"/runs/{j}/{n}", start)
    if end is not None:
        result = WorkerResult(outcome=WorkerOutcome.of(outcome.value), started_at=start + 1)
        store.finish_attempt(AttemptEnd(attempt.id, outcome, EndCause.RETURNED, result), end)


def _gpu_node(store: Store, now: float, gpus: int = 1) -> None:
    store.save_nodes([NodeSnapshot(node_id="n0", address="10.0.0.1", alive=True, total={"CPU": 8.0, "GPU": float(gpus)},
                                   allocated={}, running_jobs=0,
                                   gpus=[{"index": i, "allocated": 0.0} for i in range(gpus)], updated_at=now)])


def test_stage_durations_are_past_successes_of_the_same_experiment_name_and_stage(tmp_path):
    store = Store(tmp_path / "home")
    try:
        old = _submit(store, tmp_path, SWEEP, NOW)
        _run(store, old[0], NOW, NOW + 100)
        _run(store, old[1], NOW + 100, NOW + 400)
        _run(store, old[2], NOW + 400, NOW + 405, AttemptState.FAILED)  # not a success: not counted
        other = _submit(store, tmp_path, SWEEP.replace("experiment: sweep", "experiment: other"), NOW)
        _run(store, other[0], NOW, NOW + 9999)
        new = _submit(store, tmp_path, SWEEP, NOW + 500)  # resubmitted: a new id, the same name
        durations = store.stage_durations([new[0], other[1], 999])
        assert sorted(durations[new[0]]) == [100.0, 300.0]
        assert durations[other[1]] == [9999.0]
        assert 999 not in durations
        assert store.stage_durations([new[0]], recent=1)[new[0]] == [300.0]  # the latest only
    finally:
        store.close()


def test_from_store_uses_history_timeouts_and_the_node_snapshot(tmp_path):
    store = Store(tmp_path / "home")
    try:
        ids = _submit(store, tmp_path, SWEEP, NOW)
        _run(store, ids[0], NOW, NOW + 100)
        _run(store, ids[1], NOW + 100, NOW + 300)  # median of 100 and 200: 150 s
        _run(store, ids[2], NOW + 300, None)  # running since NOW + 300
        _gpu_node(store, NOW + 300)
        starts, _ = estimate.from_store(store, NOW + 350, half_life=Settings().scheduler.usage_half_life,
                                     queues=Settings().queue_configs())
        assert starts == {ids[3]: pytest.approx(NOW + 450), ids[4]: pytest.approx(NOW + 600),
                          ids[5]: pytest.approx(NOW + 750)}
        # Without any history the one-hour timeout is the guess
        fresh = _submit(store, tmp_path, SWEEP.replace("experiment: sweep", "experiment: fresh"), NOW)
        later, _ = estimate.from_store(store, NOW + 350, half_life=Settings().scheduler.usage_half_life,
                                     queues=Settings().queue_configs())
        assert later[fresh[0]] == pytest.approx(NOW + 900)  # after the three of "sweep" (submitted first)
        assert later[fresh[1]] == pytest.approx(NOW + 900 + 3600)
    finally:
        store.close()


def test_from_store_puts_a_user_with_less_past_usage_first(tmp_path):
    """Fair share in the replay: alice used the GPU all day yesterday, bob did
    not, so bob's job, submitted after hers, is estimated to start first."""
    store = Store(tmp_path / "home")
    one = SWEEP.replace("sweep: {grid: {i: [0, 1, 2, 3, 4, 5]}}", "").replace("echo {i}", "echo one")

    def submit(name: str, user: str, now: float) -> int:
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(one.replace("experiment: sweep", f"experiment: {name}")))
        spec, raw = load_spec(path)
        _, [job_id] = store.submit(name=name, user=user, queue=spec.queue, priority=spec.priority,
                                   spec_path=str(path), spec=raw, package=None, metric=None, mode=None,
                                   drafts=plan_jobs(spec, str(path)), stages={s.name: s for s in spec.stages}, now=now)
        return job_id

    try:
        _run(store, submit("yesterday", "alice", NOW - 2 * 86400), NOW - 2 * 86400, NOW - 86400)
        alice = submit("alice-today", "alice", NOW)
        bob = submit("bob-today", "bob", NOW + 1)
        _gpu_node(store, NOW + 10)
        starts, _ = estimate.from_store(store, NOW + 10, half_life=Settings().scheduler.usage_half_life,
                                     queues=Settings().queue_configs())
        assert starts[bob] == pytest.approx(NOW + 10)
        assert starts[alice] == pytest.approx(NOW + 10 + 3600)  # after bob's job, guessed at its 1 h timeout
    finally:
        store.close()


def labq(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABQ_HOME": str(home)}
    env.pop("LABQ_CLUSTER", None)
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


def test_labq_queue_and_status_show_estimated_starts(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    now = time.time()
    try:
        ids = _submit(store, tmp_path, SWEEP, now - 1000)
        _run(store, ids[0], now - 1000, now - 400)  # 600 s
        _run(store, ids[1], now - 300, None)  # ends in about 300 s
        _gpu_node(store, now)
    finally:
        store.close()
    proc = labq("queue", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    rows = {r["id"]: r for r in json.loads(proc.stdout)}
    assert rows[ids[1]]["estimated_start"] is None  # running
    assert rows[ids[2]]["estimated_start"] == pytest.approx(now + 300, abs=30)
    assert rows[ids[3]]["estimated_start"] == pytest.approx(now + 900, abs=30)
    table = labq("queue", home=home).stdout
    assert "starts" in table and "~5m" in table and "~15m" in table
    status = labq("status", str(ids[3]), home=home)
    assert status.returncode == 0 and "~15m" in status.stdout, status.stdout + status.stderr
    assert json.loads(labq("status", str(ids[3]), "--json", home=home).stdout)["estimated_start"] == pytest.approx(
        now + 900, abs=30)
