"""labq's settings: defaults, then ``cluster.yaml``'s ``metadata.labq``, then
environment, then flags.

``cluster.yaml`` is a Ray cluster-launcher file; Ray ignores ``metadata``, so
labq keeps its own settings there and validates them strictly (unknown keys are
errors, not silently ignored typos).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scheduler.errors import ConfigError

DEFAULT_HOME = "~/.labq"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalRay(_Strict):
    """Resources of the Ray that labq starts itself when no address is given.
    ``num_gpus`` may exceed the real GPUs: they are then *logical* GPUs, useful to
    exercise fractional scheduling on a CPU machine."""

    num_cpus: float | None = Field(None, gt=0)
    num_gpus: int | None = Field(None, ge=0)


class SchedulerSettings(_Strict):
    # How long the loop waits for Ray events before looking at the queue again.
    poll_interval: float = Field(0.2, gt=0, le=10)
    # A scheduler started implicitly by `labq submit`/`labq run` exits after this
    # many idle seconds (nothing pending or running); 0 keeps it forever.
    idle_timeout: float = Field(300.0, ge=0)
    # After a polite cancel, how long before the worker process is killed.
    cancel_grace: float = Field(3.0, ge=0)


class Queue(_Strict):
    name: str
    description: str | None = None


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
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    queues: list[Queue] = Field(default_factory=lambda: [Queue(name="default")])
    # Users who may cancel other users' jobs; everyone may cancel their own.
    admins: list[str] = Field(default_factory=list)

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()

    def queue_names(self) -> list[str]:
        return [q.name for q in self.queues]


def load_settings(cluster: str | Path | None = None) -> Settings:
    """Settings from ``cluster`` (or ``$LABQ_CLUSTER``), with ``LABQ_HOME`` and
    ``RAY_ADDRESS`` taking precedence over the file."""
    cluster = cluster or os.environ.get("LABQ_CLUSTER")
    data: dict[str, Any] = {}
    if cluster:
        data = _read_labq_section(Path(cluster))
    try:
        settings = Settings.model_validate(data)
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
