"""Soak test: a real labq scheduler under a steady stream of small jobs and chaos.

    python bench/soak.py --minutes M [--rate R] [--home DIR] [--seed S]
                         [--daemon-kill-gap MIN MAX] [--owner-kills K] [--kill-every S]

With a fresh ``LABQ_HOME`` (a temp dir unless ``--home``) it starts the
scheduler (``labq scheduler start --cpus 2``) and then, for M minutes:

* submits small experiments at roughly R jobs a minute
  (``labq submit SPEC --json --no-start``).  Each spec is written to a temp dir
  beside ``soakjobs.py``.  The mix:
  - command jobs ``sleep {s}`` (s 0.1-3 s), 1-3 per experiment (a grid over s);
  - callable jobs ``soakjobs:work`` that sleep and succeed, raise, fail on their
    first attempt only ("flaky"), burn 50-400 MiB of memory or a CPU briefly;
    a third of the memory burners ask for ``memory`` with room to spare, a third
    for a quarter of what they use (expected: out_of_memory, then failed);
  - a few two-stage experiments (a callable, then a command ``after`` it);
  - a few "hang" jobs with a 3 s ``timeout`` (expected: timed_out);
  - a few long commands (``sleep 20-60``), so that a process outliving its
    attempt is long enough for the sampler to see;
  retries 0-2 and cpu 0.25-1 per stage.
* cancels a random share of the jobs a few seconds after submitting them
  (``labq cancel ID --json``);
* kills -9 the worker of a random running attempt every ~``--kill-every`` s.
  How the worker is found (one method, exact): labq names each Ray task
  ``labq-job-<job id>-<attempt>`` (``ray_backend.launch``) and a Ray worker sets
  its process title to ``ray::<task name>`` while it runs the task, so the
  worker is the descendant of the local Ray's keeper (``local_ray.pid`` in
  ``LABQ_HOME/scheduler.json``, checked by its start time) whose cmdline[0] is
  ``ray::labq-job-<id>-<n>``: Ray's workers no longer run under the daemon.
  For command jobs, half the kills instead SIGKILL the command's process group,
  read from the attempt's ``pgid`` file (checked first: the group leader must
  hold the attempt's stdout.log open, so a recycled pid is never killed);
* every 20-60 s (``--daemon-kill-gap MIN MAX``, alias ``--daemon-kills-every``;
  drawn at random, counted from the last restart being ready; MAX 0 turns it
  off) kills -9 the whole scheduler, the supervisor (pid from
  ``LABQ_HOME/scheduler.pid``) and its loop child (``python -m scheduler.daemon
  --child``) at once, and restarts it with ``labq scheduler start --cpus 2``.
  Running attempts must outlive it: the local Ray (its keeper and everything
  under it: Ray's processes, the owner actor, the workers and their job
  processes) is not the daemon's to take down.  Checked at each kill: the
  keeper still runs 1 s after it, the restarted scheduler records that same
  keeper in scheduler.json (it joined the same Ray), and what the restart
  adopted is read from its log ("adopted N attempts that outlived the previous
  scheduler; M had died with it");
* with ``--owner-kills K`` (default 0), kills -9 labq's owner actor (the
  keeper's descendant whose process title starts with ``ray::AttemptOwner``)
  K times, spread over the run: what it ran is lost (Ray ends a dead owner's
  tasks, with an error that names the owner), ended on the node and requeued.

The daemon may be the scheduler itself or a supervisor running the scheduler
loop in a child (``python -m scheduler.daemon --child``): RSS, fds and children
are reported for the daemon pid and, when there is one, for that child too.

Meanwhile a sampler (every ~1.5 s) reads the database read-only, samples the
daemon's RSS, and scans ``/proc/*/fd`` for processes holding files of an
attempt's run dir open: this is how it sees which attempts really have live
processes (a Ray worker running a callable holds stdout.log/stderr.log; a
command's shell and its children hold them as fds 1 and 2).

At the end it stops submitting, waits (``--drain-timeout``) until every job is
terminal, measures the daemon, stops it (``labq scheduler stop``: with nothing
running, that stops the local Ray too), kills what is left of the local Ray 5 s
later (a warning), then kills only other leftover processes it can attribute
to this run (descendants of the daemons it started, or holders of this run's
run-dir files), prints a summary (jobs, attempts, lost, duplicated, redone,
daemon and owner kills, adoptions, wall time), and exits 1 if an invariant
failed:

* lost: jobs not terminal after the wait = 0;
* missing: ids a submit acknowledged that are not in the db = 0;
* ids returned twice = 0;
* duplicated: no job with two attempts running at once (in the db, by one
  attempt's end and the next one's worker start, and by sampling; or as live
  processes of two attempts of one job at the same moment), no attempt with two
  'running -> ...' transitions;
* consistency: jobs.attempts matches the attempt rows, no attempt 'running'
  under a terminal job, a succeeded job's last attempt succeeded, charged
  attempts within retries + 1;
* outcome: a job nobody cancelled or killed ends as its action says
  (a scheduler kill excuses nothing); a cancel that was acknowledged ends the
  job cancelled (or succeeded, when it raced the end of a running job);
* attempts redone = 0: no attempt ends ``lost`` except, attempt by attempt,
  one whose Ray worker or process group this soak killed, one lost for its
  owner (the error names the owner) that was running when this soak killed the
  owner (dispatched before the kill or within 20 s after it, ended after it),
  or a packed job requeued uncharged because its pack ended before it began or
  was stopped for another job of it.  An attempt lost to a scheduler kill is a
  failure: the restart must adopt it;
* local Ray: its keeper alive after every scheduler kill, and the same keeper
  recorded by the scheduler that replaced the killed one;
* orphans: no job process (a holder of a run dir's files) alive 2 s after the
  Ray worker or process group this soak killed, 20 s after the owner it killed,
  or >10 s after its attempt was recorded ended; one entry per attempt.  Job
  processes outliving a *scheduler* kill are what must happen, not orphans;
* daemon: it never exits unless this script killed it; no CLI call fails.

Warnings (reported, not failing): `scheduler start` returning before the new
daemon is ready (checked: scheduler.json must name the new pid with Ray up),
descendants of a killed daemon outside the local Ray alive 1 s after its kill,
anything of the local Ray (the keeper or a process that was under it) alive
5 s after `labq scheduler stop` with nothing running (killed by the soak), and
descendants of the last daemon alive 3 s after the stop.

The summary is also written to ``LABQ_HOME/soak-summary.json``.  A temp
LABQ_HOME is removed after a passing run (unless ``--keep``) and kept after a
failing one.

Never runs ``ray stop``: other Ray instances may run on this machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LABQ = [str(VENV_BIN / "labq")] if (VENV_BIN / "labq").exists() else [sys.executable, "-m", "scheduler.cli"]
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "unschedulable", "upstream_failed"}
ACTIVE = {"blocked", "pending", "running"}
CPUS = ["0.25", "0.5", "0.75", "1"]
STALE_GRACE_S = 10.0  # a job process may outlive its attempt's recorded end by this much
KILL_GRACE_S = 2.0  # ... the Ray worker or process group the soak killed by this much
OWNER_KILL_GRACE_S = 20.0  # ... the owner the soak killed (Ray ends its tasks, labq their groups) by this much

JOBS_MODULE = '''\
"""Callable jobs for labq's soak test."""
import os
import time


def work(ctx):
    p = ctx.params
    action, seconds = p["action"], float(p.get("s", 0.5))
    if action == "fail":
        time.sleep(seconds)
        raise RuntimeError("soak: planned failure")
    if action == "flaky" and ctx.attempt == 1:
        time.sleep(seconds)
        raise RuntimeError("soak: fails on its first attempt only")
    if action in ("mem", "memover"):
        n = int(p.get("mb", 100)) * 2**20
        block = bytearray(n)
        for i in range(0, n, 4096):  # touch every page so it is resident
            block[i] = 1
        time.sleep(seconds)
        del block
    elif action == "cpu":
        end = time.time() + seconds
        x = 0
        while time.time() < end:
            x += 1
    else:  # sleep, flaky (retry), hang
        time.sleep(seconds)
    return {"ok": 1, "pid": os.getpid()}
'''


def short_cmd(p: psutil.Process) -> str:
    """pid:what, readable: a Ray proctitle as is, a python process by its script."""
    try:
        args = [a for a in p.cmdline() if a.strip()]
    except psutil.Error:
        return f"{p.pid}:gone"
    if not args:
        return f"{p.pid}:{p.name()}"
    if "python" in os.path.basename(args[0]) and len(args) > 1:
        script = next((a for a in args[1:] if not a.startswith("-")), args[1])
        return f"{p.pid}:python {os.path.basename(script)}"
    return f"{p.pid}:{' '.join(a.strip() for a in args)[:50]}"


def code_version() -> str:
    """The commit the CLI ran from, and the tracked files changed beside it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.splitlines()
        changed = [line[3:] for line in dirty if len(line) > 3]
        return rev + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Expect:
    """What a submitted job should end as when nobody interferes."""

    job_id: int
    kind: str  # command, callable
    action: str
    retries: int
    upstream: int | None = None
    interfered: list[str] = field(default_factory=list)


@dataclass
class DaemonLife:
    pid: int
    started_at: float
    start_seconds: float
    ready_on_return: bool
    ready_seconds: float = 0.0  # from `scheduler start` to scheduler.json naming this pid with Ray up
    start: dict[str, Any] = field(default_factory=dict)
    end: dict[str, Any] = field(default_factory=dict)
    rss_max: int = 0  # of the daemon plus its scheduler-loop process, sampled
    ended_how: str = "running"
    # after its kill -9: its descendants outside the local Ray alive 1 s after (none expected) ...
    orphans: list[str] = field(default_factory=list)
    # ... and how many of the local Ray's processes (its keeper and what runs under it) lived on, as they must
    ray_survivors: int = 0
    adopted: tuple[int, int] | None = None  # (adopted, had died) as the scheduler that replaced it logged
    loop_pids: list[int] = field(default_factory=list)  # scheduler-loop child processes seen (supervisor model)


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.own_home = args.home is None
        self.home = Path(args.home or tempfile.mkdtemp(prefix="labq-soak-")).resolve()
        self.db = self.home / "labq.db"
        self.runs_prefix = str(self.home / "runs") + os.sep
        self.spec_dir = Path(tempfile.mkdtemp(prefix="labq-soak-spec-"))
        (self.spec_dir / "soakjobs.py").write_text(JOBS_MODULE)
        (self.spec_dir / ".history").mkdir()  # hidden: left out of the code snapshot
        self.env = {**os.environ, "LABQ_HOME": str(self.home)}
        self.env.pop("LABQ_CLUSTER", None)
        self.lock = threading.RLock()
        self.stop_sampling = threading.Event()
        self.stop_chaos = threading.Event()
        # what happened
        self.returned_ids: list[int] = []
        self.expect: dict[int, Expect] = {}
        self.submits = 0
        self.submit_seconds: list[float] = []
        self.cli_errors: list[str] = []
        self.cancels: dict[int, dict[str, Any]] = {}  # job id -> the cancel's answer
        self.worker_kills: collections.Counter = collections.Counter()
        self.kill_log: list[str] = []
        self.daemons: list[DaemonLife] = []
        self.daemon: DaemonLife | None = None
        self.restarting = False
        self.expected_exit: set[int] = set()
        self.unexpected_exits: list[str] = []
        self.warnings: list[str] = []
        self.own_pids: dict[int, float] = {}  # pid -> create_time of processes this run spawned (transitively)
        # sampler findings
        self.samples = 0
        self.db_running_dupes: set[tuple[int, tuple[int, ...]]] = set()
        self.live_dupes: dict[int, str] = {}
        self.stale: set[tuple[int, int]] = set()
        self.max_live_attempts = 0
        self.chaos_thread: threading.Thread | None = None
        self.kills_skipped = 0
        self.owner_kills = 0  # kill -9s of the owner actor done
        self.owner_kill_times: list[float] = []
        self.killed_attempts: set[tuple[int, int]] = set()  # (job, attempt) whose worker or process group we killed
        self.ray_failures: list[str] = []  # the local Ray not outliving a daemon kill, or not joined again
        self.ray_root_recorded: tuple[int, float] | None = None
        self.shut_down = False
        self.leftovers: list[str] = []
        # (job, attempt) -> what was seen of its processes outliving their worker,
        # their daemon, or the attempt's recorded end; one invariant entry per attempt
        self.job_orphans: dict[tuple[int, int], list[str]] = {}
        self.job_survivors_3s = 0  # job processes alive 3 s after their daemon's kill -9 (before the restart)
        self.last_ready = 0.0
        self.t_begin = time.time()
        self.drain_seconds = 0.0
        self.after_kill_checks: list[tuple[float, int, int, str]] = []  # (when, job, attempt, what was killed)
        self.stop_leftovers: list[str] = []

    # ------------------------------------------------------------ helpers

    def labq(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess | None:
        cmd = [*LABQ, *args]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            msg = f"labq {' '.join(args)}: timed out after {timeout:.0f}s"
            log(msg)
            if check:
                self.cli_errors.append(msg)
            return None
        if proc.returncode != 0 and check:
            msg = f"labq {' '.join(args)} -> {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}"
            log(msg)
            self.cli_errors.append(msg)
        return proc

    def ro(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        for attempt in range(5):
            try:
                conn = self.ro()
                try:
                    return conn.execute(sql, args).fetchall()
                finally:
                    conn.close()
            except sqlite3.OperationalError as exc:
                if attempt == 4:
                    raise
                log(f"db read retry: {exc}")
                time.sleep(0.2)
        return []

    def pid_file(self) -> int | None:
        try:
            return int((self.home / "scheduler.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def state_file(self) -> dict[str, Any]:
        try:
            return json.loads((self.home / "scheduler.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    @staticmethod
    def loop_child(pid: int) -> psutil.Process | None:
        """The scheduler-loop process when the daemon is a supervisor that runs the
        loop in a child (``python -m scheduler.daemon --child``); None when the
        daemon runs the loop itself."""
        try:
            for c in psutil.Process(pid).children():
                cmd = c.cmdline()
                if "--child" in cmd and "scheduler.daemon" in cmd:
                    return c
        except psutil.Error:
            pass
        return None

    @classmethod
    def measure(cls, pid: int) -> dict[str, Any]:
        """RSS, open fds, direct children and all descendants of the daemon pid;
        with a supervisor, the same of its scheduler-loop child under "loop", and
        "total_rss" (daemon + loop) either way."""
        def one(p: psutil.Process) -> dict[str, Any]:
            with p.oneshot():
                return {"pid": p.pid, "rss": p.memory_info().rss, "fds": p.num_fds(), "children": len(p.children()),
                        "descendants": len(p.children(recursive=True)), "threads": p.num_threads()}
        try:
            out = one(psutil.Process(pid))
            child = cls.loop_child(pid)
            if child is not None:
                try:
                    out["loop"] = one(child)
                except psutil.Error:
                    pass
            out["total_rss"] = out["rss"] + out.get("loop", {}).get("rss", 0)
            return out
        except psutil.Error as exc:
            return {"error": str(exc)}

    def remember_descendants(self, pid: int) -> list[psutil.Process]:
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
        for p in procs:
            try:
                self.own_pids[p.pid] = p.create_time()
            except psutil.Error:
                pass
        return procs[1:]

    # ------------------------------------------------------------ the daemon

    def start_daemon(self, why: str) -> bool:
        t0 = time.monotonic()
        proc = self.labq("scheduler", "start", "--cpus", str(self.args.cpus), timeout=240)
        took = time.monotonic() - t0
        if proc is None or proc.returncode != 0:
            return False
        m = re.search(r"pid (\d+)", proc.stdout)
        pid = int(m.group(1)) if m else self.pid_file()
        st = self.state_file()
        ready = st.get("pid") == pid and st.get("ray") == "up"
        if not ready:
            # daemon.start() polls `status()`, which reads scheduler.json: right after
            # a crash it still holds the dead daemon's "ray": "up", so start may
            # return before the new daemon has connected to Ray and reconciled.
            self.warnings.append(f"`labq scheduler start` ({why}) returned after {took:.1f}s while scheduler.json "
                                 f"still described pid {st.get('pid')} (ray={st.get('ray')}), not the new pid {pid}")
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                st = self.state_file()
                if st.get("pid") == pid and st.get("ray") == "up":
                    break
                if not psutil.pid_exists(pid):
                    self.unexpected_exits.append(f"daemon {pid} exited while starting ({why})")
                    return False
                time.sleep(0.2)
            else:
                self.cli_errors.append(f"daemon {pid} not up 180s after `scheduler start` returned")
                return False
        life = DaemonLife(pid=pid, started_at=time.time(), start_seconds=took, ready_on_return=ready,
                          ready_seconds=time.monotonic() - t0)
        time.sleep(2.0)  # let Ray's worker pool settle before the baseline
        life.start = self.measure(pid)
        life.rss_max = life.start.get("total_rss", 0)
        if "loop" in life.start:
            life.loop_pids.append(life.start["loop"]["pid"])
        self.remember_descendants(pid)
        with self.lock:
            self.daemons.append(life)
            self.daemon = life
        self.last_ready = time.time()
        log(f"scheduler up: pid {pid} ({why}; start took {took:.1f}s, ready on return: {ready})")
        return True

    def kill_daemon(self) -> None:
        """kill -9 of the whole scheduler (the supervisor and its loop child at
        once), then a restart.  Running attempts must outlive it: their owners
        and the local Ray are not the daemon's descendants, the keeper must
        still run after the kill, and the next scheduler must join that same Ray
        and adopt them (only attempts whose owner died may be lost)."""
        with self.lock:
            life = self.daemon
            if life is None or self.restarting:
                return
            self.restarting = True
            self.expected_exit.add(life.pid)
        try:
            pid = life.pid
            if self.pid_file() != pid:
                self.warnings.append(f"scheduler.pid says {self.pid_file()}, expected {pid}")
            before = self.remember_descendants(pid)
            local = self.local_ray()
            keeper = self.keeper(local)
            ray_tree = self.tree(keeper)
            running_before = len(self.query("SELECT id FROM attempts WHERE state = 'running'"))
            life.end = self.measure(pid)
            child = self.loop_child(pid)
            log(f"kill -9 scheduler daemon {pid} and its loop {child.pid if child else '-'} "
                f"({running_before} attempts running; local Ray keeper {keeper.pid if keeper else '-'}, "
                f"{len(ray_tree)} processes)")
            if keeper is None:
                self.ray_failures.append(f"before the kill of daemon {pid}: no live local Ray keeper in "
                                         f"scheduler.json ({local})")
            for victim in [pid] + ([child.pid] if child else []):
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            life.ended_how = "kill -9"
            deadline = time.monotonic() + 30
            while psutil.pid_exists(pid) and time.monotonic() < deadline:
                try:
                    if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.Error:
                    break
                time.sleep(0.05)
            # The flock dies with the process; a child that inherited it would keep it.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st = self.labq("scheduler", "status", "--json", timeout=30, check=False)
                if st is not None and st.returncode == 1:
                    break
                time.sleep(0.5)
            else:
                self.warnings.append(f"scheduler lock still held 30s after daemon {pid} was killed")
            time.sleep(1.0)
            # The local Ray (its keeper and everything under it) must live on; nothing
            # else of the daemon's may.
            life.ray_survivors = sum(self.alive(q, t) for q, t in ray_tree.items())
            for p in before:
                try:
                    if p.pid in ray_tree or not (p.is_running() and p.status() != psutil.STATUS_ZOMBIE):
                        continue
                    life.orphans.append(short_cmd(p))
                except psutil.Error:
                    pass
            if keeper is not None and not self.alive(keeper.pid, ray_tree[keeper.pid]):
                self.ray_failures.append(f"the local Ray's keeper {keeper.pid} died with daemon {pid} "
                                         f"({life.ray_survivors} of its {len(ray_tree)} processes left)")
                log("  " + self.ray_failures[-1])
            if life.orphans:
                self.warnings.append(f"descendants of daemon {pid} outside the local Ray alive 1s after its "
                                     f"kill -9: {', '.join(life.orphans)}")
                log("  " + self.warnings[-1])
            self.job_survivors_3s += len(self.live_attempts())
            said_before = len(re.findall(r"adopted \d+ attempts", self.log_text()))
            if not self.start_daemon(f"restart after kill -9 of {pid}"):
                log("restart failed; retrying once")
                self.start_daemon(f"second restart after kill -9 of {pid}")
            after = self.local_ray()
            if keeper is not None and (after.get("pid"), after.get("started")) != (local.get("pid"), local.get("started")):
                self.ray_failures.append(f"the scheduler that replaced daemon {pid} runs on another local Ray "
                                         f"(keeper {after.get('pid')}, was {local.get('pid')})")
                log("  " + self.ray_failures[-1])
            adopted = re.findall(r"adopted (\d+) attempts that outlived the previous scheduler; (\d+) had died",
                                 self.log_text())
            if len(adopted) > said_before:  # it says so only when there was something to adopt
                life.adopted = (int(adopted[-1][0]), int(adopted[-1][1]))
                log(f"  the restart adopted {adopted[-1][0]} attempts ({adopted[-1][1]} had died)")
        finally:
            with self.lock:
                self.restarting = False

    def log_text(self) -> str:
        try:
            return (self.home / "scheduler.log").read_text(errors="replace")
        except OSError:
            return ""

    def local_ray(self) -> dict[str, Any]:
        """The local Ray labq records in scheduler.json: {pid, started, address, temp_dir}."""
        return self.state_file().get("local_ray") or {}

    @staticmethod
    def keeper(local: dict[str, Any]) -> psutil.Process | None:
        """The local Ray's keeper process, if it runs (checked by its start time)."""
        try:
            proc = psutil.Process(int(local["pid"]))
            if abs(proc.create_time() - float(local["started"])) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (KeyError, TypeError, ValueError, psutil.Error):
            pass
        return None

    @staticmethod
    def tree(proc: psutil.Process | None) -> dict[int, float]:
        """pid -> create time of ``proc`` and all its descendants."""
        out: dict[int, float] = {}
        if proc is None:
            return out
        try:
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            procs = [proc]
        for q in procs:
            try:
                out[q.pid] = q.create_time()
            except psutil.Error:
                pass
        return out

    @staticmethod
    def alive(pid: int, created: float) -> bool:
        try:
            q = psutil.Process(pid)
            return abs(q.create_time() - created) < 0.01 and q.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def ray_root(self) -> int | None:
        """The local Ray's keeper pid (scheduler.json): Ray's workers and the owners run under it."""
        proc = self.keeper(self.local_ray())
        return proc.pid if proc else None

    def kill_owner(self) -> None:
        """kill -9 of labq's owner of the node's attempts: what it ran is lost
        (Ray ends a dead owner's tasks), ended on the node and requeued."""
        root = self.ray_root()
        try:
            procs = psutil.Process(root).children(recursive=True) if root else []
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                if (p.cmdline() or [""])[0].startswith("ray::AttemptOwner"):
                    running = [(r["job_id"], r["number"])
                               for r in self.query("SELECT job_id, number FROM attempts WHERE state = 'running'")]
                    p.kill()
                    now = time.time()
                    self.owner_kills += 1
                    with self.lock:
                        self.owner_kill_times.append(now)
                        for job, n in running:
                            if job in self.expect:
                                self.expect[job].interfered.append("owner kill")
                            # Ray ends a dead owner's tasks, labq their process groups
                            self.after_kill_checks.append((now + OWNER_KILL_GRACE_S, job, n,
                                                           f"the kill -9 of its owner {p.pid}"))
                    log(f"kill -9 labq's owner {p.pid} ({len(running)} attempts running)")
                    return
            except psutil.Error:
                continue
        log("no owner process found to kill")

    def chaos(self, t_start: float, duration: float) -> None:
        """Kill the daemon every --daemon-kill-gap seconds (drawn at random
        between its two bounds, counted from the last restart being ready), in
        its own thread so submitting goes on while no scheduler runs; and the
        owner --owner-kills times, spread over the run."""
        lo, hi = self.args.daemon_kill_gap
        kill_daemons = hi > 0
        owner_times = sorted(t_start + duration * (k + 1) / (self.args.owner_kills + 1)
                             for k in range(self.args.owner_kills))
        try:
            next_kill = self.last_ready + self.rng.uniform(lo, hi) if kill_daemons else float("inf")
            while True:
                if self.stop_chaos.wait(0.2):
                    return
                now = time.time()
                if now > t_start + duration - 5:
                    return
                if owner_times and now >= owner_times[0]:
                    owner_times.pop(0)
                    self.kill_owner()
                if now >= next_kill:
                    self.kill_daemon()
                    next_kill = self.last_ready + self.rng.uniform(lo, hi)
        except Exception:
            self.cli_errors.append("chaos thread crashed: " + traceback.format_exc()[-800:])

    # ------------------------------------------------------------ the sampler

    def live_attempts(self) -> dict[tuple[int, int], set[int]]:
        """(job id, attempt number) -> pids holding a file of that run dir open."""
        live: dict[tuple[int, int], set[int]] = collections.defaultdict(set)
        prefix = self.runs_prefix
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            fd_dir = f"/proc/{name}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"{fd_dir}/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    parts = target[len(prefix):].split(os.sep)
                    if len(parts) >= 2 and parts[0].isdigit() and parts[1].startswith("attempt-"):
                        try:
                            live[(int(parts[0]), int(parts[1][8:]))].add(int(name))
                        except ValueError:
                            pass
        return live

    def describe(self, pids: set[int]) -> str:
        out = []
        for pid in sorted(pids):
            try:
                out.append(short_cmd(psutil.Process(pid)))
            except psutil.Error:
                out.append(f"{pid}:gone")
        return ", ".join(out)

    def sample_once(self) -> None:
        now = time.time()
        with self.lock:
            life = self.daemon if not self.restarting else None
        if life is not None:
            m = self.measure(life.pid)
            if "error" in m and life.pid not in self.expected_exit:
                self.unexpected_exits.append(f"daemon {life.pid} gone at {time.strftime('%H:%M:%S')}: {m['error']}")
                log(self.unexpected_exits[-1])
                with self.lock:
                    self.daemon = None
                life.ended_how = "died by itself"
            else:
                life.rss_max = max(life.rss_max, m.get("total_rss", 0))
                loop = m.get("loop", {}).get("pid")
                if loop and life.loop_pids and loop != life.loop_pids[-1] and life.pid not in self.expected_exit:
                    # the supervisor restarted its loop: the loop died without our doing
                    self.unexpected_exits.append(f"scheduler loop {life.loop_pids[-1]} of daemon {life.pid} was "
                                                 f"replaced by {loop} at {time.strftime('%H:%M:%S')}")
                    log(self.unexpected_exits[-1])
                if loop and loop not in life.loop_pids:
                    life.loop_pids.append(loop)
        if not self.db.exists():
            return
        for r in self.query("SELECT job_id, GROUP_CONCAT(number) AS n FROM attempts WHERE state = 'running'"
                            " GROUP BY job_id HAVING COUNT(*) > 1"):
            self.db_running_dupes.add((r["job_id"], tuple(int(x) for x in r["n"].split(","))))
        live = self.live_attempts()
        self.max_live_attempts = max(self.max_live_attempts, len(live))
        if live:
            keys = list(live)
            rows = self.query("SELECT job_id, number, state, ended_at FROM attempts WHERE job_id IN ("
                              + ",".join(str(j) for j, _ in keys) + ")")
            states = {(r["job_id"], r["number"]): r for r in rows}
            by_job: dict[int, list[int]] = collections.defaultdict(list)
            for (job, n), pids in live.items():
                by_job[job].append(n)
                row = states.get((job, n))
                if row is not None and row["state"] != "running" and row["ended_at"] and now - row["ended_at"] > STALE_GRACE_S:
                    if (job, n) not in self.stale:
                        self.stale.add((job, n))
                        self.orphan((job, n), f"recorded {row['state']} {now - row['ended_at']:.0f}s ago, still "
                                              f"live: {self.describe(pids)}")
                    for pid in pids:
                        try:
                            self.own_pids.setdefault(pid, psutil.Process(pid).create_time())
                        except psutil.Error:
                            pass
            for job, numbers in by_job.items():
                if len(numbers) > 1 and job not in self.live_dupes:
                    self.live_dupes[job] = (f"job {job}: processes of attempts {sorted(numbers)} alive at once: "
                                            + "; ".join(f"attempt {n}: {self.describe(live[(job, n)])}"
                                                        for n in sorted(numbers)))
                    log("DUPLICATE: " + self.live_dupes[job])
        self.samples += 1

    def sampler(self) -> None:
        while not self.stop_sampling.wait(self.args.sample_every):
            try:
                self.sample_once()
            except Exception:
                log("sampler error: " + traceback.format_exc(limit=3))

    # ------------------------------------------------------------ submitting

    def make_spec(self) -> tuple[str, str, list[dict[str, Any]]]:
        """An experiment name, its stages (YAML, unindented) and, per job in
        submission order, what it is expected to do."""
        rng = self.rng
        self.submits += 1
        name = f"soak{self.submits:04d}"
        retries = rng.randint(0, 2)
        cpu = rng.choice(CPUS)
        roll = rng.random()
        if roll < self.args.long_frac:
            s = round(rng.uniform(20, 60), 1)
            body = f"""\
                - name: long
                  command: "sleep {{s}}"
                  params: {{s: {s}}}
                  retries: {retries}
                  resources: {{cpu: {cpu}}}"""
            return name, body, [{"kind": "command", "action": "sleep", "retries": retries}]
        roll -= self.args.long_frac
        if roll < 0.05:  # a hang with a timeout
            body = f"""\
                - name: hang
                  run: "soakjobs:work"
                  params: {{action: hang, s: 60}}
                  retries: {retries}
                  timeout: 3s
                  resources: {{cpu: {cpu}}}"""
            return name, body, [{"kind": "callable", "action": "hang", "retries": retries}]
        roll -= 0.05
        if roll < 0.10:  # two stages: a callable, then a command after it
            action = rng.choice(["sleep", "sleep", "sleep", "fail"])
            r2 = rng.randint(0, 2)
            body = f"""\
                - name: first
                  run: "soakjobs:work"
                  params: {{action: {action}, s: {round(rng.uniform(0.1, 2), 2)}}}
                  retries: {retries}
                  resources: {{cpu: {cpu}}}
                - name: second
                  after: [first]
                  command: "sleep {{s}}"
                  params: {{s: {round(rng.uniform(0.1, 2), 2)}}}
                  retries: {r2}
                  resources: {{cpu: {rng.choice(CPUS)}}}"""
            return name, body, [{"kind": "callable", "action": action, "retries": retries},
                                {"kind": "command", "action": "sleep", "retries": r2, "upstream_index": 0}]
        roll -= 0.10
        n = rng.choice([1, 1, 1, 2, 3])
        values = sorted({round(rng.uniform(0.1, 3.0), 2) for _ in range(n)})
        grid = f"  sweep: {{grid: {{s: {json.dumps(values)}}}}}" if len(values) > 1 else ""
        s_param = "" if grid else f", s: {values[0]}"
        if roll < 0.40:
            body = f"""\
                - name: cmd
                  command: "sleep {{s}}"
                  params: {{{s_param.lstrip(', ')}}}
                  retries: {retries}
                  resources: {{cpu: {cpu}}}"""
            jobs = [{"kind": "command", "action": "sleep", "retries": retries} for _ in values]
        else:
            action = rng.choices(["sleep", "fail", "flaky", "mem", "cpu"], weights=[35, 20, 15, 15, 15])[0]
            extra, memory = "", ""
            if action == "mem":
                mb = rng.randint(50, 400)
                extra = f", mb: {mb}"
                roll = rng.random()
                if roll < 1 / 3:  # a memory request with room to spare: must succeed
                    memory = f", memory: {mb + 300}MiB"
                elif roll < 2 / 3:  # over its request: labq's watchdog must end it out_of_memory
                    action, values, grid = "memover", values[:1], ""
                    s_param = f", s: {max(values[0], 2.5)}"
                    memory = f", memory: {max(16, mb // 4)}MiB"
            body = f"""\
                - name: fn
                  run: "soakjobs:work"
                  params: {{action: {action}{s_param}{extra}}}
                  retries: {retries}
                  resources: {{cpu: {cpu}{memory}}}"""
            jobs = [{"kind": "callable", "action": action, "retries": retries} for _ in values]
        if grid:
            body = textwrap.dedent(body) + "\n" + grid
        return name, body, jobs

    def submit_one(self) -> int:
        name, body, jobs = self.make_spec()
        text = f"experiment: {name}\nstages:\n{textwrap.indent(textwrap.dedent(body), '  ')}\n"
        spec = self.spec_dir / "spec.yaml"
        spec.write_text(text)
        (self.spec_dir / ".history" / f"{name}.yaml").write_text(text)
        t0 = time.monotonic()
        proc = self.labq("submit", str(spec), "--json", "--no-start", timeout=120)
        self.submit_seconds.append(time.monotonic() - t0)
        if proc is None or proc.returncode != 0:
            return 0
        try:
            out = json.loads(proc.stdout)
            ids = [int(i) for i in out["job_ids"]]
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            self.cli_errors.append(f"submit {name}: unreadable output ({exc}): {proc.stdout[:300]}")
            return 0
        if len(ids) != len(jobs):
            self.cli_errors.append(f"submit {name}: {len(ids)} ids for {len(jobs)} expected jobs")
        with self.lock:
            self.returned_ids += ids
            for job_id, j in zip(ids, jobs):
                up = ids[j["upstream_index"]] if "upstream_index" in j else None
                self.expect[job_id] = Expect(job_id=job_id, kind=j["kind"], action=j["action"],
                                             retries=j["retries"], upstream=up)
        return len(ids)

    def cancel(self, job_id: int) -> None:
        proc = self.labq("cancel", str(job_id), "--json", timeout=60)
        if proc is None or proc.returncode != 0:
            return
        try:
            done = json.loads(proc.stdout)
        except json.JSONDecodeError:
            self.cli_errors.append(f"cancel {job_id}: unreadable output {proc.stdout[:200]}")
            return
        how = next((k for k, v in done.items() if job_id in v), "?")
        self.cancels[job_id] = {"answer": how, "at": time.time()}
        if how in ("cancelled", "stopping"):
            self.expect[job_id].interfered.append(f"cancel ({how})")
        log(f"cancel {job_id}: {how}")

    # ------------------------------------------------------------ killing workers

    def kill_worker(self) -> None:
        with self.lock:
            life = None if self.restarting else self.daemon
        if life is None:
            self.worker_kills["skipped: no scheduler"] += 1
            return
        rows = self.query("SELECT a.job_id, a.number, a.run_dir, j.target_kind FROM attempts a"
                          " JOIN jobs j ON j.id = a.job_id WHERE a.state = 'running'")
        if not rows:
            self.worker_kills["skipped: nothing running"] += 1
            return
        row = self.rng.choice(rows)
        job, n, run_dir = row["job_id"], row["number"], Path(row["run_dir"])
        if row["target_kind"] == "command" and self.rng.random() < 0.5:
            pgid = self.command_pgid(run_dir)
            if pgid is not None:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                    self.note_kill(job, n, f"job {job} attempt {n}: SIGKILL process group {pgid}", "command pgid")
                    with self.lock:
                        self.after_kill_checks.append((time.time() + KILL_GRACE_S, job, n,
                                                       f"the SIGKILL of its process group {pgid}"))
                    return
                except ProcessLookupError:
                    pass
        title = f"ray::labq-job-{job}-{n}"
        keeper = self.keeper(self.local_ray())  # Ray's workers run under the local Ray's keeper, not the daemon
        try:
            descendants = keeper.children(recursive=True) if keeper else None
        except psutil.Error:
            descendants = None
        if descendants is None:
            self.worker_kills["skipped: no local Ray keeper"] += 1
            return
        for p in descendants:
            try:
                if [a.strip() for a in p.cmdline()[:1]] == [title]:
                    p.kill()
                    self.note_kill(job, n, f"job {job} attempt {n}: kill -9 Ray worker {p.pid} ({title})",
                                   f"ray worker ({row['target_kind']})")
                    with self.lock:
                        self.after_kill_checks.append((time.time() + KILL_GRACE_S, job, n,
                                                       f"the kill -9 of its Ray worker {p.pid}"))
                    return
            except psutil.Error:
                continue
        self.worker_kills["skipped: worker not found (not started yet or just ended)"] += 1

    def orphan(self, key: tuple[int, int], what: str) -> None:
        with self.lock:
            self.job_orphans.setdefault(key, []).append(what)
        log(f"orphan: job {key[0]} attempt {key[1]}: {what}")

    def check_after_kills(self, force: bool = False) -> None:
        """A grace after a kill of a worker, process group or owner (KILL_GRACE_S,
        OWNER_KILL_GRACE_S), nothing may still hold the killed attempt's run dir.
        Not after a scheduler kill: its attempts run on, as they must."""
        with self.lock:
            due = [c for c in self.after_kill_checks if force or c[0] <= time.time()]
            for c in due:
                self.after_kill_checks.remove(c)
        if not due:
            return
        live = self.live_attempts()
        for when, job, n, what in due:
            if live.get((job, n)):
                grace = OWNER_KILL_GRACE_S if "owner" in what else KILL_GRACE_S
                self.orphan((job, n), f"{self.describe(live[(job, n)])} still alive "
                                      f"{grace + max(0.0, time.time() - when):.0f}s after {what}")

    def command_pgid(self, run_dir: Path) -> int | None:
        try:
            pgid = int((run_dir / "pgid").read_text().split()[0])
        except (FileNotFoundError, ValueError):
            return None
        want = str(run_dir / "stdout.log")
        try:
            for fd in os.listdir(f"/proc/{pgid}/fd"):
                try:
                    if os.readlink(f"/proc/{pgid}/fd/{fd}") == want:
                        return pgid
                except OSError:
                    continue
        except OSError:
            return None
        return None

    def note_kill(self, job: int, n: int, what: str, how: str) -> None:
        self.worker_kills[how] += 1
        self.kill_log.append(what)
        with self.lock:
            self.killed_attempts.add((job, n))
            if job in self.expect:
                self.expect[job].interfered.append(f"worker kill ({how})")
        log(what)

    # ------------------------------------------------------------ the run

    def run(self) -> int:
        args = self.args
        if self.db.exists():
            log(f"{self.db} exists: the soak needs a fresh LABQ_HOME")
            return 2
        self.home.mkdir(parents=True, exist_ok=True)
        log(f"LABQ_HOME={self.home}  specs in {self.spec_dir}  seed={args.seed}")
        exit_code = 1
        sampler = threading.Thread(target=self.sampler, name="sampler", daemon=True)
        chaos = None
        try:
            if not self.start_daemon("initial start"):
                log("the scheduler did not start")
                return 3
            sampler.start()
            duration = args.minutes * 60
            t_start = time.time()
            t_end = t_start + duration
            chaos = threading.Thread(target=self.chaos, args=(t_start, duration), name="chaos", daemon=True)
            chaos.start()
            self.chaos_thread = chaos
            submitted = 0
            pending_cancels: list[tuple[float, int]] = []
            next_kill = t_start + self.rng.expovariate(1 / args.kill_every)
            while time.time() < t_end:
                now = time.time()
                if submitted < args.rate * (now - t_start) / 60 + 1:
                    n = self.submit_one()
                    for job_id in self.returned_ids[len(self.returned_ids) - n:]:
                        if self.rng.random() < args.cancel_frac:
                            pending_cancels.append((now + self.rng.uniform(0, 10), job_id))
                    submitted += max(n, 1)
                due = [c for c in pending_cancels if c[0] <= time.time()]
                for c in due:
                    pending_cancels.remove(c)
                    self.cancel(c[1])
                if time.time() >= next_kill:
                    self.kill_worker()
                    next_kill = time.time() + self.rng.expovariate(1 / args.kill_every)
                self.check_after_kills()
                self.check_daemon_alive()
                time.sleep(0.1)
            log(f"submitting stopped after {args.minutes:g} min: {len(self.returned_ids)} jobs in {self.submits} submits")
            for _, job_id in pending_cancels:  # cancels that were due during the last seconds
                self.cancel(job_id)
            self.stop_chaos.set()
            if chaos is not None:
                chaos.join(timeout=300)  # a restart under way finishes first
            time.sleep(2.0)
            self.check_after_kills(force=True)
            t_drain = time.time()
            self.drain()
            self.drain_seconds = time.time() - t_drain
            self.stop_sampling.set()
            sampler.join(timeout=30)
            with self.lock:
                life = self.daemon
            if life is not None:
                life.end = self.measure(life.pid)
            self.shutdown()
            summary = self.summarize()
            exit_code = 0 if summary["ok"] else 1
        except KeyboardInterrupt:
            log("interrupted")
            exit_code = 130
        finally:
            self.stop_sampling.set()
            self.stop_chaos.set()
            if not self.shut_down:
                self.shutdown()
        if exit_code == 0 and self.own_home and not args.keep:
            shutil.rmtree(self.home, ignore_errors=True)
            shutil.rmtree(self.spec_dir, ignore_errors=True)
        else:
            log(f"kept LABQ_HOME={self.home} and specs in {self.spec_dir}")
        return exit_code

    def check_daemon_alive(self) -> None:
        with self.lock:
            if self.restarting or self.daemon is not None:
                return
        log("no live scheduler: restarting it")
        with self.lock:
            self.restarting = True
        try:
            self.start_daemon("restart after an unexpected exit")
        finally:
            with self.lock:
                self.restarting = False

    def drain(self) -> None:
        deadline = time.monotonic() + self.args.drain_timeout
        last = None
        while time.monotonic() < deadline:
            self.check_daemon_alive()
            rows = self.query("SELECT state, COUNT(*) AS n FROM jobs WHERE state IN ('blocked', 'pending', 'running')"
                              " GROUP BY state")
            left = {r["state"]: r["n"] for r in rows}
            if not left:
                log("every job is terminal")
                return
            if left != last:
                log(f"waiting for {sum(left.values())} jobs: {left}")
                last = left
            time.sleep(1.0)
        log(f"drain timeout ({self.args.drain_timeout:.0f}s) with jobs still active")

    def shutdown(self) -> None:
        """Stop the scheduler, then kill what this run can prove it owns and left behind."""
        self.shut_down = True
        self.stop_chaos.set()
        if self.chaos_thread is not None:
            self.chaos_thread.join(timeout=300)  # never stop while a restart is under way
        with self.lock:
            life = self.daemon
        final: set[int] = set()
        if life is not None:
            final = {p.pid for p in self.remember_descendants(life.pid)}
            self.expected_exit.add(life.pid)
        local = self.local_ray()
        keeper = self.keeper(local)
        ray_tree = self.tree(keeper)  # the local Ray's keeper and all under it, before the stop
        self.ray_root_recorded = (keeper.pid, ray_tree[keeper.pid]) if keeper and keeper.pid in ray_tree else None
        proc = self.labq("scheduler", "stop", timeout=90, check=False)
        if proc is not None:
            log((proc.stdout or proc.stderr).strip())
        if life is not None:
            life.ended_how = "labq scheduler stop"
            deadline = time.monotonic() + 15
            while psutil.pid_exists(life.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        # With nothing running, the stop ends the local Ray: 5 s later nothing of it may be left.
        if ray_tree:
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and any(self.alive(q, t) for q, t in ray_tree.items()):
                time.sleep(0.2)
            still = self.keeper(local)
            ray_tree.update(self.tree(still))  # what started under it since
            left = [q for q, t in ray_tree.items() if self.alive(q, t)]
            if left:
                what = []
                for q in left:
                    try:
                        what.append(short_cmd(psutil.Process(q)))
                    except psutil.Error:
                        continue
                self.warnings.append(f"the local Ray outlived `labq scheduler stop` by 5s (keeper {local.get('pid')} "
                                     f"{'alive' if still else 'gone'}; {len(what)} of its processes left, killed by "
                                     f"the soak: {', '.join(what)})")
                log(self.warnings[-1])
                for q in left:
                    try:
                        if self.alive(q, ray_tree[q]):
                            psutil.Process(q).kill()
                    except psutil.Error:
                        pass
        time.sleep(3.0)
        for pid, created in list(self.own_pids.items()):
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) > 0.01 or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                what = short_cmd(p)
                self.leftovers.append(what)
                if pid in final:
                    self.stop_leftovers.append(what)
                p.kill()
            except psutil.Error:
                continue
        for (job, n), pids in self.live_attempts().items():
            for pid in pids:
                try:
                    psutil.Process(pid).kill()
                    self.leftovers.append(f"{pid}:holder of runs/{job}/attempt-{n}")
                except psutil.Error:
                    pass
        if self.leftovers:
            log(f"killed {len(self.leftovers)} leftover processes of this run: {self.leftovers}")

    # ------------------------------------------------------------ the verdict

    def summarize(self) -> dict[str, Any]:
        jobs = {r["id"]: r for r in self.query("SELECT id, state, attempts, retries, free_retries, cancel_requested"
                                               " FROM jobs")}
        attempts = self.query("SELECT id, job_id, number, state, dispatched_at, started_at, ended_at, error"
                              " FROM attempts ORDER BY job_id, number")
        transitions = self.query("SELECT attempt_id, COUNT(*) AS n FROM events WHERE kind = 'state'"
                                 " AND message LIKE 'running -> %' AND attempt_id IS NOT NULL"
                                 " GROUP BY attempt_id HAVING COUNT(*) > 1")
        by_job: dict[int, list[sqlite3.Row]] = collections.defaultdict(list)
        for a in attempts:
            by_job[a["job_id"]].append(a)

        returned = self.returned_ids
        counts = collections.Counter(returned)
        twice = sorted(i for i, c in counts.items() if c > 1)
        missing = sorted(set(returned) - set(jobs))
        phantom = sorted(set(jobs) - set(returned))
        terminal = [j for j in jobs.values() if j["state"] in TERMINAL]
        lost = sorted(j["id"] for j in jobs.values() if j["state"] not in TERMINAL)

        # An attempt's end is the worker's clock when it wrote its result, its
        # dispatch the scheduler's clock at the start of the pass that launched
        # it: a pass that finds an attempt ending and starts the next one can
        # date the dispatch a few ms before that end.  What runs is what counts:
        # the next attempt's worker start (its own clock), else its dispatch.
        overlaps = []
        for job_id, rows in by_job.items():
            for prev, nxt in zip(rows, rows[1:]):
                began = nxt["started_at"] or nxt["dispatched_at"]
                if prev["ended_at"] is None or (began is not None and began < prev["ended_at"] - 1e-6):
                    overlaps.append(f"job {job_id}: attempt {nxt['number']} began before attempt {prev['number']} ended")
        dupes = (overlaps + [f"job {j}: attempts {n} 'running' at once in the db" for j, n in sorted(self.db_running_dupes)]
                 + [f"attempt id {r['attempt_id']}: {r['n']} 'running -> ...' transitions" for r in transitions]
                 + list(self.live_dupes.values()))

        consistency = []
        for job_id, j in jobs.items():
            rows = by_job.get(job_id, [])
            if j["attempts"] != len(rows) or (rows and rows[-1]["number"] != len(rows)):
                consistency.append(f"job {job_id}: jobs.attempts={j['attempts']} but {len(rows)} attempt rows")
            if j["state"] in TERMINAL and any(a["state"] == "running" for a in rows):
                consistency.append(f"job {job_id}: {j['state']} with an attempt still 'running'")
            if j["state"] == "succeeded" and (not rows or rows[-1]["state"] != "succeeded"):
                consistency.append(f"job {job_id}: succeeded but its last attempt is {rows[-1]['state'] if rows else None}")
            if j["attempts"] - j["free_retries"] > j["retries"] + 1:
                consistency.append(f"job {job_id}: {j['attempts']} attempts, {j['free_retries']} free, retries {j['retries']}")

        outcome_bad = []
        cancel_bad = []
        interfered = 0
        for job_id, e in sorted(self.expect.items()):
            j = jobs.get(job_id)
            if j is None or j["state"] not in TERMINAL:
                continue
            final = j["state"]
            c = self.cancels.get(job_id)
            if c and c["answer"] == "cancelled" and final != "cancelled":
                cancel_bad.append(f"job {job_id}: cancel answered 'cancelled' but it ended {final}")
            if c and c["answer"] == "stopping" and final not in ("cancelled", "succeeded"):
                cancel_bad.append(f"job {job_id}: cancel answered 'stopping' but it ended {final}")
            if e.interfered:
                interfered += 1
                continue
            if e.upstream is not None:
                up = jobs.get(e.upstream)
                if up is None or up["state"] != "succeeded":
                    if final not in ("upstream_failed", "cancelled"):
                        outcome_bad.append(f"job {job_id}: upstream {e.upstream} ended "
                                           f"{up['state'] if up else '?'} but it ended {final}")
                    continue
            if e.action == "fail":
                want = {"failed"}
            elif e.action == "hang":
                want = {"timed_out"}
            elif e.action == "memover":
                want = {"failed"}  # every attempt out_of_memory
            elif e.action == "flaky":
                want = {"succeeded"} if e.retries >= 1 else {"failed"}
            else:
                want = {"succeeded"}
            if final not in want:
                last = by_job.get(job_id, [None])[-1]
                why = f" ({last['state']}: {(last['error'] or '').strip().splitlines()[-1][:160] if last['error'] else ''})" if last else ""
                outcome_bad.append(f"job {job_id} ({e.kind} {e.action}, retries {e.retries}): ended {final}, "
                                   f"expected {'/'.join(sorted(want))}{why}")

        per_job = collections.Counter(len(by_job.get(j, [])) for j in jobs)
        attempt_states = collections.Counter(a["state"] for a in attempts)
        lost_reasons = collections.Counter(
            ("died while no scheduler ran" if "no labq owner held it" in (a["error"] or "") else
             "owner died" if "owner" in (a["error"] or "") else
             "scheduler stop" if "scheduler stopped" in (a["error"] or "") else
             (a["error"] or "?").split(":")[0][:40])
            for a in attempts if a["state"] == "lost")
        # Attempts run again that nothing this soak did explains: a scheduler kill
        # must cost no attempt.  Excused, attempt by attempt: one whose Ray worker
        # or process group the soak killed; one lost for its owner ("owner" in the
        # error) that ran when the soak killed the owner (dispatched before the kill,
        # or within OWNER_KILL_GRACE_S after it, when it went to the dead owner,
        # and ended after it); a packed job requeued uncharged because its pack
        # ended before it began or was stopped for another job of it.
        def excused(a: sqlite3.Row) -> bool:
            error = a["error"] or ""
            if (a["job_id"], a["number"]) in self.killed_attempts:
                return True
            if "owner" in error and any((a["dispatched_at"] or 0) <= t + OWNER_KILL_GRACE_S
                                        and (a["ended_at"] is None or a["ended_at"] >= t)
                                        for t in self.owner_kill_times):
                return True
            return error.startswith("not started: the pack") or error.startswith("interrupted: its pack")

        redone = [f"job {a['job_id']} attempt {a['number']} (dispatched {time.strftime('%H:%M:%S', time.localtime(a['dispatched_at'] or 0))}, "
                  f"lost {time.strftime('%H:%M:%S', time.localtime(a['ended_at'] or 0))}): {(a['error'] or '').strip()[:200]}"
                  for a in attempts if a["state"] == "lost" and not excused(a)]
        adoptions = [d.adopted for d in self.daemons if d.adopted]
        first, last = (self.daemons[0], self.daemons[-1]) if self.daemons else (None, None)

        invariants = {
            "lost (not terminal after the wait)": lost,
            "missing (acknowledged, not in the db)": missing,
            "ids returned twice": twice,
            "duplicated attempts": dupes,
            "db consistency": consistency,
            "unexpected outcomes (no cancel, no kill)": outcome_bad,
            "cancel not honoured": cancel_bad,
            "attempts with orphaned job processes (outlived the worker, process group or owner the soak killed, "
            "or their attempt's recorded end by >10s)":
                [f"job {j} attempt {n}: " + "; then ".join(msgs) for (j, n), msgs in sorted(self.job_orphans.items())],
            "attempts redone (lost to a scheduler kill, or to nothing this soak did)": redone,
            "local Ray not outliving a scheduler kill (keeper died, or the restart joined another Ray)":
                self.ray_failures,
            "unexpected scheduler exits": self.unexpected_exits,
            "CLI errors": self.cli_errors,
        }
        failed = {k: v for k, v in invariants.items() if v}

        def mib(x: Any) -> str:
            return f"{x / 2**20:.0f} MiB" if isinstance(x, (int, float)) and x else "n/a"

        lines = ["", "=" * 72, "labq soak summary", "=" * 72,
                 f"duration {self.args.minutes:g} min, rate {self.args.rate:g} jobs/min, seed {self.args.seed}, "
                 f"--cpus {self.args.cpus}, LABQ_HOME {self.home}",
                 f"labq code: {code_version()}",
                 f"wall time {time.time() - self.t_begin:.0f}s (of which waiting for the last jobs "
                 f"{self.drain_seconds:.0f}s)",
                 f"jobs submitted (ids returned by {self.submits} submits): {len(returned)}",
                 f"jobs in the db: {len(jobs)}" + (f" (not returned by any submit: {phantom})" if phantom else ""),
                 f"terminal: {len(terminal)}",
                 f"non-terminal after the wait (lost): {len(lost)}" + (f" {lost[:20]}" if lost else ""),
                 f"duplicated: {len(dupes)}  (ids returned twice: {len(twice)})",
                 "final states: " + ", ".join(f"{k} {v}" for k, v in sorted(collections.Counter(
                     j['state'] for j in jobs.values()).items())),
                 "attempts per job: " + ", ".join(f"{k}: {v}" for k, v in sorted(per_job.items()))
                 + f"  (mean {statistics.mean([len(by_job.get(j, [])) for j in jobs]) if jobs else 0:.2f}, "
                   f"total {len(attempts)})",
                 "attempt states: " + ", ".join(f"{k} {v}" for k, v in sorted(attempt_states.items())),
                 "lost attempts by cause: " + (", ".join(f"{k} {v}" for k, v in lost_reasons.most_common()) or "none"),
                 f"attempts redone (lost, not to a worker, process group or owner the soak killed): {len(redone)}",
                 f"cancels: {len(self.cancels)} (" + ", ".join(f"{k} {v}" for k, v in sorted(collections.Counter(
                     c['answer'] for c in self.cancels.values()).items())) + ")",
                 "worker kills: " + (", ".join(f"{k} {v}" for k, v in sorted(self.worker_kills.items())) or "none"),
                 f"jobs interfered with (cancel or kill): {interfered}",
                 f"scheduler daemons: {len(self.daemons)} (kill -9 + restart: {sum(d.ended_how == 'kill -9' for d in self.daemons)}"
                 + f", owner kills {self.owner_kills}); "
                 f"attempts running on through the daemon kills (summed over kills, seen live before each restart): "
                 f"{self.job_survivors_3s}; adopted by the restarts: {sum(a for a, _ in adoptions)} "
                 f"({sum(d for _, d in adoptions)} had died with their scheduler)",
                 ]
        def proc_line(m: dict[str, Any]) -> str:
            if not m:
                return "not measured"
            if "error" in m:
                return m["error"]
            text = (f"RSS {mib(m.get('rss'))}, fds {m.get('fds')}, children {m.get('children')} "
                    f"(descendants {m.get('descendants')})")
            if "loop" in m:
                lp = m["loop"]
                text = (f"supervisor {text}; loop pid {lp['pid']}: RSS {mib(lp.get('rss'))}, fds {lp.get('fds')}, "
                        f"children {lp.get('children')} (descendants {lp.get('descendants')}); "
                        f"total RSS {mib(m.get('total_rss'))}")
            return text

        for i, d in enumerate(self.daemons):
            lines.append(f"  #{i + 1} pid {d.pid}: `start` returned in {d.start_seconds:.1f}s "
                         f"({'ready' if d.ready_on_return else f'NOT ready; ready after {d.ready_seconds:.1f}s'}); "
                         f"total RSS {mib(d.start.get('total_rss'))} -> {mib(d.end.get('total_rss'))} "
                         f"(max {mib(d.rss_max)}); ended: {d.ended_how}"
                         + (f"; local Ray processes living on: {d.ray_survivors}" if d.ended_how == "kill -9" else "")
                         + (f"; next scheduler adopted {d.adopted[0]} ({d.adopted[1]} had died)" if d.adopted else "")
                         + (f"; {len(d.orphans)} other descendants alive 1s after: {', '.join(d.orphans)}"
                            if d.orphans else ""))
        if first and last:
            lines.append(f"scheduler at start (daemon pid {first.pid}): {proc_line(first.start)}")
            lines.append(f"scheduler at end   (daemon pid {last.pid}): {proc_line(last.end)}"
                         + ("  [a different process: restarted]" if first.pid != last.pid else ""))
        if self.submit_seconds:
            s = sorted(self.submit_seconds)
            lines.append(f"submit latency: median {statistics.median(s):.2f}s, max {s[-1]:.2f}s; "
                         f"sampler passes {self.samples}, most attempts live at once {self.max_live_attempts}")
        if self.stop_leftovers:
            self.warnings.append(f"{len(self.stop_leftovers)} descendants of the last daemon outlived "
                                 f"`labq scheduler stop` by 3s: {', '.join(self.stop_leftovers)}")
        if self.leftovers:
            lines.append(f"processes of this run alive after the stop, killed by the soak: {len(self.leftovers)}"
                         f" ({', '.join(self.leftovers)})")
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            lines += [f"  - {w}" for w in self.warnings]
        lines.append("invariants:")
        for k, v in invariants.items():
            lines.append(f"  [{'FAIL' if v else 'ok'}] {k}: {len(v)}")
            for item in v[:10]:
                lines.append(f"      {item}")
            if len(v) > 10:
                lines.append(f"      ... and {len(v) - 10} more")
        lines.append("RESULT: " + ("PASS" if not failed else f"FAIL ({len(failed)} invariants)"))
        print("\n".join(lines), flush=True)
        summary = {"ok": not failed, "submitted": len(returned), "in_db": len(jobs), "terminal": len(terminal),
                   "lost": lost, "duplicated": dupes, "ids_twice": twice, "redone": redone,
                   "attempts": len(attempts), "daemon_kills": sum(d.ended_how == "kill -9" for d in self.daemons),
                   "owner_kills": self.owner_kills, "adoptions": adoptions, "attempts_per_job": dict(per_job),
                   "final_states": dict(collections.Counter(j["state"] for j in jobs.values())),
                   "daemons": [d.__dict__ for d in self.daemons], "invariants": invariants, "warnings": self.warnings}
        try:
            (self.home / "soak-summary.json").write_text(json.dumps(summary, indent=1, default=str))
        except OSError:
            pass
        return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="how long to keep submitting")
    p.add_argument("--rate", type=float, default=20.0, help="jobs per minute (default 20)")
    p.add_argument("--home", help="LABQ_HOME to use (must hold no labq.db); default: a fresh temp dir")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--cpus", type=float, default=2, help="the scheduler's --cpus (default 2)")
    p.add_argument("--daemon-kill-gap", "--daemon-kills-every", type=float, nargs=2, default=[20.0, 60.0],
                   metavar=("MIN", "MAX"), help="seconds from a scheduler being up to its kill -9, drawn at random "
                   "between MIN and MAX (default 20 60; MAX 0: no scheduler kills)")
    p.add_argument("--owner-kills", type=int, default=0,
                   help="kill -9s of labq's owner actor, spread over the run (default 0)")
    p.add_argument("--kill-every", type=float, default=15.0, help="mean seconds between worker kills (default 15)")
    p.add_argument("--cancel-frac", type=float, default=0.1, help="share of jobs cancelled (default 0.1)")
    p.add_argument("--long-frac", type=float, default=0.05, help="share of experiments that are sleep 20-60 s")
    p.add_argument("--drain-timeout", type=float, default=420.0, help="seconds to wait for every job to end")
    p.add_argument("--sample-every", type=float, default=1.5, help="sampler period in seconds")
    p.add_argument("--keep", action="store_true", help="keep the temp LABQ_HOME even when everything passed")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    soak = Soak(args)

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    return soak.run()


if __name__ == "__main__":
    sys.exit(main())
