"""The contract between the scheduler loop and what runs its attempts.

The loop talks to a :class:`Backend` only: ``scheduler.ray_backend`` is the
real one, ``scheduler.fake_backend`` the in-package stand-in the unit tests and
benchmarks drive, and ``tests/scheduler/test_backend_contract.py`` runs one
suite against both.  A backend launches typed tasks (contract.attempt), says
which have ended and how (:class:`TaskEnd`), and does on an attempt's own node
whatever touches that node's files or processes: the loop never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Protocol

from contract.attempt import AttemptTask, AttemptTrace, WorkerResult
from contract.owner import Held
from scheduler.records import EndCause
from scheduler.states import AttemptState

# An opaque handle on a launched task (a Ray ObjectRef, or the fake's counter).
Handle = Hashable


@dataclass(frozen=True)
class NodeInfo:
    """One node as the backend sees it."""

    node_id: str
    address: str
    alive: bool
    resources: dict[str, float]


@dataclass(frozen=True)
class TaskEnd:
    """How a task ended, as the backend can tell: the worker's result when it
    returned one, else the state and cause of the error that ended it."""

    state: AttemptState
    cause: EndCause
    result: WorkerResult | None = None
    error: str | None = None

    @classmethod
    def returned(cls, result: WorkerResult) -> "TaskEnd":
        """The end a worker's own result tells (success, failure or out of memory)."""
        state = AttemptState.from_worker_outcome(result.outcome.value)
        if state is AttemptState.OUT_OF_MEMORY:
            cause = EndCause.GPU_OOM if result.oom_cause and result.oom_cause.on_gpu else EndCause.HOST_OOM
        else:
            cause = EndCause.RETURNED
        return cls(state, cause, result, result.error)


@dataclass(frozen=True)
class Adopted:
    """A task a previous scheduler launched that still runs (or ended
    unrecorded), now waited on again by ``handle``."""

    handle: Handle
    held: Held
    node_id: str


class Backend(Protocol):
    """What the scheduler needs of a cluster."""

    def connect(self) -> None: ...

    def is_up(self) -> bool: ...

    def health(self) -> str:
        """"up", "node dead" (this process's own node is gone) or "unreachable"."""

    def shutdown(self) -> None: ...

    def nodes(self) -> list[NodeInfo]:
        """Every node, dead ones included (a dead one may list no resources)."""

    def local_node_id(self) -> str:
        """The node the scheduler runs on (the head, on a cluster)."""

    def launch(self, task: AttemptTask, *, node_id: str | None, pip: list[str] | None = None,
               fresh_worker: bool = False, gpu_indices: tuple[int, ...] = ()) -> Handle:
        """Start one attempt with ``task.resources``, pinned to ``node_id``
        (``gpu_indices``: the policy's plan, handed back by :meth:`adopt`)."""

    def launch_pack(self, tasks: list[AttemptTask], *, node_id: str | None,
                    pip: list[str] | None = None) -> Handle:
        """Start several short CPU attempts one after another in one task, with
        the first one's share."""

    def flush(self) -> None:
        """Hand over the launches of this pass (a backend may queue them to
        send them together); waiting or cancelling flushes too."""

    def adopt(self) -> list[Adopted]:
        """The tasks of this labq home that outlived the scheduler that launched
        them, each waited on again; launches of that older scheduler are
        refused from now on."""

    def release(self, handles: list[Handle]) -> None:
        """The ends of ``handles`` are recorded: what holds them may let go."""

    def ready(self, handles: list[Handle], timeout: float = 0.0) -> list[Handle]:
        """The handles that have ended; with a timeout, wait until one has."""

    def wait_any(self, handles: list[Handle], timeout: float) -> None:
        """Block until one of ``handles`` ends or ``timeout`` passes."""

    def outcome(self, handle: Handle) -> TaskEnd:
        """How an ended single attempt ended."""

    def pack_outcomes(self, handle: Handle, count: int) -> list[TaskEnd]:
        """How each attempt of an ended pack ended: each one's own result when
        the pack returned, else the pack's error for every one (no result)."""

    def cancel(self, handle: Handle, force: bool) -> None:
        """Ask the task to stop (``force``: kill its worker)."""

    def read_gpus(self, node_ids: list[str]) -> dict[str, Handle]:
        """Start an NVML reading on each node; collect with ready() and value()."""

    def value(self, handle: Handle) -> Any:
        """A finished reading's value, or None if it failed."""

    def trace(self, node_id: str | None, run_dir: str) -> AttemptTrace:
        """What the attempt's node holds of it (read on that node)."""

    def gpu_ids(self, node_id: str | None, run_dir: str) -> list[int] | None:
        """The GPUs Ray gave a running attempt, once its worker wrote them; None
        until then (or where the node cannot be asked cheaply)."""

    def end_process_group(self, node_id: str | None, run_dir: str) -> None:
        """End the attempt's command process group, on its node."""

    def curves_since(self, node_id: str | None, reads: list[tuple[str, int]]) -> list[tuple[int, bytes]]:
        """For each (run dir, offset) of attempts on ``node_id``: (bytes
        consumed, the complete lines) of its metrics.jsonl past ``offset``,
        read on that node (workers.node_ops.curves_since)."""

    def signal_attempts(self, node_id: str | None, signals: list[tuple[str, str, str]]) -> None:
        """Write early stopping's verdicts, (run dir, file, text), into running
        attempts' run dirs on ``node_id`` (workers.node_ops.signal_attempts)."""

    def keep_bundle(self, data: bytes, run_dir: str) -> None:
        """Unpack a run dir carried back in a result, on the scheduler's node."""

    def artifacts_bundle(self, run_dir: str) -> bytes:
        """An upstream run dir's artifacts, zipped on the scheduler's node, for
        a node that cannot read its disk."""
