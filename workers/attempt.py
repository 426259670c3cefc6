"""Run one attempt of one job: the body of labq's Ray task.

The worker owns everything that happens on the node: the run directory, the
job's stdout/stderr, its context, the subprocess of a command job and its
process group, peak memory, GPU telemetry and the enforcement of memory and GPU
memory shares, and the result file.  It returns the result instead
of raising for a failing job, so the scheduler can tell "the job failed" (a
result with an error) from "the worker died" (a Ray error).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import resource
import signal
import string
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from contract.attempt import AttemptTask, Input, OomCause, WorkerOutcome, WorkerResult
from jobs.api import JobContext, Upstream, set_current
from workers import bundle, gpu
from workers import metrics_from as metrics_from_mod
from workers import workdir as workdir_mod
from workers.paths import RunPaths

MAX_ERROR_CHARS = 8000
RSS_SAMPLE_SECONDS = 0.2
KILL_GRACE_SECONDS = 3.0
# What the frameworks print or raise when the GPU itself is out of memory.
CUDA_OOM_TEXTS = ("CUDA out of memory", "CUDA error: out of memory", "RESOURCE_EXHAUSTED: Out of memory",
                  "OOM when allocating tensor")
CUDA_OOM_ERROR = "out of GPU memory (CUDA out of memory)"


def run_attempt(task_json: dict[str, Any]) -> dict[str, Any]:
    """Run the job described by ``task_json`` (a contract.attempt.AttemptTask,
    as JSON) and return its WorkerResult as JSON; the same is written to
    ``result.json`` in the run dir."""
    task = AttemptTask.from_json(task_json)
    # The run dir, logs and outputs are private to this account, whoever started
    # this worker (a `ray start` of a cluster keeps the caller's umask).
    os.umask(0o077)
    paths = RunPaths(Path(task.run_dir))
    paths.create()
    node_id, gpu_ids = _placement()
    if gpu_ids:  # Ray, not labq, picks the GPU inside the node: tell the scheduler which
        with contextlib.suppress(OSError):
            paths.write_gpu_ids(gpu_ids)
    _receive_inputs(task.inputs)
    snapshot = _snapshot(task, paths)
    workdir = workdir_mod.prepare(paths.root, snapshot)
    job_started_ns = time.time_ns()  # what the job changes from here on has a later ctime
    ctx = JobContext(
        job_id=task.job_id, attempt=task.attempt, experiment=task.experiment, stage=task.stage,
        params=task.params, run_dir=paths.root,
        inputs={up.stage: Upstream(job_id=up.job_id, stage=up.stage, params=up.params,
                                   run_dir=Path(up.run_dir), metrics=up.metrics)
                for up in task.inputs},
        gpu_ids=gpu_ids, resources=task.resources.to_json(),
        previous_run_dir=Path(task.previous_run_dir) if task.previous_run_dir else None,
        cache_dir=Path(task.cache_dir) if task.cache_dir else None,
        workdir=workdir, rungs=task.rungs, rung_metric=task.rung_metric,
    )
    resources = ctx.resources
    command = task.target_kind != "callable"
    stdout_patterns = (task.metrics_from or {}).get("stdout") if command else None
    follower: _StdoutMetrics | None = None  # follows a command's output for metrics_from.stdout
    nvml = gpu.open_nvml() if gpu_ids else None  # NVML only for jobs that hold a GPU
    watch = gpu.watch_for(resources, gpu_ids, nvml)
    started = time.time()
    sampler = _RssSampler(limit=resources.get("memory"), paths=paths, command=command, gpu_watch=watch,
                          record_gpu_pids=bool(gpu_ids))
    # Before the job touches a GPU: the scheduler drains this attempt's share
    # until NVML lists none of these pids, even if this worker is killed.
    sampler.record_gpu_pids({os.getpid()})
    sampler.start()
    returned: Any = None
    error = None
    exit_code = 0
    try:
        if not command:
            code_root = str(snapshot.root) if task.package else task.code_dir
            with _in_workdir(workdir, code_root, task.env_vars):
                returned, error = _run_callable(task.target, ctx, paths, sampler)
            if error is None and sampler.exceeded:  # over its share, and it returned before the interrupt landed
                error = sampler.exceeded
            exit_code = 0 if error is None else 1
        else:
            memory_total = watch.nvml.memory_total(watch.indices[0]) if watch else None
            try:
                line, args = command_line(task.target, ctx.params)
            except (ValueError, LookupError, AttributeError, TypeError) as exc:  # checked at submit; a last guard
                line, exit_code, error = None, 2, f"could not fill in the command's placeholders: {exc}"
            if line is not None:
                # A script's metrics from its output, as they appear: what early stopping judges
                follower = _StdoutMetrics(paths, stdout_patterns) if stdout_patterns else None
                try:
                    exit_code = _run_command(line, ctx, paths, sampler,
                                             {**task.env_vars,
                                              **(gpu.share_environment(resources, memory_total) if gpu_ids else {}),
                                              **args})
                finally:
                    if follower is not None:
                        follower.stop()
            if line is not None and sampler.exceeded:
                error = sampler.exceeded
            elif line is not None and exit_code != 0:
                error = f"command exited with code {exit_code}" + _tail(paths.stderr)
                if _cuda_oom_in(paths.stderr):
                    sampler.oom_cause = "cuda"
                    error = CUDA_OOM_ERROR + ": " + error
    finally:
        sampler.stop()
        gpu_usage = _gpu_usage(watch)
        if nvml is not None:
            nvml.close()
    reported, _ = paths.read_reported_metrics()  # before metrics_from's steps join metrics.jsonl
    declared = _declared_metrics(task.metrics_from, paths, workdir, follower.steps if follower else None)
    outputs, outputs_error = _collect_outputs(paths, snapshot, task.outputs_limit, job_started_ns)
    metrics = {**declared, **reported}  # what the job reported itself wins on the same name
    if outputs_error:
        metrics["outputs_error"] = outputs_error
    if isinstance(returned, dict):
        metrics.update(returned)
    elif isinstance(returned, (int, float)) and not isinstance(returned, bool):
        metrics["result"] = returned
    oom_cause = OomCause(sampler.oom_cause) if error is not None and sampler.oom_cause else None
    result = WorkerResult(
        outcome=WorkerOutcome.SUCCEEDED if error is None else (WorkerOutcome.OUT_OF_MEMORY if oom_cause
                                                               else WorkerOutcome.FAILED),
        metrics=_plain(metrics), artifacts=paths.list_artifacts(), outputs=outputs, exit_code=exit_code,
        error=error, started_at=started, ended_at=time.time(), node_id=node_id, gpu_ids=gpu_ids,
        peak_rss=sampler.peak, rss_baseline=sampler.baseline, cpu_time=sampler.cpu_time, oom_cause=oom_cause,
        gpu_usage=gpu_usage, pid=os.getpid())
    data = result.to_json()
    paths.write_result(data)
    head = task.collect_to_node
    if head and node_id and node_id != head:
        # No shared filesystem with the head: carry the run dir back in the result.
        try:
            data["bundle"] = bundle.pack(paths.root)
        except bundle.BundleTooLarge as exc:
            data["bundle_error"] = str(exc)
    return data


def run_attempts(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run a pack of short jobs (scheduler.packing) one after another in this
    worker, each exactly as :func:`run_attempt` runs a job alone, and return
    their results in order.  A job that fails returns its result like any other;
    one that ends the worker (killed, out of memory) ends the pack, and the
    scheduler sorts the rest out from their run dirs: a result.json means done,
    a run dir without one means it was running, no run dir means not started."""
    return [run_attempt(task) for task in tasks]


def _gpu_usage(watch: gpu.GpuWatch | None) -> dict[str, Any] | None:
    """The job's GPU telemetry, and which of its processes (other than this
    worker, whose CUDA context outlives a job) still hold GPU memory after it
    ended: ``pids_left`` should be empty."""
    if watch is None:
        return None
    try:
        if not watch.samples:  # a job shorter than one sampling period still reports its card and share
            watch.sample(set(), time.time())
        summary = watch.summary()
        if summary is not None:
            summary["pids_left"] = sorted(gpu.wait_gone(watch.seen - {os.getpid()}, gpu.GPU_RELEASE_SECONDS,
                                                        watch.indices, watch.nvml))
        return summary
    except Exception:  # NVML failing at the end must not lose the job's result
        return None


def _receive_inputs(inputs: tuple[Input, ...]) -> None:
    """Upstream artifacts the scheduler sent because this node cannot read the
    upstream run dir: unpack them at the same path."""
    for up in inputs:
        if up.bundle and not (Path(up.run_dir) / "artifacts").exists():
            bundle.unpack(up.bundle, Path(up.run_dir))


def _placement() -> tuple[str | None, list[str]]:
    """Node id and the GPU ids Ray assigned (CUDA_VISIBLE_DEVICES is set from them)."""
    if "ray" not in sys.modules:
        return None, []
    import ray

    if not ray.is_initialized():
        return None, []
    return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]


def _snapshot(task: AttemptTask, paths: RunPaths) -> workdir_mod.Snapshot:
    """The experiment's code on this node (extracted on first use), or, for a
    task without a code package, an empty one."""
    if not task.package:
        return workdir_mod.empty_snapshot(paths.root / ".no-snapshot")
    return workdir_mod.open_snapshot(Path(task.code_root or ""), Path(task.package), _fetch_code(Path(task.package).stem))


def _fetch_code(sha: str) -> Callable[[], bytes]:
    def fetch() -> bytes:
        from ray.experimental.internal_kv import _internal_kv_get

        data = _internal_kv_get(workdir_mod.code_key(sha), namespace=workdir_mod.CODE_NAMESPACE)
        if data is None:
            raise FileNotFoundError(f"the experiment's code {sha} is neither on this node nor in Ray")
        return data
    return fetch


# Modules this worker imported from each code root (an extracted snapshot, or a
# spec's directory): kept for later jobs of the same code, forgotten before a job
# of other code runs here.
_modules_of_root: dict[str, set[str]] = {}


@contextlib.contextmanager
def _in_workdir(workdir: Path, code_root: str | None, env_vars: dict[str, str]) -> Iterator[None]:
    """Run a Python job as a command runs: cwd in its private working directory,
    and the stage's env vars set.  The user's modules import from ``code_root``
    (the extracted snapshot: read-only, the same path for every job of that code),
    once per worker, as Ray reuses a worker for many tasks: re-running a module's
    body for every job of a sweep doubled a short job's cost.  Before a job of
    other code, the modules of the last code are forgotten, so it imports its
    own.  Afterwards the worker gets its cwd, path and environment back."""
    saved_cwd = os.getcwd()
    saved_path = list(sys.path)
    saved_env = {name: os.environ.get(name) for name in env_vars}
    for root in [r for r in _modules_of_root if r != code_root]:
        for name in _modules_of_root.pop(root):
            sys.modules.pop(name, None)
        sys.path_importer_cache.pop(root, None)
    before = set(sys.modules)
    os.chdir(workdir)
    if code_root and code_root not in sys.path:
        sys.path.insert(0, code_root)
    os.environ.update(env_vars)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        in_root = str(code_root) + os.sep if code_root else None
        in_workdir = str(workdir) + os.sep
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules.get(name), "__file__", None) or ""
            if in_root and origin.startswith(in_root):
                _modules_of_root.setdefault(code_root, set()).add(name)
            elif origin.startswith(in_workdir):  # imported through the cwd: that copy is gone after this job
                del sys.modules[name]
        sys.path_importer_cache.pop(str(workdir), None)


def _declared_metrics(metrics_from: dict[str, Any] | None, paths: RunPaths, workdir: Path,
                      followed: metrics_from_mod.StdoutSteps | None = None) -> dict[str, Any]:
    """The stage's ``metrics_from``, read once the job has ended: its steps are
    appended to metrics.jsonl (so plots draw them), its final values returned.
    ``followed``: the output was followed while the command ran
    (:class:`_StdoutMetrics`), which appended its steps and knows its finals."""
    if not metrics_from:
        return {}
    steps: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    if metrics_from.get("stdout") and followed is not None:
        final.update(followed.final)
    elif metrics_from.get("stdout"):
        found = metrics_from_mod.read_stdout(paths.stdout, metrics_from["stdout"])
        steps += found
        final.update(metrics_from_mod.final_of(found))
    problem = None
    if metrics_from.get("json"):
        try:
            values, json_steps, problem = metrics_from_mod.read_json(workdir / metrics_from["json"])
        except Exception as exc:  # JSON nested too deep to read, say: the job's result must still be kept
            values, json_steps, problem = {}, [], f"metrics_from.json: cannot read it ({exc.__class__.__name__})"
        steps += json_steps
        final.update(values)
    if steps:
        with contextlib.suppress(OSError), open(paths.metrics, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(s, default=str) + "\n" for s in steps))
    if problem:
        final["metrics_error"] = problem
    return final


class _StdoutMetrics:
    """Follows a command's stdout.log while it runs and appends the steps of
    its stage's ``metrics_from.stdout`` to metrics.jsonl as they appear (with
    the time read), so early stopping can judge a script that knows nothing of
    labq before it ends."""

    POLL_SECONDS = 0.1

    def __init__(self, paths: RunPaths, patterns: dict[str, str]):
        self._paths = paths
        self.steps = metrics_from_mod.StdoutSteps(patterns)
        self._offset = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labq-stdout-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Read what is left, the last line even without its newline."""
        self._done.set()
        self._thread.join(timeout=10)
        self._read(final=True)

    def _run(self) -> None:
        while not self._done.wait(self.POLL_SECONDS):
            self._read()

    CHUNK_BYTES = 4 << 20  # a chatty script's output is read a chunk at a time, not all at once

    def _read(self, final: bool = False) -> None:
        records: list[dict[str, Any]] = []
        try:
            with open(self._paths.stdout, "rb") as f:
                f.seek(self._offset)
                while data := f.read(self.CHUNK_BYTES):
                    self._offset += len(data)
                    records += self.steps.feed(data)
        except OSError:
            pass
        if final:
            records += self.steps.feed(b"", final=True)
        if records:
            now = time.time()
            with contextlib.suppress(OSError), open(self._paths.metrics, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps({**r, "time": now}) + "\n" for r in records))


def _collect_outputs(paths: RunPaths, snapshot: workdir_mod.Snapshot, limit: int | None, since_ns: int
                     ) -> tuple[list[dict[str, Any]], str | None]:
    """The job's outputs, moved under the run dir (workers.workdir.collect);
    a failure here is noted in the result, never the job's end."""
    outputs = workdir_mod.Outputs(limit=limit)
    try:
        workdir_mod.collect(paths.root, snapshot, limit, since_ns=since_ns, into=outputs)
        return outputs.to_json(), None
    except Exception as exc:  # whatever the job left (a tree too deep to walk...): keep what was moved
        return outputs.to_json(), f"could not collect all the outputs in {paths.root / workdir_mod.WORKDIR}: {exc}"


def _run_callable(target: str, ctx: JobContext, paths: RunPaths, sampler: "_RssSampler") -> tuple[Any, str | None]:
    with _captured_output(paths):
        try:
            module_name, _, func_name = target.partition(":")
            func: Callable[[JobContext], Any] = getattr(importlib.import_module(module_name), func_name)
            sampler.interruptible(threading.get_ident())  # where the memory watchdog interrupts
            set_current(ctx)
            _torch_before(ctx)
            try:
                return func(ctx), None
            finally:
                sampler.interruptible(None)  # from here on an interrupt would land in labq's own code
                set_current(None)
                _torch_after()
        except KeyboardInterrupt:
            if sampler.exceeded:  # our own memory watchdog interrupted the job
                sys.stderr.write(sampler.exceeded + "\n")
                return None, sampler.exceeded
            raise  # a cancel: let Ray see it
        except BaseException as exc:
            text = traceback.format_exc()
            sys.stderr.write(text)
            if is_cuda_oom(exc):
                sampler.oom_cause = "cuda"
                first = str(exc).strip().splitlines()[:1]
                head = f"{CUDA_OOM_ERROR}: {type(exc).__name__}: {first[0][:300] if first else ''}\n"
                return None, head + text[-(MAX_ERROR_CHARS - len(head)):]
            return None, text[-MAX_ERROR_CHARS:]


def is_cuda_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (by class name: the worker never imports
    torch), or an older framework's error whose text says so."""
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    text = str(exc)
    return any(t in text for t in CUDA_OOM_TEXTS)


def _cuda_oom_in(stderr: Path, tail_bytes: int = 64 * 1024) -> bool:
    """Did a command print a CUDA OOM near the end of its stderr?"""
    try:
        with open(stderr, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return False
    return any(t in text for t in CUDA_OOM_TEXTS)


def _torch_before(ctx: JobContext) -> None:
    """In a worker where an earlier job already started CUDA, apply this job's
    cap (or lift the earlier job's) before it allocates.  Never imports torch,
    and never starts CUDA for a job that may not use it: a job that imports torch
    itself calls ``ctx.cap_torch_gpu_memory()`` (labq's trainers do)."""
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "cuda", None) is not None and torch.cuda.is_initialized():
        with contextlib.suppress(Exception):  # a broken device is the job's error to meet, not the worker's
            ctx.cap_torch_gpu_memory()


def _torch_after() -> None:
    """Give the caching allocator's blocks back, so a reused worker does not hold
    a finished job's GPU memory against the next job or the card's neighbours."""
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "cuda", None) is not None and torch.cuda.is_initialized():
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


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


MAX_PARAM_CHARS = 100_000  # one filled-in value: an environment string is capped at 128 KiB by Linux


def command_line(template: str, params: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The shell line of a command job, and the environment it needs.  Each
    ``{param}`` (with its ``!r`` or format spec) is filled in as its own
    environment variable, and the line only refers to it (``"${LABQ_ARG_0}"``,
    quoted for where it sits: bare, in double or in single quotes).  A value is
    thus never parsed by the shell, in any context (command substitution, a
    heredoc, after a comment with an apostrophe...): it can split into words
    where the template leaves it unquoted, but never become shell syntax."""
    formatter = string.Formatter()
    out: list[str] = []
    values: dict[str, str] = {}
    quote: str | None = None  # the shell's quoting where the next placeholder lands
    for literal, field, spec, conversion in formatter.parse(template):
        out.append(literal)
        quote = _quoting_after(literal, quote)
        if field is None:
            continue
        value, _ = formatter.get_field(field, (), params)
        text = str(formatter.format_field(formatter.convert_field(value, conversion), spec or ""))
        if len(text) > MAX_PARAM_CHARS:
            raise ValueError(f"{{{field}}} fills in {len(text)} characters; at most {MAX_PARAM_CHARS} fit a command")
        name = f"LABQ_ARG_{len(values)}"
        values[name] = text
        out.append(_reference(name, quote))
    return "".join(out), values


def _quoting_after(text: str, quote: str | None) -> str | None:
    """The POSIX shell's quoting state after ``text``, starting in ``quote``
    (None: bare, "'" or '"').  A wrong guess (a quote inside a comment, say)
    costs the value's right spelling, never its safety: see :func:`_reference`."""
    i = 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = None
        elif c == "\\":
            i += 1  # the next character is escaped (bare or in double quotes)
        elif quote == '"':
            if c == '"':
                quote = None
        elif c in "'\"":
            quote = c
        i += 1
    return quote


def _reference(name: str, quote: str | None) -> str:
    if quote == "'":  # close the single quotes, expand in double quotes, reopen
        return f"'\"${{{name}}}\"'"
    if quote == '"':
        return f"${{{name}}}"
    return f'"${{{name}}}"'


def _run_command(line: str, ctx: JobContext, paths: RunPaths, sampler: "_RssSampler",
                 extra_env: dict[str, str] | None = None) -> int:
    env = dict(os.environ)
    # `python` in a command is the Python this worker runs: labq's environment,
    # or the one Ray built for the stage's env.pip packages.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra_env or {})
    env.update({
        "LABQ_JOB_ID": str(ctx.job_id), "LABQ_ATTEMPT": str(ctx.attempt), "LABQ_EXPERIMENT": ctx.experiment,
        "LABQ_STAGE": ctx.stage, "LABQ_RUN_DIR": str(ctx.run_dir), "LABQ_PARAMS": json.dumps(ctx.params, default=str),
        "LABQ_ARTIFACTS_DIR": str(ctx.artifacts_dir), "LABQ_METRICS_FILE": str(paths.metrics),
        "LABQ_INPUTS": json.dumps({s: str(u.run_dir) for s, u in ctx.inputs.items()}),
        "LABQ_WORKDIR": str(ctx.workdir or ""),
        "LABQ_PREVIOUS_RUN_DIR": str(ctx.previous_run_dir or ""),
        "PYTHONUNBUFFERED": "1",
    })
    with open(paths.stdout, "ab") as out, open(paths.stderr, "ab") as err:
        proc = subprocess.Popen(["/bin/sh", "-c", line], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env, preexec_fn=_child_setup, cwd=ctx.workdir)
    # The group's id and its leader's start time: whoever ends this attempt's
    # group later checks the group is still this one, not a reused id.
    paths.pgid.write_text(f"{proc.pid} {start_ticks(proc.pid) or ''}".strip())
    sampler.command_pgid = proc.pid
    sampler.record_gpu_pids({proc.pid})
    try:
        code = _wait_command(proc, sampler)
        kill_process_group(proc.pid, grace=1.0)  # background children die with the job
        return code
    except BaseException:  # cancel (KeyboardInterrupt) or worker shutdown
        kill_process_group(proc.pid)
        raise


def _wait_command(proc: subprocess.Popen, sampler: "_RssSampler") -> int:
    """Wait for the command, letting the sampler watch its tree in this thread
    (no thread of its own), and reap it with wait4 for its CPU time and the
    peak RSS of its largest process, which even a command too short to be
    sampled has."""
    delay = 0.0005
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): no rusage
            return proc.wait()
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            sampler.command_finished(usage)
            return proc.returncode
        sampler.poll(time.monotonic())
        if sampler.exceeded:
            kill_process_group(proc.pid, grace=1.0)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _child_setup() -> None:
    """In the child before exec: its own session (so the whole tree can be signalled
    as one group), and death with its parent on Linux so a force-killed worker
    never leaves an orphaned command behind."""
    os.setsid()
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22):
    with the pid, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def group_is_attempts(pgid: int, leader_started: int | None) -> bool:
    """Whether process group ``pgid`` is still the one an attempt's command
    made (its leader started at ``leader_started``): the leader is alive with
    that start time, or, once it has exited, every process left in the group
    started no earlier.  A group id is reused only after all of its processes
    are gone, and then by a newer leader."""
    if leader_started is None or not _HAVE_PROC:
        return True  # recorded by an older labq (the id alone), or no /proc to check: as before
    members: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":  # a zombie runs nothing
            members[int(name)] = int(fields[19])
    if not members:
        return False
    if pgid in members:
        return members[pgid] == leader_started
    return all(started >= leader_started for started in members.values())


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


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# RSS moves between two reads a few calls apart; within this, ru_maxrss reads as the reset peak.
_MAXRSS_SLACK = 1 << 20
_HAVE_PROC = Path("/proc/loadavg").exists() and Path("/proc/self/statm").exists()


def _last_pid() -> int | None:
    """The last pid the kernel handed out in this pid namespace."""
    if not _HAVE_PROC:
        return None
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[4])
    except (OSError, ValueError, IndexError):
        return None


def _rss(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_self() -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _tree(root: int, since_pid: int | None, pgid: int | None = None) -> set[int]:
    """``root``'s descendants (and, with ``pgid``, members of that process group)
    created after the kernel handed out ``since_pid``.  Only the processes
    newer than the job are read, not all of /proc, which is what made the old
    psutil ``children(recursive=True)`` the costliest part of a short job."""
    last = _last_pid()
    if not _HAVE_PROC:
        return _tree_psutil(root)
    if since_pid is not None and last == since_pid:
        return set()  # no process was created since: the job has none
    parent: dict[int, int] = {}
    group: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if since_pid is not None and last is not None:
            newer = since_pid < pid <= last if last > since_pid else (pid > since_pid or pid <= last)  # pids wrapped
            if not newer:
                continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[pid] = int(fields[1])
        if pgid is not None and int(fields[2]) == pgid:
            group.add(pid)
    found: set[int] = set(group)
    frontier = {root}
    while frontier:
        kids = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found.update(kids)
        frontier = kids
    found.discard(root)
    return found


def _has_children() -> bool:
    """Whether this process has any child process, alive or not yet reaped (one
    syscall; ns_last_pid moves with every thread any process starts, so it alone
    would send most short jobs to scan /proc)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True
    except ChildProcessError:
        return False


def _tree_psutil(root: int) -> set[int]:
    """The portable (slow) way, where there is no /proc."""
    try:
        import psutil

        return {c.pid for c in psutil.Process(root).children(recursive=True)}
    except Exception:
        return set()


class _RssSampler:
    """Peak resident memory of the job, GPU telemetry, and the enforcement of the
    job's ``memory`` request (which Ray itself only counts) and of its GPU memory
    share (which Ray does not count at all).

    Cheap by default: a Python job with no memory request and no GPU runs with no
    thread at all; its peak is the worker's VmHWM, reset as the job starts, plus
    its child processes' (read once at the end, and from the kernel's rusage of
    reaped children).  A command is watched from the loop that waits for it.  A
    thread samples only where something must be enforced or measured while the
    job runs: a Python job with a memory request or a GPU.

    The job's usage is its RSS above what the Ray worker used before the job
    started.  Over the limit on two samples in a row (or over its GPU share past
    the grace period): a command's process group is killed by the command loop; a
    Python job gets KeyboardInterrupt, and if that cannot land (blocked in C) the
    worker kills itself after a grace period, leaving a marker the scheduler
    reads as out-of-memory."""

    def __init__(self, limit: int | None = None, paths: RunPaths | None = None, command: bool = False,
                 gpu_watch: gpu.GpuWatch | None = None, record_gpu_pids: bool = False) -> None:
        self.peak: int | None = None
        self.limit = limit
        self.paths = paths
        self.command = command
        self.gpu = gpu_watch
        self.exceeded: str | None = None
        self.oom_cause: str | None = None  # "memory", "gpu_share", "cuda"
        self.command_pgid: int | None = None
        # What the run dir's gpu_pids lists (None: not a GPU attempt, nothing kept).
        self.gpu_pids: set[int] | None = set() if record_gpu_pids else None
        self.job_thread: int | None = None
        self._interrupt_lock = threading.Lock()
        self._interrupt_sent = False
        self.cpu_time: float | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._over = 0
        self._tree_peak = 0  # the largest sum over the job's processes (children only, for a Python job)
        self._next_rss = 0.0
        self._next_gpu = 0.0
        self._hwm = False
        self._maxrss_is_peak = False  # getrusage's ru_maxrss is the job's own peak (no /proc read at the end)
        # Measured here, in the caller's thread, before the job starts: a job that
        # allocates at once must not hide its memory inside the baseline.
        self.baseline = 0 if command else _rss("self")
        self._since_pid = _last_pid()
        self._usage0 = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))

    def start(self) -> None:
        now = time.monotonic()
        self._next_rss = now + (0.1 if self.command else 0.0)  # a command this short has wait4's figure
        if self.command:
            return  # the command loop calls poll()
        self._hwm = _HAVE_PROC and _reset_peak_rss()
        if self._hwm:
            # ru_maxrss is the larger of the reset high-water mark and what the
            # process image before exec used: at or under the RSS now, the latter
            # cannot hide the job's peak.
            floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._maxrss_is_peak = floor <= self.baseline + _MAXRSS_SLACK
        if self.limit or self.gpu is not None or not self._hwm:
            self._thread = threading.Thread(target=self._run, daemon=True, name="labq-rss")
            self._thread.start()

    def _run(self) -> None:
        while True:
            self.poll(time.monotonic())
            wait = RSS_SAMPLE_SECONDS if (self.limit or not self._hwm) else gpu.GPU_SAMPLE_SECONDS
            if self._stop_event.wait(wait):
                return

    def _root(self) -> int | None:
        return self.command_pgid if self.command else os.getpid()

    def _pids(self) -> set[int]:
        """The job's processes: a command's tree and group; a Python job's
        worker and its children."""
        root = self._root()
        if root is None:
            return set()
        return {root} | _tree(root, self._since_pid, self.command_pgid)

    def poll(self, now: float) -> None:
        """One round of whatever is due: an RSS sample, a GPU sample."""
        pids: set[int] | None = None
        if (self.command or self.limit or not self._hwm) and now >= self._next_rss:
            self._next_rss = now + RSS_SAMPLE_SECONDS
            pids = self._pids()
            self._sample_rss(pids)
        if self.gpu is not None and now >= self._next_gpu:
            self._next_gpu = now + gpu.GPU_SAMPLE_SECONDS
            try:
                reason = self.gpu.sample(self._pids() if pids is None else pids, now)
            except Exception:  # NVML failing mid-job must not end the job: stop watching
                self.gpu = None
                reason = None
            if reason and not self.exceeded:
                self._exceed(reason, "gpu_share")
            if self.gpu is not None:
                self.record_gpu_pids(self.gpu.seen)  # the job's other processes NVML saw on its GPUs

    def record_gpu_pids(self, pids: set[int]) -> None:
        """Add ``pids`` to the run dir's list of processes that may hold GPU
        memory (rewritten only when it grows)."""
        if self.gpu_pids is None or self.paths is None or pids <= self.gpu_pids:
            return
        self.gpu_pids |= pids
        with contextlib.suppress(OSError):  # a full disk must not end the job
            self.paths.write_gpu_pids(self.gpu_pids)

    def _sample_rss(self, pids: set[int]) -> None:
        if self.command:
            total = sum(_rss(p) for p in pids)
            self._tree_peak = max(self._tree_peak, total)
            used = total
        else:
            own = _rss("self")
            children = sum(_rss(p) for p in pids if p != os.getpid())
            self._tree_peak = max(self._tree_peak, children)
            self.peak = max(self.peak or 0, own + children)
            used = own + children - self.baseline
        if self.limit and not self.exceeded:
            self._over = self._over + 1 if used > self.limit else 0
            if self._over >= 2:
                self._exceed(f"out of memory: the job used {used / 2**20:.0f} MiB, more than its memory request of "
                             f"{self.limit / 2**20:.0f} MiB", "memory")

    def command_finished(self, usage: resource.struct_rusage) -> None:
        """The command's own rusage from wait4: its (and its reaped descendants')
        CPU time, and the peak RSS of the largest of them."""
        self.cpu_time = usage.ru_utime + usage.ru_stime
        self._tree_peak = max(self._tree_peak, usage.ru_maxrss * 1024)

    def _exceed(self, message: str, cause: str) -> None:
        self.exceeded = message
        self.oom_cause = cause
        if self.command_pgid is not None:
            return  # the command loop kills the group
        with self._interrupt_lock:
            if self.job_thread is not None:
                # KeyboardInterrupt in the job's own thread (a Ray worker's task thread
                # need not be the main one); it lands when the thread next runs Python.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.job_thread),
                                                           ctypes.py_object(KeyboardInterrupt))
                self._interrupt_sent = True
        if self._stop_event.wait(KILL_GRACE_SECONDS):
            return
        if self.paths is not None:  # still running: blocked in C, so end the worker
            with contextlib.suppress(OSError):
                (self.paths.root / OOM_MARKER).write_text(json.dumps({"message": self.exceeded, "cause": self.oom_cause}))
        os.kill(os.getpid(), signal.SIGKILL)

    def interruptible(self, thread_id: int | None) -> None:
        """Let the watchdog interrupt this thread (the job runs in it), or, with
        None, no longer: the job has returned, and an interrupt landing after
        that, in labq's own code, would leave run_attempt as if Ray had
        cancelled the job.  One sent but not yet raised is taken back (the job
        still ends out of memory: ``exceeded`` is set)."""
        with self._interrupt_lock:
            if thread_id is None and self._interrupt_sent and self.job_thread is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.job_thread), None)
            self.job_thread = thread_id

    def stop(self) -> None:
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self.command:
            self.peak = self._tree_peak or None
            return
        # A Python job: its own peak, plus its children's (alive now, sampled, or
        # the largest reaped one, which the kernel remembers).
        self_end, children_end = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self_start, children_start = self._usage0
        self.cpu_time = (self_end.ru_utime - self_start.ru_utime + self_end.ru_stime - self_start.ru_stime
                         + children_end.ru_utime - children_start.ru_utime
                         + children_end.ru_stime - children_start.ru_stime)
        children = self._tree_peak
        if _HAVE_PROC and _has_children():  # most jobs start none: no /proc scan then
            children = max(children, sum(_rss(p) for p in _tree(os.getpid(), self._since_pid)))
        if children_end.ru_maxrss > children_start.ru_maxrss:
            children = max(children, children_end.ru_maxrss * 1024)
        own = (self_end.ru_maxrss * 1024 if self._maxrss_is_peak else _peak_rss_self()) if self._hwm else None
        if own is not None:
            self.peak = max(self.peak or 0, own + children)
        elif self.peak is None:
            self.peak = _rss("self") + children or None
