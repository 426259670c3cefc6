"""When will a pending job start?  The live policy, replayed forward in virtual time.

What runs now and what waits are handed to the simulator's replay, which asks
the same :func:`scheduler.policy.decide` (``policy="labq"``) the live loop asks,
each time a job is expected to end: the first time a pending job is placed is its
estimated start.  Nothing here reads the clock, the store or Ray; the last
section turns what the store holds into these plain inputs (for the CLI, and
the durations for the live loop).

How long a job runs (:func:`expected_duration`): the median of the latest
succeeded attempts of the same experiment name and stage (how long each held its
resources, dispatch to end); without any, its timeout; without a timeout, it is
unknown.  A job is stopped at its timeout, so the guess never exceeds it.

Unknown durations: a job whose duration is unknown holds its resources forever
in the replay.  A running one therefore blocks its share of its node, and a
pending one still gets an estimate (when it can start) but then blocks what it
took.  So a job whose start depends on such a job ending gets no estimate
(None), while jobs that start on other capacity, or before it, still get one.
A running job already past its expected end is taken to end ``MIN_REMAINING``
seconds from now.

Bounded work: the replay is fed at most ``limit`` jobs of each class of
interchangeable jobs (same queue, user, priority, shape and time limit; within a
class jobs start in submission order, so no job past the first ``limit`` of its
class can be among the first ``limit`` to start), and stops once ``limit``
pending jobs have a start or its decisions have walked ``WORK_BUDGET`` classes
and running jobs in all.  Every job not started by then gets None.

Not modelled: jobs still blocked on upstream jobs (no estimate), jobs submitted
later, failures and retries, and custom resources held by running jobs (the
records do not carry them).
"""

from __future__ import annotations

import dataclasses
import operator
import statistics
from typing import Any, Iterable, Mapping, Sequence

from scheduler import policy
from scheduler.virtual_cluster import VirtualCluster

DEFAULT_LIMIT = 500
# The replay also stops once its decisions have walked this many classes of
# pending jobs and running jobs in all (a few microseconds each): with a few
# classes it reaches ``limit`` starts first; with thousands it stops early.
WORK_BUDGET = 30_000
# A running job past its expected end is assumed to end this many seconds from now.
MIN_REMAINING = 1.0
# How many recent successes of a stage its duration is guessed from.
RECENT_RUNS = 50


def expected_duration(history: Sequence[float], timeout: float | None) -> float | None:
    """Seconds a job is expected to hold its resources: the median of ``history``
    (past successes of its stage), else ``timeout``; never more than ``timeout``
    (it is stopped there); None when neither is known."""
    guess = statistics.median(history) if history else None
    if timeout:
        return timeout if guess is None else min(guess, timeout)
    return guess


# ---------------------------------------------------------------- the replay

def _forward(cluster: VirtualCluster, now: float, limit: int, work_budget: int) -> None:
    """Decide now, then at each expected end, until ``limit`` jobs have started,
    nothing more will end, or the decisions have used up ``work_budget``."""
    cluster.decide(now)
    while cluster.ends and len(cluster.first_start) < limit and cluster.work < work_budget:
        t = cluster.next_end()
        cluster.advance(t)
        cluster.end_due(t)
        cluster.decide(t)


def _adopt_running(cluster: VirtualCluster, running: Iterable[policy.RunningJob],
                   durations: Mapping[int, float | None], now: float) -> None:
    for r in running:
        free = cluster.free.get(r.node_id)
        if free is not None:
            r = dataclasses.replace(r, gpu_indices=tuple(i for i in r.gpu_indices if i < free.gpu_total))
        duration = durations.get(r.job_id)
        # No duration: it never ends, and what waits for its room gets no estimate.
        left = None if duration is None else max(r.started_at + duration - now, MIN_REMAINING)
        cluster.adopt(r, left, now)


def estimate_starts(pending: Iterable[policy.Demand], running: Iterable[policy.RunningJob],
                    nodes: list[policy.Node], *, durations: Mapping[int, float | None], now: float,
                    known: list[policy.Node] | None = None, queues: list[policy.QueueConfig] | None = None,
                    usage: Mapping | None = None, half_life: float = policy.DEFAULT_HALF_LIFE,
                    limit: int = DEFAULT_LIMIT, work_budget: int = WORK_BUDGET,
                    book: policy.DurationBook | None = None) -> dict[int, float | None]:
    """{pending job id: estimated start (epoch seconds), or None}.

    ``nodes`` may be placed on and ``known`` (default: the same) are all nodes, as
    :func:`policy.decide` takes them; only their totals count: what is free is
    worked out from ``running`` (each with its node and GPU indices).
    ``durations`` maps job ids, running and pending, to expected run time in
    seconds (:func:`expected_duration`); a missing or None one never ends.
    ``usage`` is the decayed usage at ``now`` (:class:`policy.Usage`); ``book``
    the run times the live policy orders by (policy.durations), so the replay
    takes jobs in the order the scheduler will."""
    pending = list(pending)
    out: dict[int, float | None] = {d.job_id: None for d in pending}
    if not pending or limit <= 0:
        return out
    cluster = VirtualCluster(nodes, nodes if known is None else known, policy_name=policy.DEFAULT_POLICY,
                             queues=queues, half_life=getattr(usage, "half_life", half_life), usage=usage, now=now,
                             durations=book)
    for d in first_of_each_class(pending, limit):
        cluster.arrive(d, durations.get(d.job_id))
    _adopt_running(cluster, running, durations, now)
    _forward(cluster, now, limit, work_budget)
    counted = 0
    for job_id, at in cluster.first_start.items():  # in the order they started
        if job_id in out and counted < limit:
            out[job_id] = at
            counted += 1
    return out


def first_of_each_class(pending: Iterable[policy.Demand], limit: int) -> list[policy.Demand]:
    """The first ``limit`` jobs, in submission order, of each class of
    interchangeable jobs (as :class:`policy.PendingIndex` groups them): within a
    class jobs start in that order, so only these can be among the first ``limit``
    jobs to start."""
    taken: dict[tuple, int] = {}
    fed = []
    for d in sorted(pending, key=operator.attrgetter("seq", "job_id")):
        key = policy.PendingIndex.class_key(d)
        count = taken.get(key, 0)
        if count < limit:
            taken[key] = count + 1
            fed.append(d)
    return fed


# ---------------------------------------------------------------- inputs from the store's records

def nodes_from_snapshots(snapshots: Iterable[Any]) -> tuple[list[policy.Node], list[policy.Node], dict[str, list[float]]]:
    """(alive nodes, all nodes, allocated share per GPU of each alive node) from
    the scheduler's last :class:`records.NodeSnapshot` of each node."""
    alive: list[policy.Node] = []
    known: list[policy.Node] = []
    allocated: dict[str, list[float]] = {}
    for s in snapshots:
        node = policy.node_of(s.node_id, s.total, s.gpus)
        known.append(node)
        if s.alive:
            alive.append(node)
            shares = {g.get("index"): float(g.get("allocated") or 0.0) for g in s.gpus}
            allocated[s.node_id] = [shares.get(i, 0.0) for i in range(node.gpu_total)]
    return alive, known, allocated


def place_running(running: Iterable[policy.RunningJob], nodes: list[policy.Node],
                  allocated: Mapping[str, list[float]] | None = None) -> list[policy.RunningJob]:
    """Give GPU indices to running jobs that lack them (the store records a running
    attempt's node and GPU share, not which GPU): whole-GPU jobs first, then shares,
    largest first, each onto the GPU whose ``allocated`` share (the node snapshot's
    reading) best matches, else the fullest GPU with room."""
    gpus_of = {n.node_id: n.gpu_total for n in nodes}
    free = {node_id: [1.0] * count for node_id, count in gpus_of.items()}
    hint = {node_id: list((allocated or {}).get(node_id) or [0.0] * count) for node_id, count in gpus_of.items()}
    placed: list[policy.RunningJob] = []
    for r in sorted(running, key=lambda r: (-(r.gpu > 1), -r.gpu, r.job_id)):
        if r.gpu_indices or r.gpu <= 0 or r.node_id not in free:
            placed.append(r)
            continue
        room, told = free[r.node_id], hint[r.node_id]
        if r.gpu > 1:
            order = sorted(range(len(room)), key=lambda i: (-(told[i] >= 1 - 1e-6), i))
            chosen = tuple(i for i in order if room[i] >= 1 - 1e-6)[:int(round(r.gpu))]
            share = 1.0
        else:
            fits = [i for i in range(len(room)) if room[i] >= r.gpu - 1e-6]
            matching = [i for i in fits if told[i] >= r.gpu - 1e-6]
            pick = min(matching, key=lambda i: (told[i], i)) if matching else (
                min(fits, key=lambda i: (room[i], i)) if fits else None)
            chosen = () if pick is None else (pick,)
            share = r.gpu
        for i in chosen:
            room[i] -= share
            told[i] = max(0.0, told[i] - share)
        placed.append(dataclasses.replace(r, gpu_indices=chosen))
    return placed


def durations_from(store: Any, timeouts: Mapping[int, float | None]) -> dict[int, float | None]:
    """:func:`expected_duration` of each job in ``timeouts`` (job id -> its
    timeout), from the store's history of its experiment and stage."""
    history = store.stage_durations(list(timeouts), recent=RECENT_RUNS)
    return {job_id: expected_duration(history.get(job_id, ()), timeout) for job_id, timeout in timeouts.items()}


def from_store(store: Any, now: float, *, half_life: float, queues: Sequence[policy.QueueConfig],
               limit: int = DEFAULT_LIMIT, stretch: float = policy.DEFAULT_STRETCH
               ) -> tuple[dict[int, float | None], dict[int, Any]]:
    """Estimates for the pending jobs from what the store holds (the oldest
    ``limit`` of each queue, user and shape; the rest get none): pending and
    running jobs, the scheduler's last node snapshots, the ``queues`` (the
    settings' queue_configs()), and usage from the attempts' history decayed with
    ``half_life`` (as the live loop seeds it); and the outlook
    (:class:`records.Outlook`) of those jobs and the running ones, as the loop
    writes them."""
    from scheduler import accounting, run_history

    waiting = store.waiting(per_shape=limit)  # the rest get no estimate
    if not waiting:
        return {}, {}
    alive, known, allocated = nodes_from_snapshots(store.nodes())
    rows = store.running_attempts()
    served = store.attained([job.id for attempt, job in rows if attempt.number > 1])
    checkpointing = store.checkpointing((job.experiment_id, job.stage) for _, job in rows)
    demands = {job.id: run_history.demand_of_job(job) for _, job in rows}  # as the book looks them up
    running = place_running(
        (policy.RunningJob(job_id=job.id, user=job.user, queue=job.queue, cpu=job.cpu,
                           gpu=attempt.gpu_share or job.gpu, memory=job.memory or 0, node_id=attempt.node_id or "",
                           started_at=attempt.dispatched_at or now, time_limit=job.timeout, priority=job.priority,
                           custom=job.custom, attained=served.get(job.id, (0.0, 0))[0],
                           preemptions=served.get(job.id, (0.0, 0))[1],
                           checkpoints=checkpointing[(job.experiment_id, job.stage)],
                           shape=demands[job.id].shape(), group=demands[job.id].group)
         for attempt, job in rows), alive, allocated)
    pending = [policy.demand_of(w) for w in waiting]
    timeouts = {d.job_id: d.time_limit for d in pending} | {job.id: job.timeout for _, job in rows}
    durations = durations_from(store, timeouts)
    capacity = policy.Capacity.of(known)
    # Past usage only orders queues and users against each other: with one of
    # each, skip its sum over every attempt of the last ten half-lives.
    alone = len({(d.queue, d.user) for d in pending} | {(r.queue, r.user) for r in running}) <= 1
    shapes = [] if alone else store.decayed_use(now - 10 * half_life, now, half_life)
    usage = policy.Usage(accounting.usage_of_shapes(shapes, capacity.dominant), half_life)
    book = run_history.duration_book(store, stretch)
    starts = estimate_starts(pending, running, alive, known=known, durations=durations, now=now,
                             queues=list(queues), usage=usage, half_life=half_life, limit=limit, book=book)
    outlooks = run_history.outlooks(book, pending, [(r, demands[r.job_id]) for r in running], queues, now)
    return {w.id: starts.get(w.id) for w in waiting}, outlooks
