"""Snapshot of an experiment's code directory, taken at submit time.

Like ``ray job submit --working-dir``: the directory of the spec is zipped once,
content-addressed under ``LABQ_HOME/packages``, and every job of the experiment
runs from that snapshot, so editing code after submitting does not change jobs
already queued.  Each node extracts the zip once and every attempt works in a
private copy of it (workers.workdir).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

from scheduler.errors import StoreError, UserError

MAX_PACKAGE_BYTES = 100 * 2**20
EXCLUDED_DIRS = {".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache", "node_modules", ".tox",
                 ".ipynb_checkpoints"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
# Fixed timestamp so identical content gives an identical zip and hash.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _files(directory: Path, skip: Path) -> list[tuple[Path, bytes, int]]:
    """(path, content, mode) of every file to ship.  ``skip`` (labq's own state
    directory, when it sits under the spec) is never shipped; files that vanish
    while we walk are skipped rather than failing the submit."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS and not d.startswith(".")
                         and (Path(root) / d).resolve() != skip)
        for name in sorted(files):
            if name.endswith(EXCLUDED_SUFFIXES):
                continue
            path = Path(root) / name
            try:
                found.append((path, path.read_bytes(), path.stat().st_mode & 0o777))
            except (FileNotFoundError, IsADirectoryError):
                continue
            except PermissionError as exc:
                raise UserError(f"cannot read {path} to ship it with the experiment: {exc.strerror}") from None
    return found


def snapshot(directory: str | Path, home: Path, source: str) -> Path:
    """Zip ``directory`` into ``home/packages/<sha>.zip`` (reused if present)."""
    directory = Path(directory).resolve()
    files = _files(directory, skip=home.resolve())
    total = sum(len(data) for _, data, _ in files)
    if total > MAX_PACKAGE_BYTES:
        raise UserError(
            f"{source}: the spec's directory {directory} holds {total / 2**20:.0f} MiB of files; labq ships it to "
            f"the workers and allows {MAX_PACKAGE_BYTES // 2**20} MiB. Put the spec in a directory with just your code.")
    digest = hashlib.sha1()
    for f, data, _ in files:
        digest.update(str(f.relative_to(directory)).encode() + b"\0")
        digest.update(data)
        digest.update(b"\0")
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, as the store makes it
    packages = home / "packages"
    packages.mkdir(mode=0o700, exist_ok=True)
    target = packages / f"{digest.hexdigest()}.zip"
    if target.exists():
        return target
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=packages, suffix=".tmp")
        os.close(fd)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f, data, mode in files:
                info = zipfile.ZipInfo(str(f.relative_to(directory)), date_time=_EPOCH)
                info.external_attr = mode << 16  # keeps scripts executable
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise StoreError(f"{packages}: could not save the experiment's code: {exc.strerror}; nothing was "
                         "submitted. Free some space and try again.") from None
    return target
