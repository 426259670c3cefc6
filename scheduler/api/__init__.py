"""labq's Python API: every CLI verb calls it, and the records it returns are
what the CLI prints (``to_json`` is exactly what ``--json`` shows); it is
importable from a notebook too.

    from scheduler.api import results_frame
    df = results_frame("iris-rf")          # one row per job: params.*, metrics.*

Nothing here imports Ray; pandas is imported only by ``results_frame``.

- ``submission``: submit, wait, cancel
- ``queue_view``: the queue with estimated starts, one job's or experiment's status
- ``ranking``: results, best first, and right-sizing advice
- ``files``: an attempt's kept files, one of them, its logs as they grow
- ``cluster_view``: nodes, the scheduler's status, usage
"""

from scheduler.api.cluster_view import NodesView, UsageReport, nodes, scheduler_status, usage
from scheduler.api.files import (AttemptFiles, LogCursor, StepCurve, attempt_file, attempt_files, chosen_attempt,
                                 log_ready, logs, step_curves)
from scheduler.api.queue_view import (EstimateSettings, ExperimentStatus, JobStatus, QueueView, Starts, queue,
                                      start_estimates, status)
from scheduler.api.ranking import (ADVICE_SHOWN, ROW_FIELDS, Results, advice_for, flatten, main_metric, results,
                                   results_frame)
from scheduler.api.submission import (Submitted, active_state_counts, cancel, open_store, resolve_jobs, submit,
                                      succeeded_all, wait)

__all__ = [
    "ADVICE_SHOWN", "ROW_FIELDS", "AttemptFiles", "EstimateSettings", "ExperimentStatus", "JobStatus", "LogCursor",
    "NodesView", "QueueView", "Results", "StepCurve", "Starts", "Submitted", "UsageReport", "active_state_counts",
    "advice_for", "attempt_file", "attempt_files", "cancel", "chosen_attempt", "flatten", "log_ready", "logs",
    "main_metric", "nodes", "open_store", "queue", "resolve_jobs", "results", "results_frame", "scheduler_status",
    "start_estimates", "status", "step_curves", "submit", "succeeded_all", "usage", "wait",
]
