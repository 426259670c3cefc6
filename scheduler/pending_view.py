"""The pending queue as the loop keeps it: one demand per pending job, kept
current from the events table instead of re-reading (and re-decoding) every
pending job each pass, and why each one waits as last written."""

from __future__ import annotations

from scheduler import policy
from scheduler.store import Store

# Changed jobs are re-read in chunks, so one query never names 100k ids.
_CHUNK = 5000


class PendingView:
    def __init__(self) -> None:
        self.demands: dict[int, policy.Demand] = {}
        self.index = policy.PendingIndex()  # the same demands, grouped as decide wants them
        self._events_seen: int | None = None
        self._reasons: dict[int, str] = {}  # job id -> why it waits, as the store has it

    def __len__(self) -> int:
        return len(self.demands)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.demands

    def get(self, job_id: int) -> policy.Demand | None:
        return self.demands.get(job_id)

    def sync(self, store: Store) -> None:
        """Bring the view up to date: everything on the first pass, then only
        the jobs whose state changed since the last event seen."""
        if self._events_seen is None:
            self._events_seen = store.last_event_id()
            waiting = store.waiting()
            self.demands = {w.id: policy.demand_of(w) for w in waiting}
            self.index = policy.PendingIndex(self.demands.values())
            # What the store already says: a restart rewrites only reasons that changed.
            self._reasons = {w.id: w.reason for w in waiting if w.reason}
            return
        self._events_seen, changed = store.jobs_changed_since(self._events_seen)
        for start in range(0, len(changed), _CHUNK):
            chunk = changed[start:start + _CHUNK]
            for job_id in chunk:
                if self.demands.pop(job_id, None) is not None:
                    self.index.remove(job_id)
            for w in store.waiting(chunk):
                self.demands[w.id] = demand = policy.demand_of(w)
                self.index.add(demand)
                if w.reason:
                    self._reasons[w.id] = w.reason
        for job_id in changed:
            if job_id not in self.demands:
                self._reasons.pop(job_id, None)

    def changed_reasons(self, waiting: dict[int, str], started: set[int] = frozenset()) -> dict[int, str]:
        """The reasons in ``waiting`` that differ from what the store has (for
        jobs not ``started``); :meth:`remember` them once written."""
        return {j: r for j, r in waiting.items() if self._reasons.get(j) != r and j not in started}

    def remember(self, reasons: dict[int, str]) -> None:
        self._reasons.update(reasons)

    def forget(self, job_ids) -> None:
        for job_id in job_ids:
            self._reasons.pop(job_id, None)
