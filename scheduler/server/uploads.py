"""Shipping a spec's directory to `labq server`: packed on the laptop, unpacked on the head.

The client packs exactly what a local submit would snapshot (packaging's walker:
its exclusions, its size limit, no link out of the directory).  The server
trusts nothing in the upload: every entry is checked before anything is written,
the content is counted as it is decompressed, and the files land in a staging
directory that replaces ``dest`` only once all of them are written and checked.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from scheduler import packaging
from scheduler.errors import UserError
from scheduler.packaging import MAX_PACKAGE_BYTES

MAX_ENTRIES = 20_000
_CHUNK = 2**20
_DRIVE = re.compile(r"[A-Za-z]:")
# labq writes deflated zips; stored is the plain case.  Nothing else is read
# (bzip2/lzma would widen what a hostile upload can make us run).
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
# What a malformed archive makes zipfile (or zlib under it) raise.
_DAMAGED = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, zlib.error)


def pack_directory(directory: Path, source: str, skip: Path | None = None) -> bytes:
    """A deflated zip, with fixed timestamps, of the files a local submit of
    ``directory`` would snapshot (``skip``: a directory never to ship).
    ``source`` (the spec's path) starts every error message."""
    directory = Path(directory).resolve()
    files = packaging._files(directory, skip=skip.resolve() if skip else None, source=source)
    # the server refuses these; say so here, before the upload
    if len(files) > MAX_ENTRIES:
        raise UserError(f"{source}: the spec's directory {directory} holds {len(files):,} files, more than the "
                        f"{MAX_ENTRIES:,} labq ships. Put the spec in a directory with just your code.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data, mode in files:
            name = path.relative_to(directory).as_posix()
            problem = _name_problem(name)
            if problem:
                raise UserError(f"{source}: labq cannot ship {path}: its name {problem}. Rename it, or move it "
                                "out of the spec's directory.")
            info = zipfile.ZipInfo(name, date_time=packaging._EPOCH)
            info.external_attr = (stat.S_IFREG | mode) << 16  # keeps scripts executable
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    archive = buffer.getvalue()
    limit = packaging.MAX_PACKAGE_BYTES  # read now, not at import: the one limit packaging applies
    if len(archive) > limit:
        raise UserError(f"{source}: the spec's directory {directory} packs to {len(archive):,} bytes, more than "
                        f"the {limit:,} labq ships. Put the spec in a directory with just your code.")
    return archive


def unpack(data: bytes, dest: Path, *, max_bytes: int = MAX_PACKAGE_BYTES, max_entries: int = MAX_ENTRIES) -> list[str]:
    """Unpack the uploaded zip ``data`` into ``dest`` (an existing, empty
    directory); the relative paths of the files written.  Anything wrong with
    the upload raises UserError naming the entry, and leaves ``dest`` empty and
    nothing else behind.  Files are 0600 (0700 if the zip marks them
    executable by their owner), directories 0700."""
    dest = Path(dest)
    if any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty; uploads are unpacked only into a fresh directory")
    if len(data) > max_bytes:
        raise UserError(f"the uploaded archive is {len(data):,} bytes; labq takes at most {max_bytes:,}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            entries = _checked_entries(zf, max_bytes, max_entries)
            staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))  # same filesystem: rename works
            try:
                os.chmod(staging, 0o700)  # becomes dest: exactly 0700, whatever the umask
                written = _write(zf, entries, staging)
                # rename(2) replaces an empty directory: dest gets every file or none
                os.rename(staging, dest)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except _DAMAGED as exc:
        raise UserError(f"the upload is not a readable zip archive ({_one_line(exc)})") from None
    return written


def _checked_entries(zf: zipfile.ZipFile, max_bytes: int, max_entries: int) -> list[tuple[zipfile.ZipInfo, str]]:
    """(entry, its name without a trailing slash) for every entry, once all are
    known to be safe to write; UserError at the first that is not."""
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise UserError(f"the uploaded archive has {len(infos):,} entries; labq takes at most {max_entries:,}")
    kinds: dict[str, bool] = {}  # name -> is a directory
    declared = 0
    entries = []
    for info in infos:
        raw = info.orig_filename  # zipfile cuts .filename at a NUL; the original keeps it
        is_dir = raw.endswith("/")
        name = raw[:-1] if is_dir else raw
        problem = _name_problem(name) or _kind_problem(info, is_dir)
        if problem:
            raise UserError(f"the uploaded archive's entry {_shown(raw)} {problem}; nothing was unpacked")
        if name in kinds:
            what = "is both a file and a directory" if kinds[name] != is_dir else "appears twice"
            raise UserError(f"the uploaded archive's entry {_shown(raw)} {what}; nothing was unpacked")
        kinds[name] = is_dir
        declared += info.file_size
        if declared > max_bytes:
            raise UserError(f"the uploaded archive unpacks to more than {max_bytes:,} bytes (at entry "
                            f"{_shown(raw)}); labq takes at most that")
        entries.append((info, name))
    # a file "a" and an entry "a/b" cannot both be written
    for name in sorted(_parents(kinds)):
        if kinds.get(name) is False:
            raise UserError(f"the uploaded archive's entry {_shown(name)} is both a file and a directory; "
                            "nothing was unpacked")
    return entries


def _name_problem(name: str) -> str | None:
    """What makes ``name`` (without a directory's trailing slash) unsafe as a
    path under the destination, or None."""
    if not name:
        return "is empty"
    if "\0" in name:
        return "holds a NUL byte"
    if "\\" in name:
        return "holds a backslash (a Windows path separator)"
    if name.startswith("/"):
        return "is an absolute path"
    if _DRIVE.match(name):
        return "starts with a drive letter"
    parts = name.split("/")
    if "" in parts:
        return "has an empty path component"
    if ".." in parts or "." in parts:
        return "has a '.' or '..' path component"
    return None


def _kind_problem(info: zipfile.ZipInfo, is_dir: bool) -> str | None:
    """What makes the entry other than a plain file or directory, or None."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return "is a symbolic link"
    if kind not in (0, stat.S_IFDIR if is_dir else stat.S_IFREG):  # 0: a zip made without Unix modes
        return "is not a regular file or directory (a device, a FIFO, a socket, or a directory without a '/')"
    if info.flag_bits & 0x1:
        return "is encrypted"
    if not is_dir and info.compress_type not in _METHODS:
        return f"uses compression method {info.compress_type}; labq reads stored and deflated entries only"
    return None


def _parents(names) -> set[str]:
    """Every directory above the ``names``: "a" and "a/b" for "a/b/c"."""
    parents = set()
    for name in names:
        parts = name.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return parents


def _write(zf: zipfile.ZipFile, entries: list[tuple[zipfile.ZipInfo, str]], root: Path) -> list[str]:
    """Write the checked ``entries`` under ``root``; the files' relative paths."""
    directories = {name for info, name in entries if info.is_dir()} | _parents(name for _, name in entries)
    written = []
    name = ""
    try:
        for name in sorted(directories, key=lambda d: d.count("/")):  # parents first
            os.mkdir(root / name, 0o700)
            os.chmod(root / name, 0o700)  # exactly, whatever the umask
        for info, name in entries:
            if not info.is_dir():
                _write_file(zf, info, root / name)
                written.append(name)
    except OSError as exc:
        raise UserError(f"the uploaded archive's entry {_shown(name)} could not be written: "
                        f"{exc.strerror or exc}; nothing was unpacked") from None
    root_resolved = root.resolve()
    for name in written:
        if root_resolved not in (root / name).resolve().parents:  # cannot happen after the checks: make sure
            raise UserError(f"the uploaded archive's entry {_shown(name)} resolves outside the upload; "
                            "nothing was unpacked")
    return written


def _write_file(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """Copy one entry to a new file at ``path``, counting what decompresses:
    the header's size is a claim, and a bomb lies in it."""
    mode = 0o700 if (info.external_attr >> 16) & stat.S_IXUSR else 0o600
    # O_EXCL|O_NOFOLLOW: a new file, never one reached through a link
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, mode)  # exactly, whatever the umask
        size = 0
        try:
            with zf.open(info) as entry:
                while chunk := entry.read(_CHUNK):
                    size += len(chunk)
                    if size > info.file_size:
                        raise UserError(f"the uploaded archive's entry {_shown(info.orig_filename)} holds more "
                                        f"than the {info.file_size:,} bytes it declares; nothing was unpacked")
                    out.write(chunk)
        except _DAMAGED as exc:
            # zipfile stops at the declared size and then finds the CRC wrong
            raise UserError(f"the uploaded archive's entry {_shown(info.orig_filename)} is damaged or does not "
                            f"match its declared size ({_one_line(exc)}); nothing was unpacked") from None
    if size != info.file_size:
        raise UserError(f"the uploaded archive's entry {_shown(info.orig_filename)} holds {size:,} bytes, not the "
                        f"{info.file_size:,} it declares; nothing was unpacked")


def _shown(name: str) -> str:
    """An entry's name for a one-line message: quoted, escaped, not too long."""
    return repr(name[:200]) + ("..." if len(name) > 200 else "")


def _one_line(exc: BaseException) -> str:
    return repr(str(exc)[:300])[1:-1]
