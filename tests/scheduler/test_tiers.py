"""Least-attained-service tiers (scheduler.policy.tiers) on plain data: the
order they give within a queue that opts in, and that a job preempts only jobs
of its queue in a higher tier, a bounded number of times."""

from __future__ import annotations

from scheduler.policy import Demand, DurationBook, Node, QueueConfig, RunningJob, decide, tier_of
from scheduler.policy.tiers import running_service, weight

GiB = 2**30
TIERED = QueueConfig("q", tiers=(3600.0, 36000.0), max_preemptions=2)


def gpu_node(node_id="n", gpus=1) -> Node:
    return Node(node_id=node_id, cpu_total=16, cpu_free=16, memory_total=64 * GiB, memory_free=64 * GiB,
                gpu_free=[1.0] * gpus)


def busy(nodes: list[Node], *jobs: RunningJob) -> list[Node]:
    for job in jobs:
        n = next(n for n in nodes if n.node_id == job.node_id)
        n.cpu_free -= job.cpu
        for i in job.gpu_indices:
            n.gpu_free[i] -= job.gpu if job.gpu <= 1 else 1.0
    return nodes


def running(job_id, started_at, attained=0.0, queue="q", preemptions=0, gpu=1.0) -> RunningJob:
    return RunningJob(job_id, "u", queue, cpu=1, gpu=gpu, node_id="n", gpu_indices=(0,), started_at=started_at,
                      attained=attained, preemptions=preemptions)


def test_tiers_count_gpu_seconds_attained():
    assert [tier_of(s, TIERED) for s in (0, 3599, 3600, 36000, 1e9)] == [0, 0, 1, 2, 2]
    assert weight(0.0) == 1.0 and weight(0.5, (2,)) == 0.5 and weight(4.0, (0, 1, 2, 3)) == 4.0
    assert running_service(running(1, started_at=100, attained=50, gpu=0.5), now=300) == 50 + 200 * 0.5


def test_a_new_job_preempts_a_job_in_a_higher_tier_of_its_queue():
    long_runner = running(10, started_at=0)  # 2 GPU-hours in: tier 1
    new = Demand(1, cpu=1, gpu=1, user="u", queue="q")
    decision = decide([new], busy([gpu_node()], long_runner), running=[long_runner], queues=[TIERED], now=7200)
    assert list(decision.preempt) == [10]
    assert "tier 1" in decision.preempt[10] and "yields to job 1 in tier 0" in decision.preempt[10]
    assert "preempting 1 job of higher tiers" in decision.waiting[1]


def test_a_job_that_does_not_checkpoint_is_never_preempted_for_a_tier():
    """It would lose all its work: tiers preempt only jobs that resume from a checkpoint."""
    import dataclasses

    new = Demand(1, cpu=1, gpu=1, user="u", queue="q")
    long_runner = dataclasses.replace(running(10, started_at=0), checkpoints=False)
    decision = decide([new], busy([gpu_node()], long_runner), running=[long_runner], queues=[TIERED], now=7200)
    assert not decision.preempt


def test_no_preemption_within_a_tier_across_queues_or_without_tiers():
    new = Demand(1, cpu=1, gpu=1, user="u", queue="q")
    same_tier = running(10, started_at=7000)  # 200 s in: tier 0 like the new job
    assert not decide([new], busy([gpu_node()], same_tier), running=[same_tier], queues=[TIERED],
                      now=7200).preempt
    other_queue = running(10, started_at=0, queue="other")
    assert not decide([new], busy([gpu_node()], other_queue), running=[other_queue],
                      queues=[TIERED, QueueConfig("other")], now=7200).preempt
    untiered = running(10, started_at=0)
    assert not decide([new], busy([gpu_node()], untiered), running=[untiered], queues=[QueueConfig("q")],
                      now=7200).preempt
    assert not decide([new], busy([gpu_node()], untiered), running=[untiered], queues=[TIERED], now=7200,
                      policy="fair").preempt


def test_a_pending_job_in_a_higher_tier_preempts_only_jobs_above_it():
    returning = Demand(1, cpu=1, gpu=1, user="u", queue="q", attained=5000.0)  # tier 1 already
    tier1 = running(10, started_at=7000, attained=4000)  # 4200 GPU-s: tier 1, same as the pending job
    assert not decide([returning], busy([gpu_node()], tier1), running=[tier1], queues=[TIERED], now=7200).preempt
    tier2 = running(11, started_at=0, attained=40000)
    assert list(decide([returning], busy([gpu_node()], tier2), running=[tier2], queues=[TIERED],
                       now=7200).preempt) == [11]


def test_preemptions_are_bounded_per_job():
    new = Demand(1, cpu=1, gpu=1, user="u", queue="q")
    twice = running(10, started_at=0, preemptions=2)  # at the bound of 2
    assert not decide([new], busy([gpu_node()], twice), running=[twice], queues=[TIERED], now=7200).preempt
    once = running(10, started_at=0, preemptions=1)
    assert "preempted 2 of at most 2 times" in decide([new], busy([gpu_node()], once), running=[once],
                                                      queues=[TIERED], now=7200).preempt[10]


def test_the_most_served_job_is_the_one_preempted():
    nodes = busy([gpu_node(gpus=2)], running(10, started_at=0), RunningJob(
        11, "u", "q", cpu=1, gpu=1, node_id="n", gpu_indices=(1,), started_at=0, attained=50000))
    jobs = [running(10, started_at=0), RunningJob(11, "u", "q", cpu=1, gpu=1, node_id="n", gpu_indices=(1,),
                                                  started_at=0, attained=50000)]
    decision = decide([Demand(1, cpu=1, gpu=1, user="u", queue="q")], nodes, running=jobs, queues=[TIERED], now=7200)
    assert list(decision.preempt) == [11]


def test_a_lower_tier_goes_first_and_a_due_job_counts_as_tier_zero():
    returning = Demand(1, cpu=1, gpu=1, user="u", queue="q", seq=1, submitted_at=0, attained=5000.0)
    new = Demand(2, cpu=1, gpu=1, user="u", queue="q", seq=2, submitted_at=100)
    assert [p.job_id for p in decide([returning, new], [gpu_node()], queues=[TIERED], now=200).placements] == [2]
    # Runs like it take 6,000 s: 5,000 s in, it has 1,000 s left, and with a
    # stretch of 4 it is due at 4,000 (a requeued job ages by what it has left):
    # tier 0 again, and older
    book = DurationBook(stretch=4)
    for _ in range(3):
        book.add("u", returning.shape(), "", 6000)
    later = Demand(2, cpu=1, gpu=1, user="u", queue="q", seq=2, submitted_at=3900)
    placed = decide([returning, later], [gpu_node()], queues=[TIERED], now=3950, durations=book).placements
    assert [p.job_id for p in placed] == [2]  # not due yet: tier 1
    placed = decide([returning, later], [gpu_node()], queues=[TIERED], now=4100, durations=book).placements
    assert [p.job_id for p in placed] == [1]
