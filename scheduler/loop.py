"""The scheduler loop: ``tick(now)`` does one pass, ``run`` repeats it.

One pass: record what ended, stop what was cancelled or timed out, then ask the
policy what to start and launch it.  The store is the truth; the loop keeps
only what it needs to decide quickly, each part owning its own state:

* ``nodes`` (scheduler.node_view): the nodes seen, and which may be placed on;
* ``gpus`` (scheduler.gpu_books): NVML readings and shares still draining;
* ``pending`` (scheduler.pending_view): the pending queue, kept from events;
* ``attempts`` (scheduler.attempt_table): the backend handles of what runs,
  their stops and packs, and the typed ends of what finished;
* ``launcher`` (scheduler.launch): placements turned into launched tasks.

It talks to the cluster only through a :class:`~scheduler.backend.Backend`,
and never touches a node's files or processes itself.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from contract.attempt import run_dir_for
from jobs.api import CLEARED_FILE, STOP_FILE
from scheduler import accounting, early_stop, estimate, node_report, packing, policy, run_history, wakeup
from scheduler.curves import CurveReader
from scheduler.attempt_table import AttemptTable, Pack, Running, saved_end
from scheduler.backend import Backend
from scheduler.config import Settings
from scheduler.gpu_books import DRAIN_DEADLINE_SECONDS, Draining, GpuBooks
from scheduler.launch import Launcher
from scheduler.node_view import NodeView
from scheduler.pending_view import PendingView
from scheduler.records import AttemptEnd, EndCause
from scheduler.states import AttemptState
from scheduler.store import Store

log = logging.getLogger("labq.loop")


@dataclass(frozen=True)
class Reconciled:
    """What a starting scheduler found of the attempts its store says run."""

    adopted: int  # still running (or ended unrecorded) under their owners: taken over
    lost: int  # died with their owner, node or Ray: recorded, and requeued

NODE_REFRESH_SECONDS = 2.0
NODE_FRESHNESS_SECONDS = 0.5
# How often the scheduler replays its queue forward to estimate start times for
# `labq queue` (SLURM's backfill pass writes expected starts the same way).  The
# CLI reads them instead of replaying 100k pending jobs itself.
ESTIMATE_SECONDS = 10.0
# How often running jobs' curves are read for early stopping (every pass, at
# the default poll_interval): a callable waits at each rung for its verdict.
EARLY_STOP_SECONDS = 0.15
# How long a job stopped early has to end at its next report() (jobs.StopTrial,
# with its result) before its task is cancelled; a paused one longer, since it
# may save its checkpoint on the way out (jobs.train does) to resume from it.
EARLY_STOP_WAIT = 1.0
PAUSE_STOP_WAIT = 10.0
# How often the run times durations are predicted from are re-read from the store.
DURATIONS_REFRESH_SECONDS = 30.0
# Ends that are worth naming the node in the attempt's error.
_NODE_ENDS = (AttemptState.LOST, AttemptState.OUT_OF_MEMORY)


class Scheduler:
    def __init__(self, store: Store, backend: Backend, settings: Settings):
        self.store = store
        self.backend = backend
        self.settings = settings
        self.nodes = NodeView(backend)
        self.gpus = GpuBooks(backend)
        self.pending = PendingView()
        self.attempts = AttemptTable(backend)
        self.launcher = Launcher(store, backend, settings, collect_node=self._collect_node,
                                 has_nvml=self.gpus.has_nvml)
        self._queues = settings.queue_configs()
        self._usage: policy.UsageBook | None = None  # decayed usage for fair share, from the first pass on
        # Run times of finished attempts, to predict pending and running jobs'
        # durations from (policy.durations); re-read every DURATIONS_REFRESH_SECONDS.
        self._durations: policy.DurationBook | None = None
        self._durations_at = -float("inf")
        # The job shapes placement keeps unfragmented (policy.fragmentation), re-read as often.
        self._mix: policy.ShapeMix | None = None
        self._mix_at = -float("inf")
        # Per-step metrics of the jobs of stages that stop early (scheduler.early_stop).
        self._curves = CurveReader(lambda node_id, reads: self.backend.curves_since(node_id, reads))
        self._cleared: dict[str, float] = {}  # running attempt's run dir -> the step its rung-cleared file says
        self._early_stop_at = -float("inf")
        self._notes: dict[int, str] = {}  # job id -> its rung as last written
        # Service a running job's earlier (preempted) attempts attained, read once per job.
        self._served: dict[int, tuple[float, int]] = {}
        # Whether each (experiment, stage) of a running job resumes from checkpoints (tiers preempt only those).
        self._checkpoints: dict[tuple[int, str], bool] = {}
        self._short = packing.ShortJobs(settings.scheduler.pack_seconds)  # how long each stage's jobs take here
        self._dirty = True
        self._seen_version: int | None = None
        self._estimated_at: float | None = None
        self._estimated_any = True  # the table may hold estimates from an earlier run
        # Set by a submit's nudge (scheduler.wakeup) to end the idle sleep early.
        self.wake = threading.Event()
        # Backend tasks launched, by jobs per task (1: a job alone), since start:
        # what packing did (the throughput benchmark reports it).
        self.launched: collections.Counter[int] = collections.Counter()
        # `labq scheduler stop --drain`: start nothing new; the daemon ends the loop once nothing runs.
        self.draining = False

    @property
    def running(self) -> dict[int, Running]:
        """The attempts this scheduler runs, by attempt id (a copy)."""
        return {r.attempt.id: r for r in self.attempts}

    # ------------------------------------------------------------ one pass

    def tick(self, now: float) -> None:
        # Ends first: a job that ended on its own during the idle wait is not then
        # timed out; stops are still judged when recording them fails.
        try:
            self._record_ends(self.backend.ready(self.attempts.handles()), now)
        finally:
            self._enforce_stops(now)
        self._confirm_gpus()
        snapshot_due, released = self.gpus.read(now, self.nodes.alive_gpu_nodes(), self.nodes.describe)
        self._dirty |= released
        if snapshot_due:
            self._save_node_snapshot(now)
        version = self.store.data_version()
        if self._dirty or version != self._seen_version or now - self.nodes.refreshed_at > NODE_REFRESH_SECONDS:
            self._seen_version = version
            self._dirty = False
            self._continue_searches(now)
            self._schedule(now)
        if self._estimated_at is None or now - self._estimated_at >= ESTIMATE_SECONDS:
            self._estimated_at = now
            self._estimate(now)
        if now - self._early_stop_at >= EARLY_STOP_SECONDS:
            self._early_stop_at = now
            self._stop_losers(now)

    def wait_for_events(self, timeout: float, now_fn=time.time) -> None:
        """Sleep until a task finishes or ``timeout`` passes (the loop's only
        sleep); the next tick records what finished (one wait, not two)."""
        handles = self.attempts.handles()
        if handles:
            self.backend.wait_any(handles, timeout=timeout)
        else:
            self.wake.wait(timeout)
        self.wake.clear()

    # ------------------------------------------------------------ ends

    def _record_ends(self, ready: list, now: float) -> None:
        """Record every task that ended in one transaction."""
        tasks = self.attempts.take(ready)
        if not tasks:
            return
        try:
            ends = [pair for runs in tasks for pair in self.attempts.ends(runs, now)]
            for run, end in ends:
                self._note_node(run, end, now)
            states = self.store.finish_attempts([end for _, end in ends], now)
        except Exception:
            # Not recorded (disk full, say): keep the handles and retry next pass;
            # a finished task's result can be fetched again.
            self.attempts.put_back(tasks)
            raise
        # Recorded: whoever holds these tasks for a scheduler to come may let go.
        self.backend.release([runs[0].handle for runs in tasks])
        for (run, end), job_state in zip(ends, states):
            log.info("job %s attempt %s: %s -> job %s", run.job.id, run.attempt.number, end.state.value,
                     job_state.value)
            self._drain(run, end, now)
            result = end.result
            if result is not None and result.started_at and result.ended_at:
                self._short.observe((run.job.experiment_id, run.job.stage), result.ended_at - result.started_at)
        self._dirty = True

    def _note_node(self, run: Running, end: AttemptEnd, now: float) -> None:
        """Name the node in the error of an attempt lost or out of memory there,
        and stop placing on a node an attempt was lost on for its death."""
        if end.state not in _NODE_ENDS:
            return
        node_id = run.attempt.node_id
        if end.cause is EndCause.NODE_DIED and node_id:
            self.nodes.mark_suspect(node_id, now)
            self._dirty = True
        end.error = f"{end.error} (on node {self._describe_node(node_id, now)})"

    def _drain(self, run: Running, end: AttemptEnd, now: float) -> None:
        """Keep the GPU share of an ended attempt booked while its processes may
        still hold GPU memory: after any end but a success, and after a success
        whose worker saw processes left on the GPUs (``gpu_usage.pids_left``).
        Released at once on a node without NVML (its reading is [])."""
        node_id = run.attempt.node_id
        if not run.gpu_indices or not node_id or not self.gpus.has_nvml(node_id):
            return
        result = end.result
        pids = {int(p) for p in ((result.gpu_usage if result else None) or {}).get("pids_left") or ()}
        if end.state is AttemptState.SUCCEEDED and not pids:
            return
        pids |= self.backend.trace(node_id, run.attempt.run_dir).gpu_pids
        if result is not None and result.pid:
            pids.add(int(result.pid))
        if not pids:  # killed before it recorded them, or a node that does not answer
            log.info("job %s attempt %s: no record of its GPU processes; its share is released unchecked",
                     run.job.id, run.attempt.number)
            return
        self.gpus.drain(Draining(attempt_id=run.attempt.id, job_id=run.job.id, node_id=node_id,
                                 gpu_indices=run.gpu_indices, share=min(run.share, 1.0), pids=frozenset(pids),
                                 ended_at=now, deadline=now + DRAIN_DEADLINE_SECONDS))

    # ------------------------------------------------------------ stops

    def _enforce_stops(self, now: float) -> None:
        """Ask attempts to stop when cancelled or past their timeout; kill those
        still running a grace period after being asked.  The polite stop only
        lands when the job runs Python bytecode; a job blocked in C (or
        ignoring KeyboardInterrupt) is killed."""
        cancelled = self.store.cancel_requested() if len(self.attempts) else set()
        grace = self.settings.scheduler.cancel_grace
        for run in self.attempts:
            if run.stop is None:
                if run.job.id in cancelled:
                    if self._ended_in_its_pack(run):
                        continue  # it already finished inside its running pack: nothing to stop
                    self._ask_stop(run, AttemptState.CANCELLED, now)
                elif run.job.timeout and now - (run.attempt.dispatched_at or now) > run.job.timeout:
                    self._ask_stop(run, AttemptState.TIMED_OUT, now)
            elif run.stop.cancelled_at is None:
                wait = PAUSE_STOP_WAIT if run.stop.state is AttemptState.PAUSED else EARLY_STOP_WAIT
                if now - run.stop.asked_at >= wait:  # it did not stop at a report(): ask Ray
                    if self._ended_in_its_pack(run):
                        continue  # it did, inside its pack, which runs on with the others
                    self.attempts.cancel_task(run, now)
            elif not run.stop.forced and now - run.stop.cancelled_at >= grace:
                self.attempts.force_stop(run)

    def _ended_in_its_pack(self, run: Running) -> bool:
        """Whether a packed job has ended (saved its result) while its pack runs on."""
        return bool(run.pack) and self.backend.trace(run.attempt.node_id, run.attempt.run_dir).saved is not None

    def _ask_stop(self, run: Running, state: AttemptState, now: float, detail: str | None = None) -> None:
        log.info("stopping attempt %s of job %s: %s", run.attempt.number, run.job.id, detail or state.value)
        self.attempts.ask_stop(run, state, now, detail)

    def _confirm_gpus(self) -> None:
        """Book each GPU attempt on the GPUs Ray really gave it (the worker writes
        them as it starts): Ray places a fractional job best-fit as labq does, but
        jobs of one shape launched together can swap cards, and a share Ray freed
        a moment before labq recorded the end can be reused on another index."""
        for run in self.attempts:
            if run.gpus_confirmed or not run.gpu_indices:
                continue
            ids = self.backend.gpu_ids(run.attempt.node_id, run.attempt.run_dir)
            if ids is None:
                continue  # not started yet (or on a node that cannot be asked cheaply: the plan stands)
            run.gpus_confirmed = True
            gpus = self.nodes.gpus_of(run.attempt.node_id)
            if ids and tuple(ids) != run.gpu_indices and all(i < gpus for i in ids):
                log.debug("job %s: Ray put it on GPU %s, not %s", run.job.id, ids, list(run.gpu_indices))
                run.gpu_indices = tuple(ids)
                self._dirty = True

    # ------------------------------------------------------------ placement

    def _schedule(self, now: float) -> None:
        if now - self.nodes.refreshed_at > NODE_REFRESH_SECONDS or not self.nodes.placeable:
            self._refresh_nodes(now)
        self.pending.sync(self.store)
        # Fair share's usage must follow every start and end, queue empty or not:
        # it charges what ran since the last call to what was running then.
        self._account(now)
        if not len(self.pending) or self.draining:
            return
        decision = self._decide(now)
        if decision.unschedulable and now - self.nodes.refreshed_at > NODE_FRESHNESS_SECONDS:
            # Unschedulable is final: judge it on a fresh view (a node may just have joined).
            self._refresh_nodes(now)
            decision = self._decide(now)
        self._preempt(decision.preempt, now)
        if decision.placements:  # start jobs first; the reasons of those left waiting go in the same transaction
            self._start(decision.placements, decision.waiting, now)
            self._account(now)
        else:
            reasons = self.pending.changed_reasons(decision.waiting)
            self.store.set_reasons(reasons)
            self.pending.remember(reasons)
        unschedulable = decision.unschedulable
        if unschedulable and any(d.gpu_memory for d in self.pending.demands.values()):
            # Card sizes come from NVML readings: until every GPU node has been read,
            # "no card is big enough" is not yet known.
            gpu_nodes = [n.node_id for n in self.nodes.known.values() if n.alive and n.resources.get("GPU", 0) > 0]
            if self.gpus.unread(gpu_nodes):
                unschedulable = {j: why for j, why in unschedulable.items() if not self.pending.demands[j].gpu_memory}
        if unschedulable:
            self.store.mark_unschedulable(unschedulable, now)

    def _stop_losers(self, now: float) -> None:
        """Early stopping (scheduler.early_stop), from the curves of every
        attempt of each early-stopping stage: stop the running jobs its rule
        says are losing (they end pruned) or, in pause mode, pause them at their
        rung; tell the others how far they are judged (a callable's report()
        waits at a rung for it); promote paused jobs that made the top of their
        rung, and give up on those that never will.  Freed shares go back to
        the pool as each stop completes."""
        stages = self.store.early_stopping()
        if not stages:
            self._curves.forget(set())
            self._cleared.clear()
            return
        mine = {r.job.id: r for r in self.attempts if r.stop is None}
        read: set[str] = set()
        notes: dict[int, str] = {}
        signals: dict[str | None, list[tuple[str, str, str]]] = collections.defaultdict(list)
        for (experiment_id, stage), config in stages.items():
            rule = early_stop.Rule.from_config(config)
            attempts = self.store.stage_run_dirs(experiment_id, stage)
            self._curves.update(attempts)
            curves: dict[int, list[early_stop.Point]] = {}
            resumed_at: dict[int, float] = {}
            running, paused = [], []
            for a in attempts:
                read.add(a.run_dir)
                points = early_stop.points(self._curves.records(a.run_dir), rule.metric)
                if not a.latest and points:  # an earlier attempt's part: rungs up to here were decided then
                    resumed_at[a.job_id] = max(resumed_at.get(a.job_id, 0.0), points[-1].step)
                curves.setdefault(a.job_id, []).extend(points)
                if a.latest and a.job_state == "running" and a.job_id in mine:
                    running.append(a.job_id)
                elif a.latest and a.job_state == "paused":
                    paused.append(a.job_id)
            settled = dict(resumed_at)  # the steps each job's rungs were decided up to
            for job_id in running:
                cleared = self._cleared.get(mine[job_id].attempt.run_dir)
                if cleared is not None:
                    settled[job_id] = max(settled.get(job_id, 0.0), cleared)
            verdicts = early_stop.judge(rule, curves, running, settled)
            for state, whys in ((AttemptState.PRUNED, verdicts.stop), (AttemptState.PAUSED, verdicts.pause)):
                for job_id, why in whys.items():
                    run = mine[job_id]
                    kind = "pruned" if state is AttemptState.PRUNED else "paused"
                    signals[run.attempt.node_id].append((run.attempt.run_dir, STOP_FILE, f"{kind} this job: {why}"))
                    self._ask_stop(run, state, now, detail=f"{kind}: {why}")
            for job_id, step in verdicts.cleared.items():
                run = mine[job_id]
                if self._cleared.get(run.attempt.run_dir) != step:
                    self._cleared[run.attempt.run_dir] = step
                    signals[run.attempt.node_id].append((run.attempt.run_dir, CLEARED_FILE, f"{step:g}"))
            if paused:
                idle = not self.store.stage_busy(experiment_id, stage)
                promote, give_up = early_stop.promotions(rule, curves, paused, idle)
                if promote:
                    self.store.promote(promote, now)
                if give_up:
                    self.store.give_up(give_up, now)
                # The scheduler's own commits do not move data_version: schedule the promoted now
                self._dirty |= bool(promote or give_up)
            position = early_stop.positions(curves)
            for job_id in running:
                if job_id in verdicts.stop or job_id in verdicts.pause:
                    continue
                note = early_stop.rung_of(rule, curves[job_id], position[job_id])
                if note is not None and self._notes.get(job_id) != note:
                    notes[job_id] = self._notes[job_id] = note
        for node_id, batch in signals.items():
            self.backend.signal_attempts(node_id, batch)
        if notes:
            self.store.set_running_notes(notes)
        self._curves.forget(read)
        for gone in self._notes.keys() - mine.keys():
            del self._notes[gone]
        for gone in self._cleared.keys() - {r.attempt.run_dir for r in mine.values()}:
            del self._cleared[gone]

    def _continue_searches(self, now: float) -> None:
        """Ask each search with room (fewer than ``parallel`` trials queued or
        running, fewer than ``samples`` asked) for its next trials, from its
        trials so far (scheduler.search), and queue them.  A failure is logged
        and retried on the next pass: the search's state is the database."""
        for experiment_id, stage, config, asked, active in self.store.open_searches():
            want = min(config["parallel"] - active, config["samples"] - asked)
            if want <= 0:
                continue
            try:
                from scheduler import search

                budget = search.budget_left(config, self.store.search_spent(experiment_id, stage, now))
                if budget is not None and budget[1] >= budget[2]:
                    log.info("the search of experiment %s, stage %s, spent its budget: %s", experiment_id, stage,
                             search.budget_text(*budget))
                    self.store.extend_search(experiment_id, -1, stage)  # closed: it asks for no more
                    continue

                names = [n for n, _ in search.objectives(config)] if config.get("objectives") else None
                history = [search.Trial(params, search.trial_state(state), value)
                           for params, state, value in self.store.trials(experiment_id, stage, names)]
                points = search.suggest(config, history, want)
                self.store.add_trials(experiment_id, stage, points, asked, now)
            except Exception:
                log.exception("asking the search of experiment %s, stage %s, for trials failed", experiment_id, stage)

    def _preempt(self, victims: dict[int, str], now: float) -> None:
        """One preemption at a time: while a victim is stopping or its GPU share
        drains, the room it makes is not yet visible, and the policy would pick
        a second victim for the same job."""
        if not victims or self.gpus.draining or any(
                r.stop is not None and r.stop.state is AttemptState.PREEMPTED for r in self.attempts):
            return
        for job_id, why in victims.items():
            run = next((r for r in self.attempts if r.job.id == job_id and r.stop is None), None)
            if run is not None:
                self._ask_stop(run, AttemptState.PREEMPTED, now, detail=f"preempted: {why}")

    def _decide(self, now: float) -> policy.Decision:
        durations = self._duration_book(now)
        if self._mix is None or now - self._mix_at >= DURATIONS_REFRESH_SECONDS:
            self._mix, self._mix_at = run_history.shape_mix(self.store, now, self.pending.index), now
        running = self._running_jobs(durations)  # once: both capacity views and the policy read it
        known = self.free_capacity(list(self.nodes.known.values()), running)
        return policy.decide(self.pending.index, self.free_capacity(running=running), known=known, running=running,
                             queues=self._queues, usage=self._usage.snapshot() if self._usage else None, now=now,
                             policy="labq", durations=durations, mix=self._mix)

    def _duration_book(self, now: float) -> policy.DurationBook:
        """The run times the policy predicts from, re-read from the store now and then
        (a read of the latest few thousand attempts; a minute-old book orders as well)."""
        if self._durations is None or now - self._durations_at >= DURATIONS_REFRESH_SECONDS:
            self._durations = run_history.duration_book(self.store, self.settings.scheduler.stretch,
                                                        self.settings.scheduler.reserve_after)
            self._durations_at = now
        return self._durations

    def _start(self, placements: list[policy.Placement], waiting: dict[int, str], now: float) -> None:
        """Start the policy's placements, each with the followers packed behind
        it (scheduler.packing), and write why the rest wait, in one transaction;
        then launch them."""
        packs = packing.plan_packs(placements, self.pending, self._short, self.store,
                                   slots=len(placements) + len(self.attempts.holding()),
                                   head=self._collect_node())
        rows = [(p.job_id, p.node_id, p.gpu_share, p.why) for p in placements]
        by_leader = {p.job_id: p for p in placements}
        rows += [(f, by_leader[lead].node_id, None) for lead, followers in packs.items() for f in followers]
        reasons = self.pending.changed_reasons(waiting, {f for followers in packs.values() for f in followers})
        home = self.settings.home_path
        started = {a.job_id: a for a in self.store.start_attempts(
            rows, lambda job_id, n: run_dir_for(home, job_id, n), now, reasons=reasons)}
        self.pending.remember(reasons)
        jobs = {j.id: j for j in self.store.jobs_by_ids(list(started))}
        for p in placements:
            # A leader cancelled since the policy looked is not started: its followers still are.
            members = [started[j] for j in [p.job_id, *packs.get(p.job_id, ())] if j in started]
            if len(members) == 1:
                run = self.launcher.launch(members[0], jobs[members[0].job_id], p, now)
                runs = [run] if run is not None else None
            else:
                runs = self.launcher.launch_pack(members, jobs, p, now) if members else None
            if runs is None:
                self._dirty = True
                continue
            self.attempts.add(runs)
            self.launched[len(runs)] += 1
        self.backend.flush()  # at once: what is recorded running should be running
        self.pending.forget(started)

    def _running_jobs(self, durations: policy.DurationBook | None = None) -> list[policy.RunningJob]:
        """What labq's attempts hold; with ``durations``, each with its predicted
        run time and the service its earlier attempts attained (for tiers)."""
        holding = list(self.attempts.holding())
        if durations is not None:
            unread = [r.job.id for r in holding if r.job.id not in self._served and r.attempt.number > 1]
            if unread:
                self._served.update(self.store.attained(unread))
            for gone in self._served.keys() - {r.job.id for r in holding}:
                del self._served[gone]
        served = self._served if durations is not None else {}
        stages = {(r.job.experiment_id, r.job.stage) for r in holding}
        if stages - self._checkpoints.keys():
            self._checkpoints.update(self.store.checkpointing(stages - self._checkpoints.keys()))
        for gone in self._checkpoints.keys() - stages:  # kept for what runs only, as _served
            del self._checkpoints[gone]
        out = []
        for r in holding:
            attained, preemptions = served.get(r.job.id, (0.0, 0))
            demand = run_history.demand_of_job(r.job)
            predicted = None if durations is None else durations.predict(demand)
            out.append(policy.RunningJob(
                job_id=r.job.id, user=r.job.user, queue=r.job.queue, cpu=r.job.cpu, gpu=r.share,
                memory=r.job.memory or 0, node_id=r.attempt.node_id or "", gpu_indices=r.gpu_indices,
                started_at=r.attempt.dispatched_at or 0.0, time_limit=r.job.timeout, priority=r.job.priority,
                custom=r.job.custom, predicted=predicted, attained=attained, preemptions=preemptions,
                checkpoints=self._checkpoints.get((r.job.experiment_id, r.job.stage), False),
                shape=demand.shape(), group=demand.group))
        return out

    def free_capacity(self, nodes_in: list | None = None,
                      running: list[policy.RunningJob] | None = None) -> list[policy.Node]:
        """Capacity from the nodes' totals minus what labq's running attempts
        (``running``: :meth:`_running_jobs`, when the caller has it already)
        and draining GPU shares hold.  Computed from labq's own books, not Ray's
        available resources, which lag behind just-launched tasks."""
        book = policy.CapacityBook(policy.node_of(n.node_id, n.resources, self.gpus.readings.get(n.node_id, ()))
                                   for n in (self.nodes.placeable if nodes_in is None else nodes_in))
        for run in self._running_jobs() if running is None else running:
            book.take(run)
        for d in self.gpus.draining.values():  # ended, but its processes may still hold GPU memory
            book.hold_gpus(d.node_id, d.gpu_indices, d.share)
        return book.nodes()

    def _account(self, now: float) -> None:
        """Advance decayed usage to ``now`` with what runs; on the first pass,
        seed it from the store's history so a restart forgets nobody's usage.
        Shares are of every node known, dead ones included (totals, not free)."""
        if not self.nodes.known:
            return
        capacity = policy.Capacity.of(policy.node_of(n.node_id, n.resources) for n in self.nodes.known.values())
        if self._usage is None:
            half_life = self.settings.scheduler.usage_half_life
            self._usage = policy.UsageBook(half_life, capacity)
            shapes = self.store.decayed_use(now - 10 * half_life, now, half_life)
            self._usage.seed(accounting.usage_of_shapes(shapes, capacity.dominant), now)
        self._usage.capacity = capacity
        self._usage.advance(now, self._running_jobs())

    def _estimate(self, now: float) -> None:
        """Write the estimated start of the pending jobs (scheduler.estimate) from
        what this loop holds: its pending view, what runs where, its nodes and
        its decayed usage, and each active job's outlook (predicted duration,
        tier, a running job's time left).  Only durations come from the store.  An estimate is a nicety: a
        failure is logged, never fatal to the loop."""
        try:
            book = self._duration_book(now)
            running = self._running_jobs(book)
            holding = {r.job.id: r.job for r in self.attempts.holding()}
            placed = [(r, run_history.demand_of_job(holding[r.job_id])) for r in running]
            if not len(self.pending):
                if self._estimated_any or placed:
                    self.store.save_estimates({}, now, run_history.outlooks(book, (), placed, self._queues, now))
                    self._estimated_any = bool(placed)
                return
            started = {r.job.id for r in self.attempts}  # placed this pass: the pending view drops them on the next
            fed = estimate.first_of_each_class((d for d in self.pending.demands.values() if d.job_id not in started),
                                               estimate.DEFAULT_LIMIT)
            timeouts = {d.job_id: d.time_limit for d in fed} | {r.job_id: r.time_limit for r in running}
            durations = estimate.durations_from(self.store, timeouts)
            nodes = {n.node_id: policy.node_of(n.node_id, n.resources, self.gpus.readings.get(n.node_id, ()))
                     for n in self.nodes.known.values()}
            starts = estimate.estimate_starts(
                fed, running, [nodes[n.node_id] for n in self.nodes.placeable], known=list(nodes.values()),
                durations=durations, now=now, queues=self._queues,
                usage=self._usage.snapshot() if self._usage else None, half_life=self.settings.scheduler.usage_half_life,
                book=book)
            self.store.save_estimates(starts, now, run_history.outlooks(book, fed, placed, self._queues, now))
            self._estimated_any = True
        except Exception:
            log.exception("estimating start times failed; `labq queue` shows none until the next try")

    # ------------------------------------------------------------ nodes

    def _refresh_nodes(self, now: float) -> None:
        self.nodes.refresh(now)
        self._save_node_snapshot(now)

    def _describe_node(self, node_id: str | None, now: float) -> str:
        """'ab12cd34 at 10.0.0.11, now dead' — refreshed, since a lost attempt is
        often the first sign that its node died."""
        if node_id and now - self.nodes.refreshed_at > NODE_FRESHNESS_SECONDS:  # once per pass, not per attempt
            try:
                self._refresh_nodes(now)
            except Exception:  # Ray itself may be the thing that is down
                pass
        return self.nodes.describe(node_id)

    def _collect_node(self) -> str | None:
        """The head's node id when run dirs must be carried back to it."""
        return self.nodes.head() if self.settings.storage == "collect" else None

    def _save_node_snapshot(self, now: float) -> None:
        self.store.save_nodes(node_report.snapshots(self.nodes.known.values(), self.free_capacity(), self.attempts,
                                                    self.gpus, now))

    # ------------------------------------------------------------ restart and stop

    def reconcile(self, now: float) -> Reconciled:
        """Take over from a scheduler that stopped or died.  The attempts it
        launched are owned on their nodes, not by it (workers.owner), so the
        store's running attempts that an owner still holds are adopted: they
        go on, hold their share, and end, are cancelled or time out here as if
        launched here.  The rest truly died with their owner, node or Ray: a
        result the worker managed to write is recorded, else, once whatever
        is left of its command is ended on its node, the attempt is marked
        lost and its job requeued (not charged to its retries)."""
        running = {a.run_dir: (a, j) for a, j in self.store.running_attempts() if a.id not in self.attempts}
        by_number = {(j.id, a.number): (a, j) for a, j in running.values()}
        adopted = 0
        gone: list = []  # handles of tasks whose end is already recorded
        for task in self.backend.adopt():
            if not self._is_ours(task.held.key):
                continue  # another home's (an owner may serve several in tests): not ours to touch
            members = [by_number.get(pair) for pair in task.held.attempts] if task.held.key in running else [None]
            if not all(members):
                # Its end was recorded before the owner was told to forget it (or, for a
                # pack, part of it was): stop what may still run of it, and let go.
                if not task.held.ended:
                    self.backend.cancel(task.handle, force=True)
                gone.append(task.handle)
                for member in members:
                    if member is not None:
                        running.pop(member[0].run_dir, None)
                        self.store.finish_attempt(AttemptEnd(
                            member[0].id, AttemptState.LOST, EndCause.SCHEDULER_GONE,
                            error="its pack was only partly known after the scheduler restarted"), now)
                continue
            pack = Pack(task.handle, tuple(a.id for a, _ in members)) if task.held.pack else None
            runs = [Running(attempt=a, job=j, handle=task.handle, pack=pack,
                            gpu_indices=task.held.gpu_indices if i == 0 else ())
                    for i, (a, j) in enumerate(members)]
            self.attempts.add(runs)
            for a, _ in members:
                running.pop(a.run_dir)
            adopted += len(runs)
        if gone:
            self.backend.release(gone)
        lost = 0
        alive = {n.node_id for n in self.backend.nodes() if n.alive}
        for attempt, _job in running.values():
            saved = self.backend.trace(attempt.node_id, attempt.run_dir).saved
            if saved is not None:
                end = saved_end(attempt.id, saved)
            else:
                # A command's process group may outlive its worker: end it before the retry
                # starts.  A node this Ray does not know (a local Ray that was restarted, say)
                # is asked of here: the group is checked to be the attempt's before it is ended.
                self.backend.end_process_group(attempt.node_id if attempt.node_id in alive else None,
                                               attempt.run_dir)
                end = AttemptEnd(attempt.id, AttemptState.LOST, EndCause.OWNER_DIED, error=(
                    "lost while the scheduler was restarting: no labq owner held it any more (the owner on its "
                    "node, the node or Ray itself went down)"))
                end.error = f"{end.error} (on node {self.nodes.describe(attempt.node_id)})"
            self.store.finish_attempt(end, now)
            lost += 1
        if adopted or lost:
            self._dirty = True
        return Reconciled(adopted=adopted, lost=lost)

    def _is_ours(self, run_dir: str) -> bool:
        """Whether a run dir is under this home's runs (an owner may serve several homes in tests)."""
        return str(run_dir).startswith(str(self.settings.home_path / "runs") + "/")

    def detach(self, now: float) -> int:
        """On a stop that leaves running attempts running: record what already
        ended, and let go of the rest, which the next scheduler adopts.
        Returns how many are left running."""
        try:
            self._record_ends(self.backend.ready(self.attempts.handles()), now)
        except Exception:  # Ray or the disk going away: the next scheduler records them
            log.exception("recording the last ends before stopping failed")
        left = len(self.attempts)
        self.attempts.clear()
        return left

    def release_all(self, now: float, why: str) -> None:
        """On a clean stop: record what already ended, then end what this
        scheduler runs and requeue it, so nothing stays 'running' without a task
        behind it.  A job that finished (a packed one, say, whose pack runs on)
        keeps its result instead of running again."""
        try:
            self._record_ends(self.backend.ready(self.attempts.handles()), now)
        except Exception:  # Ray or the disk going away: what is left is requeued below
            log.exception("recording the last ends before stopping failed")
        handles = self.attempts.handles()
        for handle in handles:
            self.backend.cancel(handle, force=True)
        for end in self._release_ends(why, now):
            self.store.finish_attempt(end, now)
        self.backend.release(handles)
        self.attempts.clear()

    def _release_ends(self, why: str, now: float) -> Iterator[AttemptEnd]:
        for run in self.attempts:
            attempt = run.attempt
            trace = self.backend.trace(attempt.node_id, attempt.run_dir)
            if trace.saved is not None:
                yield saved_end(attempt.id, trace.saved)
            elif run.pack and not run.holds and not trace.started:  # queued, never started
                yield AttemptEnd(attempt.id, AttemptState.LOST, EndCause.NOT_STARTED, error=f"not started: {why}",
                                 slot_from=now)
            else:
                self.backend.end_process_group(attempt.node_id, attempt.run_dir)
                yield AttemptEnd(attempt.id, AttemptState.LOST, EndCause.SCHEDULER_GONE, error=why)


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
        if scheduler.draining and not len(scheduler.attempts):
            log.info("drained: nothing runs any more")
            return
        if idle_timeout:
            busy = bool(len(scheduler.attempts)) or scheduler.store.count_active() > 0
            idle_since = None if busy else (idle_since or now)
            if idle_since is not None and now - idle_since > idle_timeout:
                log.info("idle for %.0fs: exiting", idle_timeout)
                return
        scheduler.wait_for_events(poll, now_fn)
