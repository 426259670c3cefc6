"""The FGD artifact's own node scoring and GPU selection, reimplemented in
Python, for the allocation replay of bench/bench_fgd_alloc.py.

Ported from hkust-adsl/kubernetes-scheduler-simulator at commit 8f3d641 (the
commit bench/data/fgd/ was copied from).  What the artifact's experiment
(experiments/run_scripts/expected_run_scripts_0511.sh -> scripts/generate_config_and_run.py)
configures, and what this module reproduces of it:

* **filter**: Kubernetes' NodeResourcesFit (CPU and memory *requests*, and the
  node's 1001-pod limit; GPUs are annotations, not requests) plus the
  Open-Gpu-Share filter (pkg/simulator/plugin/open_gpu_share.go Filter ->
  pkg/type/open-gpu-share/cache/gpunodeinfo.go AllocateGpuId): a GPU pod needs
  a GPU-type match (gpu_spec) and, per GPU it asks, a device with at least its
  per-GPU milli free (the two-pointer walk: ``sum(free // milli) >= count``).
  A pod whose gpu milli is 0 passes as CPU-only.
* **scores** (one score plugin at weight 1000, every other score plugin
  disabled; the weight does not change the ranking):

  - ``BestFit`` (pkg/simulator/plugin/best_fit_score.go getBestFitScore):
    ``int64((1 - (0.5 (cpu_free - cpu_req) / 128000 + 0.5 (gpu_free - gpu_req) / 8000)) * 100)``,
    GPU as the node's total free milli; then NormalizeScore
    (plugin_utils.go): integer min-max rescale to 0..100 over the feasible
    nodes (all 0 when they are all equal).
  - ``FGD`` (fgd_score.go calculateGpuShareFragExtendScore):
    ``int64(sigmoid((frag(before) - frag(after)) / 1000) * 100)``, frag =
    pkg/utils/frag.go NodeGpuShareFragAmountScore against the typical pods;
    no normalization (ScoreExtensions nil).  A GPU-sharing pod is tried on
    every device with room, and the node's score is the best device's.
  - ``Random`` (random_score.go): PreScore draws one feasible node uniformly;
    it scores 100, the rest 0.

* **frag** (frag.go NodeGpuShareFragAmount, GetNodePodFrag): for each typical
  pod (weight = its popularity), the node's free GPU milli counts as fragment
  unless the node can host it (CPU *and* enough devices with its per-GPU milli:
  then only the devices too small for it count).  A CPU-only typical pod counts
  *all* the node's free GPU milli (its category, "xl_satisfied" or
  "xr_lack_cpu", is summed with the rest: FragAmountSumExceptQ3 only leaves
  out q3_satisfied).  Memory is not part of it.  The categories are summed as
  Go sums them (per category in typical-pod order, then the categories in
  index order), so that equal fragments compare equal.
* **typical pods** (frag.go GetTypicalPods, with the artifact's
  ``--pod-popularity-threshold 95 --pod-increase-step 1 --is-involved-cpu-pods
  true --gpu-res-weight 0``): the whole trace file's pods (SetWorkloadPods,
  before tuning) counted by shape (non-zero CPU request, per-GPU milli, GPU
  count, GPU type), most popular first, cut where the cumulative count first
  reaches 95%, renormalised.
* **the node chosen** (the artifact's fork of k8s v1.20.5,
  vendor/k8s.io/kubernetes/pkg/scheduler/core/generic_scheduler.go selectHost):
  the highest summed score; ties go to the *lexicographically smallest node
  name*, and simulator.go syncClusterResourceList names nodes
  ``"%04d-" + name`` with ``rand.Perm``: a random rank per node, fixed for the
  whole run.  So ties are broken by a fixed random node order (not a fresh
  draw per pod, which upstream k8s does and the fork comments out).  Python's
  random.Random draws the permutation (not Go's numbers).
* **the GPU(s) on that node** (Open-Gpu-Share Reserve, gpuSelMethod):
  BestFit runs with ``-gpusel best`` by default (allocateGpuIdBasedOnBestFit:
  the device with the least free milli that fits, lowest index on ties);
  FGD with its own (allocateGpuIdBasedOnFGDScore: the lowest-index device with
  the best *integer* score); Random with ``-gpusel random`` (uniform among the
  devices that fit).  Whole-GPU pods take the lowest-index free devices
  (AllocateExclusiveGpuId) under all three.

The tie-break matters to FGD: its integer score puts many nodes on the same
value (a point is about 40 GPU milli of fragment change near 0), and the fixed
node order then packs like first fit among them.  Measured here (default
trace, seeds 42-44, at arrived 130%): as ported 95.37%; with exact (float)
scores 94.52%; with a fresh random draw among the tied nodes for each pod
(upstream Kubernetes' selectHost) 89.95%; ties to the first node by name
95.16%.  BestFit moves by under 0.1 point under any of these.

Not reproduced: Go's random stream; what the Kubernetes machinery around it
(informers, caches) might do beyond this; GPU-sharing multi-GPU pods (none in
the openb traces; rejected here).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from bench.fgd_traces import MILLI, MiB, Pod

MAX_NODE_SCORE = 100  # framework.MaxNodeScore
MIN_NODE_SCORE = 0
MAX_SPEC_CPU = 128_000  # gpushareutils.MaxSpecCpu (milli)
MAX_SPEC_GPU = 8_000  # gpushareutils.MaxSpecGpu (milli)
DEFAULT_MILLI_CPU_REQUEST = 100  # schedulerutil.GetNonzeroRequests, for a pod asking no CPU
MAX_PODS_PER_NODE = 1001  # data/node_yaml: allocatable pods
POPULARITY_THRESHOLD = 95  # generate_config_and_run.py --pod-popularity-threshold
INCREASE_STEP = 1  # --pod-increase-step
POLICIES = ("BestFit", "FGD", "Random")
MAX_GPUS = 8  # simontype.MaxNumGpuPerNode

# frag.go FragRatioDataMap: the categories, in the order FragAmountSumExceptQ3 sums them.
Q1_LACK_BOTH, Q2_LACK_GPU, Q3_SATISFIED, Q4_LACK_CPU, XL_SATISFIED, XR_LACK_CPU, NO_ACCESS = range(7)


# ---------------------------------------------------------------- pods

@dataclass(frozen=True, order=True)
class PodRes:
    """simontype.PodResource: what the artifact's scoring sees of a pod."""

    milli_cpu: int
    milli_gpu: int  # per GPU, 0..1000
    gpu_number: int
    gpu_type: str = ""  # allowed GPU models joined by "|"; "" = any

    @property
    def total_milli_gpu(self) -> int:
        return self.milli_gpu * self.gpu_number

    @property
    def is_gpu_share(self) -> bool:
        return self.gpu_number == 1 and self.milli_gpu < MILLI

    def less(self, other: PodRes) -> bool:
        """PodResource.Less (MilliCpu, MilliGpu, GpuNumber, GpuType)."""
        return (self.milli_cpu, self.milli_gpu, self.gpu_number, self.gpu_type) < (
            other.milli_cpu, other.milli_gpu, other.gpu_number, other.gpu_type)


def pod_res(pod: Pod) -> PodRes:
    """utils.GetPodResource of the pod data/pod_csv_to_yaml.py writes for this row:
    GPU annotations only when num_gpu != 0, gpu-milli clipped to 0..1000; the
    non-zero CPU request (100m when none is asked)."""
    milli_cpu = pod.cpu_milli if pod.cpu_milli > 0 else DEFAULT_MILLI_CPU_REQUEST
    if pod.num_gpu == 0:
        return PodRes(milli_cpu, 0, 0)
    milli_gpu = pod.gpu_milli if 0 < pod.gpu_milli <= MILLI else (MILLI if pod.gpu_milli > MILLI else 0)
    return PodRes(milli_cpu, milli_gpu, pod.num_gpu, pod.gpu_spec)


def typical_pods(pods: Iterable[Pod], threshold: int = POPULARITY_THRESHOLD, step: int = INCREASE_STEP,
                 involve_cpu_pods: bool = True, gpu_res_weight: float = 0.0) -> list[tuple[PodRes, float]]:
    """frag.go GetTypicalPods: the most popular pod shapes of the workload,
    covering ``threshold``% of it, as (shape, share) with the shares summing to 1."""
    counts: dict[PodRes, float] = {}
    total = 0.0
    for pod in pods:
        res = pod_res(pod)
        if not involve_cpu_pods and res.gpu_number == 0:
            continue
        weighted = 1.0
        if gpu_res_weight > 0 and res.milli_gpu == MILLI:
            weighted = 1 + res.gpu_number * gpu_res_weight
        counts[res] = counts.get(res, 0.0) + weighted
        total += weighted
    # SortTargetPodInDecreasingCount: sort.Reverse of (Percentage, then PodResource.Less).
    ordered = sorted(counts.items(), key=lambda item: (item[1], (item[0].milli_cpu, item[0].milli_gpu,
                                                                 item[0].gpu_number, item[0].gpu_type)),
                     reverse=True)
    expected = threshold * total / 100.0
    i = n_res = 0
    cum = 0.0
    shares = [count for _, count in ordered]
    while cum < expected:
        n_res += step
        while i < n_res and i < len(ordered):
            cum += shares[i]
            shares[i] /= total
            i += 1
        if i >= len(ordered):
            break  # (Go would spin here if rounding kept cum < expected; it cannot at 95%)
    if i >= len(ordered):
        return [(res, shares[k]) for k, (res, _) in enumerate(ordered)]
    return [(ordered[k][0], shares[k] / (cum / total)) for k in range(i)]


# ---------------------------------------------------------------- fragmentation

class Typical:
    """The typical pods, laid out for computing frag.go's
    NodeGpuShareFragAmountScore of many node states at once."""

    def __init__(self, typical: Sequence[tuple[PodRes, float]]):
        self.pods = list(typical)
        self.millis = sorted({res.milli_gpu for res, _ in self.pods if res.milli_gpu > 0})

    def frag(self, cpu_left: np.ndarray, gpus: np.ndarray, gpu_type: np.ndarray | None = None) -> np.ndarray:
        """FragAmountSumExceptQ3 of NodeGpuShareFragAmount for each row: ``cpu_left``
        (R,) milli, ``gpus`` (R, G) free milli per device (missing devices as 0),
        ``gpu_type`` (R,) node GPU models (only read for typed typical pods)."""
        gpus = np.asarray(gpus, dtype=np.int64)
        cpu_left = np.asarray(cpu_left, dtype=np.int64)
        rows = gpus.shape[0]
        total = gpus.sum(axis=1).astype(np.float64)  # GetGpuMilliLeftTotal
        ge = {m: (gpus >= m).sum(axis=1) for m in self.millis}  # CanNodeHostPodOnGpuMemory counts
        lt = {m: np.where(gpus < m, gpus, 0).sum(axis=1).astype(np.float64) for m in self.millis}  # GetGpuFragMilli...
        data = np.zeros((7, rows), dtype=np.float64)
        for res, freq in self.pods:
            cpu_ok = cpu_left >= res.milli_cpu
            if res.milli_gpu == 0:  # GetNodePodFrag: XL / XR, all free GPU is fragment
                data[XL_SATISFIED] += np.where(cpu_ok, freq * total, 0.0)
                data[XR_LACK_CPU] += np.where(cpu_ok, 0.0, freq * total)
                continue
            if res.gpu_type:
                access = np.array([_accessible(t, res.gpu_type) for t in gpu_type]) if gpu_type is not None \
                    else np.ones(rows, dtype=bool)
            else:
                access = None
            can = ge[res.milli_gpu] >= res.gpu_number
            q3 = can & cpu_ok
            amount_q3_frag = freq * lt[res.milli_gpu]
            amount_all = freq * total
            if access is not None:
                data[NO_ACCESS] += np.where(access, 0.0, amount_all)
                q3 &= access
                can = can & access
                cpu_ok_acc = cpu_ok & access
                cpu_lack_acc = ~cpu_ok & access
            else:
                cpu_ok_acc, cpu_lack_acc = cpu_ok, ~cpu_ok
            # Q3: the devices too small go to Q2 (the rest is q3, never summed);
            # Q2 / Q4 / Q1: everything free.
            data[Q2_LACK_GPU] += np.where(q3, amount_q3_frag, np.where(~can & cpu_ok_acc, amount_all, 0.0))
            data[Q4_LACK_CPU] += np.where(can & cpu_lack_acc, amount_all, 0.0)
            data[Q1_LACK_BOTH] += np.where(~can & cpu_lack_acc, amount_all, 0.0)
        out = np.zeros(rows, dtype=np.float64)
        for k in (Q1_LACK_BOTH, Q2_LACK_GPU, Q4_LACK_CPU, XL_SATISFIED, XR_LACK_CPU, NO_ACCESS):
            out = out + data[k]
        return out


def _accessible(node_type: str, pod_type: str) -> bool:
    """utils.IsNodeAccessibleToPodByType."""
    if not pod_type:
        return True
    if not node_type:
        return False
    wanted = [t for t in pod_type.split("|") if t]
    return not wanted or node_type in wanted


def _sigmoid_score(delta: np.ndarray) -> np.ndarray:
    """int64(sigmoid(delta / 1000) * MaxNodeScore), as Go truncates."""
    return (1.0 / (1.0 + np.exp(-(delta / 1000.0))) * float(MAX_NODE_SCORE)).astype(np.int64)


def sub_gpus(gpus: np.ndarray, pod: PodRes) -> np.ndarray:
    """NodeResource.Sub's GPU part for each row: the pod's devices taken from the
    smallest sufficient ones (ascending stable order).  Rows must fit."""
    out = np.array(gpus, dtype=np.int64, copy=True)
    if pod.gpu_number == 0 or pod.milli_gpu == 0:
        return out
    if pod.milli_gpu == MILLI:  # only full devices qualify; the lowest-index ones among equals
        full = out >= MILLI
        take = full & (np.cumsum(full, axis=1) <= pod.gpu_number)
        out[take] -= MILLI
        return out
    for r in range(out.shape[0]):  # a GPU share (gpu_number 1): the tightest device
        row = out[r]
        order = sorted(range(len(row)), key=lambda j: row[j])
        left = pod.gpu_number
        for j in order:
            if pod.milli_gpu <= row[j]:
                row[j] -= pod.milli_gpu
                left -= 1
                if left <= 0:
                    break
    return out


def fgd_scores(cpu_left: np.ndarray, gpus: np.ndarray, pod: PodRes, typical: Typical,
               frag_now: np.ndarray | None = None, gpu_type: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """fgd_score.go calculateGpuShareFragExtendScore for each (feasible) node row:
    (score, device index for a GPU-sharing pod, else -1)."""
    cpu_left = np.asarray(cpu_left, dtype=np.int64)
    gpus = np.asarray(gpus, dtype=np.int64)
    if frag_now is None:
        frag_now = typical.frag(cpu_left, gpus, gpu_type)
    rows = gpus.shape[0]
    if not pod.is_gpu_share:
        after = typical.frag(cpu_left - pod.milli_cpu, sub_gpus(gpus, pod), gpu_type)
        return _sigmoid_score(frag_now - after), np.full(rows, -1, dtype=np.int64)
    # A share: every device with room, in index order; the first with the best integer score wins.
    rr, jj = np.nonzero(gpus >= pod.milli_gpu)
    cand = gpus[rr].copy()
    cand[np.arange(len(rr)), jj] -= pod.milli_gpu
    after = typical.frag(cpu_left[rr] - pod.milli_cpu, cand, None if gpu_type is None else gpu_type[rr])
    cand_score = _sigmoid_score(frag_now[rr] - after)
    score = np.full(rows, MIN_NODE_SCORE, dtype=np.int64)  # no device with room: the filter keeps it out
    gpu = np.full(rows, -1, dtype=np.int64)
    if rr.size:
        # np.nonzero walks row-major: rows ascend, and within a row the device
        # indices; Go keeps the first device with the row's maximum.
        starts = np.flatnonzero(np.r_[True, rr[1:] != rr[:-1]])
        row_max = np.maximum.reduceat(cand_score, starts)
        group = np.cumsum(np.r_[True, rr[1:] != rr[:-1]]) - 1
        at_max = np.flatnonzero(cand_score == row_max[group])
        _, first = np.unique(rr[at_max], return_index=True)
        pick = at_max[first]
        score[rr[pick]] = cand_score[pick]
        gpu[rr[pick]] = jj[pick]
    return score, gpu


def best_fit_scores(cpu_left: np.ndarray, gpus: np.ndarray, pod: PodRes) -> np.ndarray:
    """best_fit_score.go getBestFitScore for each (feasible) node row, before NormalizeScore."""
    free_cpu = np.asarray(cpu_left, dtype=np.float64)
    free_gpu = np.asarray(gpus, dtype=np.int64).sum(axis=1).astype(np.float64)
    score = 0.0 + (free_cpu - float(pod.milli_cpu)) / MAX_SPEC_CPU * 0.5
    score = score + (free_gpu - float(pod.total_milli_gpu)) / MAX_SPEC_GPU * 0.5
    return ((1.0 - score) * float(MAX_NODE_SCORE)).astype(np.int64)


def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """plugin_utils.go NormalizeScore: integer min-max rescale to MinNodeScore..MaxNodeScore."""
    scores = np.asarray(scores, dtype=np.int64)
    if scores.size == 0:
        return scores
    lowest, highest = int(scores.min()), int(scores.max())
    if highest == lowest:
        return np.full_like(scores, MIN_NODE_SCORE)
    return (scores - lowest) * (MAX_NODE_SCORE - MIN_NODE_SCORE) // (highest - lowest) + MIN_NODE_SCORE


def select_host(scores: np.ndarray, ranks: np.ndarray) -> int:
    """generic_scheduler.go selectHost (the artifact's fork): the position of the
    highest score; among equals, the smallest name, i.e. the lowest rank."""
    scores = np.asarray(scores)
    best = np.flatnonzero(scores == scores.max())
    return int(best[np.argmin(np.asarray(ranks)[best])])


# ---------------------------------------------------------------- GPU ids on the chosen node

def alloc_exclusive(gpus: Sequence[int], pod: PodRes) -> list[int]:
    """simontype.AllocateExclusiveGpuId: the lowest-index fully free devices."""
    need, ids = pod.total_milli_gpu, []
    for j, left in enumerate(gpus):
        if need <= 0:
            break
        if left == MILLI:
            ids.append(j)
            need -= MILLI
    if need > 0:
        raise ValueError("not enough free GPUs")
    return ids


def alloc_best_fit(gpus: Sequence[int], pod: PodRes) -> list[int]:
    """open_gpu_share.go allocateGpuIdBasedOnBestFit."""
    if pod.milli_gpu < MILLI:
        cand = -1
        for j, left in enumerate(gpus):
            if left >= pod.milli_gpu and (cand == -1 or left < gpus[cand]):
                cand = j
        return [cand] if cand >= 0 else []
    return alloc_exclusive(gpus, pod)


def alloc_random(gpus: Sequence[int], pod: PodRes, rng: random.Random) -> list[int]:
    """open_gpu_share.go allocateGpuIdBasedOnRandomFit (reservoir over the devices that fit)."""
    if pod.milli_gpu < MILLI:
        chosen, seen = -1, 0
        for j, left in enumerate(gpus):
            if left >= pod.milli_gpu:
                seen += 1
                if rng.randrange(seen) == 0:
                    chosen = j
        return [chosen] if chosen >= 0 else []
    return alloc_exclusive(gpus, pod)


# ---------------------------------------------------------------- the cluster

class ArtifactCluster:
    """Nodes as the artifact's scheduler sees them: free CPU/memory, free milli
    per GPU device, a fixed random rank for selectHost's ties."""

    def __init__(self, nodes, rank_rng: random.Random, with_memory: bool = True,
                 gpu_models: dict[str, str] | None = None):
        """``nodes``: labq policy.Node records (bench.fgd_traces.load_nodes), in
        any order: they are sorted by name first, as syncClusterResourceList does."""
        nodes = sorted(nodes, key=lambda n: n.node_id)
        self.names = [n.node_id for n in nodes]
        self.cpu_left = np.array([round(n.cpu_total * MILLI) for n in nodes], dtype=np.int64)
        self.mem_left = np.array([n.memory_total // MiB for n in nodes], dtype=np.int64)
        self.with_memory = with_memory
        width = max([len(n.gpu_free) for n in nodes] + [1])
        self.gpus = np.zeros((len(nodes), width), dtype=np.int64)
        for i, n in enumerate(nodes):
            self.gpus[i, :len(n.gpu_free)] = MILLI
        self.num_gpus = np.array([len(n.gpu_free) for n in nodes], dtype=np.int64)
        self.pods = np.zeros(len(nodes), dtype=np.int64)
        models = gpu_models or {}
        self.gpu_type = np.array([models.get(n.node_id, "") for n in nodes], dtype=object)
        # "%04d-" + name with rand.Perm: node i's rank is perm[i].
        perm = list(range(len(nodes)))
        rank_rng.shuffle(perm)
        self.rank = np.array(perm, dtype=np.int64)
        self.capacity_milli = int(self.num_gpus.sum()) * MILLI
        self.allocated_milli = 0

    def feasible(self, pod: Pod, res: PodRes) -> np.ndarray:
        """Indices of the nodes passing NodeResourcesFit and Open-Gpu-Share's filter."""
        ok = (self.cpu_left >= pod.cpu_milli) & (self.pods < MAX_PODS_PER_NODE)
        if self.with_memory:
            ok &= self.mem_left >= pod.memory_mib
        if res.milli_gpu > 0 and res.gpu_number > 0:
            ok &= self.num_gpus > 0
            ok &= (self.gpus // res.milli_gpu).sum(axis=1) >= res.gpu_number
            if res.gpu_type:
                ok &= np.array([_accessible(t, res.gpu_type) for t in self.gpu_type])
        return np.flatnonzero(ok)

    def place(self, i: int, pod: Pod, res: PodRes, gpu_ids: Sequence[int]) -> None:
        self.cpu_left[i] -= pod.cpu_milli
        self.mem_left[i] -= pod.memory_mib
        self.pods[i] += 1
        if res.milli_gpu > 0 and res.gpu_number > 0:
            if len(gpu_ids) != res.gpu_number:
                raise RuntimeError(f"GPU ids {gpu_ids} for {res}")
            for j in gpu_ids:
                if self.gpus[i, j] < res.milli_gpu:
                    raise RuntimeError(f"device {j} of {self.names[i]} lacks room for {res}")
                self.gpus[i, j] -= res.milli_gpu
            self.allocated_milli += res.total_milli_gpu


def replay(order: Sequence[Pod], nodes, policy: str, seed: int, workload: Sequence[Pod],
           with_memory: bool = True, gpu_models: dict[str, str] | None = None):
    """Schedule ``order`` one pod at a time with the artifact's ``policy``
    (BestFit, FGD, Random), each tried once; the typical pods come from
    ``workload`` (the trace file's pods, before shuffling and tuning).
    Returns a bench.bench_fgd_alloc.Run."""
    from bench.bench_fgd_alloc import Run

    if policy not in POLICIES:
        raise ValueError(f"unknown artifact policy {policy!r}; one of {POLICIES}")
    cluster = ArtifactCluster(nodes, random.Random(f"artifact-node-names-{seed}"), with_memory, gpu_models)
    rng = random.Random(f"artifact-{policy}-{seed}")  # RandomScore's PreScore draws, gpusel random
    typical = Typical(typical_pods(workload))
    typed = any(res.gpu_type for res, _ in typical.pods)
    frag_now = typical.frag(cluster.cpu_left, cluster.gpus, cluster.gpu_type if typed else None) \
        if policy == "FGD" else None
    run = Run(f"artifact-{policy.lower()}", seed, pods=len(order))
    arrived = 0
    started = time.perf_counter()
    for pod in order:
        res = pod_res(pod)
        if res.gpu_number > 1 and 0 < res.milli_gpu < MILLI:
            raise ValueError(f"a multi-GPU share pod {pod.name}: not in the openb traces, not ported")
        arrived += pod.total_gpu_milli
        feasible = cluster.feasible(pod, res)
        if feasible.size == 0:
            run.failed += 1
            run.failed_gpu_milli += pod.total_gpu_milli
        else:
            gpu_choice = None
            if policy == "Random":
                i = int(feasible[np.argsort(cluster.rank[feasible])][rng.randrange(feasible.size)])
            elif policy == "BestFit":
                scores = normalize_scores(best_fit_scores(cluster.cpu_left[feasible], cluster.gpus[feasible], res))
                i = int(feasible[select_host(scores, cluster.rank[feasible])])
            else:
                types = cluster.gpu_type[feasible] if typed else None
                scores, gpu_choice = fgd_scores(cluster.cpu_left[feasible], cluster.gpus[feasible], res, typical,
                                                frag_now[feasible], types)
                k = select_host(scores, cluster.rank[feasible])
                i = int(feasible[k])
                gpu_choice = int(gpu_choice[k])
            gpu_ids: list[int] = []
            if res.milli_gpu > 0 and res.gpu_number > 0:
                row = cluster.gpus[i, :cluster.num_gpus[i]].tolist()
                if policy == "BestFit":
                    gpu_ids = alloc_best_fit(row, res)
                elif policy == "Random":
                    gpu_ids = alloc_random(row, res, rng)
                else:  # allocateGpuIdBasedOnFGDScore: the scoring's own device, else exclusive ids
                    gpu_ids = [gpu_choice] if res.is_gpu_share else alloc_exclusive(row, res)
            cluster.place(i, pod, res, gpu_ids)
            if frag_now is not None:
                frag_now[i] = typical.frag(cluster.cpu_left[i:i + 1], cluster.gpus[i:i + 1],
                                           cluster.gpu_type[i:i + 1] if typed else None)[0]
        run.points.append((100 * arrived / cluster.capacity_milli, 100 * cluster.allocated_milli / cluster.capacity_milli))
    run.wall_s = time.perf_counter() - started
    run.final_alloc = run.points[-1][1] if run.points else 0.0
    return run


def sigmoid(x: float) -> float:
    """plugin_utils.go sigmoid (scalar; for tests and reading)."""
    return 1.0 / (1.0 + math.exp(-x))
