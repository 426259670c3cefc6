"""Parsing of the human units a spec uses: memory sizes and durations."""

from __future__ import annotations

import math
import re

_MEM_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}
_MEM_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
_DUR_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
MAX_BYTES = 2**50  # 1 PiB: more is a typo, and beyond it numbers stop being exact
MAX_SECONDS = 366 * 86400.0


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_DUR_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$")


def parse_memory(value: int | float | str) -> int:
    """Bytes from ``1GiB``, ``512MiB``, ``2G`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 2GiB")
    if isinstance(value, (int, float)):
        size = float(value) if isinstance(value, float) else value
    else:
        match = _MEM_RE.match(str(value))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _MEM_UNITS:
            raise ValueError(f"expected a size such as 512MiB or 2GiB, got {_short(value)}")
        size = float(match.group(1)) * _MEM_UNITS[unit]
    if not (0 <= size <= MAX_BYTES) or (isinstance(size, float) and not math.isfinite(size)):
        raise ValueError(f"expected a non-negative size such as 512MiB or 2GiB (at most 1PiB), got {_short(value)}")
    return int(size)


def parse_duration(value: int | float | str) -> float:
    """Seconds from ``90s``, ``10m``, ``2h``, ``1d`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 10m or 2h")
    if isinstance(value, (int, float)):
        if abs(value) > MAX_SECONDS:
            raise ValueError(f"expected a positive duration such as 90s, 10m or 2h (at most a year), "
                             f"got {_short(value)}")
        seconds = float(value)
    else:
        match = _DUR_RE.match(str(value).lower())
        if not match or match.group(2) not in _DUR_UNITS:
            raise ValueError(f"expected a duration such as 90s, 10m or 2h, got {value!r}")
        seconds = float(match.group(1)) * _DUR_UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_SECONDS:
        raise ValueError(f"expected a positive duration such as 90s, 10m or 2h (at most a year), got {_short(value)}")
    return seconds


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"


def format_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
