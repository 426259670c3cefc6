"""One contract, two backends: the in-package fake the unit tests drive and the
real Ray backend (the session's local Ray).  Each test runs against both, as
huey runs one storage suite against every storage.

The fake does not run jobs, so a test says how each task ends through a
harness: on Ray the task really runs (a command job) and the harness only waits;
on the fake the harness ends it as Ray would.  Everything else (the records
handed back, packs in order, what a node holds of an attempt, ending a process
group, GPU readings) is the same code path the scheduler uses."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from contract.attempt import AttemptTask, Share, WorkerOutcome, WorkerResult
from scheduler.backend import Backend, NodeInfo, TaskEnd
from scheduler.fake_backend import FakeBackend, make_nodes
from scheduler.records import EndCause
from scheduler.states import AttemptState

# How each test's jobs end, as a worker would report it.
SUCCESS = {"outcome": "succeeded", "exit_code": 0, "error": None}
FAILURE = {"outcome": "failed", "exit_code": 3, "error": "command exited with code 3"}


class FakeHarness:
    def __init__(self) -> None:
        self.backend = FakeBackend(make_nodes(1, cpu=4, gpu=2))

    def settle(self, handle, how: str | list[str], task: AttemptTask | list[AttemptTask]) -> None:
        tasks = task if isinstance(task, list) else [task]
        hows = how if isinstance(how, list) else [how] * len(tasks)
        results = []
        for t, one in zip(tasks, hows):
            Path(t.run_dir).mkdir(parents=True, exist_ok=True)  # a worker that ran made its run dir
            result = {**(SUCCESS if one == "success" else FAILURE), "started_at": time.time(),
                      "ended_at": time.time(), "metrics": {"n": t.job_id}}
            (Path(t.run_dir) / "result.json").write_text(json.dumps(result))
            results.append(result)
        if hows[0] == "cancelled":
            self.backend.end(handle, AttemptState.CANCELLED, None, "cancelled")
        elif isinstance(task, list):
            self.backend.end(handle, AttemptState.SUCCEEDED, results)
        else:
            self.backend.end(handle, AttemptState.SUCCEEDED, results[0])


class RayHarness:
    def __init__(self, backend) -> None:
        self.backend = backend

    def settle(self, handle, how: str, task) -> None:
        if how == "cancelled":
            # Let the command start, so the cancel interrupts it: its process
            # group is written once it runs (a fixed second was too short for a
            # worker on a loaded machine).  A launch goes to the node's owner
            # when the backend is flushed, as the loop does at each pass's end.
            self.backend.flush()
            started = Path(task.run_dir) / "pgid"
            deadline = time.monotonic() + 30
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert started.exists(), "the command never started"
            self.backend.cancel(handle, force=False)
            # Ray's polite cancel is best effort: now and then its
            # KeyboardInterrupt never reaches the task (ray-project/ray#32954;
            # here `sleep 60` once ran to its end and succeeded).  The loop
            # kills the task after its grace period then (force_stop); so here.
            deadline = time.monotonic() + 15
            while not self.backend.ready([handle], timeout=1.0):
                if time.monotonic() > deadline:
                    self.backend.cancel(handle, force=True)
                    break
        deadline = time.monotonic() + 60
        while not self.backend.ready([handle], timeout=1.0):
            assert time.monotonic() < deadline, "the task never ended"


@pytest.fixture(params=["fake", "ray"])
def harness(request):
    if request.param == "fake":
        return FakeHarness()
    return RayHarness(request.getfixturevalue("ray_backend"))


def _task(tmp_path: Path, job_id: int, line: str) -> AttemptTask:
    return AttemptTask(job_id=job_id, attempt=1, experiment="contract", stage="s", params={},
                       run_dir=str(tmp_path / "runs" / str(job_id) / "attempt-1"), target_kind="command",
                       target=line, resources=Share(cpu=0.5, gpu=0.0))


def test_it_is_a_backend_and_lists_its_own_node(harness):
    backend: Backend = harness.backend
    nodes = backend.nodes()
    assert nodes and all(isinstance(n, NodeInfo) for n in nodes)
    assert backend.local_node_id() in {n.node_id for n in nodes if n.alive}
    assert backend.is_up() and backend.health() == "up"
    assert backend.ready([]) == []


def test_a_job_that_succeeds_comes_back_as_a_typed_returned_end(tmp_path, harness):
    task = _task(tmp_path, 1, "echo done")
    handle = harness.backend.launch(task, node_id=harness.backend.local_node_id())
    harness.settle(handle, "success", task)
    assert harness.backend.ready([handle]) == [handle]
    end = harness.backend.outcome(handle)
    assert isinstance(end, TaskEnd) and isinstance(end.result, WorkerResult)
    assert (end.state, end.cause, end.result.outcome) == (AttemptState.SUCCEEDED, EndCause.RETURNED,
                                                          WorkerOutcome.SUCCEEDED)
    assert end.error is None and end.result.exit_code == 0


def test_a_job_that_fails_is_returned_failed_with_its_error(tmp_path, harness):
    task = _task(tmp_path, 2, "exit 3")
    handle = harness.backend.launch(task, node_id=None)
    harness.settle(handle, "failure", task)
    end = harness.backend.outcome(handle)
    assert (end.state, end.cause) == (AttemptState.FAILED, EndCause.RETURNED)
    assert end.result.exit_code == 3 and "exited with code 3" in end.error


def test_a_cancelled_job_ends_cancelled_without_a_result(tmp_path, harness):
    task = _task(tmp_path, 3, "sleep 60")
    handle = harness.backend.launch(task, node_id=None)
    harness.settle(handle, "cancelled", task)
    end = harness.backend.outcome(handle)
    assert (end.state, end.cause, end.result) == (AttemptState.CANCELLED, EndCause.CANCELLED, None)


def test_a_pack_gives_each_job_its_own_end_in_order(tmp_path, harness):
    tasks = [_task(tmp_path, 10 + i, "true" if i != 1 else "exit 3") for i in range(3)]
    handle = harness.backend.launch_pack(tasks, node_id=None)
    harness.settle(handle, ["success", "failure", "success"], tasks)
    ends = harness.backend.pack_outcomes(handle, 3)
    assert all(isinstance(e, TaskEnd) and isinstance(e.result, WorkerResult) for e in ends)
    assert [e.state for e in ends] == [AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.SUCCEEDED]
    assert [e.result.exit_code for e in ends] == [0, 3, 0]


def test_the_node_says_what_an_attempt_left_and_that_one_never_started(tmp_path, harness):
    task = _task(tmp_path, 4, "echo kept")
    handle = harness.backend.launch(task, node_id=None)
    harness.settle(handle, "success", task)
    harness.backend.outcome(handle)
    node = harness.backend.local_node_id()
    trace = harness.backend.trace(node, task.run_dir)
    assert trace.started and trace.saved is not None and trace.saved.outcome is WorkerOutcome.SUCCEEDED
    never = harness.backend.trace(node, str(tmp_path / "runs" / "99" / "attempt-1"))
    assert not never.started and never.saved is None and never.oom_note is None


def test_ending_an_attempts_process_group_ends_its_whole_tree(tmp_path, harness):
    run_dir = tmp_path / "runs" / "5" / "attempt-1"
    run_dir.mkdir(parents=True)
    # A command's tree in its own session, as the worker starts it: a shell and its child.
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)
    (run_dir / "pgid").write_text(str(proc.pid))
    time.sleep(0.2)
    harness.backend.end_process_group(harness.backend.local_node_id(), str(run_dir))
    proc.wait(timeout=10)
    assert _alive_in_group(proc.pid) == []
    # An attempt that recorded no group: nothing to end, and no error.
    harness.backend.end_process_group(None, str(tmp_path / "runs" / "6" / "attempt-1"))


def _alive_in_group(pgid: int) -> list[int]:
    """Live members of a process group (an orphan's zombie, left for an init
    that does not reap in a container, is not alive)."""
    alive = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(name))
    return alive


def test_gpu_readings_come_back_per_node(harness):
    node = harness.backend.local_node_id()
    handles = harness.backend.read_gpus([node])
    assert set(handles) == {node}
    deadline = time.monotonic() + 30
    while not harness.backend.ready(list(handles.values()), timeout=1.0):
        assert time.monotonic() < deadline
    reading = harness.backend.value(handles[node])
    assert isinstance(reading, list)  # [] where NVML is absent (logical GPUs), one dict per GPU where present


def test_cancelling_a_task_that_already_ended_is_harmless(tmp_path, harness):
    task = _task(tmp_path, 7, "true")
    handle = harness.backend.launch(task, node_id=None)
    harness.settle(handle, "success", task)
    harness.backend.cancel(handle, force=True)  # already over: nothing to stop, nothing raised
    assert harness.backend.outcome(handle).state is AttemptState.SUCCEEDED
