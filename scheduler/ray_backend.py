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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from scheduler.states import AttemptState, worker_end
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

# Ray settings for the local Ray labq starts itself.  Ray keeps idle worker
# processes beyond one per CPU for a second only; labq runs fractional-CPU jobs
# (20 workers on 2 cores at cpu 0.1), so a gap of a second between waves (a
# stage boundary, a sweep submitted a moment after the last) would kill them
# and the next wave would start them again, at about 0.3 s of CPU each.  Ten
# seconds keeps the pool through such gaps and still frees its memory soon
# after the queue empties.  A cluster takes the same from `ray start`'s
# environment (RAY_idle_worker_killing_time_threshold_ms), see cluster.yaml.
LOCAL_RAY_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 10_000}


@dataclass(frozen=True)
class RayNode:
    node_id: str
    address: str
    alive: bool
    resources: dict[str, float]


class RayBackend:
    def __init__(self, address: str | None = None, num_cpus: float | None = None, num_gpus: int | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self._uploaded: dict[str, str] = {}
        self._pack_remotes: dict[tuple, Any] = {}

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

    def nodes(self) -> list[RayNode]:
        return [RayNode(node_id=n["NodeID"], address=n.get("NodeManagerAddress", ""), alive=bool(n.get("Alive")),
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

    def _code_for(self, task: dict[str, Any], node_id: str | None, package: str | None) -> None:
        head = task.get("collect_to_node")
        if head and node_id != head:  # another node, no shared LABQ_HOME
            self.share_code(package)

    # ------------------------------------------------------------ tasks

    def launch(self, task: dict[str, Any], *, cpu: float, gpu: float, memory: int | None,
               custom: dict[str, float], node_id: str | None, package: str | None, pip: list[str] | None = None,
               fresh_worker: bool = False) -> ray.ObjectRef:
        self._code_for(task, node_id, package)
        options = _options(f"labq-job-{task['job_id']}-{task['attempt']}", cpu, gpu, memory, custom, node_id, pip)
        remote = _remote_gpu_attempt if fresh_worker else _remote_attempt
        return remote.options(**options).remote(task)

    def launch_pack(self, tasks: list[dict[str, Any]], *, cpu: float, memory: int | None,
                    custom: dict[str, float], node_id: str | None, package: str | None,
                    pip: list[str] | None = None) -> ray.ObjectRef:
        """One task that runs ``tasks`` one after another with one job's share
        (no GPU: packs are CPU jobs); read its end with :meth:`pack_outcomes`."""
        self._code_for(tasks[0], node_id, package)
        key = (cpu, memory, tuple(sorted(custom.items())), node_id, tuple(pip or ()))
        remote = self._pack_remotes.get(key)
        if remote is None:
            # .options() validates each call (~1 ms): one per shape, node and
            # environment, not one per pack.
            if len(self._pack_remotes) >= 256:
                self._pack_remotes.clear()
            remote = self._pack_remotes[key] = _remote_pack.options(
                **_options("labq-pack", cpu, 0, memory, custom, node_id, pip))
        return remote.remote(tasks)

    @classmethod
    def pack_outcomes(cls, ref: ray.ObjectRef, count: int) -> list[tuple[AttemptState, dict[str, Any] | None, str | None]]:
        """(attempt state, result, error) of each job of a finished pack; when
        the pack itself ended in a Ray error, that error for every job (with no
        result: the scheduler reads what each job left in its run dir)."""
        state, results, error = cls.outcome(ref, pack=True)
        if results is None:
            return [(state, None, error)] * count
        return [worker_end(r) for r in results]

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
    def wait(refs: list[ray.ObjectRef], timeout: float) -> list[ray.ObjectRef]:
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

    @staticmethod
    def outcome(ref: ray.ObjectRef, pack: bool = False) -> tuple[AttemptState, Any, str | None]:
        """(attempt state, result, error) of a finished task (with ``pack``, the
        result is the pack's list of results)."""
        from ray import exceptions as rex

        try:
            result = ray.get(ref, timeout=30)
        except rex.TaskCancelledError:
            return AttemptState.CANCELLED, None, "cancelled"
        except rex.OutOfMemoryError as exc:
            return AttemptState.OUT_OF_MEMORY, None, _short(exc)
        except rex.WorkerCrashedError:  # Ray's text points at its own logs; say what it means
            return AttemptState.LOST, None, ("WorkerCrashedError: the worker process died while running the job "
                                             "(killed by a signal: the kernel's out-of-memory killer, a kill -9, "
                                             "or a crash in native code; Ray does not say which); its output so "
                                             "far is in `labq logs`")
        except (rex.NodeDiedError, rex.LocalRayletDiedError, rex.ObjectLostError,
                rex.TaskUnschedulableError) as exc:
            return AttemptState.LOST, None, f"{exc.__class__.__name__}: {_short(exc)}"
        except rex.RuntimeEnvSetupError as exc:
            return AttemptState.FAILED, None, f"could not install the stage's env.pip packages on the node: {_pip_error(exc)}"
        except rex.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, rex.TaskCancelledError) or isinstance(getattr(exc, "cause", None), KeyboardInterrupt):
                return AttemptState.CANCELLED, None, "cancelled"
            return AttemptState.FAILED, None, f"worker error: {_cause(exc)}"
        except rex.RayError as exc:
            return AttemptState.LOST, None, f"{exc.__class__.__name__}: {_short(exc)}"
        if pack:
            return AttemptState.SUCCEEDED, result, None
        return worker_end(result)

    @staticmethod
    def cancel(ref: ray.ObjectRef, force: bool) -> None:
        try:
            ray.cancel(ref, force=force)
        except Exception as exc:  # already finished, or Ray gone: nothing left to stop
            log.debug("cancel %s: %s", ref, exc)


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
