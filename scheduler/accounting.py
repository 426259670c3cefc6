"""Who used what: resource-hours, jobs and waiting time per user and queue over
a period (what SLURM's ``sreport`` answers), and the decayed usage that fair
share ranks users by.

Pure functions over plain records, so ``labq usage``, the live loop (to seed
fair share after a restart) and tests share them.  An attempt holds its
resources from dispatch to end: that is what it kept from others, whether or
not its body ran the whole time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Held:
    """One attempt's hold on resources (ended_at None: still running)."""

    user: str
    queue: str
    job_id: int
    cpu: float
    gpu: float
    dispatched_at: float
    ended_at: float | None
    submitted_at: float  # the job's
    first_started_at: float | None  # the job's first dispatch: its wait ends there
    memory: int = 0  # bytes


def decayed_usage(held: list[Held], now: float, half_life: float, dominant) -> dict:
    """Decayed dominant-share-seconds keyed by queue and by (queue, user), as
    :class:`scheduler.policy.UsageBook` keeps them; ``dominant(cpu, gpu, memory)``
    gives a share of the cluster."""
    return usage_of_shapes([(h.queue, h.user, h.cpu, h.gpu, h.memory,
                             decayed_seconds(h.dispatched_at, now if h.ended_at is None else min(h.ended_at, now),
                                             now, half_life)) for h in held], dominant)


def usage_of_shapes(rows: list[tuple], dominant) -> dict:
    """:func:`decayed_usage` from ``Store.decayed_use`` rows (the same sum, done
    by SQLite per queue, user and shape)."""
    usage: dict = {}
    for queue, user, cpu, gpu, memory, seconds in rows:
        value = dominant(cpu, gpu, memory) * (seconds or 0.0)
        if value:
            for key in (queue, (queue, user)):
                usage[key] = usage.get(key, 0.0) + value
    return usage


def decayed_seconds(start: float, end: float, now: float, half_life: float) -> float:
    """∫ 2^-((now - t) / half_life) dt over [start, end]: a second of use counts
    1 now, 1/2 one half-life ago.  Closed form, so history of any length costs
    the same to sum."""
    if end <= start:
        return 0.0
    if half_life <= 0:
        return end - start
    k = math.log(2) / half_life
    return (math.exp(-k * (now - end)) - math.exp(-k * (now - start))) / k


def _overlap(start: float, end: float, since: float, now: float) -> float:
    return max(0.0, min(end, now) - max(start, since))


def summarize(held: list[Held], since: float, now: float, half_life: float,
              by: tuple[str, ...] = ("queue", "user")) -> list[dict]:
    """One row per group (by queue and user by default): jobs started, cpu- and
    gpu-hours inside [since, now], average wait of the jobs that started in it,
    and decayed cpu/gpu-hours as of ``now`` (all history, not only the period)."""
    groups: dict[tuple, dict] = {}
    waits: dict[tuple, dict[int, float]] = {}
    for h in held:
        key = tuple(getattr(h, field) for field in by)
        row = groups.setdefault(key, {**dict(zip(by, key)), "jobs": 0, "attempts": 0, "cpu_hours": 0.0,
                                      "gpu_hours": 0.0, "avg_wait_s": None, "decayed_cpu_hours": 0.0,
                                      "decayed_gpu_hours": 0.0})
        end = now if h.ended_at is None else h.ended_at
        inside = _overlap(h.dispatched_at, end, since, now)
        if inside > 0 or since <= h.dispatched_at <= now:
            row["attempts"] += 1
            row["cpu_hours"] += h.cpu * inside / 3600
            row["gpu_hours"] += h.gpu * inside / 3600
        decayed = decayed_seconds(h.dispatched_at, min(end, now), now, half_life) / 3600
        row["decayed_cpu_hours"] += h.cpu * decayed
        row["decayed_gpu_hours"] += h.gpu * decayed
        if h.first_started_at is not None and since <= h.first_started_at <= now:
            waits.setdefault(key, {})[h.job_id] = h.first_started_at - h.submitted_at
    for key, per_job in waits.items():
        groups[key]["jobs"] = len(per_job)
        groups[key]["avg_wait_s"] = sum(per_job.values()) / len(per_job)
    rows = [r for r in groups.values() if r["attempts"] or r["decayed_cpu_hours"] > 1e-9 or r["decayed_gpu_hours"] > 1e-9]
    return sorted(rows, key=lambda r: (-(r["gpu_hours"] + r["cpu_hours"]), tuple(str(r[f]) for f in by)))
