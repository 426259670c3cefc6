"""Turning the policy's placements into running attempts: the typed task each
worker is given (contract.attempt.AttemptTask), launched through the backend,
one attempt alone or several short ones packed in one task."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from contract.attempt import AttemptTask, Input, Share
from scheduler import early_stop, policy
from scheduler.attempt_table import Pack, Running
from scheduler.backend import Backend
from scheduler.config import Settings
from scheduler.records import Attempt, AttemptEnd, EndCause, Job
from scheduler.states import AttemptState
from scheduler.store import Store

log = logging.getLogger("labq.loop")


class Launcher:
    def __init__(self, store: Store, backend: Backend, settings: Settings, *,
                 collect_node: Callable[[], str | None], has_nvml: Callable[[str | None], bool]):
        self._store = store
        self._backend = backend
        self._settings = settings
        self._collect_node = collect_node  # the head's node id when run dirs are carried back to it
        self._has_nvml = has_nvml

    def task_for(self, attempt: Attempt, job: Job, placement: policy.Placement) -> tuple[AttemptTask, list[str] | None]:
        """What the worker is given for one attempt, and the Python packages
        its stage asks for (env.pip)."""
        extra = self._store.launch_context(job.id)
        runtime: dict[str, Any] = extra["runtime"]
        head = self._collect_node()
        remote = bool(head and placement.node_id and placement.node_id != head)
        home = self._settings.home_path
        inputs = tuple(Input(job_id=up["job_id"], stage=up["stage"], params=up["params"], run_dir=up["run_dir"],
                             metrics=up["metrics"],
                             # The node cannot read the head's disk: send the artifacts along.
                             bundle=self._backend.artifacts_bundle(up["run_dir"]) if remote else None)
                       for up in extra["inputs"])
        task = AttemptTask(
            job_id=job.id, attempt=attempt.number, experiment=job.experiment, stage=job.stage, params=job.params,
            run_dir=attempt.run_dir, target_kind=job.target_kind, target=job.target,
            # gpu_memory turned into a share of the chosen card
            resources=Share(cpu=job.cpu, gpu=placement.gpu_share or job.gpu, memory=job.memory, custom=job.custom,
                            gpu_memory=job.gpu_memory),
            inputs=inputs, previous_run_dir=extra["previous_run_dir"],
            code_dir=None if extra["package"] else str(Path(extra["spec_path"]).parent),
            package=extra["package"], code_root=str(home / "code"), cache_dir=str(home / "cache"),
            collect_to_node=head, metrics_from=runtime.get("metrics_from"),
            env_vars=(runtime.get("env") or {}).get("vars") or {}, outputs_limit=self._settings.outputs_limit,
            rungs=tuple(early_stop.Rule.from_config(runtime["early_stop"]).all_rungs())
            if runtime.get("early_stop") else (),
            rung_metric=(runtime.get("early_stop") or {}).get("metric"))
        return task, (runtime.get("env") or {}).get("pip")

    def launch(self, attempt: Attempt, job: Job, placement: policy.Placement, now: float) -> Running | None:
        """Launch one attempt; None when the backend would not take it (its end is recorded)."""
        task, pip = self.task_for(attempt, job, placement)
        try:
            # A worker that has used CUDA keeps its first device: real GPUs get a fresh
            # worker per job. Logical GPUs (NVML read nothing there) have no CUDA to keep.
            fresh = task.resources.gpu > 0 and self._has_nvml(placement.node_id)
            handle = self._backend.launch(task, node_id=placement.node_id, pip=pip, fresh_worker=fresh,
                                          gpu_indices=placement.gpu_indices)
        except Exception as exc:  # bad runtime env, Ray gone mid-pass: the attempt failed to start
            log.exception("launching job %s failed", job.id)
            self._store.finish_attempt(AttemptEnd(attempt.id, AttemptState.LOST, EndCause.LAUNCH_FAILED,
                                                  error=f"could not launch on Ray: {exc}"), now)
            return None
        return Running(attempt=attempt, job=job, handle=handle, gpu_indices=placement.gpu_indices)

    def launch_pack(self, attempts: list[Attempt], jobs: dict[int, Job], placement: policy.Placement,
                    now: float) -> list[Running] | None:
        """One task for several short jobs of one stage, with the first one's
        share (they all have the same): they run one after another in it."""
        tasks, pip = [], None
        for attempt in attempts:
            task, pip = self.task_for(attempt, jobs[attempt.job_id], placement)
            tasks.append(task)
        try:
            handle = self._backend.launch_pack(tasks, node_id=placement.node_id, pip=pip)
        except Exception as exc:
            log.exception("launching a pack of %d jobs (job %s first) failed", len(attempts), attempts[0].job_id)
            # As if the first had been launched alone; the rest never started: not charged.
            error = f"could not launch on Ray: {exc}"
            self._store.finish_attempts(
                [AttemptEnd(a.id, AttemptState.LOST, EndCause.LAUNCH_FAILED if i == 0 else EndCause.NOT_STARTED,
                            error=error, slot_from=now) for i, a in enumerate(attempts)], now)
            return None
        pack = Pack(handle, tuple(a.id for a in attempts))
        log.debug("job %s: packed with %d more short jobs of its stage", attempts[0].job_id, len(attempts) - 1)
        return [Running(attempt=a, job=jobs[a.job_id], handle=handle, pack=pack) for a in attempts]
