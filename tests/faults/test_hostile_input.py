"""Hostile and unlucky input to `labq submit`: bombs that would eat memory or
hang, files that must not leave the machine, and values that used to pass
validation.  Each is refused with one line naming the file and key (exit 2),
within seconds, and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def labq(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "LABQ_HOME": str(home)}, cwd=REPO, timeout=timeout)


def _refused(home: Path, spec: Path, *fragments: str, timeout: float = 60) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = labq(home, "submit", str(spec), "--no-start", timeout=timeout)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr[-2000:]
    assert time.monotonic() - t0 < timeout
    assert not (home / "packages").exists() or not any((home / "packages").iterdir())
    return proc


@pytest.fixture
def project(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "spec.yaml").write_text("experiment: e\nstages:\n  - {name: s, command: 'echo {i}', "
                                    "sweep: {grid: {i: [1, 2]}}}\n")
    return code


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path, project):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    bomb = project / "bomb.yaml"
    # ten to the ninth strings once expanded, in nine short lines
    bomb.write_text("experiment: bomb\nanchors:\n" + textwrap.indent("\n".join(lines), "  ")
                    + "\nstages:\n  - {name: s, command: 'echo {p}', params: {p: *a8}}\n")
    _refused(tmp_path / "home", bomb, "expands to more than", timeout=30)


def test_a_spec_of_a_million_unknown_keys_prints_a_few_lines(tmp_path, project):
    big = project / "big.yaml"
    with open(big, "w") as f:
        f.write("experiment: big\nstages:\n  - {name: s, command: 'true'}\n")
        for i in range(300_000):
            f.write(f"unknown_key_{i}: {i}\n")
    proc = _refused(tmp_path / "home", big, "unknown key", "more problems", timeout=120)
    assert len(proc.stderr.splitlines()) <= 25


def test_a_spec_larger_than_the_limit_is_refused_before_parsing(tmp_path, project):
    huge = project / "huge.yaml"
    huge.write_text("experiment: huge\n# " + "x" * (11 * 2**20) + "\nstages: []\n")
    _refused(tmp_path / "home", huge, "larger than 10 MiB")


def test_a_fifo_as_the_spec_does_not_hang(tmp_path, project):
    fifo = project / "pipe.yaml"
    os.mkfifo(fifo)
    _refused(tmp_path / "home", fifo, "not a regular file", timeout=20)


def test_a_fifo_and_a_device_link_beside_the_spec_are_not_read(tmp_path, project):
    os.mkfifo(project / "pipe")
    os.symlink("/dev/zero", project / "zeros")
    proc = labq(tmp_path / "home", "submit", str(project / "spec.yaml"), "--no-start", timeout=30)
    # /dev/zero is outside the project: refused, never read
    assert proc.returncode == 2 and "links to /dev/zero, outside the spec's directory" in proc.stderr
    (project / "zeros").unlink()
    proc = labq(tmp_path / "home", "submit", str(project / "spec.yaml"), "--no-start", timeout=30)
    assert proc.returncode == 0, proc.stderr  # the FIFO is skipped, not read


def test_a_link_to_a_private_file_outside_the_project_is_not_shipped(tmp_path, project):
    secret = tmp_path / "secret.txt"
    secret.write_text("the password")
    os.symlink(secret, project / "data.txt")
    _refused(tmp_path / "home", project / "spec.yaml", "links to", "outside the spec's directory")
    # A link inside the project is shipped as its file
    (project / "data.txt").unlink()
    (project / "real.txt").write_text("inside")
    os.symlink(project / "real.txt", project / "alias.txt")
    assert labq(tmp_path / "home", "submit", str(project / "spec.yaml"), "--no-start").returncode == 0


def test_the_size_cap_stops_reading_at_the_limit(tmp_path, project):
    # A sparse file: 200 MiB long, nothing on disk; reading it all would take 200 MiB of memory
    with open(project / "big.bin", "wb") as f:
        f.truncate(200 * 2**20)
    proc = _refused(tmp_path / "home", project / "spec.yaml", "more than 100 MiB")
    assert "big.bin" in proc.stderr


@pytest.mark.parametrize("stage, key, fragment", [
    ("resources: {cpu: 0}", "stages[s].resources", "cpu: expected a share of CPUs above 0"),
    ("resources: {custom: {CPU: 1}}", "stages[s].resources", "custom.CPU"),
    ("resources: {custom: {'': 1}}", "stages[s].resources", "custom.: expected the name"),
    ("resources: {custom: {memory: 1}}", "stages[s].resources", "custom.memory"),
])
def test_resources_that_used_to_pass(tmp_path, project, stage, key, fragment):
    spec = project / "r.yaml"
    spec.write_text(f"experiment: r\nstages:\n  - {{name: s, command: 'true', {stage}}}\n")
    _refused(tmp_path / "home", spec, f"{key}: {fragment}")


def test_a_huge_format_width_is_refused(tmp_path, project):
    spec = project / "w.yaml"
    spec.write_text("experiment: w\nstages:\n  - {name: s, command: 'echo {x:>999999999}', params: {x: 1}}\n")
    _refused(tmp_path / "home", spec, "stages[s].command", "widths up to 1000")


def test_a_builtin_is_not_a_job(tmp_path, project):
    spec = project / "b.yaml"
    spec.write_text("experiment: b\nstages:\n  - {name: s, run: 'os:system'}\n")
    _refused(tmp_path / "home", spec, "stages[s].run", "built-in function, not a job")


# ------------------------------------------------------------------ an unlucky machine: one line, exit 3


def test_a_submit_committed_before_the_scheduler_failed_to_start_says_so(tmp_path, project):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "scheduler.log").mkdir()  # the scheduler cannot open its log
    proc = labq(home, "submit", str(project / "spec.yaml"))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert "is queued (2 jobs, ids 1-2; do not submit it again)" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_scheduler_start_on_an_unusable_database_fails_at_once(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "labq.db").write_bytes(b"this is not SQLite" * 1000)
    t0 = time.monotonic()
    proc = labq(home, "scheduler", "start")
    assert proc.returncode == 3 and "not a usable labq database" in proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - t0 < 20
    assert not (home / "scheduler.pid").exists()


def test_a_state_directory_that_cannot_be_made_is_one_line(tmp_path, project):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = labq(blocker / "home", "queue")
    assert proc.returncode == 3 and "cannot create the state directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_lock_file_in_the_way_is_one_line_and_the_queued_jobs_are_named(tmp_path, project):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "scheduler.lock").mkdir()
    proc = labq(home, "submit", str(project / "spec.yaml"))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr and "scheduler.lock" in proc.stderr, proc.stderr
    assert "do not submit it again" in proc.stderr and proc.stderr.count("\n") == 1
    # A second submit (the user did not read) refuses before writing: the lock is checked first now
    again = labq(home, "submit", str(project / "spec.yaml"))
    assert again.returncode == 3 and "Traceback" not in again.stderr
    assert len(json.loads(labq(home, "queue", "--json").stdout)) == 2
