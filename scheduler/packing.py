"""Packing short jobs: several jobs of one stage run one after another in a
single Ray task that holds one job's share.

Why: a Ray task costs about 1-2 ms of CPU across the driver, raylet and worker
whatever it runs.  A sweep of 2,000 jobs that each take a millisecond spends
more on Ray than on the work, and labq's own bookkeeping per task comes on top.
Ray's guidance for tasks this small is to batch them; labq does it for the
user, and only where it cannot cost them:

* only jobs measured short: every job of an (experiment, stage) runs alone
  until this scheduler has seen ``SAMPLES`` of them end, none of the recent
  ones may have taken more than half of ``budget``, and a pack holds about
  ``budget`` seconds of work at their mean duration;
* only jobs that would otherwise wait: the policy places one job per slot as
  always, and its followers are the jobs next in line in the same class (same
  queue, user, priority, shape and time limit) that found no slot this pass;
* never GPU jobs (a real GPU gets a fresh worker per job), never a job whose
  time limit is within ``TIMEOUT_FACTOR`` packs' length (its clock starts when
  its pack is launched).

Each packed job is still its own attempt: its own run dir, logs, result,
usage, retries and state.  Pure data in, pure data out: the loop asks, tests
drive it with plain values.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Hashable, Iterable, Sequence

# Jobs of a stage seen to end before its jobs may be packed.
SAMPLES = 3
# Durations remembered per stage: their mean sizes a pack, their longest says
# whether the stage may be packed at all.
RECENT = 20
# At most this many jobs in one pack, however short they are.
MAX_PACK = 64
# A job's time limit must be at least this many packs long to be packed.
TIMEOUT_FACTOR = 20
# Below this a duration is timer noise: a pack of no-op jobs is sized as if each took it.
FLOOR_SECONDS = 0.001


class ShortJobs:
    """How long the jobs of each stage take here, and so how many of them one
    pack may hold.  ``budget`` (seconds; the ``scheduler.pack_seconds``
    setting) is the most work one pack is expected to hold; 0 turns packing off."""

    def __init__(self, budget: float):
        self.budget = budget
        self._recent: dict[Hashable, deque[float]] = {}

    def observe(self, key: Hashable, seconds: float) -> None:
        """An attempt of stage ``key`` ran this long (as its worker measured it)."""
        if self.budget <= 0 or seconds < 0:
            return
        self._recent.setdefault(key, deque(maxlen=RECENT)).append(seconds)

    def pack_size(self, key: Hashable, time_limit: float | None = None) -> int:
        """How many jobs of stage ``key`` one pack may hold (1: run it alone)."""
        recent = self._recent.get(key)
        if self.budget <= 0 or recent is None or len(recent) < SAMPLES:
            return 1
        if (time_limit is not None and time_limit < TIMEOUT_FACTOR * self.budget) or 2 * max(recent) > self.budget:
            return 1
        # About budget of work at the mean, and at most twice that at the longest
        # seen lately: a pack stays well inside TIMEOUT_FACTOR packs.
        mean = sum(recent) / len(recent)
        longest = max(max(recent), FLOOR_SECONDS)
        return max(1, min(MAX_PACK, int(self.budget / max(mean, FLOOR_SECONDS)), int(2 * self.budget / longest)))

    def any_packable(self) -> bool:
        """Whether any stage may be packed at all (else the loop asks nothing more)."""
        return self.budget > 0 and any(self.pack_size(key) > 1 for key in self._recent)


def pick_followers(leaders: Iterable[tuple[int, int]], peers_of: Callable[[int], Sequence[tuple] | None],
                   taken: set[int]) -> dict[int, list[int]]:
    """Candidate followers for each leader.  ``leaders`` are ``(job_id, size)``
    (a pack of ``size`` jobs, the leader included); ``peers_of(job_id)`` is the
    leader's class as :meth:`scheduler.policy.PendingIndex.peers` gives it:
    ``(seq, job_id, ...)`` entries in the order the policy takes them, the same
    sequence for every job of the class.  Followers are drawn in that order,
    skipping ``taken`` (the jobs placed this pass and those already drawn, which
    this updates); leaders of one class share its next jobs in the order given."""
    out: dict[int, list[int]] = {}
    cursors: dict[int, int] = {}  # id(class sequence) -> next index to look at
    for leader, size in leaders:
        if size < 2:
            continue
        peers = peers_of(leader)
        if not peers:
            continue
        at = cursors.get(id(peers), 0)
        picked: list[int] = []
        while at < len(peers) and len(picked) < size - 1:
            job_id = peers[at][1]
            at += 1
            if job_id not in taken:
                taken.add(job_id)
                picked.append(job_id)
        cursors[id(peers)] = at
        if picked:
            out[leader] = picked
    return out
