"""Run one attempt of one job: the body of labq's Ray task.

The worker owns everything that happens on the node: the run directory, the
job's stdout/stderr, its context, the subprocess of a command job and its
process group, peak memory, and the result file.  It returns the result instead
of raising for a failing job, so the scheduler can tell "the job failed" (a
result with an error) from "the worker died" (a Ray error).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from jobs.api import JobContext, Upstream, set_current
from workers import bundle
from workers.paths import RunPaths

MAX_ERROR_CHARS = 8000
RSS_SAMPLE_SECONDS = 0.2
KILL_GRACE_SECONDS = 3.0


def run_attempt(task: dict[str, Any]) -> dict[str, Any]:
    """Run the job described by ``task`` (built by the scheduler) and return its
    result dict; the same dict is written to ``result.json`` in the run dir."""
    paths = RunPaths(Path(task["run_dir"]))
    paths.create()
    node_id, gpu_ids = _placement()
    _receive_inputs(task.get("inputs", []))
    ctx = JobContext(
        job_id=task["job_id"], attempt=task["attempt"], experiment=task["experiment"], stage=task["stage"],
        params=task["params"], run_dir=paths.root,
        inputs={up["stage"]: Upstream(job_id=up["job_id"], stage=up["stage"], params=up["params"],
                                      run_dir=Path(up["run_dir"]), metrics=up["metrics"])
                for up in task.get("inputs", [])},
        gpu_ids=gpu_ids, resources=task.get("resources", {}),
        previous_run_dir=Path(task["previous_run_dir"]) if task.get("previous_run_dir") else None,
        cache_dir=Path(task["cache_dir"]) if task.get("cache_dir") else None,
    )
    _ensure_code_on_path(task.get("code_dir"))
    started = time.time()
    sampler = _RssSampler(limit=(task.get("resources") or {}).get("memory"), paths=paths)
    sampler.start()
    returned: Any = None
    error = None
    exit_code = 0
    try:
        if task["target_kind"] == "callable":
            returned, error = _run_callable(task["target"], ctx, paths, sampler)
            exit_code = 0 if error is None else 1
        else:
            exit_code = _run_command(task["target"], ctx, paths, sampler)
            if sampler.exceeded:
                error = sampler.exceeded
            elif exit_code != 0:
                error = f"command exited with code {exit_code}" + _tail(paths.stderr)
    finally:
        sampler.stop()
    metrics, _ = paths.read_reported_metrics()
    if isinstance(returned, dict):
        metrics.update(returned)
    elif isinstance(returned, (int, float)) and not isinstance(returned, bool):
        metrics["result"] = returned
    result = {
        "outcome": "succeeded" if error is None else ("out_of_memory" if sampler.exceeded else "failed"),
        "metrics": _plain(metrics),
        "artifacts": paths.list_artifacts(),
        "exit_code": exit_code,
        "error": error,
        "started_at": started,
        "ended_at": time.time(),
        "node_id": node_id,
        "gpu_ids": gpu_ids,
        "peak_rss": sampler.peak,
        "pid": os.getpid(),
    }
    paths.write_result(result)
    head = task.get("collect_to_node")
    if head and node_id and node_id != head:
        # No shared filesystem with the head: carry the run dir back in the result.
        try:
            result = {**result, "bundle": bundle.pack(paths.root)}
        except bundle.BundleTooLarge as exc:
            result = {**result, "bundle_error": str(exc)}
    return result


def _receive_inputs(inputs: list[dict[str, Any]]) -> None:
    """Upstream artifacts the scheduler sent because this node cannot read the
    upstream run dir: unpack them at the same path."""
    for up in inputs:
        data = up.pop("bundle", None)
        if data and not (Path(up["run_dir"]) / "artifacts").exists():
            bundle.unpack(data, Path(up["run_dir"]))


def _placement() -> tuple[str | None, list[str]]:
    """Node id and the GPU ids Ray assigned (CUDA_VISIBLE_DEVICES is set from them)."""
    if "ray" not in sys.modules:
        return None, []
    import ray

    if not ray.is_initialized():
        return None, []
    return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]


def _ensure_code_on_path(code_dir: str | None) -> None:
    """Ray's working_dir becomes the cwd; make sure the user's modules beside the
    spec import from it (and from code_dir when run without Ray)."""
    for path in (code_dir, os.getcwd()):
        if path and path not in sys.path:
            sys.path.insert(0, path)


def _run_callable(target: str, ctx: JobContext, paths: RunPaths, sampler: "_RssSampler") -> tuple[Any, str | None]:
    with _captured_output(paths):
        try:
            module_name, _, func_name = target.partition(":")
            func: Callable[[JobContext], Any] = getattr(importlib.import_module(module_name), func_name)
            sampler.job_thread = threading.get_ident()  # where the memory watchdog interrupts
            set_current(ctx)
            try:
                return func(ctx), None
            finally:
                set_current(None)
        except KeyboardInterrupt:
            if sampler.exceeded:  # our own memory watchdog interrupted the job
                sys.stderr.write(sampler.exceeded + "\n")
                return None, sampler.exceeded
            raise  # a cancel: let Ray see it
        except BaseException:
            text = traceback.format_exc()
            sys.stderr.write(text)
            return None, text[-MAX_ERROR_CHARS:]


@contextlib.contextmanager
def _captured_output(paths: RunPaths) -> Iterator[None]:
    """Send both Python's and C-level stdout/stderr to the run dir for the length
    of the job, then give the (reused) Ray worker its own back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    out = open(paths.stdout, "a", buffering=1, encoding="utf-8", errors="replace")
    err = open(paths.stderr, "a", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        for stream in (out, err):
            stream.flush()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        out.close()
        err.close()


def command_line(template: str, params: dict[str, Any]) -> str:
    """Fill ``{param}`` placeholders with shell-quoted values: a param can never
    inject shell syntax."""
    return template.format_map({k: shlex.quote(str(v)) for k, v in params.items()})


def _run_command(template: str, ctx: JobContext, paths: RunPaths, sampler: "_RssSampler") -> int:
    import json

    env = dict(os.environ)
    env.update({
        "LABQ_JOB_ID": str(ctx.job_id), "LABQ_ATTEMPT": str(ctx.attempt), "LABQ_EXPERIMENT": ctx.experiment,
        "LABQ_STAGE": ctx.stage, "LABQ_RUN_DIR": str(ctx.run_dir), "LABQ_PARAMS": json.dumps(ctx.params, default=str),
        "LABQ_ARTIFACTS_DIR": str(ctx.artifacts_dir), "LABQ_METRICS_FILE": str(paths.metrics),
        "LABQ_INPUTS": json.dumps({s: str(u.run_dir) for s, u in ctx.inputs.items()}),
        "PYTHONUNBUFFERED": "1",
    })
    with open(paths.stdout, "ab") as out, open(paths.stderr, "ab") as err:
        proc = subprocess.Popen(["/bin/sh", "-c", command_line(template, ctx.params)], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env, preexec_fn=_child_setup)
    paths.pgid.write_text(str(proc.pid))
    sampler.command_pgid = proc.pid
    try:
        while True:
            try:
                code = proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                if sampler.exceeded:
                    kill_process_group(proc.pid, grace=1.0)
                continue
            kill_process_group(proc.pid, grace=1.0)  # background children die with the job
            return code
    except BaseException:  # cancel (KeyboardInterrupt) or worker shutdown
        kill_process_group(proc.pid)
        raise


def _child_setup() -> None:
    """In the child before exec: its own session (so the whole tree can be signalled
    as one group), and death with its parent on Linux so a force-killed worker
    never leaves an orphaned command behind."""
    os.setsid()
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_process_group(pgid: int, grace: float = KILL_GRACE_SECONDS) -> bool:
    """SIGTERM the group, then SIGKILL what is left after ``grace`` seconds.
    Returns True if the group existed."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except FileNotFoundError:
        return ""
    return (": " + " | ".join(text))[-MAX_ERROR_CHARS:] if text else ""


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars to Python numbers so the result is JSON without surprises."""
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and callable(value.item):
            try:
                value = value.item()
            except (ValueError, TypeError):
                value = str(value)
        out[str(key)] = value
    return out


OOM_MARKER = "out_of_memory"


class _RssSampler(threading.Thread):
    """Peak resident memory of this process and its children, sampled; and the
    enforcement of the job's ``memory`` request, which Ray itself only counts.

    The job's usage is the tree's RSS above what the Ray worker used before the
    job started.  Over the limit on two samples in a row: a command's process
    group is killed by the command loop; a Python job gets KeyboardInterrupt, and
    if that cannot land (blocked in C) the worker kills itself after a grace
    period, leaving a marker the scheduler reads as out-of-memory."""

    def __init__(self, limit: int | None = None, paths: RunPaths | None = None) -> None:
        super().__init__(daemon=True, name="labq-rss")
        self.peak: int | None = None
        self.limit = limit
        self.paths = paths
        self.exceeded: str | None = None
        self.command_pgid: int | None = None
        self.job_thread: int | None = None
        self._stop_event = threading.Event()
        # Measured here, in the caller's thread, before the job starts: a job that
        # allocates at once must not hide its memory inside the baseline.
        self._baseline = self._tree_rss()

    @staticmethod
    def _tree_rss() -> int:
        try:
            import psutil
        except ImportError:
            return 0
        me = psutil.Process()
        total = 0
        try:
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        except psutil.Error:
            pass
        return total

    def run(self) -> None:
        baseline = self._baseline
        over = 0
        while True:
            total = self._tree_rss()
            self.peak = max(self.peak or 0, total)
            if self.limit and not self.exceeded:
                over = over + 1 if total - baseline > self.limit else 0
                if over >= 2:
                    self._exceed(total - baseline)
            if self._stop_event.wait(RSS_SAMPLE_SECONDS):
                return

    def _exceed(self, used: int) -> None:
        self.exceeded = (f"out of memory: the job used {used / 2**20:.0f} MiB, more than its memory request of "
                         f"{self.limit / 2**20:.0f} MiB")
        if self.command_pgid is not None:
            return  # the command loop kills the group
        if self.job_thread is not None:
            # KeyboardInterrupt in the job's own thread (a Ray worker's task thread
            # need not be the main one); it lands when the thread next runs Python.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.job_thread),
                                                       ctypes.py_object(KeyboardInterrupt))
        if self._stop_event.wait(KILL_GRACE_SECONDS):
            return
        if self.paths is not None:  # still running: blocked in C, so end the worker
            with contextlib.suppress(OSError):
                (self.paths.root / OOM_MARKER).write_text(self.exceeded)
        os.kill(os.getpid(), signal.SIGKILL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=1)
