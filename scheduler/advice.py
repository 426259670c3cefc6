"""Right-sizing advice: what a job asked for against what it used.

A pure function of the job's request and its recorded usage (an attempt's
result), so `labq results` and `labq status` can show it and tests need nothing
but numbers.  Advice is given only where acting on it changes something: a
smaller request that packs more jobs onto the same hardware, or a larger one for
a job that ran over what it asked.
"""

from __future__ import annotations

import math
from typing import Any

from scheduler.units import format_bytes

# Requests are suggested with this much headroom over the recorded peak.
HEADROOM = 1.25
# Shares of one GPU worth suggesting: they pack whole cards without leftovers.
GPU_SHARES = (0.125, 0.25, 0.5, 1.0)
# CPU averages over shorter runs say more about start-up than about the job.
MIN_SECONDS_FOR_CPU = 5.0


def advise(requested: dict[str, Any], usage: dict[str, Any]) -> list[str]:
    """Advice lines for one job.

    ``requested``: ``cpu``, ``gpu`` (a share of one card, or whole cards),
    ``gpu_memory`` (bytes), ``memory`` (bytes).  ``usage``: an attempt's result
    fields ``peak_rss``, ``rss_baseline``, ``cpu_time``, ``started_at``,
    ``ended_at`` and ``gpu_usage`` (``peak_memory``, ``memory_total``); any may be
    missing, and advice needing it is skipped."""
    lines = []
    for rule in (_gpu_advice, _memory_advice, _cpu_advice):
        line = rule(requested, usage)
        if line:
            lines.append(line)
    return lines


def _times(n: float) -> str:
    if n == 2:
        return "twice"
    return f"{n:.0f}x" if float(n).is_integer() else f"{n:.1f}x"


def _gpu_advice(requested: dict[str, Any], usage: dict[str, Any]) -> str | None:
    gpu_usage = usage.get("gpu_usage") or {}
    peak, total = gpu_usage.get("peak_memory"), gpu_usage.get("memory_total")
    if peak is None or not total:
        return None
    used = peak / total
    gpu_memory = requested.get("gpu_memory")
    if gpu_memory:
        want = _nice_bytes(peak * HEADROOM)
        per_card_now, per_card_then = total // gpu_memory, total // want
        if peak > gpu_memory:
            return (f"asked {format_bytes(gpu_memory)} gpu_memory, peak {format_bytes(peak)}: "
                    f"ask {format_bytes(want)} (it ran over its share)")
        if per_card_now >= 1 and per_card_then >= 2 * per_card_now:
            return (f"asked {format_bytes(gpu_memory)} gpu_memory, peak {format_bytes(peak)}: {format_bytes(want)} "
                    f"would pack {_times(per_card_then / per_card_now)} as many")
        return None
    asked = float(requested.get("gpu") or 0)
    if asked <= 0:
        return None
    want = next((s for s in GPU_SHARES if s >= used * HEADROOM), 1.0)
    if asked > 1:  # whole GPUs: memory alone cannot say the job would fit on fewer
        return None
    if used > asked:
        return f"asked {asked:g} gpu, peak {used:.2f} of the card's memory: ask {want:g} (it ran over its share)"
    if want < asked:
        gain = math.floor(1 / want) / max(1, math.floor(1 / asked))
        if gain >= 2:
            return (f"asked {asked:g} gpu, peak {used:.2f} of the card's memory: {want:g} would pack "
                    f"{_times(gain)} as many")
    return None


def _memory_advice(requested: dict[str, Any], usage: dict[str, Any]) -> str | None:
    asked = requested.get("memory")
    peak = usage.get("peak_rss")
    if not asked or peak is None:
        return None
    used = max(0, peak - (usage.get("rss_baseline") or 0))
    want = _nice_bytes(used * HEADROOM)
    if used > asked:
        return f"asked {format_bytes(asked)} memory, peak {format_bytes(used)}: ask {format_bytes(want)}"
    if want * 2 <= asked:
        return (f"asked {format_bytes(asked)} memory, peak {format_bytes(used)}: {format_bytes(want)} "
                f"would pack {_times(asked // want)} as many")
    return None


def _cpu_advice(requested: dict[str, Any], usage: dict[str, Any]) -> str | None:
    asked = float(requested.get("cpu") or 0)
    cpu_time, start, end = usage.get("cpu_time"), usage.get("started_at"), usage.get("ended_at")
    if asked <= 0 or cpu_time is None or start is None or end is None or end - start < MIN_SECONDS_FOR_CPU:
        return None
    cores = cpu_time / (end - start)
    if cores > asked * 1.5:
        want = math.ceil(cores * 2) / 2
        return (f"asked {asked:g} cpu, used {cores:.1f} cores on average: it competes with its neighbours; "
                f"ask {want:g}")
    want = max(0.25, math.ceil(cores * HEADROOM * 4) / 4)
    if want * 2 <= asked:
        return (f"asked {asked:g} cpu, used {cores:.2f} cores on average: {want:g} would pack "
                f"{_times(asked / want)} as many")
    return None


def _nice_bytes(n: float) -> int:
    """Up to the next power of two of MiB, at least 256 MiB: 700 MiB -> 1 GiB."""
    mib = max(256, 2 ** math.ceil(math.log2(max(n, 1) / 2**20)))
    return int(mib * 2**20)
