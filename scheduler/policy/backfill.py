"""EASY backfill during one decision: the first job blocked for capacity (the
head) gets a reservation, the node and time at which it can start by the time
limits of the jobs in its way; a later job may start only where and while it
cannot delay that.

With predicted durations and ``reserve_after`` set (policy.durations), a blocked
job owed a reservation (due, and waited that long) is preferred as the head, and
its reservation is worked out from the running jobs' predicted ends where they
have no limit: without limits nothing could be reserved, and a multi-GPU job
would wait for as long as smaller jobs kept taking each GPU that freed up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from scheduler.policy.durations import DurationBook
from scheduler.policy.records import INF, Demand, RunningJob
from scheduler.policy.room import ClusterRoom, Need, NodeRoom
from scheduler.policy.text import secs


@dataclass
class Reservation:
    """The head, where and when it starts, and what its node will still have
    free then (``extra``)."""

    job_id: int
    node_id: str
    at: float
    extra: NodeRoom
    predicted: bool = False  # from predicted ends: a later job's own prediction says whether it is done by then


class Backfill:
    def __init__(self, cluster: ClusterRoom, running: Iterable[RunningJob], now: float,
                 durations: DurationBook | None = None):
        self.cluster = cluster
        self.running = running
        self.now = now
        self.durations = durations
        self.head: tuple[Demand, Need] | None = None
        self.reservation: Reservation | None = None
        self._tried = False
        self.started: list[RunningJob] = []  # placed in this decision, in the reserved job's way too
        self.delays: dict[tuple, str] = {}  # shape -> why, when it fits only where it would delay the head

    def blocked(self, d: Demand, need: Need) -> None:
        """``d`` fits nowhere now: the first such job is the head, unless a later
        one is due and the first is not (and no reservation is made yet)."""
        if self.head is None or (not self._tried and not self.is_due(self.head[0]) and self.is_due(d)):
            self.head = (d, need)

    def is_due(self, d: Demand) -> bool:
        """Whether ``d`` has waited long enough to be owed a reservation from predictions."""
        return self.durations is not None and self.durations.owed_reservation(d, self.now)

    def reservation_for_backfill(self) -> Reservation | None:
        """The head's reservation, worked out the first time a job behind the head
        could start (a full cluster never needs it)."""
        if self.head is not None and self.reservation is None and not self._tried:
            self._tried = True
            self._reserve(*self.head)
        return self.reservation

    def runs_past(self, d: Demand, reservation: Reservation) -> bool:
        """Whether ``d`` may still run when the reserved job is due to start: by
        its limit, or, for a reservation from predictions, by its prediction."""
        runs_for = d.time_limit
        if reservation.predicted and self.durations is not None:
            runs_for = self.durations.predict(d) if runs_for is None else runs_for
        return runs_for is None or self.now + runs_for > reservation.at

    def delay_reason(self, shape: tuple, reservation: Reservation) -> str:
        """Why jobs of ``shape`` wait: each spot they fit would delay the head."""
        why = self.delays.get(shape)
        if why is None:
            why = self.delays[shape] = (
                f"would delay job {reservation.job_id}, which has node {reservation.node_id} reserved in "
                f"{secs(reservation.at - self.now)}")
        return why

    @staticmethod
    def check(need: Need, r: Reservation):
        """A veto for :meth:`ClusterRoom.find`: on the reserved node, only what the
        head leaves spare."""
        def accept(w: NodeRoom, gpus: tuple[int, ...], share: int) -> bool:
            if w.id != r.node_id:
                return True
            extra = r.extra
            return extra.holds(need) and all(extra.gpu[i] >= share for i in gpus)

        return accept

    def placed(self, job: RunningJob, w: NodeRoom, need: Need, gpus: tuple[int, ...], share: int,
               on_reserved_after: float | None) -> None:
        """A job still running when the reservation is due takes from what the
        reserved node keeps spare then too."""
        r = self.reservation
        if on_reserved_after is not None and w.id == r.node_id:
            r.extra.take(need, gpus, share)
        self.started.append(job)

    def _reserve(self, d: Demand, need: Need) -> None:
        """Where and when the blocked job ``d`` can start at the earliest, if the
        time limits of the jobs in its way say so (or, for a due job, their
        predicted ends)."""
        predicted = self.is_due(d)
        end_of = (lambda j: j.likely_end) if predicted else (lambda j: j.expected_end)
        ending: dict[str, list[RunningJob]] = {}
        for job in (*self.running, *self.started):
            if end_of(job) < INF and job.node_id in self.cluster.nodes:
                ending.setdefault(job.node_id, []).append(job)
        best = None
        for node_id, jobs in ending.items():
            later = self.cluster.nodes[node_id].clone()
            for job in sorted(jobs, key=end_of):
                end = end_of(job)
                if best is not None and end > best[0]:
                    break
                later.release(job)
                picked = later.pick_gpus(need) if later.holds(need) else None
                if picked is not None:
                    if best is None or (end, node_id) < best[:2]:
                        best = (end, node_id, later, picked)
                    break
        if best is not None:
            at, node_id, later, (gpus, share) = best
            later.take(need, gpus, share)
            self.reservation = Reservation(d.job_id, node_id, max(at, self.now), later, predicted)
