"""Sweep expansion and the job plan of an experiment.

A stage's jobs are the cross product of (one job of each upstream stage) x (the
points of its own sweep).  With the usual single prep job that is just the sweep;
with a swept prep stage every training point runs on every prep variant, which is
what comparing preprocessing choices needs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from scheduler.errors import SpecError
from scheduler.spec import MAX_JOBS_PER_EXPERIMENT, ExperimentSpec
from scheduler.sweep_points import expand_sweep, sweep_size


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


def searches_of(spec: ExperimentSpec) -> dict[str, dict[str, Any]]:
    """{stage: what the scheduler keeps to continue its search} for the stages that search."""
    from scheduler.search import config_of

    return {s.name: config_of(s.sweep, spec.metric, spec.mode) for s in spec.stages
            if s.sweep is not None and s.sweep.search is not None}


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
