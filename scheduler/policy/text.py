"""How the policy words amounts and times in its reasons."""

from __future__ import annotations

from typing import Mapping

from scheduler.policy.records import GiB, Demand

RES_INDEX = {"cpu": 0, "gpu": 1, "memory": 2}


def delay_text(why: str, d: Demand) -> str:
    return why + (" (its time limit ends later)" if d.time_limit else " (it has no time limit)")


def named(held: list[float], names: Mapping[str, float]) -> dict[str, float]:
    return {r: held[RES_INDEX[r]] for r in names} if names else {r: held[i] for r, i in RES_INDEX.items()}


def amount(resource: str, value: float) -> str:
    return f"{value / GiB:.1f}GiB" if resource == "memory" else f"{value:g}"


def vector_text(vec: Mapping[str, float]) -> str:
    return ", ".join(f"{amount(r, v)} {r}" for r, v in vec.items())


def secs(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
