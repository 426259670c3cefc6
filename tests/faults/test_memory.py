"""`resources.memory` is enforced by labq's worker (Ray only counts it): a job
that exceeds it ends out-of-memory, is retried only within `retries`, and its
neighbours keep running."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from helpers import assert_resources_released, drive, make_scheduler, submit_spec, write_spec  # noqa: E402

from scheduler.states import AttemptState, JobState  # noqa: E402

pytestmark = pytest.mark.ray


def test_jobs_over_their_memory_request_end_out_of_memory_and_neighbours_finish(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: oom
        stages:
          - {name: py, run: "testjobs:hog", retries: 1, resources: {cpu: 0.5, memory: 200MiB}}
          - name: cmd
            command: "python -c 'import time; b = bytearray(700 * 2**20); time.sleep(30)'"
            resources: {cpu: 0.5, memory: 200MiB}
          - {name: neighbour, run: "testjobs:sleepy", params: {seconds: 4}, resources: {cpu: 0.5}}
          - {name: fits, run: "testjobs:hog", params: {chunks: 2}, resources: {cpu: 0.5, memory: 400MiB}}
          - {name: sleeper, run: "testjobs:hog_then_sleep", resources: {cpu: 0.5, memory: 100MiB}}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    py, cmd, neighbour, fits, sleeper = drive(scheduler, store, sub.experiment_id, timeout=120)
    # Allocating at once and then blocking in C (shorter than the kill grace) is caught too
    assert store.attempts(sleeper.id)[0].state is AttemptState.OUT_OF_MEMORY
    # The Python hog: out of memory twice (retried once, as allowed), then failed with the cause
    attempts = store.attempts(py.id)
    assert [a.state for a in attempts] == [AttemptState.OUT_OF_MEMORY] * 2
    assert py.state is JobState.FAILED and "out of memory" in py.reason and "200 MiB" in py.reason
    # The command hog: its process group was killed, no retries
    (cmd_attempt,) = store.attempts(cmd.id)
    assert cmd_attempt.state is AttemptState.OUT_OF_MEMORY and cmd.state is JobState.FAILED
    # Neighbours were not disturbed
    assert neighbour.state is JobState.SUCCEEDED and fits.state is JobState.SUCCEEDED
    assert_resources_released()
