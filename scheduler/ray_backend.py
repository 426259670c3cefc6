"""The only module of the scheduler that talks to Ray.

It connects, reports node capacity, has each attempt launched with the job's
resources on the node the policy chose, waits on many at once, cancels, and
translates Ray's errors into attempt outcomes.  Ray's task retries are off:
labq counts attempts itself so that every try is recorded.

The attempts are not this process's tasks: each node's *owner*
(workers.owner, a detached actor) submits them and so owns them, and lends
this process their refs: it waits on them and reads their results as a
borrower.  Ray ends a task with the process that submitted it; a detached actor outlives the scheduler, so a crash, a stop or
an upgrade of the scheduler leaves the attempts running, and the next
scheduler adopts them (:meth:`RayBackend.adopt`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from contract.attempt import AttemptTask, AttemptTrace, WorkerResult
from contract.owner import OWNER_PROTOCOL, Held, Launch, OwnerInfo
from scheduler import __version__, local_ray
from scheduler.backend import Adopted, Handle, NodeInfo, TaskEnd
from scheduler.records import EndCause
from scheduler.states import AttemptState
from workers import node_ops, owner as owner_mod
from workers.workdir import CODE_NAMESPACE, code_key
from workers.gpu import node_telemetry

log = logging.getLogger("labq.ray")

# NVML readings of one node's GPUs, for `labq nodes`: no CPU held, so it never
# waits behind the jobs it reports on.
_remote_telemetry = ray.remote(num_cpus=0, max_retries=0)(node_telemetry)
# How long the scheduler waits for a node's owner to answer about one of its attempts.
NODE_OP_SECONDS = 10.0
# How long a new owner may take to answer before its node is taken for dead
# (starting an actor's worker takes about a second).
PROBE_SECONDS = 8.0
# Ray's namespace for labq's named actors (the owners, the cluster lock).
NAMESPACE = "labq"
# Owners of this labq: a scheduler of another version adopts an older owner's
# attempts and lets them finish there, and starts its own owner beside it.
OWNER_VERSION = f"{__version__}-p{OWNER_PROTOCOL}"
OWNER_PREFIX = "labq-owner-"

# The local Ray's settings, for a local Ray started in-process (tests, benchmarks):
# the same as scheduler.local_ray gives `ray start` (why: see there).
LOCAL_RAY_SYSTEM_CONFIG = local_ray.SYSTEM_CONFIG


class ClusterTaken(RuntimeError):
    """Another labq scheduler drives this Ray cluster."""


class SchedulerLock:
    """Held by the one scheduler that drives a Ray cluster: a named actor that
    is *not* detached, so Ray ends it, and frees its name, when the scheduler's
    driver goes away, however it ends.  A second scheduler cannot take the name
    while the first lives (the flock on LABQ_HOME only guards one machine)."""

    def __init__(self, holder: dict[str, Any]):
        self._holder = holder

    def holder(self) -> dict[str, Any]:
        return self._holder


LOCK_NAME = "labq-scheduler"
# How long a starting scheduler waits for the lock of one that just died (Ray
# ends a dead driver's actors within seconds).
LOCK_WAIT_SECONDS = 15.0


@dataclass
class _Owned:
    """A task of a node's owner, as this scheduler knows it.  The handle the
    loop holds is its key (the first attempt's run dir)."""

    owner: Any  # the owner's actor handle
    node_id: str
    ref: Any = None  # the task's ObjectRef, borrowed from the owner once it took the launch
    refused: TaskEnd | None = None  # the owner would not take it (or could not be reached)
    # A cancel asked before the owner took the launch (force or not): sent once it has.
    cancel_pending: bool | None = None


def home_key(home: str | Path | None) -> str:
    """A short name for a labq home, in its owners' actor names."""
    if home is None:
        return "any"
    return hashlib.sha1(str(Path(home).expanduser().resolve()).encode()).hexdigest()[:10]


class RayBackend:
    def __init__(self, address: str | None = None, num_cpus: float | None = None, num_gpus: int | None = None,
                 *, home: str | Path | None = None, system_config: dict[str, Any] | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.home_key = home_key(home)
        self._uploaded: dict[str, str] = {}
        self._here: str | None = None
        self._owners: dict[str, Any] = {}  # node id -> this version's owner there
        self._older: dict[str, tuple[Any, set[str]]] = {}  # actor name -> an older owner, and the keys it still runs
        self._tasks: dict[str, _Owned] = {}  # key (the handle) -> its owner, and its ref once started
        self._unsent: dict[str, list[Launch]] = {}  # node id -> launches not yet handed to its owner
        self._probes: dict[str, tuple[float, bool]] = {}  # node id -> (when, whether its owner answered)
        # This scheduler life's number: an owner that a newer life adopted refuses its launches.
        self.epoch = time.time_ns()

    # ------------------------------------------------------------ connection

    def connect(self) -> None:
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"log_to_driver": False, "namespace": NAMESPACE, "configure_logging": False}
        if self.address:
            _use_token_auth_if_available()
            ray.init(address=self.address, **kwargs)
        else:
            # "local": always a fresh Ray of labq's own, even when a `ray start`
            # cluster happens to run on this machine (plain ray.init() would join it).
            ray.init(address="local", num_cpus=self.num_cpus, num_gpus=self.num_gpus, include_dashboard=False,
                     _system_config=LOCAL_RAY_SYSTEM_CONFIG, **kwargs)
        self._uploaded.clear()
        self._here = None
        self._owners.clear()
        self._tasks.clear()
        self._unsent.clear()

    @staticmethod
    def local_node_id() -> str:
        """The node this scheduler runs on (the head, on a cluster)."""
        return ray.get_runtime_context().get_node_id()

    def is_up(self) -> bool:
        return self.health() == "up"

    def health(self) -> str:
        """"up"; "node dead": the GCS answers but this process's own node is
        dead (its raylet killed or out of memory), so nothing can be launched
        from here and Ray will not recover it for us; "unreachable": the GCS does
        not answer (Ray's own reconnect timeout handles that)."""
        if not ray.is_initialized():
            return "unreachable"
        try:
            nodes = ray.nodes()
            here = ray.get_runtime_context().get_node_id()
        except Exception:  # Ray raises many types when the GCS is gone
            return "unreachable"
        return "up" if any(n.get("NodeID") == here and n.get("Alive") for n in nodes) else "node dead"

    def shutdown(self) -> None:
        """Disconnect.  The owners are detached: what they run goes on."""
        if ray.is_initialized():
            ray.shutdown()

    def lock_cluster(self, home: str | Path) -> None:
        """Become the one scheduler of this Ray cluster, or raise ClusterTaken
        naming the one that is."""
        import os
        import socket

        holder = {"host": socket.gethostname(), "pid": os.getpid(), "home": str(home), "since": time.time()}
        lock_class = ray.remote(num_cpus=0, max_restarts=0)(SchedulerLock)
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                self._lock = lock_class.options(name=LOCK_NAME, namespace=NAMESPACE).remote(holder)
                ray.get(self._lock.holder.remote(), timeout=60)
                return
            except ValueError:  # the name is taken
                pass
            try:
                other = ray.get(ray.get_actor(LOCK_NAME, namespace=NAMESPACE).holder.remote(), timeout=5)
            except Exception:  # gone since, or dying with its driver: try again
                other = None
            if other is not None and time.monotonic() > deadline:
                raise ClusterTaken(
                    f"another labq scheduler drives this Ray cluster (host {other.get('host')}, pid "
                    f"{other.get('pid')}, home {other.get('home')}); two would start the same jobs twice. Stop "
                    "that one, or give this one a Ray of its own")
            time.sleep(0.5)

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(node_id=n["NodeID"], address=n.get("NodeManagerAddress", ""), alive=bool(n.get("Alive")),
                        resources=dict(n.get("Resources") or {}))
                for n in ray.nodes()]

    # ------------------------------------------------------------ code

    def share_code(self, package: str | None) -> None:
        """Leave the experiment's code snapshot in Ray's key-value store, once,
        for nodes that cannot read LABQ_HOME (workers.workdir.open_snapshot).
        Not a runtime_env working_dir: a new working_dir makes Ray start new
        worker processes, seconds for the first job of every new snapshot."""
        if not package or package in self._uploaded:
            return
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(code_key(Path(package).stem), Path(package).read_bytes(), overwrite=False,
                         namespace=CODE_NAMESPACE)
        self._uploaded[package] = code_key(Path(package).stem)

    def _code_for(self, task: AttemptTask, node_id: str | None) -> None:
        head = task.collect_to_node
        if head and node_id != head:  # another node, no shared LABQ_HOME
            self.share_code(task.package)

    # ------------------------------------------------------------ tasks

    def launch(self, task: AttemptTask, *, node_id: str | None, pip: list[str] | None = None,
               fresh_worker: bool = False, gpu_indices: tuple[int, ...] = ()) -> str:
        self._code_for(task, node_id)
        share = task.resources
        return self._run(Launch(key=task.run_dir, attempts=((task.job_id, task.attempt),), tasks=(task.to_json(),),
                                name=f"labq-job-{task.job_id}-{task.attempt}", cpu=share.cpu, gpu=share.gpu,
                                memory=share.memory, custom=dict(share.custom), pip=tuple(pip or ()),
                                fresh_worker=fresh_worker, gpu_indices=tuple(gpu_indices)), node_id)

    def launch_pack(self, tasks: list[AttemptTask], *, node_id: str | None,
                    pip: list[str] | None = None) -> str:
        """One task that runs ``tasks`` one after another with the first one's
        share (no GPU: packs are CPU jobs); read its end with :meth:`pack_outcomes`."""
        self._code_for(tasks[0], node_id)
        share = tasks[0].resources
        return self._run(Launch(key=tasks[0].run_dir, attempts=tuple((t.job_id, t.attempt) for t in tasks),
                                tasks=tuple(t.to_json() for t in tasks), pack=True, name="labq-pack", cpu=share.cpu,
                                memory=share.memory, custom=dict(share.custom), pip=tuple(pip or ())), node_id)

    def _run(self, launch: Launch, node_id: str | None) -> str:
        """Queue ``launch`` for the node's owner; the pass's launches go to each
        owner in one call (:meth:`flush`), before anything waits on them."""
        node = node_id or self._local()
        self._tasks[launch.key] = _Owned(self._owner(node), node)
        self._unsent.setdefault(node, []).append(launch)
        return launch.key

    def flush(self) -> None:
        """Hand every queued launch to its node's owner, which starts them and
        lends back their refs."""
        unsent, self._unsent = self._unsent, {}
        for node, launches in unsent.items():
            try:
                replies = ray.get(self._owner(node).start.remote(self.epoch, [launch.to_json() for launch in launches]),
                                  timeout=NODE_OP_SECONDS * 6)
            except ray.exceptions.GetTimeoutError:
                # A slow owner may have started them: sent again next time (an owner
                # starts a key once, and hands back the same ref for it).
                log.warning("labq's owner on node %s took over a minute to take %d launches; sending them again",
                            node[:8], len(launches))
                self._unsent.setdefault(node, []).extend(launches)
                continue
            except Exception as exc:  # the owner (or its node) is gone, and what it ran with it
                end = _classify(exc) if _is_ray_error(exc) else TaskEnd(
                    AttemptState.LOST, EndCause.LAUNCH_FAILED, error=f"could not launch on Ray: {_short(exc)}")
                if end.cause is EndCause.OWNER_DIED:
                    self._owners.pop(node, None)
                replies = [end] * len(launches)
            for launch, reply in zip(launches, replies):
                task = self._tasks.get(launch.key)
                if task is None:
                    continue  # released meanwhile
                if isinstance(reply, TaskEnd):
                    task.refused = reply
                elif isinstance(reply, str):
                    task.refused = TaskEnd(AttemptState.LOST, EndCause.NOT_STARTED, error=f"not started: {reply}")
                else:
                    task.ref = reply[0]
                    if task.cancel_pending is not None:  # cancelled while the owner was still taking it
                        self._send_cancel(launch.key, task, task.cancel_pending)

    # ------------------------------------------------------------ owners

    def _local(self) -> str:
        if self._here is None:
            self._here = self.local_node_id()
        return self._here

    def _owner_name(self, node_id: str) -> str:
        return f"{OWNER_PREFIX}{self.home_key}-{node_id[:16]}-{OWNER_VERSION}"

    def _owner(self, node_id: str) -> Any:
        """This version's owner on ``node_id``, started there if there is none."""
        owner = self._owners.get(node_id)
        if owner is None:
            owner = owner_mod.actor_class().options(
                name=self._owner_name(node_id), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            ).remote(self.home_key, node_id, OWNER_VERSION)
            self._owners[node_id] = owner
        return owner

    def _owner_died(self, owned: _Owned) -> None:
        """Forget a dead owner, so the next call on its node starts a new one."""
        if self._owners.get(owned.node_id) is owned.owner:
            del self._owners[owned.node_id]

    def owners(self) -> list[tuple[str, Any]]:
        """(actor name, handle) of every owner of this labq home the cluster has, any version."""
        mine = f"{OWNER_PREFIX}{self.home_key}-"
        found = []
        for entry in ray.util.list_named_actors(all_namespaces=False):
            name = entry["name"] if isinstance(entry, dict) else entry
            if name.startswith(mine):
                try:
                    found.append((name, ray.get_actor(name, namespace=NAMESPACE)))
                except ValueError:  # it died since it was listed
                    continue
        return found

    def adopt(self) -> list[Adopted]:
        """Take over what the owners of this labq home hold, from a scheduler
        that stopped or died: every owner is told this life's epoch (so a late
        launch of the old one is refused) and each task it holds is waited on
        again, by a new handle.  An owner of another labq version keeps its
        attempts to the end (it still answers every call a task needs) and is
        ended once they are recorded; new attempts go to this version's owner."""
        found: list[tuple[str, Any, OwnerInfo]] = []
        for name, actor in self.owners():
            try:
                found.append((name, actor, OwnerInfo.from_json(ray.get(actor.about.remote(), timeout=NODE_OP_SECONDS))))
            except Exception as exc:  # dead, or its node is: what it held is lost
                log.warning("labq's owner %s does not answer (%s): its attempts are lost", name, _short(exc))
        # Above the epoch of every life before (a clock behind on another head cannot undo it).
        self.epoch = max([self.epoch, *(info.epoch + 1 for _, _, info in found)])
        adopted: list[Adopted] = []
        for name, actor, info in found:
            try:
                held = [(Held.from_json(h), refs[0])
                        for h, refs in ray.get(actor.adopt.remote(self.epoch), timeout=NODE_OP_SECONDS)]
            except Exception as exc:
                log.warning("labq's owner %s did not hand over its attempts (%s): they are lost", name, _short(exc))
                continue
            if info.version == OWNER_VERSION:
                self._owners[info.node_id] = actor
            elif held:
                log.warning("an owner of labq %s on node %s holds %d tasks: they finish under it; new attempts "
                            "start under this labq's (%s) owner", info.version, info.node_id[:8], len(held),
                            OWNER_VERSION)
                self._older[name] = (actor, {h.key for h, _ in held})
            else:
                self._end_owner(name, actor)
            for h, ref in held:
                self._tasks[h.key] = _Owned(actor, info.node_id, ref=ref)
                adopted.append(Adopted(handle=h.key, held=h, node_id=info.node_id))
        return adopted

    def release(self, handles: list[Handle]) -> None:
        """The ends of ``handles`` are recorded: their owners may forget them.
        An owner of an older labq that holds nothing more is ended."""
        self.flush()  # a launch still queued must reach its owner before the forget
        by_owner: dict[str, tuple[Any, list[str]]] = {}
        for key in handles:
            owned = self._tasks.pop(key, None)
            if owned is not None:
                by_owner.setdefault(_actor_id(owned.owner), (owned.owner, []))[1].append(key)
        for actor, keys in by_owner.values():
            try:
                actor.forget.remote(keys)
            except Exception as exc:  # a dead owner forgot them anyway
                log.debug("forget on an owner: %s", exc)
        for name, (actor, keys) in list(self._older.items()):
            keys.difference_update(by_owner.get(_actor_id(actor), (None, []))[1])
            if not keys:
                del self._older[name]
                self._end_owner(name, actor)

    def _end_owner(self, name: str, actor: Any) -> None:
        log.info("ending labq's owner %s: it holds no attempt", name)
        try:
            ray.kill(actor, no_restart=True)
        except Exception as exc:
            log.debug("ending %s: %s", name, exc)

    def end_idle_owners(self) -> int:
        """End every owner of this home that holds nothing (a stop with nothing
        running, a test's end); returns how many."""
        ended = 0
        for name, actor in self.owners():
            try:
                info = OwnerInfo.from_json(ray.get(actor.about.remote(), timeout=NODE_OP_SECONDS))
            except Exception:
                continue
            if info.held == 0:
                self._end_owner(name, actor)
                ended += 1
        self._owners.clear()
        return ended

    @staticmethod
    def read_gpus(node_ids: list[str]) -> dict[str, ray.ObjectRef]:
        """Start one NVML reading on each node; collect with :meth:`wait` and :meth:`value`."""
        return {n: _remote_telemetry.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n, soft=False))
                .remote() for n in node_ids}

    @staticmethod
    def value(ref: ray.ObjectRef) -> Any:
        """A finished helper task's return value, or None if it failed."""
        try:
            return ray.get(ref, timeout=5)
        except Exception as exc:  # a node that died, a missing driver: no telemetry this time
            log.debug("telemetry %s: %s", ref, exc)
            return None

    def ready(self, handles: list[Any], timeout: float = 0.0) -> list[Any]:
        """Every handle whose task has ended now; with a timeout, block until
        one has.  A handle is a task's key, or a telemetry reading's ref."""
        if not handles:
            return []
        self.flush()
        done: list[Any] = []
        by_ref: dict[Any, Any] = {}
        for handle in handles:
            if not isinstance(handle, str):
                by_ref[handle] = handle
                continue
            task = self._tasks.get(handle)
            if task is not None and task.refused is not None:
                done.append(handle)  # refused, or its owner gone: ended already
            elif task is not None and task.ref is not None:
                by_ref[task.ref] = handle
        refs = list(by_ref)
        if not refs:
            return done
        if timeout > 0 and not done:
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
            if not ready:
                return done
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        return done + [by_ref[r] for r in ready]

    def wait_any(self, keys: list[str], timeout: float) -> None:
        """Block until one of ``keys`` has ended or ``timeout`` passes."""
        self.ready(keys, timeout=timeout)

    def outcome(self, key: str) -> TaskEnd:
        """How a finished single attempt ended."""
        end, result = self._end_of(key)
        return end if result is None else TaskEnd.returned(WorkerResult.from_json(result))

    def pack_outcomes(self, key: str, count: int) -> list[TaskEnd]:
        """How each job of a finished pack ended; when the pack itself ended in
        a Ray error, that error for every job (with no result: the scheduler
        asks each job's node what it left)."""
        end, results = self._end_of(key)
        if results is None:
            return [end] * count
        return [TaskEnd.returned(WorkerResult.from_json(r)) for r in results]

    def _end_of(self, key: str) -> tuple[TaskEnd, Any]:
        task = self._tasks.get(key)
        if task is None:
            return TaskEnd(AttemptState.LOST, EndCause.WORKER_DIED, error="unknown task"), None
        if task.refused is not None:
            return task.refused, None
        end, result = self._end(task.ref)
        return self._after_error(task, end), result

    def _after_error(self, owned: _Owned, end: TaskEnd) -> TaskEnd:
        """An owner that died: was it the owner alone, or its node?  Ray takes
        seconds to call a node dead; a new owner there answering (or not) says
        at once, so a requeued job is not placed on a dead node meanwhile."""
        if end.cause is not EndCause.OWNER_DIED:
            return end
        self._owner_died(owned)
        if self._node_answers(owned.node_id):
            return end
        return replace(end, cause=EndCause.NODE_DIED,
                       error=f"its node does not answer (labq's owner there died with it): {end.error}")

    def _node_answers(self, node_id: str) -> bool:
        """Whether a (new) owner on ``node_id`` answers within seconds; asked at
        most once per node every few seconds (several attempts die together)."""
        now = time.monotonic()
        asked = self._probes.get(node_id)
        if asked is not None and now - asked[0] < NODE_OP_SECONDS:
            return asked[1]
        try:
            ray.get(self._owner(node_id).about.remote(), timeout=PROBE_SECONDS)
            alive = True
        except Exception:
            self._owners.pop(node_id, None)
            alive = False
        self._probes[node_id] = (now, alive)
        return alive

    @staticmethod
    def _end(ref: ray.ObjectRef) -> tuple[TaskEnd, Any]:
        """(the end, None) when the task ended in a Ray error, else (a success, what it returned)."""
        try:
            return TaskEnd(AttemptState.SUCCEEDED, EndCause.RETURNED), ray.get(ref, timeout=30)
        except Exception as exc:
            return _classify(exc), None

    def cancel(self, key: str, force: bool) -> None:
        """Asked of the task's owner: only the owner of a Ray task can cancel it."""
        self.flush()
        owned = self._tasks.get(key)
        if owned is None:
            return
        if owned.ref is None:  # the owner has not taken the launch yet (a slow owner): cancel once it has
            owned.cancel_pending = bool(owned.cancel_pending) or force
            return
        self._send_cancel(key, owned, force)

    @staticmethod
    def _send_cancel(key: str, owned: _Owned, force: bool) -> None:
        try:
            owned.owner.cancel.remote(key, force)
        except Exception as exc:  # Ray gone: nothing left to stop
            log.debug("cancel %s: %s", key, exc)

    # ------------------------------------------------------------ on an attempt's node

    def _is_here(self, node_id: str | None) -> bool:
        """Whether ``node_id`` is this process's node (or unknown: then only here can be asked)."""
        if node_id is None:
            return True
        if self._here is None:
            try:
                self._here = self.local_node_id()
            except Exception:  # Ray gone: nothing but here can be asked anyway
                return True
        return node_id == self._here

    def _ask_owner(self, node_id: str, method: str, *args: Any) -> Any:
        """Ask ``node_id``'s owner to do ``method`` there and wait for its answer
        (None if it does not answer in NODE_OP_SECONDS: dead, or Ray going down;
        at once when it did not answer a moment ago)."""
        probed = self._probes.get(node_id)
        if probed is not None and not probed[1] and time.monotonic() - probed[0] < NODE_OP_SECONDS:
            return None
        try:
            return ray.get(getattr(self._owner(node_id), method).remote(*args), timeout=NODE_OP_SECONDS)
        except Exception as exc:
            log.debug("node %s did not answer %s: %s", node_id[:8], method, exc)
            self._owners.pop(node_id, None)  # a dead owner is started again next time
            self._probes[node_id] = (time.monotonic(), False)
            return None

    def trace(self, node_id: str | None, run_dir: str) -> AttemptTrace:
        """What the attempt's node holds of it: read here for this node, else by
        its owner.  A node that does not answer is read here instead: on a
        shared disk the run dir is the same."""
        data = None if self._is_here(node_id) else self._ask_owner(node_id, "trace", run_dir)
        return AttemptTrace.from_json(data if data is not None else node_ops.trace(run_dir))

    def gpu_ids(self, node_id: str | None, run_dir: str) -> list[int] | None:
        """Read on this node only (every pass while a GPU attempt starts): for an
        attempt elsewhere the policy's plan stands."""
        return node_ops.gpu_ids(run_dir) if self._is_here(node_id) else None

    def end_process_group(self, node_id: str | None, run_dir: str) -> None:
        if self._is_here(node_id):
            node_ops.end_process_group(run_dir)
        else:
            self._ask_owner(node_id, "end_process_group", run_dir)

    def curves_since(self, node_id: str | None, reads: list[tuple[str, int]]) -> list[tuple[int, bytes]]:
        """Read on the attempts' node by its owner; here when that is this node,
        or when it does not answer (on a shared disk the run dirs are the same)."""
        data = None if self._is_here(node_id) else self._ask_owner(node_id, "curves_since", reads)
        return data if data is not None else node_ops.curves_since(reads)

    def signal_attempts(self, node_id: str | None, signals: list[tuple[str, str, str]]) -> None:
        if self._is_here(node_id) or self._ask_owner(node_id, "signal_attempts", signals) is None:
            node_ops.signal_attempts(signals)  # here, or a node that did not answer: a shared disk, maybe

    @staticmethod
    def keep_bundle(data: bytes, run_dir: str) -> None:
        node_ops.keep_bundle(data, run_dir)

    @staticmethod
    def artifacts_bundle(run_dir: str) -> bytes:
        return node_ops.artifacts_bundle(run_dir)


def _use_token_auth_if_available() -> None:
    """Ray 2.60 clusters use token auth by default, but a driver joining one only
    turns it on when told; do what `ray start` does: use the token if one exists
    (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) and no mode is set."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # an older Ray without token auth
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _pip_error(exc: BaseException) -> str:
    """pip's own complaint out of Ray's long setup report (the ERROR lines)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return " ".join(errors)[:800] if errors else _short(exc)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _short(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:500]


def _cause(exc: BaseException) -> str:
    """What went wrong inside a task, not Ray's wrapping of it: the original
    exception ("OSError: [Errno 28] No space left on device"), else the last
    line of Ray's report, without its terminal colours."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return _ANSI.sub("", f"{cause.__class__.__name__}: {cause}").strip().splitlines()[0][:500]
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return (lines[-1] if lines else exc.__class__.__name__)[:500]


def _classify(exc: BaseException) -> TaskEnd:
    """The attempt end a Ray error stands for.  An error of a call to an owner
    that carries a Ray error (Ray wraps what a callee raises) is looked through."""
    from ray import exceptions as rex

    lost, failed = AttemptState.LOST, AttemptState.FAILED
    if isinstance(exc, rex.RayTaskError) and isinstance(getattr(exc, "cause", None), rex.RayError):
        return _classify(exc.cause)
    if isinstance(exc, rex.TaskCancelledError):
        return TaskEnd(AttemptState.CANCELLED, EndCause.CANCELLED, error="cancelled")
    if isinstance(exc, (rex.ActorDiedError, rex.ActorUnavailableError, rex.OwnerDiedError)):
        return TaskEnd(lost, EndCause.OWNER_DIED, error=(
            "labq's owner of the node's attempts died (killed, or its node or Ray went down), and Ray ended the "
            f"attempt with it: {exc.__class__.__name__}"))
    if isinstance(exc, rex.OutOfMemoryError):
        return TaskEnd(AttemptState.OUT_OF_MEMORY, EndCause.HOST_OOM, error=_short(exc))
    if isinstance(exc, rex.WorkerCrashedError):  # Ray's text points at its own logs; say what it means
        return TaskEnd(lost, EndCause.WORKER_DIED, error=(
            "WorkerCrashedError: the worker process died while running the job (killed by a signal: the "
            "kernel's out-of-memory killer, a kill -9, or a crash in native code; Ray does not say which); "
            "its output so far is in `labq logs`"))
    if isinstance(exc, (rex.NodeDiedError, rex.LocalRayletDiedError, rex.TaskUnschedulableError)):
        # The node, not just the worker, is gone: not the job's fault.
        return TaskEnd(lost, EndCause.NODE_DIED, error=f"{exc.__class__.__name__}: {_short(exc)}")
    if isinstance(exc, rex.ObjectLostError):
        return TaskEnd(lost, EndCause.WORKER_DIED, error=f"{exc.__class__.__name__}: {_short(exc)}")
    if isinstance(exc, rex.RuntimeEnvSetupError):
        return TaskEnd(failed, EndCause.ENV_FAILED, error="could not install the stage's env.pip packages on "
                       f"the node: {_pip_error(exc)}")
    if isinstance(exc, rex.RayTaskError):
        if isinstance(getattr(exc, "cause", None), KeyboardInterrupt):
            return TaskEnd(AttemptState.CANCELLED, EndCause.CANCELLED, error="cancelled")
        return TaskEnd(failed, EndCause.WORKER_ERROR, error=f"worker error: {_cause(exc)}")
    if isinstance(exc, rex.RayError):
        return TaskEnd(lost, EndCause.WORKER_DIED, error=f"{exc.__class__.__name__}: {_short(exc)}")
    raise exc


def _is_ray_error(exc: BaseException) -> bool:
    from ray import exceptions as rex

    return isinstance(exc, rex.RayError)


def _actor_id(actor: Any) -> str:
    return actor._actor_id.hex()
