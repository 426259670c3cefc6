"""The long-running scheduler process: start, stop, status.

One scheduler per ``LABQ_HOME``, guaranteed by an exclusive ``flock`` on
``scheduler.lock`` that the daemon holds for its whole life (the kernel drops it
if the process dies, so a stale pid file can never block a restart), and one
per Ray cluster, by a named actor only a live scheduler holds
(``ray_backend.SchedulerLock``).  The daemon writes ``scheduler.pid`` and logs
to ``scheduler.log`` in ``LABQ_HOME``.

Running attempts outlive the scheduler (their owners are on the nodes, see
workers.owner), and so does the local Ray labq starts (scheduler.local_ray):
a stop leaves them running unless asked to drain or cancel, and the next start
adopts them.

This module does not import Ray; only the daemon's child process does.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.errors import SchedulerError, StoreError

if TYPE_CHECKING:
    from scheduler.config import Settings

READY_TIMEOUT_SECONDS = 90.0


@dataclass
class DaemonStatus:
    running: bool
    pid: int | None
    home: str
    heartbeat_age: float | None
    ray: str | None  # "up", "down", or None when unknown
    address: str | None

    def to_json(self) -> dict:
        return self.__dict__.copy()

    @classmethod
    def from_json(cls, data: dict) -> "DaemonStatus":
        return cls(**{k: data.get(k) for k in ("running", "pid", "home", "heartbeat_age", "ray", "address")})


def _lock_path(home: Path) -> Path:
    return home / "scheduler.lock"


def _pid_path(home: Path) -> Path:
    return home / "scheduler.pid"


def log_path(home: Path) -> Path:
    return home / "scheduler.log"


def _state_path(home: Path) -> Path:
    return home / "scheduler.json"


def is_running(home: Path) -> bool:
    """True when some process holds the scheduler lock of ``home``."""
    path = _lock_path(home)
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def status(home: Path) -> DaemonStatus:
    running = is_running(home)
    pid = None
    state: dict = {}
    if running:
        try:
            pid = int(_pid_path(home).read_text())
        except (FileNotFoundError, ValueError):
            pid = None
        state = _read_state(home)
    age = time.time() - state["heartbeat"] if state.get("heartbeat") else None
    ray_state = state.get("ray") if running else None
    if ray_state == "up" and age is not None and age > STALE_HEARTBEAT_SECONDS:
        ray_state = "not responding"  # a Ray call is stuck: Ray is probably gone
    return DaemonStatus(running=running, pid=pid, home=str(home), heartbeat_age=age,
                        ray=ray_state, address=state.get("address"))


def start(settings: Settings, *, cluster: str | None, address: str | None, cpus: float | None,
          gpus: int | None, idle_timeout: float | None, wait: bool, checked: bool = False) -> int | None:
    """Spawn the daemon in its own session; returns its pid, or None if one runs
    already.  With ``wait``, return once it has connected to Ray.  ``checked``:
    the caller has just checked the whole database (Store.check_intact)."""
    home = settings.home_path
    if is_running(home):
        return None
    from scheduler.store import Store

    store = Store(home)  # refuses a home not this account's own, or a database that is not labq's
    try:
        if not checked:
            store.check_intact()  # and one damaged in the middle: the scheduler would write into it
    finally:
        store.close()
    # Checked here, so the scheduler's first life need not read every page again.
    args = [sys.executable, "-m", "scheduler.daemon", "--home", str(home), "--checked"]
    if cluster:
        args += ["--cluster", str(cluster)]
    if address:
        args += ["--address", address]
    if cpus is not None:
        args += ["--cpus", str(cpus)]
    if gpus is not None:
        args += ["--gpus", str(gpus)]
    if idle_timeout is not None:
        args += ["--idle-timeout", str(idle_timeout)]
    # Everything the scheduler and its local Ray create (the log, pid and state
    # files, run dirs, logs, outputs) is private to this account.
    old_umask = os.umask(PRIVATE_UMASK)
    try:
        with open(log_path(home), "a") as logf:
            os.chmod(log_path(home), 0o600)
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    start_new_session=True, env={**os.environ, "LABQ_HOME": str(home)})
    finally:
        os.umask(old_umask)
    if not wait:
        return proc.pid
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if is_running(home):  # lost a race to another starter: that one serves
                return None
            why = _read_state(home).get("error")
            if why:
                raise SchedulerError(f"the scheduler did not start: {why}")
            raise SchedulerError(f"the scheduler exited with code {proc.returncode}; see {log_path(home)}")
        st = status(home)
        if st.running and st.ray == "up" and _read_state(home).get("pid") == proc.pid:
            return proc.pid
        time.sleep(0.1)
    raise SchedulerError(f"the scheduler did not connect to Ray within {READY_TIMEOUT_SECONDS:.0f}s; "
                         f"see {log_path(home)}")


# How a stop treats the attempts that run (`labq scheduler stop [--drain | --cancel-running]`).
STOP_LEAVE = "leave"  # they run on under their owners; the next start adopts them
STOP_DRAIN = "drain"  # start nothing new, wait for them to end, then stop
STOP_CANCEL = "cancel"  # end them and requeue their jobs (labq before 0.2)
STOP_MODES = (STOP_LEAVE, STOP_DRAIN, STOP_CANCEL)


@dataclass
class Stopped:
    pid: int
    left_running: int | None  # attempts left running for the next scheduler (None: not known)
    killed: bool = False  # it did not stop in time and was killed


def stop(home: Path, timeout: float | None = 30.0, mode: str = STOP_LEAVE) -> Stopped | None:
    """Ask the daemon to stop (SIGTERM, with ``mode`` left in ``scheduler.stop``)
    and wait for it to let go of its lock; SIGKILL after ``timeout`` (None: wait
    as long as it takes, as a drain does).  Returns what stopped, or None if
    none ran."""
    st = status(home)
    if not st.running or st.pid is None:
        return None
    request = _stop_path(home)
    request.write_text(json.dumps({"mode": mode, "at": time.time()}))
    os.kill(st.pid, signal.SIGTERM)
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        if not is_running(home):
            return Stopped(st.pid, _read_state(home).get("left_running"))
        time.sleep(0.1)
    os.kill(st.pid, signal.SIGKILL)
    return Stopped(st.pid, None, killed=True)


def _stop_path(home: Path) -> Path:
    return home / "scheduler.stop"


def _take_stop_request(home: Path) -> str:
    """The mode the last `labq scheduler stop` asked for (a plain SIGTERM: leave)."""
    try:
        mode = json.loads(_stop_path(home).read_text()).get("mode")
        _stop_path(home).unlink()
    except (OSError, ValueError, AttributeError):
        return STOP_LEAVE
    return mode if mode in STOP_MODES else STOP_LEAVE


# ---------------------------------------------------------------- the daemon itself

SUPERVISOR_BACKOFF_SECONDS = (2.0, 5.0, 10.0, 30.0)
# A child that exits with this found the state database unusable: no restart mends that.
EXIT_STATE_UNUSABLE = 78
# A child that lost Ray exits with this; the supervisor starts a new one.
EXIT_RAY_DOWN = 75
# Another scheduler already drives this Ray cluster: no restart mends that.
EXIT_CLUSTER_TAKEN = 76
HEARTBEAT_SECONDS = 2.0
PRIVATE_UMASK = 0o077
RAY_DOWN_BEATS = 3  # heartbeats in a row that find Ray down before the child gives up on it
# A heartbeat older than this means the loop is stuck (typically: Ray is gone and
# a Ray call is blocking until Ray's own timeout ends the process).
STALE_HEARTBEAT_SECONDS = 10.0


def _parse(argv: list[str] | None):
    import argparse

    parser = argparse.ArgumentParser(prog="labq-scheduler")
    parser.add_argument("--home", required=True)
    parser.add_argument("--cluster")
    parser.add_argument("--address")
    parser.add_argument("--cpus", type=float)
    parser.add_argument("--gpus", type=int)
    parser.add_argument("--idle-timeout", type=float)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    # The child before this one lost its Ray: do not join the same local Ray again.
    parser.add_argument("--ray-was-down", action="store_true", help=argparse.SUPPRESS)
    # The database was checked just before this start (by the CLI that spawned it).
    parser.add_argument("--checked", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _write_state(home: Path, **state) -> None:
    tmp = _state_path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps({"heartbeat": time.time(), **state}))
    os.replace(tmp, _state_path(home))


def main(argv: list[str] | None = None) -> int:
    """The supervisor: holds the lock and the pid file, never imports Ray, and
    runs the scheduler loop in a child process.  Ray ends a driver whose GCS is
    gone for 60 s; when that (or anything else) kills the child, the supervisor
    records Ray as down and starts a new child with backoff, which reconnects
    and reconciles.  A child that exits 0 (stopped, or idle) ends the daemon."""
    args = _parse(argv)
    os.umask(PRIVATE_UMASK)
    if args.child:
        return _child(args)
    home = Path(args.home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(_lock_path(home), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another scheduler serves this home
    _pid_path(home).write_text(str(os.getpid()))
    # Replace a dead predecessor's state at once (keeping what it recorded of its
    # Ray, for the reaper), so nobody mistakes it for this scheduler's.
    _write_state(home, pid=os.getpid(), ray="starting", **_old_ray(home))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("labq.daemon")
    stop_event = threading.Event()
    child: dict[str, subprocess.Popen | None] = {"proc": None}

    def on_signal(*_):
        stop_event.set()
        if child["proc"] is not None and child["proc"].poll() is None:
            child["proc"].send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failures = 0
    lives = 0
    ray_was_down = False
    while not stop_event.is_set():
        # Only the first life trusts the starter's check: a restart checks again.
        child_args = [a for a in (argv or sys.argv[1:]) if a != "--checked" or lives == 0]
        if ray_was_down:
            child_args.append("--ray-was-down")
        lives += 1
        proc = subprocess.Popen([sys.executable, "-m", "scheduler.daemon", "--child", *child_args],
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        child["proc"] = proc
        started = time.monotonic()
        code = proc.wait()
        if code:
            log.info("the scheduler process exited with code %s", code)
        if code in (0, EXIT_STATE_UNUSABLE, EXIT_CLUSTER_TAKEN) or stop_event.is_set():
            if code == EXIT_STATE_UNUSABLE:
                log.error("the state database is unusable (see above); the scheduler stops instead of retrying")
            if code == EXIT_CLUSTER_TAKEN:
                log.error("another labq scheduler drives this Ray cluster (see above); this one stops")
            break
        ray_was_down = code == EXIT_RAY_DOWN
        failures = 0 if time.monotonic() - started > 60 else failures + 1
        delay = SUPERVISOR_BACKOFF_SECONDS[min(failures, len(SUPERVISOR_BACKOFF_SECONDS) - 1)]
        log.warning("the scheduler process exited with code %s (Ray down?); restarting in %.0fs", code, delay)
        _write_state(home, pid=os.getpid(), ray="down", **_old_ray(home))
        stop_event.wait(delay)
    if code == EXIT_CLUSTER_TAKEN:
        _write_state(home, pid=os.getpid(), ray="taken", **{**_old_ray(home), "error": _read_state(home).get("error")})
    _stop_idle_local_ray(home, log)
    log.info("scheduler stopped")
    return 0


def _stop_idle_local_ray(home: Path, log: logging.Logger) -> None:
    """Stop the local Ray once the scheduler has stopped with nothing running
    on it (running attempts keep it up for the next scheduler to adopt)."""
    from scheduler import local_ray

    state = _read_state(home)
    kept = local_ray.LocalRay.from_json(state.get("local_ray"))
    left = state.get("left_running")
    if left is None:  # stopped between lives, or the child died: the database says what still runs
        left = _running_in_db(home)
    if kept is None or left != 0:
        return
    ended = local_ray.stop(kept)
    _write_state(home, **{**state, "local_ray": None, "ray_processes": [], "heartbeat": time.time()})
    if ended:
        log.info("stopped the local Ray (%d processes): nothing runs on it", ended)


def _running_in_db(home: Path) -> int | None:
    """How many attempts the database says run (None if it cannot be read)."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{home / 'labq.db'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM attempts WHERE state = 'running'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _read_state(home: Path) -> dict:
    """scheduler.json as the last writer left it ({} when missing or half-written)."""
    try:
        return json.loads(_state_path(home).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _die_with_parent() -> None:
    """In the child before exec: if the supervisor dies (even by kill -9), the
    child gets SIGKILL, so a new scheduler can never run beside an old loop."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _old_ray(home: Path) -> dict:
    """What the last child recorded of its local Ray, kept so the next one reaps it."""
    old = _read_state(home)
    return {k: old.get(k) for k in ("address", "ray_processes", "local_ray")}


def _child(args) -> int:
    """One life of the scheduler loop, connected to Ray."""
    home = Path(args.home)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("labq.daemon")

    from scheduler import local_ray
    from scheduler.config import load_settings
    from scheduler.loop import Scheduler, run
    from scheduler.ray_backend import ClusterTaken, RayBackend
    from scheduler.store import Store

    os.environ["LABQ_HOME"] = str(home)
    settings = load_settings(args.cluster)
    address = args.address or settings.address
    if address == "local":
        address = None
    stop_event = threading.Event()
    stop_mode = {"mode": STOP_LEAVE}
    scheduler_ref: dict[str, Scheduler | None] = {"it": None}

    def on_term(*_) -> None:
        mode = _take_stop_request(home)
        stop_mode["mode"] = mode
        if mode == STOP_DRAIN and scheduler_ref["it"] is not None:
            log.info("draining: nothing new starts; the scheduler stops once what runs has ended")
            scheduler_ref["it"].draining = True
        else:
            stop_event.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    supervisor = os.getppid()
    keeper: dict[str, local_ray.LocalRay | None] = {"it": None}

    def write_state(ray_state: str, **extra) -> None:
        kept = keeper["it"]
        _write_state(home, pid=supervisor, ray=ray_state, address=address or "local",
                     local_ray=kept.to_json() if kept else None,
                     ray_processes=kept.processes() if kept else [], **extra)

    try:  # before Ray: a damaged database is not Ray's fault, and no retry mends it
        store = Store(home, fsync_commits=False)  # see Store: kill -9 loses nothing, a power cut may rerun jobs
        if not args.checked:
            store.check_intact()
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_STATE_UNUSABLE
    if address is None:
        try:
            keeper["it"] = _local_ray(home, args, settings, log)
        except Exception as exc:
            log.error("could not start the local Ray: %s", exc)
            return EXIT_RAY_DOWN
    write_state("starting")
    joined = address or keeper["it"].address
    log.info("connecting to Ray (%s)", address or f"local, {joined}")
    backend = RayBackend(address=joined, home=home)
    try:
        backend.connect()
        backend.lock_cluster(home)
    except ClusterTaken as exc:
        log.error("%s", exc)
        write_state("taken", error=str(exc))
        backend.shutdown()
        return EXIT_CLUSTER_TAKEN
    except Exception as exc:  # Ray not there (yet): the supervisor retries
        log.error("could not connect to Ray at %s: %s", joined, exc)
        return EXIT_RAY_DOWN
    signal.signal(signal.SIGTERM, on_term)  # again: joining Ray put its own handler (exit at once) in place
    scheduler = Scheduler(store, backend, settings)
    found = scheduler.reconcile(time.time())
    if found.adopted or found.lost:
        log.info("adopted %d attempts that outlived the previous scheduler; %d had died with it (requeued)",
                 found.adopted, found.lost)
    scheduler_ref["it"] = scheduler
    if stop_mode["mode"] == STOP_DRAIN:  # asked while this life was starting
        scheduler.draining = True
    write_state("up")

    def heartbeat() -> None:
        downs = 0
        while not stop_event.wait(HEARTBEAT_SECONDS):
            health = backend.health()
            up = health == "up"
            # Only a node seen dead counts: a GCS that does not answer gets Ray's
            # own reconnect timeout (a restarting GCS must not end running jobs).
            downs = downs + 1 if health == "node dead" else 0
            try:
                write_state("up" if up else "down")
            except OSError as exc:  # a full disk: keep beating, the next write may get through
                log.warning("could not write the heartbeat: %s", exc)
            if downs >= RAY_DOWN_BEATS:
                # Ray is gone from under this process (its raylet died, say) and will
                # not come back to it: end this life; the supervisor starts a new one,
                # which brings Ray up again and reconciles from the database.
                log.error("this scheduler's Ray node has been dead for %.0fs; restarting on a new Ray",
                          downs * HEARTBEAT_SECONDS)
                os._exit(EXIT_RAY_DOWN)

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    idle = args.idle_timeout if args.idle_timeout is not None else 0.0
    log.info("scheduler running (pid %d, supervisor %d, home %s)", os.getpid(), supervisor, home)
    left = 0
    try:
        run(scheduler, stop_event, idle_timeout=idle)
    finally:
        now = time.time()
        if stop_mode["mode"] == STOP_CANCEL:
            scheduler.release_all(now, "cancelled by `labq scheduler stop --cancel-running`")
        else:
            scheduler.detach(now)
        left = len(store.running_attempts())
        if left:
            log.info("%d attempts run on under their owners; the next scheduler adopts them", left)
        else:
            backend.end_idle_owners()
        stop_event.set()  # the heartbeat must not write "up" over what follows, nor call Ray while it closes
        beat.join(timeout=10)
        backend.shutdown()
        # The supervisor stops an idle local Ray once this process is gone: a
        # driver whose GCS goes away under it aborts.
        write_state("stopped", left_running=left)
        log.info("scheduler loop ended")
    return 0


def _local_ray(home: Path, args, settings, log: logging.Logger):
    """The local Ray of this home: the one a previous scheduler started, if its
    keeper still runs (its attempts may still run there), else a new one
    (after ending whatever a dead one left)."""
    from scheduler import local_ray

    old_state = _read_state(home)
    old = local_ray.LocalRay.from_json(old_state.get("local_ray"))
    if old is not None and old.alive() and not args.ray_was_down:
        log.info("joining the local Ray a previous scheduler started (%s)", old.address)
        return old
    if old is not None:
        ended = local_ray.stop(old)
        if ended:
            log.info("ended the local Ray of a previous scheduler (%d processes): %s", ended,
                     "it went down under it" if args.ray_was_down else "it was broken")
    reaped = local_ray.reap(old_state.get("ray_processes") or [])
    if reaped:
        log.info("ended %d processes left by the local Ray of a scheduler that died", reaped)
    log.info("starting a local Ray")
    return local_ray.start(home, num_cpus=args.cpus or settings.local.num_cpus,
                           num_gpus=args.gpus if args.gpus is not None else settings.local.num_gpus)


if __name__ == "__main__":
    sys.exit(main())
