"""A cluster in memory that the policy schedules onto, with a clock the caller
moves: what ``labq simulate`` replays a trace on and what the estimates of when
pending jobs start run forward from now.

It owns free capacity (one :class:`policy.CapacityBook`), the pending and
running jobs, decayed usage, the heap of expected ends and what happened to
each job (first start, finish, preemptions, time-outs).  Its callers differ only
in what they feed it: the simulator a trace's arrivals, the estimates the queue
and the running jobs of now.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Iterable, Mapping

from scheduler import policy


class VirtualCluster:
    """Nodes' totals (free capacity is ignored: it starts empty), the policy to
    decide with and its queues; ``usage`` and ``now`` seed decayed usage (the
    estimates start from the live history), else it starts from nothing."""

    def __init__(self, nodes: Iterable[policy.Node], known: Iterable[policy.Node], *, policy_name: str,
                 queues: list[policy.QueueConfig] | None, half_life: float,
                 usage: Mapping | None = None, now: float | None = None, restart_cost: float = 0.0,
                 durations: policy.DurationBook | None = None, learn: bool = False,
                 mix_book: policy.MixBook | None = None):
        self.policy = policy_name
        # The shapes seen arrive, decayed: with the pending queue, the mix that
        # placement keeps unfragmented (policy.fragmentation); None: best fit.
        self.mix_book = mix_book
        self.mix: policy.ShapeMix | None = None
        self._arrived = self._arrived_at_mix = 0
        # Run times the policy predicts from; ``learn``: add each job's as it ends
        # (a replay), else the caller's book stays as given (an estimate).
        self.durations = durations
        self.learn = learn
        self.queues = queues
        # Seconds a preempted job loses on top of its progress since its last
        # checkpoint: restarting its process, reloading data and model.
        self.restart_cost = restart_cost
        self.known = [policy.empty_copy(n) for n in known]
        self.free = policy.CapacityBook(policy.empty_copy(n) for n in nodes)
        self.capacity = policy.Capacity.of(self.known)
        self.book = policy.UsageBook(half_life, self.capacity)
        self.last_t: float | None = None
        if now is not None:
            self.book.seed(usage or {}, now)
            self.last_t = now
        self.pending = policy.PendingIndex()
        self.running = policy.RunningIndex()
        self.demands: dict[int, policy.Demand] = {}  # every job seen, to requeue after a preemption
        self.remaining: dict[int, float | None] = {}  # run time left; None: never ends
        self.attempt: dict[int, int] = {}
        self.ends: list[tuple[float, int, int]] = []  # (time, job, attempt)
        self.first_start: dict[int, float] = {}  # in the order jobs first started
        self.finish: dict[int, float] = {}
        self.unschedulable: set[int] = set()
        self.alloc = [0.0, 0.0]  # gpu, cpu held now
        self.busy = [0.0, 0.0]  # gpu-seconds, cpu-seconds
        self.preempted = self.timed_out = self.decisions = 0
        self.work = 0  # classes and running jobs visited by decisions so far
        self.last: policy.Decision | None = None  # the last decision, while it says what is stuck
        self.may_change = True
        self.may_preempt = policy_name == "labq" and any(q.preempt or q.tiers or q.preempt_longer for q in queues or ())
        self.example: dict[tuple, policy.Demand] = {}  # shape -> a demand of that shape
        # The free capacity as the policy indexes it, kept between decisions (built
        # at the first): a decision books its placements in it, an end gives back.
        self.room: policy.ClusterRoom | None = None

    # ------------------------------------------------------------ feeding it

    def arrive(self, d: policy.Demand, remaining: float | None) -> None:
        """A job joins the queue and will run for ``remaining`` seconds once started."""
        self.demands[d.job_id] = d
        self.remaining[d.job_id] = remaining
        self.example.setdefault(d.shape(), d)
        if self.mix_book is not None:
            self.mix_book.add(d.shape(), d.submitted_at)
            self._arrived += 1
        self.pending.add(d)
        stuck = self.last
        if stuck is None or (stuck.blocked_by is None and d.shape() not in stuck.stuck_shapes):
            self.may_change = True

    def adopt(self, run: policy.RunningJob, remaining: float | None, now: float) -> None:
        """A job already running, ``remaining`` seconds from its end (None: never ends)."""
        self.demands[run.job_id] = policy.Demand(
            job_id=run.job_id, cpu=run.cpu, gpu=run.gpu, memory=run.memory, custom=dict(run.custom),
            priority=run.priority, seq=run.job_id, user=run.user, queue=run.queue, time_limit=run.time_limit,
            submitted_at=run.started_at, checkpoints=run.checkpoints)
        self._book(run, -1)
        self.room = None  # rebuilt from the book at the next decision
        self.running.add(run)
        self.book.add(run)
        self.attempt[run.job_id] = 1
        self.remaining[run.job_id] = remaining
        if remaining is not None:
            heapq.heappush(self.ends, (now + remaining, run.job_id, 1))

    # ------------------------------------------------------------ the clock

    def advance(self, t: float) -> None:
        """Move the clock to ``t``: resource-seconds and decayed usage accrue."""
        if self.last_t is not None and t > self.last_t:
            dt = t - self.last_t
            self.busy[0] += self.alloc[0] * dt
            self.busy[1] += self.alloc[1] * dt
        self.last_t = t
        self.book.advance(t)

    def next_end(self) -> float:
        return self.ends[0][0] if self.ends else math.inf

    def end_due(self, t: float) -> None:
        """End every job due to end by ``t`` (a preempted attempt's end no longer counts)."""
        while self.ends and self.ends[0][0] <= t:
            _, job, attempt = heapq.heappop(self.ends)
            if self.attempt.get(job) == attempt:
                self._end(job, t)

    # ------------------------------------------------------------ decisions

    def decide(self, t: float) -> None:
        """Ask the policy, if a decision is due.  One is skipped only when it
        provably places nothing: the last one left every pending shape fitting
        nowhere (or, under fifo, the head blocked), and since then nothing freed
        room for any of them."""
        if not self.may_change:
            return
        self.work += len(self.pending.classes()) + len(self.running) + 1
        self.may_change = False
        self.last = None
        for _ in range(3):  # after a preemption, decide again at once: the freed room is there now
            if not self.pending:
                return
            self.decisions += 1
            if self.room is None:
                self.room = policy.ClusterRoom(self.free.nodes())
            decision = policy.decide(self.pending, self.free.nodes(), self.known,
                                     running=self.running, queues=self.queues,
                                     usage=self.book.snapshot(), now=t, policy=self.policy, explain=False,
                                     room=self.room, capacity=self.capacity, durations=self.durations,
                                     mix=self._current_mix(t))
            for job in decision.unschedulable:
                self.pending.remove(job)
                self.unschedulable.add(job)
            if decision.stuck_shapes and not self.may_preempt:
                self.last = decision
            for placement in decision.placements:
                self._start(placement, t)
            if not decision.preempt:
                return
            for job in decision.preempt:
                self._preempt(job, t)

    def _current_mix(self, t: float) -> policy.ShapeMix | None:
        """The mix, rebuilt once arrivals have grown by 2% (or 32) since it was:
        it moves slowly, and each rebuild re-scores every node state."""
        if self.mix_book is None:
            return None
        if self.mix is None or self._arrived - self._arrived_at_mix >= max(32, self._arrived // 50):
            self.mix = self.mix_book.mix(self.pending.shape_counts().items(), t)
            self._arrived_at_mix = self._arrived
        return self.mix

    def _start(self, p: policy.Placement, t: float) -> None:
        d = self.pending.remove(p.job_id)
        run = policy.RunningJob(d.job_id, d.user, d.queue, d.cpu, p.gpu_share, d.memory, p.node_id, p.gpu_indices,
                                t, d.time_limit, d.priority, d.custom,
                                self.durations.predict(d) if self.durations is not None else None,
                                d.attained, d.preemptions, d.checkpoints, d.shape(), d.group)
        self._book(run, -1)
        self.running.add(run)
        self.book.add(run)
        self.first_start.setdefault(d.job_id, t)
        remaining = self.remaining[d.job_id]
        self.attempt[d.job_id] = self.attempt.get(d.job_id, 0) + 1
        runs_for = remaining if remaining is not None else math.inf
        if d.time_limit is not None and d.time_limit < runs_for:
            runs_for = d.time_limit
        if runs_for < math.inf:
            heapq.heappush(self.ends, (t + runs_for, d.job_id, self.attempt[d.job_id]))

    def _book(self, run: policy.RunningJob, sign: int) -> None:
        """Take (-1) or give back (+1) what ``run`` holds on its node (nothing, on
        a node the cluster does not hold: a dead one)."""
        held = self.free.take(run) if sign < 0 else self.free.give_back(run)
        if held:
            self.alloc[0] -= sign * run.share_per_gpu * len(run.gpu_indices)
            self.alloc[1] -= sign * run.cpu

    def _freed(self, node_id: str) -> None:
        """Capacity came back on one node: a decision is due if a stuck shape now fits there."""
        free = self.free.get(node_id)
        if free is None:
            return
        if self.may_change or self.last is None:
            self.may_change = True
            return
        for shape in self.last.stuck_shapes:
            if policy.fits_now(self.example[shape], free):
                self.may_change = True
                return

    def _end(self, job: int, t: float) -> None:
        run = self.running.remove(job)
        self._book(run, +1)
        if self.room is not None:
            self.room.give_back(run)
        self._freed(run.node_id)
        self.book.remove(run)
        remaining = self.remaining[job]
        if run.time_limit is not None and (remaining is None or remaining > run.time_limit + 1e-9):
            self.timed_out += 1
        self.finish[job] = t
        if self.learn and self.durations is not None:
            d = self.demands[job]
            self.durations.add(d.user, d.shape(), d.group, t - run.started_at)

    def _preempt(self, job: int, t: float) -> None:
        run = self.running.remove(job)
        self._book(run, +1)
        if self.room is not None:
            self.room.give_back(run)
        self.may_change = True
        self.book.remove(run)
        self.attempt[job] += 1  # its end event no longer counts
        if self.remaining[job] is not None:  # resumes from its checkpoint, after restarting
            self.remaining[job] = max(0.0, self.remaining[job] - (t - run.started_at)) + self.restart_cost
        self.preempted += 1
        # It comes back with the service it attained (least-attained-service tiers go by it).
        d = self.demands[job] = dataclasses.replace(self.demands[job], attained=policy.running_service(run, t),
                                                     preemptions=run.preemptions + 1)
        self.pending.add(d)
