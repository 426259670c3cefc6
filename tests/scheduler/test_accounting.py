"""Usage accounting on plain records, and the store query that feeds it."""

from __future__ import annotations

import math

import pytest

from scheduler.accounting import Held, decayed_seconds, summarize
from scheduler.states import AttemptState
from scheduler.store import Store

from test_store import JOIN, NOW, _submit_yaml, run_dir_for
from test_store import end as attempt_end

H = 3600.0


def held(user, queue, job_id, cpu, gpu, start, end, submitted=None, first=None):
    return Held(user=user, queue=queue, job_id=job_id, cpu=cpu, gpu=gpu, dispatched_at=start, ended_at=end,
                submitted_at=start if submitted is None else submitted, first_started_at=start if first is None else first)


def test_decay_halves_per_half_life_and_has_the_right_total():
    # an hour used just now counts about an hour; the same hour one half-life ago counts half
    recent = decayed_seconds(NOW - H, NOW, NOW, half_life=24 * H)
    old = decayed_seconds(NOW - 25 * H, NOW - 24 * H, NOW, half_life=24 * H)
    assert recent == pytest.approx(H, rel=0.02) and old == pytest.approx(recent / 2, rel=1e-9)
    # forever-long use converges to half_life / ln 2
    assert decayed_seconds(NOW - 1e9, NOW, NOW, half_life=H) == pytest.approx(H / math.log(2))
    assert decayed_seconds(NOW, NOW - 1, NOW, half_life=H) == 0.0


def test_summary_counts_only_the_period_but_decays_all_history():
    rows = [
        # alice: 2 cpu for 2 h inside the period, plus a 1-gpu job that started before it
        held("alice", "default", 1, 2.0, 0.0, NOW - 3 * H, NOW - H, submitted=NOW - 3.5 * H),
        held("alice", "default", 2, 1.0, 1.0, NOW - 30 * H, NOW - 22 * H),
        # bob: a running 0.5-gpu job, waited 10 minutes
        held("bob", "gpu", 3, 1.0, 0.5, NOW - H, None, submitted=NOW - H - 600),
    ]
    out = {r["user"]: r for r in summarize(rows, since=NOW - 24 * H, now=NOW, half_life=7 * 24 * H)}
    alice, bob = out["alice"], out["bob"]
    # job 2 held 2 of its 8 hours inside the last 24 h
    assert alice["cpu_hours"] == pytest.approx(2 * 2 + 1 * 2) and alice["gpu_hours"] == pytest.approx(2)
    assert alice["jobs"] == 1 and alice["avg_wait_s"] == pytest.approx(0.5 * H)  # job 2 started before the period
    assert alice["decayed_gpu_hours"] == pytest.approx(8 * 2 ** (-26 / (7 * 24)), rel=0.03)
    assert bob["gpu_hours"] == pytest.approx(0.5) and bob["avg_wait_s"] == pytest.approx(600)
    assert bob["queue"] == "gpu"
    by_queue = {r["queue"]: r for r in summarize(rows, since=NOW - 24 * H, now=NOW, half_life=7 * 24 * H,
                                                 by=("queue",))}
    assert set(by_queue) == {"default", "gpu"} and by_queue["default"]["attempts"] == 2


def test_store_reports_held_attempts_with_their_jobs(tmp_path):
    store = Store(tmp_path / "home")
    spec = tmp_path / "join.yaml"
    spec.write_text(JOIN)
    _, ids, _ = _submit_yaml(store, spec)
    (a,) = store.start_attempts([(ids[0], "n")], run_dir_for, NOW + 10)
    store.finish_attempt(attempt_end(a.id, AttemptState.SUCCEEDED, result={"metrics": {}}), NOW + 70)
    store.start_attempts([(ids[1], "n")], run_dir_for, NOW + 20)
    got = sorted(store.held_since(NOW), key=lambda h: h.job_id)
    assert [(h.job_id, h.dispatched_at, h.ended_at, h.first_started_at) for h in got] == [
        (ids[0], NOW + 10, NOW + 70, NOW + 10), (ids[1], NOW + 20, None, NOW + 20)]
    assert got[0].submitted_at == NOW and got[0].cpu == 1.0
    assert [h.job_id for h in store.held_since(NOW + 100)] == [ids[1]]  # ended ones before are left out
    store.close()


def _store_with_history(tmp_path) -> Store:
    """Six jobs' attempts: ended long ago, ended recently, ended before it
    started (clock skew), a share of its own, still running, and one across
    the start of a 4.5 h period."""
    store = Store(tmp_path / "home")
    spec = tmp_path / "sweep.yaml"
    spec.write_text("""
experiment: shapes
stages:
  - name: s
    command: "true"
    sweep: {grid: {i: [1, 2, 3, 4, 5, 6]}}
    resources: {cpu: 2, gpu: 0.5, memory: 1GiB}
""")
    _, ids, _ = _submit_yaml(store, spec)
    for job_id, start, end, share in [(ids[0], NOW - 5 * H, NOW - 4 * H, None), (ids[1], NOW - 100, NOW - 10, None),
                                      (ids[2], NOW - 50, NOW - 60, None), (ids[3], NOW - 30, NOW - 20, 0.25),
                                      (ids[4], NOW - 40, None, None), (ids[5], NOW - 3 * H, NOW - 2 * H, None)]:
        (a,) = store.start_attempts([(job_id, "n", share)], run_dir_for, start)
        if end is not None:
            store.finish_attempt(attempt_end(a.id, AttemptState.SUCCEEDED, result={"metrics": {}, "ended_at": end}),
                                 end)
    return store


@pytest.mark.parametrize("half_life", [7 * 24 * H, 60.0, 0.0])
def test_the_stores_sql_sum_of_decayed_use_equals_the_python_one(tmp_path, half_life):
    from scheduler.accounting import decayed_usage, usage_of_shapes
    from scheduler.policy import Capacity, node_of

    store = _store_with_history(tmp_path)
    capacity = Capacity.of([node_of("n", {"CPU": 8, "GPU": 2, "memory": 16 * 2**30})])
    after = NOW - 10 * half_life if half_life else 0
    want = decayed_usage(store.held_since(after), NOW, half_life, capacity.dominant)
    got = usage_of_shapes(store.decayed_use(after, NOW, half_life), capacity.dominant)
    assert want and set(got) == set(want)
    assert all(got[k] == pytest.approx(want[k], rel=1e-9) for k in want)
    store.close()


@pytest.mark.parametrize("half_life", [7 * 24 * H, 60.0, 0.0])
@pytest.mark.parametrize("by", [("queue", "user"), ("user",), ("queue",)])
def test_the_stores_sql_usage_summary_equals_summarize(tmp_path, half_life, by):
    """`labq usage` (and the dashboard) read the summary SQLite sums; it must
    say what accounting.summarize says of the same attempts: attempts before
    the period and across its start, running ones, clock skew, a share of its own."""
    from scheduler.accounting import summarize

    store = _store_with_history(tmp_path)
    since = NOW - 4.5 * H
    after = min(since, NOW - 10 * half_life)
    want = summarize(store.held_since(after), since=since, now=NOW, half_life=half_life, by=by)
    got = store.usage_summary(after, since, NOW, half_life, by)
    assert [tuple(r[c] for c in by) for r in got] == [tuple(r[c] for c in by) for r in want]
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for key, value in w.items():
            assert g[key] == (pytest.approx(value, rel=1e-9, abs=1e-12) if isinstance(value, float) else value), key
    store.close()
