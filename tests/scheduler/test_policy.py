"""The pure scheduling policy: plain Demand / Node records in, a Decision out."""

from __future__ import annotations

import copy
import random
from collections import defaultdict

from scheduler import policy
from scheduler.policy import Demand, Node, decide

GiB = 2**30


def node(node_id="n1", cpu=8.0, gpus=(), memory=64 * GiB, custom=None, cpu_free=None, memory_free=None,
         custom_free=None) -> Node:
    custom = dict(custom or {})
    return Node(node_id=node_id, cpu_total=cpu, cpu_free=cpu if cpu_free is None else cpu_free,
                memory_total=memory, memory_free=memory if memory_free is None else memory_free,
                gpu_free=list(gpus), custom_total=custom,
                custom_free=dict(custom if custom_free is None else custom_free))


def placed_ids(decision) -> list[int]:
    return [p.job_id for p in decision.placements]


def by_job(decision) -> dict[int, policy.Placement]:
    return {p.job_id: p for p in decision.placements}


# ---------------------------------------------------------------- ordering

def test_order_is_priority_then_seq():
    demands = [Demand(1, priority=0, seq=1), Demand(2, priority=5, seq=4), Demand(3, priority=0, seq=0),
               Demand(4, priority=5, seq=2), Demand(5, priority=-1, seq=-3)]
    assert [d.job_id for d in policy.order(demands)] == [4, 2, 3, 1, 5]


def test_higher_priority_starts_first_and_equal_priority_keeps_seq_order():
    demands = [Demand(10, cpu=1, priority=0, seq=0), Demand(11, cpu=1, priority=0, seq=1),
               Demand(12, cpu=1, priority=1, seq=7), Demand(13, cpu=1, priority=0, seq=2)]
    # Room for everything: placements follow the order jobs were considered in.
    everything = decide(demands, [node(cpu=8)])
    assert placed_ids(everything) == [12, 10, 11, 13]
    # Room for two: the high-priority job and the earliest submitted one.
    two = decide(demands, [node(cpu=2)])
    assert placed_ids(two) == [12, 10]
    assert set(two.waiting) == {11, 13}


def test_equal_priority_seq_order_does_not_depend_on_input_order():
    demands = [Demand(i, cpu=1, seq=i) for i in range(20)]
    shuffled = demands[:]
    random.Random(7).shuffle(shuffled)
    decision = decide(shuffled, [node(cpu=5)])
    assert placed_ids(decision) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- no head-of-line blocking

def test_job_that_does_not_fit_is_skipped_and_smaller_jobs_behind_it_start():
    decision = decide([Demand(1, cpu=2, seq=0), Demand(2, cpu=1, seq=1)], [node(cpu=4, cpu_free=1)])
    assert placed_ids(decision) == [2]
    assert decision.waiting == {1: "needs 2 cpu, most free on a node 1"}
    assert decision.unschedulable == {}


def test_waiting_reason_counts_earlier_waiting_jobs():
    demands = [Demand(1, cpu=2, seq=0), Demand(2, cpu=1, seq=1), Demand(3, cpu=3, seq=2), Demand(4, cpu=2, seq=3)]
    decision = decide(demands, [node(cpu=4, cpu_free=1)])
    assert placed_ids(decision) == [2]
    assert decision.waiting[1] == "needs 2 cpu, most free on a node 1"  # nothing ahead: no suffix
    assert decision.waiting[3] == "needs 3 cpu, most free on a node 0; 1 job ahead"
    assert decision.waiting[4].startswith("needs 2 cpu")
    assert decision.waiting[4].endswith("; 2 jobs ahead")


def test_placed_and_unschedulable_jobs_do_not_count_as_ahead():
    demands = [Demand(1, cpu=99, seq=0), Demand(2, cpu=1, seq=1), Demand(3, cpu=2, seq=2)]
    decision = decide(demands, [node(cpu=4, cpu_free=1)])
    assert set(decision.unschedulable) == {1}
    assert placed_ids(decision) == [2]
    assert decision.waiting == {3: "needs 2 cpu, most free on a node 0"}


# ---------------------------------------------------------------- GPU placement

def test_quarter_gpu_jobs_pack_onto_one_gpu_leaving_the_other_whole():
    n = node(cpu=16, gpus=[1.0, 1.0])
    quarters = [Demand(i, cpu=1, gpu=0.25, seq=i) for i in range(4)]
    decision = decide(quarters, [n])
    assert placed_ids(decision) == [0, 1, 2, 3]
    indices = {p.gpu_indices for p in decision.placements}
    assert len(indices) == 1 and len(next(iter(indices))) == 1  # all on the same single GPU
    # A whole-GPU job behind them still fits on the untouched GPU.
    decision = decide(quarters + [Demand(9, cpu=1, gpu=1.0, seq=9)], [n])
    placements = by_job(decision)
    assert set(placements) == {0, 1, 2, 3, 9}
    shared = placements[0].gpu_indices
    assert all(placements[i].gpu_indices == shared for i in range(4))
    assert placements[9].gpu_indices != shared and len(placements[9].gpu_indices) == 1
    assert decision.waiting == {}


def test_decide_does_not_mutate_the_callers_nodes():
    n = node(cpu=4, gpus=[1.0, 1.0], custom={"lic": 2})
    before = copy.deepcopy(n)
    decide([Demand(i, cpu=1, gpu=0.5, custom={"lic": 1}, seq=i) for i in range(3)], [n])
    assert n == before


def test_fractional_job_goes_best_fit_to_the_fullest_gpu_that_fits():
    decision = decide([Demand(1, gpu=0.5)], [node(gpus=[0.5, 1.0])])
    assert by_job(decision)[1].gpu_indices == (0,)
    decision = decide([Demand(1, gpu=0.5)], [node(gpus=[1.0, 0.5])])
    assert by_job(decision)[1].gpu_indices == (1,)


def test_fractional_best_fit_across_nodes():
    nodes = [node("a", gpus=[1.0]), node("b", gpus=[0.6])]
    decision = decide([Demand(1, gpu=0.5)], nodes)
    assert by_job(decision)[1] == policy.Placement(1, "b", (0,), gpu_share=0.5)


def test_a_cpu_only_job_avoids_a_node_with_free_gpus_when_another_fits():
    """Best fit on cpu alone would take the GPU node's last cores and strand
    its GPU; a node without a free GPU share is used first."""
    gpu_node = node("gpu", cpu=8, cpu_free=2, gpus=[1.0])
    cpu_node = node("cpu", cpu=64, cpu_free=60)
    full_gpus = node("full", cpu=8, cpu_free=5, gpus=[0.0, 0.0])  # its GPUs are all taken: nothing to strand
    assert by_job(decide([Demand(1, cpu=2)], [gpu_node, cpu_node]))[1].node_id == "cpu"
    assert by_job(decide([Demand(1, cpu=2)], [gpu_node, cpu_node, full_gpus]))[1].node_id == "full"  # best fit
    # ...and goes to a node with free GPUs when nothing else holds it
    assert by_job(decide([Demand(1, cpu=2)], [gpu_node, node("small", cpu=1)]))[1].node_id == "gpu"
    assert by_job(decide([Demand(1, cpu=2, memory=60 * GiB)],
                         [gpu_node, node("cpu", cpu=64, memory=8 * GiB)]))[1].node_id == "gpu"


def test_cpu_jobs_fill_cpu_nodes_first_and_leave_gpu_nodes_whole_for_gpu_jobs():
    """One decision: the CPU-only jobs placed first do not strand the GPUs the
    GPU jobs behind them need."""
    nodes = [node("g1", cpu=4, gpus=[1.0, 1.0]), node("g2", cpu=4, gpus=[1.0, 1.0]), node("c", cpu=16)]
    demands = [Demand(i, cpu=4, seq=i) for i in range(4)] + [Demand(10 + i, cpu=1, gpu=2, seq=10 + i)
                                                            for i in range(2)]
    placed = by_job(decide(demands, nodes))
    assert {placed[i].node_id for i in range(4)} == {"c"}
    assert {placed[10].node_id, placed[11].node_id} == {"g1", "g2"}


def test_half_gpu_job_waits_when_no_single_gpu_has_half_free():
    decision = decide([Demand(1, gpu=0.5), Demand(2, gpu=0.25, seq=1)], [node(gpus=[0.25, 0.25])])
    assert 1 in decision.waiting
    assert "largest free share 0.25" in decision.waiting[1]
    assert decision.waiting[1].startswith("needs 0.5 gpu")
    assert decision.unschedulable == {}
    # A job that does fit in one of the shares still starts.
    assert placed_ids(decision) == [2]


def test_whole_multi_gpu_job_needs_that_many_fully_free_gpus_on_one_node():
    spread = [node("a", gpus=[1.0, 0.5]), node("b", gpus=[0.0, 1.0])]
    decision = decide([Demand(1, gpu=2)], spread)
    assert placed_ids(decision) == []
    assert decision.unschedulable == {}
    assert decision.waiting[1] == "needs 2 whole free GPUs on one node, most free 1"

    decision = decide([Demand(1, gpu=2)], [node("a", gpus=[0.5, 1.0, 1.0])])
    assert by_job(decision)[1].gpu_indices == (1, 2)

    # Both GPUs are taken by the 2-GPU job: a second one waits.
    decision = decide([Demand(1, gpu=2), Demand(2, gpu=0.1, seq=1)], [node("a", gpus=[1.0, 1.0])])
    assert placed_ids(decision) == [1]
    assert "largest free share 0" in decision.waiting[2]


def test_whole_gpu_job_needs_a_completely_free_gpu():
    decision = decide([Demand(1, gpu=1.0)], [node(gpus=[0.9, 0.9999])])
    assert placed_ids(decision) == []
    assert "needs 1 gpu, largest free share" in decision.waiting[1]


def test_gpu_shares_are_consumed_within_one_decision():
    decision = decide([Demand(i, cpu=0, gpu=0.5, seq=i) for i in range(5)], [node(gpus=[1.0, 1.0])])
    assert placed_ids(decision) == [0, 1, 2, 3]
    per_gpu = defaultdict(float)
    for p in decision.placements:
        per_gpu[p.gpu_indices] += 0.5
    assert dict(per_gpu) == {(0,): 1.0, (1,): 1.0}
    assert set(decision.waiting) == {4}


# ---------------------------------------------------------------- unschedulable

def test_jobs_larger_than_any_node_are_unschedulable_and_do_not_block():
    nodes = [node("a", cpu=4, gpus=[1.0, 1.0], memory=16 * GiB), node("b", cpu=4, gpus=[1.0, 1.0], memory=16 * GiB)]
    demands = [
        Demand(1, cpu=8, seq=0),
        Demand(2, gpu=3, seq=1),
        Demand(3, custom={"tpu": 1}, seq=2),
        Demand(4, memory=32 * GiB, seq=3),
        Demand(5, cpu=1, gpu=0.5, memory=GiB, seq=4),
    ]
    decision = decide(demands, nodes)
    assert set(decision.unschedulable) == {1, 2, 3, 4}
    assert placed_ids(decision) == [5]
    assert decision.waiting == {}
    why = decision.unschedulable
    assert "8 cpu (node has 4)" in why[1]
    assert "3 gpu (node has 2)" in why[2]
    assert "'tpu'" in why[3] and "offered by no node" in why[3]
    assert "32.0GiB memory (node has 16.0GiB)" in why[4]
    assert all("more than any node has" in w for w in why.values())


def test_unschedulable_on_a_single_node_cluster_says_the_node():
    decision = decide([Demand(1, cpu=8)], [node(cpu=4)])
    assert decision.unschedulable[1] == "needs 8 cpu (node has 4): more than the node has"


def test_fractional_gpu_on_a_cpu_only_cluster_is_unschedulable():
    decision = decide([Demand(1, gpu=0.25)], [node(gpus=[])])
    assert "gpu (node has 0)" in decision.unschedulable[1]


def test_fits_on_some_node_is_not_unschedulable():
    # Big on cpu on node a, big on GPUs on node b: neither alone holds 8 cpu + 1 gpu.
    nodes = [node("a", cpu=16, gpus=[]), node("b", cpu=4, gpus=[1.0])]
    decision = decide([Demand(1, cpu=8, gpu=1), Demand(2, cpu=8, seq=1)], nodes)
    assert set(decision.unschedulable) == {1}
    assert placed_ids(decision) == [2]


def test_busy_but_big_enough_node_means_waiting_not_unschedulable():
    decision = decide([Demand(1, cpu=4)], [node(cpu=4, cpu_free=0)])
    assert decision.unschedulable == {}
    assert 1 in decision.waiting


def test_offered_by_no_node_only_when_no_node_offers_it():
    nodes = [node("a", cpu=4), node("b", cpu=4, custom={"tpu": 1})]
    decision = decide([Demand(1, custom={"tpu": 2})], nodes)
    assert 1 in decision.unschedulable
    assert "offered by no node" not in decision.unschedulable[1]


def test_no_nodes_means_wait_not_unschedulable():
    demands = [Demand(1, cpu=1000), Demand(2, gpu=8, seq=1), Demand(3, custom={"x": 1}, seq=2)]
    decision = decide(demands, [])
    assert decision.unschedulable == {}
    assert decision.placements == []
    assert set(decision.waiting) == {1, 2, 3}
    assert decision.waiting[1].startswith("no nodes available")


def test_empty_queue():
    decision = decide([], [node()])
    assert decision.placements == [] and decision.waiting == {} and decision.unschedulable == {}


# ---------------------------------------------------------------- custom resources and memory

def test_custom_resources_are_consumed_per_node():
    one_node = decide([Demand(i, cpu=0.5, custom={"license": 1}, seq=i) for i in range(3)],
                      [node(cpu=8, custom={"license": 2})])
    assert placed_ids(one_node) == [0, 1]
    assert one_node.waiting[2] == "needs 1 license, most free 0"

    two_nodes = decide([Demand(i, cpu=0.5, custom={"license": 1}, seq=i) for i in range(3)],
                       [node("a", custom={"license": 1}), node("b", custom={"license": 1})])
    assert sorted(p.node_id for p in two_nodes.placements) == ["a", "b"]
    assert set(two_nodes.waiting) == {2}


def test_custom_resource_only_on_some_nodes_goes_there():
    nodes = [node("plain", cpu=64), node("special", cpu=2, custom={"fpga": 1})]
    decision = decide([Demand(1, custom={"fpga": 1})], nodes)
    assert by_job(decision)[1].node_id == "special"


def test_memory_is_consumed_per_node():
    nodes = [node("a", memory=8 * GiB), node("b", memory=8 * GiB)]
    decision = decide([Demand(i, cpu=1, memory=5 * GiB, seq=i) for i in range(3)], nodes)
    assert sorted(p.node_id for p in decision.placements) == ["a", "b"]
    assert decision.waiting[2] == "needs 5.00GiB memory, most free 3.00GiB"

    decision = decide([Demand(i, cpu=1, memory=4 * GiB, seq=i) for i in range(3)], [node("a", memory=8 * GiB)])
    assert placed_ids(decision) == [0, 1]


# ---------------------------------------------------------------- several nodes, precision, scale

def test_cpu_jobs_spread_over_nodes_within_capacity():
    nodes = [node("a", cpu=4), node("b", cpu=8), node("c", cpu=4, cpu_free=2)]
    decision = decide([Demand(i, cpu=1, seq=i) for i in range(20)], nodes)
    assert len(decision.placements) == 14  # 4 + 8 + 2 free
    per_node = defaultdict(float)
    for p in decision.placements:
        per_node[p.node_id] += 1
    assert per_node == {"a": 4, "b": 8, "c": 2}
    assert placed_ids(decision) == list(range(14))
    assert set(decision.waiting) == set(range(14, 20))


def test_mixed_cpu_sizes_never_exceed_node_capacity():
    rng = random.Random(3)
    nodes = [node(f"n{i}", cpu=rng.choice([2, 4, 6])) for i in range(5)]
    demands = [Demand(i, cpu=rng.choice([0.5, 1, 1.5, 3]), seq=i) for i in range(60)]
    decision = decide(demands, nodes)
    cpu_of = {d.job_id: d.cpu for d in demands}
    used = defaultdict(float)
    for p in decision.placements:
        used[p.node_id] += cpu_of[p.job_id]
    total = {n.node_id: n.cpu_total for n in nodes}
    assert all(used[n] <= total[n] + 1e-9 for n in used)
    assert sum(used.values()) <= sum(total.values())
    assert len(decision.placements) + len(decision.waiting) == len(demands)


def test_ten_tenth_cpu_jobs_fit_exactly_in_one_cpu():
    decision = decide([Demand(i, cpu=0.1, seq=i) for i in range(11)], [node(cpu=1)])
    assert placed_ids(decision) == list(range(10))
    assert set(decision.waiting) == {10}


def test_ten_tenth_gpu_jobs_share_one_gpu():
    decision = decide([Demand(i, cpu=0, gpu=0.1, seq=i) for i in range(11)], [node(cpu=1, gpus=[1.0])])
    assert placed_ids(decision) == list(range(10))
    assert all(p.gpu_indices == (0,) for p in decision.placements)
    assert set(decision.waiting) == {10}


def test_large_queue_over_many_nodes():
    """10,000 demands, 100 nodes of 16 cpu and 4 GPUs.  The count that fits does
    not depend on where best fit puts things:
      150 two-GPU jobs (4 cpu)  -> all fit (300 of 400 GPUs)
      200 one-GPU jobs (2 cpu)  -> 100 fit (the 100 GPUs left)
      cpu-only jobs (1 cpu)     -> the 1600 - 600 - 200 = 800 cpu left
      5 eight-GPU jobs          -> unschedulable"""
    nodes = [node(f"n{i:03}", cpu=16, gpus=[1.0] * 4, memory=256 * GiB) for i in range(100)]
    demands = []
    for i in range(150):
        demands.append(Demand(len(demands), cpu=4, gpu=2, memory=8 * GiB, priority=2))
    for i in range(200):
        demands.append(Demand(len(demands), cpu=2, gpu=1, memory=4 * GiB, priority=1))
    for i in range(5):
        demands.append(Demand(len(demands), cpu=1, gpu=8, priority=3))
    while len(demands) < 10_000:
        demands.append(Demand(len(demands), cpu=1, memory=GiB, priority=0))
    rng = random.Random(1)
    seqs = list(range(len(demands)))
    rng.shuffle(seqs)
    demands = [Demand(d.job_id, cpu=d.cpu, gpu=d.gpu, memory=d.memory, priority=d.priority, seq=s)
               for d, s in zip(demands, seqs)]
    rng.shuffle(demands)

    decision = decide(demands, nodes)

    by_id = {d.job_id: d for d in demands}
    placed = [by_id[p.job_id] for p in decision.placements]
    assert len(decision.unschedulable) == 5
    assert sum(1 for d in placed if d.gpu == 2) == 150
    assert sum(1 for d in placed if d.gpu == 1) == 100
    assert sum(1 for d in placed if d.gpu == 0) == 800
    assert len(placed) == 1050
    assert len(placed) + len(decision.waiting) + len(decision.unschedulable) == 10_000

    cpu_used = defaultdict(float)
    gpu_used = defaultdict(float)
    for p in decision.placements:
        d = by_id[p.job_id]
        cpu_used[p.node_id] += d.cpu
        assert len(p.gpu_indices) == (0 if d.gpu == 0 else max(1, int(d.gpu)))
        for g in p.gpu_indices:
            gpu_used[(p.node_id, g)] += 1.0 if d.gpu >= 1 else d.gpu
    assert all(v <= 16 for v in cpu_used.values())
    assert all(v <= 1.0 for v in gpu_used.values())
    assert sum(cpu_used.values()) <= 16 * 100
