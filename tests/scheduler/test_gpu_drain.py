"""Leak-free cleanup: the GPU share of an attempt that ended other than cleanly
stays booked ("draining") until a reading of its node taken after the end no
longer lists the attempt's processes, or until a deadline; a node without NVML
(its reading is []) gets it back at once.

Driven tick by tick with plain data: a real Scheduler and SQLite store, the
in-package FakeBackend standing in for Ray and its NVML readings."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from scheduler.fake_backend import FakeBackend, make_nodes
from scheduler.config import Settings
from scheduler.gpu_books import DRAIN_DEADLINE_SECONDS
from scheduler.loop import Scheduler
from scheduler.states import AttemptState
from scheduler.store import Store
from workers import gpu
from workers.attempt import _RssSampler
from workers.paths import RunPaths

from test_store import NOW, _submit_yaml

# Two jobs that want the node's one GPU: the second waits for the first's share.
SPEC = """
experiment: gpu
stages:
  - name: train
    command: "python train.py --seed {seed}"
    sweep: {grid: {seed: [1, 2]}}
    resources: {cpu: 1, gpu: 1}
"""
NODE = make_nodes(1, cpu=4, gpu=1)[0]
JOB_PID = 4242  # the cancelled job's worker


def _gpu0(*pids: int) -> list[dict]:
    """What workers.gpu.node_telemetry reads on a node with one GPU."""
    return [{"index": 0, "uuid": "GPU-0", "model": "H100", "memory_total": 80 * 2**30, "memory_used": 0,
             "pids": sorted(pids)}]


@pytest.fixture
def cluster(tmp_path):
    """A scheduler running the first of two one-GPU jobs; its worker recorded
    JOB_PID, and NVML (when the test gives the node readings) lists it."""
    home = tmp_path / "home"
    store = Store(home)
    backend = FakeBackend([NODE])
    scheduler = Scheduler(store, backend, Settings(home=str(home)))
    spec = tmp_path / "gpu.yaml"
    spec.write_text(SPEC)
    _submit_yaml(store, spec)
    yield scheduler, store, backend
    store.close()


def _start(scheduler: Scheduler, backend: FakeBackend, readings: list[dict]) -> tuple:
    backend.gpu_readings[NODE.node_id] = readings
    scheduler.tick(NOW)  # places and launches the first job
    scheduler.tick(NOW + 1)  # starts the first NVML reading of the node
    scheduler.tick(NOW + 2)  # ...and picks it up
    ((handle, task),) = backend.launched
    paths = RunPaths(Path(task.run_dir))
    paths.create()
    paths.write_gpu_pids({JOB_PID})  # as the worker does before the job starts
    return handle, task


def _booked(scheduler: Scheduler) -> float:
    (node,) = scheduler.free_capacity()
    return 1.0 - node.gpu_free[0]


def _cancel(scheduler: Scheduler, store: Store, backend: FakeBackend, handle, task, now: float) -> None:
    store.cancel([task.job_id], now)
    scheduler.tick(now)  # asks Ray to cancel
    backend.end(handle, AttemptState.CANCELLED, error="cancelled")
    scheduler.tick(now + 1)  # records it


def test_a_cancelled_jobs_share_is_booked_until_nvml_no_longer_lists_its_pids(cluster):
    scheduler, store, backend = cluster
    handle, task = _start(scheduler, backend, _gpu0(JOB_PID))
    # When the job is cancelled while its process is still on the GPU
    _cancel(scheduler, store, backend, handle, task, NOW + 3)
    assert store.attempts(task.job_id)[0].state is AttemptState.CANCELLED
    # Then its share stays booked and the waiting job does not start...
    assert _booked(scheduler) == 1.0 and len(backend.launched) == 1
    scheduler.tick(NOW + 5)  # a reading taken after the end still lists the pid
    assert _booked(scheduler) == 1.0 and len(backend.launched) == 1
    # ...and `labq nodes` says why
    (gpu0,) = store.nodes()[0].gpus
    assert gpu0["allocated"] == 1.0 and gpu0["draining"] == 1.0 and gpu0["draining_jobs"] == [task.job_id]

    # When the process leaves the GPU
    backend.gpu_readings[NODE.node_id] = _gpu0(9999)  # a neighbour's process does not count
    scheduler.tick(NOW + 6)  # picks up the reading started at NOW + 5, before it left
    assert _booked(scheduler) == 1.0 and len(backend.launched) == 1
    scheduler.tick(NOW + 7)  # the first reading taken after it left
    # Then the share is released and given to the waiting job in the same pass
    assert len(backend.launched) == 2 and backend.launched[1][1].job_id != task.job_id
    assert not scheduler.gpus.draining
    (gpu0,) = store.nodes()[0].gpus
    assert "draining" not in gpu0


def test_a_share_whose_pids_never_leave_is_released_at_the_deadline(cluster, caplog):
    scheduler, store, backend = cluster
    handle, task = _start(scheduler, backend, _gpu0(JOB_PID))
    _cancel(scheduler, store, backend, handle, task, NOW + 3)
    ended = NOW + 4
    scheduler.tick(ended + 1)
    scheduler.tick(ended + DRAIN_DEADLINE_SECONDS - 1)
    assert _booked(scheduler) == 1.0 and len(backend.launched) == 1
    with caplog.at_level(logging.WARNING, logger="labq.loop"):
        scheduler.tick(ended + DRAIN_DEADLINE_SECONDS)
    assert _booked(scheduler) == 1.0 and len(backend.launched) == 2  # the next job has it now
    assert f"job {task.job_id}" in caplog.text and f"[{JOB_PID}]" in caplog.text


def test_a_node_without_nvml_gets_the_share_back_at_once(cluster):
    scheduler, store, backend = cluster
    handle, task = _start(scheduler, backend, [])  # logical GPUs: the reading is []
    _cancel(scheduler, store, backend, handle, task, NOW + 3)
    assert not scheduler.gpus.draining
    assert len(backend.launched) == 2  # in the pass that recorded the cancel


def test_an_attempt_with_no_pid_record_is_released_unchecked(cluster):
    scheduler, store, backend = cluster
    handle, task = _start(scheduler, backend, _gpu0(JOB_PID))
    RunPaths(Path(task.run_dir)).gpu_pids.unlink()  # killed before it wrote one
    backend.end(handle, AttemptState.LOST, error="WorkerCrashedError: died")
    scheduler.tick(NOW + 3)
    assert not scheduler.gpus.draining and len(backend.launched) == 2


@pytest.mark.parametrize("pids_left, drains", [([], False), ([5151], True)])
def test_a_success_drains_only_when_its_worker_saw_pids_left(cluster, pids_left, drains):
    scheduler, store, backend = cluster
    handle, task = _start(scheduler, backend, _gpu0(JOB_PID, 5151))
    result = {"outcome": "succeeded", "metrics": {}, "artifacts": [], "exit_code": 0, "error": None,
              "pid": JOB_PID, "gpu_usage": {"gpus": [0], "pids_left": pids_left}}
    backend.end(handle, AttemptState.SUCCEEDED, result=result)
    scheduler.tick(NOW + 3)
    assert store.attempts(task.job_id)[0].state is AttemptState.SUCCEEDED
    assert bool(scheduler.gpus.draining) is drains and len(backend.launched) == (1 if drains else 2)
    if drains:
        (d,) = scheduler.gpus.draining.values()
        assert d.pids == {JOB_PID, 5151}


# ---------------------------------------------------------------- the worker's record

def test_a_gpu_attempt_records_its_worker_and_the_processes_nvml_sees(tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.create()
    sampler = _RssSampler(paths=paths, record_gpu_pids=True)
    sampler.record_gpu_pids({os.getpid()})
    assert paths.read_gpu_pids() == {os.getpid()}
    # A child of the job that NVML lists on the job's GPU is added as it is seen
    child = subprocess.Popen(["sleep", "30"])
    try:
        nvml = gpu.RecordedNvml([{"devices": [gpu.GpuReading(index=0, uuid="GPU-0", model="m", memory_total=2**30)],
                                  "processes": {0: {child.pid: 2**20}}}])
        sampler.gpu = gpu.GpuWatch(nvml=nvml, indices=[0], share=None)
        sampler.poll(time.monotonic())
        assert paths.read_gpu_pids() == {os.getpid(), child.pid}
    finally:
        child.kill()
        child.wait()


def test_an_attempt_without_a_gpu_records_nothing(tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.create()
    _RssSampler(paths=paths).record_gpu_pids({os.getpid()})
    assert not paths.gpu_pids.exists() and paths.read_gpu_pids() == set()
