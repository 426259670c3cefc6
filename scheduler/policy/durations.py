"""How long a job will run, predicted from past runs of similar jobs, and the
order that prediction gives pending jobs.  The policy never reads a job's true
duration: the live loop feeds this book from the store's finished attempts and
the simulator from the jobs its replay has seen end, as they end.

Similar, most specific first (the first key with enough runs answers):

1. the same experiment and stage (``Demand.group``) by the same user, same shape;
2. the same experiment and stage;
3. the same user and shape;
4. the same user;
5. everything seen.

The prediction is the median of the latest ``RECENT`` runs of that key (robust
to the heavy tail: one day-long outlier does not make a 5-minute stage look
long), never more than the job's time limit.

Ordering: a job's *due time* is its submission time plus ``stretch`` times its
predicted duration, at most ``MAX_YIELD`` (a week), and jobs are taken in
due-time order (after priority).  A short job therefore passes a long one
submitted before it (shortest predicted first), but only for a while: once a job
has waited ``stretch`` times its predicted duration, or a week, no job submitted
later can pass it (aging with a bound, so nothing starves).  ``stretch`` 0 is
submission order; a large one is shortest-predicted-first.  A due time is fixed
at submission, so the order does not churn from one decision to the next.
The default, 100, was measured (bench/bench_jct.py, the openb trace on 16 GPUs:
average JCT 17.6 h at 0, 16.1 h at 4, 14.9 h at 16, 11.8 h at 100; greedy
backfill 17.5 h; a cap of a day instead of a week gave back most of the gain).

Reservations from predictions (``reserve_after``, off by default): a job past
its due time that has waited ``reserve_after`` seconds and cannot fit gets a
reservation from the predicted ends of the running jobs
(:mod:`scheduler.policy.backfill`), so that a multi-GPU job is not passed by
small ones forever.  Off by default because measured it cost more than it gave:
on the openb trace (bench/bench_jct.py) predictions from a single user's
heavy-tailed runs reserved nodes long before they freed, and average JCT rose
1.6x at 24 GPUs and 5x at 16.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Iterable

from scheduler.policy.records import Demand, RunningJob
from scheduler.policy.tiers import pending_elapsed, running_elapsed

RECENT = 50  # runs per key the median is taken over
MIN_RUNS = 3  # runs a specific key needs before it answers (else a broader key does)
DEFAULT_STRETCH = 100.0
MAX_YIELD = 7 * 86400.0  # the longest a job yields to shorter ones submitted after it
_LEVELS = ("experiment stage, user and shape", "experiment stage", "user and shape", "user", "all jobs")


def _keys(user: str, shape: tuple, group: str) -> tuple[tuple, ...]:
    """The keys a job's runs are filed under, most specific first (no group: not 1 and 2)."""
    return (("g+u", group, user, shape) if group else None, ("g", group) if group else None,
            ("u+s", user, shape), ("u", user), ("all",))


def _median(ordered: list[float]) -> float:
    """The median of a sorted, non-empty list."""
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


class _Runs:
    """The latest ``RECENT`` durations of one key, kept sorted for the median."""

    __slots__ = ("latest", "ordered")

    def __init__(self) -> None:
        self.latest: deque[float] = deque()
        self.ordered: list[float] = []

    def add(self, seconds: float) -> None:
        self.latest.append(seconds)
        bisect.insort(self.ordered, seconds)
        if len(self.latest) > RECENT:
            del self.ordered[bisect.bisect_left(self.ordered, self.latest.popleft())]

    def median(self) -> float:
        return _median(self.ordered)

    def residual(self, elapsed: float) -> float:
        """How much longer a run that has lasted ``elapsed`` goes on: the median
        of what the runs that lasted longer had left; ``elapsed`` again when
        fewer than ``MIN_RUNS`` lasted longer (past what is known, a
        heavy-tailed run is expected to last about as long again)."""
        if elapsed <= 0:
            return self.median()
        longer = self.ordered[bisect.bisect_right(self.ordered, elapsed):]
        if len(longer) < MIN_RUNS:
            return elapsed
        return _median(longer) - elapsed


class DurationBook:
    """Past run times by key, and predictions from them.  Pure: the caller says
    what ran (:meth:`add`); nothing here reads a clock or a database."""

    def __init__(self, stretch: float = DEFAULT_STRETCH, reserve_after: float | None = None):
        if not stretch >= 0:
            raise ValueError("stretch must be 0 or more")
        if reserve_after is not None and not reserve_after >= 0:
            raise ValueError("reserve_after must be 0 or more")
        self.stretch = float(stretch)
        self.reserve_after = reserve_after
        self._runs: dict[tuple, _Runs] = {}
        self._memo: dict[tuple, tuple[float, str, _Runs] | None] = {}

    @classmethod
    def of(cls, runs: Iterable[tuple[str, tuple, str, float]], stretch: float = DEFAULT_STRETCH,
           reserve_after: float | None = None) -> "DurationBook":
        """A book from (user, shape, group, seconds) runs, oldest first."""
        book = cls(stretch, reserve_after)
        for user, shape, group, seconds in runs:
            book.add(user, shape, group, seconds)
        return book

    def add(self, user: str, shape: tuple, group: str, seconds: float) -> None:
        """A job like this ran ``seconds`` (to its end: success, failure or limit)."""
        for key in _keys(user, shape, group):
            if key is not None:
                self._runs.setdefault(key, _Runs()).add(max(0.0, float(seconds)))
        self._memo.clear()

    def __len__(self) -> int:
        runs = self._runs.get(("all",))
        return len(runs.latest) if runs else 0

    def _lookup(self, user: str, shape: tuple, group: str) -> tuple[float, str, _Runs] | None:
        memo_key = (user, shape, group)
        if memo_key in self._memo:
            return self._memo[memo_key]
        found = None
        keys = _keys(user, shape, group)
        for level, key in enumerate(keys):
            runs = self._runs.get(key) if key is not None else None
            if runs is not None and (len(runs.latest) >= MIN_RUNS or level == len(keys) - 1):
                found = (runs.median(), f"median of {len(runs.latest)} recent run(s) of the same {_LEVELS[level]}",
                         runs)
                break
        self._memo[memo_key] = found
        return found

    def remaining(self, user: str, shape: tuple, group: str, elapsed: float,
                  time_limit: float | None = None) -> float | None:
        """Seconds a job like this that has run ``elapsed`` so far is expected
        to go on (its prediction when it has not run); None when nothing has
        run yet and it has no limit."""
        found = self._lookup(user, shape, group)
        if found is None:
            return None if time_limit is None else max(0.0, time_limit - elapsed)
        left = found[2].residual(elapsed)
        return min(left, max(0.0, time_limit - elapsed)) if time_limit else left

    def left_of(self, job: RunningJob, now: float) -> float | None:
        """Seconds running ``job`` is expected to go on at ``now`` (what
        ``preempt_longer`` compares, and `labq queue` shows)."""
        return self.remaining(job.user, job.shape, job.group, running_elapsed(job, now), job.time_limit)

    def predict(self, d: Demand) -> float | None:
        """Seconds ``d`` is expected to run; None when nothing has run yet."""
        found = self._lookup(d.user, d.shape(), d.group)
        if found is None:
            return d.time_limit
        return min(found[0], d.time_limit) if d.time_limit else found[0]

    def basis(self, d: Demand) -> str:
        """Where :meth:`predict`'s answer comes from, in words."""
        found = self._lookup(d.user, d.shape(), d.group)
        if found is None:
            return "its time limit" if d.time_limit else "no runs yet"
        if d.time_limit and d.time_limit < found[0]:
            return "its time limit"
        return found[1]

    def due_at(self, d: Demand) -> float:
        """When ``d`` stops yielding to shorter jobs submitted after it: by its
        predicted duration, or for a job requeued after running a while, by
        what it is expected to have left."""
        if d.attained > 0:
            predicted = self.remaining(d.user, d.shape(), d.group, pending_elapsed(d), d.time_limit)
        else:
            predicted = self.predict(d)
        return d.submitted_at + min(self.stretch * (predicted or 0.0), MAX_YIELD)

    def owed_reservation(self, d: Demand, now: float) -> bool:
        """Whether ``d``, blocked, is owed a reservation from predicted ends."""
        return (self.reserve_after is not None and now - d.submitted_at >= self.reserve_after
                and self.due_at(d) <= now)
