"""Shortest-expected-remaining-first preemption (``QueueConfig.preempt_longer``)
on plain data: what a running job is expected to have left, from past runs like
it and how long it has run; that a pending job preempts only jobs of its queue
expected to run that many times longer, that checkpoint; and that the bar
doubles with each preemption a job has had, up to ``max_preemptions``."""

from __future__ import annotations

import dataclasses

import pytest

from scheduler.policy import Demand, DurationBook, QueueConfig, RunningJob, decide
from scheduler.policy.tiers import pending_elapsed, running_elapsed

from test_tiers import busy, gpu_node

SRPT = QueueConfig("q", preempt_longer=8.0, max_preemptions=3)
SHORT = (10, 10000, 0, 0, ())  # Demand(cpu=1, gpu=1).shape()


def book(user_runs: dict[str, list[float]]) -> DurationBook:
    """A book where each user's jobs of SHORT's shape ran these many seconds."""
    return DurationBook.of([(user, SHORT, "", s) for user, runs in user_runs.items() for s in runs])


def running(job_id, started_at, user="long", queue="q", preemptions=0, attained=0.0, gpu_indices=(0,),
            node_id="n") -> RunningJob:
    return RunningJob(job_id, user, queue, cpu=1, gpu=1.0, node_id=node_id, gpu_indices=gpu_indices,
                      started_at=started_at, attained=attained, preemptions=preemptions, shape=SHORT)


def short_job(job_id=1, queue="q") -> Demand:
    return Demand(job_id, cpu=1, gpu=1, user="short", queue=queue)


# ------------------------------------------------------------ what is left

def test_what_is_left_is_the_median_left_by_the_runs_that_lasted_longer():
    b = book({"u": [100, 200, 300, 1000, 2000, 5000]})
    # not started: the median of all six
    assert b.remaining("u", SHORT, "", 0.0) == 650
    # has run 250 s: of the four longer runs (300, 1000, 2000, 5000) the median is 1500, so 1250 left
    assert b.remaining("u", SHORT, "", 250.0) == 1250
    # has run 1500 s: only two runs lasted longer, too few to say: as long again
    assert b.remaining("u", SHORT, "", 1500.0) == 1500
    # a time limit caps it
    assert b.remaining("u", SHORT, "", 250.0, time_limit=600.0) == 350
    assert DurationBook().remaining("u", SHORT, "", 10.0) is None
    assert DurationBook().remaining("u", SHORT, "", 10.0, time_limit=60.0) == 50


def test_elapsed_counts_earlier_attempts_in_gpu_seconds_over_the_gpus_held():
    assert running_elapsed(running(1, started_at=100, attained=400.0), now=300) == 600
    half = dataclasses.replace(running(1, started_at=0, attained=100.0), gpu=0.5)
    assert running_elapsed(half, now=0) == 200
    assert pending_elapsed(Demand(1, cpu=1, gpu=4, attained=800.0)) == 200
    assert pending_elapsed(Demand(1, cpu=1, gpu=0, attained=800.0)) == 800


def test_a_requeued_job_is_ordered_by_what_it_has_left():
    """A job preempted after outliving its kind goes behind a fresh one submitted
    after it: its due time comes from what it is expected to have left."""
    b = book({"u": [100, 110, 120, 130, 140]})
    fresh = Demand(2, cpu=1, gpu=1, user="u", submitted_at=10.0)
    back = Demand(1, cpu=1, gpu=1, user="u", submitted_at=0.0, attained=5000.0)  # ran 5000 s
    assert b.due_at(back) == pytest.approx(0.0 + 100 * 5000)
    assert b.due_at(fresh) == pytest.approx(10.0 + 100 * 120)
    decision = decide([back, fresh], [gpu_node()], queues=[QueueConfig("default")], durations=b)
    assert [p.job_id for p in decision.placements] == [2]


# ------------------------------------------------------------ who is preempted

def test_a_short_job_preempts_a_running_job_expected_to_run_far_longer():
    b = book({"short": [60] * 5, "long": [36000] * 5})
    long_runner = running(10, started_at=0)
    decision = decide([short_job()], busy([gpu_node()], long_runner), running=[long_runner], queues=[SRPT],
                      now=600, durations=b)
    assert list(decision.preempt) == [10]
    assert "yields to job 1" in decision.preempt[10] and "expected to run" in decision.preempt[10]
    assert "preempting 1 job expected to run longer" in decision.waiting[1]


def test_no_preemption_below_the_factor_across_queues_or_when_off():
    b = book({"short": [600] * 5, "long": [3000] * 5})  # 2,400 s left against 600 s: 4x, under 8x
    long_runner = running(10, started_at=0)
    assert not decide([short_job()], busy([gpu_node()], long_runner), running=[long_runner], queues=[SRPT],
                      now=600, durations=b).preempt
    b = book({"short": [60] * 5, "long": [36000] * 5})
    other = running(10, started_at=0, queue="other")
    assert not decide([short_job()], busy([gpu_node()], other), running=[other],
                      queues=[SRPT, QueueConfig("other")], now=600, durations=b).preempt
    assert not decide([short_job()], busy([gpu_node()], long_runner), running=[long_runner],
                      queues=[QueueConfig("q")], now=600, durations=b).preempt
    # nothing predicted: nothing to compare
    assert not decide([short_job()], busy([gpu_node()], long_runner), running=[long_runner], queues=[SRPT],
                      now=600, durations=None).preempt


def test_a_job_that_does_not_checkpoint_is_never_preempted():
    b = book({"short": [60] * 5, "long": [36000] * 5})
    long_runner = dataclasses.replace(running(10, started_at=0), checkpoints=False)
    assert not decide([short_job()], busy([gpu_node()], long_runner), running=[long_runner], queues=[SRPT],
                      now=600, durations=b).preempt


def test_the_bar_doubles_with_each_preemption_and_is_bounded():
    """35,400 s left against 60 s is 590x: past 8 x 2^k for k up to 6."""
    b = book({"short": [60] * 5, "long": [36000] * 5})
    for times, preempted in ((0, True), (2, True), (3, False)):  # max_preemptions 3
        job = running(10, started_at=0, preemptions=times)
        assert bool(decide([short_job()], busy([gpu_node()], job), running=[job], queues=[SRPT], now=600,
                           durations=b).preempt) == preempted, times
    # 590x clears 8 x 2^6 = 512 but not 8 x 2^7 = 1024
    lax = dataclasses.replace(SRPT, max_preemptions=100)
    for times, preempted in ((6, True), (7, False)):
        job = running(10, started_at=0, preemptions=times)
        assert bool(decide([short_job()], busy([gpu_node()], job), running=[job], queues=[lax], now=600,
                           durations=b).preempt) == preempted, times


def test_the_job_expected_to_run_longest_is_the_one_preempted():
    b = book({"short": [60] * 5, "long": [36000] * 5, "longer": [360000] * 5})
    a = running(10, started_at=0, user="long", gpu_indices=(0,))
    c = running(11, started_at=0, user="longer", gpu_indices=(1,))
    nodes = busy([gpu_node(gpus=2)], a, c)
    decision = decide([short_job()], nodes, running=[a, c], queues=[SRPT], now=600, durations=b)
    assert list(decision.preempt) == [11]


def test_a_job_that_outlived_its_kind_is_expected_to_last_as_long_again():
    """A job of a kind that runs a minute, still running after five hours: too
    few runs lasted that long to say, so about five hours more, and a fresh
    one-minute job preempts it."""
    b = book({"short": [60] * 5, "long": [60] * 5})
    stuck = running(10, started_at=0)
    decision = decide([short_job()], busy([gpu_node()], stuck), running=[stuck], queues=[SRPT], now=18000,
                      durations=b)
    assert list(decision.preempt) == [10]
    assert decision.preempt[10].startswith("expected to run 5.0h more; yields to job 1, expected to run 60s")
