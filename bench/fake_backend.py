"""A stand-in for scheduler.ray_backend.RayBackend with no Ray behind it: a
fixed list of nodes, launch() hands back a dummy handle, and the benchmark says
which handles have finished.  The Scheduler, its policy and its store stay
real, so a benchmark can time labq's own control plane at scales where real
Ray work would drown it.  Nothing here imports Ray."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from scheduler.states import AttemptState, worker_end


@dataclass(frozen=True)
class FakeNode:
    """The fields the scheduler reads from ray_backend.RayNode."""

    node_id: str
    address: str
    alive: bool
    resources: dict[str, float]


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
    launched: list[tuple[Handle, dict[str, Any]]] = field(default_factory=list)
    first_launch_at: float | None = None  # time.perf_counter() of the first launch call
    done: set[Handle] = field(default_factory=set)
    # Node id -> what NVML reads there, per GPU as workers.gpu.node_telemetry gives it
    # (with "pids"); a node not listed reads [], as one without NVML.
    gpu_readings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _running: list[Handle] = field(default_factory=list)
    _outcomes: dict[Handle, tuple[AttemptState, dict[str, Any] | None, str | None]] = field(default_factory=dict)
    _readings: dict[Handle, list[dict[str, Any]]] = field(default_factory=dict)
    _reads: int = 0
    packs: dict[Handle, int] = field(default_factory=dict)  # pack handle -> how many jobs it runs
    cancels: list[tuple[Handle, bool]] = field(default_factory=list)  # (handle, force) per cancel asked

    def connect(self) -> None:
        pass

    def is_up(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass

    def nodes(self) -> list[FakeNode]:
        return list(self.node_list)

    def local_node_id(self) -> str:
        return self.node_list[0].node_id

    def launch(self, task: dict[str, Any], *, cpu: float, gpu: float, memory: int | None,
               custom: dict[str, float], node_id: str | None, package: str | None, pip: list[str] | None = None,
               fresh_worker: bool = False) -> Handle:
        if self.first_launch_at is None:
            self.first_launch_at = time.perf_counter()
        handle = Handle(len(self.launched))
        self.launched.append((handle, task))
        self._running.append(handle)
        return handle

    def launch_pack(self, tasks: list[dict[str, Any]], *, cpu: float, memory: int | None,
                    custom: dict[str, float], node_id: str | None, package: str | None,
                    pip: list[str] | None = None) -> Handle:
        """One handle for the pack; ``launched`` lists each of its tasks under it."""
        if self.first_launch_at is None:
            self.first_launch_at = time.perf_counter()
        handle = Handle(len(self.launched))
        self.launched.extend((handle, task) for task in tasks)
        self._running.append(handle)
        self.packs[handle] = len(tasks)
        return handle

    def finish_oldest(self, k: int) -> None:
        """The k longest-running handles finish (successfully)."""
        for handle in self._running[:k]:
            self.done.add(handle)
        self._running = self._running[k:]

    def end(self, handle: Handle, state: AttemptState, result: dict[str, Any] | None = None,
            error: str | None = None) -> None:
        """``handle`` finishes with this outcome (a cancel or a crash returns no result)."""
        self._running.remove(handle)
        self.done.add(handle)
        self._outcomes[handle] = (state, result, error)

    def wait(self, refs: list[Handle], timeout: float) -> list[Handle]:
        return [r for r in refs if r in self.done]

    def wait_any(self, refs: list[Handle], timeout: float) -> None:
        pass  # what is done is done at once

    def outcome(self, ref: Handle) -> tuple[AttemptState, dict[str, Any] | None, str | None]:
        self.done.discard(ref)
        if ref in self._outcomes:
            return self._outcomes.pop(ref)
        return AttemptState.SUCCEEDED, _succeeded(), None

    def pack_outcomes(self, ref: Handle, count: int) -> list[tuple[AttemptState, dict[str, Any] | None, str | None]]:
        """Each job's end: as :meth:`end` set it for the pack (a list of results,
        or one Ray error for all), else all succeeded."""
        self.done.discard(ref)
        self.packs.pop(ref, None)
        if ref not in self._outcomes:
            return [(AttemptState.SUCCEEDED, _succeeded(), None) for _ in range(count)]
        state, result, error = self._outcomes.pop(ref)
        if isinstance(result, list):
            return [worker_end(r) for r in result]
        return [(state, None, error)] * count

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


def _succeeded() -> dict[str, Any]:
    now = time.time()
    return {"outcome": "succeeded", "metrics": {"accuracy": 0.9}, "artifacts": [], "exit_code": 0, "error": None,
            "started_at": now, "ended_at": now, "node_id": None, "gpu_ids": [], "peak_rss": 1}
