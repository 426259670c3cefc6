"""Records that cross between the scheduler and a node's attempt owner
(workers.owner): what the scheduler asks it to start, and what it says it holds.

The owner is a long-lived process on the node that outlives any one scheduler,
so a scheduler of another labq version may read these: ``from_json`` ignores
unknown keys and gives missing optional ones their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Bumped when a method of the owner changes meaning: a scheduler adopts the
# attempts of an owner of another protocol only through the methods this one kept.
OWNER_PROTOCOL = 1


@dataclass(frozen=True)
class Launch:
    """One task an owner is asked to start on its node: one attempt, or a pack
    of short ones run one after another (``pack``), with the first one's share."""

    key: str  # names the task to its owner: the (first) attempt's run dir, unique to a labq home
    attempts: tuple[tuple[int, int], ...]  # (job id, attempt number) of each attempt, in order
    tasks: tuple[dict[str, Any], ...]  # contract.attempt.AttemptTask, as JSON, in order
    pack: bool = False
    name: str = "labq-job"  # the Ray task's name (what `ray list tasks` and the worker's title show)
    cpu: float = 1.0
    gpu: float = 0.0
    memory: int | None = None
    custom: dict[str, float] = field(default_factory=dict)
    pip: tuple[str, ...] = ()
    fresh_worker: bool = False  # a worker process of its own (a job on a real GPU)
    gpu_indices: tuple[int, ...] = ()  # the policy's plan, handed back on adoption

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "attempts": [list(a) for a in self.attempts], "tasks": list(self.tasks),
                "pack": self.pack, "name": self.name, "cpu": self.cpu, "gpu": self.gpu, "memory": self.memory,
                "custom": dict(self.custom), "pip": list(self.pip), "fresh_worker": self.fresh_worker,
                "gpu_indices": list(self.gpu_indices)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Launch":
        return cls(key=str(data["key"]), attempts=_pairs(data.get("attempts")),
                   tasks=tuple(data.get("tasks") or ()), pack=bool(data.get("pack")),
                   name=str(data.get("name") or "labq-job"), cpu=float(data.get("cpu", 1.0)),
                   gpu=float(data.get("gpu") or 0.0), memory=data.get("memory"),
                   custom={str(k): float(v) for k, v in (data.get("custom") or {}).items()},
                   pip=tuple(data.get("pip") or ()), fresh_worker=bool(data.get("fresh_worker")),
                   gpu_indices=tuple(int(i) for i in data.get("gpu_indices") or ()))


@dataclass(frozen=True)
class Held:
    """A task an owner holds: still running, or ended and not yet forgotten
    (its end not yet recorded by a scheduler)."""

    key: str
    attempts: tuple[tuple[int, int], ...]  # (job id, attempt number), in order
    pack: bool
    gpu_indices: tuple[int, ...]
    launched_at: float
    ended: bool

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "attempts": [list(a) for a in self.attempts], "pack": self.pack,
                "gpu_indices": list(self.gpu_indices), "launched_at": self.launched_at, "ended": self.ended}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Held":
        return cls(key=str(data["key"]), attempts=_pairs(data.get("attempts")),
                   pack=bool(data.get("pack")), gpu_indices=tuple(int(i) for i in data.get("gpu_indices") or ()),
                   launched_at=float(data.get("launched_at") or 0.0), ended=bool(data.get("ended")))


@dataclass(frozen=True)
class OwnerInfo:
    """Who an owner is: which labq home and version it serves, on which node."""

    home_key: str
    version: str
    protocol: int
    node_id: str
    pid: int
    held: int  # tasks it holds
    epoch: int  # the newest scheduler life it has taken orders from

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OwnerInfo":
        return cls(home_key=str(data.get("home_key", "")), version=str(data.get("version", "?")),
                   protocol=int(data.get("protocol", 0)), node_id=str(data.get("node_id", "")),
                   pid=int(data.get("pid", 0)), held=int(data.get("held", 0)), epoch=int(data.get("epoch", 0)))


def _pairs(data: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(job), int(number)) for job, number in data or ())
