"""Model-based search whose state is labq's database (issue 20).

A stage with ``sweep: {search: {algo, samples, parallel, seed}, space: {...}}``
is a study: each trial is an ordinary job of the stage (queued, fair-shared,
retried, visible in `labq queue`).  The first ``parallel`` trials are planned at
submit; the scheduler asks for the next one whenever fewer than ``parallel``
are queued or running, until ``samples`` have been asked.

Nothing of the study lives in a process.  Each time, the study is rebuilt in
memory from the stage's jobs: finished ones with the experiment's metric as
COMPLETE trials, the ones still queued or running as RUNNING (so a parallel
sampler does not ask for them again), failed ones as FAIL; then asked with
Optuna's ask-and-tell interface.  The sampler is seeded with the search's seed
and the number of trials asked so far, so a scheduler killed before it stored a
suggestion asks for the same one again, and one killed after asks for the next:
a restart loses nothing and repeats nothing.  `labq sweep extend EXP --samples N`
raises ``samples``.

Optuna is imported only here, when a search is planned or continued.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

# Optuna samplers by the spec's name.
ALGOS = ("tpe", "gp", "cmaes", "random")


@dataclass(frozen=True)
class Trial:
    """One trial as the database has it: its swept params, where it stands
    ("complete", "running", "pruned" or "failed") and, complete, its metric
    (a tuple of them, one per objective, for a multi-objective search)."""

    params: dict[str, Any]
    state: str
    value: float | tuple[float | None, ...] | None = None


def objectives(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """[(metric, "max" or "min")]: the search's objectives, or the experiment's metric."""
    return [tuple(o) for o in config.get("objectives") or [(config.get("metric"), config.get("mode") or "max")]]


def trial_state(job_state: str) -> str:
    """A trial's state from its job's: "complete" (it succeeded; its value may
    still be missing), "running" (queued, blocked, running or paused at a
    rung, waiting for promotion), "pruned"
    (stopped early: told with its last values, a loser) or "failed"."""
    if job_state in ("succeeded", "pruned"):
        return "complete" if job_state == "succeeded" else "pruned"
    return "running" if job_state in ("pending", "running", "blocked", "paused") else "failed"


def config_of(sweep: Any, metric: str | None, mode: str | None) -> dict[str, Any]:
    """What the scheduler keeps of a stage's search (the store's searches row):
    plain JSON, everything needed to continue it."""
    budget = sweep.search.budget
    return {"algo": sweep.search.algo, "samples": sweep.search.samples, "parallel": sweep.search.parallel,
            "seed": sweep.search.seed, "metric": metric, "mode": mode,
            "objectives": [[name, way] for name, way in sweep.search.objectives.items()]
            if sweep.search.objectives else None,
            "budget": budget.model_dump(exclude_none=True) if budget is not None else None,
            "space": {name: dist.model_dump(exclude_none=True) for name, dist in sweep.space.items()}}


def budget_left(config: Mapping[str, Any], spent: Mapping[str, float]) -> tuple[str, float, float] | None:
    """(what the budget counts, spent, the budget) of a search with one, else None;
    ``spent``: {"cpu_hours", "gpu_hours", "wall"} so far (Store.search_spent)."""
    budget = config.get("budget")
    if not budget:
        return None
    (kind, limit), = budget.items()
    return kind, spent.get(kind, 0.0), float(limit)


def budget_text(kind: str, spent: float, limit: float) -> str:
    """"cpu_hours 0.51 of 2 spent (1.49 left)"; wall in seconds."""
    unit = "s" if kind == "wall" else ""
    return (f"{kind} {spent:.3g}{unit} of {limit:g}{unit} spent"
            + (f" ({limit - spent:.3g}{unit} left)" if spent < limit else " (spent: no more trials)"))


def first_trials(sweep: Any) -> list[dict[str, Any]]:
    """The trials planned at submit: asked with no results yet (the direction
    does not matter before there are any)."""
    return suggest(config_of(sweep, None, None), [], min(sweep.search.parallel, sweep.search.samples))


def suggest(config: Mapping[str, Any], history: Iterable[Trial], count: int) -> list[dict[str, Any]]:
    """``count`` new points of ``config``'s space, given the trials so far."""
    optuna = _optuna()
    history = list(history)
    distributions = _distributions(config["space"])
    directions = ["maximize" if way == "max" else "minimize" for _, way in objectives(config)]
    study = optuna.create_study(directions=directions,
                                sampler=_sampler(optuna, config["algo"], config["seed"], len(history),
                                                 len(directions)))
    for trial in history:
        study.add_trial(_frozen(optuna, trial, distributions, len(directions)))
    points = []
    for _ in range(count):
        asked = study.ask(distributions)
        points.append({name: _plain(asked.params[name]) for name in config["space"]})
    return points


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _sampler(optuna: Any, algo: str, seed: int, asked: int, objectives: int = 1):
    # One seed per ask: the same history asks for the same point (a crash before
    # the point was stored), a longer one for a new point.
    seed = (seed * 1_000_003 + asked) % 2**32
    if algo == "tpe":  # multi-objective too (MOTPE)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if objectives > 1 and algo in ("gp", "cmaes"):  # single-objective samplers: NSGA-II for a front
        return optuna.samplers.NSGAIISampler(seed=seed)
    if algo == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if algo == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _distributions(space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name, dist in space.items():
        if "choice" in dist:
            out[name] = CategoricalDistribution(_choices(dist["choice"]))
        elif "uniform" in dist:
            out[name] = FloatDistribution(*dist["uniform"])
        elif "loguniform" in dist:
            out[name] = FloatDistribution(*dist["loguniform"], log=True)
        else:  # randint: upper bound exclusive, as in random sweeps
            low, high = dist["randint"]
            out[name] = IntDistribution(low, high - 1)
    return out


def _choices(values: list[Any]) -> tuple:
    # Optuna's categorical values are None, bool, int, float or str; others by their text.
    return tuple(v if v is None or isinstance(v, (bool, int, float, str)) else repr(v) for v in values)


def _frozen(optuna: Any, trial: Trial, distributions: dict[str, Any], count: int = 1):
    from optuna.trial import TrialState, create_trial

    params = {name: _in_space(trial.params.get(name), dist) for name, dist in distributions.items()}
    values = trial.value if isinstance(trial.value, tuple) else (trial.value,)
    known = len(values) == count and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    # A pruned trial with its last values counts as complete with them, as Ray
    # Tune's OptunaSearch tells a stopped trial: stopped early, its values are
    # those of fewer steps, and lose to the trials that ran on.
    if trial.state in ("complete", "pruned") and known:
        return create_trial(params=params, distributions=distributions, values=list(values),
                            state=TrialState.COMPLETE)
    if trial.state == "pruned":
        return create_trial(params=params, distributions=distributions, state=TrialState.PRUNED)
    state = TrialState.RUNNING if trial.state == "running" else TrialState.FAIL
    return create_trial(params=params, distributions=distributions, state=state)


def _in_space(value: Any, dist: Any) -> Any:
    """A stored param as the distribution takes it (JSON turned a tuple into a list...)."""
    choices = getattr(dist, "choices", None)
    if choices is not None:
        return value if value in choices else choices[0]
    return value


def _plain(value: Any) -> Any:
    """A numpy scalar Optuna may hand back, as JSON's plain number."""
    return value.item() if hasattr(value, "item") else value
