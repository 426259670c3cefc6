"""Job and attempt states, and the transitions each allows.

A *job* is one point of a stage's sweep; an *attempt* is one try at running it on
Ray.  A job is retried by creating a new attempt, so attempt history is never
overwritten.  States are compared by name, never by declaration order.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class JobState(str, Enum):
    # Waits for the jobs it depends on to succeed.
    BLOCKED = "blocked"
    # Ready; waits for capacity (or for higher-priority jobs).
    PENDING = "pending"
    # An attempt has been handed to Ray.
    RUNNING = "running"
    # The last attempt returned normally.
    SUCCEEDED = "succeeded"
    # The last attempt failed (error, non-zero exit, lost worker) and no retries are left.
    FAILED = "failed"
    # The last attempt ran past the stage's `timeout`.  Not retried: it would
    # almost surely time out again and burn the same time twice.
    TIMED_OUT = "timed_out"
    # Cancelled by a user before or while it ran.
    CANCELLED = "cancelled"
    # Asks for more than any node of the cluster has; it would wait forever.
    UNSCHEDULABLE = "unschedulable"
    # A job it depends on ended without success, so it can never run.
    UPSTREAM_FAILED = "upstream_failed"
    # Stopped early by its stage's early_stop rule (scheduler.early_stop): its
    # curve was losing.  Its metrics so far, logs and checkpoint are kept.
    PRUNED = "pruned"
    # Stopped at an early-stopping rung to wait for promotion (early_stop.pause,
    # ASHA's promotion mode): it holds nothing.  Promoted, it is pending again and
    # resumes from its checkpoint; never promoted, it ends pruned once its stage
    # has nothing left to run.
    PAUSED = "paused"

    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED,
     JobState.UNSCHEDULABLE, JobState.UPSTREAM_FAILED, JobState.PRUNED}
)
# Jobs still owed work by the scheduler.
ACTIVE_JOB_STATES = frozenset({JobState.BLOCKED, JobState.PENDING, JobState.RUNNING, JobState.PAUSED})

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.BLOCKED: frozenset({JobState.PENDING, JobState.CANCELLED, JobState.UPSTREAM_FAILED}),
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.UNSCHEDULABLE}),
    # running -> pending: the attempt was lost or failed and a retry is owed.
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT,
                                 JobState.CANCELLED, JobState.PENDING, JobState.PRUNED, JobState.PAUSED}),
    # paused -> pending: promoted; -> pruned: never promoted (scheduler.early_stop).
    JobState.PAUSED: frozenset({JobState.PENDING, JobState.PRUNED, JobState.CANCELLED}),
    # Terminal states admit nothing; a rerun is a new submission.
    **{s: frozenset() for s in TERMINAL_JOB_STATES},
}


def can_transition(current: JobState, target: JobState) -> bool:
    return target in JOB_TRANSITIONS[current]


class AttemptState(str, Enum):
    # Handed to Ray; its task may still be waiting for a worker process.
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    # The job raised, or its command exited non-zero.
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    # The worker process or node died, or the scheduler lost its handle on it
    # (e.g. it was restarted); the cause is in the attempt's `error`.
    LOST = "lost"
    # Ray's memory monitor (or the OS) killed it for using too much memory, or
    # labq's watchdog ended it for going over its memory or GPU-memory share.
    OUT_OF_MEMORY = "out_of_memory"
    # Stopped to give a queue below its guarantee the resources it is owed; the
    # job is requeued (not charged to its retries) and resumes from its checkpoint.
    PREEMPTED = "preempted"
    # Stopped by its stage's early_stop rule; the job ends pruned.
    PRUNED = "pruned"
    # Stopped at a rung by its stage's early_stop rule in pause mode; the job
    # waits, paused, for promotion (not charged to its retries).
    PAUSED = "paused"

    def is_terminal(self) -> bool:
        return self is not AttemptState.RUNNING

    @classmethod
    def from_worker_outcome(cls, outcome: str | None) -> "AttemptState":
        """The state for a worker's result ``outcome`` (see workers.attempt)."""
        return {"succeeded": cls.SUCCEEDED, "out_of_memory": cls.OUT_OF_MEMORY}.get(outcome or "", cls.FAILED)


def worker_end(result: dict[str, Any]) -> tuple[AttemptState, dict[str, Any], str | None]:
    """(attempt state, result, error) as a worker's result dict tells them."""
    return AttemptState.from_worker_outcome(result.get("outcome")), result, result.get("error")
