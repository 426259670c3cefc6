"""The small API a job uses: its params, run directory, devices and upstream
outputs, and `report()` for metrics.

A job is a callable ``fn(ctx)`` that receives a :class:`JobContext` and returns a
dict of final metrics (or None).  Code deep inside a job that was not handed the
context can still call :func:`current` or :func:`report`: the worker installs
the context for the duration of the attempt.  Command jobs get the same facts in
environment variables (``LABQ_RUN_DIR``, ``LABQ_PARAMS``...) and report by writing
``metrics.json`` or appending JSON lines to ``metrics.jsonl`` in their run dir.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
# Written into a running job's run dir when labq stops it early (pruned, or
# paused at a rung): its next report() raises StopTrial.
STOP_FILE = "stop-requested"
# Written by the scheduler into a running early-stopping job's run dir: the
# last step it has judged the job at and let it go on from.  report() waits at a
# rung step until it is there (or STOP_FILE is), RUNG_WAIT_SECONDS at most: a
# scheduler that is down must not hold the job.
CLEARED_FILE = "rung-cleared"
RUNG_WAIT_SECONDS = 10.0
RUNG_POLL_SECONDS = 0.02
FINAL_METRICS_FILE = "metrics.json"
ARTIFACTS_DIR = "artifacts"
CHECKPOINTS_DIR = "checkpoints"


@dataclass(frozen=True)
class Upstream:
    """What a finished upstream job left for this one (its stage is the key in
    ``ctx.inputs``)."""

    job_id: int
    stage: str
    params: dict[str, Any]
    run_dir: Path
    metrics: dict[str, Any]

    def artifact(self, name: str) -> Path:
        """Path of an artifact the upstream job wrote; raises if it is missing so a
        broken pipeline fails with the file named instead of deep in numpy."""
        path = self.run_dir / ARTIFACTS_DIR / name
        if not path.exists():
            raise FileNotFoundError(
                f"upstream job {self.job_id} (stage {self.stage!r}) has no artifact {name!r} in {path.parent}"
            )
        return path


@dataclass
class JobContext:
    """Everything one attempt of one job may know about itself."""

    job_id: int
    attempt: int
    experiment: str
    stage: str
    params: dict[str, Any]
    run_dir: Path
    inputs: dict[str, Upstream] = field(default_factory=dict)
    gpu_ids: list[str] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    # The run dir of the job's previous attempt, if any: where checkpoints to
    # resume from live.
    previous_run_dir: Path | None = None
    # A directory shared by all jobs on this node (LABQ_HOME/cache), for outputs
    # worth reusing across experiments, keyed by the job itself.
    cache_dir: Path | None = None
    # The attempt's private working directory (its cwd while it runs): a copy of
    # the submitted project; what the job creates or changes there is kept as its
    # outputs (<run dir>/outputs) when it ends.
    workdir: Path | None = None
    # Early stopping's rung steps (scheduler.early_stop): report() waits at each
    # for the scheduler's verdict, as a Ray Tune trial waits for its scheduler.
    rungs: tuple[float, ...] = ()
    rung_metric: str | None = None  # the metric judged at the rungs: only a report of it waits
    _last_step: float | None = field(default=None, repr=False)

    @property
    def artifacts_dir(self) -> Path:
        path = self.run_dir / ARTIFACTS_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def checkpoints_dir(self) -> Path:
        path = self.run_dir / CHECKPOINTS_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def artifact_path(self, name: str) -> Path:
        """Where to write an artifact called ``name``; it is listed in the result."""
        return self.artifacts_dir / name

    def input(self, stage: str | None = None) -> Upstream:
        """The output of the upstream stage ``stage`` (or of the only one)."""
        if stage is None:
            if len(self.inputs) != 1:
                raise LookupError(
                    f"job has {len(self.inputs)} upstream stages ({', '.join(self.inputs) or 'none'}); name one"
                )
            return next(iter(self.inputs.values()))
        if stage not in self.inputs:
            raise LookupError(f"no upstream stage {stage!r}; have: {', '.join(self.inputs) or 'none'}")
        return self.inputs[stage]

    def cap_torch_gpu_memory(self) -> float | None:
        """Cap this process's CUDA caching allocator at the job's share of its GPU
        (``torch.cuda.set_per_process_memory_fraction``), before the first
        allocation; returns the fraction, or None when nothing is capped.  A job
        holding whole GPUs gets the cap an earlier job in a reused worker set
        lifted.  Does nothing unless the job has imported torch itself and CUDA is
        available: it never imports torch, and logical GPUs stay on the CPU.
        labq's worker also applies it at the start of a job when CUDA already runs
        in the worker, and its watchdog ends a job over its share either way."""
        torch = sys.modules.get("torch")
        if torch is None or not self.gpu_ids or not torch.cuda.is_available():
            return None
        from contract.attempt import gpu_share

        # Ray set CUDA_VISIBLE_DEVICES to the job's GPUs: they are cuda:0, cuda:1...
        total = int(torch.cuda.get_device_properties(0).total_memory) if self.resources.get("gpu_memory") else None
        share = gpu_share(self.resources, total)
        if share is not None:
            torch.cuda.set_per_process_memory_fraction(share, torch.device("cuda", 0))
            return share
        for index in range(len(self.gpu_ids)):
            torch.cuda.set_per_process_memory_fraction(1.0, torch.device("cuda", index))
        return None

    def report(self, step: int | None = None, **metrics: Any) -> None:
        """Record metrics for one step (an epoch, an iteration). Appends one JSON
        line to the run dir so it survives a crash and `labq logs`/plots can read
        it while the job runs.  Raises :class:`StopTrial` when labq has stopped
        the job early (its stage's early_stop found it losing, or paused it at
        a rung): let it propagate (a ``finally`` still runs) and the job ends
        pruned or paused, its curve and checkpoints kept.  Save a checkpoint
        before reporting a step: a paused job resumes from it when promoted.
        At an early-stopping rung it first waits (up to RUNG_WAIT_SECONDS) for
        labq to judge it."""
        record: dict[str, Any] = {"time": time.time()}
        if step is not None:
            record["step"] = step
        record.update(metrics)
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        rung = self._rung_crossed(step) if self.rung_metric is None or self.rung_metric in metrics else None
        if rung is not None:
            self._wait_for_verdict(rung)
        self._raise_if_stopped()

    def _rung_crossed(self, step: Any) -> float | None:
        """The highest rung this report reaches that the last one had not."""
        if not self.rungs or isinstance(step, bool) or not isinstance(step, (int, float)):
            return None
        last, self._last_step = self._last_step, float(step)
        crossed = [r for r in self.rungs if (last is None or last < r) and r <= step]
        return crossed[-1] if crossed else None

    def _wait_for_verdict(self, rung: float) -> None:
        deadline = time.monotonic() + RUNG_WAIT_SECONDS
        while time.monotonic() < deadline and not (self.run_dir / STOP_FILE).exists():
            try:
                if float((self.run_dir / CLEARED_FILE).read_text()) >= rung:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(RUNG_POLL_SECONDS)

    def _raise_if_stopped(self) -> None:
        try:
            why = (self.run_dir / STOP_FILE).read_text().strip()
        except FileNotFoundError:
            return
        except OSError:
            why = ""
        raise StopTrial(f"labq {why or 'stopped this job early (early_stop): its curve was losing'}")


_current: JobContext | None = None


class StopTrial(Exception):
    """Raised by report() in a job labq has stopped early."""


def _jsonable(value: Any) -> Any:
    """numpy scalars and paths show up in metrics all the time; store them plainly."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def set_current(ctx: JobContext | None) -> None:
    """Installed by the worker around one attempt."""
    global _current
    _current = ctx


def current() -> JobContext:
    """The context of the attempt running in this process."""
    if _current is None:
        raise RuntimeError("not inside a labq job (jobs.current() works only while labq runs a job)")
    return _current


def report(step: int | None = None, **metrics: Any) -> None:
    """Report per-step metrics for the running job (see JobContext.report)."""
    current().report(step, **metrics)


def params() -> dict[str, Any]:
    return current().params


def run_dir() -> Path:
    return current().run_dir
