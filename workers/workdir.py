"""A private working directory per attempt, and what the job wrote there.

Every attempt runs with its cwd in ``<run dir>/workdir``: a full copy of the
experiment's code snapshot, so relative paths and imports work as in the
user's project, while whatever the job creates, changes or deletes stays its
own.  A copy, not links: a job opening a linked file for writing would write
through the link into the shared snapshot, and permission bits do not stop a
job that runs as root (bench/bench_workdir.py measures the choices).

Copies are made once and then reused.  When the attempt ends, the files it
created or changed are its outputs: they are moved (renamed, never copied) to
``<run dir>/outputs/``; a changed or deleted input is copied back from the
snapshot; and the directory, identical to the snapshot again, goes to a pool
beside the snapshot for the next attempt of the same code on this node.  In
the steady state an attempt costs two renames and one walk of the tree, the
same for a 3 MiB project as for a 100 MiB one.

An input counts as untouched when it has the size, mode and link count it was
copied with, the fixed mtime labq stamps on every copy
(:data:`PRISTINE_MTIME_NS`), and an inode change time from before the job: a
write of any kind moves the mtime to now, and a rename, chmod or utime the
ctime, which no job can set back.

    LABQ_HOME/code/<sha>/           the snapshot, extracted once per node (read-only)
    LABQ_HOME/code/<sha>.pool/<n>/  clean copies waiting for an attempt
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import os
import shutil
import stat
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

WORKDIR = "workdir"
OUTPUTS = "outputs"
# 1980-01-01, the zip epoch: no job writes a file and leaves it with this mtime.
PRISTINE_MTIME_NS = 315_532_800 * 10**9
# Python's byte-code caches are neither inputs nor outputs.  They stay with a
# pooled copy (the next attempt of the same code imports faster): a .pyc is used
# only while its source has the size and mtime it was compiled from, and every
# input a job changed is restored with the pristine mtime, so none can stand in
# for code the next attempt does not have.  Anything else put there is removed.
_CACHES = ("__pycache__",)
_FICLONE = 0x40049409  # ioctl: share the blocks (Btrfs, XFS, bcachefs); a plain copy elsewhere
# Pooled copies kept per snapshot and node: enough for every concurrent attempt
# on a large node, and at most POOL_BYTES of copies; more are deleted instead.
MAX_POOLED = 64
POOL_BYTES = 2 * 2**30
_counter = itertools.count()
# Where the scheduler leaves a snapshot in Ray's key-value store for nodes that
# cannot read LABQ_HOME (scheduler.ray_backend.RayBackend.share_code).
CODE_NAMESPACE = "labq"


def code_key(sha: str) -> str:
    return f"labq/code/{sha}"


@dataclass(frozen=True)
class Snapshot:
    """The extracted code of one submitted experiment on this node."""

    root: Path  # LABQ_HOME/code/<sha>: never handed to a job
    files: dict[str, tuple[int, int]]  # relative path -> (size, mode)
    dirs: frozenset[str]  # relative paths of its directories, "" for the root

    @property
    def pool(self) -> Path:
        return self.root.with_name(self.root.name + ".pool")

    @functools.cached_property
    def pool_size(self) -> int:
        """How many clean copies of this snapshot the pool may hold."""
        size = sum(size for size, _ in self.files.values())
        return max(1, min(MAX_POOLED, POOL_BYTES // max(size, 1)))


@dataclass
class Outputs:
    """What one attempt wrote in its working directory."""

    kept: list[dict] = field(default_factory=list)  # {"path", "bytes"} under <run dir>/outputs
    dropped: list[dict] = field(default_factory=list)  # {"path", "bytes"}: over the size limit, deleted
    limit: int | None = None

    def to_json(self) -> list[dict]:
        return ([{**o, "kept": True} for o in self.kept] + [{**o, "kept": False} for o in self.dropped])


_snapshots: dict[Path, Snapshot] = {}
_snapshots_lock = threading.Lock()


def open_snapshot(code_root: Path, package: Path, fetch: Callable[[], bytes] | None = None) -> Snapshot:
    """The snapshot of ``package`` (``<sha>.zip``) under ``code_root``, extracted
    on first use on this node: from the zip when this node can read it, else
    from the bytes ``fetch`` returns (the copy the scheduler left in Ray)."""
    root = code_root / package.stem
    with _snapshots_lock:
        found = _snapshots.get(root)
    if found is not None and os.path.isdir(root):
        return found
    if not os.path.isdir(root):
        _extract(root, package, fetch)
    snapshot = _scan(root)
    with _snapshots_lock:
        if len(_snapshots) > 256:
            _snapshots.clear()
        _snapshots[root] = snapshot
    return snapshot


def _extract(root: Path, package: Path, fetch: Callable[[], bytes] | None) -> None:
    """Unzip into a temp dir beside ``root`` and rename it into place: another
    worker extracting the same snapshot at once loses the race harmlessly."""
    root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.{os.getpid()}.{next(_counter)}.tmp")
    try:
        if os.access(package, os.R_OK):
            source: object = package
        elif fetch is not None:
            import io

            source = io.BytesIO(fetch())
        else:
            raise FileNotFoundError(f"the experiment's code {package} is not on this node")
        with zipfile.ZipFile(source) as zf:  # type: ignore[arg-type]
            tmp.mkdir(mode=0o700)
            for info in zf.infolist():
                target = (tmp / info.filename).resolve()
                if tmp.resolve() not in target.parents:
                    raise ValueError(f"{package}: entry {info.filename!r} escapes the snapshot")
                if info.is_dir():
                    target.mkdir(mode=0o700, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                # Owner-only, read-only: private state, and a reminder that no job writes here.
                os.chmod(target, ((info.external_attr >> 16) & 0o500) | 0o400)
        for here, subdirs, _ in os.walk(tmp, topdown=False):  # read-only: no job writes here
            for d in subdirs:
                os.chmod(os.path.join(here, d), 0o500)
        os.chmod(tmp, 0o500)
        try:
            os.rename(tmp, root)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    finally:
        if tmp.exists():
            for here, subdirs, _ in os.walk(tmp):
                os.chmod(here, 0o700)
            shutil.rmtree(tmp, ignore_errors=True)


def _scan(root: Path) -> Snapshot:
    files: dict[str, tuple[int, int]] = {}
    dirs = {""}
    base = len(str(root)) + 1
    for here, subdirs, names in os.walk(root):
        rel = here[base:]
        for d in subdirs:
            dirs.add(os.path.join(rel, d))
        for name in names:
            st = os.lstat(os.path.join(here, name))
            # The copies are private and writable by their owner.
            files[os.path.join(rel, name)] = (st.st_size, (stat.S_IMODE(st.st_mode) & 0o700) | 0o600)
    return Snapshot(root=root, files=files, dirs=frozenset(dirs))


def empty_snapshot(root: Path) -> Snapshot:
    """For an attempt with no code snapshot: its working directory starts empty."""
    return Snapshot(root=root, files={}, dirs=frozenset({""}))


# ---------------------------------------------------------------- one attempt


def prepare(run_dir: Path, snapshot: Snapshot) -> Path:
    """``<run dir>/workdir``, holding a clean copy of the snapshot: one taken
    from the pool (a rename), else a new copy."""
    workdir = run_dir / WORKDIR
    if snapshot.files:
        pool = str(snapshot.pool)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(pool):
                try:
                    os.rename(os.path.join(pool, name), workdir)
                    return workdir
                except FileNotFoundError:  # another attempt took it first
                    continue
                except OSError:  # on another file system, or a leftover in the way
                    break
    _copy_tree(snapshot, workdir)
    return workdir


def _copy_tree(snapshot: Snapshot, workdir: Path) -> None:
    if workdir.exists():  # left by an earlier try whose end was lost: start clean
        shutil.rmtree(workdir)
    os.mkdir(workdir, 0o700)
    for rel in sorted(snapshot.dirs):
        if rel:
            os.mkdir(workdir / rel, 0o700)
    for rel, (_, mode) in snapshot.files.items():
        _copy_file(snapshot.root / rel, workdir / rel, mode)


def _copy_file(src: Path, dst: Path, mode: int) -> None:
    """A copy of ``src`` stamped as pristine: blocks shared where the file
    system can (FICLONE), else copied in the kernel (copy_file_range)."""
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            try:
                fcntl.ioctl(fd, _FICLONE, fin.fileno())
            except OSError:
                remaining = os.fstat(fin.fileno()).st_size
                while remaining > 0:
                    try:
                        copied = os.copy_file_range(fin.fileno(), fd, remaining)
                    except OSError:  # across file systems on an old kernel, or not supported
                        copied = 0
                    if copied == 0:
                        with open(fd, "wb", closefd=False) as out:
                            fin.seek(os.fstat(fin.fileno()).st_size - remaining)
                            shutil.copyfileobj(fin, out, 1 << 20)
                        break
                    remaining -= copied
            os.fchmod(fd, mode)
            os.utime(fd, ns=(PRISTINE_MTIME_NS, PRISTINE_MTIME_NS))
        finally:
            os.close(fd)


def collect(run_dir: Path, snapshot: Snapshot, limit: int | None, since_ns: int | None = None,
            into: Outputs | None = None) -> Outputs:
    """After the job: move what it created or changed to ``<run dir>/outputs``
    (up to ``limit`` bytes in all; the rest is deleted and listed as dropped),
    restore the inputs it changed or deleted, and give the clean directory back
    to the pool.  Symbolic links the job made are not outputs (following one
    could read any file of the node) and are removed."""
    workdir = run_dir / WORKDIR
    result = into if into is not None else Outputs(limit=limit)
    try:
        st = os.lstat(workdir)
    except FileNotFoundError:
        return result
    if not stat.S_ISDIR(st.st_mode):  # the job replaced its cwd with a link (or a file): nothing to walk
        os.unlink(workdir)
        return result
    seen = _Seen(since_ns=since_ns)
    _walk(workdir, "", snapshot, seen)
    budget = limit
    outputs = run_dir / OUTPUTS
    if os.path.islink(outputs):  # made by the job, pointing who knows where
        os.unlink(outputs)
    for rel, size in sorted(seen.outputs):
        if budget is not None and size > budget:
            os.unlink(workdir / rel)
            result.dropped.append({"path": rel, "bytes": size})
            continue
        target = outputs / rel
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(workdir / rel, target)
        result.kept.append({"path": rel, "bytes": size})
        if budget is not None:
            budget -= size
    for rel in seen.new_dirs:  # emptied of outputs by now: only directories are left
        shutil.rmtree(workdir / rel, ignore_errors=True)
    if not snapshot.files:
        shutil.rmtree(workdir, ignore_errors=True)
        return result
    try:
        inputs = [rel for rel in snapshot.files if rel not in seen.intact] if len(seen.intact) < len(snapshot.files) else []
        if inputs or len(seen.dirs) < len(snapshot.dirs):
            _restore(workdir, snapshot, inputs)
        _give_back(workdir, snapshot)
    except OSError:  # cannot make it clean again: it is not reused
        shutil.rmtree(workdir, ignore_errors=True)
    return result


@dataclass
class _Seen:
    """What one walk of a working directory found."""

    outputs: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes)
    intact: set[str] = field(default_factory=set)  # inputs exactly as copied
    dirs: set[str] = field(default_factory=lambda: {""})  # the snapshot's directories still there
    since_ns: int | None = None  # when the job started: an input whose inode changed since is not intact
    new_dirs: list[str] = field(default_factory=list)  # the top of each directory tree the job made


def _walk(workdir: Path, rel: str, snapshot: Snapshot, seen: _Seen) -> None:
    here = workdir / rel if rel else workdir
    with os.scandir(here) as entries:
        for entry in entries:
            path = os.path.join(rel, entry.name) if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                os.unlink(entry.path)
            elif stat.S_ISDIR(st.st_mode):
                if entry.name in _CACHES and rel in snapshot.dirs and path not in snapshot.dirs:
                    _tidy_cache(entry.path)
                    continue
                if path in snapshot.dirs:
                    seen.dirs.add(path)
                elif rel in snapshot.dirs:
                    seen.new_dirs.append(path)
                if stat.S_IMODE(st.st_mode) != 0o700:
                    os.chmod(entry.path, 0o700)  # a job may leave a directory it cannot walk
                _walk(workdir, path, snapshot, seen)
            elif stat.S_ISREG(st.st_mode):
                expected = snapshot.files.get(path)
                if expected is not None and _pristine(st, expected, seen.since_ns):
                    seen.intact.add(path)
                elif entry.name.endswith((".pyc", ".pyo")):
                    os.unlink(entry.path)
                else:
                    seen.outputs.append((path, st.st_size))
            else:  # a FIFO, a socket: nothing to keep
                os.unlink(entry.path)


def _tidy_cache(directory: str) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            if not (entry.name.endswith(".pyc") and entry.is_file(follow_symlinks=False)):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)


def _pristine(st: os.stat_result, expected: tuple[int, int], since_ns: int | None) -> bool:
    """Exactly as copied: the fixed mtime, size, mode and one link, and (the
    kernel sets it on every write, rename, chmod or utime, and no job can set it
    back) an inode change time older than the job."""
    size, mode = expected
    return (st.st_mtime_ns == PRISTINE_MTIME_NS and st.st_size == size and st.st_nlink == 1
            and stat.S_IMODE(st.st_mode) == mode and (since_ns is None or st.st_ctime_ns < since_ns))


def _restore(workdir: Path, snapshot: Snapshot, inputs: list[str]) -> None:
    os.chmod(workdir, 0o700)
    for rel in sorted(snapshot.dirs, key=len):
        if rel and not os.path.isdir(workdir / rel):
            if os.path.lexists(workdir / rel):
                os.unlink(workdir / rel)
            os.mkdir(workdir / rel, 0o700)
    for rel in dict.fromkeys(inputs):
        target = workdir / rel
        if os.path.lexists(target):
            os.unlink(target)
        _copy_file(snapshot.root / rel, target, snapshot.files[rel][1])


def _give_back(workdir: Path, snapshot: Snapshot) -> None:
    pool = str(snapshot.pool)
    try:
        if len(os.listdir(pool)) >= snapshot.pool_size:
            shutil.rmtree(workdir, ignore_errors=True)
            return
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(pool, 0o700)
    os.rename(workdir, os.path.join(pool, f"{os.getpid()}-{time.monotonic_ns()}-{next(_counter)}"))
