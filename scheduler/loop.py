"""The scheduler loop: ``tick(now)`` does one pass, ``run`` repeats it.

One pass: stop what was cancelled or timed out, record what finished, then ask
the policy what to start and launch it.  The store is the truth; the loop keeps
only the Ray handles of the attempts it launched, so after a restart it
reconciles the store's "running" attempts against what Ray still has.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler import accounting, estimate, packing, policy, wakeup
from scheduler.config import Settings
from scheduler.records import Attempt, Job, NodeSnapshot
from scheduler.states import AttemptState, worker_end
from scheduler.store import Store
from workers import bundle
from workers.attempt import OOM_MARKER, kill_process_group
from workers.paths import RunPaths, run_dir_for

log = logging.getLogger("labq.loop")

NODE_REFRESH_SECONDS = 2.0
# Errors that mean the node, not just the worker, is gone.
NODE_FAILURES = ("NodeDiedError", "LocalRayletDiedError", "TaskUnschedulableError")
SUSPECT_NODE_SECONDS = 60.0
NODE_FRESHNESS_SECONDS = 0.5
# How often each GPU node's NVML readings are refreshed for `labq nodes`.
GPU_TELEMETRY_SECONDS = 10.0
# A GPU share whose attempt ended uncleanly stays booked ("draining") until NVML
# lists none of the attempt's processes on its node: that node is read this
# often meanwhile, and the share is released anyway after the deadline.
DRAIN_READ_SECONDS = 1.0
DRAIN_DEADLINE_SECONDS = 30.0
# How often the scheduler replays its queue forward to estimate start times for
# `labq queue` (SLURM's backfill pass writes expected starts the same way).  The
# CLI reads them instead of replaying 100k pending jobs itself.
ESTIMATE_SECONDS = 10.0


@dataclass
class Running:
    """An attempt this scheduler launched and still holds the Ray handle of."""

    attempt: Attempt
    job: Job
    ref: Any
    gpu_indices: tuple[int, ...]
    stop_reason: AttemptState | None = None  # CANCELLED, TIMED_OUT or PREEMPTED once asked to stop
    stop_detail: str | None = None  # why, for the attempt's error
    # gpu_indices start as the policy's plan; Ray picks the GPU inside the node,
    # so they are replaced by what the worker reports Ray gave it.
    gpus_confirmed: bool = False
    stop_asked_at: float | None = None
    forced: bool = False
    # Packed with other short jobs in one Ray task (scheduler.packing): the pack
    # holds one share, booked on its first job; the rest hold nothing of their own.
    packed: bool = False
    holds: bool = True


@dataclass(frozen=True)
class Draining:
    """The GPU share of an ended attempt whose processes may still hold GPU
    memory: booked in free_capacity until a reading of its node taken after
    ``ended_at`` lists none of ``pids``, or until ``deadline``."""

    attempt_id: int
    job_id: int
    node_id: str
    gpu_indices: tuple[int, ...]
    share: float  # per GPU index
    pids: frozenset[int]
    ended_at: float
    deadline: float


class Scheduler:
    def __init__(self, store: Store, backend: Any, settings: Settings):
        self.store = store
        self.backend = backend
        self.settings = settings
        self.running: dict[int, Running] = {}  # attempt id -> Running
        self._by_ref: dict[Any, list[int]] = {}  # Ray handle -> the attempt ids it runs (several for a pack)
        self._nodes: list[Any] = []  # alive nodes
        self._known: dict[str, Any] = {}  # every node seen, by id
        self._head_node: str | None = None
        # Nodes an attempt was just lost on: Ray reports a node dead only after its
        # health checks fail (~10 s), so without this a retry lands on it again.
        self._suspect: dict[str, float] = {}  # node id -> placement resumes after
        self._nodes_at = 0.0
        self._seen_version: int | None = None
        self._reasons: dict[int, str] = {}
        self._dirty = True
        # The pending queue, kept current from the events table instead of
        # re-reading (and re-decoding) every pending job each pass.
        self._pending: dict[int, policy.Demand] = {}
        self._pending_index = policy.PendingIndex()  # the same demands, grouped as decide wants them
        self._events_seen: int | None = None
        self._queues = settings.queue_configs()
        self._usage: policy.UsageBook | None = None  # decayed usage for fair share, from the first pass on
        # Set by a submit's nudge (scheduler.wakeup) to end the idle sleep early.
        self.wake = threading.Event()
        self._gpu_readings: dict[str, list[dict[str, Any]]] = {}  # node id -> NVML readings per GPU
        self._gpu_refs: dict[str, Any] = {}  # node id -> telemetry task in flight
        self._gpu_asked: dict[str, float] = {}  # node id -> when its reading in flight was started
        self._gpu_taken: dict[str, float] = {}  # node id -> when its latest reading was started
        self._gpu_read_at = 0.0
        self._draining: dict[int, Draining] = {}  # attempt id -> GPU share kept booked after it ended
        self._estimated_at: float | None = None
        self._estimated_any = True  # the table may hold estimates from an earlier run
        self._short = packing.ShortJobs(settings.scheduler.pack_seconds)  # how long each stage's jobs take here
        # Ray tasks launched, by jobs per task (1: a job alone), since start: what
        # packing did (the throughput benchmark reports it).
        self.launched: collections.Counter[int] = collections.Counter()

    # ------------------------------------------------------------ restart

    def reconcile(self, now: float) -> int:
        """Attempts the store says are running but this process did not launch
        belong to a scheduler that is gone, and Ray ends a task when its owner dies.
        Record a result the worker managed to write; otherwise mark the attempt lost
        and requeue the job (not charged to its retries).  Returns how many."""
        count = 0
        for attempt, job in self.store.running_attempts():
            if attempt.id in self.running:
                continue
            if not self._record_saved(attempt, now):
                self.store.finish_attempt(attempt.id, AttemptState.LOST, now, free_retry=True,
                                          error="scheduler restarted; the attempt's Ray task ended with it")
            count += 1
        return count

    def _record_saved(self, attempt: Attempt, now: float) -> bool:
        """Record the end the worker wrote to the attempt's result.json, if it did."""
        saved = RunPaths(Path(attempt.run_dir)).read_result()
        if saved is None:
            return False
        self.store.finish_attempt(attempt.id, AttemptState.from_worker_outcome(saved.get("outcome")), now, result=saved)
        return True

    # ------------------------------------------------------------ one pass

    def tick(self, now: float) -> None:
        # Ends first: a job that ended on its own during the idle wait is not then
        # timed out; stops are still judged when recording them fails.
        try:
            self._collect(self.backend.wait(list(self._by_ref), timeout=0), now)
        finally:
            self._stop_requested(now)
        self._confirm_gpus()
        self._read_gpus(now)
        version = self.store.data_version()
        if self._dirty or version != self._seen_version or now - self._nodes_at > NODE_REFRESH_SECONDS:
            self._seen_version = version
            self._dirty = False
            self._schedule(now)
        if self._estimated_at is None or now - self._estimated_at >= ESTIMATE_SECONDS:
            self._estimated_at = now
            self._estimate(now)

    def _estimate(self, now: float) -> None:
        """Write the estimated start of the pending jobs (scheduler.estimate) from
        what this loop holds: its pending view, what runs where, its nodes and
        its decayed usage.  Only durations come from the store.  An estimate is a
        nicety: a failure is logged, never fatal to the loop."""
        try:
            if not self._pending:
                if self._estimated_any:
                    self.store.save_estimates({}, now)
                    self._estimated_any = False
                return
            running = self._running_jobs()
            started = {r.job.id for r in self.running.values()}  # placed this pass: the pending view drops them on the next
            fed = estimate.first_of_each_class((d for d in self._pending.values() if d.job_id not in started),
                                               estimate.DEFAULT_LIMIT)
            timeouts = {d.job_id: d.time_limit for d in fed} | {r.job_id: r.time_limit for r in running}
            durations = estimate.durations_from(self.store, timeouts)
            nodes = {n.node_id: policy.node_of(n.node_id, n.resources, self._gpu_readings.get(n.node_id, ()))
                     for n in self._known.values()}
            starts = estimate.estimate_starts(
                fed, running, [nodes[n.node_id] for n in self._nodes], known=list(nodes.values()),
                durations=durations, now=now, queues=self._queues,
                usage=self._usage.snapshot() if self._usage else None, half_life=self.settings.scheduler.usage_half_life)
            self.store.save_estimates(starts, now)
            self._estimated_any = True
        except Exception:
            log.exception("estimating start times failed; `labq queue` shows none until the next try")

    def wait_for_events(self, timeout: float, now_fn=time.time) -> None:
        """Sleep until a task finishes or ``timeout`` passes (the loop's only
        sleep); the next tick records what finished (one ray.wait, not two)."""
        refs = list(self._by_ref)
        if refs:
            self.backend.wait_any(refs, timeout=timeout)
        else:
            self.wake.wait(timeout)
        self.wake.clear()

    def _confirm_gpus(self) -> None:
        """Book each GPU attempt on the GPUs Ray really gave it (the worker writes
        them as it starts): Ray places a fractional job best-fit as labq does, but
        jobs of one shape launched together can swap cards, and a share Ray freed
        a moment before labq recorded the end can be reused on another index."""
        for run in self.running.values():
            if run.gpus_confirmed or not run.gpu_indices:
                continue
            ids = RunPaths(Path(run.attempt.run_dir)).read_gpu_ids()
            if ids is None:
                continue  # not started yet (or a run dir on another node: the plan stands)
            run.gpus_confirmed = True
            node = self._known.get(run.attempt.node_id or "")
            gpus = int(node.resources.get("GPU", 0)) if node else 0
            if ids and tuple(ids) != run.gpu_indices and all(i < gpus for i in ids):
                log.debug("job %s: Ray put it on GPU %s, not %s", run.job.id, ids, list(run.gpu_indices))
                run.gpu_indices = tuple(ids)
                self._dirty = True

    def _read_gpus(self, now: float) -> None:
        """Keep NVML readings of every GPU node fresh, without ever blocking a pass:
        start a reading per node, pick results up on later passes.  A node with
        a draining share is read every DRAIN_READ_SECONDS until it is released."""
        done = set(self.backend.wait(list(self._gpu_refs.values()), timeout=0)) if self._gpu_refs else set()
        for node_id, ref in list(self._gpu_refs.items()):
            if ref in done:
                del self._gpu_refs[node_id]
                reading = self.backend.value(ref)
                if reading is not None:  # a failed reading is not "no NVML here": keep the last one
                    self._gpu_readings[node_id] = reading
                self._gpu_taken[node_id] = self._gpu_asked.pop(node_id)
            elif now - self._gpu_asked[node_id] > 6 * GPU_TELEMETRY_SECONDS:  # stuck on a dying node
                del self._gpu_refs[node_id], self._gpu_asked[node_id]
        if self._draining:
            self._release_drained(now)
        if done and not self._gpu_refs:
            self._save_node_snapshot(now)
        due = {d.node_id for d in self._draining.values()
               if self._gpu_taken.get(d.node_id, -1.0) < d.ended_at
               or now - self._gpu_taken[d.node_id] >= DRAIN_READ_SECONDS}
        if now - self._gpu_read_at >= GPU_TELEMETRY_SECONDS:
            gpu_nodes = {n.node_id for n in self._nodes if n.resources.get("GPU", 0) > 0}
            if gpu_nodes:
                self._gpu_read_at = now
                due |= gpu_nodes
        due -= self._gpu_refs.keys()
        if due:
            self._gpu_refs.update(self.backend.read_gpus(sorted(due)))
            self._gpu_asked.update(dict.fromkeys(due, now))

    def _drain(self, run: Running, state: AttemptState, result: dict[str, Any] | None, now: float) -> None:
        """Keep the GPU share of an ended attempt booked while its processes may
        still hold GPU memory: after any end but a success, and after a success
        whose worker saw processes left on the GPUs (``gpu_usage.pids_left``).
        Released at once on a node without NVML (its reading is [])."""
        node_id = run.attempt.node_id
        if not run.gpu_indices or not node_id or self._gpu_readings.get(node_id) == []:
            return
        pids = {int(p) for p in ((result or {}).get("gpu_usage") or {}).get("pids_left") or ()}
        if state is AttemptState.SUCCEEDED and not pids:
            return
        pids |= RunPaths(Path(run.attempt.run_dir)).read_gpu_pids()
        if result and result.get("pid"):
            pids.add(int(result["pid"]))
        if not pids:  # killed before it recorded them, or a run dir this machine cannot read
            log.info("job %s attempt %s: no record of its GPU processes; its share is released unchecked",
                     run.job.id, run.attempt.number)
            return
        share = run.attempt.gpu_share or run.job.gpu
        self._draining[run.attempt.id] = Draining(
            attempt_id=run.attempt.id, job_id=run.job.id, node_id=node_id, gpu_indices=run.gpu_indices,
            share=min(share, 1.0), pids=frozenset(pids), ended_at=now, deadline=now + DRAIN_DEADLINE_SECONDS)

    def _release_drained(self, now: float) -> None:
        """Release each draining share whose node, read after its attempt ended,
        lists none of its pids on any GPU; past the deadline, release it anyway
        and say which pids are left."""
        for attempt_id, d in list(self._draining.items()):
            readings = self._gpu_readings.get(d.node_id)
            fresh = readings is not None and self._gpu_taken.get(d.node_id, -1.0) >= d.ended_at
            left = d.pids & {int(p) for g in readings or () for p in g.get("pids") or ()}
            if fresh and not left:
                log.debug("job %s: its processes left the GPUs of node %s", d.job_id, d.node_id[:8])
            elif now >= d.deadline:
                log.warning("job %s (attempt id %s) ended %.0fs ago and %s on node %s; releasing its GPU share "
                            "anyway", d.job_id, attempt_id, now - d.ended_at,
                            f"NVML still lists its pids {sorted(left)}" if fresh
                            else f"no NVML reading came back since (its pids {sorted(d.pids)} unchecked)",
                            self._describe_node(d.node_id, now))
            else:
                continue
            del self._draining[attempt_id]
            self._dirty = True

    def _stop_requested(self, now: float) -> None:
        cancelled = self.store.cancel_requested() if self.running else set()
        grace = self.settings.scheduler.cancel_grace
        for run in self.running.values():
            if run.stop_reason is None:
                if run.job.id in cancelled:
                    if run.packed and RunPaths(Path(run.attempt.run_dir)).result.exists():
                        continue  # it already finished inside its running pack: nothing to stop
                    self._ask_stop(run, AttemptState.CANCELLED, now)
                elif run.job.timeout and now - (run.attempt.dispatched_at or now) > run.job.timeout:
                    self._ask_stop(run, AttemptState.TIMED_OUT, now)
            elif not run.forced and now - (run.stop_asked_at or now) >= grace:
                # The polite cancel only lands when the job runs Python bytecode; a
                # job blocked in C (or ignoring KeyboardInterrupt) is killed.
                for member in self._task_of(run):
                    member.forced = True
                    paths = RunPaths(Path(member.attempt.run_dir))
                    if paths.root.exists() and not paths.result.exists():  # the one running, not those done
                        self._kill_command_group(member)
                self.backend.cancel(run.ref, force=True)

    def _task_of(self, run: Running) -> list[Running]:
        """Every attempt run's Ray task runs: itself, or each job of its pack."""
        return [self.running[a] for a in self._by_ref.get(run.ref, ())] if run.packed else [run]

    def _ask_stop(self, run: Running, reason: AttemptState, now: float, detail: str | None = None) -> None:
        """Stop an attempt: its Ray task, so for a packed job its whole pack.  The
        other jobs of a pack are sorted out when it ends (see :meth:`_pack_ends`);
        preempting a pack preempts all of it."""
        log.info("stopping attempt %s of job %s: %s", run.attempt.number, run.job.id, detail or reason.value)
        members = self._task_of(run)
        asked = any(m.stop_asked_at is not None for m in members)
        for other in members:
            if other is run or (reason is AttemptState.PREEMPTED and other.stop_reason is None):
                other.stop_reason, other.stop_asked_at, other.stop_detail = reason, now, detail
        if not asked:  # a pack's task once, however many of its jobs are stopped
            self.backend.cancel(run.ref, force=False)

    @staticmethod
    def _kill_command_group(run: Running) -> None:
        """A force-killed worker takes its command child with it (PDEATHSIG), but
        not the child's children: end the whole group when it lives here."""
        try:
            pgid = int(RunPaths(Path(run.attempt.run_dir)).pgid.read_text())
        except (FileNotFoundError, ValueError):
            return
        kill_process_group(pgid, grace=0.5)

    def _collect(self, ready: list[Any], now: float) -> None:
        """Record every finished task of this pass in one transaction."""
        taken = []
        for ref in ready:
            attempt_ids = self._by_ref.pop(ref, None)
            if attempt_ids is not None:
                taken.append((ref, [self.running.pop(a) for a in attempt_ids]))
        if not taken:
            return
        finished = []
        runs = []
        try:
            for ref, members in taken:
                if members[0].packed:
                    ends = self._pack_ends(members, self.backend.pack_outcomes(ref, len(members)), now)
                else:
                    ends = [(members[0], *self.backend.outcome(ref), {}, True)]
                for run, state, result, error, extra, apply_stop in ends:
                    item = self._ended(run, state, result, error, now, apply_stop)
                    item.update(extra)
                    finished.append(item)
                    runs.append((run, item["outcome"]))
            states = self.store.finish_attempts(finished, now)
        except Exception:
            # Not recorded (disk full, say): keep the handles and retry next pass;
            # a finished Ray task's result can be fetched again.
            for ref, members in taken:
                for run in members:
                    self.running[run.attempt.id] = run
                self._by_ref[ref] = [run.attempt.id for run in members]
            raise
        for (run, state), item, job_state in zip(runs, finished, states):
            log.info("job %s attempt %s: %s -> job %s", run.job.id, run.attempt.number, state.value, job_state.value)
            self._drain(run, state, item["result"], now)
            result = item["result"] or {}
            if result.get("started_at") and result.get("ended_at"):
                self._short.observe((run.job.experiment_id, run.job.stage), result["ended_at"] - result["started_at"])
        self._dirty = True

    def _ended(self, run: Running, state: AttemptState, result: dict[str, Any] | None, error: str | None,
               now: float, apply_stop: bool = True) -> dict[str, Any]:
        """How one attempt ended, as the store records it.  ``apply_stop``: a stop
        this scheduler asked for (cancel, timeout, preemption) explains an end
        that was not a success (not so for a packed job that ended on its own)."""
        attempt_id = run.attempt.id
        if apply_stop and run.stop_reason is not None and state is not AttemptState.SUCCEEDED:
            state = run.stop_reason
            if state is AttemptState.TIMED_OUT:
                error = f"ran longer than its timeout of {run.job.timeout:g}s"
            elif state is AttemptState.PREEMPTED:
                error = run.stop_detail
        elif result is None and state is not AttemptState.CANCELLED:
            paths = RunPaths(Path(run.attempt.run_dir))
            result = paths.read_result()  # written before the worker died?
            oom = paths.root / OOM_MARKER
            if state is AttemptState.LOST and oom.exists():  # labq's memory watchdog ended it
                state, error = AttemptState.OUT_OF_MEMORY, oom.read_text()
        if result is not None and result.get("bundle"):
            bundle.unpack(result.pop("bundle"), Path(run.attempt.run_dir))
        if state in (AttemptState.LOST, AttemptState.OUT_OF_MEMORY, AttemptState.CANCELLED,
                     AttemptState.TIMED_OUT, AttemptState.PREEMPTED):
            # The worker may have died without ending its command's tree (a
            # shell does not pass PDEATHSIG on): end it before any retry starts.
            self._kill_command_group(run)
        node_failed = False
        if state in (AttemptState.LOST, AttemptState.OUT_OF_MEMORY):
            node_failed = bool(error and any(e in error for e in NODE_FAILURES))
            if node_failed and run.attempt.node_id:
                self._mark_suspect(run.attempt.node_id, now)
            error = f"{error} (on node {self._describe_node(run.attempt.node_id, now)})"
        # A dead node is not the job's fault (SLURM requeues NODE_FAIL jobs too):
        # requeue without charging its retries.
        return {"attempt_id": attempt_id, "outcome": state, "result": result, "error": error,
                "free_retry": node_failed and state is AttemptState.LOST}

    def _pack_ends(self, members: list[Running], outcomes: list[tuple], now: float) -> list[tuple]:
        """(run, state, result, error, overrides, apply_stop) for each job of an
        ended pack.  A pack that returned has each job's own result.  One that
        ended in a Ray error (its worker killed, a stop asked for, its node lost)
        is sorted out from the run dirs, in order:

        * a result.json: the job finished on its own, and that is its end;
        * a run dir without one: the job that was running.  If this scheduler
          stopped the pack for another job of it, it was interrupted: requeued,
          not charged.  Otherwise it meets the error as a lone job would;
        * no run dir: it never started, and is requeued, not charged (unless it
          was itself cancelled or preempted).  If no job started and nobody
          asked for a stop (its code could not be set up, say), the first job
          meets the error as if alone, so a broken pack cannot requeue forever.

        Each follower's share is booked from its own start (``slot_from``), the
        end of the job before it, so usage counts a pack's time once."""
        # Stopped for one of its jobs (a cancel, a preemption); a timeout stops them all alike.
        stopped = any(m.stop_reason in (AttemptState.CANCELLED, AttemptState.PREEMPTED) for m in members)
        left: dict[int, tuple[dict | None, bool]] = {}
        if outcomes and outcomes[0][1] is None:
            for run in members:
                paths = RunPaths(Path(run.attempt.run_dir))
                left[run.attempt.id] = (paths.read_result(), paths.root.exists())
        nothing_ran = bool(left) and not stopped and not any(started for _, started in left.values())
        ends = []
        slot_from: float | None = None  # where the next job's share begins: the end of the one before
        for i, (run, (state, result, error)) in enumerate(zip(members, outcomes)):
            extra: dict[str, Any] = {} if i == 0 else {"slot_from": slot_from}
            apply_stop = False
            if result is None:
                saved, started = left[run.attempt.id]
                if saved is not None:
                    state, result, error = worker_end(saved)
                elif nothing_ran and i == 0:
                    apply_stop = True
                elif not started:
                    own = run.stop_reason in (AttemptState.CANCELLED, AttemptState.PREEMPTED)
                    ends.append((run, run.stop_reason if own else AttemptState.LOST, None,
                                 (run.stop_detail or "stopped before it started") if own
                                 else f"not started: the pack it was queued in ended first ({error})",
                                 {"slot_from": now, **({} if own else {"not_charged": True})}, own))
                    continue
                elif run.stop_reason is None and stopped:
                    ends.append((run, AttemptState.LOST, None, "interrupted: its pack was stopped to end another "
                                 "job of it", {**extra, "not_charged": True}, False))
                    continue
                elif (run.stop_reason is AttemptState.TIMED_OUT and run.job.timeout
                      and now - (slot_from or run.attempt.dispatched_at or now) <= run.job.timeout):
                    # Its pack ran past the time limit, but this job itself has not: the jobs
                    # before it took the time.  Requeued, not charged.
                    ends.append((run, AttemptState.LOST, None, "interrupted: its pack ran past the time limit "
                                 "before this job had", {**extra, "not_charged": True}, False))
                    continue
                else:
                    apply_stop = True  # the job that was running: as a lone job would end
            if result is not None and result.get("started_at"):
                extra = {} if i == 0 else {"slot_from": result["started_at"]}
                slot_from = result.get("ended_at") or slot_from
            ends.append((run, state, result, error, extra, apply_stop))
        return ends

    # ------------------------------------------------------------ placement

    def _describe_node(self, node_id: str | None, now: float) -> str:
        """'ab12cd34 at 10.0.0.11, now dead' — refreshed, since a lost attempt is
        often the first sign that its node died."""
        if not node_id:
            return "unknown"
        if now - self._nodes_at > NODE_FRESHNESS_SECONDS:  # once per pass, not once per lost attempt
            try:
                self._refresh_nodes(now)
            except Exception:  # Ray itself may be the thing that is down
                pass
        node = self._known.get(node_id)
        if node is None:
            return node_id[:8]
        return f"{node_id[:8]} at {node.address}" + ("" if node.alive else ", now dead")

    def _mark_suspect(self, node_id: str, now: float) -> None:
        """Stop placing on a node an attempt was just lost on, from this pass on:
        the placement view is cut at once, not at the next node refresh, which
        may be seconds away while the requeued job is placed in the same pass."""
        self._suspect[node_id] = now + SUSPECT_NODE_SECONDS
        self._nodes = [n for n in self._nodes if n.node_id != node_id]
        self._dirty = True

    def _refresh_nodes(self, now: float) -> None:
        """All nodes Ray knows, dead ones included: they are shown as dead, never
        placed on, but still count when judging whether a job can ever fit (a
        node that died may rejoin)."""
        nodes = {n.node_id: n for n in self.backend.nodes()}
        for node_id, old in self._known.items():
            seen = nodes.get(node_id)
            if seen is None or (not seen.alive and not seen.resources):
                # Ray lists dead nodes with no resources; remember what they had.
                nodes[node_id] = dataclasses.replace(old, alive=False)
        self._known = nodes
        self._suspect = {k: until for k, until in self._suspect.items() if until > now and nodes.get(k) and nodes[k].alive}
        self._nodes = [n for n in nodes.values() if n.alive and n.node_id not in self._suspect]
        self._nodes_at = now
        self._save_node_snapshot(now)

    def free_capacity(self, nodes_in: list[Any] | None = None) -> list[policy.Node]:
        """Capacity from Ray's node totals minus what labq's running attempts hold.
        Computed from labq's own books, not Ray's available_resources, which lags
        behind just-launched tasks."""
        nodes = {}
        for n in (self._nodes if nodes_in is None else nodes_in):
            nodes[n.node_id] = policy.node_of(n.node_id, n.resources, self._gpu_readings.get(n.node_id, ()))
        for run in self.running.values():
            node = nodes.get(run.attempt.node_id or "")
            if node is None or not run.holds:
                continue
            job = run.job
            node.cpu_free -= job.cpu
            node.memory_free -= job.memory or 0
            for k, v in job.custom.items():
                node.custom_free[k] = node.custom_free.get(k, 0.0) - v
            share = run.attempt.gpu_share or job.gpu
            for i in run.gpu_indices:
                if i < len(node.gpu_free):
                    node.gpu_free[i] -= share if share <= 1 else 1.0
        for d in self._draining.values():  # ended, but its processes may still hold GPU memory
            node = nodes.get(d.node_id)
            for i in d.gpu_indices if node is not None else ():
                if i < len(node.gpu_free):
                    node.gpu_free[i] -= d.share
        return list(nodes.values())

    def _schedule(self, now: float) -> None:
        if now - self._nodes_at > NODE_REFRESH_SECONDS or not self._nodes:
            self._refresh_nodes(now)
        self._sync_pending()
        # Fair share's usage must follow every start and end, queue empty or not:
        # it charges what ran since the last call to what was running then.
        self._account(now)
        if not self._pending:
            return
        decision = self._decide(now)
        if decision.unschedulable and now - self._nodes_at > NODE_FRESHNESS_SECONDS:
            # Unschedulable is final: judge it on a fresh view (a node may just have joined).
            self._refresh_nodes(now)
            decision = self._decide(now)
        # One preemption at a time: while a victim is stopping or its GPU share
        # drains, the room it makes is not yet visible, and the policy would pick
        # a second victim for the same job.
        settling = self._draining or any(r.stop_reason is AttemptState.PREEMPTED for r in self.running.values())
        for job_id, why in ({} if settling else decision.preempt).items():
            run = next((r for r in self.running.values() if r.job.id == job_id and r.stop_reason is None), None)
            if run is not None:
                self._ask_stop(run, AttemptState.PREEMPTED, now, detail=f"preempted: {why}")
        if decision.placements:  # start jobs first; the reasons of those left waiting go in the same transaction
            self._start(decision.placements, decision.waiting, now)
            self._account(now)
        else:
            self._set_reasons(decision.waiting, set())
        if decision.unschedulable and any(d.gpu_memory for d in self._pending.values()):
            # Card sizes come from NVML readings: until every GPU node has been read,
            # "no card is big enough" is not yet known.
            unread = any(n.resources.get("GPU", 0) > 0 and n.node_id not in self._gpu_readings
                         for n in self._known.values() if n.alive)
            if unread:
                decision.unschedulable = {j: why for j, why in decision.unschedulable.items()
                                          if not self._pending[j].gpu_memory}
        if decision.unschedulable:
            self.store.mark_unschedulable(decision.unschedulable, now)

    def _set_reasons(self, waiting: dict[int, str], started: set[int], store: bool = True) -> dict[int, str]:
        """Why each job waits, where that changed (and ``started`` jobs do not):
        written now, or (``store=False``) returned for the caller's transaction,
        who then remembers them once committed."""
        changed = {j: r for j, r in waiting.items() if self._reasons.get(j) != r and j not in started}
        if store:
            self.store.set_reasons(changed)
            self._reasons.update(changed)
        return changed

    def _start(self, placements: list[policy.Placement], waiting: dict[int, str], now: float) -> None:
        """Start the policy's placements, each with the followers packed behind
        it (scheduler.packing), and write why the rest wait, in one transaction;
        then launch them."""
        packs = self._packs(placements)
        rows = [(p.job_id, p.node_id, p.gpu_share) for p in placements]
        by_leader = {p.job_id: p for p in placements}
        rows += [(f, by_leader[lead].node_id, None) for lead, followers in packs.items() for f in followers]
        reasons = self._set_reasons(waiting, {f for followers in packs.values() for f in followers}, store=False)
        home = self.settings.home_path
        started = {a.job_id: a for a in self.store.start_attempts(rows, lambda job_id, n: run_dir_for(home, job_id, n),
                                                                  now, reasons=reasons)}
        self._reasons.update(reasons)
        jobs = {j.id: j for j in self.store.jobs_by_ids(list(started))}
        for p in placements:
            # A leader cancelled since the policy looked is not started: its followers still are.
            members = [started[j] for j in [p.job_id, *packs.get(p.job_id, ())] if j in started]
            if len(members) == 1:
                self._launch(members[0], jobs[members[0].job_id], p, now)
            elif members:
                self._launch_pack(members, jobs, p, now)
        for job_id in started:
            self._reasons.pop(job_id, None)

    def _packs(self, placements: list[policy.Placement]) -> dict[int, list[int]]:
        """Leader job id -> the jobs packed behind it: its class's next pending
        jobs of the same experiment and stage, as many as its stage's measured
        durations allow (scheduler.packing).  Only CPU jobs, and in collect mode
        only on the head (a pack's jobs are sorted out from their run dirs)."""
        if not self._short.any_packable():
            return {}
        head = self._collect_node()
        leads = [p for p in placements if (d := self._pending.get(p.job_id)) is not None and not d.gpu
                 and not d.gpu_memory and (head is None or p.node_id == head)]
        if not leads:
            return {}
        stages = self.store.job_stages([p.job_id for p in leads])
        # No more than an even split of the class's backlog over the slots in use,
        # so the last packs do not leave most slots idle while a few finish.
        slots = len(placements) + sum(1 for r in self.running.values() if r.holds)
        sizes = [(p.job_id, min(self._short.pack_size(stages[p.job_id], self._pending[p.job_id].time_limit),
                                -(-len(self._pending_index.peers(p.job_id) or ()) // slots)))
                 for p in leads if p.job_id in stages]
        if all(size < 2 for _, size in sizes):
            return {}
        candidates = packing.pick_followers(sizes, self._pending_index.peers, {p.job_id for p in placements})
        stages.update(self.store.job_stages([f for followers in candidates.values() for f in followers]))
        packs = {}
        for lead, followers in candidates.items():
            same = [f for f in followers if stages.get(f) == stages[lead]]
            if same:
                packs[lead] = same
        return packs

    def _decide(self, now: float) -> policy.Decision:
        known = self.free_capacity(list(self._known.values()))
        return policy.decide(self._pending_index, self.free_capacity(), known=known, running=self._running_jobs(),
                             queues=self._queues, usage=self._usage.snapshot() if self._usage else None, now=now,
                             policy="labq")

    def _running_jobs(self) -> list[policy.RunningJob]:
        return [policy.RunningJob(job_id=r.job.id, user=r.job.user, queue=r.job.queue, cpu=r.job.cpu,
                                  gpu=r.attempt.gpu_share or r.job.gpu, memory=r.job.memory or 0,
                                  node_id=r.attempt.node_id or "", gpu_indices=r.gpu_indices,
                                  started_at=r.attempt.dispatched_at or 0.0, time_limit=r.job.timeout,
                                  priority=r.job.priority)
                for r in self.running.values() if r.holds]

    def _account(self, now: float) -> None:
        """Advance decayed usage to ``now`` with what runs; on the first pass,
        seed it from the store's history so a restart forgets nobody's usage.
        Shares are of every node known, dead ones included (totals, not free)."""
        if not self._known:
            return
        capacity = policy.Capacity.of(policy.node_of(n.node_id, n.resources) for n in self._known.values())
        if self._usage is None:
            half_life = self.settings.scheduler.usage_half_life
            self._usage = policy.UsageBook(half_life, capacity)
            shapes = self.store.decayed_use(now - 10 * half_life, now, half_life)
            self._usage.seed(accounting.usage_of_shapes(shapes, capacity.dominant), now)
        self._usage.capacity = capacity
        self._usage.advance(now, self._running_jobs())

    def _sync_pending(self) -> None:
        """Bring the pending view up to date: everything on the first pass, then
        only the jobs whose state changed since the last event seen."""
        if self._events_seen is None:
            self._events_seen = self.store.last_event_id()
            waiting = self.store.waiting()
            self._pending = {w.id: policy.demand_of(w) for w in waiting}
            self._pending_index = policy.PendingIndex(self._pending.values())
            # What the store already says: a restart rewrites only reasons that changed.
            self._reasons = {w.id: w.reason for w in waiting if w.reason}
            return
        self._events_seen, changed = self.store.jobs_changed_since(self._events_seen)
        for start in range(0, len(changed), 5000):
            chunk = changed[start:start + 5000]
            for job_id in chunk:
                if self._pending.pop(job_id, None) is not None:
                    self._pending_index.remove(job_id)
            for w in self.store.waiting(chunk):
                self._pending[w.id] = policy.demand_of(w)
                self._pending_index.add(self._pending[w.id])
                if w.reason:
                    self._reasons[w.id] = w.reason
        for job_id in changed:
            if job_id not in self._pending:
                self._reasons.pop(job_id, None)

    def _task(self, attempt: Attempt, job: Job, placement: policy.Placement
              ) -> tuple[dict[str, Any], str | None, list[str] | None]:
        """What the worker is given for one attempt, the code package it needs,
        and the Python packages its stage asks for (env.pip)."""
        extra = self.store.launch_context(job.id)
        share = placement.gpu_share or job.gpu  # gpu_memory turned into a share of the chosen card
        task = {
            "job_id": job.id, "attempt": attempt.number, "experiment": job.experiment, "stage": job.stage,
            "params": job.params, "run_dir": attempt.run_dir, "target_kind": job.target_kind, "target": job.target,
            "inputs": extra["inputs"], "previous_run_dir": extra["previous_run_dir"],
            "resources": {"cpu": job.cpu, "gpu": share, "memory": job.memory, "custom": job.custom,
                          "gpu_memory": job.gpu_memory},
            "code_dir": None if extra["package"] else str(Path(extra["spec_path"]).parent),
            # The snapshot (<sha>.zip) the attempt's private working directory copies,
            # and where each node keeps it extracted.
            "package": extra["package"],
            "code_root": str(self.settings.home_path / "code"),
            "cache_dir": str(self.settings.home_path / "cache"),
            "collect_to_node": self._collect_node(),
            "metrics_from": extra["runtime"].get("metrics_from"),
            "env_vars": (extra["runtime"].get("env") or {}).get("vars") or {},
            "outputs_limit": self.settings.outputs_limit,
        }
        if task["collect_to_node"] and placement.node_id and placement.node_id != task["collect_to_node"]:
            for up in task["inputs"]:  # the node cannot read the head's disk: send the artifacts
                up["bundle"] = bundle.pack(Path(up["run_dir"]), only="artifacts")
        return task, extra["package"], (extra["runtime"].get("env") or {}).get("pip")

    def _launch(self, attempt: Attempt, job: Job, placement: policy.Placement, now: float) -> None:
        task, package, pip = self._task(attempt, job, placement)
        share = task["resources"]["gpu"]
        try:
            # A worker that has used CUDA keeps its first device: real GPUs get a fresh
            # worker per job. Logical GPUs (NVML read nothing there) have no CUDA to keep.
            fresh = share > 0 and self._gpu_readings.get(placement.node_id or "") != []
            ref = self.backend.launch(task, cpu=job.cpu, gpu=share, memory=job.memory, custom=job.custom,
                                      node_id=placement.node_id, package=package, pip=pip, fresh_worker=fresh)
        except Exception as exc:  # bad runtime env, Ray gone mid-pass: the attempt failed to start
            log.exception("launching job %s failed", job.id)
            self.store.finish_attempt(attempt.id, AttemptState.LOST, now, error=f"could not launch on Ray: {exc}")
            self._dirty = True
            return
        self.running[attempt.id] = Running(attempt=attempt, job=job, ref=ref, gpu_indices=placement.gpu_indices)
        self._by_ref[ref] = [attempt.id]
        self.launched[1] += 1

    def _launch_pack(self, attempts: list[Attempt], jobs: dict[int, Job], placement: policy.Placement,
                     now: float) -> None:
        """One Ray task for several short jobs of one stage, with the first one's
        share (they all have the same): they run one after another in it."""
        tasks = []
        package = pip = None
        for attempt in attempts:
            task, package, pip = self._task(attempt, jobs[attempt.job_id], placement)
            tasks.append(task)
        lead = jobs[attempts[0].job_id]
        try:
            ref = self.backend.launch_pack(tasks, cpu=lead.cpu, memory=lead.memory, custom=lead.custom,
                                           node_id=placement.node_id, package=package, pip=pip)
        except Exception as exc:
            log.exception("launching a pack of %d jobs (job %s first) failed", len(attempts), lead.id)
            # As if the first had been launched alone; the rest never started: not charged.
            self.store.finish_attempts([{"attempt_id": a.id, "outcome": AttemptState.LOST,
                                         "error": f"could not launch on Ray: {exc}", "not_charged": i > 0,
                                         "slot_from": now} for i, a in enumerate(attempts)], now)
            self._dirty = True
            return
        for i, attempt in enumerate(attempts):
            self.running[attempt.id] = Running(attempt=attempt, job=jobs[attempt.job_id], ref=ref, gpu_indices=(),
                                               packed=True, holds=i == 0)
        self._by_ref[ref] = [a.id for a in attempts]
        self.launched[len(attempts)] += 1
        log.debug("job %s: packed with %d more short jobs of its stage", lead.id, len(attempts) - 1)

    def _collect_node(self) -> str | None:
        """The head's node id when run dirs must be carried back to it."""
        if self.settings.storage != "collect":
            return None
        if self._head_node is None:
            self._head_node = self.backend.local_node_id()
        return self._head_node

    # ------------------------------------------------------------ shutdown and status

    def release_all(self, now: float, why: str) -> None:
        """On a clean stop: record what already ended, then end what this
        scheduler runs and requeue it, so nothing stays 'running' without a Ray
        task behind it.  A job that finished (a packed one, say, whose pack runs
        on) keeps its result instead of running again."""
        try:
            self._collect(self.backend.wait(list(self._by_ref), timeout=0), now)
        except Exception:  # Ray or the disk going away: what is left is requeued below
            log.exception("recording the last ends before stopping failed")
        for ref in self._by_ref:
            self.backend.cancel(ref, force=True)
        for run in list(self.running.values()):
            if self._record_saved(run.attempt, now):
                continue
            if run.packed and not run.holds and not Path(run.attempt.run_dir).exists():  # queued, never started
                self.store.finish_attempt(run.attempt.id, AttemptState.LOST, now, error=f"not started: {why}",
                                          not_charged=True, slot_from=now)
                continue
            self._kill_command_group(run)
            self.store.finish_attempt(run.attempt.id, AttemptState.LOST, now, error=why, free_retry=True)
        self.running.clear()
        self._by_ref.clear()

    def _save_node_snapshot(self, now: float) -> None:
        free = {n.node_id: n for n in self.free_capacity()}
        per_node: dict[str, int] = {}
        for run in self.running.values():
            per_node[run.attempt.node_id or ""] = per_node.get(run.attempt.node_id or "", 0) + 1
        # Part of "allocated": shares of ended jobs whose processes NVML still lists.
        draining: dict[tuple[str, int], dict[str, Any]] = {}
        for d in self._draining.values():
            for i in d.gpu_indices:
                entry = draining.setdefault((d.node_id, i), {"draining": 0.0, "draining_jobs": []})
                entry["draining"] = round(entry["draining"] + d.share, 4)
                entry["draining_jobs"].append(d.job_id)
        snapshots = []
        for n in self._known.values():
            f = free.get(n.node_id) if n.alive else None
            total = {k: v for k, v in n.resources.items() if not k.startswith("node:")}
            allocated = {}
            if f is not None:
                allocated = {"CPU": round(f.cpu_total - f.cpu_free, 4), "GPU": round(len(f.gpu_free) - sum(f.gpu_free), 4),
                             "memory": f.memory_total - f.memory_free}
            readings = {g.get("index"): g for g in self._gpu_readings.get(n.node_id, [])}
            gpus = [{**readings.get(i, {}), "index": i, "allocated": round(1.0 - share, 4),
                     **draining.get((n.node_id, i), {})}
                    for i, share in enumerate(f.gpu_free)] if f else []
            snapshots.append(NodeSnapshot(node_id=n.node_id, address=n.address, alive=n.alive, total=total,
                                          allocated=allocated, running_jobs=per_node.get(n.node_id, 0), gpus=gpus,
                                          updated_at=now))
        self.store.save_nodes(snapshots)


def run(scheduler: Scheduler, stop: threading.Event, *, idle_timeout: float = 0.0, now_fn=time.time) -> None:
    """Tick until ``stop`` is set (or, with ``idle_timeout``, until nothing has been
    pending or running for that long)."""
    poll = scheduler.settings.scheduler.poll_interval
    try:
        listener: wakeup.Listener | None = wakeup.Listener(scheduler.settings.home_path, scheduler.wake)
    except OSError as exc:  # without it, new jobs are seen at the next poll
        log.warning("no submit nudges (%s): new jobs wait up to poll_interval", exc)
        listener = None
    try:
        _run_passes(scheduler, stop, poll, idle_timeout, now_fn)
    finally:
        if listener is not None:
            listener.close()


def _run_passes(scheduler: Scheduler, stop: threading.Event, poll: float, idle_timeout: float, now_fn) -> None:
    idle_since: float | None = None
    while not stop.is_set():
        now = now_fn()
        try:
            scheduler.tick(now)
        except Exception:  # one bad pass must not kill the daemon; the store keeps the truth
            log.exception("scheduler pass failed")
            stop.wait(1.0)
        if idle_timeout:
            busy = bool(scheduler.running) or scheduler.store.count_active() > 0
            idle_since = None if busy else (idle_since or now)
            if idle_since is not None and now - idle_since > idle_timeout:
                log.info("idle for %.0fs: exiting", idle_timeout)
                return
        scheduler.wait_for_events(poll, now_fn)
