"""The state directory on a full filesystem: a real, size-limited tmpfs (needs
root to mount; skipped where mounting is not permitted)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tmpfs(mnt: Path, size: str):
    """A real tmpfs of ``size`` at ``mnt``, unmounted afterwards."""
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _closed_queue(mnt: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A two-job queue in ``mnt``/home, closed cleanly (no WAL files left), and its spec."""
    home = mnt / "home"
    spec = tmp_path / "s.yaml"
    spec.write_text("experiment: s\nstages:\n  - {name: s, command: 'echo {i}', sweep: {grid: {i: [1, 2]}}}\n")
    assert labq(home, "submit", str(spec), "--no-start").returncode == 0
    for name in ("labq.db-wal", "labq.db-shm"):
        (home / name).unlink(missing_ok=True)
    return home, spec


def _fill(mnt: Path) -> Path:
    """Fill the file system at ``mnt`` to the last block; returns the filler."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: the disk is full
        pass
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def small_fs(tmp_path):
    yield from _tmpfs(tmp_path / "mnt", "400k")


def labq(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "LABQ_HOME": str(home)}, cwd=REPO, timeout=60)


def test_submit_on_a_full_disk_fails_clearly_writes_nothing_and_recovers(small_fs, tmp_path):
    home = small_fs / "home"
    code = tmp_path / "code"
    code.mkdir()
    small = code / "small.yaml"
    small.write_text("experiment: small\nstages:\n  - {name: s, command: 'echo {i}', sweep: {grid: {i: [1, 2]}}}\n")
    big = code / "big.yaml"
    values = ", ".join(str(i) for i in range(20000))
    big.write_text(textwrap.dedent(f"""
        experiment: big
        stages:
          - name: s
            command: "echo {{i}} {{padding}}"
            params: {{padding: "{'x' * 200}"}}
            sweep: {{grid: {{i: [{values}]}}}}
    """))
    # Given a queue with one experiment
    assert labq(home, "submit", str(small), "--no-start").returncode == 0
    # When an experiment too big for the remaining space is submitted
    proc = labq(home, "submit", str(big), "--no-start")
    # Then it fails with one clear line (exit 3: labq could not work), not a traceback
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "nothing was" in proc.stderr and ("full" in proc.stderr or "space" in proc.stderr.lower())
    # ...and nothing of it was written: the queue is as it was
    db = sqlite3.connect(home / "labq.db")
    assert db.execute("SELECT name FROM experiments").fetchall() == [("small",)]
    assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2
    db.close()
    # When space returns, submissions work again
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    assert labq(home, "submit", str(big), "--no-start").returncode == 0
    assert labq(home, "submit", str(small), "--no-start").returncode == 0


def test_a_full_disk_is_not_mistaken_for_a_foreign_database(small_fs, tmp_path):
    # Given a queue whose WAL files are gone (a clean close), on a disk then filled up
    home, spec = _closed_queue(small_fs, tmp_path)
    filler = _fill(small_fs)
    before = (home / "labq.db").read_bytes()
    # When the queue is listed
    proc = labq(home, "queue")
    # Then it says the disk is full and the queue intact, not "move it away"
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "full" in proc.stderr and "Move it away" not in proc.stderr and "Traceback" not in proc.stderr
    assert (home / "labq.db").read_bytes() == before
    filler.unlink()
    assert labq(home, "queue").returncode == 0


@pytest.fixture
def roomy_fs(tmp_path):
    yield from _tmpfs(tmp_path / "mnt16", "16m")


@pytest.mark.ray
def test_a_disk_filling_up_under_a_running_scheduler(roomy_fs, tmp_path):
    import json
    import time

    # Given a scheduler whose home is on a small disk, running a job
    home = roomy_fs / "home"
    spec = tmp_path / "s.yaml"
    spec.write_text("experiment: s\nstages:\n  - {name: s, command: 'sleep 4', resources: {cpu: 0.5}}\n")
    assert labq(home, "scheduler", "start", "--cpus", "2").returncode == 0
    try:
        job = json.loads(labq(home, "submit", str(spec), "--json").stdout)["job_ids"][0]
        deadline = time.monotonic() + 60
        while json.loads(labq(home, "status", str(job), "--json").stdout)["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # When the disk fills up while it runs
        filler = _fill(roomy_fs)
        time.sleep(8)
        # And space comes back
        filler.unlink()
        # Then the scheduler is still alive and beating (its heartbeat survived the full disk)
        deadline = time.monotonic() + 60
        while True:
            st = json.loads(labq(home, "scheduler", "status", "--json").stdout)
            if st["ray"] == "up" and st["heartbeat_age"] is not None and st["heartbeat_age"] < 5:
                break
            assert time.monotonic() < deadline, st
            time.sleep(1)
        # And the job that could not write its result says why in plain words
        deadline = time.monotonic() + 90
        while True:
            status = json.loads(labq(home, "status", str(job), "--json").stdout)
            if status["state"] not in ("running", "pending"):
                break
            assert time.monotonic() < deadline, status
            time.sleep(1)
        errors = [a["error"] or "" for a in status["attempts_detail"]]
        assert not any("\x1b" in e or "ray::" in e for e in errors), errors
        # (the job either wrote its result before the disk filled, or says why it could not)
        if status["state"] != "succeeded":
            assert any("No space left on device" in e for e in errors), status
    finally:
        labq(home, "scheduler", "stop")


def test_a_read_only_disk_is_one_line_not_a_traceback(small_fs, tmp_path):
    # Given a queue on a disk then remounted read-only (a failing disk, a full quota)
    home, spec = _closed_queue(small_fs, tmp_path)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        for args in (("queue",), ("status", "1"), ("submit", str(spec), "--no-start"), ("cancel", "1")):
            proc = labq(home, *args)
            assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
            assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
            assert "Move it away" not in proc.stderr
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
