"""Sweep expansion and the job plan of an experiment.

A stage's jobs are the cross product of (one job of each upstream stage) x (the
points of its own sweep).  With the usual single prep job that is just the sweep;
with a swept prep stage every training point runs on every prep variant, which is
what comparing preprocessing choices needs.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

from scheduler.errors import SpecError
from scheduler.spec import MAX_JOBS_PER_EXPERIMENT, Distribution, ExperimentSpec, Sweep


@dataclass(frozen=True)
class JobDraft:
    """A job before it has an id: its position in the plan names it."""

    index: int
    stage: str
    params: dict[str, Any]
    # The values this job's own sweep chose (shown as columns in results).
    swept: dict[str, Any]
    # Plan indices of the upstream jobs it needs, one per upstream stage.
    depends_on: list[int] = field(default_factory=list)


def sweep_size(sweep: Sweep | None) -> int:
    """How many points ``expand_sweep`` would return, without building them."""
    if sweep is None:
        return 1
    size = math.prod(len(v) for v in (sweep.grid or {}).values())
    return size * (sweep.samples or 1) if sweep.random else size


def expand_sweep(sweep: Sweep | None) -> list[dict[str, Any]]:
    """The points of one stage's sweep: grid cartesian product, then for each grid
    point ``samples`` random draws (deterministic for a seed)."""
    if sweep is None:
        return [{}]
    grid_points = [{}]
    if sweep.grid:
        names = list(sweep.grid)
        grid_points = [dict(zip(names, combo)) for combo in itertools.product(*(sweep.grid[n] for n in names))]
    if not sweep.random:
        return grid_points
    rng = random.Random(sweep.seed)
    points = []
    for _ in range(sweep.samples or 1):
        for grid_point in grid_points:
            drawn = {name: _draw(dist, rng) for name, dist in sweep.random.items()}
            points.append({**grid_point, **drawn})
    return points


def _draw(dist: Distribution, rng: random.Random) -> Any:
    if dist.choice is not None:
        return rng.choice(dist.choice)
    if dist.uniform is not None:
        return rng.uniform(*dist.uniform)
    if dist.loguniform is not None:
        low, high = dist.loguniform
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    low, high = dist.randint  # upper bound exclusive, as in Ray Tune
    return rng.randrange(low, high)


def plan_jobs(spec: ExperimentSpec, source: str = "spec") -> list[JobDraft]:
    """Every job of the experiment, upstream jobs before the jobs that need them."""
    drafts: list[JobDraft] = []
    by_stage: dict[str, list[int]] = {}
    for stage in spec.stage_order():
        upstream_lists = [by_stage[up] for up in stage.after]
        count = sweep_size(stage.sweep) * math.prod(len(u) for u in upstream_lists)
        if len(drafts) + count > MAX_JOBS_PER_EXPERIMENT:
            raise SpecError(source, [(f"stages[{stage.name}].sweep",
                                      f"expands to more than {MAX_JOBS_PER_EXPERIMENT} jobs; split the experiment")])
        points = expand_sweep(stage.sweep)
        indices = []
        for combo in itertools.product(*upstream_lists):
            for point in points:
                draft = JobDraft(index=len(drafts), stage=stage.name, params={**stage.params, **point},
                                 swept=dict(point), depends_on=list(combo))
                drafts.append(draft)
                indices.append(draft.index)
        by_stage[stage.name] = indices
    return drafts
