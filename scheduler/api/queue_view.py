"""Reading the queue: the active jobs with when each is estimated to start, and
one job or one experiment in detail."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from scheduler.errors import one_line
from scheduler.records import Job, Outlook, is_id
from scheduler.states import JobState
from scheduler.store import Store

# The running scheduler's estimates (written every loop.ESTIMATE_SECONDS) are
# used while younger than this; otherwise they are worked out here from the store.
ESTIMATES_FRESH_SECONDS = 60.0


@dataclass(frozen=True)
class EstimateSettings:
    """What a start estimate replays the queue with: the usage half-life and the
    queues (settings.queue_configs()); None: the default queue alone, built only
    when an estimate is worked out (the policy's import is not free)."""

    half_life: float
    queues: Sequence[Any] | None = None  # policy.QueueConfig
    stretch: float = 100.0  # settings.scheduler.stretch (policy.durations)

    def queue_configs(self) -> list[Any]:
        if self.queues is not None:
            return list(self.queues)
        from scheduler import DEFAULT_QUEUE
        from scheduler.policy import QueueConfig

        return [QueueConfig(name=DEFAULT_QUEUE)]


@dataclass(frozen=True)
class Starts:
    """{pending job id: estimated start (epoch seconds), or None}, and why there
    are none when working them out failed; with each active job's outlook
    (predicted duration, tier, a running job's time left) where the scheduler has one."""

    at: dict[int, float | None] = field(default_factory=dict)
    warning: str | None = None
    outlook: dict[int, Outlook] = field(default_factory=dict)


def start_estimates(store: Store, now: float, job_ids: list[int], settings: EstimateSettings,
                    active: list[int] = ()) -> Starts:
    """The scheduler's own estimates for the pending ``job_ids`` and outlooks for
    them and the ``active`` ones while fresh, else worked out here from the store
    (scheduler.estimate); a failure costs the estimates, never the listing."""
    wanted = list(dict.fromkeys([*job_ids, *active]))
    if not wanted:
        return Starts()
    at, starts = store.estimates(job_ids)
    if at is not None and now - at < ESTIMATES_FRESH_SECONDS:
        return Starts({job_id: None if start is None else round(start, 1) for job_id, start in starts.items()},
                      outlook=_aged(store.outlooks(wanted), now - at))
    if not job_ids:
        return Starts()
    from scheduler import estimate

    try:
        starts, outlooks = estimate.from_store(store, now, half_life=settings.half_life,
                                               queues=settings.queue_configs(), stretch=settings.stretch)
    except Exception as exc:  # an estimate is a nicety: say why it is missing, list the queue anyway
        return Starts(warning=f"no start estimates: {one_line(str(exc)) or type(exc).__name__}")
    return Starts({job_id: None if at is None else round(at, 1) for job_id, at in starts.items()},
                  outlook={j: o for j, o in outlooks.items() if j in set(wanted)})


def _aged(outlooks: dict[int, Outlook], seconds: float) -> dict[int, Outlook]:
    """Outlooks written ``seconds`` ago, as of now: a running job has that much less left."""
    return {j: o if o.remaining is None else replace(o, remaining=max(0.0, o.remaining - max(0.0, seconds)))
            for j, o in outlooks.items()}


_OUTLOOK_FIELDS = {"predicted_duration": "predicted", "predicted_from": "basis", "tier": "tier", "tiers": "tiers",
                   "expected_left": "remaining"}


def _with_starts(jobs: list[Job], starts: Starts) -> list[dict[str, Any]]:
    rows = []
    for j in jobs:
        row = {**j.to_json(), "estimated_start": starts.at.get(j.id)}
        outlook = starts.outlook.get(j.id)
        if outlook is not None:
            row.update({key: getattr(outlook, f) for key, f in _OUTLOOK_FIELDS.items()})
        rows.append(row)
    return rows


def _jobs_and_starts(rows: list[dict[str, Any]], warning: str | None) -> tuple[list[Job], Starts]:
    """The inverse of :func:`_with_starts`."""
    jobs = [Job.from_json(r) for r in rows]
    # A server older than expected_left sends the rest without it.
    outlook = {r["id"]: Outlook(**{f: r[key] for key, f in _OUTLOOK_FIELDS.items() if key in r})
               for r in rows if "predicted_from" in r}
    return jobs, Starts({r["id"]: r.get("estimated_start") for r in rows if r["state"] == "pending"}, warning,
                        outlook)


@dataclass(frozen=True)
class QueueView:
    """The active jobs (running first) with their estimated starts; with the
    summary, how many are active in all and whether a scheduler is there to
    place them."""

    jobs: list[Job]
    starts: Starts
    now: float
    total: int | None = None  # active jobs in all (None: not counted)
    scheduler: Any = None  # daemon.Status, with the summary

    @property
    def unplaced(self) -> str:
        """Why no job is being placed right now, or ""."""
        if self.scheduler is None:
            return ""
        if not self.scheduler.running:
            return "no scheduler running"
        return "scheduler starting (connecting to Ray)" if self.scheduler.ray != "up" else ""

    def to_json(self) -> list[dict[str, Any]]:
        return _with_starts(self.jobs, self.starts)

    def to_wire(self) -> dict[str, Any]:
        """All of it, for `labq server`'s clients (to_json is what --json prints)."""
        return {"now": self.now, "total": self.total, "unplaced": self.unplaced,
                "scheduler": self.scheduler.to_json() if self.scheduler is not None else None,
                "warning": self.starts.warning, "jobs": self.to_json()}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> QueueView:
        from scheduler.daemon import DaemonStatus

        jobs, starts = _jobs_and_starts(data["jobs"], data.get("warning"))
        status = data.get("scheduler")
        return cls(jobs, starts, data["now"], data.get("total"),
                   DaemonStatus.from_json(status) if status is not None else None)


def queue(store: Store, estimates: EstimateSettings, *, limit: int | None = None, now: float | None = None,
          summary: bool = True, offset: int = 0) -> QueueView:
    """Running, pending and blocked jobs (the first ``limit``), and when each
    pending one is estimated to start; ``summary`` adds the count of all active
    jobs and the scheduler's status (what a table shows under the rows)."""
    now = time.time() if now is None else now
    jobs = store.active_jobs(limit=limit, offset=offset)
    pending = [j.id for j in jobs if j.state.value == "pending"]
    starts = start_estimates(store, now, pending, estimates, active=[j.id for j in jobs])
    if not summary:
        return QueueView(jobs, starts, now)
    from scheduler import daemon

    return QueueView(jobs, starts, now, store.count_active(), daemon.status(store.home))


@dataclass(frozen=True)
class JobStatus:
    """One job: its attempts, events, right-sizing advice and estimated start."""

    job: Job
    attempts: list[Any]
    events: list[Any]
    starts: Starts
    now: float

    @property
    def estimated_start(self) -> float | None:
        return self.starts.at.get(self.job.id)

    @property
    def advice(self) -> list[str]:
        """What the last finished attempt used against what the job asked for."""
        from scheduler.api.ranking import advice_for

        finished = [a for a in self.attempts if a.ended_at]
        return advice_for(self.job, finished[-1]) if finished else []

    def to_json(self) -> dict[str, Any]:
        return {**self.job.to_json(), "estimated_start": self.estimated_start,
                "attempts_detail": [a.to_json() for a in self.attempts],
                "events": [e.to_json() for e in self.events]}

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "job", "job": self.job.to_json(), "attempts": [a.to_json() for a in self.attempts],
                "events": [e.to_json() for e in self.events], "estimated_start": self.estimated_start,
                "warning": self.starts.warning, "advice": self.advice, "now": self.now}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> JobStatus:
        from scheduler.records import Attempt, Event

        job = Job.from_json(data["job"])
        start = data.get("estimated_start")
        return cls(job, [Attempt.from_json(a) for a in data["attempts"]], [Event.from_json(e) for e in data["events"]],
                   Starts({job.id: start} if job.state.value == "pending" else {}, data.get("warning")), data["now"])


@dataclass(frozen=True)
class ExperimentStatus:
    """One experiment: its jobs, how many are in each state, their estimated starts."""

    experiment: Any  # records.Experiment
    jobs: list[Job]
    counts: dict[str, int]
    starts: Starts
    now: float
    # Its model-based searches: {stage, algo, asked, samples, parallel, budget:
    # {kind, spent, limit} or None} (scheduler.search).
    searches: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.experiment.to_json(), "counts": self.counts, "jobs": _with_starts(self.jobs, self.starts),
                **({"searches": self.searches} if self.searches else {})}

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "experiment", "experiment": self.experiment.to_json(), "counts": self.counts,
                "jobs": _with_starts(self.jobs, self.starts), "warning": self.starts.warning, "now": self.now,
                "searches": self.searches}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ExperimentStatus:
        from scheduler.records import Experiment

        jobs, starts = _jobs_and_starts(data["jobs"], data.get("warning"))
        return cls(Experiment.from_json(data["experiment"]), jobs, data["counts"], starts, data["now"],
                   data.get("searches") or [])


def status_from_wire(data: dict[str, Any]) -> JobStatus | ExperimentStatus:
    return (JobStatus if data["kind"] == "job" else ExperimentStatus).from_wire(data)


def status(store: Store, ref: str, estimates: EstimateSettings,
           now: float | None = None) -> JobStatus | ExperimentStatus:
    """A job by id, or an experiment by name (UnknownIdError if neither)."""
    now = time.time() if now is None else now
    if is_id(ref):
        job = store.job(int(ref))
        attempts, events = store.attempts(job.id), store.events(job.id)
        starts = start_estimates(store, now, [job.id] if job.state.value == "pending" else [], estimates,
                                 active=[job.id] if not job.state.is_terminal() else [])
        return JobStatus(job, attempts, events, starts, now)
    exp = store.experiment(ref)
    jobs = store.jobs_of_experiment(exp.id)
    counts = active_state_counts(jobs)
    pending = [j.id for j in jobs if j.state.value == "pending"] if counts.get("pending") else []
    active = [j.id for j in jobs if not j.state.is_terminal()]
    return ExperimentStatus(exp, jobs, counts, start_estimates(store, now, pending, estimates, active), now,
                            _searches(store, exp.id, now))


def _searches(store: Store, experiment_id: int, now: float) -> list[dict[str, Any]]:
    """Where each of an experiment's searches stands, its budget spent and left."""
    out = []
    for stage, config, asked in store.searches(experiment_id):
        budget = None
        if config.get("budget"):
            from scheduler.search import budget_left

            kind, spent, limit = budget_left(config, store.search_spent(experiment_id, stage, now))
            budget = {"kind": kind, "spent": round(spent, 6), "limit": limit}
        out.append({"stage": stage, "algo": config["algo"], "asked": asked, "samples": config["samples"],
                    "parallel": config["parallel"], "budget": budget})
    return out


def experiment_page(store: Store, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """The newest experiments (``limit`` after ``offset``) with their job counts
    by state, and how many there are in all."""
    total, rows = store.experiment_page(limit, offset)
    return {"total": total, "experiments": rows}


def active_state_counts(jobs: list[Job]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    return counts


def succeeded_all(jobs: list[Job]) -> bool:
    return all(j.state is JobState.SUCCEEDED for j in jobs)
