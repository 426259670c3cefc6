"""Fair share and queue quotas during one decision: what each queue and user
holds, their loads (held now plus decayed past use), which queue and user come
next, each user's entitlement, and whether a queue's limit or guarantee holds a
job back."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from scheduler.policy.records import DEFAULT_HALF_LIFE, Demand, Node, QueueConfig, RunningJob
from scheduler.policy.indexes import RunningIndex
from scheduler.policy.text import RES_INDEX, amount, named, vector_text
from scheduler.policy.usage import Capacity, add_held

EPS = 1e-9


class Shares:
    """Loads and quotas, updated as the decision places jobs (:meth:`add`)."""

    def __init__(self, known: list[Node], capacity: Capacity, running: list[RunningJob] | RunningIndex,
                 queues: Iterable[QueueConfig] | None, usage: Mapping | None, policy: str):
        self.known = known
        self.fair = policy in ("fair", "labq")
        self.quotas = policy == "labq"
        self.capacity = capacity
        self.queues = {q.name: q for q in queues or ()}
        mean_life = getattr(usage, "half_life", DEFAULT_HALF_LIFE) / math.log(2)
        self.past = {k: v / mean_life for k, v in (usage or {}).items()}
        self.held: dict = {}  # queue and (queue, user) -> [cpu, gpu, memory] held now
        if isinstance(running, RunningIndex):
            self.held = {k: list(v) for k, v in running.held.items()}
        elif self.fair:
            for r in running:
                add_held(self.held, r, 1)
        self.over_quota: dict[tuple, str] = {}  # (queue, shape) -> why
        self.entitled: dict[tuple, float] = {}
        self._loads: dict = {}  # memo of user loads and queue keys, cleared on each placement

    @property
    def may_preempt(self) -> bool:
        """Whether some queue may preempt: to reclaim its guarantee, or for a lower tier."""
        return self.quotas and any(q.preempt or q.tiers or q.preempt_longer for q in self.queues.values())

    def add(self, job: RunningJob) -> None:
        """A job was placed: it holds its share from now."""
        add_held(self.held, job, 1)
        self._loads.clear()

    # ------------------------------------------------------------ fair share

    def demand_vec(self, d: Demand) -> tuple[float, float, float]:
        gpus = d.gpu
        if d.gpu_memory:  # before placement: the share of the largest card it could get
            largest = max((t for n in self.known for t in n.gpu_memory), default=0)
            gpus = min(1.0, d.gpu_memory / largest) if largest else 1.0
        return (d.cpu, gpus, float(d.memory))

    def _share(self, key) -> float:
        held = self.held.get(key)
        return self.capacity.dominant(*held) if held else 0.0

    def user_load(self, queue: str, user: str) -> float:
        if not self.fair:
            return 0.0
        key = (queue, user)
        load = self._loads.get(key)
        if load is None:
            load = self._loads[key] = self._share(key) + self.past.get(key, 0.0)
        return load

    def queue_key(self, queue: str) -> tuple:
        """Queues under their guarantee first, then by load per weight."""
        if not self.fair:
            return (0, 0.0, queue)
        key = self._loads.get(queue)
        if key is None:
            load = (self._share(queue) + self.past.get(queue, 0.0)) / self.config(queue).weight
            key = self._loads[queue] = (0 if self.quotas and self.under_guarantee(queue) else 1, load, queue)
        return key

    def entitle(self, waiting: Iterable[tuple], running: Iterable[RunningJob]) -> None:
        """Each active user's fair share: their queue's weight over the active
        queues' weights, split evenly among the queue's active users."""
        if not self.fair:
            return
        active = set(waiting) | {(r.queue, r.user) for r in running}
        users_in: dict[str, int] = {}
        for queue, _ in active:
            users_in[queue] = users_in.get(queue, 0) + 1
        if len(active) < 2:
            return  # alone: a share of one explains nothing
        total_weight = sum(self.config(q).weight for q in users_in)
        for queue, user in active:
            self.entitled[(queue, user)] = self.config(queue).weight / total_weight / users_in[queue]

    def fair_share_note(self, queue: str, user: str) -> str:
        """"; user at 2.1x fair share" when users compete, else ""."""
        entitled = self.entitled.get((queue, user))
        return f"; user at {self.user_load(queue, user) / entitled:.1f}x fair share" if entitled else ""

    # ------------------------------------------------------------ quotas

    def config(self, queue: str) -> QueueConfig:
        config = self.queues.get(queue)
        if config is None:
            config = self.queues[queue] = QueueConfig(queue)
        return config

    def under_guarantee(self, queue: str, extra: tuple = (0.0, 0.0, 0.0)) -> bool:
        guarantee = self.config(queue).guarantee
        held = self.held.get(queue, [0.0, 0.0, 0.0])
        return bool(guarantee) and all(held[RES_INDEX[r]] + extra[RES_INDEX[r]] <= g + EPS
                                       for r, g in guarantee.items())

    def borrowing(self, queue: str, held: list[float]) -> bool:
        guarantee = self.config(queue).guarantee
        if not guarantee:
            return any(h > EPS for h in held)
        return any(held[RES_INDEX[r]] > g + EPS for r, g in guarantee.items())

    def quota_block(self, d: Demand, shape: tuple) -> str | None:
        """Why ``d``'s queue may not take it now (its limit, or no borrowing past
        its guarantee), else None."""
        key = (d.queue, shape)
        if key in self.over_quota:
            return self.over_quota[key]
        config = self.config(d.queue)
        if config.limit is None and config.borrow:
            return None
        vec = self.demand_vec(d)
        held = self.held.get(d.queue, [0.0, 0.0, 0.0])
        why = None
        for resource, cap in (config.limit or {}).items():
            i = RES_INDEX[resource]
            if held[i] + vec[i] > cap + EPS:
                why = (f"queue {d.queue!r} at its limit: needs {amount(resource, vec[i])} {resource}, "
                       f"{amount(resource, held[i])} of {amount(resource, cap)} in use")
                break
        if why is None and not config.borrow and not self.under_guarantee(d.queue, vec):
            why = (f"queue {d.queue!r} may not borrow beyond its guarantee "
                   f"({vector_text(config.guarantee) or 'none'}; {vector_text(named(held, config.guarantee))} in use)")
        if why is not None:
            self.over_quota[key] = why
        return why
