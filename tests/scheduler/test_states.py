"""Job and attempt states: which are terminal and which transitions are allowed."""

from __future__ import annotations

import pytest

from scheduler.states import (
    ACTIVE_JOB_STATES,
    JOB_TRANSITIONS,
    TERMINAL_JOB_STATES,
    AttemptState,
    JobState,
    can_transition,
)

TERMINAL = {
    JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED,
    JobState.UNSCHEDULABLE, JobState.UPSTREAM_FAILED, JobState.PRUNED,
}
ACTIVE = {JobState.BLOCKED, JobState.PENDING, JobState.RUNNING, JobState.PAUSED}


@pytest.mark.parametrize("state", list(JobState), ids=lambda s: s.value)
def test_job_state_is_terminal(state):
    assert state.is_terminal() is (state in TERMINAL)


def test_terminal_and_active_sets_partition_all_states():
    assert set(TERMINAL_JOB_STATES) == TERMINAL
    assert set(ACTIVE_JOB_STATES) == ACTIVE
    assert TERMINAL | ACTIVE == set(JobState)
    assert not TERMINAL & ACTIVE


def test_transition_table_covers_every_state():
    assert set(JOB_TRANSITIONS) == set(JobState)
    for targets in JOB_TRANSITIONS.values():
        assert all(isinstance(t, JobState) for t in targets)


@pytest.mark.parametrize("state", sorted(TERMINAL, key=lambda s: s.value), ids=lambda s: s.value)
def test_terminal_states_allow_nothing(state):
    assert JOB_TRANSITIONS[state] == frozenset()
    for target in JobState:
        assert not can_transition(state, target)


@pytest.mark.parametrize("state", sorted(ACTIVE, key=lambda s: s.value), ids=lambda s: s.value)
def test_no_self_transitions_for_active_states(state):
    assert not can_transition(state, state)


@pytest.mark.parametrize("current, target", [
    (JobState.BLOCKED, JobState.PENDING),
    (JobState.BLOCKED, JobState.CANCELLED),
    (JobState.BLOCKED, JobState.UPSTREAM_FAILED),
    (JobState.PENDING, JobState.RUNNING),
    (JobState.PENDING, JobState.CANCELLED),
    (JobState.PENDING, JobState.UNSCHEDULABLE),
    (JobState.RUNNING, JobState.SUCCEEDED),
    (JobState.RUNNING, JobState.FAILED),
    (JobState.RUNNING, JobState.TIMED_OUT),
    (JobState.RUNNING, JobState.CANCELLED),
    (JobState.RUNNING, JobState.PENDING),  # retry owed
    (JobState.RUNNING, JobState.PAUSED),  # at an early-stopping rung, pause mode
    (JobState.PAUSED, JobState.PENDING),  # promoted: resumes from its checkpoint
    (JobState.PAUSED, JobState.PRUNED),  # never promoted
    (JobState.PAUSED, JobState.CANCELLED),
])
def test_allowed_transitions(current, target):
    assert can_transition(current, target)


@pytest.mark.parametrize("current, target", [
    (JobState.BLOCKED, JobState.RUNNING),  # must become pending first
    (JobState.BLOCKED, JobState.SUCCEEDED),
    (JobState.BLOCKED, JobState.UNSCHEDULABLE),
    (JobState.PENDING, JobState.SUCCEEDED),
    (JobState.PENDING, JobState.FAILED),
    (JobState.PENDING, JobState.BLOCKED),
    (JobState.PENDING, JobState.UPSTREAM_FAILED),
    (JobState.RUNNING, JobState.BLOCKED),
    (JobState.RUNNING, JobState.UNSCHEDULABLE),
    (JobState.RUNNING, JobState.UPSTREAM_FAILED),
    (JobState.PAUSED, JobState.RUNNING),  # promoted jobs queue like any other
    (JobState.PAUSED, JobState.SUCCEEDED),
    (JobState.SUCCEEDED, JobState.RUNNING),
    (JobState.FAILED, JobState.PENDING),
    (JobState.CANCELLED, JobState.PENDING),
])
def test_forbidden_transitions(current, target):
    assert not can_transition(current, target)


def test_states_compare_by_value_string():
    assert JobState("upstream_failed") is JobState.UPSTREAM_FAILED
    assert JobState.RUNNING == "running"
    assert AttemptState("out_of_memory") is AttemptState.OUT_OF_MEMORY


@pytest.mark.parametrize("state", list(AttemptState), ids=lambda s: s.value)
def test_attempt_state_is_terminal(state):
    assert state.is_terminal() is (state is not AttemptState.RUNNING)
