"""Pending jobs grouped into classes of interchangeable jobs, and running jobs
with what each queue and user holds: kept up to date between decisions."""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator

from scheduler.policy.records import Demand, RunningJob
from scheduler.policy.usage import add_held


class PendingIndex:
    """Pending demands grouped into classes of interchangeable jobs (same queue,
    user, priority, shape and time limit), each class in submission order.  The
    live loop passes a list and decide builds one; the simulator keeps one and
    updates it, so a pass never touches the jobs behind a class that cannot run.
    The group (experiment and stage) and the service attained before are part
    of a class too: a job's place in line depends on them (policy.durations,
    policy.tiers)."""

    def __init__(self, demands: Iterable[Demand] = ()):
        self._classes: dict[tuple, list[tuple[int, int, Demand]]] = {}
        self._class_of: dict[int, tuple] = {}
        for d in demands:
            key = self.class_key(d)
            self._classes.setdefault(key, []).append((d.seq, d.job_id, d))
            self._class_of[d.job_id] = key
        for jobs in self._classes.values():
            jobs.sort(key=lambda e: (e[0], e[1]))

    @staticmethod
    def class_key(d: Demand) -> tuple:
        return (d.queue, d.user, d.priority, d.shape(), d.time_limit, d.group, d.attained, d.preemptions)

    def add(self, d: Demand) -> None:
        key = self.class_key(d)
        jobs = self._classes.setdefault(key, [])
        entry = (d.seq, d.job_id, d)
        if not jobs or (d.seq, d.job_id) > jobs[-1][:2]:
            jobs.append(entry)
        else:
            bisect.insort(jobs, entry, key=lambda e: (e[0], e[1]))
        self._class_of[d.job_id] = key

    def remove(self, job_id: int) -> Demand | None:
        key = self._class_of.pop(job_id, None)
        if key is None:
            return None
        jobs = self._classes[key]
        at = next(i for i, e in enumerate(jobs) if e[1] == job_id)  # placed jobs are at the front
        demand = jobs.pop(at)[2]
        if not jobs:
            del self._classes[key]
        return demand

    def peers(self, job_id: int) -> list[tuple[int, int, Demand]] | None:
        """The class of ``job_id`` (it included) in submission order: the index's
        own list, not a copy (scheduler.packing draws a pack's followers from it)."""
        key = self._class_of.get(job_id)
        return None if key is None else self._classes[key]

    def classes(self) -> Iterable[tuple[tuple, list[tuple[int, int, Demand]]]]:
        """(queue, user, priority, shape, time_limit, group, attained, preemptions), and its jobs in
        submission order."""
        return self._classes.items()

    def shape_counts(self) -> dict[tuple, int]:
        """How many pending jobs of each shape (the queue's half of a ShapeMix)."""
        counts: dict[tuple, int] = {}
        for (_queue, _user, _priority, shape, *_), jobs in self._classes.items():
            counts[shape] = counts.get(shape, 0) + len(jobs)
        return counts

    def __len__(self) -> int:
        return len(self._class_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._class_of

    def __iter__(self) -> Iterator[Demand]:
        for jobs in self._classes.values():
            for entry in jobs:
                yield entry[2]


class RunningIndex:
    """Running jobs with what each queue and (queue, user) holds, kept up to date
    as jobs start and stop, so a decision need not add them all up again."""

    def __init__(self, jobs: Iterable[RunningJob] = ()):
        self._jobs: dict[int, RunningJob] = {}
        self.held: dict = {}  # queue and (queue, user) -> [cpu, gpu, memory]
        for job in jobs:
            self.add(job)

    def add(self, job: RunningJob) -> None:
        self._jobs[job.job_id] = job
        add_held(self.held, job, 1)

    def remove(self, job_id: int) -> RunningJob:
        job = self._jobs.pop(job_id)
        add_held(self.held, job, -1)
        return job

    def get(self, job_id: int) -> RunningJob | None:
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[RunningJob]:
        return iter(self._jobs.values())

