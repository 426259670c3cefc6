"""Moving a run directory between nodes that share no filesystem.

When a job ran on another node, its worker returns the run dir as a zip inside
the result and the scheduler unpacks it under ``LABQ_HOME`` on the head; when a
job needs an upstream job's artifacts on another node, the scheduler sends them
the same way.  Ray carries the bytes; nothing else is needed on the nodes.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

MAX_BUNDLE_BYTES = 512 * 2**20


class BundleTooLarge(Exception):
    """The directory holds more than a bundle may carry."""


def pack(root: Path, only: str | None = None, limit: int = MAX_BUNDLE_BYTES) -> bytes:
    """Zip ``root`` (or just its ``only`` subdirectory), paths relative to root."""
    base = root / only if only else root
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if base.exists():
            for path in sorted(p for p in base.rglob("*") if p.is_file()):
                total += path.stat().st_size
                if total > limit:
                    raise BundleTooLarge(f"{root} holds more than {limit // 2**20} MiB")
                zf.write(path, str(path.relative_to(root)))
    return buf.getvalue()


def unpack(data: bytes, root: Path) -> int:
    """Extract a bundle under ``root``; refuses entries that would escape it.
    Returns the number of files written."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    count = 0
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            target = (root / info.filename).resolve()
            if root != target and root not in target.parents:
                raise ValueError(f"bundle entry {info.filename!r} escapes {root}")
            if info.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".labq-tmp")
            tmp.write_bytes(zf.read(info))
            os.replace(tmp, target)
            count += 1
    return count
