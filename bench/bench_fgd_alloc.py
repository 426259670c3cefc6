"""GPU allocation on the FGD paper's openb traces: labq beside the published figures.

    python -m bench.bench_fgd_alloc [--quick] [--seeds N] [--traces default,cpu250,...]
                                    [--policies labq,priority,artifact-bestfit,artifact-fgd,artifact-random]
                                    [--no-memory] [--check-simulate]

The experiment of Weng et al., "Beware of Fragmentation" (USENIX ATC'23),
Fig. 9(a) and Figs. 11-14, as its artifact (hkust-adsl/kubernetes-scheduler-simulator,
experiments/run_scripts/generate_run_scripts.py -> scripts/generate_config_and_run.py
-> pkg/simulator) runs it, replayed through labq's own policy:

* cluster: the 1,213 GPU nodes of openb_node_list_gpu_node (6,212 GPUs), empty;
  CPU and memory are checked (Kubernetes' NodeResourcesFit filter), GPU per device;
* pods: the trace's pods, every phase, without their times (pod_csv_to_yaml.py
  leaves the creation/deletion annotations out): nothing ever ends;
* order: sorted by name, then shuffled with the run's seed (``--shuffle-pod=true``);
  then *tuned* to 1.3x the cluster's GPUs (``-tune 1.3``): pods drawn uniformly
  with replacement from the trace are appended until the next one would take the
  requested GPU total past 1.3 x 6,212 GPUs (a trace already over that loses
  randomly chosen pods instead), see pkg/simulator/simulator.go tuneUpPods;
* each pod is scheduled once, when it arrives; one that fits nowhere fails and
  is dropped (never retried);
* after each pod: allocated GPU (sum of GPU milli held) / all GPUs, against
  *arrived* GPU (requests of every pod so far, failed ones included) / all GPUs;
  the figure for "arrived X%" is the mean allocation over the pods after which
  round(arrived %) == X (experiments/analysis/merge_alloc_discrete.py);
* the paper's default-trace numbers (Random 87.5%, DotProd 90.9%, Packing 92.0%,
  BestFit 93.1%, FGD 95.4%) are that figure at arrived 130% (i.e. the end of the
  run), averaged over seeds 42-51; its bar charts (Figs. 11-14, the variants)
  plot arrived 100%.  Both are shown, from the artifact's
  experiments/analysis/expected_results/analysis_allo_discrete.csv
  (bench/data/fgd/published_alloc.csv).

labq side: the pods are fed one at a time to scheduler.virtual_cluster.VirtualCluster
(what ``labq simulate`` replays on), one virtual second apart, each with a
decision; a pod still pending after its decision is removed, as the artifact
drops it.  With nothing ever ending that changes no placement (a pod that fits
nowhere now never will), it only keeps the queue short.  ``--check-simulate``
replays each policy's first run through scheduler.simulator.simulate itself
(failed pods stay pending there) and compares the final allocation.

Two labq policies:

* ``labq``: labq as shipped, with fragmentation-aware placement
  (scheduler.policy.fragmentation): each pod goes where it adds the least
  fragmentation for the mix of shapes expected, a decayed count of the shapes
  that have arrived so far (``MixBook(simulator.MIX_HALF_LIFE)``, as
  scheduler.simulator passes it), the pending pod counted once more, with
  GPUs a node's free CPU and memory cannot feed counted as fragmented (beyond
  FGD), the change compared in FGD's score buckets; within a bucket the fullest GPU, the fewest whole
  GPUs left for a whole-GPU pod, a CPU-only pod off nodes with free GPUs, then
  a fixed node order (a hash of the node id; scheduler.policy.room).  The
  artifact's FGD takes its mix from the whole trace's shape popularity up
  front; labq only knows what has arrived.
* ``priority``: labq's best fit, the reference (labq's placement before
  fragmentation awareness; labq itself with ``fragmentation=False``).

The artifact's own policies, in this replay (``artifact-bestfit``,
``artifact-fgd``, ``artifact-random``): bench/fgd_artifact.py reimplements the
artifact's BestFit, FGD and Random scoring in Python (integer scores,
NormalizeScore, the typical pods from the whole trace file, the CPU/memory/GPU
filter, which GPU(s) on the node a pod gets, ties among equal scores to the
lowest-ranked node of a random node order fixed for the run, as the
artifact's fork of the Kubernetes scheduler does: see that module's
docstring) and runs it on the same arrival orders with the same metric.  They
are the fair comparison for labq's rows: where they match the published
figures, this replay matches the artifact's.  Their seeds give the same
arrival orders as labq's rows; their random draws (node order, Random's picks)
come from Python's random.Random, not Go's.

Not reproduced: Go's random stream (Python's random.Random(seed) draws the same
kinds of choices, not the same numbers), so no run here is the artifact's run
for the same seed, only one like it.  labq is deterministic: its seed only
changes the order.  GPU-type constraints (the gpuspec variants) have no labq
equivalent and are not run.
"""

from __future__ import annotations

import csv
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, fgd_artifact, fgd_traces
from bench.fgd_traces import MILLI, Pod

NAME = "fgd_alloc"
TITLE = "FGD paper's GPU allocation experiment (openb traces): labq beside the published policies"
TUNE = 1.3  # arrived GPU requests, as a multiple of the cluster's GPUs (-tune 1.3)
FIRST_SEED = 42  # the artifact's seeds are 42..51
PAPER_SEEDS = 10
TRACES = ["default", "cpu250", "gpushare100", "multigpu50"]
QUICK_TRACES = ["default", "cpu250", "multigpu50"]
POLICIES = ["labq", "priority", "artifact-bestfit", "artifact-fgd", "artifact-random"]
# The artifact's scoring (bench/fgd_artifact.py), reimplemented, replayed here: policy name -> its name there.
ARTIFACT = {"artifact-bestfit": "BestFit", "artifact-fgd": "FGD", "artifact-random": "Random"}
LABELS = {"labq": "labq (fragmentation-aware)", "priority": "labq best fit (priority policy)",
          **{name: f"artifact's {p}, reimplemented" for name, p in ARTIFACT.items()}}
PUBLISHED_ORDER = ["Random", "DotProd", "GpuClustering", "GpuPacking", "BestFit", "FGD"]
ARRIVED_POINTS = (100, 130)


# ---------------------------------------------------------------- the arrival order

def per_gpu_milli(pod: Pod) -> int:
    """The artifact's ``PodResource.MilliGpu``: GPU milli on each GPU, 0 for CPU-only."""
    return min(pod.gpu_milli, MILLI) if pod.num_gpu > 0 and pod.gpu_milli > 0 else 0


def arrival_order(pods: list[Pod], seed: int, capacity_milli: int, tune: float = TUNE) -> list[Pod]:
    """The pods in the order the artifact feeds them: shuffled, then tuned to
    ``tune`` x the cluster's GPU milli (simulator.go SortClusterPods and
    TunePodsByNodeTotalResource)."""
    rng = random.Random(seed)
    by_name = sorted(pods, key=lambda p: p.name)  # SetWorkloadPods: the pool tuning draws from
    order = list(by_name)
    rng.shuffle(order)
    total = sum(p.total_gpu_milli for p in order)
    target = tune * capacity_milli
    while total > target and order:  # tuneDownPods
        total -= order.pop(rng.randrange(len(order))).total_gpu_milli
    if total < target:  # tuneUpPods
        while True:
            pod = rng.choice(by_name)
            # As the artifact does, the stop test adds the per-GPU milli, not the
            # pod's total: a multi-GPU clone can overshoot a little, CPU-only
            # clones never stop it.
            if total + per_gpu_milli(pod) > target:
                break
            total += pod.total_gpu_milli
            order.append(pod)
    return order


# ---------------------------------------------------------------- one run

@dataclass
class Run:
    """One (trace, policy, seed): allocation after each pod against arrived GPU."""

    policy: str
    seed: int
    pods: int = 0
    failed: int = 0
    failed_gpu_milli: int = 0
    final_alloc: float = 0.0
    wall_s: float = 0.0
    points: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (arrived %, allocated %)

    def alloc_at(self, arrived_pct: int) -> float | None:
        """merge_alloc_discrete.py: mean allocation over the pods after which the
        arrived share rounds to ``arrived_pct``; failing that, within +-1."""
        exact = [a for r, a in self.points if round(r) == arrived_pct]
        near = exact or [a for r, a in self.points if arrived_pct - 1 <= round(r) <= arrived_pct + 1]
        return statistics.fmean(near) if near else None


def replay(order: list[Pod], nodes, policy_name: str, seed: int, with_memory: bool) -> Run:
    """Feed ``order`` to a VirtualCluster one pod per virtual second; drop the
    pods the policy leaves pending."""
    from scheduler import policy, simulator
    from scheduler.virtual_cluster import VirtualCluster

    # labq as shipped places by fragmentation for the shapes seen arrive (as
    # simulator._Replay sets it up); priority has no mix: best fit.
    mix_book = policy.MixBook(simulator.MIX_HALF_LIFE) if policy_name == "labq" else None
    cluster = VirtualCluster(nodes, nodes, policy_name=policy_name, queues=[policy.QueueConfig("default")],
                             half_life=policy.DEFAULT_HALF_LIFE, mix_book=mix_book)
    total_milli = cluster.capacity.gpu * MILLI
    run = Run(policy_name, seed, pods=len(order))
    arrived = 0
    started = time.perf_counter()
    for i, pod in enumerate(order):
        t = float(i)
        cluster.advance(t)
        cluster.arrive(fgd_traces.demand_of(pod, i, t, with_memory), None)
        cluster.decide(t)
        if i not in cluster.first_start:
            cluster.pending.remove(i)
            run.failed += 1
            run.failed_gpu_milli += pod.total_gpu_milli
        arrived += pod.total_gpu_milli
        run.points.append((100 * arrived / total_milli, 100 * cluster.alloc[0] / cluster.capacity.gpu))
    run.wall_s = time.perf_counter() - started
    run.final_alloc = run.points[-1][1] if run.points else 0.0
    return run


def check_with_simulate(order: list[Pod], nodes, policy_name: str, with_memory: bool) -> dict:
    """The same arrivals through scheduler.simulator.simulate (failed pods stay
    pending there): its allocation at the last arrival."""
    from scheduler import simulator

    shaped = nodes if with_memory else [simulator.node(n.node_id, n.cpu_total, n.gpu_total) for n in nodes]
    trace = [fgd_traces.job_of(pod, str(i), float(i), None) for i, pod in enumerate(order)]
    started = time.perf_counter()
    result = simulator.simulate(trace, shaped, policy_name)
    return {"gpu_alloc_final": 100 * (result.gpu_alloc_final or 0.0), "unplaced": result.unplaced,
            "wall_s": time.perf_counter() - started}


# ---------------------------------------------------------------- published figures

def published() -> dict[tuple[str, str], dict[str, float]]:
    """(trace, policy) -> the artifact's expected results (mean and sd over its 10 seeds)."""
    with open(fgd_traces.DATA / "published_alloc.csv", newline="", encoding="utf-8") as f:
        return {(r["workload"], r["policy"]): {k: float(v) for k, v in r.items() if k not in ("workload", "policy")}
                for r in csv.DictReader(f)}


# ---------------------------------------------------------------- the report

def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[Run]) -> dict:
    out: dict = {"seeds": [r.seed for r in runs], "wall_s": sum(r.wall_s for r in runs)}
    for pct in ARRIVED_POINTS:
        values = [v for v in (r.alloc_at(pct) for r in runs) if v is not None]
        out[f"alloc_at_{pct}_mean"], out[f"alloc_at_{pct}_sd"] = _mean_sd(values) if values else (None, None)
    out["final_alloc_mean"] = statistics.fmean(r.final_alloc for r in runs)
    out["pods_mean"] = statistics.fmean(r.pods for r in runs)
    out["failed_mean"] = statistics.fmean(r.failed for r in runs)
    return out


def _pct(mean: float | None, sd: float | None) -> str:
    return "–" if mean is None else f"{mean:.2f}% ± {sd:.2f}"


def trace_table(trace: str, ours: dict[str, dict], paper: dict) -> str:
    rows = []
    for name in PUBLISHED_ORDER:
        p = paper.get((trace, name))
        if p:
            rows.append([name, f"published ({p['seeds']:.0f} seeds)", _pct(p["alloc_at_130_mean"], p["alloc_at_130_sd"]),
                         _pct(p["alloc_at_100_mean"], p["alloc_at_100_sd"]), "–"])
    for name, s in ours.items():
        source = "artifact's scoring in this replay" if name in ARTIFACT else "labq, this run"
        rows.append([f"**{LABELS.get(name, name)}**", f"{source} ({len(s['seeds'])} seeds)",
                     _pct(s["alloc_at_130_mean"], s["alloc_at_130_sd"]),
                     _pct(s["alloc_at_100_mean"], s["alloc_at_100_sd"]), f"{s['failed_mean']:.0f} / {s['pods_mean']:.0f}"])
    return common.table(["policy", "source", "GPU alloc at arrived 130% (Fig. 9a, the table)",
                         "at arrived 100% (Figs. 11-14)", "failed / pods"], rows)


def utc_date() -> str:
    return subprocess.run(["date", "-u"], capture_output=True, text=True, check=False).stdout.strip()


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, help=f"seeds per trace and policy, from {FIRST_SEED} "
                                             f"(default 3, quick 1; the paper: {PAPER_SEEDS})")
    p.add_argument("--traces", help=f"comma-separated variants (default {','.join(TRACES)}; "
                                    f"available: {','.join(fgd_traces.available_variants())})")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help=f"policies to run: labq's (labq, priority) and the artifact's reimplemented "
                        f"({', '.join(ARTIFACT)}); default {','.join(POLICIES)}")
    p.add_argument("--no-memory", action="store_true", help="do not check memory (the artifact does)")
    p.add_argument("--check-simulate", action="store_true",
                   help="also replay each policy's first run through scheduler.simulator.simulate and compare")
    args = p.parse_args(argv)
    seeds = [FIRST_SEED + k for k in range(args.seeds or (1 if args.quick else 3))]
    traces = args.traces.split(",") if args.traces else (QUICK_TRACES if args.quick else TRACES)
    policies = args.policies.split(",")
    unknown = [name for name in policies if name.startswith("artifact-") and name not in ARTIFACT]
    if unknown:
        p.error(f"unknown artifact policies {unknown}; available: {', '.join(ARTIFACT)}")
    with_memory = not args.no_memory
    nodes = fgd_traces.load_nodes(with_memory=with_memory)
    capacity_milli = sum(n.gpu_total for n in nodes) * MILLI
    paper = published()
    started, date = time.perf_counter(), utc_date()
    data: dict = {"date_utc": date, "nodes": len(nodes), "gpus": capacity_milli // MILLI, "tune": TUNE,
                  "seeds": seeds, "memory_checked": with_memory, "traces": {}}
    sections = []
    for trace in traces:
        pods = fgd_traces.load_pods(trace)
        t0 = time.perf_counter()
        ours: dict[str, dict] = {}
        checks: list[dict] = []
        for policy_name in policies:
            runs = []
            for seed in seeds:
                order = arrival_order(pods, seed, capacity_milli)
                if policy_name in ARTIFACT:
                    runs.append(fgd_artifact.replay(order, nodes, ARTIFACT[policy_name], seed, pods, with_memory))
                    runs[-1].policy = policy_name
                    continue
                runs.append(replay(order, nodes, policy_name, seed, with_memory))
                if args.check_simulate and seed == seeds[0]:
                    checks.append({"policy": policy_name, "seed": seed, "replay_final": runs[-1].final_alloc,
                                   "replay_failed": runs[-1].failed,
                                   **check_with_simulate(order, nodes, policy_name, with_memory)})
            ours[policy_name] = summarize(runs)
            print(f"  {trace} {policy_name}: at 130% {_pct(ours[policy_name]['alloc_at_130_mean'], ours[policy_name]['alloc_at_130_sd'])}, "
                  f"{ours[policy_name]['wall_s']:.1f} s", flush=True)
        wall = time.perf_counter() - t0
        data["traces"][trace] = {"pods_in_file": len(pods), "gpu_spec_pods": fgd_traces.gpu_spec_jobs(pods),
                                 "requested_gpus": sum(p.total_gpu_milli for p in pods) / MILLI,
                                 "wall_s": wall, "labq": {k: v for k, v in ours.items() if k not in ARTIFACT},
                                 "artifact_reimplemented": {k: v for k, v in ours.items() if k in ARTIFACT},
                                 "check_simulate": checks,
                                 "published": {k[1]: v for k, v in paper.items() if k[0] == trace}}
        note = "".join(
            f"\n\nCross-check, {check['policy']} seed {check['seed']}: scheduler.simulator.simulate's GPU "
            f"alloc at the last arrival {check['gpu_alloc_final']:.2f}% vs this replay's final "
            f"{check['replay_final']:.2f}%; pods left pending there {check['unplaced']}, dropped here "
            f"{check['replay_failed']} ({check['wall_s']:.1f} s)." for check in checks)
        sections.append(f"### openb_pod_list_{trace}\n\n{len(pods):,} pods in the file, requesting "
                        f"{data['traces'][trace]['requested_gpus']:,.1f} GPUs; wall {wall:.1f} s for "
                        f"{len(policies)} policies x {len(seeds)} seeds.\n\n" + trace_table(trace, ours, paper) + note)
    total = time.perf_counter() - started
    data["wall_s"] = total
    md = (f"Date: {date}; commit {common.git_rev()}; wall {total:.1f} s.\n\n"
          f"Cluster: {len(nodes):,} GPU nodes, {capacity_milli // MILLI:,} GPUs (openb_node_list_gpu_node); "
          f"memory {'checked' if with_memory else 'not checked'}.  Pods shuffled (seeds {seeds[0]}..{seeds[-1]}), "
          f"tuned to {TUNE:g}x the GPUs, never ending, each tried once.  Allocation = GPUs held / all GPUs, "
          f"mean ± sd over seeds; 'published' = the artifact's expected results (seeds 42-51); "
          f"'artifact's ..., reimplemented' = the artifact's scoring ported to Python (bench/fgd_artifact.py), "
          f"run on the same arrival orders as labq.\n\n"
          + "\n\n".join(sections))
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
