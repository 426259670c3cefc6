"""What the scheduler knows of GPUs beyond Ray's counts: NVML readings of each
GPU node (kept fresh without ever blocking a pass), and the shares of ended
attempts whose processes may still hold GPU memory ("draining")."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from scheduler.backend import Backend, Handle

log = logging.getLogger("labq.loop")

# How often each GPU node's NVML readings are refreshed for `labq nodes`.
GPU_TELEMETRY_SECONDS = 10.0
# A GPU share whose attempt ended uncleanly stays booked ("draining") until NVML
# lists none of the attempt's processes on its node: that node is read this
# often meanwhile, and the share is released anyway after the deadline.
DRAIN_READ_SECONDS = 1.0
DRAIN_DEADLINE_SECONDS = 30.0


@dataclass(frozen=True)
class Draining:
    """The GPU share of an ended attempt whose processes may still hold GPU
    memory: booked until a reading of its node taken after ``ended_at`` lists
    none of ``pids``, or until ``deadline``."""

    attempt_id: int
    job_id: int
    node_id: str
    gpu_indices: tuple[int, ...]
    share: float  # per GPU index
    pids: frozenset[int]
    ended_at: float
    deadline: float


class GpuBooks:
    def __init__(self, backend: Backend):
        self._backend = backend
        self.readings: dict[str, list[dict[str, Any]]] = {}  # node id -> NVML readings per GPU
        self._in_flight: dict[str, Handle] = {}  # node id -> reading in flight
        self._asked: dict[str, float] = {}  # node id -> when its reading in flight was started
        self._taken: dict[str, float] = {}  # node id -> when its latest reading was started
        self._read_at = 0.0
        self.draining: dict[int, Draining] = {}  # attempt id -> GPU share kept booked after it ended

    def handles(self) -> list[Handle]:
        return list(self._in_flight.values())

    def has_nvml(self, node_id: str | None) -> bool:
        """False only for a node read and found without NVML (logical GPUs)."""
        return self.readings.get(node_id or "") != []

    def read(self, now: float, gpu_nodes: set[str], describe: Callable[[str], str]) -> tuple[bool, bool]:
        """Pick up the readings that came back, release the shares they clear,
        and start the readings that are due.  Returns (readings all in, some
        draining share released)."""
        done = set(self._backend.ready(list(self._in_flight.values()))) if self._in_flight else set()
        for node_id, handle in list(self._in_flight.items()):
            if handle in done:
                del self._in_flight[node_id]
                reading = self._backend.value(handle)
                if reading is not None:  # a failed reading is not "no NVML here": keep the last one
                    self.readings[node_id] = reading
                self._taken[node_id] = self._asked.pop(node_id)
            elif now - self._asked[node_id] > 6 * GPU_TELEMETRY_SECONDS:  # stuck on a dying node
                del self._in_flight[node_id], self._asked[node_id]
        released = self._release(now, describe) if self.draining else False
        all_in = bool(done) and not self._in_flight
        due = {d.node_id for d in self.draining.values()
               if self._taken.get(d.node_id, -1.0) < d.ended_at or now - self._taken[d.node_id] >= DRAIN_READ_SECONDS}
        if now - self._read_at >= GPU_TELEMETRY_SECONDS and gpu_nodes:
            self._read_at = now
            due |= gpu_nodes
        due -= self._in_flight.keys()
        if due:
            self._in_flight.update(self._backend.read_gpus(sorted(due)))
            self._asked.update(dict.fromkeys(due, now))
        return all_in, released

    def drain(self, d: Draining) -> None:
        self.draining[d.attempt_id] = d

    def _release(self, now: float, describe: Callable[[str], str]) -> bool:
        """Release each draining share whose node, read after its attempt ended,
        lists none of its pids on any GPU; past the deadline, release it anyway
        and say which pids are left."""
        released = False
        for attempt_id, d in list(self.draining.items()):
            readings = self.readings.get(d.node_id)
            fresh = readings is not None and self._taken.get(d.node_id, -1.0) >= d.ended_at
            left = d.pids & {int(p) for g in readings or () for p in g.get("pids") or ()}
            if fresh and not left:
                log.debug("job %s: its processes left the GPUs of node %s", d.job_id, d.node_id[:8])
            elif now >= d.deadline:
                log.warning("job %s (attempt id %s) ended %.0fs ago and %s on node %s; releasing its GPU share "
                            "anyway", d.job_id, attempt_id, now - d.ended_at,
                            f"NVML still lists its pids {sorted(left)}" if fresh
                            else f"no NVML reading came back since (its pids {sorted(d.pids)} unchecked)",
                            describe(d.node_id))
            else:
                continue
            del self.draining[attempt_id]
            released = True
        return released

    def unread(self, gpu_node_ids: Iterable[str]) -> bool:
        """Whether some of these GPU nodes has never been read (card sizes unknown)."""
        return any(n not in self.readings for n in gpu_node_ids)

    def per_gpu(self, node_id: str, gpu_free: list[float]) -> list[dict[str, Any]]:
        """`labq nodes`'s row per GPU of a node: its NVML reading, what labq has
        allocated on it, and the part of that still draining."""
        draining: dict[int, dict[str, Any]] = {}
        for d in self.draining.values():
            if d.node_id != node_id:
                continue
            for i in d.gpu_indices:
                entry = draining.setdefault(i, {"draining": 0.0, "draining_jobs": []})
                entry["draining"] = round(entry["draining"] + d.share, 4)
                entry["draining_jobs"].append(d.job_id)
        readings = {g.get("index"): g for g in self.readings.get(node_id, [])}
        return [{**readings.get(i, {}), "index": i, "allocated": round(1.0 - share, 4), **draining.get(i, {})}
                for i, share in enumerate(gpu_free)]
