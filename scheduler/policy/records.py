"""The policy's records: what a pending job asks for, a node's capacity, what a
running job holds, a queue's share, and the decision.  Plain data, no logic
beyond what a record says about itself."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# Ray accounts resources in units of 1/10000; compare in the same grain.
GRAIN = 10_000
GiB = 2**30
POLICIES = ("fifo", "priority", "fair", "labq")
DEFAULT_POLICY = "labq"
DEFAULT_HALF_LIFE = 7 * 86400.0
RESOURCES = ("cpu", "gpu", "memory")
INF = math.inf


# Positions past this are shown as "100+ jobs ahead": with 100,000 jobs waiting,
# an exact count would change (and be rewritten to the store) for all of them
# every time one job starts.
AHEAD_COUNTED = 100


def q(x: float) -> int:
    """``x`` in the policy's integer grain."""
    return int(round(x * GRAIN))



@dataclass(frozen=True)
class Demand:
    """What one pending job asks for.  ``gpu_memory`` (bytes) is an alternative to
    ``gpu``: on each GPU it becomes the share gpu_memory / that GPU's memory."""

    job_id: int
    cpu: float = 1.0
    gpu: float = 0.0
    memory: int = 0  # bytes
    custom: dict[str, float] = field(default_factory=dict)
    priority: int = 0
    seq: int = 0  # submission order; lower first
    user: str = ""
    queue: str = "default"
    time_limit: float | None = None  # seconds; the job is stopped after it
    submitted_at: float = 0.0
    gpu_memory: int = 0  # bytes of one GPU
    # What the job is one of, for predicting its duration from runs like it:
    # "experiment/stage" live; empty where unknown (a trace's jobs).
    group: str = ""
    # Service its earlier, preempted attempts attained (policy.tiers) and how
    # many times it was preempted: what least-attained-service tiers go by.
    attained: float = 0.0
    preemptions: int = 0
    # It resumes from a checkpoint when requeued: least-attained-service tiers
    # may preempt it (policy.tiers).  A trace's jobs do unless it says not.
    checkpoints: bool = True

    def shape(self) -> tuple:
        """What makes two demands interchangeable for placement."""
        return (int(self.cpu * GRAIN + 0.5), int(self.gpu * GRAIN + 0.5), self.memory, self.gpu_memory,
                tuple(sorted(self.custom.items())) if self.custom else ())


@dataclass
class Node:
    """A node's capacity and what is still free on it (free is mutated by decide's
    working copy only)."""

    node_id: str
    cpu_total: float
    cpu_free: float
    memory_total: int = 0
    memory_free: int = 0
    gpu_free: list[float] = field(default_factory=list)  # free share per GPU index
    custom_total: dict[str, float] = field(default_factory=dict)
    custom_free: dict[str, float] = field(default_factory=dict)
    gpu_memory: list[int] = field(default_factory=list)  # total bytes per GPU index; [] = unknown

    @property
    def gpu_total(self) -> int:
        return len(self.gpu_free)


@dataclass(frozen=True)
class Placement:
    job_id: int
    node_id: str
    gpu_indices: tuple[int, ...] = ()
    gpu_share: float = 0.0  # booked on each chosen GPU: demand.gpu, or from gpu_memory
    why: str = ""  # why this node, when the policy can say more than "it fits" (fragmentation)


@dataclass(frozen=True)
class RunningJob:
    """A job that holds resources now.  ``gpu`` is the share booked on each GPU in
    ``gpu_indices`` when at most 1, else the number of whole GPUs."""

    job_id: int
    user: str = ""
    queue: str = "default"
    cpu: float = 0.0
    gpu: float = 0.0
    memory: int = 0
    node_id: str = ""
    gpu_indices: tuple[int, ...] = ()
    started_at: float = 0.0
    time_limit: float | None = None
    priority: int = 0
    custom: Mapping[str, float] = field(default_factory=dict)
    predicted: float | None = None  # seconds it is expected to run from its start (policy.durations)
    attained: float = 0.0  # service attained by its earlier attempts (policy.tiers)
    preemptions: int = 0  # times it was preempted before
    # It resumes from a checkpoint: tiers may preempt it (live: its stage says
    # `checkpoints: true`; a job that does not would lose all its work).
    checkpoints: bool = True
    # What its remaining time is predicted from (policy.durations): its
    # Demand.shape() and Demand.group.
    shape: tuple = ()
    group: str = ""

    @property
    def expected_end(self) -> float:
        """When its time limit stops it at the latest."""
        return self.started_at + self.time_limit if self.time_limit else INF

    @property
    def likely_end(self) -> float:
        """When it is predicted to end (its limit's end when nothing is predicted)."""
        if self.predicted is None:
            return self.expected_end
        return min(self.started_at + self.predicted, self.expected_end)

    @property
    def share_per_gpu(self) -> float:
        """What it holds of each GPU in ``gpu_indices``: its share, or all of a
        GPU when it asked for more than one."""
        return 1.0 if self.gpu > 1 else self.gpu

    @property
    def gpus_held(self) -> float:
        """GPUs it holds in all, shares added up (the usage books count this)."""
        return self.gpu * len(self.gpu_indices) if 0 < self.gpu <= 1 and self.gpu_indices else self.gpu


@dataclass(frozen=True)
class QueueConfig:
    """A queue's share of the cluster.  ``guarantee`` and ``limit`` map cpu / gpu /
    memory (bytes) to amounts; only the resources named there are governed.  A
    queue with no guarantee borrows everything it uses."""

    name: str
    weight: float = 1.0
    guarantee: dict[str, float] = field(default_factory=dict)
    limit: dict[str, float] | None = None
    borrow: bool = True
    preempt: bool = False
    # Least-attained-service tiers (policy.tiers): thresholds of attained
    # service, GPU-seconds, in ascending order; () orders by predicted duration only.
    tiers: tuple[float, ...] = ()
    max_preemptions: int = 2  # a job is preempted for a lower tier at most this many times
    # Shortest expected remaining time first, with preemption: a pending job
    # may preempt a running one of the same queue that checkpoints and is
    # expected to run this many times longer than it (policy.durations); 0: off.
    preempt_longer: float = 0.0


@dataclass
class Decision:
    placements: list[Placement] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # job id -> why it waits
    unschedulable: dict[int, str] = field(default_factory=dict)  # job id -> what no node has
    preempt: dict[int, str] = field(default_factory=dict)  # running job id -> why it is preempted
    # Shapes (Demand.shape()) that fit on no node's free capacity after this
    # decision, when that holds for every pending shape (else empty): until some
    # capacity frees up, another decision could place nothing of these shapes.
    stuck_shapes: frozenset = frozenset()
    blocked_by: int | None = None  # fifo: the job at the head that does not fit; all else waits behind it


# Ray resources that are not custom resources a job may ask for by name.
_NOT_CUSTOM = ("CPU", "GPU", "memory", "object_store_memory")


def node_of(node_id: str, resources: Mapping[str, float], gpu_readings: Iterable[Mapping] = ()) -> Node:
    """An empty node as Ray reports its resources; ``gpu_readings`` (NVML's, one
    per GPU index) give card sizes, which ``gpu_memory`` requests need."""
    custom = {k: float(v) for k, v in resources.items()
              if k not in _NOT_CUSTOM and not k.startswith(("node:", "accelerator_type:"))}
    gpus = int(resources.get("GPU", 0))
    sizes = {g.get("index"): g.get("memory_total") for g in gpu_readings}
    gpu_memory = [int(sizes[i]) for i in range(gpus) if sizes.get(i)]
    cpu, memory = float(resources.get("CPU", 0.0)), int(resources.get("memory", 0))
    return Node(node_id=node_id, cpu_total=cpu, cpu_free=cpu, memory_total=memory, memory_free=memory,
                gpu_free=[1.0] * gpus, custom_total=custom, custom_free=dict(custom),
                gpu_memory=gpu_memory if len(gpu_memory) == gpus else [])


def demand_of(w: Any) -> Demand:
    """A pending job (:class:`scheduler.records.Waiting`) as the policy sees it."""
    return Demand(job_id=w.id, cpu=w.cpu, gpu=w.gpu, memory=w.memory, custom=w.custom, priority=w.priority,
                  seq=w.id, user=w.user, queue=w.queue, time_limit=w.timeout, submitted_at=w.submitted_at,
                  gpu_memory=w.gpu_memory, group=w.group, attained=w.attained, preemptions=w.preemptions)


def order(demands: Iterable[Demand]) -> list[Demand]:
    """Priority, then submission order: the order within one user."""
    return sorted(demands, key=lambda d: (-d.priority, d.seq))
