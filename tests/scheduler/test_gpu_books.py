"""The loop books a fractional job on the GPU Ray really gave it, not only the
one the policy planned (Ray picks the card inside the node), and real GPUs get a
fresh worker per job while logical ones reuse workers.

A real Scheduler and SQLite store, driven tick by tick; the in-package
FakeBackend stands in for Ray."""

from __future__ import annotations

from pathlib import Path

from scheduler.fake_backend import FakeBackend, make_nodes
from scheduler.config import Settings
from scheduler.loop import Scheduler
from scheduler.store import Store
from workers.paths import RunPaths

from test_store import NOW, _submit_yaml

SPEC = """
experiment: halves
stages:
  - name: train
    command: "true"
    sweep: {grid: {seed: [1, 2]}}
    resources: {cpu: 1, gpu: 0.5}
"""


def _scheduler(tmp_path, readings):
    node = make_nodes(1, cpu=4, gpu=2)[0]
    home = tmp_path / "home"
    store = Store(home)
    backend = FakeBackend([node])
    backend.gpu_readings[node.node_id] = readings
    scheduler = Scheduler(store, backend, Settings(home=str(home)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    _submit_yaml(store, spec)
    return scheduler, store, backend


def test_books_follow_the_gpu_ray_assigned(tmp_path):
    scheduler, store, backend = _scheduler(tmp_path, [])
    scheduler.tick(NOW)
    # Given the policy packed both halves onto GPU 0
    assert sorted(r.gpu_indices for r in scheduler.running.values()) == [(0,), (0,)]
    (node,) = scheduler.free_capacity()
    assert node.gpu_free == [0.0, 1.0]
    # When the second job's worker reports that Ray gave it GPU 1
    second = max(scheduler.running.values(), key=lambda r: r.job.id)
    paths = RunPaths(Path(second.attempt.run_dir))
    paths.create()
    paths.write_gpu_ids(["1"])
    first = min(scheduler.running.values(), key=lambda r: r.job.id)
    RunPaths(Path(first.attempt.run_dir)).create()
    RunPaths(Path(first.attempt.run_dir)).write_gpu_ids(["0"])
    scheduler.tick(NOW + 1)
    # Then labq's books say what Ray did: half of each GPU is used
    (node,) = scheduler.free_capacity()
    assert node.gpu_free == [0.5, 0.5]
    assert second.gpus_confirmed and second.gpu_indices == (1,)
    store.close()


def test_an_id_outside_the_node_leaves_the_plan(tmp_path):
    scheduler, store, _ = _scheduler(tmp_path, [])
    scheduler.tick(NOW)
    run = next(iter(scheduler.running.values()))
    RunPaths(Path(run.attempt.run_dir)).create()
    RunPaths(Path(run.attempt.run_dir)).write_gpu_ids(["7"])  # e.g. a raylet started with CUDA_VISIBLE_DEVICES=7
    scheduler.tick(NOW + 1)
    assert run.gpus_confirmed and run.gpu_indices == (0,)
    store.close()


def test_fresh_workers_only_where_gpus_are_real(tmp_path):
    real = [{"index": i, "memory_total": 80 * 2**30, "pids": []} for i in range(2)]
    for readings, fresh in (([], False), (real, True)):
        scheduler, store, backend = _scheduler(tmp_path / str(fresh), readings)
        launched = []
        original = backend.launch

        def launch(task, **kwargs):
            launched.append(kwargs["fresh_worker"])
            return original(task, **kwargs)

        backend.launch = launch
        scheduler.gpus.readings[backend.node_list[0].node_id] = readings  # as read by _read_gpus
        scheduler.tick(NOW)
        assert launched == [fresh, fresh]
        store.close()
