"""Preemption during one decision, naming the fewest running jobs on one node
whose stopping lets a pending job fit:

* a queue that may preempt and is under its guarantee takes capacity back from
  queues borrowing beyond theirs;
* in a queue with least-attained-service tiers (policy.tiers), a job takes
  capacity from the same queue's jobs in a higher tier, each of which may be
  preempted so at most ``max_preemptions`` times."""

from __future__ import annotations

from typing import Iterable

from scheduler.policy.durations import DurationBook
from scheduler.policy.records import Decision, Demand, RunningJob
from scheduler.policy.room import ClusterRoom, Need, NodeRoom
from scheduler.policy.shares import Shares
from scheduler.policy.text import secs, vector_text
from scheduler.policy.tiers import pending_elapsed, running_service, tier_of
from scheduler.policy.usage import held_vector

# preempt_longer's factor is multiplied by this for each time a job was preempted.
HURDLE_GROWTH = 2.0


class Preemption:
    def __init__(self, shares: Shares, cluster: ClusterRoom, running: Iterable[RunningJob], decision: Decision,
                 now: float = 0.0):
        self.shares = shares
        self.cluster = cluster
        self.running = running
        self.decision = decision
        self.now = now
        self.tried: set[tuple] = set()  # (queue, shape): one try per pass
        self.preempting: set[int] = set()

    def reclaim_for(self, d: Demand, shape: tuple, need: Need) -> str | None:
        """Name running jobs of borrowing queues to stop so that ``d``, of a queue
        that may preempt and is under its guarantee, can start (into the
        decision's ``preempt``); the reason ``d`` waits then, or None if not
        allowed or not possible."""
        config = self.shares.config(d.queue)
        if not (config.preempt and config.guarantee) or (d.queue, shape) in self.tried:
            return None
        self.tried.add((d.queue, shape))
        if not self.shares.under_guarantee(d.queue, self.shares.demand_vec(d)):
            return None
        victims = self._cheapest_victims(d, need)
        if not victims:
            return None
        guarantee_text = vector_text(config.guarantee)
        for v in victims:
            lent = self.shares.config(v.queue).guarantee
            self.decision.preempt[v.job_id] = (
                f"queue {v.queue!r} borrows beyond its guarantee ({vector_text(lent) or 'none'}); "
                f"queue {d.queue!r} reclaims its guarantee ({guarantee_text}) for job {d.job_id}")
            self.preempting.add(v.job_id)
        return (f"preempting {len(victims)} job{'s' if len(victims) != 1 else ''} of borrowing queues on "
                f"{victims[0].node_id}; starts when they stop")

    def demote_for(self, d: Demand, shape: tuple, need: Need, tier: int) -> str | None:
        """In a queue with tiers, name running jobs of that queue in a tier above
        ``d``'s ``tier`` to stop so that ``d`` can start; the reason ``d`` waits
        then, or None if there are none to stop."""
        config = self.shares.config(d.queue)
        if not config.tiers or (d.queue, shape, "tier") in self.tried:
            return None
        self.tried.add((d.queue, shape, "tier"))
        above: dict[int, tuple[int, float]] = {}  # job id -> (its tier, its service)
        for job in self.running:
            if job.queue == d.queue and job.checkpoints and job.preemptions < config.max_preemptions:
                service = running_service(job, self.now)
                if tier_of(service, config) > tier:
                    above[job.job_id] = (tier_of(service, config), service)
        if not above:
            return None
        victims = self._victims_on_one_node(
            need, lambda job: job.job_id in above,
            # the most served first: the highest tier, then the most service
            lambda j: (-above[j.job_id][0], -above[j.job_id][1], j.job_id))
        if not victims:
            return None
        return self._preempt(victims, config, "of higher tiers", lambda v: (
            f"tier {above[v.job_id][0]} (attained {secs(above[v.job_id][1])} of GPU time) yields to job "
            f"{d.job_id} in tier {tier}: queue {d.queue!r} serves the least-served first"))

    def shorten_for(self, d: Demand, shape: tuple, need: Need, durations: DurationBook | None) -> str | None:
        """In a queue with ``preempt_longer``, name running jobs of that queue
        expected to run that many times longer than ``d`` to stop so that ``d``
        can start; the reason ``d`` waits then, or None if there are none."""
        config = self.shares.config(d.queue)
        if not config.preempt_longer or durations is None or (d.queue, shape, "longer") in self.tried:
            return None
        self.tried.add((d.queue, shape, "longer"))
        mine = durations.remaining(d.user, shape, d.group, pending_elapsed(d), d.time_limit)
        if mine is None:
            return None
        longer: dict[int, float] = {}  # job id -> its expected remaining seconds
        for job in self.running:
            if job.queue == d.queue and job.checkpoints and job.preemptions < config.max_preemptions:
                left = durations.left_of(job, self.now)
                # The bar doubles with each preemption a job has had: a long job
                # yields to far shorter ones, but is not churned.
                if left is not None and left > config.preempt_longer * HURDLE_GROWTH ** job.preemptions * mine:
                    longer[job.job_id] = left
        if not longer:
            return None
        victims = self._victims_on_one_node(need, lambda job: job.job_id in longer,
                                            lambda j: (-longer[j.job_id], j.job_id))  # the longest left first
        if not victims:
            return None
        return self._preempt(victims, config, "expected to run longer", lambda v: (
            f"expected to run {secs(longer[v.job_id])} more; yields to job {d.job_id}, expected to run "
            f"{secs(mine)}: queue {d.queue!r} runs the shortest expected first"))

    def _preempt(self, victims: list[RunningJob], config, which: str, why) -> str:
        """Name ``victims`` for preemption in the decision, each with ``why(v)``
        and its count against ``max_preemptions``; the reason the job they make
        room for waits."""
        for v in victims:
            self.decision.preempt[v.job_id] = (
                f"{why(v)} (preempted {v.preemptions + 1} of at most {config.max_preemptions} times)")
            self.preempting.add(v.job_id)
        return (f"preempting {len(victims)} job{'s' if len(victims) != 1 else ''} {which} on "
                f"{victims[0].node_id}; starts when they stop")

    def _victims_on_one_node(self, need: Need, eligible, order) -> list[RunningJob]:
        """The fewest ``eligible`` running jobs on one node, taken in ``order``,
        whose stopping lets ``need`` fit there."""
        by_node: dict[str, list[RunningJob]] = {}
        for job in self.running:
            if job.job_id not in self.preempting and job.node_id in self.cluster.nodes and eligible(job):
                by_node.setdefault(job.node_id, []).append(job)
        best: list[RunningJob] | None = None
        for node_id, jobs in sorted(by_node.items()):
            later = self.cluster.nodes[node_id].clone()
            chosen: list[RunningJob] = []
            for job in sorted(jobs, key=order):
                if best is not None and len(chosen) + 1 >= len(best):
                    break
                if not _helps(later, need, job):
                    continue
                later.release(job)
                chosen.append(job)
                if later.fits(need):
                    best = chosen
                    break
        return best or []

    def _cheapest_victims(self, d: Demand, need: Need) -> list[RunningJob]:
        """Fewest running jobs on one node whose stopping lets ``d`` fit: lowest
        priority first, then the most recently started (least work lost)."""
        by_node: dict[str, list[RunningJob]] = {}
        for job in self.running:
            if (job.queue != d.queue and job.job_id not in self.preempting and job.node_id in self.cluster.nodes):
                by_node.setdefault(job.node_id, []).append(job)
        best: list[RunningJob] | None = None
        for node_id, jobs in sorted(by_node.items()):
            left = {q: list(self.shares.held.get(q, [0.0, 0.0, 0.0])) for q in {j.queue for j in jobs}}
            for v in self.running:
                if v.job_id in self.preempting and v.queue in left:
                    _subtract(left[v.queue], held_vector(v))
            later = self.cluster.nodes[node_id].clone()
            chosen: list[RunningJob] = []
            for job in sorted(jobs, key=lambda j: (j.priority, -j.started_at, j.job_id)):
                if best is not None and len(chosen) + 1 >= len(best):
                    break
                if not self.shares.borrowing(job.queue, left[job.queue]) or not _helps(later, need, job):
                    continue
                later.release(job)
                _subtract(left[job.queue], held_vector(job))
                chosen.append(job)
                if later.fits(need):
                    best = chosen
                    break
        return best or []


def _helps(later: NodeRoom, need: Need, job: RunningJob) -> bool:
    """Whether stopping ``job`` gives back something ``need`` lacks on its node."""
    short_gpu = (need.gpu or need.whole or need.gpu_memory) and later.pick_gpus(need) is None
    return ((later.cpu < need.cpu and job.cpu > 0) or (later.memory < need.memory and job.memory > 0)
            or bool(short_gpu and job.gpu_indices))


def _subtract(held: list[float], vec: tuple[float, float, float]) -> None:
    for i in range(3):
        held[i] -= vec[i]
