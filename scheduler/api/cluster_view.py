"""Reading the cluster: the nodes as the scheduler last saw them, the scheduler
itself, and who used what (accounting)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.errors import UserError
from scheduler.store import Store

USAGE_GROUPS = {"user": ("user",), "queue": ("queue",), "both": ("queue", "user")}


@dataclass(frozen=True)
class NodesView:
    scheduler: Any  # daemon.Status
    nodes: list[Any]  # records.NodeSnapshot

    def to_json(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.to_json(), "nodes": [n.to_json() for n in self.nodes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodesView:
        from scheduler.daemon import DaemonStatus
        from scheduler.records import NodeSnapshot

        return cls(DaemonStatus.from_json(data["scheduler"]), [NodeSnapshot.from_json(n) for n in data["nodes"]])


def nodes(store: Store) -> NodesView:
    """Capacity, allocation and GPUs per node, as the scheduler last saw them."""
    from scheduler import daemon

    found = store.nodes()
    return NodesView(daemon.status(store.home), found)


def scheduler_status(home: str | Path) -> Any:
    """Whether a scheduler runs for this home, and whether it sees Ray (daemon.Status)."""
    from scheduler import daemon

    return daemon.status(Path(home))


@dataclass(frozen=True)
class UsageReport:
    """Resource-hours, jobs and waiting per group since ``since`` (epoch
    seconds), and the decayed usage fair share ranks by."""

    since: float
    now: float
    half_life: float
    groups: tuple[str, ...]
    rows: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since, "now": self.now, "half_life_s": self.half_life, "rows": self.rows}

    def to_wire(self) -> dict[str, Any]:
        return {**self.to_json(), "groups": list(self.groups)}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> UsageReport:
        return cls(data["since"], data["now"], data["half_life_s"], tuple(data["groups"]), data["rows"])


def usage(store: Store, since: str, by: str, half_life: float, now: float | None = None) -> UsageReport:
    """``since``: a duration back from now (12h, 7d); ``by``: user, queue or both."""
    from scheduler.units import parse_duration

    try:
        period = parse_duration(since)
    except ValueError as exc:
        raise UserError(f"--since {since}: {exc}") from None
    if by not in USAGE_GROUPS:
        raise UserError(f"--by {by}: expected one of {', '.join(USAGE_GROUPS)}")
    now = time.time() if now is None else now
    # Decayed usage needs history: ten half-lives back weighs under 0.1%.
    groups = USAGE_GROUPS[by]
    # Summed by SQLite (accounting.summarize's rules, tested equal to it).
    rows = store.usage_summary(min(now - period, now - 10 * half_life), now - period, now, half_life, groups)
    return UsageReport(now - period, now, half_life, groups, rows)
