"""Drive a real Scheduler against the session's Ray, tick by tick."""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import ray

from scheduler.api import submit
from scheduler.config import SchedulerSettings, Settings
from scheduler.loop import Scheduler
from scheduler.store import Store

HERE = Path(__file__).parent


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    shutil.copy(HERE / "testjobs.py", code / "testjobs.py")
    path = code / name
    path.write_text(textwrap.dedent(text))
    return path


def make_scheduler(home: Path, backend) -> tuple[Scheduler, Store, Settings]:
    settings = Settings(home=str(home), scheduler=SchedulerSettings(poll_interval=0.05, cancel_grace=1.0))
    store = Store(home)
    return Scheduler(store, backend, settings), store, settings


def drive(scheduler: Scheduler, store: Store, experiment_id: int, timeout: float = 90.0, until=None):
    """Tick until every job of the experiment is terminal (or ``until(jobs)``)."""
    deadline = time.monotonic() + timeout
    while True:
        scheduler.tick(time.time())
        jobs = store.jobs_of_experiment(experiment_id)
        if until is not None and until(jobs):
            return jobs
        if until is None and all(j.state.is_terminal() for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError("timed out; states: " + ", ".join(f"{j.id}:{j.state.value}" for j in jobs))
        scheduler.wait_for_events(0.05)


def submit_spec(path: Path, settings: Settings, overrides=()):
    return submit(path, list(overrides), settings)


def assert_resources_released(timeout: float = 15.0) -> None:
    """Ray's own leak check: available equals total again."""
    deadline = time.monotonic() + timeout
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        leaked = {k: (free.get(k, 0), v) for k, v in total.items()
                  if k in ("CPU", "GPU") and abs(free.get(k, 0) - v) > 1e-6}
        if not leaked:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"resources not released: {leaked}")
        time.sleep(0.2)


def wait_until(predicate, timeout: float, what: str, poll: float = 0.25):
    """``predicate()``'s first truthy value within ``timeout`` seconds, else an
    AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_processes_naming(path: Path) -> None:
    """End every process whose command line names ``path`` (a Ray temp dir a test
    started): never `ray stop`, which would end every Ray on the machine."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(path) in part for part in proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
