"""Usage accounting on plain records, and the store query that feeds it."""

from __future__ import annotations

import math

import pytest

from scheduler.accounting import Held, decayed_seconds, summarize
from scheduler.states import AttemptState
from scheduler.store import Store

from test_store import JOIN, NOW, _submit_yaml, run_dir_for

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
    store.finish_attempt(a.id, AttemptState.SUCCEEDED, NOW + 70, result={"metrics": {}})
    store.start_attempts([(ids[1], "n")], run_dir_for, NOW + 20)
    got = sorted(store.held_since(NOW), key=lambda h: h.job_id)
    assert [(h.job_id, h.dispatched_at, h.ended_at, h.first_started_at) for h in got] == [
        (ids[0], NOW + 10, NOW + 70, NOW + 10), (ids[1], NOW + 20, None, NOW + 20)]
    assert got[0].submitted_at == NOW and got[0].cpu == 1.0
    assert [h.job_id for h in store.held_since(NOW + 100)] == [ids[1]]  # ended ones before are left out
    store.close()
