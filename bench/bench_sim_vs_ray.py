"""Simulator vs real Ray: one mixed fractional-GPU trace, replayed by `labq
simulate` and run for real by labq's scheduler on a local Ray with logical GPUs.

    python bench/bench_sim_vs_ray.py [--quick] [--no-md] [--seed N] [--runs N]

The trace (seeded): bursts of alike jobs (one user, one shape each, as a sweep
is) from 3 users arriving over ~20 s; shapes 0.25, 0.5 and 1 GPU and CPU-only,
cpu 0.25-1; each job sleeps 2-8 s.  One node: 4 logical GPUs, 8 logical CPUs
(the jobs only sleep, so Ray's CPUs are declared beyond the machine's 2 cores).

* Real: a local Ray of our own, labq's real Scheduler running loop.run in a
  thread (poll_interval 0.05 s), each burst submitted at its time through
  scheduler.api.submit (one spec with a sweep per burst, user = the burst's
  user, queue default).  From the store: each attempt's dispatch (labq books the
  job from here), the job body's start and end (the worker's clock), when labq
  recorded it, and the GPU ids Ray assigned (ray.get_gpu_ids() in the worker).
* Simulated: the same trace through scheduler.simulator.simulate, policy labq,
  on the same one-node cluster: (a) the prediction: trace times and the sleep
  durations; (b) a replay of what happened: the real submit times and each
  job's measured hold (dispatch -> recorded) as its duration.  (b) isolates
  the policy (the same decisions on the same inputs) from the per-job overhead
  that (a) does not know about.

Measures (times from the first submission): makespan = last end; GPU util =
GPU-seconds held / (4 x makespan); wait = submit -> start (real: dispatch, and
also the job body starting); JCT = submit -> end (real: recorded).

Packing: labq's policy picks a GPU index for every GPU job and books it; Ray
picks the GPU itself (labq pins only the node), so the two can differ.
Reported: how often they agree; how long labq's per-GPU loads differed from
Ray's real packing (compared sorted, so a mere renaming of GPUs is no
difference); the peak allocation per GPU in labq's plan, in Ray's assignment
while bodies ran (over 1.0 would be a bug), and in Ray's assignment from labq's
dispatch on (over 1.0: Ray had to hold back a job labq had placed); and whether
a whole-GPU job waited for dispatch while a GPU was wholly free, in labq's books
and in Ray's real packing.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "sim_vs_ray"
TITLE = "Simulator vs real Ray: a mixed fractional-GPU trace"
GPUS = 4
CPUS = 8
POLL = 0.05
USERS = ["ana", "ben", "chen"]
USER_WEIGHTS = [0.5, 0.3, 0.2]
SHAPES = [(0.25, 0.35), (0.5, 0.30), (1.0, 0.20), (0.0, 0.15)]  # (gpu, probability)
CPU_CHOICES = [0.25, 0.5, 1.0]
WARM_UP = [("svr-warm-cpu", 0.0), ("svr-warm-gpu", 0.25)]
TOLERANCE = 0.10  # the claim: real within 10% of the simulator
GAP_S = 0.25  # a whole-GPU job "waited while a GPU was free" only if longer than this (a pass and a poll)

JOB_MODULE = '''\
"""The trace's jobs: sleep the trace's duration."""
import time


def sleep_for(ctx):
    seconds = float(ctx.params["durations"][str(ctx.params["job"])])
    time.sleep(seconds)
    return {"slept": seconds}
'''


@dataclass(frozen=True)
class Burst:
    index: int
    at: float
    user: str
    gpu: float
    cpu: float
    jobs: list  # TraceJob


# ---------------------------------------------------------------- the trace

def make_trace(seed: int, bursts: int, window: float) -> list[Burst]:
    """``bursts`` bursts of 3-7 alike jobs arriving over ``window`` seconds."""
    from scheduler.simulator import TraceJob

    rng = random.Random(seed)
    times = sorted(round(rng.uniform(0, window), 2) for _ in range(bursts - 1))
    # Every shape appears, about in proportion: a seed must not leave out whole-GPU jobs.
    shapes = [g for g, p in SHAPES for _ in range(max(1, round(p * bursts)))]
    shapes = (shapes * 2)[:bursts]
    rng.shuffle(shapes)
    out = []
    next_id = 0
    for b, at in enumerate([0.0] + times):
        user = rng.choices(USERS, USER_WEIGHTS)[0]
        gpu = shapes[b]
        cpu = rng.choice(CPU_CHOICES)
        jobs = []
        for _ in range(rng.randint(3, 7)):
            jobs.append(TraceJob(job_id=str(next_id), submit_time=at, duration=round(rng.uniform(2, 8), 2), cpu=cpu,
                                 gpu=gpu, user=user))
            next_id += 1
        out.append(Burst(b, at, user, gpu, cpu, jobs))
    return out


def write_specs(code: Path, bursts: list[Burst]) -> list[Path]:
    """One spec per burst (a sweep over the burst's job ids), all written before
    the first submit so that every submit snapshots the same code package."""
    import yaml

    code.mkdir(parents=True, exist_ok=True)
    (code / "simjobs.py").write_text(JOB_MODULE)
    paths = []
    for b in bursts:
        resources: dict[str, float] = {"cpu": b.cpu}
        if b.gpu:
            resources["gpu"] = b.gpu
        spec = {"experiment": f"svr-b{b.index}", "queue": "default",
                "stages": [{"name": "s", "run": "simjobs:sleep_for",
                            "params": {"durations": {j.job_id: j.duration for j in b.jobs}},
                            "sweep": {"grid": {"job": [j.job_id for j in b.jobs]}},
                            "resources": resources}]}
        path = code / f"burst{b.index}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        paths.append(path)
    for name, gpu in WARM_UP:
        resources = {"cpu": 0.25, **({"gpu": gpu} if gpu else {})}
        spec = {"experiment": name, "stages": [{"name": "s", "run": "simjobs:sleep_for",
                                                "params": {"durations": {"w": 0.1}, "job": "w"},
                                                "resources": resources}]}
        (code / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return paths


# ---------------------------------------------------------------- the real run

def real_run(temp: Path, bursts: list[Burst], specs: list[Path], timeout: float) -> dict[str, Any]:
    """Submit each burst at its time to a real in-process scheduler; return one
    record per trace job with the store's timings, Ray's GPU ids and labq's plan."""
    from scheduler import api
    from scheduler.store import Store

    home = temp / "home"
    sched, stop, thread, settings = common.scheduler_in_thread(home, poll_interval=POLL)
    planned: dict[int, tuple[int, ...]] = {}  # attempt id -> GPU indices the policy chose
    launch = sched._launch

    def recording_launch(attempt, job, placement, now):
        planned[attempt.id] = tuple(placement.gpu_indices)
        return launch(attempt, job, placement, now)

    sched._launch = recording_launch  # before any job exists: the loop thread sees it on its first launch
    store = Store(home)
    submits: list[dict[str, Any]] = []
    try:
        _warm_up(specs[0].parent, store, settings)
        t0 = time.time() + 0.5
        for b, spec in zip(bursts, specs):
            delay = t0 + b.at - time.time()
            if delay > 0:
                time.sleep(delay)
            called = time.time()
            sub = api.submit(spec, [], settings, user=b.user)
            submits.append({"burst": b.index, "experiment_id": sub.experiment_id, "job_ids": sub.job_ids,
                            "late_s": called - (t0 + b.at), "call_s": time.time() - called})
        for s in submits:
            common.wait_experiment(store, s["experiment_id"], timeout=max(10.0, timeout - (time.time() - t0)))
        records = _records(store, submits, planned)
    finally:
        stop.set()
        thread.join(timeout=30)
        store.close()
    return {"records": records, "submits": submits}


def _warm_up(code: Path, store, settings) -> None:
    """A CPU job and a GPU job of the same code package first (not counted): the
    first task pays for unpacking the package on the node, which no trace job should."""
    from scheduler import api

    for name, _ in WARM_UP:
        sub = api.submit(code / f"{name}.yaml", [], settings, user="warmup")
        common.wait_experiment(store, sub.experiment_id, timeout=120)


def _records(store, submits: list[dict[str, Any]], planned: dict[int, tuple[int, ...]]) -> list[dict[str, Any]]:
    out = []
    for s in submits:
        for job in store.jobs_of_experiment(s["experiment_id"]):
            attempts = store.attempts(job.id)
            a = attempts[-1]
            out.append({"trace_id": str(job.params["job"]), "job_id": job.id, "user": job.user, "state": job.state.value,
                        "attempts": len(attempts), "cpu": job.cpu, "gpu": job.gpu, "gpu_share": a.gpu_share,
                        "submitted": job.submitted_at, "dispatched": a.dispatched_at, "started": a.started_at,
                        "ended": a.ended_at, "recorded": job.ended_at, "node": a.node_id,
                        "ray_gpu_ids": [int(g) for g in a.gpu_ids], "planned_gpus": list(planned.get(a.id, ())),
                        "duration": float(job.params["durations"][str(job.params["job"])])})
    return out


# ---------------------------------------------------------------- measures

def real_measures(records: list[dict[str, Any]]) -> dict[str, Any]:
    t0 = min(r["submitted"] for r in records)
    makespan = max(r["recorded"] for r in records) - t0
    body_makespan = max(r["ended"] for r in records) - t0

    def gpus(r: dict[str, Any]) -> float:
        return r["gpu"] if r["gpu"] <= 1 else float(r["gpu"])

    held = sum(gpus(r) * (r["recorded"] - r["dispatched"]) for r in records)
    body = sum(gpus(r) * (r["ended"] - r["started"]) for r in records)
    nominal = sum(gpus(r) * r["duration"] for r in records)
    n = len(records)
    return {
        "jobs": n, "succeeded": sum(r["state"] == "succeeded" for r in records),
        "makespan": makespan, "makespan_body": body_makespan,
        "gpu_util": held / (GPUS * makespan), "gpu_util_body": body / (GPUS * makespan),
        "gpu_util_nominal": nominal / (GPUS * makespan),
        "avg_wait": sum(r["dispatched"] - r["submitted"] for r in records) / n,
        "avg_wait_body": sum(r["started"] - r["submitted"] for r in records) / n,
        "avg_jct": sum(r["recorded"] - r["submitted"] for r in records) / n,
        "avg_jct_body": sum(r["ended"] - r["submitted"] for r in records) / n,
    }


def overheads(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a job's hold (dispatch -> recorded) goes beyond its sleep."""
    parts: dict[str, list[float]] = {"launch": [], "overrun": [], "record": [], "hold_extra": []}
    by_kind: dict[str, list[float]] = {"cpu-only": [], "fractional GPU": [], "whole GPU": []}
    for r in records:
        launch = r["started"] - r["dispatched"]
        parts["launch"].append(launch)
        parts["overrun"].append(r["ended"] - r["started"] - r["duration"])
        parts["record"].append(r["recorded"] - r["ended"])
        parts["hold_extra"].append(r["recorded"] - r["dispatched"] - r["duration"])
        kind = "cpu-only" if not r["gpu"] else ("whole GPU" if r["gpu"] >= 1 else "fractional GPU")
        by_kind[kind].append(launch)
    out: dict[str, Any] = {k: {"mean": sum(v) / len(v), "p50": common.percentile(v, 50),
                               "p95": common.percentile(v, 95)} for k, v in parts.items()}
    # How fast Ray brought job bodies up while any job was starting: the union of
    # the dispatch -> start intervals, and the jobs started in it.
    spans = sorted((r["dispatched"], r["started"]) for r in records)
    busy, end = 0.0, float("-inf")
    for s, e in spans:
        if e > end:
            busy += e - max(s, end)
            end = e
    out["starting_s"] = busy
    out["starts_per_s"] = len(records) / busy if busy else None
    out["launch_by_kind"] = {k: {"n": len(v), "mean": sum(v) / len(v) if v else None,
                                 "p50": common.percentile(v, 50) if v else None} for k, v in by_kind.items()}
    return out


def simulate(trace: list, queues) -> Any:
    from scheduler import simulator

    return simulator.simulate(trace, [simulator.node("node", CPUS, GPUS)], "labq", queues=queues)


def replay_trace(records: list[dict[str, Any]], trace: list) -> list:
    """The trace as it happened: real submit offsets, each job's measured hold as its duration."""
    by_id = {r["trace_id"]: r for r in records}
    t0 = min(r["submitted"] for r in records)
    return [replace(j, submit_time=by_id[j.job_id]["submitted"] - t0,
                    duration=by_id[j.job_id]["recorded"] - by_id[j.job_id]["dispatched"]) for j in trace]


# ---------------------------------------------------------------- packing

def _peak(intervals: list[tuple[float, float, float]]) -> float:
    """Peak of the summed share over time; an interval ending when another starts does not overlap it."""
    events = sorted([(s, 1, share) for s, e, share in intervals] + [(e, 0, -share) for s, e, share in intervals])
    level = peak = 0.0
    for _, _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def _free_gpu_time(window: tuple[float, float], busy: dict[int, list[tuple[float, float]]], cpu_ok=None) -> float:
    """Seconds within ``window`` during which at least one GPU had nothing on it."""
    lo, hi = window
    if hi <= lo:
        return 0.0
    cuts = {lo, hi}
    for ivs in busy.values():
        for s, e in ivs:
            if lo < s < hi:
                cuts.add(s)
            if lo < e < hi:
                cuts.add(e)
    points = sorted(cuts)
    free = 0.0
    for a, b in zip(points, points[1:]):
        mid = (a + b) / 2
        idle = any(not any(s <= mid < e for s, e in busy.get(g, [])) for g in range(GPUS))
        if idle and (cpu_ok is None or cpu_ok(mid)):
            free += b - a
    return free


def packing(records: list[dict[str, Any]]) -> dict[str, Any]:
    gpu_jobs = [r for r in records if r["gpu"]]
    frac = [r for r in gpu_jobs if r["gpu"] < 1]
    whole = [r for r in gpu_jobs if r["gpu"] >= 1]
    agree_frac = sum(r["planned_gpus"] == r["ray_gpu_ids"] for r in frac)
    agree_whole = sum(r["planned_gpus"] == r["ray_gpu_ids"] for r in whole)
    # Per GPU, three timelines: Ray's assignment while the job body ran (Ray held
    # it at least that long); Ray's assignment from labq's dispatch to the body's
    # end (Ray allocates a task's resources before it starts the worker, so this
    # is about what Ray held: Ray cannot overbook, so a peak over 1 here would mean
    # Ray queued a task labq thought had room); labq's plan while labq held it.
    body_iv: dict[int, list] = {g: [] for g in range(GPUS)}
    held_iv: dict[int, list] = {g: [] for g in range(GPUS)}
    plan_iv: dict[int, list] = {g: [] for g in range(GPUS)}
    for r in gpu_jobs:
        share = min(1.0, r["gpu_share"] or r["gpu"])
        for g in r["ray_gpu_ids"]:
            body_iv[g].append((r["started"], r["ended"], share))
            held_iv[g].append((r["dispatched"], r["ended"], share))
        for g in r["planned_gpus"]:
            plan_iv[g].append((r["dispatched"], r["recorded"], share))
    peaks = {name: {g: _peak(ivs) for g, ivs in iv.items()}
             for name, iv in (("ray_body", body_iv), ("ray_held", held_iv), ("plan", plan_iv))}
    over = {name: [g for g, p in pk.items() if p > 1 + 1e-6] for name, pk in peaks.items()}
    # Disagreements that only swap GPUs between alike jobs labq started in one pass
    # (Ray hands a scheduling key's queued tasks to its leases in the order their
    # workers come up, not in launch order), and the rest.
    groups: dict[tuple, list] = {}
    for r in gpu_jobs:
        groups.setdefault((r["dispatched"], r["gpu"]), []).append(r)
    swapped = 0
    for rs in groups.values():
        wrong = [r for r in rs if r["planned_gpus"] != r["ray_gpu_ids"]]
        if wrong and sorted(g for r in rs for g in r["planned_gpus"]) == sorted(g for r in rs for g in r["ray_gpu_ids"]):
            swapped += len(wrong)
    # labq's books against Ray's real packing at each dispatch: the same per-GPU
    # loads up to the GPUs' names is all a placement needs.
    moments = sorted({r["dispatched"] for r in gpu_jobs})

    def loads(key: str, t: float) -> list[float]:
        v = [0.0] * GPUS
        for r in gpu_jobs:
            if r["dispatched"] <= t < r["recorded"]:
                for g in r[key]:
                    v[g] += min(1.0, r["gpu_share"] or r["gpu"])
        return sorted(round(x, 6) for x in v)

    differ = [t for t in moments if loads("planned_gpus", t + 1e-6) != loads("ray_gpu_ids", t + 1e-6)]
    cuts = sorted({r["dispatched"] for r in gpu_jobs} | {r["recorded"] for r in gpu_jobs})
    differ_s = sum(b - a for a, b in zip(cuts, cuts[1:])
                   if loads("planned_gpus", (a + b) / 2) != loads("ray_gpu_ids", (a + b) / 2))
    # Whole-GPU jobs waiting for dispatch while a GPU was wholly free and the node
    # had the job's CPUs: in labq's books (the policy's doing), and in Ray's real
    # packing (what labq's books missed).  Both over labq's hold, dispatch -> recorded.
    plan_busy = {g: [(s, e) for s, e, _ in ivs] for g, ivs in plan_iv.items()}
    ray_busy: dict[int, list] = {g: [] for g in range(GPUS)}
    for r in gpu_jobs:
        for g in r["ray_gpu_ids"]:
            ray_busy[g].append((r["dispatched"], r["recorded"]))

    def cpu_free_at(t: float) -> float:
        return CPUS - sum(r["cpu"] for r in records if r["dispatched"] <= t < r["recorded"])

    whole_rows = []
    for r in whole:
        window = (r["submitted"], r["dispatched"])
        cpu_ok = (lambda t, need=r["cpu"]: cpu_free_at(t) >= need - 1e-9)
        whole_rows.append({"trace_id": r["trace_id"], "wait_dispatch": r["dispatched"] - r["submitted"],
                           "wait_in_ray": r["started"] - r["dispatched"],
                           "labq_free_gpu_s": _free_gpu_time(window, plan_busy, cpu_ok),
                           "ray_free_gpu_s": _free_gpu_time(window, ray_busy, cpu_ok)})
    missed = [w for w in whole_rows if w["ray_free_gpu_s"] > GAP_S]
    return {
        "fractional_jobs": len(frac), "fractional_agree": agree_frac,
        "whole_jobs": len(whole), "whole_agree": agree_whole, "swapped_in_pass": swapped,
        "dispatch_moments": len(moments), "books_differ_at": len(differ), "books_differ_s": differ_s,
        "gpu_span_s": cuts[-1] - cuts[0] if cuts else 0.0,
        "first_differ_s": (differ[0] - min(r["submitted"] for r in records)) if differ else None,
        "peaks": peaks, "over_1": over,
        "whole": whole_rows,
        "whole_waited_labq_gpu_free": sum(w["labq_free_gpu_s"] > GAP_S for w in whole_rows),
        "whole_waited_ray_gpu_free": len(missed),
        "whole_ray_gpu_free_s": sum(w["ray_free_gpu_s"] for w in missed),
        "whole_ray_gpu_free_max_s": max((w["ray_free_gpu_s"] for w in missed), default=0.0),
        "whole_max_wait_in_ray": max((w["wait_in_ray"] for w in whole_rows), default=None),
        "disagreements": [{"trace_id": r["trace_id"], "gpu": r["gpu"], "planned": r["planned_gpus"],
                           "ray": r["ray_gpu_ids"]} for r in gpu_jobs if r["planned_gpus"] != r["ray_gpu_ids"]],
    }


def launch_by_concurrency(records: list[dict[str, Any]]) -> list[list[Any]]:
    """Dispatch -> body start against how many jobs were starting at that moment
    (dispatched, body not yet begun, itself included): the cost of starting Ray
    worker processes side by side on 2 cores."""
    buckets: dict[str, list[float]] = {}
    for r in records:
        k = sum(1 for o in records if o["dispatched"] <= r["dispatched"] < o["started"])
        key = "1" if k <= 1 else "2-3" if k <= 3 else "4-7" if k <= 7 else "8+"
        buckets.setdefault(key, []).append(r["started"] - r["dispatched"])
    return [[k, len(v), sum(v) / len(v), max(v)] for k, v in sorted(buckets.items(), key=lambda kv: kv[0])]


# ---------------------------------------------------------------- main

def _row(label: str, makespan: float, util: float, wait: float, jct: float) -> list[Any]:
    return [label, makespan, util, wait, jct]


def one_run(run: int, trace_bursts: list[Burst], trace: list, queues) -> dict[str, Any]:
    with common.local_ray(num_cpus=CPUS, num_gpus=GPUS) as temp:
        specs = write_specs(temp / "code", trace_bursts)
        t_start = time.time()
        real = real_run(temp, trace_bursts, specs, timeout=240)
        wall = time.time() - t_start
    records = real["records"]
    m = real_measures(records)
    sim = simulate(trace, queues)
    rep = simulate(replay_trace(records, trace), queues)
    extra = overheads(records)["hold_extra"]["mean"]
    with_startup = simulate([replace(j, duration=j.duration + extra) for j in trace], queues)
    return {"run": run, "wall_s": wall, "real": m, "sim": sim.to_json(), "replay": rep.to_json(),
            "overheads": overheads(records), "packing": packing(records), "records": records,
            "launch_concurrency": launch_by_concurrency(records), "with_startup": with_startup.to_json(),
            "submits": real["submits"]}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(runs: list[dict[str, Any]], trace: list, bursts: list[Burst], load: float) -> tuple[str, dict[str, Any]]:
    parts = []
    shapes: dict[str, int] = {}
    for j in trace:
        key = "cpu-only" if not j.gpu else f"{j.gpu:g} GPU"
        shapes[key] = shapes.get(key, 0) + 1
    gpu_work = sum(j.gpu * j.duration for j in trace)
    parts.append(
        f"Trace: {len(trace)} jobs in {len(bursts)} bursts from {len(USERS)} users over {max(b.at for b in bursts):.0f} s "
        f"({', '.join(f'{v} x {k}' for k, v in sorted(shapes.items()))}), sleeps 2-8 s, cpu 0.25-1; "
        f"{gpu_work:.0f} GPU-s of work. One node, {GPUS} logical GPUs, {CPUS} logical CPUs; labq's real loop, "
        f"poll_interval {POLL} s; policy labq; load avg before the first run {load:.2f}. Times in seconds from the "
        f"first submission.")
    parts.append(
        "Rows: the simulator's prediction; the real run as labq booked it (a job holds its resources from dispatch "
        "until its end is recorded, which is what the simulator models) and as the job bodies ran; the simulator "
        "again with every sleep lengthened by the run's mean start-up (calibrated on the run itself, so not a "
        "prediction); and a replay of the real run (its submit times, each job's measured hold as its duration). "
        "Real = replay means labq's live loop and the simulator make the same decisions on the same inputs; "
        "real vs prediction is then the cost the simulator does not model: starting each job on Ray.")
    for res in runs:
        r, s, p, w = res["real"], res["sim"], res["replay"], res["with_startup"]
        o = res["overheads"]
        rows = [
            _row("simulated (trace times, sleep durations)", s["makespan"], s["gpu_util"], s["avg_wait"], s["avg_jct"]),
            _row("real: labq's books (dispatch -> recorded)", r["makespan"], r["gpu_util"], r["avg_wait"], r["avg_jct"]),
            _row("real: job bodies (start -> end)", r["makespan_body"], r["gpu_util_body"], r["avg_wait_body"],
                 r["avg_jct_body"]),
            _row("real / simulated (books)", common.ratio(r["makespan"], s["makespan"]),
                 common.ratio(r["gpu_util"], s["gpu_util"]), common.ratio(r["avg_wait"], s["avg_wait"]),
                 common.ratio(r["avg_jct"], s["avg_jct"])),
            _row(f"simulated, each sleep + {o['hold_extra']['mean']:.2f} s (this run's mean start-up; calibrated)",
                 w["makespan"], w["gpu_util"], w["avg_wait"], w["avg_jct"]),
            _row("simulated replay (real submit times, measured holds)", p["makespan"], p["gpu_util"], p["avg_wait"],
                 p["avg_jct"]),
            _row("real / replay", common.ratio(r["makespan"], p["makespan"]), common.ratio(r["gpu_util"], p["gpu_util"]),
                 common.ratio(r["avg_wait"], p["avg_wait"]), common.ratio(r["avg_jct"], p["avg_jct"])),
        ]
        within = {k: abs(common.ratio(r[k], s[k]) - 1) <= TOLERANCE for k in ("makespan", "gpu_util")}
        within_replay = {k: abs(common.ratio(r[k], p[k]) - 1) <= TOLERANCE
                         for k in ("makespan", "gpu_util", "avg_wait", "avg_jct")}
        kinds = o["launch_by_kind"]
        pk = res["packing"]
        parts.append(f"**Run {res['run']}** ({r['succeeded']}/{r['jobs']} jobs succeeded, {res['wall_s']:.0f} s wall; "
                     f"submits late by at most {max(x['late_s'] for x in res['submits']) * 1000:.0f} ms):\n\n"
                     + common.table(["", "makespan", "GPU util", "avg wait", "avg JCT"], rows))
        parts.append(
            f"Within {TOLERANCE:.0%} of the prediction: makespan {'yes' if within['makespan'] else 'no'}, GPU util "
            f"{'yes' if within['gpu_util'] else 'no'}; of the replay: "
            + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in within_replay.items()) + ". "
            f"Per job, labq holds its resources {o['hold_extra']['mean']:.2f} s longer than the sleep (mean; p95 "
            f"{o['hold_extra']['p95']:.2f}): dispatch -> body start {o['launch']['mean']:.2f} s (cpu-only "
            f"{_f(kinds['cpu-only']['mean'])}, fractional GPU {_f(kinds['fractional GPU']['mean'])}, whole GPU "
            f"{_f(kinds['whole GPU']['mean'])}), sleep overrun {o['overrun']['mean']:.3f} s, body end -> recorded "
            f"{o['record']['mean']:.3f} s. Some job was starting during {o['starting_s']:.0f} s of the run, at "
            f"{_f(o['starts_per_s'])} job starts/s.")
        disagree = pk["disagreements"]
        over = sorted({g for gs in pk["over_1"].values() for g in gs})
        parts.append(
            "Dispatch -> job body start by how many jobs were starting at once (a job reuses an idle Ray worker of "
            "its code package when there is one; on real GPUs, not these logical ones, each GPU job gets a fresh "
            "worker):\n\n"
            + common.table(["jobs starting at once", "jobs", "mean s", "max s"], res["launch_concurrency"]))
        disagree_n = len(disagree)
        parts.append(
            f"Packing: labq's planned GPU = the GPU Ray assigned for {pk['fractional_agree']}/{pk['fractional_jobs']} "
            f"fractional jobs and {pk['whole_agree']}/{pk['whole_jobs']} whole-GPU jobs"
            + (f"; of the {disagree_n} that differ, {pk['swapped_in_pass']} only swapped GPUs with an alike job "
               f"started in the same pass" if disagree_n else "") + ". "
            f"labq's per-GPU loads (its books) differ from Ray's real packing (even with the GPUs renamed) at "
            f"{pk['books_differ_at']} of {pk['dispatch_moments']} dispatch moments and for {pk['books_differ_s']:.0f} s "
            f"of the {pk['gpu_span_s']:.0f} s that GPU jobs ran"
            + (f", first at {pk['first_differ_s']:.1f} s" if pk['first_differ_s'] is not None else "") + ". "
            f"Peak allocation per GPU: Ray's assignment while job bodies ran: {_peaks(pk['peaks']['ray_body'])}; "
            f"Ray's assignment from dispatch to body end: {_peaks(pk['peaks']['ray_held'])}; labq's plan while held: "
            f"{_peaks(pk['peaks']['plan'])}" + (f" — OVER 1.0 on GPU {over}" if over else " (none over 1.0)") + ". "
            f"Whole-GPU jobs that waited > {GAP_S} s for dispatch while a GPU was wholly free and the CPUs were free: "
            f"in labq's books {pk['whole_waited_labq_gpu_free']}/{pk['whole_jobs']}; in Ray's real packing "
            f"{pk['whole_waited_ray_gpu_free']}/{pk['whole_jobs']}"
            + (f" (up to {pk['whole_ray_gpu_free_max_s']:.1f} s each, {pk['whole_ray_gpu_free_s']:.0f} job-s in all)"
               if pk['whole_waited_ray_gpu_free'] else "")
            + f"; longest dispatch -> start of a whole-GPU job {_f(pk['whole_max_wait_in_ray'])} s."
            + (" Disagreements (job, GPU share: planned -> Ray): "
               + ", ".join(f"{d['trace_id']} ({d['gpu']:g}): {d['planned']}->{d['ray']}" for d in disagree[:12])
               + (" ..." if len(disagree) > 12 else "") if disagree else ""))
    first = runs[0]
    summary = {"real_over_sim_makespan": [common.ratio(x["real"]["makespan"], x["sim"]["makespan"]) for x in runs],
               "real_over_sim_gpu_util": [common.ratio(x["real"]["gpu_util"], x["sim"]["gpu_util"]) for x in runs],
               "real_over_replay_makespan": [common.ratio(x["real"]["makespan"], x["replay"]["makespan"]) for x in runs],
               "fractional_agree": [f"{x['packing']['fractional_agree']}/{x['packing']['fractional_jobs']}"
                                    for x in runs],
               "gpu_over_1": any(g for x in runs for g in x["packing"]["over_1"].values()),
               "whole_waited_ray_gpu_free": [x["packing"]["whole_waited_ray_gpu_free"] for x in runs],
               "sim_makespan": first["sim"]["makespan"], "sim_gpu_util": first["sim"]["gpu_util"]}
    return "\n\n".join(parts), summary


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _peaks(peaks: dict[int, float]) -> str:
    return ", ".join(f"GPU {g} {p:.2f}" for g, p in sorted(peaks.items()))


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, help="real runs of the same trace (default 2; quick 1)")
    args = p.parse_args(argv)
    from scheduler.config import Settings

    bursts = make_trace(args.seed, bursts=6 if args.quick else 12, window=10.0 if args.quick else 20.0)
    trace = [j for b in bursts for j in b.jobs]
    queues = Settings().queue_configs()
    load = os.getloadavg()[0]
    runs = []
    for i in range(args.runs or (1 if args.quick else 2)):
        print(f"run {i + 1}: {len(trace)} jobs in {len(bursts)} bursts", flush=True)
        res = one_run(i + 1, bursts, trace, queues)
        r, s = res["real"], res["sim"]
        print(f"  real makespan {r['makespan']:.1f} s, util {r['gpu_util']:.2f}; simulated {s['makespan']:.1f} s, "
              f"{s['gpu_util']:.2f}", flush=True)
        runs.append(res)
    md, summary = render(runs, trace, bursts, load)
    data = {"seed": args.seed, "trace": [j.__dict__ for j in trace], "runs": runs, "summary": summary}
    common.finish(args, NAME, TITLE, md, json.loads(json.dumps(data, default=str)))
    return data


if __name__ == "__main__":
    main()
    sys.exit(0)
