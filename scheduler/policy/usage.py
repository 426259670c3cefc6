"""Cluster totals and what queues and users hold and have held: the
denominators and numerators of fair share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from scheduler.policy.records import DEFAULT_HALF_LIFE, Node, RunningJob



@dataclass(frozen=True)
class Capacity:
    """Cluster totals, the denominators of dominant shares (from the known nodes,
    dead ones included, so a node blipping does not reshuffle everyone's share)."""

    cpu: float = 0.0
    gpu: float = 0.0
    memory: float = 0.0

    @classmethod
    def of(cls, nodes: Iterable[Node]) -> "Capacity":
        nodes = list(nodes)
        return cls(sum(n.cpu_total for n in nodes), float(sum(n.gpu_total for n in nodes)),
                   float(sum(n.memory_total for n in nodes)))

    def dominant(self, cpu: float, gpu: float, memory: float) -> float:
        return max(cpu / self.cpu if self.cpu else 0.0, gpu / self.gpu if self.gpu else 0.0,
                   memory / self.memory if self.memory else 0.0)


class Usage(dict):
    """Decayed usage in dominant-share-seconds, keyed by queue and by (queue, user),
    carrying the half-life it decays with (decide turns it into a share with it)."""

    def __init__(self, values: Mapping | None = None, half_life: float = DEFAULT_HALF_LIFE):
        super().__init__(values or {})
        self.half_life = half_life


class UsageBook:
    """Accumulates decayed usage: each key's value decays by half every
    ``half_life`` seconds while the dominant share it holds adds up.  Pure: the
    caller says what runs (``advance``) or what starts and stops (``add``/``remove``)."""

    def __init__(self, half_life: float, capacity: Capacity):
        if not half_life > 0:
            raise ValueError("half_life must be positive")
        self.half_life = float(half_life)
        self.capacity = capacity
        self._rate = math.log(2) / self.half_life
        self._value: dict = {}
        self._held: dict = {}  # key -> [cpu, gpu, memory] held now
        self._last: float | None = None

    def advance(self, now: float, running: Iterable[RunningJob] | None = None) -> None:
        """Accrue [last call, now] at the allocation held since the last call; then,
        if ``running`` is given, it becomes the allocation held from ``now`` on."""
        if self._last is not None and now > self._last:
            decay = math.exp(-self._rate * (now - self._last))
            for key in self._value:
                self._value[key] *= decay
            for key, held in self._held.items():
                share = self.capacity.dominant(*held)
                if share:  # exact integral of a constant share under the decay
                    self._value[key] = self._value.get(key, 0.0) + share * (1 - decay) / self._rate
        self._last = now if self._last is None else max(now, self._last)
        if running is not None:
            self._held = {}
            for job in running:
                self.add(job)

    def seed(self, values: Mapping, now: float) -> None:
        """Start from usage worked out elsewhere (the live loop after a restart sums
        the store's history with :func:`scheduler.accounting.decayed_seconds`)."""
        self._value = dict(values)
        self._last = now

    def add(self, job: RunningJob) -> None:
        self._hold(job, 1)

    def remove(self, job: RunningJob) -> None:
        self._hold(job, -1)

    def _hold(self, job: RunningJob, sign: int) -> None:
        add_held(self._held, job, sign)

    def snapshot(self) -> Usage:
        return Usage(self._value, self.half_life)


def held_vector(job: RunningJob) -> tuple[float, float, float]:
    """cpu, GPUs (shares added up), memory that a running job holds."""
    return (job.cpu, job.gpus_held, float(job.memory))


def add_held(held: dict, job: RunningJob, sign: int) -> None:
    """Add (sign 1) or take away (-1) what ``job`` holds to its queue's and its
    (queue, user)'s [cpu, gpu, memory] in ``held``."""
    cpu, gpus, memory = held_vector(job)
    for key in (job.queue, (job.queue, job.user)):
        vec = held.get(key)
        if vec is None:
            vec = held[key] = [0.0, 0.0, 0.0]
        vec[0] += sign * cpu
        vec[1] += sign * gpus
        vec[2] += sign * memory
