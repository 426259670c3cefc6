"""Fragmentation-aware placement, after FGD ("Beware of Fragmentation:
Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent", Weng et
al., USENIX ATC'23).

A node's free GPU capacity is *fragmented* for a job shape when that shape
cannot use it: all of it when the node lacks the shape's CPU or memory or has no
GPU with room enough, else the free parts of the GPUs too small for the shape
(a partly used GPU for a whole-GPU shape), and, beyond FGD, what the node's
free CPU and memory leave unusable: a node whose cores hold only k more of the
shape can give it only k shapes' worth of its GPUs (half of the rest counted,
for a fractional shape: CORE_LIMITED).  FGD asks only whether one more fits, so
it cannot see a node whose CPUs run out before its GPUs; on its paper's default
trace this took labq from 0.33 points under FGD to 0.16 above
(bench/bench_fgd_alloc.py, BENCHMARKS.md).
Against the *mix* of shapes the cluster expects (:class:`ShapeMix`: recent
jobs, decayed, with the pending queue counted again, passed in as usage is, so
the policy stays pure), a node's fragmentation is the weighted sum over the
mix.  A job goes where placing it adds the least fragmentation: a fractional
job onto a GPU whose leftover no common shape could use anyway, a CPU-only job
where its cores do not strand a node's GPUs.  The change is compared in FGD's
score buckets, not exactly, and ties go to best fit's preferences, then a fixed
node order (policy.room), so placement stays deterministic.

Shapes that use no GPU count nothing as fragmented (GPUs are of no use to them
either way); GPU-memory and custom-resource requests are left out of the mix.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from scheduler.policy.records import GRAIN

_MANY = 1 << 62  # no limit: a shape that asks for none of a resource

# How much of the GPU room a fractional shape's cores cannot feed counts as
# fragmented.  Not all of it: the per-shape sum cannot see that another shape,
# with fewer cores per GPU, may still use it.  Counted in full, a small job
# looks free to take an empty node (its GPUs already half lost to the
# core-hungry shapes), and multi-GPU jobs lose the whole nodes they need: on the
# FGD paper's traces (bench/bench_fgd_alloc.py, seeds 42-44) 0, 0.25, 0.5, 0.75
# and 1 give 95.10, 95.61, 95.58, 95.58, 95.38% of GPUs allocated on default and
# 97.26, 97.12, 97.03, 96.95, 96.63% on multigpu50.  (Whole-GPU shapes count
# in full: a GPU is theirs only with the cores to go with it.)
CORE_LIMITED = 0.5

# The most shapes a mix keeps (its heaviest): fragmentation costs O(shapes x GPUs) per node state.
MAX_SHAPES = 24


class ShapeMix:
    """Job shapes with weights summing to 1, as (cpu, memory, gpu share, whole
    GPUs, weight) in the policy's grain (a share in 1/10000 of a GPU)."""

    def __init__(self, weights: Mapping[tuple, float]):
        """``weights``: Demand.shape() -> how much of the expected work is of it."""
        usable = {s: w for s, w in weights.items() if w > 0 and not s[3] and not s[4]}
        top = sorted(usable.items(), key=lambda item: (-item[1], item[0]))[:MAX_SHAPES]
        total = sum(w for _, w in top)
        self.types = tuple((cpu, memory, gpu if gpu <= GRAIN else 0, gpu // GRAIN if gpu > GRAIN else 0, w / total)
                           for (cpu, gpu, memory, _, _), w in top if gpu > 0)
        self._memo: dict[tuple, float] = {}

    def __bool__(self) -> bool:
        return bool(self.types)

    def fragment(self, cpu: int, memory: int, gpus: tuple[int, ...]) -> float:
        """The free GPU capacity (in grain) the mix could not use on a node with
        this much free cpu, memory and share per GPU (``gpus`` sorted)."""
        key = (cpu, memory, gpus)
        found = self._memo.get(key)
        if found is not None:
            return found
        free = [f for f in gpus if f > 0]
        total = sum(free)
        out = 0.0
        if total:
            full = sum(1 for f in free if f >= GRAIN)
            largest = free[-1] if free else 0
            for t_cpu, t_memory, share, whole, weight in self.types:
                if cpu < t_cpu or memory < t_memory:
                    out += weight * total
                    continue
                # How many more of the shape the node's CPU and memory hold.
                fit = min(cpu // t_cpu if t_cpu > 0 else _MANY, memory // t_memory if t_memory > 0 else _MANY)
                if whole:
                    usable = 0 if full < whole else min(full, fit * whole) * GRAIN
                elif largest < share:
                    usable = 0
                else:
                    room = [f for f in free if f >= share]
                    usable = sum(room)
                    if fit < sum(f // share for f in room):  # the cores run out first
                        usable -= CORE_LIMITED * (usable - fit * share)
                out += weight * (total - usable)
        self._memo[key] = out
        return out


class MixBook:
    """A decayed count of the shapes of jobs that arrived, from which a
    :class:`ShapeMix` is made with the pending queue.  Pure: the caller says
    what arrived and when."""

    def __init__(self, half_life: float):
        if not half_life > 0:
            raise ValueError("half_life must be positive")
        self.half_life = float(half_life)
        self._weights: dict[tuple, float] = {}
        self._at = 0.0  # the time the weights are scaled to
        self._last = 0.0  # the last arrival

    def add(self, shape: tuple, t: float, count: float = 1.0) -> None:
        self._last = max(self._last, t)
        # Weights are kept relative to self._at; a later arrival weighs 2^((t - at)/half_life).
        if t - self._at > 50 * self.half_life:  # rescale before the factor overflows
            factor = 0.5 ** ((t - self._at) / self.half_life)
            self._weights = {s: w * factor for s, w in self._weights.items() if w * factor > 1e-12}
            self._at = t
        self._weights[shape] = self._weights.get(shape, 0.0) + count * 2.0 ** ((t - self._at) / self.half_life)

    def mix(self, pending: Iterable[tuple[tuple, int]] = (), now: float | None = None) -> ShapeMix:
        """The mix: the history, each pending job counted once more as if it
        arrived ``now`` (default: at the last arrival), since it is what is
        placed next."""
        now = self._last if now is None else now
        # The history decayed to now (scaled down, not the pending scaled up: a
        # job pending for years must not overflow the factor).
        factor = 0.5 ** ((now - self._at) / self.half_life)
        weights = {s: w * factor for s, w in self._weights.items()}
        for shape, n in pending:
            weights[shape] = weights.get(shape, 0.0) + n
        return ShapeMix(weights)


def mix_of(counts: Mapping[tuple, float], pending: Iterable[tuple[tuple, int]] = ()) -> ShapeMix:
    """A mix from shapes' counts decayed to now (the live loop's history, read
    from the store), each pending job counted once more, as a new arrival."""
    weights = dict(counts)
    for shape, n in pending:
        weights[shape] = weights.get(shape, 0.0) + n
    return ShapeMix(weights)
