"""The scheduling policy: a pure function from (queue, capacity, usage) to decisions.

No database, no Ray, no clock: the live loop, the simulator and the tests all call
:func:`decide` with plain records, so what the simulator measures is what runs.

Policies (``policy=``):

* ``fifo``: submission order only; the first job that does not fit blocks the rest.
* ``priority``: priority (higher first), then submission order; a job that does
  not fit is skipped, so smaller jobs behind it use the capacity.
* ``fair``: weighted fair share (below), otherwise as ``priority``.
* ``labq`` (the default, used live): fair share, queue quotas with borrowing,
  EASY backfill and preemption of borrowers.

Fair share is dominant-resource fairness (DRF) over two levels, queues by weight,
then users within a queue, then priority and age within a user.  A user's *load*
is the dominant share of what they hold now plus their decayed past usage turned
into a share (past dominant-share-seconds / the decay's mean lifetime, i.e. the
share they held on average lately), so history counts but fades with the
half-life.  The next job always comes from the least-loaded queue (per weight),
then its least-loaded user; placing a job raises both, so one user's sweep
interleaves with everyone else's jobs instead of jumping ahead of them.  DRF
rather than GPU-only share because CPU-only data prep competes too.

Queues (``QueueConfig``): a *guarantee* in cpu/gpu/memory, an optional hard
*limit*; a queue over its guarantee *borrows* idle capacity (if ``borrow``).
Queues under their guarantee are served before borrowing ones, and a queue with
``preempt`` that is under its guarantee may take back capacity from borrowers:
the policy names the running jobs to preempt, the loop stops and requeues them.

Backfill (EASY): the first job that cannot start for want of capacity gets a
reservation: the node and time at which it can start, from the time limits of
running jobs.  A later job starts only if it cannot delay that: it ends (by its
time limit) before the reservation, or it fits in what the reserved job leaves
on that node, or it goes elsewhere.  With no time limits known nothing can be
reserved, and any job that fits starts (capacity never idles on a guess).

Placement is per node and per GPU: a 0.5-GPU job needs 0.5 free on *one* GPU.
Fractional jobs go best-fit onto the fullest GPU that still has room, preferring
nodes with fewer whole GPUs free, so whole GPUs stay free for whole-GPU jobs.

Speed: demands are grouped into classes (same queue, user, priority, shape and
time limit), and a class that failed this pass is not tried again (capacity only
shrinks within a pass); nodes are indexed by free cpu and by free share per GPU.
With ``explain=False`` (the simulator) a failed class is skipped whole, so a pass
costs O((placed + classes) log n) however long the queue.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

# Ray accounts resources in units of 1/10000; compare in the same grain.
_GRAIN = 10_000
GiB = 2**30
POLICIES = ("fifo", "priority", "fair", "labq")
DEFAULT_POLICY = "labq"
DEFAULT_HALF_LIFE = 7 * 86400.0
RESOURCES = ("cpu", "gpu", "memory")
_INF = math.inf


# Positions past this are shown as "100+ jobs ahead": with 100,000 jobs waiting,
# an exact count would change (and be rewritten to the store) for all of them
# every time one job starts.
AHEAD_COUNTED = 100


def _q(x: float) -> int:
    return int(round(x * _GRAIN))


# ---------------------------------------------------------------- records

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

    def shape(self) -> tuple:
        """What makes two demands interchangeable for placement."""
        return (int(self.cpu * _GRAIN + 0.5), int(self.gpu * _GRAIN + 0.5), self.memory, self.gpu_memory,
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

    @property
    def expected_end(self) -> float:
        return self.started_at + self.time_limit if self.time_limit else _INF


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
                  gpu_memory=w.gpu_memory)


def order(demands: Iterable[Demand]) -> list[Demand]:
    """Priority, then submission order: the order within one user."""
    return sorted(demands, key=lambda d: (-d.priority, d.seq))


# ---------------------------------------------------------------- capacity and usage

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
        gpus = job.gpu * len(job.gpu_indices) if 0 < job.gpu <= 1 and job.gpu_indices else job.gpu
        for key in (job.queue, (job.queue, job.user)):
            held = self._held.setdefault(key, [0.0, 0.0, 0.0])
            held[0] += sign * job.cpu
            held[1] += sign * gpus
            held[2] += sign * job.memory

    def snapshot(self) -> Usage:
        return Usage(self._value, self.half_life)


# ---------------------------------------------------------------- pending jobs, grouped

class PendingIndex:
    """Pending demands grouped into classes of interchangeable jobs (same queue,
    user, priority, shape and time limit), each class in submission order.  The
    live loop passes a list and decide builds one; the simulator keeps one and
    updates it, so a pass never touches the jobs behind a class that cannot run."""

    def __init__(self, demands: Iterable[Demand] = ()):
        self._classes: dict[tuple, list[tuple[int, int, Demand]]] = {}
        self._class_of: dict[int, tuple] = {}
        for d in demands:
            key = self._key(d)
            self._classes.setdefault(key, []).append((d.seq, d.job_id, d))
            self._class_of[d.job_id] = key
        for jobs in self._classes.values():
            jobs.sort(key=lambda e: (e[0], e[1]))

    @staticmethod
    def _key(d: Demand) -> tuple:
        return (d.queue, d.user, d.priority, d.shape(), d.time_limit)

    def add(self, d: Demand) -> None:
        key = self._key(d)
        jobs = self._classes.setdefault(key, [])
        entry = (d.seq, d.job_id, d)
        if not jobs or (d.seq, d.job_id) > jobs[-1][:2]:
            jobs.append(entry)
        else:
            bisect.insort(jobs, entry, key=lambda e: (e[0], e[1]))
        self._class_of[d.job_id] = key

    def remove(self, job_id: int) -> Demand | None:
        key = self._class_of.pop(job_id, None)
        if key is None:
            return None
        jobs = self._classes[key]
        at = next(i for i, e in enumerate(jobs) if e[1] == job_id)  # placed jobs are at the front
        demand = jobs.pop(at)[2]
        if not jobs:
            del self._classes[key]
        return demand

    def peers(self, job_id: int) -> list[tuple[int, int, Demand]] | None:
        """The class of ``job_id`` (it included) in submission order: the index's
        own list, not a copy (scheduler.packing draws a pack's followers from it)."""
        key = self._class_of.get(job_id)
        return None if key is None else self._classes[key]

    def classes(self) -> Iterable[tuple[tuple, list[tuple[int, int, Demand]]]]:
        """(queue, user, priority, shape, time_limit), and its jobs in submission order."""
        return self._classes.items()

    def __len__(self) -> int:
        return len(self._class_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._class_of

    def __iter__(self) -> Iterator[Demand]:
        for jobs in self._classes.values():
            for entry in jobs:
                yield entry[2]


class RunningIndex:
    """Running jobs with what each queue and (queue, user) holds, kept up to date
    as jobs start and stop, so a decision need not add them all up again."""

    def __init__(self, jobs: Iterable[RunningJob] = ()):
        self._jobs: dict[int, RunningJob] = {}
        self.held: dict = {}  # queue and (queue, user) -> [cpu, gpu, memory]
        for job in jobs:
            self.add(job)

    def add(self, job: RunningJob) -> None:
        self._jobs[job.job_id] = job
        _add_held(self.held, job, 1)

    def remove(self, job_id: int) -> RunningJob:
        job = self._jobs.pop(job_id)
        _add_held(self.held, job, -1)
        return job

    def get(self, job_id: int) -> RunningJob | None:
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[RunningJob]:
        return iter(self._jobs.values())


def _running_vec(r: RunningJob) -> tuple[float, float, float]:
    """cpu, GPUs (shares added up), memory that a running job holds."""
    gpus = r.gpu * len(r.gpu_indices) if 0 < r.gpu <= 1 and r.gpu_indices else r.gpu
    return (r.cpu, gpus, float(r.memory))


def _add_held(held: dict, job: RunningJob, sign: int) -> None:
    cpu, gpus, memory = _running_vec(job)
    for key in (job.queue, (job.queue, job.user)):
        vec = held.get(key)
        if vec is None:
            vec = held[key] = [0.0, 0.0, 0.0]
        vec[0] += sign * cpu
        vec[1] += sign * gpus
        vec[2] += sign * memory


# ---------------------------------------------------------------- the decision

def fits_now(demand: Demand, node: Node) -> bool:
    """Whether ``demand`` fits on ``node``'s free capacity as it is."""
    return _Work.of(node).fits(_Need(demand))


def decide(demands: Iterable[Demand] | PendingIndex, nodes: list[Node], known: list[Node] | None = None, *,
           running: Iterable[RunningJob] | RunningIndex = (), queues: Iterable[QueueConfig] | None = None,
           usage: Mapping | None = None, now: float = 0.0, policy: str = DEFAULT_POLICY,
           explain: bool = True) -> Decision:
    """Which pending jobs start now, on which node and GPUs, and which running jobs
    to preempt.  ``nodes`` may be placed on (their free capacity already net of
    ``running``); ``known`` (default: the same) are all nodes ever seen, against
    which "can this job ever fit" and the dominant-share capacity are judged.
    ``explain=False`` skips the per-job waiting reasons (and the jobs they are for)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    pending = demands if isinstance(demands, PendingIndex) else PendingIndex(demands)
    known = nodes if known is None else known
    return _Pass(nodes, known, running, queues, usage, now, policy, explain).run(pending)


def never_fits(demand: Demand, nodes: list[Node]) -> str | None:
    """None if some node could hold the job when empty, else what is missing."""
    if not nodes:
        return None  # no cluster known yet (Ray down or starting): wait, do not judge
    if demand.gpu_memory:
        return _never_fits_gpu_memory(demand, nodes)
    gpus_needed = _gpus_needed(demand)
    offered = {name for node in nodes for name in node.custom_total}
    problems = []
    for node in nodes:
        lacking = []
        if _q(node.cpu_total) < _q(demand.cpu):
            lacking.append(f"{demand.cpu:g} cpu (node has {node.cpu_total:g})")
        if node.gpu_total < gpus_needed:
            lacking.append(f"{demand.gpu:g} gpu (node has {node.gpu_total})")
        if demand.memory and node.memory_total < demand.memory:
            lacking.append(f"{demand.memory / GiB:.1f}GiB memory (node has {node.memory_total / GiB:.1f}GiB)")
        for name, amount in demand.custom.items():
            if _q(node.custom_total.get(name, 0.0)) < _q(amount):
                lacking.append(f"{amount:g} {name!r}" + ("" if name in offered else " (offered by no node)"))
        if not lacking:
            return None
        problems.append(lacking)
    best = min(problems, key=len)
    where = "any node" if len(nodes) > 1 else "the node"
    return f"needs {', '.join(best)}: more than {where} has"


def _never_fits_gpu_memory(demand: Demand, nodes: list[Node]) -> str | None:
    plain = never_fits(Demand(demand.job_id, cpu=demand.cpu, memory=demand.memory, custom=demand.custom), nodes)
    if plain is not None:
        return plain
    cards = [(total, n.node_id) for n in nodes for total in n.gpu_memory[:n.gpu_total]]
    if not cards:
        return f"needs {demand.gpu_memory / GiB:.1f}GiB of GPU memory: no node reports its GPUs' memory"
    for n in nodes:
        if (_q(n.cpu_total) >= _q(demand.cpu) and n.memory_total >= demand.memory
                and any(t >= demand.gpu_memory for t in n.gpu_memory[:n.gpu_total])):
            return None
    largest, where = max(cards)
    return (f"needs {demand.gpu_memory / GiB:.1f}GiB of GPU memory: the largest GPU has "
            f"{largest / GiB:.1f}GiB (on {where})")


def _gpus_needed(demand: Demand) -> int:
    if demand.gpu <= 0 and not demand.gpu_memory:
        return 0
    return 1 if demand.gpu <= 1 else int(round(demand.gpu))


# ---------------------------------------------------------------- working capacity

class _Need:
    """A demand in the policy's integer grain: cpu and GPU share in 1/10000."""

    __slots__ = ("cpu", "gpu", "whole", "memory", "custom", "gpu_memory")

    def __init__(self, d: Demand):
        self.cpu = _q(d.cpu)
        self.memory = d.memory
        self.custom = {k: _q(v) for k, v in d.custom.items()}
        self.gpu_memory = d.gpu_memory
        self.whole = int(round(d.gpu)) if d.gpu > 1 and not d.gpu_memory else 0
        self.gpu = _q(d.gpu) if 0 < d.gpu <= 1 and not d.gpu_memory else 0


class _Work:
    """One node's free capacity during a pass (integer grain)."""

    __slots__ = ("id", "cpu", "memory", "gpu", "custom", "gpu_memory", "whole")

    def __init__(self, node_id: str, cpu: int, memory: int, gpu: list[int], custom: dict[str, int],
                 gpu_memory: list[int]):
        self.id, self.cpu, self.memory, self.gpu, self.custom, self.gpu_memory = node_id, cpu, memory, gpu, custom, gpu_memory
        self.whole = sum(1 for f in gpu if f >= _GRAIN)

    @classmethod
    def of(cls, n: Node) -> "_Work":
        return cls(n.node_id, _q(n.cpu_free), n.memory_free, [_q(f) for f in n.gpu_free],
                   {k: _q(v) for k, v in n.custom_free.items()}, list(n.gpu_memory))

    def clone(self) -> "_Work":
        return _Work(self.id, self.cpu, self.memory, list(self.gpu), dict(self.custom), self.gpu_memory)

    def holds(self, need: _Need) -> bool:
        """Enough cpu, memory and custom resources (GPUs are picked separately)."""
        return (self.cpu >= need.cpu and self.memory >= need.memory
                and all(self.custom.get(k, 0) >= v for k, v in need.custom.items()))

    def pick_gpus(self, need: _Need) -> tuple[tuple[int, ...], int] | None:
        """(GPU indices, share booked on each) for ``need`` here, or None."""
        if need.whole:
            free = [i for i, f in enumerate(self.gpu) if f >= _GRAIN][:need.whole]
            return (tuple(free), _GRAIN) if len(free) == need.whole else None
        if need.gpu:
            fitting = [(f, i) for i, f in enumerate(self.gpu) if f >= need.gpu]
            return ((min(fitting)[1],), need.gpu) if fitting else None
        if need.gpu_memory:
            return self._pick_by_memory(need.gpu_memory)
        return (), 0

    def _pick_by_memory(self, gpu_memory: int) -> tuple[tuple[int, ...], int] | None:
        best = None
        for i, total in enumerate(self.gpu_memory[:len(self.gpu)]):
            share = -(-gpu_memory * _GRAIN // total) if total > 0 else _GRAIN + 1  # round up: never over-book
            if share <= _GRAIN and self.gpu[i] >= share and (best is None or self.gpu[i] - share < best[0]):
                best = (self.gpu[i] - share, i, share)
        return ((best[1],), best[2]) if best else None

    def fits(self, need: _Need) -> bool:
        return self.holds(need) and self.pick_gpus(need) is not None

    def take(self, need: _Need, gpus: tuple[int, ...], share: int) -> None:
        self.cpu -= need.cpu
        self.memory -= need.memory
        for k, v in need.custom.items():
            self.custom[k] = self.custom.get(k, 0) - v
        for i in gpus:
            self.gpu[i] -= share
        self.whole = sum(1 for f in self.gpu if f >= _GRAIN)

    def release(self, job: RunningJob) -> None:
        """Give back what a running job holds (custom resources are not recorded on
        running jobs, so they are not given back)."""
        self.cpu += _q(job.cpu)
        self.memory += job.memory
        share = _GRAIN if job.gpu > 1 else _q(job.gpu)
        for i in job.gpu_indices:
            if i < len(self.gpu):
                self.gpu[i] += share
        self.whole = sum(1 for f in self.gpu if f >= _GRAIN)


class _Cluster:
    """The free capacity of the placeable nodes during one pass, indexed by free
    cpu and by free share per GPU so that a best-fit search is a bisection."""

    def __init__(self, nodes: list[Node]):
        self.nodes = {n.node_id: _Work.of(n) for n in nodes}
        self.by_cpu = sorted((w.cpu, w.id) for w in self.nodes.values())
        self.by_gpu = sorted(e for w in self.nodes.values() for e in self._gpu_entries(w))

    @staticmethod
    def _gpu_entries(w: _Work) -> list[tuple[int, int, str, int]]:
        # Fullest GPU first, then the node with fewest whole GPUs left, keeping whole ones whole.
        return [(f, w.whole, w.id, i) for i, f in enumerate(w.gpu) if f > 0]

    def find(self, need: _Need, accept=None) -> tuple[_Work, tuple[int, ...], int] | None:
        """Best fit for ``need``; ``accept(work, gpus, share)`` may veto a spot."""
        if need.whole or need.gpu_memory:
            return self._scan(need, accept)
        if need.gpu:
            by = self.by_gpu
            for k in range(bisect.bisect_left(by, (need.gpu,)), len(by)):
                w = self.nodes[by[k][2]]
                if w.holds(need) and (accept is None or accept(w, (by[k][3],), need.gpu)):
                    return w, (by[k][3],), need.gpu
            return None
        by = self.by_cpu
        for k in range(bisect.bisect_left(by, (need.cpu,)), len(by)):
            w = self.nodes[by[k][1]]
            if w.holds(need) and (accept is None or accept(w, (), 0)):
                return w, (), 0
        return None

    def _scan(self, need: _Need, accept) -> tuple[_Work, tuple[int, ...], int] | None:
        best = None
        for w in self.nodes.values():
            if not w.holds(need):
                continue
            picked = w.pick_gpus(need)
            if picked is None or (accept is not None and not accept(w, *picked)):
                continue
            gpus, share = picked
            leftover = w.whole - len(gpus) if need.whole else w.gpu[gpus[0]] - share
            key = (leftover, w.whole, w.cpu - need.cpu, w.id)
            if best is None or key < best[0]:
                best = (key, w, gpus, share)
        return None if best is None else (best[1], best[2], best[3])

    def take(self, w: _Work, need: _Need, gpus: tuple[int, ...], share: int) -> None:
        del self.by_cpu[bisect.bisect_left(self.by_cpu, (w.cpu, w.id))]
        if gpus:
            for e in self._gpu_entries(w):
                del self.by_gpu[bisect.bisect_left(self.by_gpu, e)]
        w.take(need, gpus, share)
        bisect.insort(self.by_cpu, (w.cpu, w.id))
        if gpus:
            for e in self._gpu_entries(w):
                bisect.insort(self.by_gpu, e)

    def why_waiting(self, d: Demand, need: _Need) -> str:
        """What is short, in numbers, on the best node for each resource."""
        nodes = list(self.nodes.values())
        if not nodes:
            return "no nodes available (is Ray up?)"
        most_cpu = self.by_cpu[-1][0]
        if most_cpu < need.cpu:
            return f"needs {d.cpu:g} cpu, most free on a node {max(most_cpu, 0) / _GRAIN:g}"
        if need.whole:
            whole = max(w.whole for w in nodes)
            if whole < need.whole:
                return f"needs {need.whole} whole free GPUs on one node, most free {whole}"
        elif need.gpu or need.gpu_memory:
            largest = max((f for w in nodes for f in w.gpu), default=0)
            if need.gpu and largest < need.gpu:
                return f"needs {d.gpu:g} gpu, largest free share {max(largest, 0) / _GRAIN:g}"
            if need.gpu_memory and not any(w.pick_gpus(need) for w in nodes):
                return (f"needs {d.gpu_memory / GiB:.1f}GiB of GPU memory, largest free share "
                        f"{max(largest, 0) / _GRAIN:g} of a GPU")
        if d.memory:
            most_mem = max(w.memory for w in nodes)
            if most_mem < d.memory:
                return f"needs {d.memory / GiB:.2f}GiB memory, most free {max(most_mem, 0) / GiB:.2f}GiB"
        for name, amount in need.custom.items():
            most = max(w.custom.get(name, 0) for w in nodes)
            if most < amount:
                return f"needs {amount / _GRAIN:g} {name}, most free {max(most, 0) / _GRAIN:g}"
        return "no single node has all of its resources free at once"


# ---------------------------------------------------------------- one pass

_PLACED, _WAITING, _UNSCHEDULABLE, _STOP = range(4)
_RES_INDEX = {"cpu": 0, "gpu": 1, "memory": 2}
_EPS = 1e-9


@dataclass
class _Reservation:
    """EASY backfill: the first job blocked for capacity, where and when it starts,
    and what its node will still have free then (``extra``)."""

    job_id: int
    node_id: str
    at: float
    extra: _Work


@dataclass
class _Class:
    """Interchangeable pending jobs; once one cannot start, none of the rest can
    in this pass (capacity and quota only shrink within a pass)."""

    jobs: list  # [(seq, job_id, Demand)], submission order
    shape: tuple
    why: str | None = None  # why the jobs from ``stop`` on wait
    stop: int = 0
    unschedulable: bool = False

    def stuck(self, cursor: int, why: str, unschedulable: bool = False) -> None:
        self.why, self.stop, self.unschedulable = why, cursor, unschedulable


class _Pass:
    """One scheduling decision: walks pending jobs in fair-share order, places what
    it may, explains the rest."""

    def __init__(self, nodes: list[Node], known: list[Node], running: Iterable[RunningJob],
                 queues: Iterable[QueueConfig] | None, usage: Mapping | None, now: float, policy: str, explain: bool):
        self.decision = Decision()
        self.cluster = _Cluster(nodes)
        self.known = known
        self.running = running if isinstance(running, RunningIndex) else list(running)
        self.now, self.policy, self.explain = now, policy, explain
        self.fair = policy in ("fair", "labq")
        self.quotas = policy == "labq"
        self.capacity = Capacity.of(known or nodes)
        self.queues = {q.name: q for q in queues or ()}
        mean_life = getattr(usage, "half_life", DEFAULT_HALF_LIFE) / math.log(2)
        self.past = {k: v / mean_life for k, v in (usage or {}).items()}
        self.held: dict = {}  # queue and (queue, user) -> [cpu, gpu, memory] held now
        if isinstance(running, RunningIndex):
            self.held = {k: list(v) for k, v in running.held.items()}
        elif self.fair:
            for r in self.running:
                _add_held(self.held, r, 1)
        self.started: list[RunningJob] = []  # placed in this pass, for the reservation
        self.unfit: dict[tuple, str] = {}  # shape -> why it fits nowhere now
        self.delays: dict[tuple, str] = {}  # shape -> why, when it fits only where it would delay the head
        self.head: tuple[Demand, _Need] | None = None  # labq: the first job blocked for capacity
        self.shapes: set[tuple] = set()
        self.may_preempt = any(q.preempt for q in self.queues.values())
        self.over_quota: dict[tuple, str] = {}  # (queue, shape) -> why
        self.never: dict[tuple, str | None] = {}
        self.needs: dict[tuple, _Need] = {}
        self.reservation: _Reservation | None = None
        self.reserved_tried = False
        self.blocked_by: int | None = None  # fifo: the head that blocks everything
        self.preempt_tried: set[tuple] = set()
        self.preempting: set[int] = set()
        self.entitled: dict[tuple, float] = {}
        self._loads: dict = {}  # memo of user loads and queue keys, cleared on each placement

    # ------------------------------------------------------------ the walk

    def run(self, pending: PendingIndex) -> Decision:
        """Take the next job from the least-loaded queue's least-loaded user until
        every class is placed or stuck; then explain the stuck ones."""
        classes, streams = self._streams(pending)
        self._entitlements(streams)
        users: dict[str, list] = {}
        for (queue, user), heap in streams.items():
            heapq.heapify(heap)
            users.setdefault(queue, []).append((self._user_load(queue, user), heap[0][0], user))
        queue_heap = []
        for queue, heap in users.items():
            heapq.heapify(heap)
            queue_heap.append(self._queue_key(queue))
        heapq.heapify(queue_heap)
        while queue_heap:
            queue_key = heapq.heappop(queue_heap)
            queue = queue_key[-1]
            user_heap = users[queue]
            user = heapq.heappop(user_heap)[-1]
            stream = streams[(queue, user)]
            if self._walk_user(classes, stream, user_heap, queue_heap, queue_key, user) == _STOP:
                break
            if stream:
                heapq.heappush(user_heap, (self._user_load(queue, user), stream[0][0], user))
            if user_heap:
                heapq.heappush(queue_heap, self._queue_key(queue))
        if self.explain:
            self._explain(classes)
        if self.blocked_by is not None:
            self.decision.blocked_by = self.blocked_by
            self.decision.stuck_shapes = frozenset(self.unfit)
        elif not self.decision.preempt and all(cls.stop >= len(cls.jobs) or cls.shape in self.unfit
                                                for cls in classes):
            self.decision.stuck_shapes = frozenset(self.unfit)
        return self.decision

    def _walk_user(self, classes: list[_Class], stream: list, user_heap: list, queue_heap: list,
                   queue_key: tuple, user: str) -> int:
        """Consider this user's next jobs for as long as they stay first in line:
        until one is placed (loads change), another user or queue comes first,
        or the stream ends."""
        load = self._user_load(queue_key[-1], user)
        while stream:
            _, index, cursor = heapq.heappop(stream)
            cls = classes[index]
            outcome = self._consider(cls, cursor)
            if outcome == _STOP:
                return _STOP
            if cls.why is None:
                cls.stop = cursor + 1
                if cursor + 1 < len(cls.jobs):
                    heapq.heappush(stream, (self._order_key(cls.jobs[cursor + 1]), index, cursor + 1))
            if outcome == _PLACED or not stream:
                return outcome
            if (user_heap and user_heap[0] < (load, stream[0][0], user)) or (queue_heap and queue_heap[0] < queue_key):
                return outcome
        return _WAITING

    def _streams(self, pending: PendingIndex) -> tuple[list[_Class], dict[tuple, list]]:
        """One heap of classes per (queue, user), keyed by each class's next job;
        fifo and priority see one stream for everyone."""
        classes: list[_Class] = []
        streams: dict[tuple, list] = {}
        fifo, fair, shapes = self.policy == "fifo", self.fair, self.shapes
        for (queue, user, priority, shape, _), jobs in pending.classes():
            seq, job_id, _ = jobs[0]
            key = (seq, job_id) if fifo else (-priority, seq, job_id)
            streams.setdefault((queue, user) if fair else ("", ""), []).append((key, len(classes), 0))
            classes.append(_Class(jobs, shape))
            shapes.add(shape)
        return classes, streams

    def _order_key(self, entry: tuple) -> tuple:
        seq, job_id, d = entry
        return (seq, job_id) if self.policy == "fifo" else (-d.priority, seq, job_id)

    def _consider(self, cls: _Class, cursor: int) -> int:
        d = cls.jobs[cursor][2]
        missing = self._never_fits(d, cls.shape)
        if missing is not None:
            cls.stuck(cursor, missing, unschedulable=True)
            self.unfit.setdefault(cls.shape, missing)
            for _, job_id, _ in cls.jobs:
                self.decision.unschedulable[job_id] = missing
            return _UNSCHEDULABLE
        need = self.needs.get(cls.shape) or self.needs.setdefault(cls.shape, _Need(d))
        if self.quotas:
            why = self._quota_block(d, cls.shape, need)
            if why:
                cls.stuck(cursor, why)
                return _WAITING
        if self.unfit.get(cls.shape) is not None:
            cls.stuck(cursor, self.unfit[cls.shape])
            return self._stop_if_all_stuck()
        known_delay = self.reservation is not None and self.delays.get(cls.shape)
        if known_delay and self._runs_past(d, self.reservation):
            cls.stuck(cursor, _delay_text(known_delay, d))
            return _WAITING
        found = self.cluster.find(need)
        if found is None:
            return self._blocked(d, cls, cursor, need, self.cluster.why_waiting(d, need))
        reservation = self._reservation_for_backfill()
        if reservation is None or not self._runs_past(d, reservation):
            self._place(d, need, *found)
            return _PLACED
        delays = self.delays.get(cls.shape)
        found = None if delays else self.cluster.find(need, self._backfill_check(need, reservation))
        if found is None:
            self.delays[cls.shape] = delays = delays or (
                f"would delay job {reservation.job_id}, which has node {reservation.node_id} reserved in "
                f"{_secs(reservation.at - self.now)}")
            cls.stuck(cursor, _delay_text(delays, d))
            return _WAITING
        self._place(d, need, *found, on_reserved_after=reservation.at)
        return _PLACED

    def _blocked(self, d: Demand, cls: _Class, cursor: int, need: _Need, why: str) -> int:
        """``d`` does not fit anywhere now: it waits; under fifo nothing behind it
        may start; under labq the first such job gets a reservation, and a queue
        under its guarantee may reclaim capacity by preemption."""
        self.unfit[cls.shape] = why
        if self.policy == "fifo":
            cls.stuck(cursor, why)
            self.blocked_by = d.job_id
            return _STOP
        if self.quotas and self.head is None:
            self.head = (d, need)
        if self.quotas:
            why = self._preempt_for(d, cls.shape, need) or why
        cls.stuck(cursor, why)
        return self._stop_if_all_stuck()

    def _stop_if_all_stuck(self) -> int:
        """Without reasons to write, stop once no pending shape fits anywhere: the
        rest of the walk could place nothing (unless a queue may still preempt)."""
        if not self.explain and not self.may_preempt and len(self.unfit) >= len(self.shapes):
            return _STOP
        return _WAITING

    def _place(self, d: Demand, need: _Need, w: _Work, gpus: tuple[int, ...], share: int,
               on_reserved_after: float | None = None) -> None:
        """Book ``d`` there; a job still running when the reservation is due takes
        from what the reserved node keeps spare then too."""
        r = self.reservation
        if on_reserved_after is not None and w.id == r.node_id:
            r.extra.take(need, gpus, share)
        self.cluster.take(w, need, gpus, share)
        gpu_share = share / _GRAIN if need.gpu_memory else d.gpu
        self.decision.placements.append(Placement(d.job_id, w.id, gpus, gpu_share))
        job = RunningJob(d.job_id, d.user, d.queue, d.cpu, gpu_share, d.memory, w.id, gpus, self.now,
                         d.time_limit, d.priority)
        self.started.append(job)
        _add_held(self.held, job, 1)
        self._loads.clear()

    def _explain(self, classes: list[_Class]) -> None:
        """Every job not placed gets its class's reason, in numbers, with how many
        waiting jobs the next pass would consider before it and, when users
        compete, how its user's load compares with their fair share."""
        line: list[tuple] = []
        for index, cls in enumerate(classes):
            if cls.unschedulable:
                continue
            if cls.why is None and self.blocked_by is None:
                continue  # all placed
            start = cls.stop  # the first job not placed (fifo: not reached)
            if start >= len(cls.jobs):
                continue
            first = cls.jobs[start][2]
            group = (first.queue, first.user) if self.fair else ("", "")
            rank = (self._queue_key(group[0]), self._user_load(*group), group[1])
            first_key = 0 if self.policy == "fifo" else -first.priority  # one priority per class
            line.extend((rank, first_key, e[0], e[1], index, cursor)
                        for cursor, e in enumerate(cls.jobs[start:], start))
        line.sort()
        waiting = self.decision.waiting
        suffixes: dict[tuple, str] = {}  # (queue, user) -> "; user at 2.1x fair share"
        past_count: dict[tuple, str] = {}  # (class, queue, user) -> the whole text, once positions stop counting
        for ahead, (*_, index, cursor) in enumerate(line):
            cls = classes[index]
            d = cls.jobs[cursor][2]
            group = (d.queue, d.user)
            suffix = suffixes.get(group)
            if suffix is None:
                entitled = self.entitled.get(group)
                suffix = suffixes[group] = (f"; user at {self._user_load(*group) / entitled:.1f}x fair share"
                                            if entitled else "")
            if ahead >= AHEAD_COUNTED:  # a stable text: each start would otherwise rewrite every reason
                text = past_count.get((index, group))
                if text is None:
                    text = past_count[(index, group)] = f"{self._why(cls)}; {AHEAD_COUNTED}+ jobs ahead{suffix}"
            elif ahead:
                text = f"{self._why(cls)}; {ahead} job{'s' if ahead != 1 else ''} ahead{suffix}"
            else:
                text = self._why(cls) + suffix
            waiting[d.job_id] = text

    def _why(self, cls: "_Class") -> str:
        return cls.why if cls.why is not None else f"behind job {self.blocked_by} (fifo: strict submission order)"

    def _never_fits(self, d: Demand, shape: tuple) -> str | None:
        if shape not in self.never:
            self.never[shape] = never_fits(d, self.known)
        return self.never[shape]

    # ------------------------------------------------------------ fair share

    def _demand_vec(self, d: Demand) -> tuple[float, float, float]:
        gpus = d.gpu
        if d.gpu_memory:  # before placement: the share of the largest card it could get
            largest = max((t for n in self.known for t in n.gpu_memory), default=0)
            gpus = min(1.0, d.gpu_memory / largest) if largest else 1.0
        return (d.cpu, gpus, float(d.memory))

    def _share(self, key) -> float:
        held = self.held.get(key)
        return self.capacity.dominant(*held) if held else 0.0

    def _user_load(self, queue: str, user: str) -> float:
        if not self.fair:
            return 0.0
        key = (queue, user)
        load = self._loads.get(key)
        if load is None:
            load = self._loads[key] = self._share(key) + self.past.get(key, 0.0)
        return load

    def _queue_key(self, queue: str) -> tuple:
        """Queues under their guarantee first, then by load per weight."""
        if not self.fair:
            return (0, 0.0, queue)
        key = self._loads.get(queue)
        if key is None:
            load = (self._share(queue) + self.past.get(queue, 0.0)) / self._config(queue).weight
            key = self._loads[queue] = (0 if self.quotas and self._under_guarantee(queue) else 1, load, queue)
        return key

    def _entitlements(self, streams: dict[tuple, list]) -> None:
        """Each active user's fair share: their queue's weight over the active
        queues' weights, split evenly among the queue's active users."""
        if not self.fair:
            return
        active = set(streams) | {(r.queue, r.user) for r in self.running}
        users_in: dict[str, int] = {}
        for queue, _ in active:
            users_in[queue] = users_in.get(queue, 0) + 1
        if len(active) < 2:
            return  # alone: a share of one explains nothing
        total_weight = sum(self._config(q).weight for q in users_in)
        for queue, user in active:
            self.entitled[(queue, user)] = self._config(queue).weight / total_weight / users_in[queue]

    # ------------------------------------------------------------ quotas

    def _config(self, queue: str) -> QueueConfig:
        config = self.queues.get(queue)
        if config is None:
            config = self.queues[queue] = QueueConfig(queue)
        return config

    def _under_guarantee(self, queue: str, extra: tuple = (0.0, 0.0, 0.0)) -> bool:
        guarantee = self._config(queue).guarantee
        held = self.held.get(queue, [0.0, 0.0, 0.0])
        return bool(guarantee) and all(held[_RES_INDEX[r]] + extra[_RES_INDEX[r]] <= g + _EPS
                                       for r, g in guarantee.items())

    def _borrowing(self, queue: str, held: list[float]) -> bool:
        guarantee = self._config(queue).guarantee
        if not guarantee:
            return any(h > _EPS for h in held)
        return any(held[_RES_INDEX[r]] > g + _EPS for r, g in guarantee.items())

    def _quota_block(self, d: Demand, shape: tuple, need: _Need) -> str | None:
        key = (d.queue, shape)
        if key in self.over_quota:
            return self.over_quota[key]
        config = self._config(d.queue)
        if config.limit is None and config.borrow:
            return None
        vec = self._demand_vec(d)
        held = self.held.get(d.queue, [0.0, 0.0, 0.0])
        why = None
        for resource, cap in (config.limit or {}).items():
            i = _RES_INDEX[resource]
            if held[i] + vec[i] > cap + _EPS:
                why = (f"queue {d.queue!r} at its limit: needs {_amount(resource, vec[i])} {resource}, "
                       f"{_amount(resource, held[i])} of {_amount(resource, cap)} in use")
                break
        if why is None and not config.borrow and not self._under_guarantee(d.queue, vec):
            why = (f"queue {d.queue!r} may not borrow beyond its guarantee "
                   f"({_vector_text(config.guarantee) or 'none'}; {_vector_text(_named(held, config.guarantee))} in use)")
        if why is not None:
            self.over_quota[key] = why
        return why

    # ------------------------------------------------------------ backfill

    def _reservation_for_backfill(self) -> _Reservation | None:
        """The head's reservation, worked out the first time a job behind the head
        could start (a full cluster never needs it)."""
        if self.head is not None and self.reservation is None and not self.reserved_tried:
            self.reserved_tried = True
            self._reserve(*self.head)
        return self.reservation

    def _runs_past(self, d: Demand, reservation: _Reservation) -> bool:
        """Whether ``d`` may still run when the reserved job is due to start."""
        return d.time_limit is None or self.now + d.time_limit > reservation.at

    @staticmethod
    def _backfill_check(need: _Need, r: _Reservation):
        def accept(w: _Work, gpus: tuple[int, ...], share: int) -> bool:
            if w.id != r.node_id:
                return True
            extra = r.extra
            return extra.holds(need) and all(extra.gpu[i] >= share for i in gpus)

        return accept

    def _reserve(self, d: Demand, need: _Need) -> None:
        """Where and when the blocked job ``d`` can start at the earliest, if the
        time limits of the jobs in its way say so."""
        ending: dict[str, list[RunningJob]] = {}
        for job in (*self.running, *self.started):
            if job.expected_end < _INF and job.node_id in self.cluster.nodes:
                ending.setdefault(job.node_id, []).append(job)
        best = None
        for node_id, jobs in ending.items():
            later = self.cluster.nodes[node_id].clone()
            for job in sorted(jobs, key=lambda j: j.expected_end):
                if best is not None and job.expected_end > best[0]:
                    break
                later.release(job)
                picked = later.pick_gpus(need) if later.holds(need) else None
                if picked is not None:
                    if best is None or (job.expected_end, node_id) < best[:2]:
                        best = (job.expected_end, node_id, later, picked)
                    break
        if best is not None:
            at, node_id, later, (gpus, share) = best
            later.take(need, gpus, share)
            self.reservation = _Reservation(d.job_id, node_id, max(at, self.now), later)

    # ------------------------------------------------------------ preemption

    def _preempt_for(self, d: Demand, shape: tuple, need: _Need) -> str | None:
        """Name running jobs of borrowing queues to stop so that ``d``, of a queue
        that may preempt and is under its guarantee, can start; None if not allowed
        or not possible.  One try per queue and shape per pass."""
        config = self._config(d.queue)
        if not (config.preempt and config.guarantee) or (d.queue, shape) in self.preempt_tried:
            return None
        self.preempt_tried.add((d.queue, shape))
        if not self._under_guarantee(d.queue, self._demand_vec(d)):
            return None
        victims = self._cheapest_victims(d, need)
        if not victims:
            return None
        guarantee_text = _vector_text(config.guarantee)
        for v in victims:
            lent = self._config(v.queue).guarantee
            self.decision.preempt[v.job_id] = (
                f"queue {v.queue!r} borrows beyond its guarantee ({_vector_text(lent) or 'none'}); "
                f"queue {d.queue!r} reclaims its guarantee ({guarantee_text}) for job {d.job_id}")
            self.preempting.add(v.job_id)
        return (f"preempting {len(victims)} job{'s' if len(victims) != 1 else ''} of borrowing queues on "
                f"{victims[0].node_id}; starts when they stop")

    def _cheapest_victims(self, d: Demand, need: _Need) -> list[RunningJob]:
        """Fewest running jobs on one node whose stopping lets ``d`` fit: lowest
        priority first, then the most recently started (least work lost)."""
        by_node: dict[str, list[RunningJob]] = {}
        for job in self.running:
            if (job.queue != d.queue and job.job_id not in self.preempting and job.node_id in self.cluster.nodes):
                by_node.setdefault(job.node_id, []).append(job)
        best: list[RunningJob] | None = None
        for node_id, jobs in sorted(by_node.items()):
            left = {q: list(self.held.get(q, [0.0, 0.0, 0.0])) for q in {j.queue for j in jobs}}
            for v in self.running:
                if v.job_id in self.preempting and v.queue in left:
                    _subtract(left[v.queue], _running_vec(v))
            later = self.cluster.nodes[node_id].clone()
            chosen: list[RunningJob] = []
            for job in sorted(jobs, key=lambda j: (j.priority, -j.started_at, j.job_id)):
                if best is not None and len(chosen) + 1 >= len(best):
                    break
                if not self._borrowing(job.queue, left[job.queue]) or not _helps(later, need, job):
                    continue
                later.release(job)
                _subtract(left[job.queue], _running_vec(job))
                chosen.append(job)
                if later.fits(need):
                    best = chosen
                    break
        return best or []


# ---------------------------------------------------------------- small helpers

def _delay_text(why: str, d: Demand) -> str:
    return why + (" (its time limit ends later)" if d.time_limit else " (it has no time limit)")


def _helps(later: _Work, need: _Need, job: RunningJob) -> bool:
    """Whether stopping ``job`` gives back something ``need`` lacks on its node."""
    short_gpu = (need.gpu or need.whole or need.gpu_memory) and later.pick_gpus(need) is None
    return ((later.cpu < need.cpu and job.cpu > 0) or (later.memory < need.memory and job.memory > 0)
            or bool(short_gpu and job.gpu_indices))


def _subtract(held: list[float], vec: tuple[float, float, float]) -> None:
    for i in range(3):
        held[i] -= vec[i]


def _named(held: list[float], names: Mapping[str, float]) -> dict[str, float]:
    return {r: held[_RES_INDEX[r]] for r in names} if names else {r: held[i] for r, i in _RES_INDEX.items()}


def _amount(resource: str, value: float) -> str:
    return f"{value / GiB:.1f}GiB" if resource == "memory" else f"{value:g}"


def _vector_text(vec: Mapping[str, float]) -> str:
    return ", ".join(f"{_amount(r, v)} {r}" for r, v in vec.items())


def _secs(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
