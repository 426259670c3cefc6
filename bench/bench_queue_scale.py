"""Queue scale: the scheduler with 100,000 pending jobs in its database, and the
policy alone on large queues.

The scheduler part runs in a fresh child process (so its RSS is the scheduler's
own) with the real Store, Scheduler and policy and scheduler/fake_backend.py
instead of Ray: 10 nodes of 16 CPUs and 2 GPUs, jobs at {cpu: 0.5}, so 320 run
at once.  The database holds one experiment of N pending jobs, 20 of them
"running" attempts left by a previous scheduler.

* restart -> first dispatch: Store + Scheduler + reconcile (the 20 orphaned
  attempts are marked lost and requeued) + the first tick, until the fake
  backend's first launch() call.
* RSS of the scheduler process (psutil) after imports, after the first tick
  (all pending jobs read, 320 launched), and its peak (ru_maxrss).
* one scheduling pass (Scheduler._schedule) with nothing changed, and one tick
  after 20 jobs finished (record them, re-read the queue, place 20 more, write
  the reasons of the jobs that still wait): median of 5.

Policy alone: policy.decide over D pending demands and 100 nodes (16 CPUs, 4
GPUs, 64 GiB; a tenth offer a custom resource), median of 5, with a mix of
20 job shapes (cpu, gpu share or whole GPUs, memory, custom) and with one shape.

  python bench/bench_queue_scale.py [--quick] [--n N]
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "queue_scale"
TITLE = "Queue scale: 100k pending jobs, and the policy alone"
ORPHANS = 20
FINISH_PER_TICK = 20


# ---------------------------------------------------------------- the database

def populate(home: Path, code: Path, n: int) -> float:
    """n pending jobs in one experiment; ORPHANS of them left 'running'."""
    
    from scheduler.identity import current_user
    from scheduler.spec import load_spec
    from scheduler.store import Store
    from scheduler.sweep import plan_jobs
    from workers.paths import run_dir_for

    a = 100
    spec_path = code / "big.yaml"
    spec_path.write_text(f"""experiment: big
stages:
  - name: train
    run: benchjobs:noop
    params: {{lr: 0.01}}
    sweep:
      grid: {{a: {list(range(a))}, b: {list(range(n // a))}}}
    resources: {{cpu: 0.5}}
""")
    t0 = time.time()
    spec, raw = load_spec(spec_path)
    drafts = plan_jobs(spec, str(spec_path))
    store = Store(home)
    try:
        _, ids = store.submit(name="big", user=current_user(), queue="default", priority=0,
                              spec_path=str(spec_path), spec=raw, package=None, metric=None, mode=None, drafts=drafts,
                              stages={s.name: s for s in spec.stages}, now=time.time())
        store.start_attempts(((j, "0" * 56) for j in ids[:ORPHANS]), lambda j, k: run_dir_for(home, j, k), time.time())
    finally:
        store.close()
    return time.time() - t0


# ---------------------------------------------------------------- the scheduler (child process)

def scheduler_part(home: Path, out: Path, reps: int = 5) -> None:
    import psutil

    from scheduler.fake_backend import FakeBackend, make_nodes
    from scheduler.config import Settings
    from scheduler.loop import Scheduler

    proc = psutil.Process()
    rss_imports = proc.memory_info().rss
    backend = FakeBackend(make_nodes(10, cpu=16, gpu=2))
    settings = Settings(home=str(home))
    t0 = time.perf_counter()
    from scheduler.store import Store

    store = Store(home)
    sched = Scheduler(store, backend, settings)
    t_constructed = time.perf_counter()
    lost = sched.reconcile(time.time()).lost
    t_reconciled = time.perf_counter()
    sched.tick(time.time())
    t_tick = time.perf_counter()
    rss_loaded = proc.memory_info().rss
    launched = len(backend.launched)
    pending = store.state_counts().get("pending", 0)

    idle_passes = []
    for _ in range(reps):
        a = time.perf_counter()
        sched._schedule(time.time())
        idle_passes.append(time.perf_counter() - a)
    busy_ticks = []
    for _ in range(reps):
        backend.finish_oldest(FINISH_PER_TICK)
        a = time.perf_counter()
        sched.tick(time.time())
        busy_ticks.append(time.perf_counter() - a)
    # Where a busy tick's time goes: one more, profiled.
    import cProfile
    import pstats

    backend.finish_oldest(FINISH_PER_TICK)
    prof = cProfile.Profile()
    prof.enable()
    sched.tick(time.time())
    prof.disable()
    stats = pstats.Stats(prof)
    total = max(stats.total_tt, 1e-9)
    parts = {}
    for (filename, _, func), (_, _, _, cum, _) in stats.stats.items():
        if "/scheduler/" in filename.replace("\\", "/") and func in (
                "pending_jobs", "set_reasons", "decide", "start_attempts", "finish_attempts", "launch", "launch_pack", "sync",
                "_save_node_snapshot", "_record_ends"):
            key = f"{Path(filename).stem}.{func}"  # endings.decide is not policy.walk.decide
            parts[key] = parts.get(key, 0) + cum / total
    rss_after = proc.memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.write_text(json.dumps({
        "rss_imports": rss_imports, "rss_loaded": rss_loaded, "rss_after": rss_after, "rss_peak": peak,
        "construct_s": t_constructed - t0, "reconcile_s": t_reconciled - t_constructed, "reconciled": lost,
        "first_tick_s": t_tick - t_reconciled, "first_launch_s": backend.first_launch_at - t0,
        "restart_total_s": t_tick - t0, "launched_first_tick": launched, "pending": pending,
        "idle_pass_s": idle_passes, "busy_tick_s": busy_ticks, "busy_tick_profile": parts,
    }))


def run_scheduler_part(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lqb-qs-") as d:
        d = Path(d)
        code = d / "code"
        code.mkdir()
        (code / "benchjobs.py").write_text(common.NOOP_MODULE)
        print(f"populating {n:,} pending jobs", flush=True)
        populate_s = populate(d / "home", code, n)
        out = d / "out.json"
        subprocess.run([sys.executable, __file__, "--part", "scheduler", "--home", str(d / "home"), "--part-out",
                        str(out)], check=True, timeout=900)
        result = json.loads(out.read_text())
        result["populate_s"] = populate_s
        result["n"] = n
        return result


# ---------------------------------------------------------------- the policy alone

SHAPES = [  # (cpu, gpu, memory GiB, custom)
    (1, 0, 0, {}), (2, 0, 4, {}), (4, 0, 8, {}), (0.5, 0, 0, {}), (0.25, 0, 1, {}), (8, 0, 16, {}),
    (1, 0.25, 2, {}), (1, 0.5, 4, {}), (2, 1, 8, {}), (4, 2, 16, {}), (0.5, 0.25, 0, {}), (1, 0.1, 1, {}),
    (2, 0, 0, {"a100": 1}), (1, 0.5, 0, {"a100": 1}), (16, 0, 32, {}), (3, 0, 6, {}), (1, 1, 4, {}),
    (6, 0, 12, {}), (0.1, 0, 0, {}), (2, 4, 32, {}),
]


def policy_inputs(demand_count: int, node_count: int, mixed: bool, seed: int = 0):
    from scheduler import policy

    rng = random.Random(seed)
    nodes = []
    for i in range(node_count):
        custom = {"a100": 4.0} if i % 10 == 0 else {}
        nodes.append(policy.Node(node_id=f"node-{i:03d}", cpu_total=16, cpu_free=16, memory_total=64 * 2**30,
                                 memory_free=64 * 2**30, gpu_free=[1.0] * 4, custom_total=dict(custom),
                                 custom_free=dict(custom)))
    demands = []
    for j in range(demand_count):
        cpu, gpu, mem, custom = SHAPES[rng.randrange(len(SHAPES))] if mixed else SHAPES[0]
        demands.append(policy.Demand(job_id=j, cpu=cpu, gpu=gpu, memory=int(mem * 2**30), custom=custom,
                                     priority=rng.choice([0, 0, 0, 1, 5]), seq=j))
    return demands, nodes


def time_policy(demand_count: int, node_count: int, mixed: bool, reps: int = 5) -> dict:
    from scheduler import policy

    demands, nodes = policy_inputs(demand_count, node_count, mixed)
    times, decision = [], None
    for _ in range(reps):
        a = time.perf_counter()
        decision = policy.decide(demands, nodes)
        times.append(time.perf_counter() - a)
    return {"demands": demand_count, "nodes": node_count, "mixed": mixed, "times": times,
            "median_s": common.median(times), "placed": len(decision.placements)}


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, help="pending jobs in the database (default 100000; quick 10000)")
    p.add_argument("--part", help="internal")
    p.add_argument("--home", help="internal")
    p.add_argument("--part-out", help="internal")
    args = p.parse_args(argv)
    if args.part == "scheduler":
        scheduler_part(Path(args.home), Path(args.part_out))
        return {}
    n = args.n or (10_000 if args.quick else 100_000)
    data: dict = {"n": n}
    data["scheduler"] = s = run_scheduler_part(n)
    mib = 2**20
    print(f"  restart -> first launch {s['first_launch_s']:.2f}s, RSS {s['rss_loaded'] / mib:.0f} MiB", flush=True)

    growth = [1000, 5000, 10000] if args.quick else [1000, 5000, 10000, 20000, 40000]
    data["policy"] = []
    for count in growth:
        for mixed in (True, False):
            r = time_policy(count, 100, mixed)
            data["policy"].append(r)
            print(f"  policy.decide {count:,} demands x 100 nodes ({'mixed' if mixed else 'one'} shape): "
                  f"{1000 * r['median_s']:.1f} ms, {r['placed']} placed", flush=True)

    med = common.median
    sched_rows = [
        ["restart -> first launch() call (Store + Scheduler + reconcile + first tick)", s["first_launch_s"], "s"],
        [f"  of which reconcile ({s['reconciled']} orphaned attempts)", s["reconcile_s"], "s"],
        [f"  whole first tick ({s['launched_first_tick']} launched)", s["first_tick_s"], "s"],
        ["scheduling pass (_schedule), nothing changed, median of 5", med(s["idle_pass_s"]), "s"],
        [f"tick after {FINISH_PER_TICK} jobs finished (record, re-read, place {FINISH_PER_TICK}), median of 5",
         med(s["busy_tick_s"]), "s"],
        ["RSS after imports (no Ray imported)", s["rss_imports"] / mib, "MiB"],
        ["RSS after the first tick", s["rss_loaded"] / mib, "MiB"],
        ["RSS after the passes", s["rss_after"] / mib, "MiB"],
        ["peak RSS (ru_maxrss)", s["rss_peak"] / mib, "MiB"],
        ["RSS per pending job (after first tick - after imports) / N", (s["rss_loaded"] - s["rss_imports"]) / n, "bytes"],
    ]
    prof = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(s["busy_tick_profile"].items(), key=lambda kv: -kv[1]))
    pol_rows = []
    by = {(r["demands"], r["mixed"]): r for r in data["policy"]}
    for count in growth:
        m, u = by[(count, True)], by[(count, False)]
        pol_rows.append([f"{count:,}", 1000 * m["median_s"], m["placed"], 1000 * m["median_s"] / count * 1000,
                         1000 * u["median_s"], u["placed"]])
    ten = by.get((10000, True))
    summary = {"restart_to_first_launch_s": s["first_launch_s"], "idle_pass_s": med(s["idle_pass_s"]),
               "busy_tick_s": med(s["busy_tick_s"]), "rss_loaded_mib": s["rss_loaded"] / mib,
               "rss_peak_mib": s["rss_peak"] / mib, "policy_10k_ms": 1000 * ten["median_s"] if ten else None}
    first, last = by[(growth[0], True)], by[(growth[-1], True)]
    growth_factor = (last["median_s"] / first["median_s"]) / (growth[-1] / growth[0])
    md = (f"Scheduler on a database of {n:,} pending jobs (real Store, Scheduler and policy; fake backend: 10 nodes "
          f"x 16 CPUs, jobs at 0.5 CPU, so 320 run at once):\n\n"
          + common.table(["measure", "value", "unit"], sched_rows)
          + f"\n\n- Where a tick after {FINISH_PER_TICK} finished jobs spends its time (cProfile, cumulative): {prof}.\n"
          + f"- Populating the database took {s['populate_s']:.0f}s.\n\n"
          + "policy.decide alone over 100 nodes (16 CPUs, 4 GPUs, 64 GiB each), median of 5:\n\n"
          + common.table(["pending demands", "mixed shapes: ms", "placed", "µs per demand",
                          "one shape: ms", "placed"], pol_rows)
          + f"\n\n- From {growth[0]:,} to {growth[-1]:,} demands the mixed-shape time grows "
            f"{last['median_s'] / first['median_s']:.1f}x for {growth[-1] // growth[0]}x the demands "
            f"({growth_factor:.2f} of linear).")
    data["summary"] = summary
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
