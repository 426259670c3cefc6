"""Records of one attempt as they cross the scheduler/worker boundary.

``from_json`` reads what ``to_json`` wrote and is lenient the other way round:
unknown keys are ignored and missing optional ones take their defaults, so a
result.json written by another labq version still reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


def run_dir_for(home: str | Path, job_id: int, attempt: int) -> Path:
    """Where one attempt's run directory is: LABQ_HOME/runs/<job id>/attempt-<n>
    (the scheduler records it; the worker creates it)."""
    return Path(home).expanduser() / "runs" / str(job_id) / f"attempt-{attempt}"


class WorkerOutcome(str, Enum):
    """How a job ended, as the worker that ran it saw it."""

    # The callable returned, or the command exited 0.
    SUCCEEDED = "succeeded"
    # The callable raised, or the command exited non-zero.
    FAILED = "failed"
    # Ended for going over its memory or GPU-memory share (see ``oom_cause``).
    OUT_OF_MEMORY = "out_of_memory"

    @classmethod
    def of(cls, text: Any) -> "WorkerOutcome":
        """The outcome named by ``text``; anything else reads as a failure."""
        try:
            return cls(text)
        except ValueError:
            return cls.FAILED


class OomCause(str, Enum):
    """What ended a job for memory."""

    MEMORY = "memory"  # over its host memory request (labq's watchdog)
    GPU_SHARE = "gpu_share"  # over its GPU memory share (labq's GPU watchdog)
    CUDA = "cuda"  # the framework's own CUDA out-of-memory error

    @property
    def on_gpu(self) -> bool:
        return self is not OomCause.MEMORY


@dataclass(frozen=True)
class Share:
    """The resources booked for one attempt."""

    cpu: float
    gpu: float  # per GPU index: a fraction, or a whole number of GPUs
    memory: int | None = None  # bytes
    custom: dict[str, float] = field(default_factory=dict)
    gpu_memory: int | None = None  # bytes on one GPU, when the job asked that way

    def to_json(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "gpu": self.gpu, "memory": self.memory, "custom": dict(self.custom),
                "gpu_memory": self.gpu_memory}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Share":
        data = data or {}
        return cls(cpu=float(data.get("cpu") or 0.0), gpu=float(data.get("gpu") or 0.0), memory=data.get("memory"),
                   custom=dict(data.get("custom") or {}), gpu_memory=data.get("gpu_memory"))


def gpu_share(resources: dict[str, Any], memory_total: int | None = None) -> float | None:
    """The job's fraction of one card (0 < share < 1), or None when it holds
    whole GPUs or none.  A ``gpu_memory`` request is a fraction of ``memory_total``
    when that is known."""
    gpu_memory = resources.get("gpu_memory")
    if gpu_memory and memory_total:
        return min(1.0, int(gpu_memory) / memory_total)
    try:
        share = float(resources.get("gpu") or 0)
    except (TypeError, ValueError):
        return None
    return share if 0 < share < 1 else None


@dataclass(frozen=True)
class Input:
    """One upstream job whose outputs an attempt reads."""

    job_id: int
    stage: str
    params: dict[str, Any]
    run_dir: str
    metrics: dict[str, Any]
    # The upstream's artifacts, zipped, for a node that cannot read the head's disk.
    bundle: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"job_id": self.job_id, "stage": self.stage, "params": self.params, "run_dir": self.run_dir,
                "metrics": self.metrics}
        if self.bundle is not None:
            data["bundle"] = self.bundle
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Input":
        return cls(job_id=data["job_id"], stage=data["stage"], params=data.get("params") or {},
                   run_dir=data["run_dir"], metrics=data.get("metrics") or {}, bundle=data.get("bundle"))


@dataclass(frozen=True)
class AttemptTask:
    """Everything a worker is given to run one attempt of one job."""

    job_id: int
    attempt: int  # the attempt's number within its job (1, 2, ...)
    experiment: str
    stage: str
    params: dict[str, Any]
    run_dir: str
    target_kind: str  # "callable" or "command"
    target: str
    resources: Share
    inputs: tuple[Input, ...] = ()
    previous_run_dir: str | None = None  # the attempt before, to resume from its checkpoint
    code_dir: str | None = None  # the spec's directory, for an experiment without a snapshot
    package: str | None = None  # the code snapshot (<sha>.zip) the private working directory copies
    code_root: str | None = None  # where each node keeps snapshots extracted
    cache_dir: str | None = None
    collect_to_node: str | None = None  # the head's node id when run dirs are carried back to it
    metrics_from: dict[str, Any] | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    outputs_limit: int | None = None
    # Early stopping's rung steps: a callable's report() waits at each for the
    # scheduler's verdict (jobs.api.RUNG_WAIT_SECONDS at most).
    rungs: tuple[float, ...] = ()
    rung_metric: str | None = None  # the metric judged there: a report without it does not wait

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "attempt": self.attempt, "experiment": self.experiment, "stage": self.stage,
                "params": self.params, "run_dir": self.run_dir, "target_kind": self.target_kind,
                "target": self.target, "resources": self.resources.to_json(),
                "inputs": [i.to_json() for i in self.inputs], "previous_run_dir": self.previous_run_dir,
                "code_dir": self.code_dir, "package": self.package, "code_root": self.code_root,
                "cache_dir": self.cache_dir, "collect_to_node": self.collect_to_node,
                "metrics_from": self.metrics_from, "env_vars": dict(self.env_vars),
                "outputs_limit": self.outputs_limit, "rungs": list(self.rungs),
                "rung_metric": self.rung_metric}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AttemptTask":
        return cls(job_id=data["job_id"], attempt=data["attempt"], experiment=data.get("experiment", ""),
                   stage=data.get("stage", ""), params=data.get("params") or {}, run_dir=data["run_dir"],
                   target_kind=data["target_kind"], target=data["target"],
                   resources=Share.from_json(data.get("resources")),
                   inputs=tuple(Input.from_json(i) for i in data.get("inputs") or ()),
                   previous_run_dir=data.get("previous_run_dir"), code_dir=data.get("code_dir"),
                   package=data.get("package"), code_root=data.get("code_root"), cache_dir=data.get("cache_dir"),
                   collect_to_node=data.get("collect_to_node"), metrics_from=data.get("metrics_from"),
                   env_vars=dict(data.get("env_vars") or {}), outputs_limit=data.get("outputs_limit"),
                   rungs=tuple(float(r) for r in data.get("rungs") or ()), rung_metric=data.get("rung_metric"))


# Measured use a worker reports beside metrics, kept with the attempt's result.
USAGE_FIELDS = ("gpu_usage", "oom_cause", "cpu_time", "rss_baseline")


@dataclass
class WorkerResult:
    """What a worker returns for one attempt (and writes to its result.json)."""

    outcome: WorkerOutcome
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    # Files the job created or changed in its working directory: [{"path", "bytes", "kept"}].
    outputs: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    error: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    node_id: str | None = None
    gpu_ids: list[str] = field(default_factory=list)
    peak_rss: int | None = None
    # What the worker process used before the job (0 for a command): the job's
    # own peak is peak_rss minus this.
    rss_baseline: int | None = None
    cpu_time: float | None = None
    oom_cause: OomCause | None = None  # what ended the job for memory, if anything did
    gpu_usage: dict[str, Any] | None = None  # GPU telemetry, with ``pids_left`` still on the GPUs at the end
    pid: int | None = None  # the worker process
    bundle: bytes | None = None  # the run dir, zipped, carried back to a head without a shared disk
    bundle_error: str | None = None

    @property
    def usage(self) -> dict[str, Any]:
        """The measured use kept beside the metrics (store's ``results.usage``)."""
        return {k: v for k in USAGE_FIELDS if (v := self._json_value(k)) is not None}

    def _json_value(self, name: str) -> Any:
        value = getattr(self, name)
        return value.value if isinstance(value, Enum) else value

    def to_json(self, with_bundle: bool = True) -> dict[str, Any]:
        data = {"outcome": self.outcome.value, "metrics": self.metrics, "artifacts": self.artifacts,
                "outputs": self.outputs, "exit_code": self.exit_code, "error": self.error,
                "started_at": self.started_at, "ended_at": self.ended_at, "node_id": self.node_id,
                "gpu_ids": self.gpu_ids, "peak_rss": self.peak_rss, "rss_baseline": self.rss_baseline,
                "cpu_time": self.cpu_time, "oom_cause": self.oom_cause.value if self.oom_cause else None,
                "gpu_usage": self.gpu_usage, "pid": self.pid}
        if with_bundle and self.bundle is not None:
            data["bundle"] = self.bundle
        if self.bundle_error is not None:
            data["bundle_error"] = self.bundle_error
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkerResult":
        oom = data.get("oom_cause")
        try:
            oom_cause = OomCause(oom) if oom else None
        except ValueError:
            oom_cause = None
        return cls(outcome=WorkerOutcome.of(data.get("outcome")), metrics=data.get("metrics") or {},
                   artifacts=list(data.get("artifacts") or []), outputs=list(data.get("outputs") or []),
                   exit_code=data.get("exit_code"), error=data.get("error"), started_at=data.get("started_at"),
                   ended_at=data.get("ended_at"), node_id=data.get("node_id"),
                   gpu_ids=list(data.get("gpu_ids") or []), peak_rss=data.get("peak_rss"),
                   rss_baseline=data.get("rss_baseline"), cpu_time=data.get("cpu_time"), oom_cause=oom_cause,
                   gpu_usage=data.get("gpu_usage"), pid=data.get("pid"), bundle=data.get("bundle"),
                   bundle_error=data.get("bundle_error"))


@dataclass(frozen=True)
class AttemptTrace:
    """What the node that ran an attempt still holds of it, read there: the
    result its worker saved (if it got that far), whether it started at all,
    the memory watchdog's note if that ended it, and the processes it put on GPUs."""

    started: bool = False  # its run dir exists: the worker began it
    saved: WorkerResult | None = None
    oom_note: str | None = None  # labq's watchdog killed the worker for memory: why
    oom_cause: OomCause | None = None  # and for which memory
    gpu_ids: tuple[int, ...] | None = None  # the GPUs Ray gave it, once the worker wrote them
    gpu_pids: frozenset[int] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {"started": self.started, "saved": self.saved.to_json() if self.saved else None,
                "oom_note": self.oom_note, "oom_cause": self.oom_cause.value if self.oom_cause else None,
                "gpu_ids": list(self.gpu_ids) if self.gpu_ids is not None else None,
                "gpu_pids": sorted(self.gpu_pids)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AttemptTrace":
        saved = data.get("saved")
        ids = data.get("gpu_ids")
        return cls(started=bool(data.get("started")), saved=WorkerResult.from_json(saved) if saved else None,
                   oom_note=data.get("oom_note"), oom_cause=OomCause(data["oom_cause"]) if data.get("oom_cause") else None,
                   gpu_ids=tuple(ids) if ids is not None else None,
                   gpu_pids=frozenset(data.get("gpu_pids") or ()))
