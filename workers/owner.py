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

The scheduler never holds a task of its own: it calls :meth:`AttemptOwner.run`,
which starts the task (once per key) and awaits its end, so the scheduler
waits on that call's reply.  A scheduler that starts later calls ``adopt`` for
what the owner holds and ``join`` to wait on each again; ``forget`` drops an
end once a scheduler has recorded it.  The owner also does what touches its
node's files and processes for the scheduler: reading a run dir, ending an
attempt's process group.

Orders carry the scheduler's *epoch* (a number each scheduler life takes from
the database, always higher): once a newer scheduler has adopted, a launch the
dead one sent that arrives late is refused, so an attempt the new scheduler
judged lost and requeued can never start beside its retry.
"""

from __future__ import annotations

import asyncio
import os
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

# Async actor: every attempt awaited is a coroutine, not a thread.  The limit
# only caps attempts in flight on one node.
MAX_IN_FLIGHT = 100_000


class StaleScheduler(RuntimeError):
    """A launch from a scheduler older than the one that adopted this owner."""


class NotHeld(KeyError):
    """The owner holds no task of that key: it never started here, or this
    owner is a new one (the old one died with its tasks)."""


@dataclass
class _Task:
    launch: Launch
    ref: Any  # the task's ObjectRef: this actor is its owner
    launched_at: float
    # (True, what it returned) or (False, the error that ended it), once it ended:
    # set by one watcher per task, so any number of callers can wait on it.
    end: "asyncio.Future[tuple[bool, Any]]"

    async def result(self) -> Any:
        ok, value = await asyncio.shield(self.end)
        if ok:
            return value
        raise value


class AttemptOwner:
    """One per (labq home, node, labq version); see the module docstring."""

    def __init__(self, home_key: str, node_id: str, version: str):
        self._home_key = home_key
        self._node_id = node_id
        self._version = version
        self._tasks: dict[str, _Task] = {}
        self._epoch = 0
        self._remotes: dict[tuple, Any] = {}

    # ------------------------------------------------------------ who

    async def about(self) -> dict[str, Any]:
        return OwnerInfo(home_key=self._home_key, version=self._version, protocol=OWNER_PROTOCOL,
                         node_id=self._node_id, pid=os.getpid(), held=len(self._tasks), epoch=self._epoch).to_json()

    async def adopt(self, epoch: int) -> list[dict[str, Any]]:
        """A scheduler of life ``epoch`` takes over: from now on, launches of an
        older one are refused.  Returns what this owner holds (contract.owner.Held)."""
        self._epoch = max(self._epoch, int(epoch))
        return [Held(key=k, attempts=t.launch.attempts, pack=t.launch.pack,
                     gpu_indices=t.launch.gpu_indices, launched_at=t.launched_at,
                     ended=t.end.done()).to_json()
                for k, t in self._tasks.items()]

    # ------------------------------------------------------------ tasks

    async def run(self, epoch: int, launch_json: dict[str, Any]) -> Any:
        """Start the task (unless this key runs already) and return its result
        when it ends; an error that ended it is raised, as Ray raised it here."""
        launch = Launch.from_json(launch_json)
        task = self._tasks.get(launch.key)
        if task is None:
            if int(epoch) < self._epoch:
                raise StaleScheduler(f"launch of attempt {launch.key} refused: sent by scheduler life {epoch}, "
                                     f"but life {self._epoch} has taken over")
            task = self._tasks[launch.key] = self._start(launch)
        return await task.result()

    async def join(self, key: str) -> Any:
        """Wait again on a task a previous scheduler launched."""
        task = self._tasks.get(key)
        if task is None:
            raise NotHeld(f"attempt {key} is not held by labq's owner on node {self._node_id[:8]}")
        return await task.result()

    async def cancel(self, key: str, force: bool) -> bool:
        task = self._tasks.get(key)
        if task is None:
            return False
        try:
            ray.cancel(task.ref, force=force)
        except Exception:  # already ended: nothing left to stop
            return False
        return True

    async def forget(self, keys: list[str]) -> int:
        """Drop tasks whose end a scheduler has recorded."""
        return sum(self._tasks.pop(k, None) is not None for k in keys)

    def _start(self, launch: Launch) -> _Task:
        ref = self._submit(launch)
        task = _Task(launch, ref, time.time(), asyncio.get_running_loop().create_future())
        asyncio.get_running_loop().create_task(_watch(task))
        return task

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

    async def trace(self, run_dir: str) -> dict[str, Any]:
        return node_ops.trace(run_dir)

    async def gpu_ids(self, run_dir: str) -> list[int] | None:
        return node_ops.gpu_ids(run_dir)

    async def end_process_group(self, run_dir: str) -> bool:
        # It waits out a grace period: off the event loop, which awaits the attempts.
        return await asyncio.to_thread(node_ops.end_process_group, run_dir)


async def _watch(task: _Task) -> None:
    try:
        task.end.set_result((True, await task.ref))
    except Exception as exc:  # a Ray error ended it: kept for whoever waits
        task.end.set_result((False, exc))


def actor_class() -> Any:
    """The Ray actor class (made on first use, so importing this module costs nothing)."""
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=MAX_IN_FLIGHT)(AttemptOwner)
    return _ACTOR


_ACTOR: Any = None
