"""Shared helpers for labq's benchmarks: machine facts, statistics, tables, the
writer of raw results (one JSON file per run under bench/results/), and Ray
processes that clean up after themselves.

BENCHMARKS.md holds one current table of headline figures; it is updated by
hand from the files under bench/results/, never written by a benchmark.

Every Ray this suite starts lives under its own short temp dir (``/tmp/lqb-*``),
and cleanup kills only processes whose command line names that dir (plus their
descendants: Ray workers rename themselves ``ray::...`` and lose the dir from
their command line).  Nothing here runs ``ray stop``: other Ray instances on the
machine (test runs) are left alone.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS = BENCH / "results"
VENV_BIN = Path(sys.executable).parent
RAY_CLI = str(VENV_BIN / "ray")
LABQ_CLI = str(VENV_BIN / "labq")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# ---------------------------------------------------------------- arguments

def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small N: a smoke run")
    p.add_argument("--json-out", help="also write the results as JSON here (run_all uses it)")
    p.add_argument("--no-save", "--no-md", dest="no_md", action="store_true",
                   help="do not write the raw result under bench/results/ (--no-md: the old name)")
    return p


def finish(args: argparse.Namespace, name: str, title: str, markdown: str, data: dict[str, Any]) -> None:
    """Print the section, write the run's raw result under bench/results/, dump
    JSON for run_all."""
    section = render_section(title, markdown, quick=args.quick)
    print(section)
    if not args.no_md:
        path = write_result(name, title, markdown, data, quick=args.quick)
        print(f"Raw result written to {path.relative_to(ROOT)}.\n"
              "Reminder: the current table in BENCHMARKS.md is updated by hand; "
              "if this run changes a headline figure, edit its row there (value, date, commit, command).")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"name": name, "title": title, "quick": args.quick,
                                                   "markdown": markdown, "data": data}, default=str, indent=1))


# ---------------------------------------------------------------- machine

def mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def machine_line() -> str:
    try:
        import ray

        ray_version = ray.__version__
    except Exception:
        ray_version = "not installed"
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores, {mem_total_gib():.1f} GiB RAM (/proc/meminfo), "
            f"Python {platform.python_version()}, Ray {ray_version}, {platform.system()} {platform.release()}, "
            f"labq {git_rev()}, load avg at start {load[0]:.2f}")


def now_stamp() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# ---------------------------------------------------------------- statistics

def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "n/a"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.2f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(out)


def rss(pid: int | None = None) -> int:
    import psutil

    return psutil.Process(pid or os.getpid()).memory_info().rss


# ---------------------------------------------------------------- results

def render_section(title: str, markdown: str, quick: bool) -> str:
    """The run as text, for the terminal: title, mode, time, machine, tables."""
    mode = "quick" if quick else "full"
    return f"## {title} ({mode}, {now_stamp()})\n\nMachine: {machine_line()}\n\n{markdown.strip()}\n"


def command_line(argv: list[str] | None = None) -> str:
    """How this run was started, as a shell line relative to the repository
    (``python bench/bench_x.py --quick``), without run_all's ``--json-out FILE``."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path("?")
    try:
        script_s = str(script.resolve().relative_to(ROOT))
    except (ValueError, OSError):
        script_s = str(script)
    rest, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--json-out":
            skip = True
            continue
        if a.startswith("--json-out="):
            continue
        rest.append(a)
    return shlex.join(["python", script_s, *rest])


def write_result(name: str, title: str, markdown: str, data: dict[str, Any], quick: bool,
                 results_dir: Path | None = None) -> Path:
    """Write one run's raw result as ``<results_dir>/<date>-<HHMM>-<name>[-quick].json``
    (UTC; a suffix -2, -3... if that name is taken) and return its path.

    Fields: date, commit (``git rev-parse --short HEAD``, ``+dirty`` when
    tracked files differ), machine, benchmark, title, mode, command, figures
    (what the benchmark measured, as it passed it) and text (its tables as
    printed)."""
    out = results_dir or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "bench"
    stem = f"{now:%Y-%m-%d-%H%M}-{slug}{'-quick' if quick else ''}"
    path = out / f"{stem}.json"
    n = 2
    while path.exists():
        path = out / f"{stem}-{n}.json"
        n += 1
    record = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_rev(), "machine": machine_line(),
              "benchmark": slug, "title": title, "mode": "quick" if quick else "full",
              "command": command_line(), "figures": data, "text": markdown.strip()}
    path.write_text(json.dumps(record, default=str, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tempdir(prefix: str = "lqb-") -> Path:
    """Short, because Ray's unix sockets live under it and have a length limit."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# ---------------------------------------------------------------- file system

def file_create_us(parent: Path, n: int = 200) -> float:
    """CPU microseconds (this thread's, kernel included) to create one empty
    file in a new directory under ``parent``: what the run dirs of labq's jobs
    cost the file system there.  The files stay: deleting them would make the
    next creations slow (see wait_for_quiet_files)."""
    probe = Path(tempfile.mkdtemp(dir=parent, prefix=".probe-"))
    t0 = time.thread_time()
    for i in range(n):
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    return 1e6 * (time.thread_time() - t0) / n


# Creating an empty file under a quiet ext4 here costs 8-13 us (tmpfs: 3 us).
QUIET_CREATE_US = 20.0


def wait_for_quiet_files(parent: Path, limit_s: float = 180.0) -> dict[str, float]:
    """Wait until creating a file under ``parent`` costs what it normally does
    (QUIET_CREATE_US) twice in a row, 5 s apart, for at most ``limit_s``.

    Why: ext4 without a journal (this machine's root file system) checks every
    free inode it considers for a new file and skips those freed in the last 30
    seconds (330 while their inode table block is dirty), reading each from the
    buffer cache.  After a large delete near ``parent`` (the previous
    benchmark's temp dir, a test run) a file costs up to 25 times more to create
    for a minute or more.  A labq job creates five inodes (two directories, its
    two logs, result.json) and a raw Ray task none, so without this wait the
    throughput ratio would measure the disk's recent past, not labq.  Returns
    the first and last probe, the threshold and the seconds waited."""
    first = last = file_create_us(parent)
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < limit_s:
        quiet = quiet + 1 if last <= QUIET_CREATE_US else 0
        if quiet == 2:
            break
        time.sleep(5)
        last = file_create_us(parent)
    return {"first_us": first, "last_us": last, "threshold_us": QUIET_CREATE_US, "waited_s": time.monotonic() - t0}


def kill_processes_under(marker: str | Path, timeout: float = 10.0) -> int:
    """Kill every process whose command line contains ``marker`` and all their
    descendants.  Returns how many were signalled."""
    import psutil

    marker = str(marker)
    me = os.getpid()
    targets: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != me and any(marker in part for part in proc.info["cmdline"] or []):
                targets[proc.pid] = proc
                for child in proc.children(recursive=True):
                    if child.pid != me:
                        targets[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in targets.values():
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(list(targets.values()), timeout=timeout)
    return len(targets)


@contextmanager
def local_ray(num_cpus: float, num_gpus: int | None = None, stock: bool = False) -> Iterator[Path]:
    """An in-process Ray of our own (as labq's scheduler starts it: address="local",
    no dashboard, labq's Ray settings; ``stock``: Ray's own settings, for another
    system run on it), under a temp dir we can clean up precisely.  Raw Ray tasks
    measured here run in the same Ray, settings included."""
    import ray

    from scheduler.ray_backend import LOCAL_RAY_SYSTEM_CONFIG

    temp = short_tempdir()
    labq_only = {} if stock else {"namespace": "labq", "_system_config": LOCAL_RAY_SYSTEM_CONFIG}
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _temp_dir=str(temp),
             log_to_driver=False, configure_logging=False, **labq_only)
    try:
        yield temp
    finally:
        try:
            ray.shutdown()
        finally:
            kill_processes_under(temp)
            shutil.rmtree(temp, ignore_errors=True)


class RayHead:
    """`ray start --head` with the dashboard (for Ray Jobs), token auth on (Ray
    2.60's default) with a token file of our own, every port chosen free, under a
    temp dir.  ``env`` is what clients (ray job submit, the SDK) need."""

    def __init__(self, num_cpus: float = 2):
        self.temp = short_tempdir("lqh-")
        self.token_path = self.temp / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        os.chmod(self.token_path, 0o600)
        self.port = free_port()
        self.dashboard_port = free_port()
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        self.env.pop("RAY_ADDRESS", None)
        self.num_cpus = num_cpus
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 180) -> "RayHead":
        cmd = [RAY_CLI, "start", "--head", f"--port={self.port}", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
               f"--object-manager-port={free_port()}", f"--temp-dir={self.temp}", "--disable-usage-stats"]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start --head failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        self._wait_dashboard(timeout)
        return self

    def _wait_dashboard(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        token = self.token_path.read_text().strip()
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(self.dashboard + "/api/version", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError(f"the dashboard at {self.dashboard} did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        kill_processes_under(self.temp)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------- specs

NOOP_MODULE = '''\
"""Trivial jobs for labq's benchmarks."""
import time


def noop(ctx):
    return {"ok": 1}


def sleepy(ctx):
    time.sleep(float(ctx.params.get("seconds", 60)))
    return {"ok": 1}
'''


def write_noop_spec(directory: Path, experiment: str, n: int, cpu: float = 0.1, target: str = "benchjobs:noop",
                    params: dict[str, Any] | None = None) -> Path:
    """A spec directory holding ``benchjobs.py`` and a sweep of ``n`` jobs (or one
    job when n == 1), as tests/integration/helpers.write_spec does."""
    code = directory / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "benchjobs.py").write_text(NOOP_MODULE)
    params_text = json.dumps(params or {})
    sweep = f"\n    sweep: {{grid: {{i: {json.dumps(list(range(n)))}}}}}" if n > 1 else ""
    spec = code / f"{experiment}.yaml"
    spec.write_text(textwrap.dedent(f"""\
        experiment: {experiment}
        stages:
          - name: s
            run: {target}
            params: {params_text}
            resources: {{cpu: {cpu}}}""") + sweep + "\n")
    return spec


def scheduler_in_thread(home: Path, poll_interval: float = 0.2, backend=None, pack_seconds: float = 0.5):
    """A real Scheduler (real store, real policy, real RayBackend on the Ray this
    process started) running labq's own loop.run in a thread, as the daemon runs it.
    Returns (scheduler, stop_event, thread, settings)."""
    import threading

    from scheduler.config import SchedulerSettings, Settings
    from scheduler.loop import Scheduler, run
    from scheduler.store import Store

    if backend is None:
        from scheduler.ray_backend import RayBackend

        backend = RayBackend()
        backend.connect()  # returns at once: Ray is already initialised by local_ray()
    settings = Settings(home=str(home), scheduler=SchedulerSettings(poll_interval=poll_interval,
                                                                    pack_seconds=pack_seconds))
    store = Store(home, fsync_commits=False)  # as the daemon opens it
    sched = Scheduler(store, backend, settings)
    sched.reconcile(time.time())
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(sched, stop), name="labq-scheduler", daemon=True)
    thread.start()
    return sched, stop, thread, settings


def wait_experiment(store, experiment_id: int, timeout: float, poll: float = 0.05):
    """Block until every job of the experiment is terminal; returns the jobs."""
    from scheduler.states import JobState

    terminal = [s.value for s in JobState if s.is_terminal()]
    deadline = time.monotonic() + timeout
    q = ("SELECT COUNT(*) FROM jobs WHERE experiment_id = ? AND state NOT IN (" + ",".join("?" * len(terminal)) + ")")
    while True:
        left = store._conn.execute(q, (experiment_id, *terminal)).fetchone()[0]
        if left == 0:
            return store.jobs_of_experiment(experiment_id)
        if time.monotonic() > deadline:
            raise TimeoutError(f"experiment {experiment_id}: {left} jobs not terminal after {timeout:.0f}s")
        time.sleep(poll)
