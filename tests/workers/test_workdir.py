"""The private working directory of an attempt (workers.workdir), on real files:
a copy of the snapshot per attempt, outputs moved out, inputs restored, the
clean copy pooled for the next attempt, and the snapshot never changed."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from scheduler.packaging import snapshot as make_package
from workers import workdir


def _project(tmp_path: Path) -> Path:
    code = tmp_path / "project"
    (code / "data").mkdir(parents=True)
    (code / "configs").mkdir()
    (code / "data" / "train.csv").write_text("x,y\n1,2\n")
    (code / "configs" / "x.yaml").write_text("lr: 0.1\n")
    (code / "train.py").write_text("print('hi')\n")
    (code / "train.py").chmod(0o755)
    return code


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(oct(p.stat().st_mode & 0o777).encode())
    return h.hexdigest()


@pytest.fixture
def snap(tmp_path):
    home = tmp_path / "home"
    package = make_package(_project(tmp_path), home, "spec.yaml")
    return workdir.open_snapshot(home / "code", package)


def _run_dir(tmp_path: Path, n: int) -> Path:
    run = tmp_path / "runs" / str(n)
    run.mkdir(parents=True)
    return run


def test_an_attempt_sees_the_project_and_keeps_what_it_wrote(tmp_path, snap):
    before = _digest(snap.root)
    run = _run_dir(tmp_path, 1)
    cwd = workdir.prepare(run, snap)
    assert (cwd / "data" / "train.csv").read_text() == "x,y\n1,2\n"
    assert os.access(cwd / "train.py", os.X_OK)
    # The job writes a model, changes a config, deletes data, makes a new dir.
    (cwd / "model.pt").write_bytes(b"m" * 100)
    (cwd / "configs" / "x.yaml").write_text("lr: 0.2\n")
    (cwd / "data" / "train.csv").unlink()
    (cwd / "results").mkdir()
    (cwd / "results" / "metrics.json").write_text("{}")
    out = workdir.collect(run, snap, limit=None)
    assert sorted((o["path"], o["bytes"]) for o in out.kept) == [
        ("configs/x.yaml", 8), ("model.pt", 100), ("results/metrics.json", 2)]
    assert (run / "outputs" / "model.pt").read_bytes() == b"m" * 100
    assert (run / "outputs" / "configs" / "x.yaml").read_text() == "lr: 0.2\n"
    assert not (run / "workdir").exists()  # back in the pool
    assert _digest(snap.root) == before


def test_the_next_attempt_gets_a_clean_copy_from_the_pool(tmp_path, snap):
    first = _run_dir(tmp_path, 1)
    cwd = workdir.prepare(first, snap)
    inode = (cwd / "train.py").stat().st_ino
    (cwd / "model.pt").write_bytes(b"first")
    (cwd / "configs" / "x.yaml").write_text("changed by the first attempt\n")
    (cwd / "data" / "train.csv").unlink()
    os.symlink("/etc/hostname", cwd / "link")
    workdir.collect(first, snap, limit=None)
    assert len(os.listdir(snap.pool)) == 1
    second = _run_dir(tmp_path, 2)
    cwd2 = workdir.prepare(second, snap)
    assert (cwd2 / "train.py").stat().st_ino == inode  # the pooled copy: renamed, not copied
    assert not (cwd2 / "model.pt").exists()
    assert not os.path.lexists(cwd2 / "link")
    assert (cwd2 / "configs" / "x.yaml").read_text() == "lr: 0.1\n"
    assert (cwd2 / "data" / "train.csv").read_text() == "x,y\n1,2\n"
    assert not (first / "outputs" / "link").exists()  # a link is never an output


def test_a_write_through_a_hard_link_never_reaches_the_snapshot_or_the_next_attempt(tmp_path, snap):
    run = _run_dir(tmp_path, 1)
    cwd = workdir.prepare(run, snap)
    os.link(cwd / "train.py", cwd / "alias.py")
    with open(cwd / "alias.py", "r+") as f:  # same size, in place
        f.write("PRINT")
    out = workdir.collect(run, snap, limit=None)
    assert {o["path"] for o in out.kept} == {"alias.py", "train.py"}
    assert (snap.root / "train.py").read_text() == "print('hi')\n"
    cwd2 = workdir.prepare(_run_dir(tmp_path, 2), snap)
    assert (cwd2 / "train.py").read_text() == "print('hi')\n"


def test_two_attempts_at_once_write_the_same_name_into_their_own_dirs(tmp_path, snap):
    runs = [_run_dir(tmp_path, i) for i in range(4)]
    cwds = [workdir.prepare(r, snap) for r in runs]
    assert len({c.resolve() for c in cwds}) == 4
    for i, cwd in enumerate(cwds):
        (cwd / "model.pt").write_text(str(i))
    for i, (run, cwd) in enumerate(zip(runs, cwds)):
        assert (cwd / "model.pt").read_text() == str(i)
        workdir.collect(run, snap, limit=None)
        assert (run / "outputs" / "model.pt").read_text() == str(i)


def test_outputs_over_the_limit_are_dropped_and_listed(tmp_path, snap):
    run = _run_dir(tmp_path, 1)
    cwd = workdir.prepare(run, snap)
    (cwd / "big.bin").write_bytes(b"b" * 5000)
    (cwd / "small.txt").write_bytes(b"s" * 10)
    out = workdir.collect(run, snap, limit=1000)
    assert out.kept == [{"path": "small.txt", "bytes": 10}]
    assert out.dropped == [{"path": "big.bin", "bytes": 5000}]
    assert not (run / "outputs" / "big.bin").exists()
    assert {"path": "big.bin", "bytes": 5000, "kept": False} in out.to_json()


def test_python_byte_code_is_neither_an_input_nor_an_output(tmp_path, snap):
    run = _run_dir(tmp_path, 1)
    cwd = workdir.prepare(run, snap)
    (cwd / "__pycache__").mkdir()
    (cwd / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (cwd / "__pycache__" / "smuggled.txt").write_text("not byte code")
    out = workdir.collect(run, snap, limit=None)
    assert out.kept == []
    cwd2 = workdir.prepare(_run_dir(tmp_path, 2), snap)
    assert os.listdir(cwd2 / "__pycache__") == ["train.cpython-311.pyc"]


def test_without_a_snapshot_the_working_directory_starts_empty(tmp_path):
    run = _run_dir(tmp_path, 1)
    snap = workdir.empty_snapshot(tmp_path / "none")
    cwd = workdir.prepare(run, snap)
    assert os.listdir(cwd) == []
    (cwd / "out.txt").write_text("x")
    assert workdir.collect(run, snap, limit=None).kept == [{"path": "out.txt", "bytes": 1}]
    assert not cwd.exists()


def test_a_node_that_cannot_read_the_package_fetches_it(tmp_path):
    package = make_package(_project(tmp_path), tmp_path / "head-home", "spec.yaml")
    data = package.read_bytes()
    snap = workdir.open_snapshot(tmp_path / "node-home" / "code", tmp_path / "elsewhere" / package.name,
                                 fetch=lambda: data)
    assert (snap.root / "configs" / "x.yaml").read_text() == "lr: 0.1\n"
    assert oct(snap.root.stat().st_mode & 0o777) == oct(0o500)  # owner-only, read-only
    assert (snap.root / "train.py").stat().st_mode & 0o077 == 0  # private


def test_a_package_entry_that_escapes_is_refused(tmp_path):
    bad = tmp_path / "abc.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.py", "x")
    with pytest.raises(ValueError, match="escapes"):
        workdir.open_snapshot(tmp_path / "code", bad)
    assert not (tmp_path / "evil.py").exists()
    assert not (tmp_path / "code" / "abc").exists()


def test_a_worker_runs_each_snapshots_own_code_and_keeps_callables_in_their_cwd(tmp_path, monkeypatch):
    # Given two versions of a user's module, submitted one after the other, run
    # by the same worker process (as Ray reuses workers)
    from workers.attempt import run_attempt

    home = tmp_path / "home"
    packages = []
    for version in ("one", "two"):
        code = tmp_path / version
        code.mkdir()
        (code / "usermod_versions.py").write_text(
            "from pathlib import Path\n"
            f"VERSION = {version!r}\n"
            "def main(ctx):\n"
            "    Path('written.txt').write_text(VERSION)\n"
            "    return {'is_' + VERSION: 1.0}\n")
        packages.append(make_package(code, home, "spec.yaml"))

    def run(n, package):
        task = {"job_id": n, "attempt": 1, "experiment": "e", "stage": "s", "params": {}, "target_kind": "callable",
                "target": "usermod_versions:main", "resources": {"cpu": 1}, "inputs": [],
                "run_dir": str(home / "runs" / str(n) / "attempt-1"), "package": str(package),
                "code_root": str(home / "code")}
        return run_attempt(task)

    cwd = os.getcwd()
    results = [run(1, packages[0]), run(2, packages[1]), run(3, packages[0])]
    # Then each job ran its own version, wrote in its own cwd, and the worker's cwd is back
    assert [r["metrics"] for r in results] == [{"is_one": 1.0}, {"is_two": 1.0}, {"is_one": 1.0}]
    assert [(home / "runs" / str(n) / "attempt-1" / "outputs" / "written.txt").read_text() for n in (1, 2, 3)] \
        == ["one", "two", "one"]
    assert os.getcwd() == cwd
    import sys

    sys.modules.pop("usermod_versions", None)


def test_an_input_renamed_over_another_of_the_same_size_is_restored(tmp_path):
    # Given two configs of the same size, and a job that moves one over the other
    import time

    code = tmp_path / "p"
    (code / "configs").mkdir(parents=True)
    (code / "configs" / "a.yaml").write_text("lr: 0.1\n")
    (code / "configs" / "b.yaml").write_text("lr: 0.2\n")
    home = tmp_path / "home"
    snap = workdir.open_snapshot(home / "code", make_package(code, home, "spec.yaml"))
    run = _run_dir(tmp_path, 1)
    cwd = workdir.prepare(run, snap)
    time.sleep(0.02)  # past the kernel's coarse clock tick
    started = time.time_ns()
    time.sleep(0.02)
    os.rename(cwd / "configs" / "a.yaml", cwd / "configs" / "b.yaml")
    out = workdir.collect(run, snap, limit=None, since_ns=started)
    # Then b (really a, moved) is an output, and the pooled copy has both originals back
    assert [o["path"] for o in out.kept] == ["configs/b.yaml"]
    cwd2 = workdir.prepare(_run_dir(tmp_path, 2), snap)
    assert (cwd2 / "configs" / "a.yaml").read_text() == "lr: 0.1\n"
    assert (cwd2 / "configs" / "b.yaml").read_text() == "lr: 0.2\n"


def test_a_working_directory_replaced_by_a_link_is_not_followed(tmp_path, snap):
    elsewhere = tmp_path / "users-data"
    elsewhere.mkdir()
    (elsewhere / "precious.csv").write_text("keep me")
    run = _run_dir(tmp_path, 1)
    cwd = workdir.prepare(run, snap)
    import shutil as sh

    sh.rmtree(cwd)
    os.symlink(elsewhere, cwd)
    out = workdir.collect(run, snap, limit=None)
    assert out.kept == [] and (elsewhere / "precious.csv").read_text() == "keep me"
    assert not os.path.lexists(cwd) and not (run / "outputs").exists()
