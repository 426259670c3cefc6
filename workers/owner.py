"""The owner of one node's attempts: a detached Ray actor that outlives the scheduler.

Ray ends a task when the process that submitted it (its *owner*) dies: "if the
owner of an object dies, the object is lost" and a worker leased by a dead
owner is killed (Ray's docs, *Ownership* and *Fault tolerance: owner
failure*).  A task the scheduler process submitted itself therefore dies with
the scheduler.  A *detached* actor is owned by no driver: it lives until it is
killed or its node dies (*Actor lifetimes*).  So each node gets one detached
actor, named after the labq home, the node and the labq version, that submits
the node's attempt tasks itself and so owns them: the scheduler may crash,
stop or be upgraded while they run.

The scheduler hands the owner a pass's launches in one call (:meth:`start`)
and gets each task's ObjectRef back, nested in a list, which makes the
scheduler a *borrower* of it: it waits on the task and reads its result
straight from Ray, as if it had submitted it, while the owner keeps it alive.
A scheduler that starts later calls :meth:`adopt` for what the owner holds
(the same refs, borrowed again); ``forget`` drops a task once a scheduler has
recorded its end.  The owner also does what touches its node's files and
processes for the scheduler: reading a run dir, ending an attempt's process
group.

Orders carry the scheduler's *epoch* (each scheduler life takes a higher one):
once a newer scheduler has adopted, a launch the dead one sent that arrives
late is refused, so an attempt the new scheduler judged lost and requeued can
never start beside its retry.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from contract.owner import OWNER_PROTOCOL, Held, Launch, OwnerInfo
from workers import node_ops
from workers.attempt import run_attempt, run_attempts

_remote_attempt = ray.remote(max_retries=0)(run_attempt)
# A job on a real GPU gets a fresh worker process: a worker that has started
# CUDA keeps its first CUDA_VISIBLE_DEVICES and its torch memory cap, so reusing
# it could put the next job on the wrong card (Ray only defaults max_calls=1 for
# GPU functions declared with num_gpus, not for num_gpus given in .options()).
_remote_gpu_attempt = ray.remote(max_retries=0, max_calls=1)(run_attempt)
# A pack of short jobs run one after another in one task (scheduler.packing).
_remote_pack = ray.remote(max_retries=0)(run_attempts)

# The owner's calls about tasks (start, adopt, cancel, forget) run one at a
# time, in the order one scheduler sent them (a cancel before its forget);
# what it does on the node's files and processes runs in a group of its own, a
# few at a time: ending a process group waits out a grace period, which must
# not hold up a pass's launches.
NODE_OPS_GROUP = "node"
NODE_OPS_THREADS = 4
# What the owner answers for a launch it refuses (the scheduler reads it as an error).
REFUSED = "refused"


@dataclass
class _Task:
    launch: Launch
    ref: Any  # the task's ObjectRef: this actor is its owner
    launched_at: float


class AttemptOwner:
    """One per (labq home, node, labq version); see the module docstring."""

    def __init__(self, home_key: str, node_id: str, version: str):
        self._home_key = home_key
        self._node_id = node_id
        self._version = version
        self._tasks: dict[str, _Task] = {}
        self._epoch = 0
        # Launches and adoptions are one at a time (the epoch fence), whatever runs them.
        self._lock = threading.Lock()
        self._remotes: dict[tuple, Any] = {}

    # ------------------------------------------------------------ who

    def about(self) -> dict[str, Any]:
        return OwnerInfo(home_key=self._home_key, version=self._version, protocol=OWNER_PROTOCOL,
                         node_id=self._node_id, pid=os.getpid(), held=len(self._tasks), epoch=self._epoch).to_json()

    def adopt(self, epoch: int) -> list[tuple[dict[str, Any], list[Any]]]:
        """A scheduler of life ``epoch`` takes over: from now on, launches of an
        older one are refused.  Returns each task held (contract.owner.Held)
        with its ref, nested so that the caller borrows it."""
        with self._lock:
            self._epoch = max(self._epoch, int(epoch))
            tasks = list(self._tasks.items())
        done = _done({k: t.ref for k, t in tasks})
        return [(Held(key=k, attempts=t.launch.attempts, pack=t.launch.pack, gpu_indices=t.launch.gpu_indices,
                      launched_at=t.launched_at, ended=k in done).to_json(), [t.ref])
                for k, t in tasks]

    # ------------------------------------------------------------ tasks

    def start(self, epoch: int, launches: list[dict[str, Any]]) -> list[Any]:
        """Start each launch (once per key) on this node; for each, its ref
        nested in a list, or a string saying why it was refused."""
        out: list[Any] = []
        with self._lock:
            stale = int(epoch) < self._epoch
            for data in launches:
                launch = Launch.from_json(data)
                task = self._tasks.get(launch.key)
                if task is None and stale:
                    out.append(f"{REFUSED}: launch of {launch.key} sent by scheduler life {epoch}, "
                               f"but life {self._epoch} has taken over")
                    continue
                if task is None:
                    task = self._tasks[launch.key] = _Task(launch, self._submit(launch), time.time())
                out.append([task.ref])
        return out

    def cancel(self, key: str, force: bool) -> bool:
        task = self._tasks.get(key)
        if task is None:
            return False
        try:
            ray.cancel(task.ref, force=force)
        except Exception:  # already ended: nothing left to stop
            return False
        return True

    def forget(self, keys: list[str]) -> int:
        """Drop tasks whose end a scheduler has recorded."""
        with self._lock:
            return sum(self._tasks.pop(k, None) is not None for k in keys)

    def _submit(self, launch: Launch) -> Any:
        """The Ray task of ``launch``, pinned to this node with its share."""
        options: dict[str, Any] = {
            "num_cpus": launch.cpu, "num_gpus": launch.gpu, "resources": dict(launch.custom) or None,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=self._node_id, soft=False)}
        if launch.memory:
            options["memory"] = launch.memory
        if launch.pip:
            options["runtime_env"] = {"pip": {"packages": list(launch.pip), "pip_check": False}}
        if not launch.pack:
            remote = _remote_gpu_attempt if launch.fresh_worker else _remote_attempt
            return remote.options(name=launch.name, **options).remote(launch.tasks[0])
        key = (launch.cpu, launch.memory, tuple(sorted(launch.custom.items())), launch.pip)
        remote = self._remotes.get(key)
        if remote is None:
            # .options() validates each call (~1 ms): one per pack shape and
            # environment, not one per pack.
            if len(self._remotes) >= 256:
                self._remotes.clear()
            remote = self._remotes[key] = _remote_pack.options(name="labq-pack", **options)
        return remote.remote(list(launch.tasks))

    # ------------------------------------------------------------ this node's files and processes

    @ray.method(concurrency_group=NODE_OPS_GROUP)
    def trace(self, run_dir: str) -> dict[str, Any]:
        return node_ops.trace(run_dir)

    @ray.method(concurrency_group=NODE_OPS_GROUP)
    def gpu_ids(self, run_dir: str) -> list[int] | None:
        return node_ops.gpu_ids(run_dir)

    @ray.method(concurrency_group=NODE_OPS_GROUP)
    def end_process_group(self, run_dir: str) -> bool:
        return node_ops.end_process_group(run_dir)

    @ray.method(concurrency_group=NODE_OPS_GROUP)
    def curves_since(self, reads: list[tuple[str, int]]) -> list[tuple[int, bytes]]:
        return node_ops.curves_since(reads)

    @ray.method(concurrency_group=NODE_OPS_GROUP)
    def signal_attempts(self, signals: list[tuple[str, str, str]]) -> bool:
        node_ops.signal_attempts(signals)
        return True  # done (None is what the scheduler reads as "no answer")


def _done(refs: dict[str, Any]) -> set[str]:
    """The keys whose task has ended."""
    if not refs:
        return set()
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0, fetch_local=False)
    ready_ids = {r.hex() for r in ready}
    return {k for k, r in refs.items() if r.hex() in ready_ids}


def actor_class() -> Any:
    """The Ray actor class (made on first use, so importing this module costs nothing)."""
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1,
                            concurrency_groups={NODE_OPS_GROUP: NODE_OPS_THREADS})(AttemptOwner)
    return _ACTOR


_ACTOR: Any = None
