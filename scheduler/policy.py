"""The scheduling policy: a pure function from (queue, free capacity) to decisions.

No database, no Ray, no clock: the live loop, the simulator and the tests all call
:func:`decide` with plain records.

Rules (the foundation; fair share and backfill build on them):

* Jobs are considered by priority (higher first), then submission order.
* A job that fits starts; one that does not is skipped with a reason, so a big
  job never idles capacity that smaller jobs behind it could use.
* Placement is per node and per GPU: a 0.5-GPU job needs 0.5 free on *one* GPU.
  Fractional jobs go best-fit onto the GPU with the least room that still fits,
  so partly used GPUs fill up first and whole GPUs stay free for whole-GPU jobs.
* A job that could not run even on an empty cluster is unschedulable, with the
  missing resource named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

# Ray accounts resources in units of 1/10000; compare in the same grain.
_GRAIN = 10_000


def _q(x: float) -> int:
    return int(round(x * _GRAIN))


@dataclass(frozen=True)
class Demand:
    """What one pending job asks for."""

    job_id: int
    cpu: float = 1.0
    gpu: float = 0.0
    memory: int = 0  # bytes
    custom: dict[str, float] = field(default_factory=dict)
    priority: int = 0
    seq: int = 0  # submission order; lower first

    def shape(self) -> tuple:
        return (_q(self.cpu), _q(self.gpu), self.memory, tuple(sorted(self.custom.items())))


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

    @property
    def gpu_total(self) -> int:
        return len(self.gpu_free)


@dataclass(frozen=True)
class Placement:
    job_id: int
    node_id: str
    gpu_indices: tuple[int, ...] = ()


@dataclass
class Decision:
    placements: list[Placement] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # job id -> why it waits
    unschedulable: dict[int, str] = field(default_factory=dict)  # job id -> what no node has


def order(demands: Iterable[Demand]) -> list[Demand]:
    return sorted(demands, key=lambda d: (-d.priority, d.seq))


def decide(demands: Iterable[Demand], nodes: list[Node], known: list[Node] | None = None) -> Decision:
    """Which pending jobs start now, and on which node and GPUs.  ``nodes`` are
    the nodes that may be placed on; ``known`` (default: the same) are all nodes
    ever seen, dead ones included, against which "can this job ever fit" is judged."""
    decision = Decision()
    work = [_copy(n) for n in nodes]
    known = nodes if known is None else known
    failed_shapes: dict[tuple, str] = {}
    ahead = 0
    for demand in order(demands):
        missing = never_fits(demand, known)
        if missing is not None:
            decision.unschedulable[demand.job_id] = missing
            continue
        shape = demand.shape()
        if shape in failed_shapes:  # same shape already failed this pass: skip the scan
            decision.waiting[demand.job_id] = _with_ahead(failed_shapes[shape], ahead)
            ahead += 1
            continue
        placement = _place(demand, work)
        if placement is None:
            why = _why_waiting(demand, work)
            failed_shapes[shape] = why
            decision.waiting[demand.job_id] = _with_ahead(why, ahead)
            ahead += 1
        else:
            decision.placements.append(placement)
    return decision


def _with_ahead(why: str, ahead: int) -> str:
    return f"{why}; {ahead} job{'s' if ahead != 1 else ''} ahead" if ahead else why


def _copy(node: Node) -> Node:
    return Node(node.node_id, node.cpu_total, node.cpu_free, node.memory_total, node.memory_free,
                list(node.gpu_free), dict(node.custom_total), dict(node.custom_free))


def never_fits(demand: Demand, nodes: list[Node]) -> str | None:
    """None if some node could hold the job when empty, else what is missing."""
    if not nodes:
        return None  # no cluster known yet (Ray down or starting): wait, do not judge
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
            lacking.append(f"{demand.memory / 2**30:.1f}GiB memory (node has {node.memory_total / 2**30:.1f}GiB)")
        for name, amount in demand.custom.items():
            if _q(node.custom_total.get(name, 0.0)) < _q(amount):
                lacking.append(f"{amount:g} {name!r}" + ("" if name in offered else " (offered by no node)"))
        if not lacking:
            return None
        problems.append(lacking)
    best = min(problems, key=len)
    where = "any node" if len(nodes) > 1 else "the node"
    return f"needs {', '.join(best)}: more than {where} has"


def _gpus_needed(demand: Demand) -> int:
    if demand.gpu <= 0:
        return 0
    return 1 if demand.gpu <= 1 else int(round(demand.gpu))


def _place(demand: Demand, nodes: list[Node]) -> Placement | None:
    best: tuple[tuple, Node, tuple[int, ...]] | None = None
    for node in nodes:
        if _q(node.cpu_free) < _q(demand.cpu) or node.memory_free < demand.memory:
            continue
        if any(_q(node.custom_free.get(k, 0.0)) < _q(v) for k, v in demand.custom.items()):
            continue
        gpus = _pick_gpus(demand, node)
        if gpus is None:
            continue
        # Best fit: the node where the job leaves the least GPU share, then cpu, free.
        leftover_gpu = sum(node.gpu_free[i] for i in gpus) - demand.gpu if gpus else 0.0
        key = (_q(leftover_gpu), _q(node.cpu_free - demand.cpu), node.node_id)
        if best is None or key < best[0]:
            best = (key, node, gpus)
    if best is None:
        return None
    _, node, gpus = best
    node.cpu_free -= demand.cpu
    node.memory_free -= demand.memory
    for k, v in demand.custom.items():
        node.custom_free[k] = node.custom_free.get(k, 0.0) - v
    if demand.gpu > 1:
        for i in gpus:
            node.gpu_free[i] = 0.0
    elif gpus:
        node.gpu_free[gpus[0]] -= demand.gpu
    return Placement(demand.job_id, node.node_id, gpus)


def _pick_gpus(demand: Demand, node: Node) -> tuple[int, ...] | None:
    """() when no GPU is needed; None when the node cannot give what is needed."""
    if demand.gpu <= 0:
        return ()
    if demand.gpu > 1:
        whole = [i for i, free in enumerate(node.gpu_free) if _q(free) == _GRAIN]
        need = int(round(demand.gpu))
        return tuple(whole[:need]) if len(whole) >= need else None
    fitting = [(_q(free), i) for i, free in enumerate(node.gpu_free) if _q(free) >= _q(demand.gpu)]
    if not fitting:
        return None
    # Best fit: the fullest GPU that still has room; a whole free GPU only as a last resort.
    return (min(fitting)[1],)


def _why_waiting(demand: Demand, nodes: list[Node]) -> str:
    if not nodes:
        return "no nodes available (is Ray up?)"
    most_cpu = max(n.cpu_free for n in nodes)
    if _q(most_cpu) < _q(demand.cpu):
        return f"needs {demand.cpu:g} cpu, most free on a node {max(most_cpu, 0):g}"
    if demand.gpu > 1:
        whole = max(sum(1 for f in n.gpu_free if _q(f) == _GRAIN) for n in nodes)
        if whole < int(round(demand.gpu)):
            return f"needs {int(round(demand.gpu))} whole free GPUs on one node, most free {whole}"
    elif demand.gpu > 0:
        largest = max((f for n in nodes for f in n.gpu_free), default=0.0)
        if _q(largest) < _q(demand.gpu):
            return f"needs {demand.gpu:g} gpu, largest free share {max(largest, 0):g}"
    if demand.memory:
        most_mem = max(n.memory_free for n in nodes)
        if most_mem < demand.memory:
            return f"needs {demand.memory / 2**30:.2f}GiB memory, most free {max(most_mem, 0) / 2**30:.2f}GiB"
    for name, amount in demand.custom.items():
        most = max(n.custom_free.get(name, 0.0) for n in nodes)
        if _q(most) < _q(amount):
            return f"needs {amount:g} {name}, most free {max(most, 0):g}"
    return "no single node has all of its resources free at once"
