"""Results: one row per job with params, final metrics, timing and placement,
best first, and the right-sizing advice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from scheduler.records import Job
from scheduler.store import Store, is_number

# Metrics labq knows the direction of, in the order it prefers them as the main one.
_BIGGER_IS_BETTER = ("accuracy", "val_accuracy", "f1_macro", "roc_auc", "r2", "auc", "score")
_SMALLER_IS_BETTER = ("val_loss", "loss", "rmse", "mae", "mse", "log_loss", "error")


def main_metric(metric: str | None, mode: str | None, names: Iterable[str]) -> tuple[str | None, str]:
    """The metric to sort by and its direction: the spec's, else the first known
    metric among ``names`` (the numeric metrics of the last stage), else the
    first of them by name."""
    names = set(names)
    if metric:
        return metric, mode or ("min" if metric in _SMALLER_IS_BETTER else "max")
    for name in _BIGGER_IS_BETTER:
        if name in names:
            return name, mode or "max"
    for name in _SMALLER_IS_BETTER:
        if name in names:
            return name, mode or "min"
    return (sorted(names)[0] if names else None), mode or "max"


@dataclass
class Results:
    experiment: str
    experiment_id: int
    metric: str | None
    mode: str
    rows: list[dict[str, Any]]
    varying_params: list[str]
    metric_names: list[str]
    total: int  # jobs in the experiment; more than len(rows) for one page
    advice: list[str]  # the most common right-sizing advice over all its jobs, with counts

    def to_json(self) -> list[dict[str, Any]]:
        """What `labq results --json` prints: the rows, each naming the main metric."""
        return [{**r, "main_metric": self.metric} for r in self.rows]

    def to_wire(self) -> dict[str, Any]:
        """All of it, for `labq server`'s clients."""
        return dict(self.__dict__)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Results:
        return cls(**{f: data[f] for f in cls.__dataclass_fields__})


def results(store: Store, experiment: str, sort: str | None = None, ascending: bool | None = None,
            limit: int | None = None, offset: int = 0) -> Results:
    """One row per job with params, final metrics, timing and placement, best
    first; the first ``limit`` rows only, when given.

    A page ranked by a metric is read through the store's rank index, and one
    sorted by a param through SQLite's JSON functions (a 100k-job experiment
    costs a few queries); all rows, or a page sorted by a row field, decode
    every job."""
    exp = store.experiment(experiment)
    total, last_stage = store.job_count(exp.id)
    names = store.final_metric_names(exp.id)
    # The main metric is judged on the last stage: it is what the experiment is for.
    metric, mode = main_metric(exp.metric, exp.mode, names.get(last_stage, ()))
    key, desc = _sort_order(sort, ascending, metric, mode)
    known = {k for n in names.values() for k in n}
    # The index ranks metrics only; a key that is also a param or a row field
    # ranks some jobs by that instead (as the full read does).
    param_names = store.param_names(exp.id) if limit is not None and key is not None else set()
    by_metric = key is None or (key in known and key not in ROW_FIELDS and key not in param_names)
    by_param = key in param_names and key not in known and key not in ROW_FIELDS
    if limit is not None and (by_metric or by_param):
        ids = (store.ranked_job_ids(exp.id, key, desc, limit + offset) if by_metric
               else store.ranked_by_param(exp.id, key, desc, limit + offset))[offset:]
        finals = store.final_attempts(ids)
        advice = store.final_advice(exp.id, ids)
        position = {job_id: i for i, job_id in enumerate(ids)}
        rows = [_row(exp.name, job, *finals.get(job.id, (None, {})), advice.get(job.id, []))
                for job in sorted(store.jobs_by_ids(ids), key=lambda j: position[j.id])]
        varying = store.varying_params(exp.id)
    else:
        jobs = store.jobs_of_experiment(exp.id)
        finals = store.final_results(exp.id)
        advice = store.final_advice(exp.id)
        rows = [_row(exp.name, job, *finals.get(job.id, (None, {})), advice.get(job.id, [])) for job in jobs]
        varying = _varying_params(rows)  # in job order, as the store finds them
        if key:
            def sort_key(row: dict[str, Any]) -> tuple:
                # The first number among the metric, the param and the row
                # field of that name: a metric a job recorded as null or text
                # does not hide the param (as the store's param ranking reads it).
                value = next((v for v in (row["metrics"].get(key), row["params"].get(key), row.get(key))
                              if is_number(v)), None)
                missing = value is None
                return (missing, 0 if missing else (-value if desc else value))

            rows.sort(key=sort_key)
        rows = rows[offset:None if limit is None else offset + limit]
    # Main metric first, then the rest of the last stage's, then other stages'.
    last_names = set(names.get(last_stage, ())) | {k for r in rows if r["stage"] == last_stage for k in r["metrics"]}
    metric_names = sorted(known | {k for r in rows for k in r["metrics"]},
                          key=lambda k: (k != metric, k not in last_names, k))
    if metric:
        # The best row leads the ranking, so it is in any page that holds it.
        best = next((r for r in rows if r["stage"] == last_stage and is_number(r["metrics"].get(metric))), None)
        for r in rows:
            r["best"] = r is best
    front = pareto_front(store, exp.id)
    for r in rows:
        if r["job_id"] in front:
            r["pareto"] = True
    summary = [f"{line} ({n} job{'s' if n != 1 else ''})" for line, n in store.advice_counts(exp.id, ADVICE_SHOWN)]
    return Results(experiment=exp.name, experiment_id=exp.id, metric=metric, mode=mode, rows=rows,
                   varying_params=varying, metric_names=metric_names, total=total, advice=summary)


ADVICE_SHOWN = 3  # the most common advice lines `labq results` prints


def pareto_front(store: Store, experiment_id: int) -> set[int]:
    """The jobs no other job of their search beats on every objective (a
    multi-objective search's Pareto front; scheduler.search), by final metrics."""
    front: set[int] = set()
    for stage, config, _ in store.searches(experiment_id):
        if not config.get("objectives"):
            continue
        names = [name for name, _ in config["objectives"]]
        signs = [1.0 if way == "max" else -1.0 for _, way in config["objectives"]]
        points = {}
        for job_id, values in store.final_values(experiment_id, stage, names).items():
            if all(isinstance(values.get(n), (int, float)) for n in names):
                points[job_id] = tuple(s * values[n] for s, n in zip(signs, names))
        for job_id, p in points.items():
            if not any(q != p and all(a >= b for a, b in zip(q, p)) for q in points.values()):
                front.add(job_id)
    return front


def _sort_order(sort: str | None, ascending: bool | None, metric: str | None, mode: str) -> tuple[str | None, bool]:
    """(the key rows are sorted by, whether larger comes first)."""
    if sort:
        return sort, (sort not in _SMALLER_IS_BETTER) if ascending is None else not ascending
    return metric, (mode == "max") if ascending is None else not ascending


ROW_FIELDS = frozenset({"job_id", "experiment", "stage", "state", "params", "swept", "metrics", "attempts",
                        "started_at", "ended_at", "duration", "node_id", "gpu_ids", "peak_rss", "run_dir", "error",
                        "gpu_usage", "advice", "best", "outputs", "pareto"})


def _row(experiment: str, job: Job, attempt: Any, metrics: dict[str, Any], advice: list[str]) -> dict[str, Any]:
    started = attempt.started_at if attempt else None
    ended = attempt.ended_at if attempt else None
    return {
        "job_id": job.id, "experiment": experiment, "stage": job.stage, "state": job.state.value,
        "params": job.params, "swept": job.swept, "metrics": metrics, "attempts": job.attempts,
        "started_at": started, "ended_at": ended,
        "duration": (ended - started) if started and ended else None,
        "node_id": attempt.node_id if attempt else None, "gpu_ids": attempt.gpu_ids if attempt else [],
        "peak_rss": attempt.peak_rss if attempt else None, "run_dir": attempt.run_dir if attempt else None,
        "error": (attempt.error.strip().splitlines()[-1] if attempt and attempt.error else None),
        "gpu_usage": attempt.usage.get("gpu_usage") if attempt else None,
        "advice": advice if attempt and attempt.ended_at else [],
        "outputs": attempt.outputs if attempt else [],
    }


def advice_for(job: Job, attempt: Any) -> list[str]:
    """What the attempt used against what the job asked for (scheduler.advice)."""
    from scheduler.advice import advise

    requested = {"cpu": job.cpu, "gpu": attempt.gpu_share or job.gpu, "gpu_memory": job.gpu_memory,
                 "memory": job.memory}
    usage = {"peak_rss": attempt.peak_rss, "started_at": attempt.started_at, "ended_at": attempt.ended_at,
             **attempt.usage}
    return advise(requested, usage)


def _varying_params(rows: list[dict[str, Any]]) -> list[str]:
    """Params whose value differs between jobs of a stage: the ones worth a column."""
    varying: list[str] = []
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_stage.setdefault(r["stage"], []).append(r["params"])
    for params_list in by_stage.values():
        for name in dict.fromkeys(k for p in params_list for k in p):
            values = {repr(p.get(name)) for p in params_list}
            if len(values) > 1 and name not in varying:
                varying.append(name)
    return varying


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """A results row as flat columns: params.x, metrics.y (for CSV and pandas)."""
    flat = {k: v for k, v in row.items() if k not in ("params", "metrics", "swept", "gpu_ids")}
    flat["gpu_ids"] = ",".join(row.get("gpu_ids") or [])
    flat.update({f"params.{k}": v for k, v in row["params"].items()})
    flat.update({f"metrics.{k}": v for k, v in row["metrics"].items()})
    return flat


def results_frame(experiment: str, home: str | Path | None = None):
    """The results of an experiment as a pandas DataFrame, one row per job."""
    import pandas as pd

    from scheduler.config import load_settings

    settings = load_settings()
    store = Store(home or settings.home_path)
    try:
        res = results(store, experiment)
    finally:
        store.close()
    return pd.DataFrame([flatten(r) for r in res.rows])
