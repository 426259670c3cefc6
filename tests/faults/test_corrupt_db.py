"""A state database damaged in the middle (pages overwritten, the header
intact): every verb says so in one line with exit 3, none of them writes into
it, and the scheduler refuses to start on it instead of retrying forever.
(`submit --no-start` checks nothing beyond the pages it writes: a full check
costs about 0.26 s at 100k jobs; the scheduler checks the whole file when it
starts, and `submit` does when it would start one.)"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scheduler import api
from scheduler.config import Settings

REPO = Path(__file__).resolve().parents[2]


def labq(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "LABQ_HOME": str(home)}, cwd=REPO, timeout=120)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def damaged(tmp_path):
    # Given a queue of 400 jobs, its file then damaged in the middle (as a bad
    # disk or a stray write would), with its header intact
    spec = tmp_path / "code" / "spec.yaml"
    spec.parent.mkdir()
    spec.write_text(textwrap.dedent("""
        experiment: big
        stages:
          - {name: s, command: "echo {i} {pad}", params: {pad: %s}, sweep: {grid: {i: [%s]}}}
    """ % ("x" * 300, ", ".join(str(i) for i in range(400)))))
    home = tmp_path / "home"
    api.submit(spec, [], Settings(home=str(home)))
    db = home / "labq.db"
    assert not (home / "labq.db-wal").exists() or (home / "labq.db-wal").stat().st_size == 0
    data = bytearray(db.read_bytes())
    pages = len(data) // 4096
    assert pages > 20
    for page in range(pages // 3, 2 * pages // 3):
        data[page * 4096:(page + 1) * 4096] = bytes([0x5A]) * 4096
    db.write_bytes(bytes(data))
    return home, spec, db


@pytest.mark.parametrize("args", [
    ("status", "200"), ("status", "big"), ("results", "big"), ("queue",), ("logs", "200"), ("cancel", "200"),
    ("submit", "SPEC"), ("run", "SPEC"), ("scheduler", "start"),
])
def test_every_verb_reports_the_damage_in_one_line_and_writes_nothing(damaged, args):
    home, spec, db = damaged
    before = _digest(db)
    proc = labq(home, *[str(spec) if a == "SPEC" else a for a in args])
    assert proc.returncode == 3, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "damaged" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "no job" not in proc.stderr
    assert _digest(db) == before
    assert not (home / "scheduler.pid").exists() or args[0] != "scheduler"
