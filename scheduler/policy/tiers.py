"""Least-attained-service tiers (after Tiresias, NSDI'19), for queues that opt
in with ``QueueConfig.tiers``: a job's *attained service* is the GPU-seconds it
has held so far (a CPU-only job counts as one GPU), and its tier is how many of
the queue's thresholds that passes.  In such a queue, jobs in a lower tier go
first, and a pending job that cannot fit may preempt running jobs of the same
queue in a higher tier: they have had more service, and resume from their
checkpoint later.  Without knowing any duration this approximates
shortest-job-first, since long jobs are the ones that climb tiers.

Bounds: a job is preempted for a lower tier at most ``max_preemptions`` times;
a pending job that is due (policy.durations: it has waited its stretch of its
predicted duration) is ordered as tier 0, so a long job is not starved by a
stream of new short ones."""

from __future__ import annotations

import bisect

from scheduler.policy.records import Demand, QueueConfig, RunningJob


def weight(gpu: float, gpu_indices: tuple[int, ...] = ()) -> float:
    """GPUs a job holds, for service: its share of each of its GPUs added up;
    a CPU-only job counts as one."""
    if gpu <= 0:
        return 1.0
    return gpu if gpu > 1 else gpu * max(1, len(gpu_indices))


def tier_of(service: float, config: QueueConfig) -> int:
    """0 below the first threshold, 1 below the second, ..."""
    return bisect.bisect_right(config.tiers, service)


def running_service(job: RunningJob, now: float) -> float:
    """What ``job`` has attained by ``now``: its earlier attempts' and this one's."""
    return job.attained + max(0.0, now - job.started_at) * weight(job.gpu, job.gpu_indices)


def pending_elapsed(d: Demand) -> float:
    """Seconds a requeued job's earlier attempts ran: its attained service over
    the GPUs it holds."""
    return d.attained / weight(d.gpu)


def running_elapsed(job: RunningJob, now: float) -> float:
    """Seconds ``job`` has run: its earlier attempts' and this one's."""
    return job.attained / weight(job.gpu, job.gpu_indices) + max(0.0, now - job.started_at)


def pending_tier(d: Demand, config: QueueConfig, due: bool) -> int:
    """Where a pending job stands in its queue: by what it attained, or 0 once due."""
    return 0 if due or not config.tiers else tier_of(d.attained, config)
