"""Why each job that was not placed waits: its class's reason, in numbers, with
how many waiting jobs the next decision would consider before it and, when
users compete, how its user's load compares with their fair share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from scheduler.policy.records import AHEAD_COUNTED
from scheduler.policy.shares import Shares


@dataclass
class JobClass:
    """Interchangeable pending jobs; once one cannot start, none of the rest can
    in this decision (capacity and quota only shrink within it)."""

    jobs: list  # [(seq, job_id, Demand)], submission order
    shape: tuple
    why: str | None = None  # why the jobs from ``stop`` on wait
    stop: int = 0
    unschedulable: bool = False

    def stuck(self, cursor: int, why: str, unschedulable: bool = False) -> None:
        self.why, self.stop, self.unschedulable = why, cursor, unschedulable


def waiting_reasons(classes: list[JobClass], shares: Shares, fifo: bool, blocked_by: int | None,
                    order_key: Callable[[tuple], tuple] | None = None) -> dict[int, str]:
    """{job id: why it waits} for every job not placed nor unschedulable, in the
    order the next decision would consider them: within a user, priority then
    submission (fifo: submission alone), or ``order_key`` of a class's entry
    where predictions or tiers order them."""
    line: list[tuple] = []
    for index, cls in enumerate(classes):
        if cls.unschedulable:
            continue
        if cls.why is None and blocked_by is None:
            continue  # all placed
        start = cls.stop  # the first job not placed (fifo: not reached)
        if start >= len(cls.jobs):
            continue
        first = cls.jobs[start][2]
        group = (first.queue, first.user) if shares.fair else ("", "")
        rank = (shares.queue_key(group[0]), shares.user_load(*group), group[1])
        if order_key is None:  # the plain order, without a call per job (100,000 of them, say)
            first_key = 0 if fifo else -first.priority  # one priority per class
            line.extend((rank, first_key, e[0], e[1], index, cursor) for cursor, e in enumerate(cls.jobs[start:], start))
        else:
            line.extend((rank, *order_key(e), index, cursor) for cursor, e in enumerate(cls.jobs[start:], start))
    line.sort()
    waiting: dict[int, str] = {}
    suffixes: dict[tuple, str] = {}  # (queue, user) -> "; user at 2.1x fair share"
    past_count: dict[tuple, str] = {}  # (class, queue, user) -> the whole text, once positions stop counting
    for ahead, (*_, index, cursor) in enumerate(line):
        cls = classes[index]
        d = cls.jobs[cursor][2]
        group = (d.queue, d.user)
        suffix = suffixes.get(group)
        if suffix is None:
            suffix = suffixes[group] = shares.fair_share_note(*group)
        why = cls.why if cls.why is not None else f"behind job {blocked_by} (fifo: strict submission order)"
        if ahead >= AHEAD_COUNTED:  # a stable text: each start would otherwise rewrite every reason
            text = past_count.get((index, group))
            if text is None:
                text = past_count[(index, group)] = f"{why}; {AHEAD_COUNTED}+ jobs ahead{suffix}"
        elif ahead:
            text = f"{why}; {ahead} job{'s' if ahead != 1 else ''} ahead{suffix}"
        else:
            text = why + suffix
        waiting[d.job_id] = text
    return waiting
