"""The only module of labq that talks to Ray.

It connects (or starts a local Ray), reports node capacity, launches one task
per attempt with the job's resources pinned to the node the policy chose, waits
on many tasks at once, cancels, and translates Ray's errors into attempt
outcomes.  Ray's task retries are off: labq counts attempts itself so that every
try is recorded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from contract.attempt import AttemptTask, AttemptTrace, WorkerResult
from scheduler.backend import Handle, NodeInfo, TaskEnd
from scheduler.records import EndCause
from scheduler.states import AttemptState
from workers import node_ops
from workers.attempt import run_attempt, run_attempts
from workers.workdir import CODE_NAMESPACE, code_key
from workers.gpu import node_telemetry

log = logging.getLogger("labq.ray")

_remote_attempt = ray.remote(max_retries=0)(run_attempt)
# A job on a real GPU gets a fresh worker process: a worker that has started
# CUDA keeps its first CUDA_VISIBLE_DEVICES and its torch memory cap, so reusing
# it could put the next job on the wrong card (Ray only defaults max_calls=1 for
# GPU functions declared with num_gpus, not for num_gpus given in .options()).
_remote_gpu_attempt = ray.remote(max_retries=0, max_calls=1)(run_attempt)
# A pack of short jobs run one after another in one task (scheduler.packing).
_remote_pack = ray.remote(max_retries=0)(run_attempts)
# NVML readings of one node's GPUs, for `labq nodes`: no CPU held, so it never
# waits behind the jobs it reports on.
_remote_telemetry = ray.remote(num_cpus=0, max_retries=0)(node_telemetry)
# What the scheduler asks of an attempt's node (workers.node_ops), run there.
_remote_trace = ray.remote(num_cpus=0, max_retries=0)(node_ops.trace)
_remote_end_group = ray.remote(num_cpus=0, max_retries=0)(node_ops.end_process_group)
# How long the scheduler waits for a node to answer about one of its attempts.
NODE_OP_SECONDS = 10.0

# Ray settings for the local Ray labq starts itself.  Ray keeps idle worker
# processes beyond one per CPU for a second only; labq runs fractional-CPU jobs
# (20 workers on 2 cores at cpu 0.1), so a gap of a second between waves (a
# stage boundary, a sweep submitted a moment after the last) would kill them
# and the next wave would start them again, at about 0.3 s of CPU each.  Ten
# seconds keeps the pool through such gaps and still frees its memory soon
# after the queue empties.  A cluster takes the same from `ray start`'s
# environment (RAY_idle_worker_killing_time_threshold_ms), see cluster.yaml.
LOCAL_RAY_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 10_000}


class RayBackend:
    def __init__(self, address: str | None = None, num_cpus: float | None = None, num_gpus: int | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self._uploaded: dict[str, str] = {}
        self._pack_remotes: dict[tuple, Any] = {}
        self._here: str | None = None

    # ------------------------------------------------------------ connection

    def connect(self) -> None:
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"log_to_driver": False, "namespace": "labq", "configure_logging": False}
        if self.address:
            _use_token_auth_if_available()
            ray.init(address=self.address, **kwargs)
        else:
            # "local": always a fresh Ray of labq's own, even when a `ray start`
            # cluster happens to run on this machine (plain ray.init() would join it).
            ray.init(address="local", num_cpus=self.num_cpus, num_gpus=self.num_gpus, include_dashboard=False,
                     _system_config=LOCAL_RAY_SYSTEM_CONFIG, **kwargs)
        self._uploaded.clear()
        self._pack_remotes.clear()
        self._here = None

    @staticmethod
    def session_dir() -> str | None:
        """The session directory of the Ray this process started or joined: every
        process of a local Ray names it on its command line."""
        try:
            return ray._private.worker._global_node.get_session_dir_path()
        except AttributeError:
            return None

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
        if ray.is_initialized():
            ray.shutdown()

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
               fresh_worker: bool = False) -> ray.ObjectRef:
        self._code_for(task, node_id)
        share = task.resources
        options = _options(f"labq-job-{task.job_id}-{task.attempt}", share.cpu, share.gpu, share.memory,
                           share.custom, node_id, pip)
        remote = _remote_gpu_attempt if fresh_worker else _remote_attempt
        return remote.options(**options).remote(task.to_json())

    def launch_pack(self, tasks: list[AttemptTask], *, node_id: str | None,
                    pip: list[str] | None = None) -> ray.ObjectRef:
        """One task that runs ``tasks`` one after another with the first one's
        share (no GPU: packs are CPU jobs); read its end with :meth:`pack_outcomes`."""
        self._code_for(tasks[0], node_id)
        share = tasks[0].resources
        cpu, memory, custom = share.cpu, share.memory, share.custom
        key = (cpu, memory, tuple(sorted(custom.items())), node_id, tuple(pip or ()))
        remote = self._pack_remotes.get(key)
        if remote is None:
            # .options() validates each call (~1 ms): one per shape, node and
            # environment, not one per pack.
            if len(self._pack_remotes) >= 256:
                self._pack_remotes.clear()
            remote = self._pack_remotes[key] = _remote_pack.options(
                **_options("labq-pack", cpu, 0, memory, custom, node_id, pip))
        return remote.remote([t.to_json() for t in tasks])

    @classmethod
    def pack_outcomes(cls, ref: ray.ObjectRef, count: int) -> list[TaskEnd]:
        """How each job of a finished pack ended; when the pack itself ended in
        a Ray error, that error for every job (with no result: the scheduler
        asks each job's node what it left)."""
        end, results = cls._end(ref)
        if results is None:
            return [end] * count
        return [TaskEnd.returned(WorkerResult.from_json(r)) for r in results]

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

    @staticmethod
    def ready(refs: list[ray.ObjectRef], timeout: float = 0.0) -> list[ray.ObjectRef]:
        """Every ref that is done now; with a timeout, block until at least one is."""
        if not refs:
            return []
        if timeout > 0:
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
            if not ready:
                return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        return ready

    @staticmethod
    def wait_any(refs: list[ray.ObjectRef], timeout: float) -> None:
        """Block until one of ``refs`` is done or ``timeout`` passes."""
        if refs:
            ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)

    @classmethod
    def outcome(cls, ref: ray.ObjectRef) -> TaskEnd:
        """How a finished single attempt ended."""
        end, result = cls._end(ref)
        return end if result is None else TaskEnd.returned(WorkerResult.from_json(result))

    @staticmethod
    def _end(ref: ray.ObjectRef) -> tuple[TaskEnd, Any]:
        """(the end, None) when the task ended in a Ray error, else (a success, what it returned)."""
        from ray import exceptions as rex

        lost, failed = AttemptState.LOST, AttemptState.FAILED
        try:
            return TaskEnd(AttemptState.SUCCEEDED, EndCause.RETURNED), ray.get(ref, timeout=30)
        except rex.TaskCancelledError:
            return TaskEnd(AttemptState.CANCELLED, EndCause.CANCELLED, error="cancelled"), None
        except rex.OutOfMemoryError as exc:
            return TaskEnd(AttemptState.OUT_OF_MEMORY, EndCause.HOST_OOM, error=_short(exc)), None
        except rex.WorkerCrashedError:  # Ray's text points at its own logs; say what it means
            return TaskEnd(lost, EndCause.WORKER_DIED, error=(
                "WorkerCrashedError: the worker process died while running the job (killed by a signal: the "
                "kernel's out-of-memory killer, a kill -9, or a crash in native code; Ray does not say which); "
                "its output so far is in `labq logs`")), None
        except (rex.NodeDiedError, rex.LocalRayletDiedError, rex.TaskUnschedulableError) as exc:
            # The node, not just the worker, is gone: not the job's fault.
            return TaskEnd(lost, EndCause.NODE_DIED, error=f"{exc.__class__.__name__}: {_short(exc)}"), None
        except rex.ObjectLostError as exc:
            return TaskEnd(lost, EndCause.WORKER_DIED, error=f"{exc.__class__.__name__}: {_short(exc)}"), None
        except rex.RuntimeEnvSetupError as exc:
            return TaskEnd(failed, EndCause.ENV_FAILED, error="could not install the stage's env.pip packages on "
                           f"the node: {_pip_error(exc)}"), None
        except rex.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, rex.TaskCancelledError) or isinstance(getattr(exc, "cause", None), KeyboardInterrupt):
                return TaskEnd(AttemptState.CANCELLED, EndCause.CANCELLED, error="cancelled"), None
            return TaskEnd(failed, EndCause.WORKER_ERROR, error=f"worker error: {_cause(exc)}"), None
        except rex.RayError as exc:
            return TaskEnd(lost, EndCause.WORKER_DIED, error=f"{exc.__class__.__name__}: {_short(exc)}"), None

    @staticmethod
    def cancel(ref: ray.ObjectRef, force: bool) -> None:
        try:
            ray.cancel(ref, force=force)
        except Exception as exc:  # already finished, or Ray gone: nothing left to stop
            log.debug("cancel %s: %s", ref, exc)

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

    def _on_node(self, node_id: str, remote: Any, *args: Any) -> Any:
        """Run ``remote`` on ``node_id`` and wait for its answer (None if the node
        does not answer in NODE_OP_SECONDS: dead, or Ray going down)."""
        try:
            ref = remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
                                 ).remote(*args)
            return ray.get(ref, timeout=NODE_OP_SECONDS)
        except Exception as exc:
            log.debug("node %s did not answer about %s: %s", node_id[:8], args[0], exc)
            return None

    def trace(self, node_id: str | None, run_dir: str) -> AttemptTrace:
        """What the attempt's node holds of it.  A node that does not answer is
        read here instead: on a shared disk the run dir is the same."""
        data = None if self._is_here(node_id) else self._on_node(node_id, _remote_trace, run_dir)
        return AttemptTrace.from_json(data if data is not None else node_ops.trace(run_dir))

    def gpu_ids(self, node_id: str | None, run_dir: str) -> list[int] | None:
        """Read on this node only (every pass while a GPU attempt starts): for an
        attempt elsewhere the policy's plan stands."""
        return node_ops.gpu_ids(run_dir) if self._is_here(node_id) else None

    def end_process_group(self, node_id: str | None, run_dir: str) -> None:
        if self._is_here(node_id):
            node_ops.end_process_group(run_dir)
        else:
            self._on_node(node_id, _remote_end_group, run_dir)

    @staticmethod
    def keep_bundle(data: bytes, run_dir: str) -> None:
        node_ops.keep_bundle(data, run_dir)

    @staticmethod
    def artifacts_bundle(run_dir: str) -> bytes:
        return node_ops.artifacts_bundle(run_dir)


def _options(name: str, cpu: float, gpu: float, memory: int | None, custom: dict[str, float],
             node_id: str | None, pip: list[str] | None) -> dict[str, Any]:
    """Ray task options for one attempt or pack: its share, pinned to the node
    the policy chose, in a Ray runtime environment with the stage's env.pip
    packages when it names any (Ray installs each distinct set once per node)."""
    options: dict[str, Any] = {"num_cpus": cpu, "num_gpus": gpu, "resources": dict(custom) or None, "name": name}
    if memory:
        options["memory"] = memory
    if pip:
        options["runtime_env"] = {"pip": {"packages": list(pip), "pip_check": False}}
    if node_id:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return options


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
