"""The points of one stage's sweep: the grid's cross product, then random draws.

Plain functions of a spec's ``Sweep`` (scheduler.spec), which is only named
for type checking here: the spec's validation asks for points (to show a job's
``check_params`` every swept value) and ``scheduler.sweep`` plans jobs from them,
so both import this module and neither imports the other back.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.spec import Distribution, Sweep


def sweep_size(sweep: Sweep | None) -> int:
    """How many points ``expand_sweep`` would return, without building them."""
    if sweep is None:
        return 1
    if sweep.search is not None:  # the first trials; the scheduler asks for the rest
        return min(sweep.search.parallel, sweep.search.samples)
    size = math.prod(len(v) for v in (sweep.grid or {}).values())
    return size * (sweep.samples or 1) if sweep.random else size


def expand_sweep(sweep: Sweep | None) -> list[dict[str, Any]]:
    """The points of one stage's sweep: grid cartesian product, then for each grid
    point ``samples`` random draws (deterministic for a seed)."""
    if sweep is None:
        return [{}]
    if sweep.search is not None:
        from scheduler.search import first_trials

        return first_trials(sweep)
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
