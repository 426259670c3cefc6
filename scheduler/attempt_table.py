"""The attempts this scheduler launched and still holds the backend handles of.

The table owns the handles, the stops asked of each attempt and the packs
several short jobs share, and turns what ended into typed
:class:`~scheduler.records.AttemptEnd` records.  What an attempt left on its
node (a saved result, the memory watchdog's note) it asks the backend for,
which reads it on that node; it never reads a run dir itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

from contract.attempt import AttemptTrace, WorkerResult
from scheduler.backend import Backend, Handle, TaskEnd
from scheduler.records import Attempt, AttemptEnd, EndCause, Job
from scheduler.states import AttemptState

# The attempt states a stop asks for, each with its cause.
STOP_CAUSES = {AttemptState.CANCELLED: EndCause.CANCELLED, AttemptState.TIMED_OUT: EndCause.TIMED_OUT,
               AttemptState.PREEMPTED: EndCause.PREEMPTED, AttemptState.PRUNED: EndCause.PRUNED,
               AttemptState.PAUSED: EndCause.PAUSED}
# Stops early stopping asks for: the job gets EARLY_STOP_WAIT to end at its own
# report() (jobs.StopTrial) before its task is cancelled.
EARLY_STOPS = (AttemptState.PRUNED, AttemptState.PAUSED)


@dataclass(frozen=True)
class Stop:
    """A stop this scheduler asked of an attempt: cancelled, timed out or
    preempted; ``forced`` once its worker was killed after the grace period."""

    state: AttemptState
    asked_at: float
    detail: str | None = None  # why, for the attempt's error
    forced: bool = False
    # When the task was asked to stop (a Ray cancel); None: not yet.  An early
    # stop waits EARLY_STOP_WAIT first, for the job's own report() to end it
    # cleanly (jobs.StopTrial), with its result and metrics so far.
    cancelled_at: float | None = None

    @property
    def cause(self) -> EndCause:
        return STOP_CAUSES[self.state]

    @property
    def by_user_or_policy(self) -> bool:
        """A cancel, a preemption or an early stop: asked for one job, unlike a timeout."""
        return self.state in (AttemptState.CANCELLED, AttemptState.PREEMPTED, *EARLY_STOPS)


@dataclass(frozen=True)
class Pack:
    """Several short jobs of one stage run one after another in one task
    (scheduler.packing): the first holds the pack's share, the rest nothing."""

    handle: Handle
    attempt_ids: tuple[int, ...]

    @property
    def lead(self) -> int:
        return self.attempt_ids[0]


@dataclass
class Running:
    """One attempt this scheduler launched."""

    attempt: Attempt
    job: Job
    handle: Handle
    # The policy's plan at first; Ray picks the GPU inside the node, so they are
    # replaced by what the worker reports Ray gave it (``gpus_confirmed``).
    gpu_indices: tuple[int, ...] = ()
    gpus_confirmed: bool = False
    stop: Stop | None = None
    pack: Pack | None = None

    @property
    def holds(self) -> bool:
        """Whether this attempt holds a share of its own (a pack's lead, or alone)."""
        return self.pack is None or self.pack.lead == self.attempt.id

    @property
    def share(self) -> float:
        """Its share of each GPU index it was given (a gpu_memory ask turned into a share)."""
        return self.attempt.gpu_share or self.job.gpu


@dataclass
class AttemptTable:
    backend: Backend
    _runs: dict[int, Running] = field(default_factory=dict)  # attempt id -> Running
    _by_handle: dict[Handle, list[int]] = field(default_factory=dict)  # handle -> its attempts (several for a pack)

    # ------------------------------------------------------------ contents

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Running]:
        return iter(list(self._runs.values()))

    def __contains__(self, attempt_id: object) -> bool:
        return attempt_id in self._runs

    def get(self, attempt_id: int) -> Running | None:
        return self._runs.get(attempt_id)

    def handles(self) -> list[Handle]:
        return list(self._by_handle)

    def holding(self) -> list[Running]:
        """The attempts that hold a share (not the followers of a pack)."""
        return [r for r in self._runs.values() if r.holds]

    def add(self, runs: list[Running]) -> None:
        """One task's attempts: one alone, or a pack's in order."""
        for run in runs:
            self._runs[run.attempt.id] = run
        self._by_handle[runs[0].handle] = [r.attempt.id for r in runs]

    def members(self, run: Running) -> list[Running]:
        """Every attempt ``run``'s task runs: itself, or each job of its pack."""
        return [self._runs[a] for a in self._by_handle.get(run.handle, ())] if run.pack else [run]

    def take(self, handles: Iterable[Handle]) -> list[list[Running]]:
        """Remove the tasks of ``handles`` (those that ended), each as its attempts."""
        taken = []
        for handle in handles:
            ids = self._by_handle.pop(handle, None)
            if ids is not None:
                taken.append([self._runs.pop(a) for a in ids])
        return taken

    def put_back(self, tasks: list[list[Running]]) -> None:
        """Undo :meth:`take` (their ends could not be recorded: retried next pass)."""
        for runs in tasks:
            self.add(runs)

    def clear(self) -> None:
        self._runs.clear()
        self._by_handle.clear()

    # ------------------------------------------------------------ stops

    def ask_stop(self, run: Running, state: AttemptState, now: float, detail: str | None = None) -> None:
        """Stop an attempt: its task, so for a packed job its whole pack.  The
        other jobs of a pack are sorted out when it ends (:meth:`ends`);
        preempting a pack preempts all of it."""
        members = self.members(run)
        asked = any(m.stop is not None for m in members)
        for other in members:
            if other is run or (state is AttemptState.PREEMPTED and other.stop is None):
                other.stop = Stop(state, now, detail, cancelled_at=now if asked else None)
        if not asked and state not in EARLY_STOPS:  # a pack's task once, however many are stopped
            self.cancel_task(run, now)

    def cancel_task(self, run: Running, now: float) -> None:
        """Ask the task to stop (KeyboardInterrupt in a callable, the command's end)."""
        for member in self.members(run):
            if member.stop is not None and member.stop.cancelled_at is None:
                member.stop = replace(member.stop, cancelled_at=now)
        self.backend.cancel(run.handle, force=False)

    def force_stop(self, run: Running) -> None:
        """Past the grace period: kill the task's worker, and the command process
        group of the job it was running (not of those of its pack already done)."""
        for member in self.members(run):
            if member.stop is not None:
                member.stop = replace(member.stop, forced=True)
            trace = self.backend.trace(member.attempt.node_id, member.attempt.run_dir)
            if trace.started and trace.saved is None:
                self.backend.end_process_group(member.attempt.node_id, member.attempt.run_dir)
        self.backend.cancel(run.handle, force=True)

    # ------------------------------------------------------------ ends

    def ends(self, runs: list[Running], now: float) -> list[tuple[Running, AttemptEnd]]:
        """How each attempt of one ended task ended."""
        if runs[0].pack is None:
            run = runs[0]
            return [(run, self._end_of(run, self.backend.outcome(run.handle), apply_stop=True))]
        return self._pack_ends(runs, self.backend.pack_outcomes(runs[0].handle, len(runs)), now)

    def _end_of(self, run: Running, end: TaskEnd, apply_stop: bool) -> AttemptEnd:
        """One attempt's end.  ``apply_stop``: a stop this scheduler asked for
        (cancel, timeout, preemption, early stop) explains an end that was not a
        success (not so for a packed job that ended on its own, unless early
        stopping stopped it: :meth:`_stopped_early`).  A task that ended in a Ray
        error may have left its result (written before the worker died) or the
        memory watchdog's note on its node.  A task that did not end well may
        have left its command's process tree (a shell does not pass PDEATHSIG
        on): that is ended, on its node, before any retry starts."""
        state, cause, result, error = end.state, end.cause, end.result, end.error
        if apply_stop and run.stop is not None and state is not AttemptState.SUCCEEDED:
            state, cause = run.stop.state, run.stop.cause
            if result is None:  # what the worker saved before the stop landed: its start, its metrics so far
                result = self.backend.trace(run.attempt.node_id, run.attempt.run_dir).saved
            if state is AttemptState.TIMED_OUT:
                error = f"ran longer than its timeout of {run.job.timeout:g}s"
            elif state in (AttemptState.PREEMPTED, *EARLY_STOPS):
                error = run.stop.detail
        elif result is None and state is not AttemptState.CANCELLED:
            trace = self.backend.trace(run.attempt.node_id, run.attempt.run_dir)
            if trace.saved is not None:
                result = trace.saved
            if state is AttemptState.LOST and trace.oom_note is not None:  # labq's memory watchdog ended it
                state, error = AttemptState.OUT_OF_MEMORY, trace.oom_note
                cause = EndCause.GPU_OOM if trace.oom_cause and trace.oom_cause.on_gpu else EndCause.HOST_OOM
        if result is not None and result.bundle:
            self.backend.keep_bundle(result.bundle, run.attempt.run_dir)
            result.bundle = None
        if state in (AttemptState.LOST, AttemptState.OUT_OF_MEMORY, AttemptState.CANCELLED,
                     AttemptState.TIMED_OUT, AttemptState.PREEMPTED, *EARLY_STOPS):
            self.backend.end_process_group(run.attempt.node_id, run.attempt.run_dir)
        return AttemptEnd(run.attempt.id, state, cause, result, error)

    def _pack_ends(self, runs: list[Running], ends: list[TaskEnd], now: float) -> list[tuple[Running, AttemptEnd]]:
        """Each job of an ended pack.  A pack that returned has each job's own
        result (an early-stopped job ends paused or pruned by it).  One that
        ended in a Ray error (its worker killed, a stop asked for, its node
        lost) is sorted out from what each job left on the node, in order:

        * a saved result: the job finished on its own, and that is its end
          (paused or pruned if early stopping stopped it: :meth:`_stopped_early`);
        * a run dir without one: the job that was running.  If this scheduler
          stopped the pack for another job of it, it was interrupted: requeued,
          not charged.  Otherwise it meets the error as a lone job would;
        * no run dir: it never started, and is requeued, not charged (unless it
          was itself cancelled or preempted).  If no job started and nobody
          asked for a stop (its code could not be set up, say), the first job
          meets the error as if alone, so a broken pack cannot requeue forever.

        Each follower's share is booked from its own start (``slot_from``), the
        end of the job before it, so usage counts a pack's time once."""
        stopped = any(m.stop is not None and m.stop.by_user_or_policy for m in runs)
        traces: dict[int, AttemptTrace] = {}
        if ends and ends[0].result is None:
            traces = {r.attempt.id: self.backend.trace(r.attempt.node_id, r.attempt.run_dir) for r in runs}
        nothing_ran = bool(traces) and not stopped and not any(t.started for t in traces.values())
        out: list[tuple[Running, AttemptEnd]] = []
        slot_from: float | None = None  # where the next job's share begins: the end of the one before
        for i, (run, end) in enumerate(zip(runs, ends)):
            own_slot = None if i == 0 else slot_from
            if end.result is None:
                trace = traces[run.attempt.id]
                interrupted = self._interrupted(run, trace, stopped, slot_from, now, end.error)
                if trace.saved is not None:
                    end = TaskEnd.returned(trace.saved)
                elif not (nothing_ran and i == 0) and interrupted is not None:
                    out.append((run, replace(interrupted, slot_from=now if not trace.started else own_slot)))
                    continue
                else:  # the job that was running: as a lone job would end
                    out.append((run, replace(self._end_of(run, end, apply_stop=True), slot_from=own_slot)))
                    continue
            result = end.result
            if result is not None and result.started_at:
                own_slot = None if i == 0 else result.started_at
                slot_from = result.ended_at or slot_from
            out.append((run, replace(self._end_of(run, end, apply_stop=self._stopped_early(run, result)),
                                     slot_from=own_slot)))
        return out

    @staticmethod
    def _stopped_early(run: Running, result: WorkerResult | None) -> bool:
        """Whether a packed job that returned ended on early stopping's verdict:
        that stop reaches the job alone, through its run dir (its report()
        raises), not through the pack's task, so it is the job's end (pruned, or
        paused for promotion), not a failure of its own; unless the job had
        already ended before the stop was asked (its pack ran on, and the
        scheduler learns of its end only when the pack returns)."""
        stop = run.stop
        if stop is None or stop.state not in EARLY_STOPS:
            return False
        return result is None or not result.ended_at or result.ended_at >= stop.asked_at

    @staticmethod
    def _interrupted(run: Running, trace: AttemptTrace, stopped: bool, slot_from: float | None, now: float,
                     pack_error: str | None) -> AttemptEnd | None:
        """The end of a packed job its pack's stop caught before or while it ran,
        when that is not the job's own doing; None when it ends as a lone job would."""
        attempt_id = run.attempt.id
        if not trace.started:
            if run.stop is not None and run.stop.by_user_or_policy:
                return AttemptEnd(attempt_id, run.stop.state, run.stop.cause, None,
                                  run.stop.detail or "stopped before it started")
            return AttemptEnd(attempt_id, AttemptState.LOST, EndCause.NOT_STARTED, None,
                              f"not started: the pack it was queued in ended first ({pack_error})")
        if run.stop is None and stopped:
            return AttemptEnd(attempt_id, AttemptState.LOST, EndCause.INTERRUPTED, None,
                              "interrupted: its pack was stopped to end another job of it")
        if (run.stop is not None and run.stop.state is AttemptState.TIMED_OUT and run.job.timeout
                and now - (slot_from or run.attempt.dispatched_at or now) <= run.job.timeout):
            # Its pack ran past the time limit, but this job itself has not: the jobs
            # before it took the time.  Requeued, not charged.
            return AttemptEnd(attempt_id, AttemptState.LOST, EndCause.INTERRUPTED, None,
                              "interrupted: its pack ran past the time limit before this job had")
        return None


def saved_end(attempt_id: int, saved: WorkerResult) -> AttemptEnd:
    """The end a worker saved in its run dir, recorded as such."""
    end = TaskEnd.returned(saved)
    return AttemptEnd(attempt_id, end.state, end.cause, saved, end.error)
