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
import stat
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


def _files(directory: Path, skip: Path, source: str) -> list[tuple[Path, bytes, int]]:
    """(path, content, mode) of every file to ship.  ``skip`` (labq's own state
    directory, when it sits under the spec) is never shipped; files that vanish
    while we walk are skipped rather than failing the submit.  Only regular
    files are read (a FIFO would hang the submit, /dev/zero never end); a
    symbolic link is shipped as the file it points to only when that file is
    inside ``directory`` (a link to /etc/shadow must not leave the machine);
    the size limit is checked before each file is read."""
    found = []
    total = 0
    root = directory.resolve()
    for here, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS and not d.startswith(".")
                         and (Path(here) / d).resolve() != skip)
        for name in sorted(files):
            if name.endswith(EXCLUDED_SUFFIXES):
                continue
            path = Path(here) / name
            try:
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    target = path.resolve()
                    if root not in target.parents:
                        raise UserError(f"{source}: {path} links to {target}, outside the spec's directory "
                                        f"{directory}; labq ships only files inside it. Copy the file in, or "
                                        "move the link out of the directory.")
                    st = target.stat()
                if not stat.S_ISREG(st.st_mode):
                    continue  # a FIFO, a socket, a device: nothing to ship
                total += st.st_size
                if total > MAX_PACKAGE_BYTES:
                    raise UserError(
                        f"{source}: the spec's directory {directory} holds more than {MAX_PACKAGE_BYTES // 2**20} "
                        f"MiB of files (at {path}); labq ships it to the workers. Put the spec in a directory "
                        "with just your code.")
                with open(path, "rb") as f:
                    data = f.read(st.st_size)  # no more than was counted, should it grow meanwhile
                found.append((path, data, stat.S_IMODE(st.st_mode)))
            except (FileNotFoundError, IsADirectoryError):
                continue
            except PermissionError as exc:
                raise UserError(f"cannot read {path} to ship it with the experiment: {exc.strerror}") from None
    return found


def snapshot(directory: str | Path, home: Path, source: str) -> Path:
    """Zip ``directory`` into ``home/packages/<sha>.zip`` (reused if present)."""
    directory = Path(directory).resolve()
    files = _files(directory, skip=home.resolve(), source=source)
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
