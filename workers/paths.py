"""Every path of one attempt's run directory, in one place.

    LABQ_HOME/runs/<job id>/attempt-<n>/
        stdout.log  stderr.log     the job's output
        metrics.jsonl              one line per report() / per step
        metrics.json               final metrics a command job may write
        artifacts/                 files the job produced
        checkpoints/               where a job saves state to resume from
        result.json                the attempt's outcome, written atomically
        pgid                       process group of a command job (for cleanup)
        gpu_pids                   pids that may hold GPU memory, one a line (a GPU
                                   attempt's worker, its command, what NVML saw)
        gpu_ids                    the GPUs Ray gave the attempt, one a line, written
                                   as it starts (the scheduler corrects its books)
"""

from __future__ import annotations

import json
import os
import time
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.attempt import run_dir_for  # noqa: F401  (where a run dir is: the scheduler decides, workers use it)
from jobs.api import ARTIFACTS_DIR, CHECKPOINTS_DIR, FINAL_METRICS_FILE, METRICS_FILE


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def final_metrics(self) -> Path:
        return self.root / FINAL_METRICS_FILE

    @property
    def artifacts(self) -> Path:
        return self.root / ARTIFACTS_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def pgid(self) -> Path:
        return self.root / "pgid"

    @property
    def gpu_pids(self) -> Path:
        return self.root / "gpu_pids"

    def write_gpu_pids(self, pids: set[int]) -> None:
        """Atomic, so the scheduler never reads half a list, even from a worker
        killed mid-write."""
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".gpu_pids.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{pid}\n" for pid in sorted(pids)))
        os.replace(tmp, self.gpu_pids)

    def read_gpu_pids(self) -> set[int]:
        """The recorded pids; empty when the attempt recorded none (no GPU, or
        a run dir this machine cannot read)."""
        try:
            text = self.gpu_pids.read_text(encoding="utf-8")
        except OSError:
            return set()
        return {int(line) for line in text.split() if line.isdigit()}

    @property
    def gpu_ids(self) -> Path:
        return self.root / "gpu_ids"

    def write_gpu_ids(self, ids: list[str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".gpu_ids.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{i}\n" for i in ids))
        os.replace(tmp, self.gpu_ids)

    def read_gpu_ids(self) -> list[int] | None:
        """The GPU indices Ray assigned, or None while the worker has not started
        (or the run dir is on another node)."""
        try:
            text = self.gpu_ids.read_text(encoding="utf-8")
        except OSError:
            return None
        return [int(line) for line in text.split() if line.isdigit()]

    def create(self) -> None:
        """The run dir; ``artifacts/`` is made when a job asks for it
        (JobContext.artifacts_dir), not for every job (a mkdir is a tenth of a
        millisecond of a short job here).  A run dir already there with files in
        it is an earlier try of this attempt number whose start the store lost
        (an OS crash before the scheduler's commit reached the disk): it is
        moved aside, so no stale result, log or marker is taken for this one's."""
        try:
            os.mkdir(self.root.parent)  # runs/<job id>/: new for a first attempt
        except FileExistsError:
            pass
        except FileNotFoundError:  # no runs/ yet on this node
            os.makedirs(self.root.parent, exist_ok=True)
        try:
            os.mkdir(self.root)
        except FileExistsError:
            if not any(self.root.iterdir()):
                return
            self.root.rename(self.root.with_name(f"{self.root.name}.stale-{time.time():.0f}-{os.getpid()}"))
            self.root.mkdir()

    def list_artifacts(self) -> list[str]:
        if not os.path.isdir(self.artifacts):
            return []
        return sorted(str(p.relative_to(self.artifacts)) for p in self.artifacts.rglob("*") if p.is_file())

    def write_result(self, result: dict[str, Any]) -> None:
        """Atomic against a crash of any process: the old file or the new one,
        never half of one (one writer per run dir, so a fixed temp name).  Not
        fsync'd: the store, not this file, is the durable record (the scheduler
        records the result Ray hands back); the file matters only when that
        hand-back was lost, and after a power cut that lost the file too the job
        is rerun, as it would be for its artifacts, which are not fsync'd either.
        An fsync here was a third of a short job's cost in the worker."""
        tmp = self.root / ".result.json.tmp"
        data = json.dumps(result, default=str).encode("utf-8")  # json.dump would run the pure-Python encoder
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, self.result)

    def read_result(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.result.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, or cut short by a power loss
            return None

    def read_reported_metrics(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(final metrics, per-step records).  Final = the last value of each metric
        reported, overridden by metrics.json when the job wrote one."""
        steps: list[dict[str, Any]] = []
        final: dict[str, Any] = {}
        text = _read_text(self.metrics)  # most short jobs report nothing: one failed open, no stat
        for line in (text or "").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                steps.append(record)
                final.update({k: v for k, v in record.items() if k not in ("time", "step")})
        text = _read_text(self.final_metrics)
        if text is not None:
            try:
                data = json.loads(text)
                if isinstance(data, dict):
                    final.update(data)
            except json.JSONDecodeError:
                final["metrics_error"] = f"{self.final_metrics.name} is not valid JSON"
        return final, steps


def _read_text(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
