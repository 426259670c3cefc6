"""Simulator scale: `labq simulate` of 10,000 jobs on 1,200 nodes (goal < 10 s),
how its cost grows with the trace, and the policy's index of free capacity
kept between decisions against one built from every node for each.

Nodes: 1,200 of 0, 2, 4 or 8 GPUs (seeded), 96 CPUs with GPUs, 64 without.
Traces: scheduler.traces.generate paced for the cluster's GPUs at load 0.9,
policy labq.  Side by side in one run at 2,500 jobs: the simulator as shipped
(the room kept, ``VirtualCluster.room``) and the same with the room rebuilt
before each decision, as before; the results must be identical.

  python bench/bench_sim_scale.py [--quick]
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "sim_scale"
TITLE = "Simulator scale: 10,000 jobs on 1,200 nodes"
GOAL_S = 10.0


def cluster(count: int = 1200, seed: int = 0):
    from scheduler.simulator import node

    rng = random.Random(seed)
    out = []
    for i in range(count):
        gpus = rng.choice([0, 2, 4, 8])
        out.append(node(f"n{i}", 96 if gpus else 64, gpus, memory=512 * 2**30))
    return out


def replay(jobs: int, nodes, rebuilt: bool = False) -> tuple[float, dict]:
    from scheduler import simulator, traces
    from scheduler.policy import QueueConfig
    from scheduler.virtual_cluster import VirtualCluster

    trace = traces.generate(jobs, seed=1, gpus=sum(len(n.gpu_free) for n in nodes), load=0.9)

    class RebuiltEachTime(VirtualCluster):
        def decide(self, t: float) -> None:
            self.room = None
            super().decide(t)

    shipped = simulator.VirtualCluster
    simulator.VirtualCluster = RebuiltEachTime if rebuilt else shipped
    try:
        t0 = time.perf_counter()
        (result,) = simulator.compare(trace, nodes, ["labq"], [QueueConfig("default")], 7 * 86400.0)
        wall = time.perf_counter() - t0
    finally:
        simulator.VirtualCluster = shipped
    return wall, {k: v for k, v in result.to_json().items() if k != "wall_s"}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    nodes = cluster()
    sizes = [500, 1000, 2000] if args.quick else [2500, 5000, 10000]
    data: dict = {"nodes": len(nodes), "gpus": sum(len(n.gpu_free) for n in nodes), "scaling": {}}
    for n in sizes:
        wall, result = replay(n, nodes)
        data["scaling"][n] = {"wall_s": wall, "decisions": result["decisions"], "avg_wait": result["avg_wait"]}
        print(f"  {n:,} jobs: {wall:.2f} s ({result['decisions']:,} decisions)", flush=True)
    side = sizes[0]
    kept_s, kept = replay(side, nodes)
    rebuilt_s, rebuilt = replay(side, nodes, rebuilt=True)
    data["side_by_side"] = {"jobs": side, "kept_s": kept_s, "rebuilt_s": rebuilt_s, "same_results": kept == rebuilt}
    print(f"  {side:,} jobs: kept {kept_s:.2f} s, rebuilt each decision {rebuilt_s:.2f} s, "
          f"same results: {kept == rebuilt}", flush=True)
    big = sizes[-1]
    per_job = {n: v["wall_s"] / n * 1000 for n, v in data["scaling"].items()}
    rows = [[f"{n:,}", v["wall_s"], v["decisions"], per_job[n]] for n, v in data["scaling"].items()]
    md = (f"{len(nodes):,} nodes ({data['gpus']:,} GPUs), traces at load 0.9, policy labq; goal: {big:,} jobs "
          f"in under {GOAL_S:.0f} s ({'met' if data['scaling'][big]['wall_s'] < GOAL_S else '**not met**'}).\n\n"
          + common.table(["jobs", "replay s", "decisions", "ms per job"], rows)
          + f"\n\nSide by side, {side:,} jobs: room kept {kept_s:.2f} s, rebuilt before each decision "
            f"{rebuilt_s:.2f} s ({rebuilt_s / kept_s:.1f}x); identical results: {kept == rebuilt}.")
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
