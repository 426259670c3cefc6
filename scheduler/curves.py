"""The per-step metrics of running and finished jobs, read from their run
dirs' metrics.jsonl as they grow (only what was appended since the last read):
what early stopping (scheduler.early_stop) decides from."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jobs.api import METRICS_FILE

MAX_LINE = 1 << 20  # a longer line is not a metrics record; skipped


class CurveReader:
    """Records of each run dir's metrics.jsonl, kept between reads."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[int, list[dict[str, Any]]]] = {}  # run dir -> (bytes read, records)

    def records(self, run_dir: str) -> list[dict[str, Any]]:
        """Every complete record so far (a line still being written is left for next time)."""
        offset, records = self._read.get(run_dir, (0, []))
        path = Path(run_dir) / METRICS_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return records
        with os.fdopen(fd, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            if not line.strip() or len(line) > MAX_LINE:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        self._read[run_dir] = (offset + end, records)
        return records

    def forget(self, keep: set[str]) -> None:
        """Drop what was read of run dirs not in ``keep``."""
        for run_dir in self._read.keys() - keep:
            del self._read[run_dir]
