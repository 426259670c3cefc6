"""The local Ray labq starts for itself, as a process of its own.

A Ray started inside the scheduler (``ray.init(address="local")``) shares the
scheduler's fate: Ray's head processes end with the driver that started them,
and every attempt with them.  So labq starts its local Ray the way a cluster
is started, with ``ray start --head --block`` in a session of its own (the
*keeper*: while it lives, that Ray lives), and the scheduler joins it as a
driver.  A scheduler that crashes, stops or is upgraded leaves the keeper and
its attempts running; the next one finds the keeper recorded in
``scheduler.json`` and joins the same Ray.  The keeper is stopped when the
scheduler stops with nothing running, or when its Ray is found broken.

This module does not import Ray (the daemon's supervisor stays Ray-free).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

READY_SECONDS = 90.0
# Idle worker processes are kept 10 s (Ray's default: 1 s past one per CPU):
# fractional-CPU jobs keep more workers than CPUs, and a gap between waves
# would otherwise start them all again (see ray_backend).
SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 10_000}


@dataclass(frozen=True)
class LocalRay:
    """A keeper this labq home started: its pid and start time name it for good."""

    pid: int
    started: float  # the keeper's create time (psutil)
    address: str  # the GCS address drivers join
    temp_dir: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Any) -> "LocalRay | None":
        if not isinstance(data, dict):
            return None
        try:
            return cls(pid=int(data["pid"]), started=float(data["started"]), address=str(data["address"]),
                       temp_dir=str(data["temp_dir"]))
        except (KeyError, TypeError, ValueError):
            return None

    def keeper(self) -> psutil.Process | None:
        """The keeper process, if it still runs (a reused pid is not it)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except psutil.Error:
            pass
        return None

    def alive(self) -> bool:
        """Its keeper runs and still has Ray's processes under it."""
        proc = self.keeper()
        try:
            return proc is not None and bool(proc.children())
        except psutil.Error:
            return False

    def processes(self) -> list[tuple[int, float]]:
        """(pid, start time) of the keeper and everything under it (Ray's
        processes, its workers, their commands), for :func:`reap` should the
        keeper itself die."""
        proc = self.keeper()
        if proc is None:
            return []
        found = [(proc.pid, proc.create_time())]
        for child in proc.children(recursive=True):
            try:
                found.append((child.pid, child.create_time()))
            except psutil.Error:
                continue
        return found


def start(home: Path, *, num_cpus: float | None, num_gpus: int | None) -> LocalRay:
    """Start a Ray head for this home in a session of its own and wait until it
    takes drivers.  Its ports are picked free; its files go under a short temp
    dir (Ray's socket paths must stay short) private to this account."""
    temp_dir = tempfile.mkdtemp(prefix="labq-ray-")
    os.chmod(temp_dir, 0o700)
    port, client_port, agent_port = _free_ports(3)
    args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", str(port),
            "--ray-client-server-port", str(client_port), "--dashboard-agent-listen-port", str(agent_port),
            "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir,
            "--system-config", json.dumps(SYSTEM_CONFIG)]
    if num_cpus is not None:  # `ray start` takes whole CPUs only
        args += ["--num-cpus", str(max(1, round(num_cpus)))]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    log_file = home / "ray-start.log"
    with open(log_file, "a") as out:
        os.chmod(log_file, 0o600)
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    ray = LocalRay(pid=proc.pid, started=psutil.Process(proc.pid).create_time(), address=f"127.0.0.1:{port}",
                   temp_dir=temp_dir)
    deadline = time.monotonic() + READY_SECONDS
    offset = log_file.stat().st_size
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with code {proc.returncode}; see {log_file}")
        if _started(log_file, offset, proc.pid):
            return ray
        time.sleep(0.2)
    stop(ray)
    raise RuntimeError(f"the local Ray did not come up within {READY_SECONDS:.0f}s; see {log_file}")


def stop(ray: LocalRay, grace: float = 2.0) -> int:
    """End the keeper and everything under it (SIGTERM, then SIGKILL after
    ``grace``); returns how many processes there were."""
    keeper = ray.keeper()
    if keeper is None:
        return 0
    try:
        procs = [keeper, *keeper.children(recursive=True)]
    except psutil.Error:
        procs = [keeper]
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            continue
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=grace)
    _remove_temp(ray.temp_dir)
    return len(procs)


def reap(recorded: list[tuple[int, float]]) -> int:
    """Kill processes a dead keeper left (recorded with their start times, so
    a reused pid is never touched)."""
    count = 0
    for pid, started in recorded or []:
        try:
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - float(started)) < 0.01 and proc.pid != os.getpid():
                proc.kill()
                count += 1
        except (psutil.Error, TypeError, ValueError):
            continue
    return count


def _started(log_file: Path, offset: int, pid: int) -> bool:
    """`ray start` has printed that Ray is up (its own words), this run."""
    try:
        with open(log_file, "rb") as f:
            f.seek(offset)
            return b"Ray runtime started" in f.read()
    except OSError:
        return False


def _free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _remove_temp(path: str) -> None:
    import shutil

    if Path(path).name.startswith("labq-ray-"):
        shutil.rmtree(path, ignore_errors=True)
