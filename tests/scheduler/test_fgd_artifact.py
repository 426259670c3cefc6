"""The FGD artifact's scoring as ported to Python (bench/fgd_artifact.py), on
plain data: FGD's fragment amounts and integer sigmoid score, its choice of
device, BestFit's integer score and normalization, the tie-break to the
lowest-ranked node, the typical pods, the fit filter, and a small replay."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

# bench/ is not an installed package: the repository root, as `python -m pytest` from it has it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import fgd_artifact as art
from bench.fgd_traces import Pod
from scheduler.simulator import node

WHOLE = art.PodRes(1000, 1000, 1)  # 1 CPU, one whole GPU
HALF = art.PodRes(1000, 500, 1)
CPU_ONLY = art.PodRes(1000, 0, 0)


def pod(name: str = "p", cpu: int = 1000, mem: int = 1024, num_gpu: int = 0, gpu_milli: int = 0) -> Pod:
    return Pod(name=name, cpu_milli=cpu, memory_mib=mem, num_gpu=num_gpu, gpu_milli=gpu_milli)


def frag(typical, cpu, gpus) -> list[float]:
    return art.Typical(typical).frag(np.array(cpu), np.array(gpus)).tolist()


# ---------------------------------------------------------------- pods and typical pods

def test_pod_res_as_pod_csv_to_yaml_writes_it():
    assert art.pod_res(pod(cpu=4000, num_gpu=1, gpu_milli=300)) == art.PodRes(4000, 300, 1)
    assert art.pod_res(pod(cpu=4000, num_gpu=2, gpu_milli=1000)) == art.PodRes(4000, 1000, 2)
    assert art.pod_res(pod(cpu=4000, num_gpu=0, gpu_milli=500)) == art.PodRes(4000, 0, 0)  # no GPU annotations
    assert art.pod_res(pod(cpu=0)).milli_cpu == art.DEFAULT_MILLI_CPU_REQUEST  # GetNonzeroRequests


def test_typical_pods_cut_at_the_popularity_threshold_and_renormalise():
    pods = ([pod(f"a{i}", num_gpu=1, gpu_milli=500) for i in range(60)]
            + [pod(f"b{i}", num_gpu=1, gpu_milli=1000) for i in range(36)]
            + [pod(f"c{i}", cpu=2000) for i in range(4)])
    typical = art.typical_pods(pods)
    # 60% + 36% = 96% >= 95%: the CPU-only shape (4%) is cut, the rest renormalised.
    assert [res for res, _ in typical] == [art.PodRes(1000, 500, 1), art.PodRes(1000, 1000, 1)]
    assert [round(w, 6) for _, w in typical] == [round(60 / 96, 6), round(36 / 96, 6)]
    # Below the threshold every shape stays, CPU-only ones included.
    assert len(art.typical_pods(pods, threshold=99)) == 3


def test_typical_pods_equal_counts_order_by_larger_shape_first():
    pods = [pod("x", cpu=1000, num_gpu=1, gpu_milli=500), pod("y", cpu=3000, num_gpu=1, gpu_milli=500)]
    assert [res.milli_cpu for res, _ in art.typical_pods(pods, threshold=40)] == [3000]


# ---------------------------------------------------------------- fragmentation

def test_frag_counts_the_devices_too_small_for_each_typical_pod():
    # A half-GPU pod fits ([1000, 300]: only the 300 is a fragment); so does a whole one (same).
    assert frag([(HALF, 0.5), (WHOLE, 0.5)], [8000], [[1000, 300]]) == [300.0]
    # No full device: the whole pod's half counts everything free.
    assert frag([(HALF, 0.5), (WHOLE, 0.5)], [8000], [[600, 300]]) == [0.5 * 300 + 0.5 * 900]
    # Lacking the CPU: everything free is a fragment for both.
    assert frag([(HALF, 0.5), (WHOLE, 0.5)], [500], [[1000, 300]]) == [1300.0]


def test_frag_counts_all_free_gpu_for_a_cpu_only_typical_pod_even_when_it_fits():
    # frag.go: xl_satisfied is summed by FragAmountSumExceptQ3 (only q3 is left out).
    assert frag([(CPU_ONLY, 1.0)], [500, 4000], [[1000, 0], [1000, 0]]) == [1000.0, 1000.0]


def test_fgd_prefers_the_node_whose_leftover_fragments_less():
    typical = art.Typical([(WHOLE, 1.0)])
    cpu = np.array([8000, 8000])
    gpus = np.array([[1000, 1000], [500, 1000]])
    scores, gpu = art.fgd_scores(cpu, gpus, HALF, typical)
    # Node 0: the share breaks a whole GPU (+500 fragment); node 1: it fills the half-used one (-500).
    # int64(sigmoid(-0.5) * 100) = int64(37.75) = 37: truncated, not rounded.
    assert scores.tolist() == [37, 62]
    assert gpu.tolist() == [0, 0]
    assert art.select_host(scores, np.array([0, 1])) == 1


def test_fgd_device_is_the_first_with_the_best_integer_score_not_the_tightest():
    typical = art.Typical([(WHOLE, 1.0)])
    gpus = np.array([[1000, 400, 300]])
    share = art.PodRes(1000, 300, 1)
    scores, gpu = art.fgd_scores(np.array([8000]), gpus, share, typical)
    # Devices 1 and 2 both leave the fragment at 400 (score 57); device 1 comes first.
    assert scores.tolist() == [57] and gpu.tolist() == [1]
    assert art.alloc_best_fit([1000, 400, 300], share) == [2]  # BestFit's gpusel: the tightest


def test_fgd_scores_a_cpu_only_pod_by_the_cpu_it_takes():
    typical = art.Typical([(art.PodRes(4000, 1000, 1), 1.0)])
    cpu = np.array([4000, 16000])
    gpus = np.array([[1000], [1000]])
    scores, _ = art.fgd_scores(cpu, gpus, art.PodRes(2000, 0, 0), typical)
    # On node 0 the 2 CPUs strand its GPU for the typical pod (+1000 fragment); node 1 keeps it usable.
    assert scores.tolist() == [int(art.sigmoid(-1.0) * 100), 50]


# ---------------------------------------------------------------- BestFit and the host choice

def test_best_fit_integer_score_prefers_the_fuller_node_and_normalizes():
    cpu = np.array([64000, 8000, 36000])
    gpus = np.array([[1000, 1000], [1000, 0], [1000, 1000]])
    raw = art.best_fit_scores(cpu, gpus, WHOLE)
    # (1 - (0.5 * 63000 / 128000 + 0.5 * 1000 / 8000)) * 100 = 69.14... -> 69
    assert raw.tolist() == [69, 97, 80]
    assert art.normalize_scores(raw).tolist() == [0, 100, (80 - 69) * 100 // (97 - 69)]
    assert art.normalize_scores(np.array([42, 42])).tolist() == [0, 0]


def test_best_fit_integer_score_ties_close_nodes():
    # 1 CPU apart: 0.5 * 1000 / 128000 * 100 = 0.39 points, the same integer score.
    cpu = np.array([33000, 32000])
    gpus = np.array([[1000], [1000]])
    raw = art.best_fit_scores(cpu, gpus, WHOLE)
    assert raw[0] == raw[1]
    # selectHost of the artifact's fork: the smallest name, i.e. the lowest rank, not the first position.
    assert art.select_host(art.normalize_scores(raw), np.array([7, 3])) == 1
    assert art.select_host(art.normalize_scores(raw), np.array([3, 7])) == 0


# ---------------------------------------------------------------- GPU ids and the filter

def test_gpu_ids_on_the_chosen_node():
    assert art.alloc_exclusive([500, 1000, 0, 1000, 1000], art.PodRes(1000, 1000, 2)) == [1, 3]
    assert art.alloc_best_fit([500, 1000, 600, 500], art.PodRes(1000, 450, 1)) == [0]
    rng = random.Random(1)
    picks = {art.alloc_random([100, 1000, 600, 200], art.PodRes(1000, 500, 1), rng)[0] for _ in range(50)}
    assert picks == {1, 2}
    with pytest.raises(ValueError):
        art.alloc_exclusive([1000, 500], art.PodRes(1000, 1000, 2))
    assert art.sub_gpus(np.array([[500, 1000, 1000]]), art.PodRes(1000, 1000, 1)).tolist() == [[500, 0, 1000]]
    assert art.sub_gpus(np.array([[1000, 600, 300]]), art.PodRes(1000, 250, 1)).tolist() == [[1000, 600, 50]]


def test_filter_checks_cpu_memory_and_devices():
    nodes = [node("n0", 8, 2, 16 * 2**30), node("n1", 64, 2, 4 * 2**30), node("n2", 64, 1, 64 * 2**30)]
    cluster = art.ArtifactCluster(nodes, random.Random(0))
    cluster.gpus[2, 0] = 400  # n2's only device is partly used
    two = pod(cpu=4000, mem=8 * 1024, num_gpu=2, gpu_milli=1000)
    assert cluster.feasible(two, art.pod_res(two)).tolist() == [0]  # n1 lacks memory, n2 devices
    share = pod(cpu=16000, mem=1024, num_gpu=1, gpu_milli=300)
    assert cluster.feasible(share, art.pod_res(share)).tolist() == [1, 2]  # n0 lacks CPU
    too_big = pod(cpu=16000, mem=1024, num_gpu=1, gpu_milli=500)
    assert cluster.feasible(too_big, art.pod_res(too_big)).tolist() == [1]
    no_mem = art.ArtifactCluster(nodes, random.Random(0), with_memory=False)
    assert no_mem.feasible(two, art.pod_res(two)).tolist() == [0, 1]


# ---------------------------------------------------------------- a small replay

def test_replay_places_fails_and_measures_allocation():
    nodes = [node("a", 16, 2, 64 * 2**30), node("b", 16, 2, 64 * 2**30)]
    order = [pod("s1", num_gpu=1, gpu_milli=500), pod("s2", num_gpu=1, gpu_milli=500),
             pod("w", num_gpu=2, gpu_milli=1000), pod("big", num_gpu=2, gpu_milli=1000)]
    for policy in art.POLICIES:
        run = art.replay(order, nodes, policy, seed=1, workload=order)
        assert run.policy == f"artifact-{policy.lower()}"
        arrived = [r for r, _ in run.points]
        assert arrived == [12.5, 25.0, 75.0, 125.0]
        if policy != "Random":
            # Both packers put the two halves on one device, then the whole pair on the other node:
            # 3 of 4 GPUs; the second pair finds no node with two free devices.
            assert run.failed == 1 and run.points[-1][1] == 75.0
        # What arrived was either placed or failed.
        assert run.points[-1][1] + 100 * run.failed_gpu_milli / 4000 == 125.0


def test_replay_rejects_an_unknown_policy():
    with pytest.raises(ValueError):
        art.replay([], [node("a", 1, 1, 2**30)], "DotProd", seed=1, workload=[])
