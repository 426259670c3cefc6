"""A :class:`scheduler.backend.Backend` with no Ray behind it: a fixed list of
nodes, launch() hands back a counter, and the caller (a unit test, a
benchmark) says which handles have ended and how.  The Scheduler, its policy
and its store stay real, so tests drive a pass with plain data and benchmarks
time labq's own control plane at scales where real Ray work would drown it.
Every node is this machine: what an attempt left in its run dir is read here
(workers.node_ops), as the Ray backend reads its own node.  Nothing here
imports Ray; tests/scheduler/test_backend_contract.py holds it to the same
contract as the Ray backend."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from contract.attempt import AttemptTask, AttemptTrace, WorkerResult
from contract.owner import Held
from scheduler.backend import Adopted, NodeInfo, TaskEnd
from scheduler.records import EndCause
from scheduler.states import AttemptState
from workers import node_ops

FakeNode = NodeInfo


@dataclass(frozen=True)
class Handle:
    n: int


def make_nodes(count: int, cpu: float = 16, gpu: int = 2, memory_gib: float = 64,
               custom: dict[str, float] | None = None) -> list[FakeNode]:
    return [FakeNode(node_id=f"{i:056x}", address=f"10.0.{i // 250}.{i % 250}", alive=True,
                     resources={"CPU": cpu, "GPU": gpu, "memory": memory_gib * 2**30, f"node:10.0.{i // 250}.{i % 250}": 1.0,
                                **(custom or {})})
            for i in range(count)]


@dataclass
class FakeBackend:
    node_list: list[FakeNode]
    launched: list[tuple[Handle, AttemptTask]] = field(default_factory=list)
    first_launch_at: float | None = None  # time.perf_counter() of the first launch call
    done: set[Handle] = field(default_factory=set)
    # Node id -> what NVML reads there, per GPU as workers.gpu.node_telemetry gives it
    # (with "pids"); a node not listed reads [], as one without NVML.
    gpu_readings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _running: list[Handle] = field(default_factory=list)
    _outcomes: dict[Handle, TaskEnd | list[WorkerResult]] = field(default_factory=dict)
    _readings: dict[Handle, list[dict[str, Any]]] = field(default_factory=dict)
    _reads: int = 0
    packs: dict[Handle, int] = field(default_factory=dict)  # pack handle -> how many jobs it runs
    cancels: list[tuple[Handle, bool]] = field(default_factory=list)  # (handle, force) per cancel asked
    launch_options: list[dict[str, Any]] = field(default_factory=list)  # node_id, pip, fresh_worker per launch
    groups_ended: list[str] = field(default_factory=list)  # run dirs whose process group was ended
    # What a restarted scheduler may adopt: every task launched and not yet
    # released, as a node's owner holds it (the fake outlives its schedulers).
    held: dict[Handle, Held] = field(default_factory=dict)
    released: list[Handle] = field(default_factory=list)

    def connect(self) -> None:
        pass

    def is_up(self) -> bool:
        return True

    def health(self) -> str:
        return "up"

    def shutdown(self) -> None:
        pass

    def nodes(self) -> list[NodeInfo]:
        return list(self.node_list)

    def local_node_id(self) -> str:
        return self.node_list[0].node_id

    def launch(self, task: AttemptTask, *, node_id: str | None, pip: list[str] | None = None,
               fresh_worker: bool = False, gpu_indices: tuple[int, ...] = ()) -> Handle:
        if self.first_launch_at is None:
            self.first_launch_at = time.perf_counter()
        handle = Handle(len(self.launched))
        self.launched.append((handle, task))
        self.launch_options.append({"node_id": node_id, "pip": pip, "fresh_worker": fresh_worker})
        self._running.append(handle)
        self.held[handle] = Held(key=task.run_dir, attempts=((task.job_id, task.attempt),), pack=False,
                                 gpu_indices=tuple(gpu_indices), launched_at=time.time(), ended=False)
        return handle

    def launch_pack(self, tasks: list[AttemptTask], *, node_id: str | None,
                    pip: list[str] | None = None) -> Handle:
        """One handle for the pack; ``launched`` lists each of its tasks under it."""
        if self.first_launch_at is None:
            self.first_launch_at = time.perf_counter()
        handle = Handle(len(self.launched))
        self.launched.extend((handle, task) for task in tasks)
        self.launch_options.append({"node_id": node_id, "pip": pip, "fresh_worker": False})
        self._running.append(handle)
        self.packs[handle] = len(tasks)
        self.held[handle] = Held(key=tasks[0].run_dir, attempts=tuple((t.job_id, t.attempt) for t in tasks),
                                 pack=True, gpu_indices=(), launched_at=time.time(), ended=False)
        return handle

    def finish_oldest(self, k: int) -> None:
        """The k longest-running handles finish (successfully)."""
        for handle in self._running[:k]:
            self.done.add(handle)
        self._running = self._running[k:]

    def end(self, handle: Handle, state: AttemptState, result: dict[str, Any] | list[dict[str, Any]] | None = None,
            error: str | None = None, cause: EndCause | None = None) -> None:
        """``handle`` finishes: with a worker's ``result`` (JSON, as a worker
        returns it; a list of them for a pack), or with no result, as a Ray
        error ends a task, in ``state`` for ``cause`` (by default the cause
        Ray's error for that state has)."""
        self._running.remove(handle)
        self.done.add(handle)
        if isinstance(result, list):
            self._outcomes[handle] = [WorkerResult.from_json(r) for r in result]
        elif result is not None:
            self._outcomes[handle] = TaskEnd.returned(WorkerResult.from_json(result))
        else:
            self._outcomes[handle] = TaskEnd(state, cause or _RAY_CAUSES.get(state, EndCause.WORKER_DIED), None, error)

    def flush(self) -> None:
        pass  # launched at once

    def adopt(self) -> list[Adopted]:
        """Every task launched and not released: the same handles, as a new
        scheduler would wait on them again."""
        return [Adopted(handle=h, held=held, node_id=self.local_node_id()) for h, held in self.held.items()]

    def release(self, handles: list[Handle]) -> None:
        for handle in handles:
            if self.held.pop(handle, None) is not None:
                self.released.append(handle)

    def ready(self, refs: list[Handle], timeout: float = 0.0) -> list[Handle]:
        return [r for r in refs if r in self.done]

    def wait_any(self, refs: list[Handle], timeout: float) -> None:
        pass  # what is done is done at once

    def outcome(self, ref: Handle) -> TaskEnd:
        self.done.discard(ref)
        end = self._outcomes.pop(ref, None)
        if isinstance(end, TaskEnd):
            return end
        return TaskEnd.returned(_succeeded())

    def pack_outcomes(self, ref: Handle, count: int) -> list[TaskEnd]:
        """Each job's end: as :meth:`end` set it for the pack (a list of results,
        or one Ray error for all), else all succeeded."""
        self.done.discard(ref)
        self.packs.pop(ref, None)
        end = self._outcomes.pop(ref, None)
        if end is None:
            return [TaskEnd.returned(_succeeded()) for _ in range(count)]
        if isinstance(end, list):
            return [TaskEnd.returned(r) for r in end]
        return [end] * count

    def cancel(self, ref: Handle, force: bool) -> None:
        self.cancels.append((ref, force))

    def read_gpus(self, node_ids: list[str]) -> dict[str, Handle]:
        """Telemetry readings, taken now from ``gpu_readings`` and done at once."""
        handles = {}
        for node_id in node_ids:
            handle = Handle(-1 - self._reads)  # apart from launched handles (0, 1, ...)
            self._reads += 1
            self.done.add(handle)
            self._readings[handle] = [dict(g) for g in self.gpu_readings.get(node_id, [])]
            handles[node_id] = handle
        return handles

    def value(self, ref: Handle) -> Any:
        self.done.discard(ref)
        return self._readings.pop(ref, [])

    def trace(self, node_id: str | None, run_dir: str) -> AttemptTrace:
        return AttemptTrace.from_json(node_ops.trace(run_dir))

    def gpu_ids(self, node_id: str | None, run_dir: str) -> list[int] | None:
        return node_ops.gpu_ids(run_dir)

    def end_process_group(self, node_id: str | None, run_dir: str) -> None:
        self.groups_ended.append(run_dir)
        node_ops.end_process_group(run_dir)

    @staticmethod
    def curves_since(node_id: str | None, reads: list[tuple[str, int]]) -> list[tuple[int, bytes]]:
        return node_ops.curves_since(reads)

    @staticmethod
    def signal_attempts(node_id: str | None, signals: list[tuple[str, str, str]]) -> None:
        node_ops.signal_attempts(signals)

    @staticmethod
    def keep_bundle(data: bytes, run_dir: str) -> None:
        node_ops.keep_bundle(data, run_dir)

    @staticmethod
    def artifacts_bundle(run_dir: str) -> bytes:
        return node_ops.artifacts_bundle(run_dir)


# The cause of the Ray error that ends a task in each state.
_RAY_CAUSES = {AttemptState.CANCELLED: EndCause.CANCELLED, AttemptState.OUT_OF_MEMORY: EndCause.HOST_OOM,
               AttemptState.FAILED: EndCause.WORKER_ERROR, AttemptState.LOST: EndCause.WORKER_DIED}


def _succeeded() -> WorkerResult:
    now = time.time()
    return WorkerResult.from_json({"outcome": "succeeded", "metrics": {"accuracy": 0.9}, "artifacts": [],
                                   "exit_code": 0, "error": None, "started_at": now, "ended_at": now,
                                   "node_id": None, "gpu_ids": [], "peak_rss": 1})
