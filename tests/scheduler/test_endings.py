"""The rules of what an attempt's end does to its job, on plain data: no store,
no SQL (scheduler.endings).  tests/scheduler/test_store.py holds the store to
writing what these plans say."""

from __future__ import annotations

import pytest

from contract.attempt import OomCause, WorkerOutcome, WorkerResult
from scheduler.endings import (
    MAX_FREE_RETRIES,
    EndFacts,
    EndPlan,
    booked,
    decide,
    first_line,
    grown_gpu_share,
)
from scheduler.records import AttemptEnd, EndCause
from scheduler.states import AttemptState, JobState

NOW = 1_700_000_000.0
S, F, LOST, OOM = AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.LOST, AttemptState.OUT_OF_MEMORY


def facts(**kw) -> EndFacts:
    """The first attempt of a job with no retries, unless told otherwise."""
    return EndFacts(**{"attempt": 1, **kw})


def end(state: AttemptState, cause: EndCause = EndCause.RETURNED, *, error: str | None = None,
        result: WorkerResult | None = None, slot_from: float | None = None) -> AttemptEnd:
    return AttemptEnd(attempt_id=7, state=state, cause=cause, result=result, error=error, slot_from=slot_from)


def plan(state: AttemptState, cause: EndCause = EndCause.RETURNED, *, error: str | None = None,
         result: WorkerResult | None = None, **kw) -> EndPlan:
    return decide(facts(**kw), end(state, cause, error=error, result=result), NOW)


def assert_free(p: EndPlan, *, node: bool = False) -> None:
    assert p.job_state is JobState.PENDING and p.free_retry and p.node_requeue is node


def assert_charged(p: EndPlan, job_state: JobState) -> None:
    assert p.job_state is job_state and not p.free_retry and not p.node_requeue and p.gpu is None


# ---------------------------------------------------------------- success and failure

def test_success_ends_the_job_and_unblocks_its_dependents():
    p = plan(S)
    assert_charged(p, JobState.SUCCEEDED)
    assert p.attempt_state is S and p.reason is None and p.detail == "attempt 1 succeeded"
    assert p.unblocks_dependents and not p.fails_dependents
    assert p.ended_at == NOW and p.advice == ()


def test_a_failure_with_retries_left_requeues_and_is_charged():
    p = plan(F, error="Traceback (most recent call last):\n  ...\nValueError: bad rows\n", retries=1)
    assert_charged(p, JobState.PENDING)
    assert p.reason == "requeued after attempt 1 failed"
    assert p.detail == "attempt 1 failed: ValueError: bad rows"
    assert not p.unblocks_dependents and not p.fails_dependents


def test_a_failure_without_retries_left_fails_the_job_and_its_dependents():
    p = plan(F, error="ValueError: bad rows", attempt=2, retries=1)
    assert_charged(p, JobState.FAILED)
    assert p.reason == "ValueError: bad rows" and p.detail == "attempt 2 failed: ValueError: bad rows"
    assert p.fails_dependents and not p.unblocks_dependents


def test_free_retries_do_not_count_against_the_budget():
    # Attempt 3 after two free requeues is the first charged one.
    assert plan(F, attempt=3, free_retries=2, retries=0).job_state is JobState.FAILED
    assert plan(F, attempt=3, free_retries=2, retries=1).job_state is JobState.PENDING
    assert plan(F, attempt=3, free_retries=1, retries=1).job_state is JobState.FAILED


def test_the_error_comes_from_the_end_else_from_the_workers_result():
    result = WorkerResult(outcome=WorkerOutcome.FAILED, error="worker says\nKeyError: 'x'")
    assert plan(F, result=result).reason == "KeyError: 'x'"
    assert plan(F, error="loop says", result=result).reason == "loop says"
    p = plan(F)
    assert p.reason is None and p.detail == "attempt 1 failed"


def test_a_blank_error_still_marks_the_detail():
    p = plan(F, error="  \n ")
    assert p.detail == "attempt 1 failed: " and p.reason == ""


def test_first_line_is_the_last_non_blank_line_cut_to_300():
    assert first_line(None) is None and first_line("") is None
    assert first_line("a\nb\n\n") == "b"
    assert first_line("x" * 500) == "x" * 300


@pytest.mark.parametrize("state", [LOST, OOM, AttemptState.FAILED])
@pytest.mark.parametrize("cause", [EndCause.RETURNED, EndCause.WORKER_DIED, EndCause.LAUNCH_FAILED,
                                   EndCause.ENV_FAILED, EndCause.HOST_OOM])
def test_ends_that_may_be_the_jobs_doing_are_charged(state, cause):
    assert_charged(plan(state, cause, retries=1), JobState.PENDING)
    assert_charged(plan(state, cause, retries=0), JobState.FAILED)


def test_a_timeout_is_never_retried():
    p = plan(AttemptState.TIMED_OUT, EndCause.TIMED_OUT, error="ran past its timeout of 60s", retries=3)
    assert_charged(p, JobState.TIMED_OUT)
    assert p.reason == "ran past its timeout of 60s" and p.fails_dependents


# ---------------------------------------------------------------- cancel

@pytest.mark.parametrize("state, cause", [(F, EndCause.CANCELLED), (F, EndCause.RETURNED),
                                          (LOST, EndCause.NODE_DIED), (LOST, EndCause.NOT_STARTED),
                                          (OOM, EndCause.GPU_OOM), (AttemptState.PREEMPTED, EndCause.PREEMPTED),
                                          (AttemptState.TIMED_OUT, EndCause.TIMED_OUT)])
def test_a_cancel_request_turns_any_non_success_into_cancelled(state, cause):
    p = plan(state, cause, error="killed", cancel_requested=True, retries=3, gpu=0.25, oom_gpu_scale=2)
    assert_charged(p, JobState.CANCELLED)
    assert p.attempt_state is AttemptState.CANCELLED
    assert p.reason is None and p.detail == "attempt 1 cancelled: killed"
    assert p.fails_dependents


def test_a_success_that_got_there_before_the_cancel_stands():
    p = plan(S, cancel_requested=True)
    assert p.attempt_state is S and p.job_state is JobState.SUCCEEDED


# ---------------------------------------------------------------- ends not the job's fault

def test_preemption_requeues_free_and_uncapped():
    p = plan(AttemptState.PREEMPTED, EndCause.PREEMPTED, error="preempted: queue 'prod' is below its guarantee",
             node_requeues=MAX_FREE_RETRIES)
    assert_free(p)
    assert p.reason == "requeued after attempt 1 preempted"
    assert p.detail == "attempt 1 preempted: preempted: queue 'prod' is below its guarantee"


@pytest.mark.parametrize("cause", [EndCause.NODE_DIED, EndCause.SCHEDULER_GONE])
def test_a_lost_node_or_scheduler_requeues_free_under_the_cap(cause):
    p = plan(LOST, cause, error="NodeDiedError", node_requeues=MAX_FREE_RETRIES - 1)
    assert_free(p, node=True)
    assert p.reason == "requeued after attempt 1 lost" and p.detail == "attempt 1 lost: NodeDiedError"


@pytest.mark.parametrize("cause", [EndCause.NODE_DIED, EndCause.SCHEDULER_GONE])
def test_at_the_cap_a_lost_node_is_charged_so_a_job_that_keeps_killing_its_node_ends(cause):
    at_cap = dict(attempt=MAX_FREE_RETRIES + 1, free_retries=MAX_FREE_RETRIES, node_requeues=MAX_FREE_RETRIES)
    assert_charged(plan(LOST, cause, error="NodeDiedError", **at_cap), JobState.FAILED)
    assert_charged(plan(LOST, cause, retries=1, **at_cap), JobState.PENDING)  # a retry of its own left


@pytest.mark.parametrize("cause", [EndCause.NOT_STARTED, EndCause.INTERRUPTED])
def test_a_pack_member_that_never_started_or_was_interrupted_requeues_free_and_uncapped(cause):
    p = plan(LOST, cause, error="not started: scheduler stopping", node_requeues=MAX_FREE_RETRIES)
    assert_free(p, node=False)
    assert p.reason == "requeued after attempt 1 lost"


@pytest.mark.parametrize("cause", [EndCause.NODE_DIED, EndCause.SCHEDULER_GONE, EndCause.NOT_STARTED,
                                   EndCause.INTERRUPTED])
def test_free_causes_only_count_for_a_lost_attempt(cause):
    assert_charged(plan(F, cause), JobState.FAILED)


# ---------------------------------------------------------------- retry_on_oom

def test_a_gpu_oom_grows_the_share_and_requeues_free():
    p = plan(OOM, EndCause.GPU_OOM, error="exceeded GPU memory share", gpu=0.25, oom_gpu_scale=2)
    assert_free(p)
    assert p.gpu == 0.5
    assert p.detail == "attempt 1 out_of_memory: exceeded GPU memory share; retrying with gpu 0.5"
    assert p.reason == "requeued after attempt 1 out_of_memory"


def test_growth_starts_from_the_attempts_booked_share():
    # a gpu_memory request became a 0.3 share for this attempt
    assert plan(OOM, EndCause.GPU_OOM, gpu=0.0, gpu_share=0.3, gpu_memory=6 * 2**30, oom_gpu_scale=2).gpu == 0.6


def test_growth_is_capped_at_a_whole_gpu_and_a_whole_gpu_is_charged():
    assert plan(OOM, EndCause.GPU_OOM, gpu=0.75, oom_gpu_scale=2).gpu == 1.0
    p = plan(OOM, EndCause.GPU_OOM, error="CUDA out of memory. Tried to allocate 2.00 GiB", gpu=1.0,
             oom_gpu_scale=2)
    assert_charged(p, JobState.FAILED)
    assert p.reason == "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert_charged(plan(OOM, EndCause.GPU_OOM, gpu=2.0, oom_gpu_scale=2), JobState.FAILED)


def test_a_scale_too_small_to_change_the_rounded_share_is_charged():
    # a scale of 1.00001 must not requeue for free for ever
    assert grown_gpu_share(facts(gpu=0.25, oom_gpu_scale=1.00001)) is None
    assert_charged(plan(OOM, EndCause.GPU_OOM, gpu=0.25, oom_gpu_scale=1.00001), JobState.FAILED)
    assert grown_gpu_share(facts(gpu=0.25, oom_gpu_scale=1.002)) == 0.2505  # rounded to 4 places


def test_without_retry_on_oom_or_without_a_gpu_a_gpu_oom_is_charged():
    assert_charged(plan(OOM, EndCause.GPU_OOM, gpu=0.25), JobState.FAILED)
    assert_charged(plan(OOM, EndCause.GPU_OOM, gpu=0.0, oom_gpu_scale=2), JobState.FAILED)


def test_a_host_memory_oom_does_not_grow_the_gpu_share():
    p = plan(OOM, EndCause.HOST_OOM, error="used 3.0GiB, over its memory request of 2.0GiB", gpu=0.25,
             oom_gpu_scale=2)
    assert_charged(p, JobState.FAILED)
    assert p.gpu is None and p.reason == "used 3.0GiB, over its memory request of 2.0GiB"


def test_only_an_out_of_memory_end_grows_the_share():
    assert_charged(plan(F, EndCause.GPU_OOM, gpu=0.25, oom_gpu_scale=2), JobState.FAILED)


# ---------------------------------------------------------------- the worker's result

def test_the_workers_clock_ends_the_attempt_when_it_has_one():
    result = WorkerResult(outcome=WorkerOutcome.SUCCEEDED, ended_at=NOW - 5)
    assert plan(S, result=result).ended_at == NOW - 5
    assert plan(S, result=WorkerResult(outcome=WorkerOutcome.SUCCEEDED)).ended_at == NOW


def test_right_sizing_advice_comes_with_the_plan():
    result = WorkerResult(outcome=WorkerOutcome.SUCCEEDED, started_at=NOW - 60, ended_at=NOW, cpu_time=60.0,
                          peak_rss=300 * 2**20, oom_cause=None)
    p = plan(S, result=result, cpu=4, memory=8 * 2**30)
    assert p.advice == ("asked 8.0GiB memory, peak 300.0MiB: 512.0MiB would pack 16x as many",
                        "asked 4 cpu, used 1.00 cores on average: 1.25 would pack 3.2x as many")


def test_advice_reads_the_recorded_start_when_the_worker_sent_none():
    result = WorkerResult(outcome=WorkerOutcome.SUCCEEDED, ended_at=NOW, cpu_time=60.0)
    with_start = plan(S, result=result, cpu=4, started_at=NOW - 60)
    assert with_start.advice == ("asked 4 cpu, used 1.00 cores on average: 1.25 would pack 3.2x as many",)
    assert plan(S, result=result, cpu=4).advice == ()


def test_advice_reads_the_booked_gpu_share_and_the_workers_usage():
    assert booked(cpu=1, gpu=0.0, gpu_share=0.3, gpu_memory=None, memory=None)["gpu"] == 0.3
    assert booked(cpu=1, gpu=0.5, gpu_share=None, gpu_memory=None, memory=None)["gpu"] == 0.5
    gpu_usage = {"peak_memory": 2 * 2**30, "memory_total": 80 * 2**30}
    result = WorkerResult(outcome=WorkerOutcome.OUT_OF_MEMORY, gpu_usage=gpu_usage, oom_cause=OomCause.GPU_SHARE)
    p = plan(OOM, EndCause.GPU_OOM, result=result, gpu=1.0, oom_gpu_scale=2)
    assert p.advice and all("gpu" in line for line in p.advice)


def test_a_pause_at_a_rung_waits_for_promotion_and_is_not_charged():
    p = plan(AttemptState.PAUSED, EndCause.PAUSED, error="paused: acc 0.2 at rung 1/3 (step 2) is not (yet) in the top")
    assert p.job_state is JobState.PAUSED and p.attempt_state is AttemptState.PAUSED
    assert p.free_retry and not p.node_requeue  # its retries stay for real failures after it resumes
    assert p.reason.startswith("paused: acc 0.2 at rung 1/3") and not p.fails_dependents
    # A user's cancel that raced it wins, as for any stop
    assert plan(AttemptState.PAUSED, EndCause.PAUSED, cancel_requested=True).job_state is JobState.CANCELLED
