"""labq's settings: defaults, then ``cluster.yaml``'s ``metadata.labq``, then
environment, then flags.

``cluster.yaml`` is a Ray cluster-launcher file; Ray ignores ``metadata``, so
labq keeps its own settings there and validates them strictly (unknown keys are
errors, not silently ignored typos).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

# Defined beside __version__: the CLI reads them without pydantic.
from scheduler import DEFAULT_HOME, DEFAULT_QUEUE, DEFAULT_USAGE_HALF_LIFE
from scheduler.errors import ConfigError
from scheduler.units import parse_duration, parse_memory

if TYPE_CHECKING:
    from scheduler.policy import QueueConfig



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: keeps `labq queue` startup light


class LocalRay(_Strict):
    """Resources of the Ray that labq starts itself when no address is given.
    ``num_gpus`` may exceed the real GPUs: they are then *logical* GPUs, useful to
    exercise fractional scheduling on a CPU machine."""

    num_cpus: float | None = Field(None, gt=0)
    num_gpus: int | None = Field(None, ge=0)


def _memory(value: Any) -> Any:
    return None if value is None else parse_memory(value)


def _duration(value: Any) -> Any:
    return value if value is None else parse_duration(value)


Memory = Annotated[int | None, BeforeValidator(_memory)]
Duration = Annotated[float, BeforeValidator(_duration)]


class SchedulerSettings(_Strict):
    # How long the loop waits for Ray events before looking at the queue again.
    poll_interval: float = Field(0.2, gt=0, le=10)
    # A scheduler started implicitly by `labq submit`/`labq run` exits after this
    # many idle seconds (nothing pending or running); 0 keeps it forever.
    idle_timeout: float = Field(300.0, ge=0)
    # After a polite cancel, how long before the worker process is killed.
    cancel_grace: float = Field(3.0, ge=0)
    # Fair share remembers past usage, halving its weight every this long
    # (a duration: 90s, 12h, 7d, or seconds).
    usage_half_life: Duration = DEFAULT_USAGE_HALF_LIFE
    # Shorter jobs go first, by durations predicted from past runs like them
    # (same experiment stage, or user and shape), but may pass a longer job only
    # until it has waited this many times its own predicted duration (or a week);
    # 0 keeps submission order (scheduler/policy/durations.py).
    stretch: float = Field(100.0, ge=0, le=10000, allow_inf_nan=False)
    # A job past its due time that has waited this long (a duration) gets a
    # reservation from the running jobs' predicted ends when it cannot fit; unset:
    # never (reservations come from time limits only; see docs/scheduling.md).
    reserve_after: Duration | None = None
    # Jobs measured this short are packed several to one Ray task (about this
    # many seconds of work per pack; see scheduler/packing.py); 0 never packs.
    pack_seconds: float = Field(0.5, ge=0, le=10)


class QueueResources(_Strict):
    """Amounts of cpu (cores), gpu (GPUs) and memory (a size such as 64GiB);
    a resource left out is not governed."""

    cpu: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False)
    gpu: float | None = Field(None, ge=0, le=1e6, allow_inf_nan=False)
    memory: Memory = None

    def amounts(self) -> dict[str, float]:
        return {k: float(v) for k, v in (("cpu", self.cpu), ("gpu", self.gpu), ("memory", self.memory))
                if v is not None}


class Queue(_Strict):
    """A queue's share of the cluster: ``weight`` in fair share, a ``guarantee``
    it is always entitled to, an optional hard ``limit``; whether it may
    ``borrow`` idle capacity beyond its guarantee, and whether, under its
    guarantee, it may ``preempt`` jobs that other queues run on borrowed capacity."""

    name: str
    description: str | None = None
    weight: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    guarantee: QueueResources = Field(default_factory=QueueResources)
    limit: QueueResources | None = None
    borrow: bool = True
    preempt: bool = False
    # Least-attained-service tiers: thresholds of GPU time a job has held (a
    # duration: 1h is one GPU-hour; a CPU-only job counts as one GPU), ascending.
    # Jobs below the first go first, and may preempt this queue's jobs past a
    # threshold they have not reached; opting in says this queue's jobs resume
    # from their checkpoints (scheduler/policy/tiers.py).
    tiers: list[Duration] = Field(default_factory=list, max_length=16)
    # Shortest expected remaining time first, with preemption: a job that
    # cannot fit may preempt this queue's running jobs expected (from past runs
    # like them, and how long they have run) to run this many times longer than
    # it; the factor doubles each time a job has been preempted.  Opting in says
    # this queue's jobs resume from their checkpoints (scheduler/policy/preemption.py).
    preempt_longer: float | None = Field(None, ge=1, le=1e6, allow_inf_nan=False)
    # A job is preempted for a lower tier or a shorter job at most this many times.
    max_preemptions: int = Field(2, ge=0, le=100)

    @field_validator("tiers")
    @classmethod
    def _tiers_ascending(cls, tiers: list[float]) -> list[float]:
        if any(t <= 0 for t in tiers) or any(b <= a for a, b in zip(tiers, tiers[1:])):
            raise ValueError("tiers must be positive durations in ascending order")
        return tiers

    @model_validator(mode="after")
    def _limit_not_below_guarantee(self) -> "Queue":
        if self.limit is not None:
            for resource, amount in self.guarantee.amounts().items():
                cap = self.limit.amounts().get(resource)
                if cap is not None and cap < amount:
                    raise ValueError(f"limit.{resource} ({cap:g}) is below guarantee.{resource} ({amount:g})")
        return self

    def config(self) -> "QueueConfig":
        from scheduler.policy import QueueConfig

        return QueueConfig(name=self.name, weight=self.weight, guarantee=self.guarantee.amounts(),
                           limit=None if self.limit is None else self.limit.amounts(), borrow=self.borrow,
                           preempt=self.preempt, tiers=tuple(self.tiers), max_preemptions=self.max_preemptions,
                           preempt_longer=self.preempt_longer or 0.0)


class Settings(_Strict):
    home: str = DEFAULT_HOME
    # Ray address to connect to; None starts a local Ray inside the scheduler.
    address: str | None = None
    local: LocalRay = Field(default_factory=LocalRay)
    # Where run dirs live on a multi-node cluster: "collect" ships each attempt's
    # run dir back to LABQ_HOME on the head when it ends (and upstream artifacts
    # to the node that needs them); "shared" means LABQ_HOME is the same shared
    # path (NFS...) on every node, so nothing is copied and `logs -f` is live.
    storage: Literal["collect", "shared"] = "collect"
    # The most bytes of outputs (files a job creates or changes in its working
    # directory) kept per attempt; files beyond it are deleted and listed as dropped.
    outputs_limit: Memory = Field(1 << 30, ge=0)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    queues: list[Queue] = Field(default_factory=lambda: [Queue(name=DEFAULT_QUEUE)])
    # Users who may cancel other users' jobs; everyone may cancel their own.
    admins: list[str] = Field(default_factory=list)

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()

    def queue_names(self) -> list[str]:
        return [q.name for q in self.queues]

    def queue_configs(self) -> list["QueueConfig"]:
        """The queues as the scheduling policy takes them."""
        return [q.config() for q in self.queues]

    @field_validator("queues")
    @classmethod
    def _queue_names_unique(cls, queues: list[Queue]) -> list[Queue]:
        seen: set[str] = set()
        for q in queues:
            if q.name in seen:
                raise ValueError(f"queue {q.name!r} is declared twice")
            seen.add(q.name)
        return queues


def load_settings(cluster: str | Path | None = None) -> Settings:
    """Settings from ``cluster`` (or ``$LABQ_CLUSTER``), with ``LABQ_HOME`` and
    ``RAY_ADDRESS`` taking precedence over the file."""
    cluster = cluster or os.environ.get("LABQ_CLUSTER")
    data: dict[str, Any] = {}
    if cluster:
        data = _read_labq_section(Path(cluster))
    try:
        # Nothing to validate without a cluster file: the defaults are valid by construction.
        settings = Settings.model_validate(data) if data else Settings.model_construct()
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "metadata.labq." + ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{cluster}: {key}: {msg}") from None
    if os.environ.get("LABQ_HOME"):
        settings.home = os.environ["LABQ_HOME"]
    if os.environ.get("RAY_ADDRESS") and not settings.address:
        settings.address = os.environ["RAY_ADDRESS"]
    return settings


def _read_labq_section(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.__class__.__name__}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a Ray cluster config (a mapping)")
    meta = doc.get("metadata") or {}
    section = meta.get("labq") if isinstance(meta, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: metadata.labq: expected a mapping")
    return section
