"""Putting work in: submit a spec, wait for an experiment, cancel jobs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from scheduler import wakeup
from scheduler.errors import PermissionDenied, SpecError, UnknownIdError, UserError
from scheduler.identity import current_user
from scheduler.records import Job, is_id
from scheduler.store import Store

if TYPE_CHECKING:  # pydantic costs ~100 ms to import: only the verbs that read settings pay it
    from scheduler.config import Settings


@dataclass
class Submitted:
    experiment_id: int
    experiment: str
    job_ids: list[int]
    stages: dict[str, int]  # stage -> job count

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Submitted:
        return cls(int(data["experiment_id"]), data["experiment"], [int(i) for i in data["job_ids"]],
                   {str(k): int(v) for k, v in data["stages"].items()})


def open_store(settings: Settings | None = None) -> Store:
    from scheduler.config import load_settings

    return Store((settings or load_settings()).home_path)


def submit(spec_path: str | Path, overrides: list[str] = (), settings: Settings | None = None,
           user: str | None = None, shown_as: str | None = None, shown_dir: str | None = None) -> Submitted:
    """Validate, expand the sweeps, snapshot the code and store every job in one
    transaction.  Raises SpecError (nothing written) on bad input.

    ``shown_as`` and ``shown_dir``: the spec's path and its directory's as its
    user knows them, when ``spec_path`` is a copy (`labq server` unpacks an
    upload): errors name them and the experiment records the path."""
    if shown_as is None:
        return _submit(spec_path, overrides, settings, user, str(Path(spec_path).resolve()))
    copy_dir = str(Path(spec_path).resolve().parent)
    shown_dir = shown_dir or str(Path(shown_as).parent)

    def shown(text: str) -> str:
        return text.replace(str(spec_path), shown_as).replace(copy_dir, shown_dir)

    try:
        return _submit(spec_path, overrides, settings, user, shown_as)
    except SpecError as exc:
        raise SpecError(shown_as, [(shown(key), shown(msg)) for key, msg in exc.problems]) from None
    except UserError as exc:
        raise UserError(shown(str(exc))) from None


def _submit(spec_path: str | Path, overrides: list[str], settings: Settings | None, user: str | None,
            recorded_path: str) -> Submitted:
    from scheduler.packaging import snapshot
    from scheduler.spec import load_spec, stage_runtimes
    from scheduler.sweep import plan_jobs, searches_of

    from scheduler.config import load_settings

    settings = settings or load_settings()
    source = str(spec_path)
    spec, raw = load_spec(spec_path, overrides)
    if spec.queue not in settings.queue_names():
        raise SpecError(source, [("queue", f"no queue {spec.queue!r}; declared queues: {', '.join(settings.queue_names())}")])
    drafts = plan_jobs(spec, source)
    home = settings.home_path
    store = Store(home)  # first: it refuses a state directory that is not this account's own
    try:
        package = snapshot(Path(spec_path).resolve().parent, home, source)
        experiment_id, ids = store.submit(
            name=spec.experiment, user=user or current_user(), queue=spec.queue, priority=spec.priority,
            spec_path=recorded_path, spec=raw, package=str(package), metric=spec.metric,
            mode=spec.mode, drafts=drafts, stages={s.name: s for s in spec.stages}, now=time.time(),
            runtimes=stage_runtimes(spec, Path(spec_path).resolve().parent), searches=searches_of(spec))
    finally:
        store.close()
    wakeup.notify(home)
    counts: dict[str, int] = {}
    for d in drafts:
        counts[d.stage] = counts.get(d.stage, 0) + 1
    return Submitted(experiment_id=experiment_id, experiment=spec.experiment, job_ids=ids, stages=counts)


def check_before_start(home: str | Path) -> bool:
    """Before a submit that will start a scheduler: read the whole queue
    database, so that a damaged one refuses the submit (StoreError), not the
    start.  True when it was read (the scheduler started next need not read it
    all again); False when there is none yet or a scheduler already runs."""
    from scheduler import daemon

    home = Path(home)
    if not (home / "labq.db").exists() or daemon.is_running(home):
        return False
    store = Store(home)
    try:
        store.check_intact()
    finally:
        store.close()
    return True


def wait(store: Store, experiment_id: int, on_update: Callable[[list[Job]], None] | None = None,
         poll: float = 0.5, timeout: float | None = None) -> list[Job]:
    """Block until every job of the experiment is terminal, and its searches
    have asked for all their trials; returns the jobs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        jobs = store.jobs_of_experiment(experiment_id)
        if on_update:
            on_update(jobs)
        if all(j.state.is_terminal() for j in jobs) and not store.open_searches(experiment_id):
            return jobs
        if deadline is not None and time.monotonic() > deadline:
            return jobs
        time.sleep(poll)


def cancel(store: Store, ids: list[str], experiment: str | None, settings: Settings,
           user: str | None = None) -> dict[str, list[int]]:
    """Cancel jobs by id and/or experiment name.  Only the owner of a job or an
    admin (``metadata.labq.admins``) may cancel it; a refused request cancels
    nothing."""
    user = user or current_user()
    job_ids = resolve_jobs(store, ids, experiment)
    if user not in settings.admins:
        foreign = [j for j in store.jobs_by_ids(job_ids) if j.user != user]
        if foreign:
            owners = ", ".join(sorted({j.user for j in foreign}))
            raise PermissionDenied(
                f"{len(foreign)} of these jobs belong to {owners} (e.g. job {foreign[0].id}); you ({user}) may cancel "
                "only your own jobs unless listed in cluster.yaml metadata.labq.admins")
    if experiment:  # a cancelled experiment's searches ask for no more trials
        for experiment_id in store.experiment_names(experiment):
            store.extend_search(experiment_id, -1)
    done = store.cancel(job_ids, time.time())
    wakeup.notify(settings.home_path)
    return done


def extend_search(store: Store, experiment: str, samples: int, settings: Settings,
                  user: str | None = None) -> dict[str, Any]:
    """Let the searches of ``experiment`` (its latest run by that name) ask for
    ``samples`` more trials each; the owner or an admin only."""
    user = user or current_user()
    exp = store.experiment(experiment)
    if not store.searches(exp.id):
        raise UserError(f"experiment {exp.name} has no search to extend (a stage with sweep.search)")
    if exp.user != user and user not in settings.admins:
        raise PermissionDenied(f"experiment {exp.name} belongs to {exp.user}; you ({user}) may extend only your own")
    stages = store.extend_search(exp.id, samples)
    wakeup.notify(settings.home_path)
    return {"experiment": exp.name, "experiment_id": exp.id, "stages": stages, "more": samples}


def resolve_jobs(store: Store, ids: list[str], experiment: str | None) -> list[int]:
    """Job ids from the CLI's arguments (numbers) and/or --experiment NAME."""
    job_ids: list[int] = []
    for ref in ids:
        if not is_id(ref):
            raise UnknownIdError(f"{ref!r} is not a job id (a number); use --experiment NAME for an experiment")
        store.job(int(ref))  # raises for an unknown id
        job_ids.append(int(ref))
    if experiment:
        experiment_ids = store.experiment_names(experiment)
        if not experiment_ids:
            store.experiment(experiment)  # raises with the recent names as a hint
        job_ids += store.active_job_ids_of(experiment_ids)
    return job_ids
