"""Plain records passed between the store, the policy, the loop and the CLI.

They carry no behaviour that needs a database, so tests build them by hand.
``to_json`` gives the stable field names the CLI's ``--json`` prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from contract.attempt import WorkerResult
from scheduler.states import AttemptState, JobState


def _fields(record: Any) -> dict[str, Any]:
    """A record's fields, shallow: the values are already plain (json-able) data,
    and dataclasses.asdict's deep copy made `labq queue --json` twice as slow."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _known(cls: type, data: dict[str, Any], **decoded: Any) -> dict[str, Any]:
    """The keys of ``data`` that are fields of ``cls``, with ``decoded`` values
    (enums) in place of their JSON forms."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {**{k: v for k, v in data.items() if k in names}, **decoded}


def is_id(ref: object) -> bool:
    """A job or experiment id as typed by a user: ASCII digits that fit SQLite's
    integers (not '²', not 10**400)."""
    text = str(ref)
    return text.isascii() and text.isdigit() and len(text) <= 18


@dataclass
class Job:
    id: int
    experiment_id: int
    experiment: str
    stage: str
    params: dict[str, Any]
    swept: dict[str, Any]
    target_kind: str  # "callable" or "command"
    target: str
    cpu: float
    gpu: float
    memory: int | None
    custom: dict[str, float]
    retries: int
    timeout: float | None
    queue: str
    priority: int
    user: str
    state: JobState
    reason: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    submitted_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    node_id: str | None = None
    gpu_ids: list[str] = field(default_factory=list)
    depends_on: list[int] = field(default_factory=list)
    gpu_memory: int | None = None  # bytes on one GPU: asked instead of a gpu share
    oom_gpu_scale: float | None = None  # retry_on_oom: grow the GPU share by this after a GPU OOM
    free_retries: int = 0  # attempts that were requeued without counting against ``retries``

    def to_json(self) -> dict[str, Any]:
        data = _fields(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Job":
        """The inverse of :meth:`to_json` (what `labq --server` reads back);
        keys it does not know, such as an estimated start, are left out."""
        return cls(**_known(cls, data, state=JobState(data["state"])))


@dataclass(slots=True)
class Waiting:
    """What the scheduler needs of a pending job to decide about it: its shape,
    owner and order, without the params and targets only a launch needs (the
    loop holds one per pending job, 100,000 of them in a big sweep)."""

    id: int
    cpu: float
    gpu: float
    memory: int
    custom: dict[str, float]
    priority: int
    user: str
    queue: str
    timeout: float | None
    submitted_at: float
    gpu_memory: int
    reason: str | None
    group: str = ""  # "experiment/stage": what its duration is predicted from
    attained: float = 0.0  # GPU-seconds its preempted attempts held (policy.tiers)
    preemptions: int = 0


@dataclass(frozen=True)
class StageRunDir:
    """One attempt of an early-stopping stage's job: where its part of the job's
    curve is written (scheduler.early_stop reads every attempt's, in order)."""

    job_id: int
    job_state: str
    run_dir: str
    node_id: str | None
    latest: bool  # the job's latest attempt (a running job's: the one running)


@dataclass(frozen=True)
class Outlook:
    """What the scheduler predicts for an active job: how long it runs in all
    (seconds; None: nothing to go by) and from what runs; in a queue with
    least-attained-service tiers, its tier (0 first) of ``tiers``; for a
    running job, how much longer it is expected to run (seconds, from the past
    runs like it that lasted longer than it has so far: what a queue's
    ``preempt_longer`` compares; None: nothing to go by)."""

    predicted: float | None
    basis: str
    tier: int | None = None
    tiers: int = 0
    remaining: float | None = None


@dataclass
class Attempt:
    id: int
    job_id: int
    number: int
    state: AttemptState
    run_dir: str
    node_id: str | None = None
    gpu_ids: list[str] = field(default_factory=list)
    dispatched_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    peak_rss: int | None = None
    gpu_share: float | None = None  # share of each GPU booked for it (gpu_memory turned into a fraction)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)  # gpu_usage, cpu_time, ... (see contract.attempt.USAGE_FIELDS)
    # Files the job created or changed in its working directory, kept under
    # <run dir>/outputs: [{"path", "bytes", "kept"}] (kept False: over the size limit).
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = _fields(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Attempt":
        return cls(**_known(cls, data, state=AttemptState(data["state"])))


@dataclass
class Experiment:
    id: int
    name: str
    user: str
    queue: str
    priority: int
    spec_path: str
    spec: dict[str, Any]
    package: str | None
    metric: str | None
    mode: str | None
    submitted_at: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Experiment":
        return cls(**_known(cls, data))


@dataclass
class Event:
    ts: float
    job_id: int
    attempt_id: int | None
    kind: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Event":
        return cls(**_known(cls, data))


@dataclass
class NodeSnapshot:
    """What the scheduler last saw of one Ray node (written by the scheduler,
    read by ``labq nodes`` without touching Ray)."""

    node_id: str
    address: str
    alive: bool
    total: dict[str, float]
    allocated: dict[str, float]
    running_jobs: int
    gpus: list[dict[str, Any]]  # per-GPU telemetry where NVML exists
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NodeSnapshot":
        return cls(**_known(cls, data))


class EndCause(str, Enum):
    """Why an attempt ended: what the rules of its job's next state
    (scheduler.endings) go by, instead of matching words in its error."""

    # The worker returned: the job succeeded or failed on its own.
    RETURNED = "returned"
    # Over its memory request (labq's watchdog, or Ray's memory monitor).
    HOST_OOM = "host_oom"
    # Over its GPU memory share, or the framework ran out of GPU memory.
    GPU_OOM = "gpu_oom"
    # The worker process died (a signal, a crash in native code).
    WORKER_DIED = "worker_died"
    # Its node (or that node's raylet) died: not the job's fault.
    NODE_DIED = "node_died"
    # The scheduler that held it restarted or stopped, and nothing kept it
    # running (Ray itself went down, or a stop asked to end what runs): not the job's fault.
    SCHEDULER_GONE = "scheduler_gone"
    # labq's owner of its node's attempts (workers.owner) died, and Ray ended
    # the attempt with it: not the job's fault.
    OWNER_DIED = "owner_died"
    # labq's own worker code raised (not the job: that is RETURNED, failed).
    WORKER_ERROR = "worker_error"
    # Ray would not take it (Ray down mid-pass, a bad option).
    LAUNCH_FAILED = "launch_failed"
    # Its runtime environment (env.pip) could not be installed on the node.
    ENV_FAILED = "env_failed"
    # Stopped because a user cancelled it.
    CANCELLED = "cancelled"
    # Stopped for running past its timeout.
    TIMED_OUT = "timed_out"
    # Stopped to give a queue below its guarantee what it is owed.
    PREEMPTED = "preempted"
    # Stopped by its stage's early_stop rule: its curve was losing.
    PRUNED = "pruned"
    # Paused at a rung by its stage's early_stop rule (pause mode), to be promoted or not.
    PAUSED = "paused"
    # Packed behind other jobs, and its pack ended before it began.
    NOT_STARTED = "not_started"
    # Packed, and its pack was stopped for another job's sake (or ran out of time
    # on the jobs before it) while this one ran.
    INTERRUPTED = "interrupted"


@dataclass
class AttemptEnd:
    """How one attempt ended, as the loop hands it to the store."""

    attempt_id: int
    state: AttemptState
    cause: EndCause
    result: WorkerResult | None = None
    error: str | None = None
    # A packed job got its share when the job before it ended, not at the pack's
    # launch: usage counts it from here.
    slot_from: float | None = None

    @property
    def message(self) -> str | None:
        """The error to record: the loop's, else the worker's."""
        return self.error or (self.result.error if self.result else None)
