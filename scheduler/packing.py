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
from typing import TYPE_CHECKING, Callable, Hashable, Iterable, Sequence

if TYPE_CHECKING:
    from scheduler.pending_view import PendingView
    from scheduler.store import Store

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


def plan_packs(placements: list, pending: "PendingView", short: ShortJobs, store: "Store", *, slots: int,
               head: str | None) -> dict[int, list[int]]:
    """Leader job id -> the jobs packed behind it: its class's next pending
    jobs of the same experiment and stage, as many as its stage's measured
    durations allow.  Only CPU jobs, and in collect mode only on the head (a
    pack's jobs are sorted out from what they left on their node).  ``slots``:
    the shares in use once ``placements`` start."""
    if not short.any_packable():
        return {}
    leads = [p for p in placements if (d := pending.get(p.job_id)) is not None and not d.gpu
             and not d.gpu_memory and (head is None or p.node_id == head)]
    if not leads:
        return {}
    stages = store.job_stages([p.job_id for p in leads])
    # No more than an even split of the class's backlog over the slots in use,
    # so the last packs do not leave most slots idle while a few finish.
    sizes = [(p.job_id, min(short.pack_size(stages[p.job_id], pending.demands[p.job_id].time_limit),
                            -(-len(pending.index.peers(p.job_id) or ()) // slots)))
             for p in leads if p.job_id in stages]
    if all(size < 2 for _, size in sizes):
        return {}
    candidates = pick_followers(sizes, pending.index.peers, {p.job_id for p in placements})
    stages.update(store.job_stages([f for followers in candidates.values() for f in followers]))
    packs = {}
    for lead, followers in candidates.items():
        same = [f for f in followers if stages.get(f) == stages[lead]]
        if same:
            packs[lead] = same
    return packs
