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

With ``pause: true`` (``asha``, ``hyperband``), ASHA works as in its paper
(Li et al. 2020, Algorithm 2), by promotion: a job that reaches a rung goes on
only if it is already in the top ``1/eta`` of the jobs that reached that rung
(``floor(n/eta)`` of ``n``); otherwise it is *paused*, its share freed.  A
paused job is promoted (pending again, resuming from its checkpoint) as soon as
enough jobs reach its rung behind it to put it in the top ``floor(n/eta)``.
When nothing of the stage can reach a rung any more (no job queued or running,
no trial left to ask), the best paused job of the highest rung is promoted if it
is in the top ``ceil(n/eta)`` there, one at a time, and the paused jobs left
when none is end pruned: ASHA's losers, never promoted.

A callable's ``report()`` waits at each rung step for the verdict (the
scheduler writes how far it has judged the job, or asks it to stop), as Ray
Tune's trials wait for their scheduler: a loser stops at its rung instead of a
step or more later.

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
    pause: bool = False  # promotion mode: pause at rungs, promote the best (asha, hyperband)

    @classmethod
    def from_config(cls, config: Mapping) -> "Rule":
        """From a stage's runtime ``early_stop`` (scheduler.spec)."""
        return cls(config["method"], config["metric"], config["mode"], config["grace"], config["eta"],
                   config["max_t"], bool(config.get("pause")))

    def all_rungs(self) -> list[int]:
        """Every bracket's rungs: the steps a callable's report() waits at for its verdict."""
        if self.method == "median":
            return []
        return sorted({r for bracket in range(self.brackets) for r in self.rungs(bracket)})

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
    order = positions(curves)
    out = {}
    for job in running:
        curve = curves.get(job) or ()
        bracket, rungs, rung = _highest_rung(rule, curve, order.get(job, 0))
        if rung is None:  # decided once, at the highest rung reached; the lower ones it passed
            continue
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


@dataclass(frozen=True)
class Verdicts:
    """What one pass decides for a stage's running jobs."""

    stop: dict[int, str]  # job id -> why it ends pruned
    pause: dict[int, str]  # job id -> why it is paused at its rung (pause mode)
    cleared: dict[int, float]  # job id -> the step it has been judged up to: its report() may pass rungs to there


def judge(rule: Rule, curves: Mapping[int, Sequence[Point]], running: Iterable[int],
          settled: Mapping[int, float] | None = None) -> Verdicts:
    """The verdicts for the ``running`` jobs, from every job's curve so far.
    ``settled``: per job, the step up to which its rungs were decided before:
    the last step its earlier attempts reported (it resumed from a checkpoint),
    or the step it was cleared to go on from.  A rung is judged once: a record
    of another job read late does not stop or pause it after it went on."""
    running = list(running)
    settled = settled or {}
    order = positions(curves)
    if rule.method != "median":  # the median rule has no rungs: it judges every step
        running_open = [job for job in running
                        if (rung := _highest_rung(rule, curves.get(job) or (), order.get(job, 0))[2]) is not None
                        and rung > settled.get(job, 0)]
    else:
        running_open = running
    if rule.pause:
        stop, pause = {}, _to_pause(rule, curves, running_open)
    else:
        stop, pause = to_stop(rule, curves, running_open), {}
    cleared = {job: curves[job][-1].step for job in running
               if job not in stop and job not in pause and curves.get(job)}
    return Verdicts(stop, pause, cleared)


def promotions(rule: Rule, curves: Mapping[int, Sequence[Point]], paused: Iterable[int],
               idle: bool) -> tuple[dict[int, str], dict[int, str]]:
    """({paused job: why it is promoted}, {paused job: why it ends pruned}).
    ``idle``: nothing of the stage is queued or running, and no trial is left
    to ask, so no job can reach a rung any more."""
    order = positions(curves)
    ranked_at = _Rankings(rule, curves, order)
    promote: dict[int, str] = {}
    standing: dict[int, tuple[float, int, int, list[int]]] = {}  # job -> (rung, rank there, jobs there, rungs)
    for job in paused:
        bracket, rungs, rung = _highest_rung(rule, curves.get(job) or (), order.get(job, 0))
        if rung is None:  # paused before any rung (it cannot be): let it go on
            promote[job] = "promoted: it had reached no rung"
            continue
        ranked = ranked_at(bracket, rung)
        rank, n = ranked.index(job), len(ranked)
        standing[job] = (rung, rank, n, rungs)
        if rank < n // rule.eta:
            promote[job] = (f"promoted: {_where(rule, curves[job], rung, rungs)} is now among the top "
                            f"{n // rule.eta} of the {n} job(s) there")
    if promote or not idle:
        return promote, {}
    # Nothing more can reach a rung: the best paused job of the highest rung goes
    # on while it is in the top ceil(n/eta) there (so a small search still
    # finishes its best trial), one at a time; when none is, the rest never will.
    for job in sorted(standing, key=lambda j: (-standing[j][0], standing[j][1], j)):
        rung, rank, n, rungs = standing[job]
        if rank < math.ceil(n / rule.eta):
            return {job: (f"promoted: {_where(rule, curves[job], rung, rungs)} is the best paused of the {n} "
                          f"job(s) there, and nothing else of the stage is left to run")}, {}
    give_up = {}
    for job, (rung, _, n, rungs) in standing.items():
        give_up[job] = (f"{rule.method}: never promoted: {_where(rule, curves[job], rung, rungs)} stayed below "
                        f"the top 1/{rule.eta} of the {n} job(s) there")
    return {}, give_up


def _to_pause(rule: Rule, curves: Mapping[int, Sequence[Point]], running: list[int]) -> dict[int, str]:
    """The ``running`` jobs (each at a rung not yet decided) to pause there."""
    order = positions(curves)
    ranked_at = _Rankings(rule, curves, order)
    out = {}
    for job in running:
        curve = curves.get(job) or ()
        bracket, rungs, rung = _highest_rung(rule, curve, order.get(job, 0))
        if rung is None:
            continue
        # Judged once, against the jobs that reached the rung before it (so
        # the verdict does not change as others arrive: they promote it later)
        mine = _at_rung(curve, rung)
        ranked = [j for j in ranked_at(bracket, rung) if (_at_rung(curves[j], rung).at, j) <= (mine.at, job)]
        n = len(ranked)
        if ranked.index(job) >= n // rule.eta:
            out[job] = (f"{rule.method}: {_where(rule, curve, rung, rungs)} is not (yet) in the top 1/{rule.eta} of the {n} "
                        f"job(s) there: paused until it is promoted")
    return out


def _highest_rung(rule: Rule, curve: Sequence[Point], position: int) -> tuple[int, list[int], int | None]:
    """(the bracket of the stage's ``position``-th job, its rungs, the highest it reached or None)."""
    bracket = position % rule.brackets
    rungs = rule.rungs(bracket)
    reached = [r for r in rungs if _at_rung(curve, r) is not None]
    return bracket, rungs, reached[-1] if reached else None


def positions(curves: Mapping[int, Sequence[Point]]) -> dict[int, int]:
    """Each job's position in its stage (by id): what its hyperband bracket is
    taken from (and :func:`rung_of`'s ``position``)."""
    return {job: k for k, job in enumerate(sorted(curves))}


class _Rankings:
    """The jobs of a bracket that reached a rung, best there first (ties: the
    earlier first); each (bracket, rung) ranked once per pass."""

    def __init__(self, rule: Rule, curves: Mapping[int, Sequence[Point]], order: Mapping[int, int]):
        self._rule, self._curves, self._order = rule, curves, order
        self._ranked: dict[tuple[int, float], list[int]] = {}

    def __call__(self, bracket: int, rung: float) -> list[int]:
        found = self._ranked.get((bracket, rung))
        if found is None:
            rule, sign = self._rule, 1.0 if self._rule.mode == "max" else -1.0
            at = {job: _at_rung(curve, rung) for job, curve in self._curves.items()
                  if self._order.get(job, 0) % rule.brackets == bracket}
            found = self._ranked[(bracket, rung)] = sorted(
                (job for job, p in at.items() if p is not None), key=lambda j: (-sign * at[j].value, at[j].at, j))
        return found


def _where(rule: Rule, curve: Sequence[Point], rung: float, rungs: list[int]) -> str:
    point = _at_rung(curve, rung)
    value = f"{point.value:.6g}" if point is not None else "?"
    return f"{rule.metric} {value} at rung {rungs.index(rung) + 1}/{len(rungs)} (step {rung:g})"


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
