"""The policy's sharing rules on plain data: fair share, quotas and borrowing,
backfill, preemption, GPU memory, usage decay; and that the fast path (no
reasons) decides exactly as the explaining one does."""

from __future__ import annotations

import math
import random

import pytest

from scheduler import policy
from scheduler.policy import Demand, Node, QueueConfig, RunningJob, UsageBook, decide

GiB = 2**30


def node(node_id="n1", cpu=16.0, gpus=(), memory=256 * GiB, gpu_memory=()) -> Node:
    return Node(node_id=node_id, cpu_total=cpu, cpu_free=cpu, memory_total=memory, memory_free=memory,
                gpu_free=list(gpus), gpu_memory=list(gpu_memory))


def busy(n: Node, *jobs: RunningJob) -> Node:
    """``n`` with what the running jobs hold taken off its free capacity."""
    for j in jobs:
        n.cpu_free -= j.cpu
        n.memory_free -= j.memory
        for i in j.gpu_indices:
            n.gpu_free[i] -= 1.0 if j.gpu > 1 else j.gpu
    return n


def placed(decision) -> list[int]:
    return [p.job_id for p in decision.placements]


# ---------------------------------------------------------------- fair share

def test_light_user_is_not_stuck_behind_a_heavy_users_sweep():
    # Given a 100-job sweep from ana submitted before bob's one job, and room for two
    sweep = [Demand(i, cpu=1, seq=i, user="ana") for i in range(100)]
    demands = sweep + [Demand(100, cpu=1, seq=100, user="bob")]
    # When the labq (and fair) policy decides
    for name in ("labq", "fair"):
        decision = decide(demands, [node(cpu=2)], policy=name)
        # Then bob's job starts alongside ana's first
        assert placed(decision) == [0, 100], name
    # while priority order alone hands both slots to the sweep
    assert placed(decide(demands, [node(cpu=2)], policy="priority")) == [0, 1]


def test_user_holding_more_now_goes_after_the_one_holding_less():
    running = [RunningJob(50 + i, user="ana", cpu=1, node_id="n1") for i in range(3)]
    nodes = [busy(node(cpu=4), *running)]
    demands = [Demand(1, cpu=1, seq=0, user="ana"), Demand(2, cpu=1, seq=5, user="bob")]
    decision = decide(demands, nodes, running=running)
    assert placed(decision) == [2]
    # ana holds 3 of 4 cpus against a fair share of 2: 1.5x
    assert decision.waiting[1] == "needs 1 cpu, most free on a node 0; user at 1.5x fair share"


def test_past_usage_counts_and_fades_with_the_half_life():
    demands = [Demand(1, cpu=1, seq=0, user="ana"), Demand(2, cpu=1, seq=1, user="bob")]
    heavy_past = policy.Usage({("default", "ana"): 3600.0, "default": 3600.0}, half_life=3600.0)
    assert placed(decide(demands, [node(cpu=1)], usage=heavy_past)) == [2]
    assert placed(decide(demands, [node(cpu=1)], usage=None)) == [1]  # no history: age decides


def test_dominant_resource_decides_the_share():
    # ana holds 1 of 2 GPUs (dominant share 0.5); bob holds 4 of 32 cpus (0.125): bob goes first
    running = [RunningJob(10, user="ana", cpu=1, gpu=1.0, node_id="n1", gpu_indices=(0,)),
               RunningJob(11, user="bob", cpu=4, node_id="n1")]
    nodes = [busy(node(cpu=32, gpus=[1.0, 1.0]), *running)]
    demands = [Demand(1, cpu=1, gpu=1, seq=0, user="ana"), Demand(2, cpu=1, gpu=1, seq=1, user="bob")]
    assert placed(decide(demands, nodes, running=running)) == [2]


def test_queue_weights_split_the_cluster():
    queues = [QueueConfig("big", weight=3.0), QueueConfig("small", weight=1.0)]
    demands = [Demand(i, cpu=1, seq=i, queue="big" if i % 2 else "small") for i in range(40)]
    decision = decide(demands, [node(cpu=8)], queues=queues)
    by_queue = [d.queue for d in demands if d.job_id in set(placed(decision))]
    assert by_queue.count("big") == 6 and by_queue.count("small") == 2


def test_priority_then_age_within_a_user():
    demands = [Demand(1, cpu=1, seq=0, user="ana"), Demand(2, cpu=1, seq=1, user="ana", priority=5),
               Demand(3, cpu=1, seq=2, user="ana")]
    assert placed(decide(demands, [node(cpu=2)])) == [2, 1]


# ---------------------------------------------------------------- quotas and borrowing

def test_queue_limit_is_a_hard_cap():
    queues = [QueueConfig("small", limit={"gpu": 1})]
    demands = [Demand(i, cpu=1, gpu=1, seq=i, queue="small") for i in range(3)]
    decision = decide(demands, [node(gpus=[1.0] * 4)], queues=queues)
    assert placed(decision) == [0]
    assert decision.waiting[1].startswith("queue 'small' at its limit: needs 1 gpu, 1 of 1 in use")


def test_queue_that_may_not_borrow_stays_within_its_guarantee():
    queues = [QueueConfig("q", guarantee={"gpu": 2}, borrow=False)]
    demands = [Demand(i, cpu=1, gpu=1, seq=i, queue="q") for i in range(3)]
    decision = decide(demands, [node(gpus=[1.0] * 4)], queues=queues)
    assert placed(decision) == [0, 1]
    assert "may not borrow beyond its guarantee (2 gpu; 2 gpu in use)" in decision.waiting[2]
    # Borrowing allowed (the default): idle GPUs are used
    borrowing = [QueueConfig("q", guarantee={"gpu": 2})]
    assert placed(decide(demands, [node(gpus=[1.0] * 4)], queues=borrowing)) == [0, 1, 2]


def test_queue_under_its_guarantee_is_served_before_a_borrowing_one():
    # research holds 1 GPU of its guarantee of 2; batch holds nothing, so it has the lower load
    running = [RunningJob(9, user="r", queue="research", cpu=1, gpu=1.0, node_id="n1", gpu_indices=(0,))]
    nodes = [busy(node(gpus=[1.0, 1.0]), *running)]
    demands = [Demand(1, cpu=1, gpu=1, seq=0, queue="batch", user="b"),
               Demand(2, cpu=1, gpu=1, seq=1, queue="research", user="r")]
    queues = [QueueConfig("research", guarantee={"gpu": 2}), QueueConfig("batch")]
    assert placed(decide(demands, nodes, running=running, queues=queues, policy="labq")) == [2]
    assert placed(decide(demands, nodes, running=running, queues=queues, policy="fair")) == [1]


# ---------------------------------------------------------------- packing and GPU memory

def test_fractional_jobs_fill_a_used_gpu_before_touching_a_whole_one():
    nodes = [node("a", gpus=[1.0, 1.0]), node("b", gpus=[0.75, 1.0])]
    decision = decide([Demand(1, gpu=0.25), Demand(2, gpu=1, seq=1), Demand(3, gpu=1, seq=2),
                       Demand(4, gpu=1, seq=3)], nodes)
    spots = {p.job_id: (p.node_id, p.gpu_indices) for p in decision.placements}
    assert spots[1] == ("b", (0,))  # the partly used GPU
    assert sorted(spots[j] for j in (2, 3, 4)) == [("a", (0,)), ("a", (1,)), ("b", (1,))]


def test_whole_gpu_job_prefers_the_node_with_fewest_whole_gpus_left():
    # A 1-GPU job should not break up the node that could still take a 4-GPU job
    nodes = [node("roomy", gpus=[1.0] * 4), node("tight", gpus=[0.5, 1.0, 0.0, 0.0])]
    decision = decide([Demand(1, gpu=1), Demand(2, gpu=4, seq=1)], nodes)
    assert {p.job_id: p.node_id for p in decision.placements} == {1: "tight", 2: "roomy"}


def test_gpu_memory_demand_becomes_a_share_of_each_card():
    nodes = [node("mixed", gpus=[1.0, 1.0], gpu_memory=[16 * GiB, 80 * GiB])]
    decision = decide([Demand(1, cpu=1, gpu_memory=20 * GiB)], nodes)
    assert decision.placements == [policy.Placement(1, "mixed", (1,), gpu_share=0.25)]
    # On the small card it fits whole: 8 GiB is half of 16 GiB, best fit takes the fuller share
    decision = decide([Demand(1, cpu=1, gpu_memory=8 * GiB)], nodes)
    assert decision.placements == [policy.Placement(1, "mixed", (0,), gpu_share=0.5)]


def test_gpu_memory_no_card_can_hold_names_the_largest():
    nodes = [node("a", gpus=[1.0], gpu_memory=[24 * GiB]), node("b", gpus=[1.0], gpu_memory=[80 * GiB])]
    decision = decide([Demand(1, cpu=1, gpu_memory=100 * GiB)], nodes)
    assert decision.unschedulable[1] == "needs 100.0GiB of GPU memory: the largest GPU has 80.0GiB (on b)"
    unknown = decide([Demand(1, cpu=1, gpu_memory=GiB)], [node("c", gpus=[1.0])])
    assert "no node reports its GPUs' memory" in unknown.unschedulable[1]


# ---------------------------------------------------------------- backfill

def backfill_case():
    """One node of 4 GPUs, 3 held until t=100; job 1 (4 GPUs) waits at the head."""
    holder = RunningJob(99, user="x", cpu=3, gpu=3, node_id="n1", gpu_indices=(0, 1, 2), started_at=0.0,
                        time_limit=100.0)
    return [busy(node(gpus=[1.0] * 4), holder)], [holder]


def test_backfill_starts_a_small_job_that_ends_before_the_reservation():
    nodes, running = backfill_case()
    demands = [Demand(1, cpu=4, gpu=4, seq=0, time_limit=50), Demand(2, cpu=1, gpu=1, seq=1, time_limit=60)]
    decision = decide(demands, nodes, running=running, now=10.0)
    assert placed(decision) == [2]  # ends at 70 < 100


def test_backfill_never_delays_the_head():
    nodes, running = backfill_case()
    demands = [Demand(1, cpu=4, gpu=4, seq=0, time_limit=50), Demand(2, cpu=1, gpu=1, seq=1, time_limit=600),
               Demand(3, cpu=1, gpu=1, seq=2)]
    decision = decide(demands, nodes, running=running, now=10.0)
    assert placed(decision) == []
    assert decision.waiting[2].startswith("would delay job 1, which has node n1 reserved in 90s (its time limit")
    assert "(it has no time limit)" in decision.waiting[3]
    # Greedy fair share, with no reservation, lets it take the GPU the head needs
    assert placed(decide(demands, nodes, running=running, now=10.0, policy="fair")) == [2]


def test_backfill_may_use_what_the_head_leaves_spare():
    nodes, running = backfill_case()
    demands = [Demand(1, cpu=2, gpu=2, seq=0), Demand(2, cpu=1, gpu=1, seq=1)]  # head needs 2 of the 4 at t=100
    nodes[0].gpu_free[2] = 0.0  # GPU 2 is held, GPU 3 free: nothing for a 2-GPU job now
    decision = decide(demands, nodes, running=running, now=10.0)
    assert placed(decision) == [2]


def test_backfill_elsewhere_is_always_allowed():
    nodes, running = backfill_case()
    nodes.append(node("n2", gpus=[1.0]))
    demands = [Demand(1, cpu=4, gpu=4, seq=0), Demand(2, cpu=1, gpu=1, seq=1)]
    decision = decide(demands, nodes, running=running, now=10.0)
    assert [(p.job_id, p.node_id) for p in decision.placements] == [(2, "n2")]


def test_blocked_jobs_of_different_shapes_each_get_a_reservation():
    # n1: 3 of 4 GPUs held until t=100; n2: 2 of 4 held until t=200
    a = RunningJob(98, user="x", cpu=3, gpu=3, node_id="n1", gpu_indices=(0, 1, 2), started_at=0.0, time_limit=100.0)
    b = RunningJob(99, user="x", cpu=2, gpu=2, node_id="n2", gpu_indices=(0, 1), started_at=0.0, time_limit=200.0)
    nodes = [busy(node("n1", gpus=[1.0] * 4), a), busy(node("n2", gpus=[1.0] * 4), b)]
    demands = [Demand(1, cpu=4, gpu=4, seq=0), Demand(2, cpu=2, gpu=4, seq=1),  # two 4-GPU shapes, blocked
               Demand(3, cpu=1, gpu=1, seq=2, time_limit=500), Demand(4, cpu=1, gpu=1, seq=3, time_limit=50)]
    decision = decide(demands, nodes, running=[a, b], now=10.0)
    # Job 1 has n1 at t=100; job 2, which n1 cannot hold then too, has n2 at t=200.  Job 3 would
    # delay one or the other wherever it went; with the first reservation only, it took n2's GPU
    # and job 2 waited on past t=200.  Job 4 ends at t=60, before either.
    assert placed(decision) == [4]
    assert decision.waiting[3].startswith("would delay job 1, which has node n1 reserved in 90s, and job 2, "
                                          "which has node n2 reserved in 3m (its time limit")
    assert policy.backfill.MAX_RESERVATIONS > 1


def test_without_time_limits_nothing_is_reserved_and_capacity_is_used():
    holder = RunningJob(99, cpu=3, gpu=3, node_id="n1", gpu_indices=(0, 1, 2))  # no time limit
    nodes = [busy(node(gpus=[1.0] * 4), holder)]
    decision = decide([Demand(1, cpu=4, gpu=4), Demand(2, cpu=1, gpu=1, seq=1)], nodes, running=[holder])
    assert placed(decision) == [2]


# ---------------------------------------------------------------- preemption

def preemption_case(batch_guarantee=None):
    running = [RunningJob(100 + i, user="b", queue="batch", cpu=1, gpu=1.0, node_id="n1", gpu_indices=(i,),
                          started_at=float(i), priority=1 if i == 0 else 0) for i in range(4)]
    nodes = [busy(node(gpus=[1.0] * 4), *running)]
    queues = [QueueConfig("research", guarantee={"gpu": 2}, preempt=True),
              QueueConfig("batch", guarantee=batch_guarantee or {})]
    return nodes, running, queues


def test_queue_under_its_guarantee_preempts_borrowers_latest_started_lowest_priority_first():
    nodes, running, queues = preemption_case()
    decision = decide([Demand(1, cpu=1, gpu=2, queue="research", user="r")], nodes, running=running, queues=queues)
    assert set(decision.preempt) == {103, 102}  # priority 0, started last; 100 has priority 1
    assert "queue 'batch' borrows beyond its guarantee (none)" in decision.preempt[103]
    assert decision.waiting[1].startswith("preempting 2 jobs of borrowing queues on n1")
    assert placed(decision) == []


def test_no_preemption_of_a_queue_within_its_guarantee():
    nodes, running, queues = preemption_case(batch_guarantee={"gpu": 4})
    decision = decide([Demand(1, cpu=1, gpu=2, queue="research")], nodes, running=running, queues=queues)
    assert decision.preempt == {}


def test_no_preemption_beyond_the_preempting_queues_guarantee_or_without_opt_in():
    nodes, running, queues = preemption_case()
    too_big = decide([Demand(1, cpu=1, gpu=3, queue="research")], nodes, running=running, queues=queues)
    assert too_big.preempt == {}
    opted_out = [QueueConfig("research", guarantee={"gpu": 2}), QueueConfig("batch")]
    assert decide([Demand(1, gpu=1, queue="research")], nodes, running=running, queues=opted_out).preempt == {}


# ---------------------------------------------------------------- usage

def test_usage_book_accrues_and_decays():
    capacity = policy.Capacity(cpu=4, gpu=2, memory=0)
    book = UsageBook(half_life=100.0, capacity=capacity)
    job = RunningJob(1, user="ana", cpu=1, gpu=1.0, gpu_indices=(0,))  # dominant share 0.5
    book.advance(0.0, [job])
    book.advance(100.0)
    rate = math.log(2) / 100
    held = 0.5 * (1 - 0.5) / rate  # the integral of 0.5 under the decay over one half-life
    assert book.snapshot()[("default", "ana")] == pytest.approx(held)
    book.remove(job)
    book.advance(200.0)
    snap = book.snapshot()
    assert snap[("default", "ana")] == pytest.approx(held / 2) and snap["default"] == pytest.approx(held / 2)
    assert snap.half_life == 100.0


# ---------------------------------------------------------------- the fast path decides the same

@pytest.mark.parametrize("name", policy.POLICIES)
def test_without_reasons_the_decision_is_the_same(name):
    rng = random.Random(5)
    for trial in range(30):
        nodes = [node(f"n{i}", cpu=rng.choice([4, 8]), gpus=[rng.choice([1.0, 0.5, 0.0]) for _ in range(2)])
                 for i in range(3)]
        demands = [Demand(j, cpu=rng.choice([0.5, 1, 2]), gpu=rng.choice([0, 0, 0.25, 0.5, 1, 2]), seq=j,
                          user=rng.choice("abc"), queue=rng.choice(["q1", "q2"]), priority=rng.choice([0, 1]),
                          time_limit=rng.choice([None, 50.0, 500.0])) for j in range(40)]
        queues = [QueueConfig("q1", weight=2, limit={"gpu": 2}), QueueConfig("q2")]
        full = decide(demands, nodes, queues=queues, policy=name)
        fast = decide(policy.PendingIndex(demands), nodes, queues=queues, policy=name, explain=False)
        assert fast.placements == full.placements, trial
        assert set(full.waiting) | set(full.unschedulable) | set(placed(full)) == {d.job_id for d in demands}


def test_stuck_shapes_say_when_another_decision_could_place_nothing():
    decision = decide([Demand(1, cpu=4), Demand(2, cpu=2, seq=1)], [node(cpu=4)])
    assert placed(decision) == [1]
    assert decision.stuck_shapes == {Demand(2, cpu=2).shape()}


def test_fifo_head_blocks_everything_behind_it():
    half_busy = node(cpu=4)
    half_busy.cpu_free = 2
    decision = decide([Demand(1, cpu=4, seq=0), Demand(2, cpu=1, seq=1)], [half_busy], policy="fifo")
    assert placed(decision) == []
    assert decision.blocked_by == 1
    assert decision.waiting[2] == "behind job 1 (fifo: strict submission order); 1 job ahead"


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy 'lifo'"):
        decide([], [], policy="lifo")
