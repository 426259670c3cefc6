"""One decision: walk the pending jobs in fair-share order and place what may
start, with the parts that own each concern (``Shares`` for fair share and
quotas, ``Backfill`` for the blocked jobs' reservations, ``Preemption`` for reclaiming
a guarantee, ``ClusterRoom`` for where a job fits)."""

from __future__ import annotations

import heapq
from typing import Iterable, Mapping

from scheduler.policy.backfill import Backfill, Reservation
from scheduler.policy.durations import DurationBook
from scheduler.policy.fragmentation import ShapeMix
from scheduler.policy.explain import JobClass, waiting_reasons
from scheduler.policy.indexes import PendingIndex, RunningIndex
from scheduler.policy.preemption import Preemption
from scheduler.policy.records import (DEFAULT_POLICY, GRAIN, POLICIES, Decision, Demand, Node, Placement, QueueConfig,
                                      RunningJob)
from scheduler.policy.room import ClusterRoom, Need, NodeRoom, never_fits
from scheduler.policy.shares import Shares
from scheduler.policy.text import delay_text
from scheduler.policy.tiers import pending_tier
from scheduler.policy.usage import Capacity

PLACED, WAITING, UNSCHEDULABLE, STOP = range(4)


class Pass:
    """One scheduling decision: takes the next job from the least-loaded queue's
    least-loaded user until every class of jobs is placed or stuck."""

    def __init__(self, nodes: list[Node], known: list[Node], running: Iterable[RunningJob] | RunningIndex,
                 queues: Iterable[QueueConfig] | None, usage: Mapping | None, now: float, policy: str, explain: bool,
                 room: ClusterRoom | None = None, capacity: Capacity | None = None,
                 durations: DurationBook | None = None, mix: ShapeMix | None = None):
        self.decision = Decision()
        self.cluster = room if room is not None else ClusterRoom(nodes)
        # The shapes expected, for fragmentation-aware placement (labq only).
        self.cluster.mix = mix if policy == "labq" else None
        self.known = known
        self.running = running if isinstance(running, RunningIndex) else list(running)
        self.now, self.policy, self.explain = now, policy, explain
        # Predicted durations order a user's jobs (labq only: the others are the baselines).
        self.durations = durations if policy == "labq" else None
        self._due: dict[int, float] = {}  # job id -> due time (memo)
        queues = list(queues or ())  # read twice: here and by Shares
        self._tiered = policy == "labq" and any(q.tiers for q in queues)
        capacity = capacity if capacity is not None else Capacity.of(known or nodes)
        self.shares = Shares(known, capacity, self.running, queues, usage, policy)
        self.backfill = Backfill(self.cluster, self.running, now, self.durations)
        self.preemption = Preemption(self.shares, self.cluster, self.running, self.decision, now)
        self.may_preempt = self.shares.may_preempt
        self.unfit: dict[tuple, str] = {}  # shape -> why it fits nowhere now
        self.shapes: set[tuple] = set()
        self.never: dict[tuple, str | None] = {}
        self.needs: dict[tuple, Need] = {}
        self.blocked_by: int | None = None  # fifo: the head that blocks everything

    def run(self, pending: PendingIndex) -> Decision:
        """Place what may start; then explain the stuck ones."""
        shares = self.shares
        classes, streams = self._streams(pending)
        shares.entitle(streams, self.running)
        users: dict[str, list] = {}
        for (queue, user), heap in streams.items():
            heapq.heapify(heap)
            users.setdefault(queue, []).append((shares.user_load(queue, user), heap[0][0], user))
        queue_heap = []
        for queue, heap in users.items():
            heapq.heapify(heap)
            queue_heap.append(shares.queue_key(queue))
        heapq.heapify(queue_heap)
        while queue_heap:
            queue_key = heapq.heappop(queue_heap)
            queue = queue_key[-1]
            user_heap = users[queue]
            user = heapq.heappop(user_heap)[-1]
            stream = streams[(queue, user)]
            if self._walk_user(classes, stream, user_heap, queue_heap, queue_key, user) == STOP:
                break
            if stream:
                heapq.heappush(user_heap, (shares.user_load(queue, user), stream[0][0], user))
            if user_heap:
                heapq.heappush(queue_heap, shares.queue_key(queue))
        if self.explain:
            self.decision.waiting.update(
                waiting_reasons(classes, shares, self.policy == "fifo", self.blocked_by,
                                self._order_key if self.durations is not None or self._tiered else None))
        if self.blocked_by is not None:
            self.decision.blocked_by = self.blocked_by
            self.decision.stuck_shapes = frozenset(self.unfit)
        elif not self.decision.preempt and all(cls.stop >= len(cls.jobs) or cls.shape in self.unfit
                                                for cls in classes):
            self.decision.stuck_shapes = frozenset(self.unfit)
        return self.decision

    def _walk_user(self, classes: list[JobClass], stream: list, user_heap: list, queue_heap: list,
                   queue_key: tuple, user: str) -> int:
        """Consider this user's next jobs for as long as they stay first in line:
        until one is placed (loads change), another user or queue comes first,
        or the stream ends."""
        load = self.shares.user_load(queue_key[-1], user)
        while stream:
            _, index, cursor = heapq.heappop(stream)
            cls = classes[index]
            outcome = self._consider(cls, cursor)
            if outcome == STOP:
                return STOP
            if cls.why is None:
                cls.stop = cursor + 1
                if cursor + 1 < len(cls.jobs):
                    heapq.heappush(stream, (self._order_key(cls.jobs[cursor + 1]), index, cursor + 1))
            if outcome == PLACED or not stream:
                return outcome
            if (user_heap and user_heap[0] < (load, stream[0][0], user)) or (queue_heap and queue_heap[0] < queue_key):
                return outcome
        return WAITING

    def _streams(self, pending: PendingIndex) -> tuple[list[JobClass], dict[tuple, list]]:
        """One heap of classes per (queue, user), keyed by each class's next job;
        fifo and priority see one stream for everyone."""
        classes: list[JobClass] = []
        streams: dict[tuple, list] = {}
        fair, shapes = self.shares.fair, self.shapes
        for (queue, user, priority, shape, *_), jobs in pending.classes():
            key = self._order_key(jobs[0])
            streams.setdefault((queue, user) if fair else ("", ""), []).append((key, len(classes), 0))
            classes.append(JobClass(jobs, shape))
            shapes.add(shape)
        return classes, streams

    def _order_key(self, entry: tuple) -> tuple:
        """A pending job's place in its user's line: submission order (fifo);
        priority, then submission order; under labq, priority, then its tier in
        a queue with tiers (policy.tiers), then its due time when durations are
        predicted (policy.durations), then submission order.  (One stream holds
        one queue's jobs, so its keys all have the same form.)"""
        seq, job_id, d = entry
        if self.policy == "fifo":
            return (seq, job_id)
        if self.durations is None and not self._tiered:
            return (-d.priority, seq, job_id)
        key: tuple = (-d.priority,)
        due = None
        if self.durations is not None:
            due = self._due.get(job_id)
            if due is None:
                due = self._due[job_id] = self.durations.due_at(d)
        if self.shares.quotas:
            config = self.shares.config(d.queue)
            if config.tiers:
                key += (pending_tier(d, config, due is not None and due <= self.now),)
        if due is not None:
            key += (due,)
        return key + (seq, job_id)

    def _consider(self, cls: JobClass, cursor: int) -> int:
        d = cls.jobs[cursor][2]
        missing = self._never_fits(d, cls.shape)
        if missing is not None:
            cls.stuck(cursor, missing, unschedulable=True)
            self.unfit.setdefault(cls.shape, missing)
            for _, job_id, _ in cls.jobs:
                self.decision.unschedulable[job_id] = missing
            return UNSCHEDULABLE
        need = self.needs.get(cls.shape) or self.needs.setdefault(cls.shape, Need(d))
        if self.shares.quotas:
            why = self.shares.quota_block(d, cls.shape)
            if why:
                cls.stuck(cursor, why)
                return WAITING
        if self.unfit.get(cls.shape) is not None:
            cls.stuck(cursor, self.unfit[cls.shape])
            return self._stop_if_all_stuck()
        backfill = self.backfill
        # The reservations already made; none yet: worked out below, once a job behind a blocked one fits.
        in_the_way = backfill.in_the_way(d) if backfill.reservations else ()
        known_delay = in_the_way and backfill.known_delay(cls.shape, in_the_way)
        if known_delay:
            cls.stuck(cursor, delay_text(known_delay, d))
            return WAITING
        found = self.cluster.find(need)
        if found is None:
            return self._blocked(d, cls, cursor, need, self.cluster.why_waiting(d, need))
        if not backfill.reservations:
            in_the_way = backfill.in_the_way(d)
        if not in_the_way:
            self._place(d, need, *found)
            return PLACED
        # (A delay known for these reservations was caught above: this search is new.)
        found = self.cluster.find(need, backfill.check(need, in_the_way))
        if found is None:
            cls.stuck(cursor, delay_text(backfill.delay_reason(cls.shape, in_the_way), d))
            return WAITING
        self._place(d, need, *found, in_the_way=in_the_way)
        return PLACED

    def _blocked(self, d: Demand, cls: JobClass, cursor: int, need: Need, why: str) -> int:
        """``d`` does not fit anywhere now: it waits; under fifo nothing behind it
        may start; under labq the first such job of each shape gets a reservation, and a queue
        under its guarantee may reclaim capacity by preemption."""
        self.unfit[cls.shape] = why
        if self.policy == "fifo":
            cls.stuck(cursor, why)
            self.blocked_by = d.job_id
            return STOP
        if self.shares.quotas:
            self.backfill.blocked(d, need)
            why = (self.preemption.reclaim_for(d, cls.shape, need)
                   or self.preemption.demote_for(d, cls.shape, need, self._tier(d))
                   or self.preemption.shorten_for(d, cls.shape, need, self.durations) or why)
        cls.stuck(cursor, why)
        return self._stop_if_all_stuck()

    def _stop_if_all_stuck(self) -> int:
        """Without reasons to write, stop once no pending shape fits anywhere: the
        rest of the walk could place nothing (unless a queue may still preempt)."""
        if not self.explain and not self.may_preempt and len(self.unfit) >= len(self.shapes):
            return STOP
        return WAITING

    def _place(self, d: Demand, need: Need, w: NodeRoom, gpus: tuple[int, ...], share: int,
               in_the_way: tuple[Reservation, ...] = ()) -> None:
        gpu_share = share / GRAIN if need.gpu_memory else d.gpu
        job = RunningJob(d.job_id, d.user, d.queue, d.cpu, gpu_share, d.memory, w.id, gpus, self.now,
                         d.time_limit, d.priority, d.custom, checkpoints=d.checkpoints, shape=d.shape(),
                         group=d.group)
        self.backfill.placed(job, w, need, gpus, share, in_the_way)
        self.cluster.take(w, need, gpus, share)
        why = self.cluster.last_why if self.explain and self.cluster.mix else ""
        self.decision.placements.append(Placement(d.job_id, w.id, gpus, gpu_share, why))
        self.shares.add(job)

    def _tier(self, d: Demand) -> int:
        config = self.shares.config(d.queue)
        due = self.durations is not None and self.durations.due_at(d) <= self.now
        return pending_tier(d, config, due)

    def _never_fits(self, d: Demand, shape: tuple) -> str | None:
        if shape not in self.never:
            self.never[shape] = never_fits(d, self.known)
        return self.never[shape]


def decide(demands: Iterable[Demand] | PendingIndex, nodes: list[Node], known: list[Node] | None = None, *,
           running: Iterable[RunningJob] | RunningIndex = (), queues: Iterable[QueueConfig] | None = None,
           usage: Mapping | None = None, now: float = 0.0, policy: str = DEFAULT_POLICY,
           explain: bool = True, room: ClusterRoom | None = None, capacity: Capacity | None = None,
           durations: DurationBook | None = None, mix: ShapeMix | None = None) -> Decision:
    """Which pending jobs start now, on which node and GPUs, and which running jobs
    to preempt.  ``nodes`` may be placed on (their free capacity already net of
    ``running``); ``known`` (default: the same) are all nodes ever seen, against
    which "can this job ever fit" and the dominant-share capacity are judged.
    ``explain=False`` skips the per-job waiting reasons (and the jobs they are for).
    ``room`` and ``capacity``: what a caller that decides again and again (the
    simulator) keeps between decisions instead of this reading every node each
    time: ``nodes``' free capacity as a :class:`ClusterRoom` (``give_back`` as
    jobs end; the decision books its placements in it) and ``Capacity.of(known)``.
    ``durations``: past run times (:class:`DurationBook`); under ``labq`` they
    order each user's jobs shortest-predicted-first with aging, and give a job
    that is due a reservation from the running jobs' predicted ends.  ``mix``:
    the job shapes expected (:class:`ShapeMix`); under ``labq`` a job goes where
    it fragments the cluster least for them (policy.fragmentation), else best fit."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    pending = demands if isinstance(demands, PendingIndex) else PendingIndex(demands)
    known = nodes if known is None else known
    return Pass(nodes, known, running, queues, usage, now, policy, explain, room, capacity, durations,
                mix).run(pending)
