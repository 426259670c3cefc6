"""What an attempt's end does to its job: the rules, on plain data.

The store reads the facts of the attempt's job (:class:`EndFacts`), asks
:func:`decide`, and writes the :class:`EndPlan` it gets back.  No SQL and no IO
here, as dramatiq keeps its retry rules in a middleware outside its broker: every
rule (retry, free requeue, GPU-share growth, preemption, cancel) reads in one
place and is tested with nothing but numbers (tests/scheduler/test_endings.py).

The rules, in the order they apply:

1. A user's cancel request wins: whatever ended the attempt, unless it
   succeeded, it is recorded as cancelled and so is the job.
2. Ends that were not the job's doing requeue it *free* (not charged to its
   ``retries``): a packed attempt that never began or was interrupted for
   another's sake; a lost node or a gone scheduler (at most
   ``MAX_FREE_RETRIES`` times, so a job that keeps killing its node ends); a
   preemption; and, with ``retry_on_oom``, running out of GPU memory while a
   bigger share is still to be had.  A pause at an early-stopping rung is not
   charged either: the job waits, paused, for promotion.
3. Otherwise the end is charged: success and timeout and cancel end the job;
   failures, losses and out-of-memory retry while the retry budget lasts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract.attempt import WorkerResult
from scheduler.advice import advise
from scheduler.records import AttemptEnd, EndCause
from scheduler.states import AttemptState, JobState

# Free requeues for losses not the job's fault (scheduler restarts, dead nodes)
# stop here, so a job that brings its node down every time ends; preemptions,
# packs that never started it and retry_on_oom growth are not counted against it.
MAX_FREE_RETRIES = 5

# Lost through no fault of the job, and counted against MAX_FREE_RETRIES: a job
# can be what kills its node, so these cannot requeue for ever.
NODE_LOSSES = frozenset({EndCause.NODE_DIED, EndCause.SCHEDULER_GONE, EndCause.OWNER_DIED})
# Lost without having had a fair run: it never began in its pack, or its pack was
# stopped for another job's sake.  Not the job's doing, and not a danger to the
# node either, so not capped.
NOT_CHARGED = frozenset({EndCause.NOT_STARTED, EndCause.INTERRUPTED})


@dataclass(frozen=True)
class EndFacts:
    """What the rules need to know of an attempt's job, as the store holds it
    when the attempt ends (before anything of the end is written)."""

    attempt: int  # the attempt's number within its job (1, 2, ...)
    retries: int = 0  # retries the stage allows
    free_retries: int = 0  # earlier attempts requeued without being charged to ``retries``
    node_requeues: int = 0  # of those, the ones for a lost node or scheduler (capped)
    cancel_requested: bool = False
    cpu: float = 1.0
    gpu: float = 0.0  # the job's request: a share of one GPU, or whole GPUs
    gpu_share: float | None = None  # what this attempt booked of each GPU (gpu_memory made a fraction)
    gpu_memory: int | None = None  # bytes on one GPU, when the job asked that way
    memory: int | None = None  # bytes
    oom_gpu_scale: float | None = None  # retry_on_oom: grow the GPU share by this after a GPU OOM
    started_at: float | None = None  # the attempt's start as recorded so far

    @property
    def booked(self) -> dict[str, Any]:
        return booked(cpu=self.cpu, gpu=self.gpu, gpu_share=self.gpu_share, gpu_memory=self.gpu_memory,
                      memory=self.memory)


@dataclass(frozen=True)
class EndPlan:
    """What to write for one attempt's end."""

    attempt_state: AttemptState  # the attempt's recorded end
    job_state: JobState  # where its job goes
    ended_at: float  # the attempt's end: the worker's clock, else the scheduler's
    free_retry: bool = False  # requeued without charging ``retries`` (jobs.free_retries + 1)
    node_requeue: bool = False  # and counted against MAX_FREE_RETRIES (jobs.node_requeues + 1)
    gpu: float | None = None  # retry_on_oom: the job's new GPU share (its gpu_memory request dropped)
    reason: str | None = None  # the job's reason (`labq status`)
    detail: str = ""  # the state event's text after "old -> new: "
    advice: tuple[str, ...] = ()  # right-sizing advice on the attempt's result (none without one)

    @property
    def unblocks_dependents(self) -> bool:
        return self.job_state is JobState.SUCCEEDED

    @property
    def fails_dependents(self) -> bool:
        """An end without success: jobs waiting on it can never run."""
        return self.job_state.is_terminal() and self.job_state is not JobState.SUCCEEDED


@dataclass(frozen=True)
class _Requeue:
    node: bool = False
    gpu: float | None = None


def decide(facts: EndFacts, end: AttemptEnd, now: float) -> EndPlan:
    """The plan for ``end``, the end of the attempt ``facts`` describe, seen at ``now``."""
    state = recorded_state(facts, end.state)
    requeue = free_requeue(facts, end.cause, state)
    paused = state is AttemptState.PAUSED  # waits for promotion: not charged either
    job_state = JobState.PENDING if requeue else JobState.PAUSED if paused else charged_outcome(facts, state)
    message = end.message
    detail = f"attempt {facts.attempt} {state.value}" + (f": {first_line(message)}" if message else "")
    if requeue and requeue.gpu is not None:
        detail += f"; retrying with gpu {requeue.gpu:g}"
    if job_state is JobState.PENDING:
        reason = f"requeued after attempt {facts.attempt} {state.value}"
    elif paused:
        reason = first_line(message) if message else "paused at a rung: waits for promotion"
    elif job_state in (JobState.SUCCEEDED, JobState.CANCELLED):
        reason = None
    else:
        reason = first_line(message)
    result = end.result
    ended_at = (result.ended_at if result else None) or now
    return EndPlan(attempt_state=state, job_state=job_state, ended_at=ended_at, free_retry=requeue is not None or paused,
                   node_requeue=bool(requeue and requeue.node), gpu=requeue.gpu if requeue else None,
                   reason=reason, detail=detail,
                   advice=tuple(advise(facts.booked, measured(facts, result, ended_at))) if result else ())


def recorded_state(facts: EndFacts, state: AttemptState) -> AttemptState:
    """The user asked for it to end: whatever ended it (the stop, or a failure on
    the way), it ended cancelled.  A success that got there first stands."""
    if facts.cancel_requested and state is not AttemptState.SUCCEEDED:
        return AttemptState.CANCELLED
    return state


def free_requeue(facts: EndFacts, cause: EndCause, state: AttemptState) -> _Requeue | None:
    """How the job goes back to pending without being charged, when the end was
    not its doing; None when the end is charged (:func:`charged_outcome`)."""
    if state is AttemptState.LOST and cause in NOT_CHARGED:
        return _Requeue()
    if state is AttemptState.LOST and cause in NODE_LOSSES and facts.node_requeues < MAX_FREE_RETRIES:
        return _Requeue(node=True)
    if state is AttemptState.PREEMPTED:
        # Made room for a queue owed its guarantee: not the job's doing, and it
        # resumes from its checkpoint (the previous run dir) when it runs again.
        return _Requeue()
    if state is AttemptState.OUT_OF_MEMORY and cause is EndCause.GPU_OOM and facts.oom_gpu_scale:
        grown = grown_gpu_share(facts)
        if grown is not None:  # retry_on_oom: again, with more of the GPU
            return _Requeue(gpu=grown)
    return None


def charged_outcome(facts: EndFacts, state: AttemptState) -> JobState:
    """The job's next state for an end that counts against it."""
    if state is AttemptState.SUCCEEDED:
        return JobState.SUCCEEDED
    if state is AttemptState.CANCELLED:
        return JobState.CANCELLED
    if state is AttemptState.TIMED_OUT:
        # Not retried: it would almost surely time out again and burn the time twice.
        return JobState.TIMED_OUT
    if state is AttemptState.PRUNED:
        return JobState.PRUNED
    # Failed, lost, out of memory: retry while the budget lasts.  Attempts
    # requeued free do not count against it.
    charged = facts.attempt - facts.free_retries
    return JobState.PENDING if charged <= facts.retries else JobState.FAILED


def grown_gpu_share(facts: EndFacts) -> float | None:
    """The next share for a job that ran out of GPU memory: what its attempt had
    times ``oom_gpu_scale``, capped at a whole GPU; None when it already had one."""
    had = facts.gpu_share or facts.gpu or 0.0
    if not had or had >= 1.0 or not facts.oom_gpu_scale:
        return None
    grown = round(min(1.0, had * facts.oom_gpu_scale), 4)
    return grown if grown > had else None  # a scale of 1.00001 must not requeue for free forever


def booked(*, cpu: float, gpu: float, gpu_share: float | None, gpu_memory: int | None,
           memory: int | None) -> dict[str, Any]:
    """What an attempt asked for, as :func:`scheduler.advice.advise` reads it:
    the share of a GPU it was booked where it had one of its own."""
    return {"cpu": cpu, "gpu": gpu_share or gpu, "gpu_memory": gpu_memory, "memory": memory}


def measured(facts: EndFacts, result: WorkerResult, ended_at: float) -> dict[str, Any]:
    """What an attempt used, as :func:`scheduler.advice.advise` reads it."""
    return {"peak_rss": result.peak_rss, "started_at": result.started_at or facts.started_at,
            "ended_at": ended_at, **result.usage}


def first_line(text: str | None) -> str | None:
    """The line of an error worth a glance (a traceback's last), cut to 300 characters."""
    if not text:
        return None
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:300]
