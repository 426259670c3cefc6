"""The per-step metrics of an early-stopping stage's attempts, read from their
metrics.jsonl as it grows (only what was appended since the last read): what
early stopping (scheduler.early_stop) decides from.

A running attempt's file is read on its node, through the backend (the
node's owner, for a node that cannot share the head's disk); an ended one's on
the head, where its run dir was carried back, and only once."""

from __future__ import annotations

import collections
import json
from typing import Any, Callable

from scheduler.records import StageRunDir

MAX_LINE = 1 << 20  # a longer line is not a metrics record; skipped

# (node id, [(run dir, offset)]) -> (bytes consumed, the complete lines) past each offset
ReadCurves = Callable[[str | None, list[tuple[str, int]]], list[tuple[int, bytes]]]


class CurveReader:
    """Records of each attempt's metrics.jsonl, kept between reads."""

    def __init__(self, read: ReadCurves) -> None:
        self._read_on = read
        self._read: dict[str, tuple[int, list[dict[str, Any]]]] = {}  # run dir -> (bytes read, records)
        self._final: set[str] = set()  # ended attempts read since they ended: nothing more will come

    def update(self, attempts: list[StageRunDir]) -> None:
        """Read what each attempt appended since the last read: a running one's
        on its node (one request per node), an ended one's here, once."""
        by_node: dict[str | None, list[str]] = collections.defaultdict(list)
        for a in attempts:
            if a.run_dir in self._final:
                continue
            running = a.latest and a.job_state == "running"
            by_node[a.node_id if running else None].append(a.run_dir)
            if not running:
                self._final.add(a.run_dir)
        for node_id, run_dirs in by_node.items():
            reads = [(d, self._read.get(d, (0, []))[0]) for d in run_dirs]
            for (run_dir, offset), (consumed, data) in zip(reads, self._read_on(node_id, reads)):
                self._take(run_dir, offset + consumed, data)

    def records(self, run_dir: str) -> list[dict[str, Any]]:
        """Every complete record read so far."""
        return self._read.get(run_dir, (0, []))[1]

    def _take(self, run_dir: str, offset: int, data: bytes) -> None:
        """Keep the records in ``data``; ``offset``: where the next read starts."""
        records = self._read.get(run_dir, (0, []))[1]
        for line in data.splitlines():
            if not line.strip() or len(line) > MAX_LINE:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        self._read[run_dir] = (offset, records)

    def forget(self, keep: set[str]) -> None:
        """Drop what was read of run dirs not in ``keep``."""
        for run_dir in self._read.keys() - keep:
            del self._read[run_dir]
        self._final &= keep
