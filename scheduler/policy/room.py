"""Where a job fits: a demand in the integer grain (``Need``), one node's room
during a decision (``NodeRoom``) and all placeable nodes' room indexed for best
fit (``ClusterRoom``); whether a job fits now or could ever fit."""

from __future__ import annotations

import bisect
import math

from scheduler.policy.fragmentation import ShapeMix
from scheduler.policy.records import GRAIN, GiB, Demand, Node, RunningJob, q


# ---------------------------------------------------------------- fit

def fits_now(demand: Demand, node: Node) -> bool:
    """Whether ``demand`` fits on ``node``'s free capacity as it is."""
    return NodeRoom.of(node).fits(Need(demand))



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
        if q(node.cpu_total) < q(demand.cpu):
            lacking.append(f"{demand.cpu:g} cpu (node has {node.cpu_total:g})")
        if node.gpu_total < gpus_needed:
            lacking.append(f"{demand.gpu:g} gpu (node has {node.gpu_total})")
        if demand.memory and node.memory_total < demand.memory:
            lacking.append(f"{demand.memory / GiB:.1f}GiB memory (node has {node.memory_total / GiB:.1f}GiB)")
        for name, amount in demand.custom.items():
            if q(node.custom_total.get(name, 0.0)) < q(amount):
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
        if (q(n.cpu_total) >= q(demand.cpu) and n.memory_total >= demand.memory
                and any(t >= demand.gpu_memory for t in n.gpu_memory[:n.gpu_total])):
            return None
    largest, where = max(cards)
    return (f"needs {demand.gpu_memory / GiB:.1f}GiB of GPU memory: the largest GPU has "
            f"{largest / GiB:.1f}GiB (on {where})")


def _gpus_needed(demand: Demand) -> int:
    if demand.gpu <= 0 and not demand.gpu_memory:
        return 0
    return 1 if demand.gpu <= 1 else int(round(demand.gpu))


# ---------------------------------------------------------------- room during one decision

class Need:
    """A demand in the policy's integer grain: cpu and GPU share in 1/10000."""

    __slots__ = ("cpu", "gpu", "whole", "memory", "custom", "gpu_memory")

    def __init__(self, d: Demand):
        self.cpu = q(d.cpu)
        self.memory = d.memory
        self.custom = {k: q(v) for k, v in d.custom.items()}
        self.gpu_memory = d.gpu_memory
        self.whole = int(round(d.gpu)) if d.gpu > 1 and not d.gpu_memory else 0
        self.gpu = q(d.gpu) if 0 < d.gpu <= 1 and not d.gpu_memory else 0


class NodeRoom:
    """One node's free capacity during a pass (integer grain)."""

    __slots__ = ("id", "cpu", "memory", "gpu", "custom", "gpu_memory", "whole")

    def __init__(self, node_id: str, cpu: int, memory: int, gpu: list[int], custom: dict[str, int],
                 gpu_memory: list[int]):
        self.id, self.cpu, self.memory, self.gpu, self.custom, self.gpu_memory = node_id, cpu, memory, gpu, custom, gpu_memory
        self.whole = sum(1 for f in gpu if f >= GRAIN)

    @classmethod
    def of(cls, n: Node) -> "NodeRoom":
        return cls(n.node_id, q(n.cpu_free), n.memory_free, [q(f) for f in n.gpu_free],
                   {k: q(v) for k, v in n.custom_free.items()}, list(n.gpu_memory))

    def clone(self) -> "NodeRoom":
        return NodeRoom(self.id, self.cpu, self.memory, list(self.gpu), dict(self.custom), self.gpu_memory)

    def holds(self, need: Need) -> bool:
        """Enough cpu, memory and custom resources (GPUs are picked separately)."""
        return (self.cpu >= need.cpu and self.memory >= need.memory
                and all(self.custom.get(k, 0) >= v for k, v in need.custom.items()))

    def pick_gpus(self, need: Need) -> tuple[tuple[int, ...], int] | None:
        """(GPU indices, share booked on each) for ``need`` here, or None."""
        if need.whole:
            free = [i for i, f in enumerate(self.gpu) if f >= GRAIN][:need.whole]
            return (tuple(free), GRAIN) if len(free) == need.whole else None
        if need.gpu:
            fitting = [(f, i) for i, f in enumerate(self.gpu) if f >= need.gpu]
            return ((min(fitting)[1],), need.gpu) if fitting else None
        if need.gpu_memory:
            return self._pick_by_memory(need.gpu_memory)
        return (), 0

    def _pick_by_memory(self, gpu_memory: int) -> tuple[tuple[int, ...], int] | None:
        best = None
        for i, total in enumerate(self.gpu_memory[:len(self.gpu)]):
            share = -(-gpu_memory * GRAIN // total) if total > 0 else GRAIN + 1  # round up: never over-book
            if share <= GRAIN and self.gpu[i] >= share and (best is None or self.gpu[i] - share < best[0]):
                best = (self.gpu[i] - share, i, share)
        return ((best[1],), best[2]) if best else None

    def fits(self, need: Need) -> bool:
        return self.holds(need) and self.pick_gpus(need) is not None

    def take(self, need: Need, gpus: tuple[int, ...], share: int) -> None:
        self.cpu -= need.cpu
        self.memory -= need.memory
        for k, v in need.custom.items():
            self.custom[k] = self.custom.get(k, 0) - v
        for i in gpus:
            self.gpu[i] -= share
        self.whole = sum(1 for f in self.gpu if f >= GRAIN)

    def release(self, job: RunningJob) -> None:
        """Give back what a running job holds: what :class:`CapacityBook` took
        for it, in the integer grain."""
        self.cpu += q(job.cpu)
        self.memory += job.memory
        for k, v in job.custom.items():
            self.custom[k] = self.custom.get(k, 0) + q(v)
        share = q(job.share_per_gpu)
        for i in job.gpu_indices:
            if i < len(self.gpu):
                self.gpu[i] += share
        self.whole = sum(1 for f in self.gpu if f >= GRAIN)


class ClusterRoom:
    """The free capacity of the placeable nodes during one pass, indexed by free
    cpu and by free share per GPU so that a best-fit search is a bisection, and
    by state (nodes with the same free capacity) for fragmentation-aware
    placement, which scores each state once instead of each node."""

    def __init__(self, nodes: list[Node]):
        self.nodes = {n.node_id: NodeRoom.of(n) for n in nodes}
        self.mix: ShapeMix | None = None  # the shapes expected (policy.fragmentation); None: best fit
        self.last_why = ""  # why the last fragmentation-aware find chose its node
        # state -> its nodes, as (rank, id) in the fixed node order (_node_rank)
        self.by_state: dict[tuple, list[tuple[int, str]]] = {}
        for w in sorted(self.nodes.values(), key=lambda w: _node_rank(w.id)):
            self.by_state.setdefault(self._state(w), []).append(_node_rank(w.id))
        self.by_cpu = sorted((w.cpu, w.id) for w in self.nodes.values())
        # The nodes without a free GPU share, by free cpu: where a CPU-only job
        # goes first, so that it does not take the last cores of a node whose
        # GPUs are free and strand them.
        self.by_cpu_no_free_gpu = sorted((w.cpu, w.id) for w in self.nodes.values() if not self._has_free_gpu(w))
        self.by_gpu = sorted(e for w in self.nodes.values() for e in self._gpu_entries(w))

    @staticmethod
    def _has_free_gpu(w: NodeRoom) -> bool:
        return any(f > 0 for f in w.gpu)

    @staticmethod
    def _gpu_entries(w: NodeRoom) -> list[tuple[int, int, str, int]]:
        # Fullest GPU first, then the node with fewest whole GPUs left, keeping whole ones whole.
        return [(f, w.whole, w.id, i) for i, f in enumerate(w.gpu) if f > 0]

    @staticmethod
    def _state(w: NodeRoom) -> tuple:
        """What makes two nodes interchangeable for placement: their free capacity."""
        return (w.cpu, w.memory, tuple(sorted(w.gpu)), tuple(sorted(w.custom.items())) if w.custom else ())

    def find(self, need: Need, accept=None) -> tuple[NodeRoom, tuple[int, ...], int] | None:
        """Where ``need`` goes: with a mix, where it adds the least fragmentation;
        else best fit.  ``accept(work, gpus, share)`` may veto a spot."""
        if self.mix and not need.gpu_memory:
            return self._least_fragmenting(need, accept)
        if need.whole or need.gpu_memory:
            return self._scan(need, accept)
        if need.gpu:
            by = self.by_gpu
            for k in range(bisect.bisect_left(by, (need.gpu,)), len(by)):
                w = self.nodes[by[k][2]]
                if w.holds(need) and (accept is None or accept(w, (by[k][3],), need.gpu)):
                    return w, (by[k][3],), need.gpu
            return None
        for by in (self.by_cpu_no_free_gpu, self.by_cpu):  # best fit, a node with free GPUs last
            for k in range(bisect.bisect_left(by, (need.cpu,)), len(by)):
                w = self.nodes[by[k][1]]
                if w.holds(need) and (accept is None or accept(w, (), 0)):
                    return w, (), 0
        return None

    def _scan(self, need: Need, accept) -> tuple[NodeRoom, tuple[int, ...], int] | None:
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

    def _least_fragmenting(self, need: Need, accept) -> tuple[NodeRoom, tuple[int, ...], int] | None:
        """The spot where ``need`` adds the least fragmentation for the mix (FGD,
        in its score buckets), then as best fit prefers, then the first node in
        a fixed order; one score per node state and GPU choice."""
        mix = self.mix
        best = None
        candidates, counted = 0, None
        for state, ids in self.by_state.items():
            w = self.nodes[ids[0][1]]
            if not w.holds(need):
                continue
            cpu, memory, gpus, _ = state
            before = mix.fragment(cpu, memory, gpus)
            for share_left, taken in _gpu_choices(need, gpus):
                after = mix.fragment(cpu - need.cpu, memory - need.memory, taken)
                spot = None
                # The state's first node in the fixed order (its GPUs differ only
                # in order); the next ones only when a reservation vetoes it.
                for node_id in (w.id,) if accept is None else [i for _, i in ids]:
                    node = self.nodes[node_id]
                    picked = _pick(node, need, share_left)
                    if accept is None or accept(node, *picked):
                        spot = (node, *picked)
                        break
                if spot is None:
                    continue
                if counted is not state:
                    candidates, counted = candidates + len(ids), state
                node = spot[0]
                # FGD's score buckets (a change of a few hundredths of a GPU is
                # no change); then the fullest GPU, fewest whole GPUs left for a
                # whole-GPU job, a CPU job off nodes with free GPUs; then the
                # fixed node order: among equals the same nodes fill first.
                key = (_score_bucket(after - before), share_left, node.whole if need.whole else 0,
                       not (need.gpu or need.whole) and self._has_free_gpu(node), _node_rank(node.id))
                if best is None or key < best[0]:
                    best = (key, spot, before, after)
        if best is None:
            return None
        _, spot, before, after = best
        self.last_why = (f"adds {max(after - before, 0.0) / GRAIN:.2f} GPU of fragmentation for the expected job mix "
                         f"(node then {after / GRAIN:.2f} GPU unusable to it; {candidates} node(s) fit)")
        return spot

    def take(self, w: NodeRoom, need: Need, gpus: tuple[int, ...], share: int) -> None:
        self._reindexed(w, bool(gpus), lambda: w.take(need, gpus, share))

    def give_back(self, job: RunningJob) -> None:
        """A running job ended: what it holds is free again (nothing, on a node
        this room does not hold).  Lets a caller keep one room between
        decisions instead of building it from every node for each."""
        w = self.nodes.get(job.node_id)
        if w is not None:
            self._reindexed(w, bool(job.gpu_indices), lambda: w.release(job))

    def _reindexed(self, w: NodeRoom, gpus_change: bool, change) -> None:
        """Apply ``change`` to ``w``, keeping the indexes sorted."""
        state = self._state(w)
        same = self.by_state[state]
        del same[bisect.bisect_left(same, _node_rank(w.id))]
        if not same:
            del self.by_state[state]
        del self.by_cpu[bisect.bisect_left(self.by_cpu, (w.cpu, w.id))]
        if not self._has_free_gpu(w):
            del self.by_cpu_no_free_gpu[bisect.bisect_left(self.by_cpu_no_free_gpu, (w.cpu, w.id))]
        if gpus_change:
            for e in self._gpu_entries(w):
                del self.by_gpu[bisect.bisect_left(self.by_gpu, e)]
        change()
        bisect.insort(self.by_state.setdefault(self._state(w), []), _node_rank(w.id))
        bisect.insort(self.by_cpu, (w.cpu, w.id))
        if not self._has_free_gpu(w):
            bisect.insort(self.by_cpu_no_free_gpu, (w.cpu, w.id))
        if gpus_change:
            for e in self._gpu_entries(w):
                bisect.insort(self.by_gpu, e)

    def why_waiting(self, d: Demand, need: Need) -> str:
        """What is short, in numbers, on the best node for each resource."""
        nodes = list(self.nodes.values())
        if not nodes:
            return "no nodes available (is Ray up?)"
        most_cpu = self.by_cpu[-1][0]
        if most_cpu < need.cpu:
            return f"needs {d.cpu:g} cpu, most free on a node {max(most_cpu, 0) / GRAIN:g}"
        if need.whole:
            whole = max(w.whole for w in nodes)
            if whole < need.whole:
                return f"needs {need.whole} whole free GPUs on one node, most free {whole}"
        elif need.gpu or need.gpu_memory:
            largest = max((f for w in nodes for f in w.gpu), default=0)
            if need.gpu and largest < need.gpu:
                return f"needs {d.gpu:g} gpu, largest free share {max(largest, 0) / GRAIN:g}"
            if need.gpu_memory and not any(w.pick_gpus(need) for w in nodes):
                return (f"needs {d.gpu_memory / GiB:.1f}GiB of GPU memory, largest free share "
                        f"{max(largest, 0) / GRAIN:g} of a GPU")
        if d.memory:
            most_mem = max(w.memory for w in nodes)
            if most_mem < d.memory:
                return f"needs {d.memory / GiB:.2f}GiB memory, most free {max(most_mem, 0) / GiB:.2f}GiB"
        for name, amount in need.custom.items():
            most = max(w.custom.get(name, 0) for w in nodes)
            if most < amount:
                return f"needs {amount / GRAIN:g} {name}, most free {max(most, 0) / GRAIN:g}"
        return "no single node has all of its resources free at once"


def _score_bucket(delta: float) -> int:
    """A change of ``delta`` (grain) in a node's fragmentation as FGD scores it
    (its artifact's fgd_score.go): ``int(sigmoid(-change in GPUs) * 100)``,
    negated so that lower is better.  Near no change a bucket is about 0.04 GPU
    wide; far from it, coarser.  Scored exactly, one-step differences smaller
    than the mix's own error decide placement, and packing is lost: measured on
    the FGD paper's traces (bench/bench_fgd_alloc.py), exact scores allocate
    0.2-1.7 points less."""
    x = max(-50.0, min(50.0, delta / GRAIN))
    return -int(100.0 / (1.0 + math.exp(x)))


_RANKS: dict[str, tuple[int, str]] = {}


def _node_rank(node_id: str) -> tuple[int, str]:
    """A node's place in a fixed, arbitrary order (an FNV-1a hash of its id:
    the same in every process and run): among equally good spots the first in
    this order wins, so load gathers on the same nodes, as first fit does,
    without favouring one node type the way an order by name would."""
    rank = _RANKS.get(node_id)
    if rank is None:
        h = 2166136261
        for byte in node_id.encode():
            h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
        if len(_RANKS) >= 1 << 16:  # node ids come and go on an autoscaling cluster
            _RANKS.clear()
        rank = _RANKS[node_id] = (h, node_id)
    return rank


def _gpu_choices(need: Need, gpus: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    """Each distinct way ``need`` can take GPUs on a node whose free share per GPU
    is ``gpus`` (sorted): (the share left on the GPU it takes, or -1 for whole
    GPUs or none; the free shares after, sorted)."""
    if need.whole:
        full = [i for i, f in enumerate(gpus) if f >= GRAIN]
        if len(full) < need.whole:
            return []
        after = list(gpus)
        for i in full[:need.whole]:
            after[i] -= GRAIN
        return [(-1, tuple(sorted(after)))]
    if need.gpu:
        choices = []
        for f in sorted({f for f in gpus if f >= need.gpu}):
            after = list(gpus)
            after[after.index(f)] -= need.gpu
            choices.append((f - need.gpu, tuple(sorted(after))))
        return choices
    return [(-1, gpus)]


def _pick(w: NodeRoom, need: Need, share_left: int) -> tuple[tuple[int, ...], int]:
    """On node ``w``, the GPUs of a choice from :func:`_gpu_choices`."""
    if need.whole:
        return tuple([i for i, f in enumerate(w.gpu) if f >= GRAIN][:need.whole]), GRAIN
    if need.gpu:
        return (next(i for i, f in enumerate(w.gpu) if f - need.gpu == share_left),), need.gpu
    return (), 0
