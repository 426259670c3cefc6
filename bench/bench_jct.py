"""Job completion time on a public trace with real durations: labq beside FIFO,
greedy backfill and a shortest-job-first oracle.

    python -m bench.bench_jct [--quick] [--start-day 116] [--days 28] [--nodes 3] [--no-sweep]

Trace: openb_pod_list_default of the FGD paper's artifact (Alibaba, 2023; see
bench/data/fgd/README.md).  Its pods arrive over days 115-149 of the trace
(~220 a day; a handful earlier).  Jobs: the pods created in ``--days`` days
from day ``--start-day`` (default days 116-144: the four full weeks of the dense
part, 5,503 pods that ran), arriving at their creation time and running for
their real run time, deletion_time - scheduled_time.  Pods that never ran (no
scheduled_time) are left out; the few still running when the trace was taken
keep the run time seen so far.  Resources: the pod's cpu, GPU (a share of one
GPU, or whole GPUs) and memory.

Cluster: ``--nodes`` empty nodes of the openb type G3 (8 GPUs, 128 CPUs,
768 GiB), the trace's only node type that fits every pod (one asks 120 CPUs,
one 720 GiB).  Three by default (24 GPUs): the four weeks offer 630 GPU-days,
22.5 GPUs' worth a day, most of it in a busy week (days 137-144) and in a few
jobs that run for days, so jobs queue in bursts and the queue drains between
them.  Fewer nodes overload the cluster (the backlog, not the policy, sets the
JCT), more leave it idle (every policy alike): the sweep (``--no-sweep`` skips
it) shows the ratios at 2, 3 and 4 nodes.

Variants, each through scheduler.simulator's replay (``labq simulate``):

* ``fifo``: submission order, the first job that does not fit blocks the rest;
* ``greedy``: labq's ``priority`` policy with all priorities equal: submission
  order, a job that does not fit is skipped (greedy backfill);
* ``sjf oracle``: the same policy with each job's priority set from its true
  duration, shortest first (priority = jobs - rank; the policy starts higher
  priorities first): non-preemptive SJF with greedy backfill, knowing what no
  scheduler knows;
* ``labq``: the default policy as shipped, learning run times as jobs end (the
  trace has one user, one queue, no time limits and no stages to predict from)
  and ordering by them (``stretch``; reservations from predicted ends are off
  by default, DurationBook ``reserve_after=None``), placing by fragmentation
  for the mix of shapes seen so far (``MixBook(simulator.MIX_HALF_LIFE)``, as
  the simulator sets it up); no preemption (the default queue has no tiers);
* ``labq, no predictions``: the same with ``stretch=None`` (submission and
  priority order only), to separate that part;
* ``labq + tiers``: labq with least-attained-service tiers,
  ``QueueConfig("default", tiers=(3600.0,), max_preemptions=1)``: a job that
  has had less than one GPU-hour goes ahead of those past it and may preempt
  one of them (each job is preempted at most once); a preempted job resumes
  from its checkpoint with a restart cost of 60 s (``restart_cost``; the
  preemptive variants only, the others never preempt);
* ``labq + preemption``: labq with shortest-expected-remaining-first
  preemption, ``QueueConfig("default", preempt_longer=8, max_preemptions=3)``:
  a job that cannot fit may preempt running jobs expected to run 8 times longer
  than it (what each is expected to have left is the median of what the past
  runs like it that lasted longer than it has run had left: policy.durations),
  8 doubling with each preemption a job has had, at most 3; the same 60 s
  restart cost.  Like everything labq does here, it knows only the run times of
  the jobs that have ended.

Reported per variant: average and p95 (nearest rank) JCT = finish - submission,
average and p95 wait, preemptions; then labq/greedy and labq/oracle, and the
same for labq + tiers and labq + preemption (average JCT), and each over greedy
at p95.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, fgd_traces

NAME = "jct"
TITLE = "JCT on the openb trace with real durations: labq, FIFO, greedy backfill, SJF oracle"
DAY = 86400.0
START_DAY, DAYS, NODES = 116, 28, 3
QUICK_DAYS = 7
SWEEP_NODES = (2, 3, 4)
G3 = {"cpu": 128.0, "gpus": 8, "memory_mib": 786432}  # openb node type G3
TIERS = (3600.0,)  # GPU-seconds of attained service: one GPU-hour
MAX_PREEMPTIONS = 1
PREEMPT_LONGER = 8.0  # labq + preemption: preempt jobs expected to run 8x longer
LONGER_MAX_PREEMPTIONS = 3
RESTART_COST = 60.0  # seconds a preempted job loses on resuming (the preemptive variants)
_DEFAULT = object()  # "the simulator's default" for a replay keyword


@dataclass(frozen=True)
class Variant:
    """One row: a policy, its queues, how it rewrites the trace first (the
    oracle's priorities), labq's ``stretch`` if not the simulator's default, and
    the restart cost of a preempted job."""

    name: str
    policy: str
    queues: list | None = None
    prepare: Callable[[list], list] | None = None
    stretch: Any = _DEFAULT
    restart_cost: float = 0.0


def sjf_priorities(trace: list) -> list:
    """Each job's priority from its true duration: the shortest gets the highest."""
    ranked = sorted(range(len(trace)), key=lambda i: (trace[i].duration, trace[i].submit_time, i))
    priority = [0] * len(trace)
    for rank, i in enumerate(ranked):
        priority[i] = len(trace) - rank
    return [dataclasses.replace(job, priority=priority[i]) for i, job in enumerate(trace)]


def variants() -> list[Variant]:
    """The rows; labq + tiers with TIERS and MAX_PREEMPTIONS (``--tiers``, ``--max-preemptions``)."""
    from scheduler.policy import QueueConfig

    return [
        Variant("fifo", "fifo"),
        Variant("greedy", "priority"),
        Variant("sjf oracle", "priority", prepare=sjf_priorities),
        Variant("labq", "labq"),
        Variant("labq, no predictions", "labq", stretch=None),
        Variant("labq + tiers", "labq",
                queues=[QueueConfig("default", tiers=TIERS, max_preemptions=MAX_PREEMPTIONS)],
                restart_cost=RESTART_COST),
        Variant("labq + preemption", "labq",
                queues=[QueueConfig("default", preempt_longer=PREEMPT_LONGER,
                                    max_preemptions=LONGER_MAX_PREEMPTIONS)],
                restart_cost=RESTART_COST),
    ]


def cluster(count: int) -> list:
    from scheduler.simulator import node

    return [node(f"g3-{i}", G3["cpu"], G3["gpus"], G3["memory_mib"] * fgd_traces.MiB) for i in range(count)]


def run_variant(trace: list, nodes: list, v: Variant) -> dict:
    """Replay through the simulator's own replay, keeping each job's finish for the p95."""
    from scheduler import simulator

    jobs = v.prepare(trace) if v.prepare else trace
    extra = {} if v.stretch is _DEFAULT else {"stretch": v.stretch}
    started = time.perf_counter()
    # _Replay is what simulator.simulate runs; used directly because SimResult
    # has the average JCT but not the per-job finishes a p95 needs.
    replay = simulator._Replay(jobs, nodes, v.policy, v.queues, simulator.DEFAULT_HALF_LIFE,
                               restart_cost=v.restart_cost, **extra)
    alloc_final = replay.run()
    wall = time.perf_counter() - started
    result = simulator._result(replay, alloc_final, wall)
    jcts = [replay.finish[j] - jobs[j].submit_time for j in replay.finish]
    waits = [replay.first_start[j] - jobs[j].submit_time for j in replay.first_start]
    return {"policy": v.policy, "restart_cost": v.restart_cost, "avg_jct": result.avg_jct, "p95_jct": common.percentile(jcts, 95),
            "avg_wait": result.avg_wait, "p95_wait": common.percentile(waits, 95), "finished": result.finished,
            "unplaced": result.unplaced, "makespan": result.makespan, "gpu_util": result.gpu_util,
            "preempted": result.preempted, "decisions": result.decisions, "wall_s": wall}


def compare(trace: list, nodes: list, verbose: bool = False) -> dict[str, dict]:
    results = {}
    for v in variants():
        results[v.name] = r = run_variant(trace, nodes, v)
        if verbose:
            print(f"  {v.name}: avg JCT {_h(r['avg_jct'])}, p95 {_h(r['p95_jct'])}, {r['wall_s']:.1f} s", flush=True)
    return results


def ratios(results: dict[str, dict]) -> dict[str, float]:
    greedy, oracle = results["greedy"], results["sjf oracle"]
    out = {}
    for name in ("labq", "labq + tiers", "labq + preemption"):
        label = name if name == "labq" else f"({name})"
        out[f"{label}/greedy avg JCT"] = common.ratio(results[name]["avg_jct"], greedy["avg_jct"])
        out[f"{label}/oracle avg JCT"] = common.ratio(results[name]["avg_jct"], oracle["avg_jct"])
    for name in ("labq", "labq + tiers", "labq + preemption"):
        label = name if name == "labq" else f"({name})"
        out[f"{label}/greedy p95 JCT"] = common.ratio(results[name]["p95_jct"], greedy["p95_jct"])
    return out


def _h(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 3600:.2f} h"


def results_table(trace: list, results: dict[str, dict]) -> str:
    rows = [[name, r["policy"], _h(r["avg_jct"]), _h(r["p95_jct"]), _h(r["avg_wait"]), _h(r["p95_wait"]),
             f"{r['finished']}/{len(trace)}", f"{r['makespan'] / DAY:.1f} d", str(r["preempted"]),
             f"{r['wall_s']:.2f}"]
            for name, r in results.items()]
    return common.table(["variant", "policy", "avg JCT", "p95 JCT", "avg wait", "p95 wait", "finished",
                         "makespan", "preempted", "replay s"], rows)


def sweep(trace: list, sizes: tuple[int, ...], known: dict[int, dict[str, dict]]) -> dict[int, dict]:
    """The ratios (and the raw averages) at each cluster size; ``known``: sizes already run."""
    out = {}
    for n in sizes:
        results = known.get(n) or compare(trace, cluster(n))
        out[n] = {"ratios": ratios(results), "avg_jct": {k: r["avg_jct"] for k, r in results.items()},
                  "p95_jct": {k: r["p95_jct"] for k, r in results.items()}}
        print(f"  sweep, {n} nodes: " + ", ".join(f"{k} {v:.3f}" for k, v in out[n]["ratios"].items()), flush=True)
    return out


def sweep_table(data: dict[int, dict]) -> str:
    names = [v.name for v in variants()]
    rows = [[f"{n} x G3 ({n * G3['gpus']} GPUs)", *(_h(d["avg_jct"][k]) for k in names),
             *(f"{x:.3f}" for x in d["ratios"].values())] for n, d in data.items()]
    return common.table(["cluster", *(f"{k} avg JCT" for k in names), *next(iter(data.values()))["ratios"]], rows)


def main(argv: list[str] | None = None) -> dict:
    global TIERS, MAX_PREEMPTIONS, PREEMPT_LONGER
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--start-day", type=float, default=START_DAY, help=f"window start, day of the trace (default {START_DAY})")
    p.add_argument("--days", type=float, help=f"window length in days (default {DAYS}, quick {QUICK_DAYS})")
    p.add_argument("--nodes", type=int, default=NODES, help=f"G3 nodes (8 GPUs each; default {NODES})")
    p.add_argument("--no-sweep", action="store_true", help=f"skip the runs at {SWEEP_NODES} nodes (quick skips them)")
    p.add_argument("--tiers", help="labq + tiers: thresholds of attained GPU time, e.g. 12h or 1h,8h (default 1h)")
    p.add_argument("--max-preemptions", type=int, default=MAX_PREEMPTIONS,
                   help=f"labq + tiers: preemptions per job at most (default {MAX_PREEMPTIONS})")
    p.add_argument("--preempt-longer", type=float, default=PREEMPT_LONGER,
                   help=f"labq + preemption: preempt jobs expected to run X times longer (default {PREEMPT_LONGER:g})")
    args = p.parse_args(argv)
    PREEMPT_LONGER = args.preempt_longer
    if args.tiers:
        from scheduler.units import parse_duration

        TIERS = tuple(sorted(parse_duration(t.strip()) for t in args.tiers.split(",")))
    MAX_PREEMPTIONS = args.max_preemptions
    days = args.days or (QUICK_DAYS if args.quick else DAYS)
    pods = fgd_traces.load_pods("default")
    trace = fgd_traces.timed_jobs(pods, args.start_day * DAY, (args.start_day + days) * DAY)
    date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=False).stdout.strip()
    started = time.perf_counter()
    results = compare(trace, cluster(args.nodes), verbose=True)
    main_ratios = ratios(results)
    swept = {} if args.quick or args.no_sweep else sweep(trace, SWEEP_NODES, {args.nodes: results})
    total = time.perf_counter() - started
    gpu_days = sum(j.gpu * j.duration for j in trace) / DAY
    md = (f"Date: {date}; commit {common.git_rev()}; wall {total:.1f} s.\n\n"
          f"Trace: openb_pod_list_default, pods created on days {args.start_day:g}-{args.start_day + days:g} "
          f"that ran: {len(trace):,} jobs offering {gpu_days:.1f} GPU-days "
          f"({gpu_days / days:.1f} GPUs' worth a day of the window).  Cluster: {args.nodes} x G3 "
          f"({args.nodes * G3['gpus']} GPUs, {args.nodes * G3['cpu']:g} CPUs).  labq + tiers: tiers "
          f"{', '.join(f'{t:g}' for t in TIERS)} GPU-s, max_preemptions {MAX_PREEMPTIONS}, restart cost "
          f"{RESTART_COST:g} s for a preempted job; labq + preemption: preempt_longer {PREEMPT_LONGER:g}, "
          f"max_preemptions {LONGER_MAX_PREEMPTIONS}, the same restart cost (the other variants never preempt).\n\n"
          + results_table(trace, results)
          + "\n\n" + "; ".join(f"{k}: **{v:.3f}**" for k, v in main_ratios.items()) + "."
          + (f"\n\nThe same trace on other cluster sizes:\n\n{sweep_table(swept)}" if swept else ""))
    data = {"date_utc": date, "start_day": args.start_day, "days": days, "nodes": args.nodes, "node_type": G3,
            "jobs": len(trace), "gpu_days": gpu_days, "results": results, "ratios": main_ratios,
            "sweep": swept, "wall_s": total}
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
