"""Fragmentation-aware placement (scheduler.policy.fragmentation) on plain
data: a placement that leaves a GPU share no expected job can use loses to a
clean one; a CPU-only job keeps off the node whose GPUs its cores would strand;
without a mix the best-fit rule stands; the mix comes from decayed arrivals and
the pending queue."""

from __future__ import annotations

import pytest

from scheduler.policy import Demand, MixBook, Node, ShapeMix, decide, mix_of
from scheduler.policy.fragmentation import CORE_LIMITED

GiB = 2**30


def node(node_id: str, cpu: float = 16, gpus=(1.0,)) -> Node:
    return Node(node_id=node_id, cpu_total=cpu, cpu_free=cpu, memory_total=64 * GiB, memory_free=64 * GiB,
                gpu_free=list(gpus))


def mix(*demands_and_weights: tuple[Demand, float]) -> ShapeMix:
    return ShapeMix({d.shape(): w for d, w in demands_and_weights})


HALF = Demand(0, cpu=1, gpu=0.5)
WHOLE = Demand(0, cpu=1, gpu=1)
HALF4 = Demand(0, cpu=4, gpu=0.5)


def placed(decision) -> dict[int, str]:
    return {p.job_id: p.node_id for p in decision.placements}


def test_a_share_that_would_leave_a_useless_sliver_goes_where_it_leaves_a_usable_one():
    nodes = [node("a", gpus=[0.5]), node("b", gpus=[1.0])]
    quarter = Demand(1, cpu=1, gpu=0.25)
    # Best fit (no mix): the fullest GPU, a's, left with 0.25 that no half-GPU job can use
    assert placed(decide([quarter], nodes)) == {1: "a"}
    # Expecting half-GPU jobs: b, whose 0.75 left still takes one; a keeps its half
    decision = decide([quarter], nodes, mix=mix((HALF, 1.0)))
    assert placed(decision) == {1: "b"}
    assert "adds 0.00 GPU of fragmentation" in decision.placements[0].why
    # Expecting whole-GPU jobs: a, whose half GPU was no use to them anyway; b stays whole
    assert placed(decide([quarter], nodes, mix=mix((WHOLE, 1.0)))) == {1: "a"}


def test_a_cpu_only_job_does_not_take_the_cores_a_gpu_node_needs_for_its_gpus():
    nodes = [node("small", cpu=6), node("big", cpu=16)]
    prep = Demand(1, cpu=4)
    gpu_job = Demand(0, cpu=4, gpu=1)
    # Both nodes have a free GPU: best fit takes small's cores, leaving 2, too few for a GPU job
    assert placed(decide([prep], nodes)) == {1: "small"}
    assert placed(decide([prep], nodes, mix=mix((gpu_job, 0.8), (Demand(0, cpu=4), 0.2)))) == {1: "big"}


def test_ties_keep_the_best_fit_rule_and_nodes_of_one_state_are_scored_once():
    nodes = [node(f"n{i}", gpus=[1.0, 1.0]) for i in range(50)] + [node("x", gpus=[0.6, 1.0])]
    decision = decide([Demand(1, cpu=1, gpu=0.5)], nodes, mix=mix((HALF, 0.5), (WHOLE, 0.5)))
    # On x the half goes onto the 0.6 GPU (0.1 left is a sliver either way, and
    # the whole GPU stays whole); elsewhere it would break a whole GPU
    assert placed(decision) == {1: "x"} and decision.placements[0].gpu_indices == (0,)
    assert "51 node(s) fit" in decision.placements[0].why


def test_a_difference_within_one_of_fgds_score_buckets_is_no_difference():
    """FGD scores a change in fragmentation as int(sigmoid(-change in GPUs) * 100):
    near no change a point is about 0.04 GPU.  Below that the next rule (the
    fullest GPU) decides; past it, fragmentation does."""
    from scheduler.policy.room import _score_bucket

    assert _score_bucket(0) == _score_bucket(-300) == -50 and _score_bucket(1) == _score_bucket(300) == -49
    assert _score_bucket(500) == -48 and _score_bucket(-500) == -51  # 0.05 GPU: the next bucket
    assert _score_bucket(10**9) == 0 and _score_bucket(-(10**9)) == -100
    quarter = Demand(1, cpu=1, gpu=0.25)
    nodes = [node("a", gpus=[0.5]), node("b", gpus=[1.0])]
    # Half-GPU jobs (w) and whole-GPU ones (1 - w) expected.  On a the quarter
    # leaves 0.25, of no use to either: + 0.25 (2w - 1) GPU of fragmentation; on
    # b, 0.75, of no use to a whole-GPU job: + 0.75 (1 - w).  At w = 0.81 that
    # is 0.155 against 0.1425: one bucket, so best fit's fullest GPU (a) wins
    # where exact scores would take b; at w = 0.9, 0.2 against 0.075: b
    assert placed(decide([quarter], nodes, mix=mix((HALF, 0.81), (WHOLE, 0.19)))) == {1: "a"}
    assert placed(decide([quarter], nodes, mix=mix((HALF, 0.9), (WHOLE, 0.1)))) == {1: "b"}


def test_equal_spots_go_to_the_first_node_of_a_fixed_order_that_is_not_by_name():
    """Among spots equal on every rule the same node wins whatever the nodes are
    listed as, so load gathers on the same nodes (first fit), and the order is a
    hash of the id, not the id: it does not fill one node type first."""
    names = [f"node-{i:03d}" for i in range(40)]
    job = Demand(1, cpu=1, gpu=1)
    expect = mix((WHOLE, 1.0))
    first = placed(decide([job], [node(n, gpus=[1.0, 1.0]) for n in names], mix=expect))[1]
    again = placed(decide([job], [node(n, gpus=[1.0, 1.0]) for n in reversed(names)], mix=expect))[1]
    assert first == again != "node-000"


def test_whole_gpu_jobs_take_gpus_where_the_rest_stays_useful():
    # a: 2 whole GPUs + one half-used; b: 3 whole.  A 2-GPU job on a leaves its
    # half-used GPU (useful to half jobs); on b it leaves one whole GPU.
    nodes = [node("a", gpus=[1.0, 1.0, 0.5]), node("b", gpus=[1.0, 1.0, 1.0])]
    two = Demand(1, cpu=1, gpu=2)
    expect_whole = mix((WHOLE, 1.0))
    assert placed(decide([two], nodes, mix=expect_whole)) == {1: "a"}  # b keeps a whole GPU for the next


def test_without_a_mix_or_under_other_policies_placement_is_best_fit():
    nodes = [node("a", gpus=[0.5]), node("b", gpus=[1.0])]
    quarter = Demand(1, cpu=1, gpu=0.25)
    assert placed(decide([quarter], nodes, mix=mix((HALF, 1.0)), policy="priority")) == {1: "a"}
    assert placed(decide([quarter], nodes, mix=ShapeMix({}))) == {1: "a"}


def test_the_mix_decays_old_arrivals_and_adds_the_pending_queue():
    book = MixBook(half_life=100.0)
    for t in range(10):
        book.add(HALF.shape(), float(t))
    book.add(WHOLE.shape(), 1000.0)  # ten half-lives later, one whole-GPU job outweighs ten old halves
    weights = {t[2]: t[4] for t in book.mix().types}
    assert weights[10_000] > 0.9 and weights[5_000] < 0.1
    # Each pending job counts once more, as an arrival now: three pending halves
    # against the one recent whole (and ten faded halves)
    both = {t[2]: t[4] for t in book.mix([(HALF.shape(), 3)], now=1000.0).types}
    assert both[5_000] == pytest.approx(0.75, abs=0.01)
    # A pending job counts as an arrival now, not at the history's time: fifty
    # half-lives on, one pending half outweighs the old whole
    assert {t[2]: t[4] for t in book.mix([(HALF.shape(), 1)], now=6000.0).types}[5_000] > 0.99
    # CPU-only shapes use no GPU: nothing is fragmented for them; they leave the mix
    assert not mix_of({Demand(0, cpu=2).shape(): 5.0})


def test_fragmentation_counts_what_each_shape_cannot_use():
    m = mix((HALF, 0.5), (WHOLE, 0.5))
    g = 10_000
    # Two GPUs, one whole and one at 0.3: halves cannot use the 0.3, wholes neither
    assert m.fragment(16 * g, 64 * GiB, (3_000, g)) == pytest.approx(3_000)
    # Too little cpu for either shape: everything free is fragmented
    assert m.fragment(0, 64 * GiB, (3_000, g)) == pytest.approx(13_000)
    # Only partial GPUs, the largest 0.6: halves use it, wholes cannot use any
    assert m.fragment(16 * g, 64 * GiB, (3_000, 6_000)) == pytest.approx(0.5 * 3_000 + 0.5 * 9_000)


def test_gpus_the_cores_cannot_feed_are_fragmented():
    # Half-GPU jobs with 4 cores each: two free GPUs hold four of them, 9 cores
    # only two; the GPU those cores cannot feed counts half (CORE_LIMITED)
    m = mix((HALF4, 1.0))
    g = 10_000
    assert CORE_LIMITED == 0.5
    assert m.fragment(16 * g, 64 * GiB, (g, g)) == pytest.approx(0)
    assert m.fragment(9 * g, 64 * GiB, (g, g)) == pytest.approx(0.5 * g)
    # Memory counts the same way: 8 GiB each, 12 GiB free holds one (1.5 GPUs unfed)
    big = mix((Demand(0, cpu=1, gpu=0.5, memory=8 * GiB), 1.0))
    assert big.fragment(16 * g, 12 * GiB, (g, g)) == pytest.approx(0.75 * g)
    # Whole GPUs count in full: 2-GPU jobs with 4 cores each, 4 free GPUs, cores for one
    pair = mix((Demand(0, cpu=4, gpu=2), 1.0))
    assert pair.fragment(4 * g, 64 * GiB, (g, g, g, g)) == pytest.approx(2 * g)
    assert pair.fragment(8 * g, 64 * GiB, (g, g, g, g)) == pytest.approx(0)


def test_a_gpu_heavy_job_goes_where_the_cores_could_not_have_used_the_gpus_anyway():
    # Both nodes fit it and one job more of the mix; on "a" (9 cores for two free
    # GPUs) the mix could only ever use one GPU's worth, so the half GPU it takes
    # there was fragmented: placing it on "a" removes fragmentation, on "d" none.
    # Asking only whether one more fits (FGD), the two tie and the fixed order takes "d".
    nodes = [node("d", cpu=16, gpus=[1.0, 1.0]), node("a", cpu=9, gpus=[1.0, 1.0])]
    light = Demand(1, cpu=1, gpu=0.5)
    assert placed(decide([light], nodes, mix=mix((HALF4, 1.0)))) == {1: "a"}
