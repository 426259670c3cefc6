"""Early stopping: which running jobs of a stage to stop because their curve is
losing, from the per-step metrics jobs report (``report(step=...)``, a
``metrics.jsonl`` a command appends to).  Pure: curves in, jobs to stop (with
why) out; the loop reads the curves and stops the jobs, which end ``pruned``.

Rules (``early_stop.method``):

* ``asha`` (asynchronous successive halving, Li et al. 2020, as Ray Tune's
  ASHAScheduler stops trials): rungs at ``grace``, ``grace*eta``,
  ``grace*eta^2``... below ``max_t`` steps.  When a job reaches a rung, its
  metric there is compared with those recorded at that rung by the jobs that
  reached it before; below their ``1 - 1/eta`` quantile, it stops.  About
  ``1/eta`` of the jobs pass each rung.
* ``hyperband``: several ASHA brackets, the first rung of bracket ``s`` at
  ``grace*eta^s``; job ``k`` of the stage (in submission order) is in bracket
  ``k mod brackets``, and is compared only with its own bracket.
* ``median`` (the median stopping rule of Google Vizier): past ``grace`` steps,
  a job stops when its best value so far is worse than the median of the other
  jobs' mean values up to the same step (three other jobs at least).

Everything is recomputed from the curves each time, which makes the rule as
durable as the metrics files: a restarted scheduler decides what the last one
would have.  Which jobs reached a rung first comes from the time of each record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

METHODS = ("asha", "hyperband", "median")
MEDIAN_MIN_OTHERS = 3


@dataclass(frozen=True)
class Rule:
    """A stage's ``early_stop``: the rule, its metric and mode, and its steps."""

    method: str
    metric: str
    mode: str  # "max" or "min"
    grace: int = 1
    eta: int = 3
    max_t: int = 100

    def rungs(self, bracket: int = 0) -> list[int]:
        """The steps at which bracket ``bracket`` decides (ASHA: bracket 0)."""
        out, r = [], self.grace * self.eta ** bracket
        while r < self.max_t:
            out.append(r)
            r *= self.eta
        return out

    @property
    def brackets(self) -> int:
        if self.method != "hyperband":
            return 1
        return max(1, int(math.floor(math.log(self.max_t / self.grace, self.eta) + 1e-9)))


@dataclass(frozen=True)
class Point:
    """One reported value of a curve: the step, the value, when it was reported."""

    step: float
    value: float
    at: float


def points(records: Iterable[Mapping], metric: str) -> list[Point]:
    """A curve from metrics.jsonl records: those with a finite number for
    ``metric``, the step from ``step`` (else the record's position, from 1)."""
    out = []
    for n, record in enumerate(records, 1):
        value = record.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        step = record.get("step", n)
        step = step if isinstance(step, (int, float)) and not isinstance(step, bool) else n
        at = record.get("time", 0.0)
        out.append(Point(float(step), float(value), float(at) if isinstance(at, (int, float)) else 0.0))
    return out


def to_stop(rule: Rule, curves: Mapping[int, Sequence[Point]], running: Iterable[int]) -> dict[int, str]:
    """{job id: why it stops} for the ``running`` jobs the rule stops now, given
    every job's curve so far (``curves``: job id -> points; finished jobs too)."""
    sign = 1.0 if rule.mode == "max" else -1.0
    if rule.method == "median":
        return _median(rule, curves, running, sign)
    order = {job: k for k, job in enumerate(sorted(curves))}
    out = {}
    for job in running:
        curve = curves.get(job) or ()
        bracket = order.get(job, 0) % rule.brackets
        rungs = rule.rungs(bracket)
        reached = [r for r in rungs if _at_rung(curve, r) is not None]
        if not reached:
            continue
        rung = reached[-1]  # decided once, at the highest rung reached; the lower ones it passed
        mine = _at_rung(curve, rung)
        before = []
        for other, other_curve in curves.items():
            if other == job or order.get(other, 0) % rule.brackets != bracket:
                continue
            theirs = _at_rung(other_curve, rung)
            if theirs is not None and (theirs.at, other) < (mine.at, job):
                before.append(sign * theirs.value)
        if not before:
            continue
        cutoff = _quantile(before, 1 - 1 / rule.eta)
        if sign * mine.value < cutoff:
            where = f"rung {rungs.index(rung) + 1}/{len(rungs)} (step {rung:g})"
            out[job] = (f"{rule.method}: {rule.metric} {mine.value:.6g} at {where} is below the top "
                        f"1/{rule.eta} of the {len(before)} job(s) there before it (cutoff "
                        f"{sign * cutoff:.6g})")
    return out


def rung_of(rule: Rule, curve: Sequence[Point], position: int = 0) -> str | None:
    """"rung 2/4": how far a job (the ``position``-th of its stage) has come, for `labq queue`."""
    if rule.method == "median":
        return None
    rungs = rule.rungs(position % rule.brackets)
    reached = sum(1 for r in rungs if _at_rung(curve, r) is not None)
    return f"rung {reached}/{len(rungs)}" if rungs else None


def _at_rung(curve: Sequence[Point], rung: float) -> Point | None:
    """The first point at or past step ``rung``."""
    return next((p for p in curve if p.step >= rung), None)


def _quantile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _median(rule: Rule, curves: Mapping[int, Sequence[Point]], running: Iterable[int], sign: float) -> dict[int, str]:
    out = {}
    for job in running:
        curve = curves.get(job) or ()
        if not curve or curve[-1].step < rule.grace:
            continue
        step = curve[-1].step
        best = max(sign * p.value for p in curve)
        means = []
        for other, other_curve in curves.items():
            upto = [sign * p.value for p in other_curve if p.step <= step]
            if other != job and upto and other_curve[-1].step >= step:
                means.append(sum(upto) / len(upto))
        if len(means) < MEDIAN_MIN_OTHERS:
            continue
        median = _quantile(means, 0.5)
        if best < median:
            out[job] = (f"median: best {rule.metric} {sign * best:.6g} by step {step:g} is worse than the median "
                        f"{sign * median:.6g} of {len(means)} other job(s)' running means")
    return out
