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


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


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
