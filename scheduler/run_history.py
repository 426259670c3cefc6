"""What labq's finished jobs teach the policy about how long jobs like them run:
a :class:`policy.DurationBook` from the store's latest attempts that ran to an
end.  The live loop orders and reserves with it; `labq queue` shows what it
predicts for each pending job, from the same book."""

from __future__ import annotations

from typing import Any, Iterable

from scheduler import policy
from scheduler.records import Outlook

RUNS_READ = 5000
MIX_HALF_LIFE = 86400.0  # how fast the shapes of past submissions fade from the mix (as in the simulator)  # the latest attempts read; each key keeps only its last policy.durations.RECENT anyway


def duration_book(store: Any, stretch: float = policy.DEFAULT_STRETCH,
                  reserve_after: float | None = None) -> policy.DurationBook:
    book = policy.DurationBook(stretch, reserve_after)
    for user, cpu, gpu, memory, gpu_memory, custom, group, seconds in store.recent_runs(RUNS_READ):
        shape = policy.Demand(0, cpu=cpu, gpu=gpu, memory=memory, gpu_memory=gpu_memory, custom=custom).shape()
        book.add(user, shape, group, seconds)
    return book


def shape_mix(store: Any, now: float, pending: policy.PendingIndex) -> policy.ShapeMix:
    """The job shapes placement keeps the cluster unfragmented for: the shapes
    submitted over the last week, halving in weight every MIX_HALF_LIFE, each
    pending job counted once more (policy.fragmentation)."""
    counts: dict[tuple, float] = {}
    for cpu, gpu, memory, gpu_memory, custom, hour, n in store.submitted_shapes(now - 7 * MIX_HALF_LIFE):
        shape = policy.Demand(0, cpu=cpu, gpu=gpu, memory=memory, gpu_memory=gpu_memory, custom=custom).shape()
        counts[shape] = counts.get(shape, 0.0) + n * 0.5 ** (max(0.0, now - hour) / MIX_HALF_LIFE)
    return policy.mix_of(counts, pending.shape_counts().items())


def demand_of_job(job: Any) -> policy.Demand:
    """A job record (:class:`scheduler.records.Job`) as the book looks it up:
    its owner, shape, "experiment/stage" and time limit."""
    return policy.Demand(job.id, cpu=job.cpu, gpu=job.gpu, memory=job.memory or 0, gpu_memory=job.gpu_memory or 0,
                         custom=job.custom, user=job.user, queue=job.queue, time_limit=job.timeout,
                         submitted_at=job.submitted_at or 0.0, group=f"{job.experiment}/{job.stage}")


def outlooks(book: policy.DurationBook, pending: Iterable[policy.Demand],
             running: Iterable[tuple[policy.RunningJob, policy.Demand]], queues: Iterable[policy.QueueConfig],
             now: float) -> dict[int, Outlook]:
    """{job id: its :class:`Outlook`} for pending jobs and running ones (each
    with the demand it was placed for), as the policy sees them at ``now``."""
    configs = {q.name: q for q in queues}
    out: dict[int, Outlook] = {}
    for d in pending:
        config = configs.get(d.queue)
        tier = (policy.pending_tier(d, config, book.due_at(d) <= now) if config is not None and config.tiers
                else None)
        out[d.job_id] = _outlook(book, d, tier, config)
    for job, d in running:
        config = configs.get(job.queue)
        tier = (policy.tier_of(policy.running_service(job, now), config) if config is not None and config.tiers
                else None)
        out[job.job_id] = _outlook(book, d, tier, config, book.left_of(job, now))
    return out


def _outlook(book: policy.DurationBook, d: policy.Demand, tier: int | None,
             config: policy.QueueConfig | None, remaining: float | None = None) -> Outlook:
    return Outlook(book.predict(d), book.basis(d), tier, len(config.tiers) + 1 if config is not None and
                   config.tiers else 0, remaining)
