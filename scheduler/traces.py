"""Synthetic job traces for `labq simulate` and the benchmarks.

    python -m scheduler.traces --jobs 5000 --out trace.csv [--gpus 64] [--load 0.9] [--seed 0]

What makes a trace realistic enough to tell policies apart:

* heavy-tailed durations (log-normal: most jobs take minutes, a few take a day),
* bursts: jobs arrive as sweeps of many alike jobs at once (Poisson arrivals of
  sweeps, geometric sweep sizes), not one by one,
* mixed GPU shapes: 0.25, 0.5, 1 and 2 GPUs, and CPU-only data prep,
* users with unequal load (Zipf-like: the first user submits most of the work),
* each sweep a group (as an experiment's stage is live): its jobs run alike,
  so once a few have ended the rest are predictable,
* time limits users give: one per sweep (a stage's timeout), its typical job
  padded by 1.35-3.4x and rounded up to 15 minutes, as people do; now and then
  too short for a job of the sweep (that job is stopped at it).

Arrivals are paced so that the offered GPU work is ``load`` times the capacity
of ``gpus`` GPUs; above 1 the queue grows without bound.  Seeded: the same
arguments give the same trace.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
from pathlib import Path

from scheduler.simulator import TraceJob

GPU_SHAPES = [(0.25, 0.30), (0.5, 0.25), (1.0, 0.25), (2.0, 0.10)]  # (gpu, probability) of GPU jobs
CPU_ONLY_SHARE = 0.10
USERS = ["ana", "ben", "chen", "dara", "eli", "femi"]
MEDIAN_DURATION = 20 * 60.0
DURATION_SIGMA = 1.4
MAX_DURATION = 2 * 86400.0
MEAN_SWEEP = 8.0
LIMIT_STEP = 15 * 60.0
COLUMNS = ["job_id", "submit_time", "duration", "cpu", "gpu", "memory", "user", "queue", "priority", "time_limit",
           "group"]


def generate(jobs: int, seed: int = 0, gpus: int = 64, load: float = 0.9, users: list[str] | None = None,
             queues: list[str] | None = None) -> list[TraceJob]:
    """``jobs`` jobs arriving in sweeps, paced to offer ``load`` x the work ``gpus`` GPUs can do."""
    rng = random.Random(seed)
    users = users or USERS
    queues = queues or ["default"]
    user_weights = [1 / (rank + 1) ** 1.2 for rank in range(len(users))]  # unequal: Zipf-like
    mean_gpu_seconds = _mean_gpu_seconds()
    sweeps_per_second = load * gpus / (mean_gpu_seconds * MEAN_SWEEP)
    out: list[TraceJob] = []
    now = 0.0
    sweeps = 0
    while len(out) < jobs:
        now += rng.expovariate(sweeps_per_second)
        user = rng.choices(users, user_weights)[0]
        queue = queues[users.index(user) % len(queues)]
        size = min(jobs - len(out), 1 + int(rng.expovariate(1 / (MEAN_SWEEP - 1))))
        out.extend(_sweep(rng, len(out), size, now, user, queue, f"sweep{sweeps}"))
        sweeps += 1
    return out


def _sweep(rng: random.Random, first_id: int, size: int, at: float, user: str, queue: str,
           group: str) -> list[TraceJob]:
    """``size`` alike jobs: one shape and priority, durations spread around one scale."""
    gpu = 0.0 if rng.random() < CPU_ONLY_SHARE else rng.choices([g for g, _ in GPU_SHAPES],
                                                                [p for _, p in GPU_SHAPES])[0]
    cpu = max(1.0, 4 * gpu) if gpu else rng.choice([1.0, 2.0, 4.0])
    memory_gib = 4 * max(gpu, 0.5) * rng.choice([1, 2])
    priority = rng.choices([0, 1, 5], [0.85, 0.1, 0.05])[0]
    scale = MEDIAN_DURATION * math.exp(rng.gauss(0, DURATION_SIGMA))
    # One limit for the sweep, as a stage's timeout is: its typical job padded; a few run over it.
    limit = math.ceil(scale * 1.35 * rng.uniform(1.0, 2.5) / LIMIT_STEP) * LIMIT_STEP
    jobs = []
    for k in range(size):
        duration = min(MAX_DURATION, max(10.0, scale * math.exp(rng.gauss(0, 0.3))))
        jobs.append(TraceJob(job_id=str(first_id + k), submit_time=round(at + k * 0.5, 3), duration=round(duration, 1),
                             cpu=cpu, gpu=gpu, memory=int(memory_gib * 2**30), user=user, queue=queue,
                             priority=priority, time_limit=limit, group=group))
    return jobs


def _mean_gpu_seconds() -> float:
    """Expected GPU-seconds of one job (the log-normal's mean, times the mean GPU ask)."""
    mean_gpu = (1 - CPU_ONLY_SHARE) * sum(g * p for g, p in GPU_SHAPES) / sum(p for _, p in GPU_SHAPES)
    mean_duration = MEDIAN_DURATION * math.exp((DURATION_SIGMA**2 + 0.3**2) / 2)
    return mean_gpu * mean_duration


def write_csv(jobs: list[TraceJob], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for j in jobs:
            writer.writerow([j.job_id, j.submit_time, "" if j.duration is None else j.duration, j.cpu, j.gpu,
                             f"{j.memory // 2**20}", j.user, j.queue, j.priority,
                             "" if j.time_limit is None else j.time_limit, j.group])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a synthetic job trace for `labq simulate`.")
    p.add_argument("--jobs", type=int, default=1000, help="how many jobs (default 1000)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--gpus", type=int, default=64, help="GPUs the arrival rate is paced for (default 64)")
    p.add_argument("--load", type=float, default=0.9, help="offered GPU work / capacity (default 0.9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queues", default="default", help="comma-separated queue names, spread over users")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.gpus < 1 or not args.load > 0:
        p.error("--jobs and --gpus must be at least 1 and --load positive")
    jobs = generate(args.jobs, args.seed, args.gpus, args.load, queues=args.queues.split(","))
    write_csv(jobs, args.out)
    print(f"wrote {len(jobs)} jobs over {jobs[-1].submit_time / 3600:.1f} h to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
