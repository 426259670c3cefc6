"""labq's Python API: every CLI verb calls it, and the records it returns are
what the CLI prints (``to_json`` is exactly what ``--json`` shows); it is
importable from a notebook too.

    from scheduler.api import results_frame
    df = results_frame("iris-rf")          # one row per job: params.*, metrics.*

Nothing here imports Ray; pandas is imported only by ``results_frame``.

- ``submission``: submit, wait, cancel, extend a search
- ``queue_view``: the queue with estimated starts, one job's or experiment's status
- ``ranking``: results, best first, and right-sizing advice
- ``files``: an attempt's kept files, one of them, its logs as they grow
- ``cluster_view``: nodes, the scheduler's status, usage

A view record's ``to_wire``/``from_wire`` (or ``to_json``/``from_json`` where
--json prints all of it) carry it whole over `labq server`'s HTTP API, so a
`labq --server URL` verb prints from the same record as a local one.
"""

# Each verb's module is imported on first use: `labq queue` should not pay for
# submit's imports (a CLI call's budget is well under a second).
_HOME = {
    "NodesView": "cluster_view",
    "UsageReport": "cluster_view",
    "nodes": "cluster_view",
    "scheduler_status": "cluster_view",
    "usage": "cluster_view",
    "AttemptFiles": "files",
    "LogCursor": "files",
    "LogRead": "files",
    "StepCurve": "files",
    "attempt_file": "files",
    "attempt_files": "files",
    "chosen_attempt": "files",
    "log_ready": "files",
    "logs": "files",
    "read_logs": "files",
    "step_curves": "files",
    "EstimateSettings": "queue_view",
    "ExperimentStatus": "queue_view",
    "JobStatus": "queue_view",
    "QueueView": "queue_view",
    "Starts": "queue_view",
    "queue": "queue_view",
    "start_estimates": "queue_view",
    "status": "queue_view",
    "status_from_wire": "queue_view",
    "experiment_page": "queue_view",
    "ADVICE_SHOWN": "ranking",
    "ROW_FIELDS": "ranking",
    "Results": "ranking",
    "advice_for": "ranking",
    "flatten": "ranking",
    "main_metric": "ranking",
    "results": "ranking",
    "results_frame": "ranking",
    "Submitted": "submission",
    "active_state_counts": "queue_view",
    "cancel": "submission",
    "check_before_start": "submission",
    "extend_search": "submission",
    "open_store": "submission",
    "resolve_jobs": "submission",
    "submit": "submission",
    "succeeded_all": "queue_view",
    "wait": "submission",
}


__all__ = [
    "ADVICE_SHOWN", "ROW_FIELDS", "AttemptFiles", "EstimateSettings", "ExperimentStatus", "JobStatus", "LogCursor",
    "LogRead", "NodesView", "QueueView", "Results", "StepCurve", "Starts", "Submitted", "UsageReport",
    "active_state_counts", "advice_for", "attempt_file", "attempt_files", "cancel", "check_before_start",
    "chosen_attempt", "experiment_page", "extend_search", "flatten", "log_ready", "logs", "main_metric", "nodes", "open_store", "queue", "read_logs",
    "resolve_jobs", "results", "results_frame", "scheduler_status", "start_estimates", "status", "status_from_wire", "step_curves",
    "submit", "succeeded_all", "usage", "wait",
]


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'scheduler.api' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"scheduler.api.{module}"), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
