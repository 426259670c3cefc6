"""Policy and simulator: how fast one decision is as the queue grows, and what
each policy does with a synthetic trace, against the makespan lower bound.

    python bench/bench_policy.py [--quick] [--no-md]

(a) ``policy.decide`` over D pending demands and 100 nodes (16 CPUs, 4 GPUs,
    64 GiB; the shapes of bench_queue_scale), median of 3, for D = 1k, 10k, 40k:
    one shape, mixed shapes, and mixed shapes from 20 users in 3 queues with
    a running job per node (the fair-share path).
(b) ``labq simulate`` on a synthetic trace (scheduler.traces: heavy-tailed
    durations, sweeps, 0.25/0.5/1/2-GPU jobs, unequal users) on 8 nodes of
    8 GPUs, paced to offer 1.2x the GPU capacity: per policy avg JCT, avg and
    p95 wait, makespan against its lower bound (total GPU-seconds / capacity,
    or the longest job after its arrival), and the lightest user's avg wait;
    then labq before issue 18 against now on the traces of seeds 0-23 (and
    0-11 alone, the set before): the light user's avg wait, its mean and
    median, and in how many it is longer.
(c) The time to replay a 100,000-job trace (quick: 20,000) per policy.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.bench_queue_scale import policy_inputs  # noqa: E402

TITLE = "Policy: decision time, and policies compared in simulation"
NODES = 8
GPUS_PER_NODE = 8
SEEDS = 24  # traces labq before issue 18 and now are compared on (the light user's wait is noisy per trace)
FIRST_SEEDS = 12  # the set until 2026-12-04 20:30 (seeds 12-23 then added as traces no choice was tuned on), also summarised alone


def time_decide(count: int, variant: str, reps: int = 3) -> dict:
    from scheduler import policy

    demands, nodes = policy_inputs(count, 100, mixed=variant != "one shape")
    running = []
    if variant == "fair share":
        demands = [policy.Demand(d.job_id, d.cpu, d.gpu, d.memory, d.custom, d.priority, d.seq,
                                 user=f"user{d.job_id % 20}", queue=f"q{d.job_id % 3}") for d in demands]
        for i, n in enumerate(nodes):  # one 1-cpu job per node, so users and queues hold something
            running.append(policy.RunningJob(10**9 + i, user=f"user{i % 20}", queue=f"q{i % 3}", cpu=1,
                                             node_id=n.node_id, started_at=0.0, time_limit=3600.0))
            n.cpu_free -= 1
    queues = [policy.QueueConfig("q0", weight=2.0, guarantee={"gpu": 100}), policy.QueueConfig("q1"),
              policy.QueueConfig("q2", limit={"gpu": 50})]
    times, decision = [], None
    for _ in range(reps):
        started = time.perf_counter()
        decision = policy.decide(demands, nodes, running=running, queues=queues, now=60.0)
        times.append(time.perf_counter() - started)
    return {"demands": count, "variant": variant, "median_ms": 1000 * common.median(times),
            "placed": len(decision.placements), "waiting": len(decision.waiting)}


def cluster():
    from scheduler import simulator

    return [simulator.node(f"node-{i}", 64, GPUS_PER_NODE, 512 * 2**30) for i in range(NODES)]


def _trace(jobs_count: int, seed: int) -> list:
    from scheduler import traces

    return traces.generate(jobs_count, seed=seed, gpus=NODES * GPUS_PER_NODE, load=1.2)


def _labq_before(trace: list, nodes: list):
    """labq as it was before issue 18: submission order within a user, best-fit
    placement, and a reservation for the first blocked job only (EASY backfill)."""
    from scheduler import simulator
    from scheduler.policy import backfill

    reservations = backfill.MAX_RESERVATIONS
    backfill.MAX_RESERVATIONS = 1  # read by each decision's Backfill
    try:
        return simulator.simulate(trace, nodes, "labq", stretch=None, fragmentation=False)
    finally:
        backfill.MAX_RESERVATIONS = reservations


def _light_user(result) -> str:
    """The user with the least GPU work in the trace."""
    return min(result.per_user, key=lambda u: result.per_user[u]["gpu_seconds"])


def compare_policies(jobs_count: int, seed: int = 0) -> tuple[list, dict, str]:
    """The four policies, then labq as it was before issue 18 (submission order
    within a user, best-fit placement, one reservation), labelled "labq (before)"."""
    import dataclasses

    from scheduler import simulator

    trace = _trace(jobs_count, seed)
    nodes = cluster()
    results = simulator.compare(trace, nodes)
    results.append(dataclasses.replace(_labq_before(trace, nodes), policy="labq (before)"))
    bound = simulator.lower_bound(trace, nodes)
    return results, bound, _light_user(results[0])


def before_and_now(jobs_count: int, seed: int) -> list[list]:
    """[seed, policy, avg wait, light user's avg wait] for labq before issue 18
    and now, on the trace of ``seed``."""
    from scheduler import simulator

    trace = _trace(jobs_count, seed)
    before = _labq_before(trace, cluster())
    now = simulator.simulate(trace, cluster(), "labq")
    light = _light_user(before)
    return [[seed, name, r.avg_wait, r.per_user[light]["avg_wait"]] for name, r in (("labq (before)", before),
                                                                                    ("labq", now))]


def light_user_summary(seeds_rows: list[list]) -> dict:
    """The light user's avg wait across traces, before and now: mean, median,
    and in how many traces it is longer now."""
    import statistics

    before = {row[0]: row[3] for row in seeds_rows if row[1] == "labq (before)"}
    now = {row[0]: row[3] for row in seeds_rows if row[1] == "labq"}
    return {"seeds": len(now), "before_mean": statistics.fmean(before.values()), "now_mean": statistics.fmean(now.values()),
            "before_median": statistics.median(before.values()), "now_median": statistics.median(now.values()),
            "worse": f"{sum(now[s] > before[s] for s in now)} of {len(now)}"}


def time_big_replay(jobs_count: int, policies: list[str]) -> list[dict]:
    from scheduler import simulator, traces

    started = time.perf_counter()
    trace = traces.generate(jobs_count, seed=1, gpus=NODES * GPUS_PER_NODE, load=0.9)
    made = time.perf_counter() - started
    out = []
    for name in policies:
        r = simulator.simulate(trace, cluster(), name)
        out.append({"policy": name, "jobs": jobs_count, "wall_s": r.wall_s, "decisions": r.decisions,
                    "finished": r.finished, "generate_s": made})
        print(f"  replay {jobs_count:,} jobs, {name}: {r.wall_s:.1f} s ({r.decisions:,} decisions)", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    sizes = [1000, 10_000] if args.quick else [1000, 10_000, 40_000]
    decide_rows = []
    for count in sizes:
        for variant in ("one shape", "mixed shapes", "fair share"):
            r = time_decide(count, variant)
            decide_rows.append(r)
            print(f"  decide {count:,} x 100 nodes, {variant}: {r['median_ms']:.1f} ms ({r['placed']} placed)",
                  flush=True)

    results, bound, light = compare_policies(2000 if args.quick else 5000)
    sim_rows = [[r.policy, r.avg_jct, r.avg_wait, r.p95_wait, r.makespan, bound["makespan"],
                 common.ratio(r.makespan, bound["makespan"]), r.per_user[light]["avg_wait"], r.gpu_util, r.wall_s]
                for r in results]
    # The same, labq now against labq before, on more traces (one trace's light user is one user's luck)
    seeds_rows = [[0, name, by[name].avg_wait, by[name].per_user[light]["avg_wait"]]
                  for by in [{r.policy: r for r in results}] for name in ("labq (before)", "labq")]
    for seed in range(1, 3 if args.quick else SEEDS):
        seeds_rows += before_and_now(2000 if args.quick else 5000, seed)
    fairness = light_user_summary(seeds_rows)
    first = light_user_summary([row for row in seeds_rows if row[0] < FIRST_SEEDS])
    for f in (first, fairness):
        print(f"  light user's avg wait over {f['seeds']} traces: mean {f['before_mean']:.0f} -> "
              f"{f['now_mean']:.0f} s, median {f['before_median']:.0f} -> {f['now_median']:.0f} s, "
              f"longer in {f['worse']}", flush=True)
    big = time_big_replay(20_000 if args.quick else 100_000, ["fifo", "labq"] if args.quick else
                          ["fifo", "priority", "fair", "labq"])

    md = ("policy.decide over 100 nodes (16 CPUs, 4 GPUs, 64 GiB), median of 3, with every waiting job's reason:\n\n"
          + common.table(["pending", "variant", "ms", "placed"],
                         [[r["demands"], r["variant"], r["median_ms"], r["placed"]] for r in decide_rows])
          + f"\n\n`labq simulate` of a {results[0].jobs:,}-job synthetic trace (scheduler.traces, seed 0, offered "
          f"load 1.2) on {NODES} nodes x {GPUS_PER_NODE} GPUs, 64 CPUs; times in seconds; lower bound = max(GPU-seconds"
          f" / capacity {bound['gpu_work_bound']:,.0f}, longest job after its arrival {bound['longest_job']:,.0f}); "
          f"light user = {light!r}, the least GPU work:\n\n"
          + common.table(["policy", "avg JCT", "avg wait", "p95 wait", "makespan", "lower bound", "makespan / bound",
                          "light user avg wait", "GPU util", "replay s"], sim_rows)
          + f"\n\nlabq before issue 18 (submission order within a user, best fit) and now, traces of seeds "
          f"0-{fairness['seeds'] - 1}; the light user's avg wait, mean {fairness['before_mean']:,.0f} -> "
          f"{fairness['now_mean']:,.0f} s, median {fairness['before_median']:,.0f} -> {fairness['now_median']:,.0f} s, "
          f"longer now in {fairness['worse']} traces (seeds 0-{first['seeds'] - 1} alone: mean "
          f"{first['before_mean']:,.0f} -> {first['now_mean']:,.0f} s, median {first['before_median']:,.0f} -> "
          f"{first['now_median']:,.0f} s, longer in {first['worse']}):\n\n"
          + common.table(["seed", "policy", "avg wait", "light user avg wait"], seeds_rows)
          + "\n\nReplay time of a bigger trace (offered load 0.9):\n\n"
          + common.table(["policy", "jobs", "decisions", "replay s"],
                         [[r["policy"], r["jobs"], r["decisions"], r["wall_s"]] for r in big]))
    data = {"decide": decide_rows, "simulate": [r.to_json() for r in results], "bound": bound, "light_user": light,
            "seeds": seeds_rows, "light_user_across_seeds": fairness, "light_user_first_seeds": first,
            "replay": big,
            "summary": {"decide_10k_ms": next(r["median_ms"] for r in decide_rows
                                              if r["demands"] == 10_000 and r["variant"] == "mixed shapes")}}
    common.finish(args, "policy", TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
    sys.exit(0)
