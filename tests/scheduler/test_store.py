"""The durable queue, on a real SQLite file in tmp_path."""

from __future__ import annotations

import getpass
import multiprocessing
import os
import sqlite3
import stat
import textwrap
import threading
import time
from pathlib import Path

import pytest

from contract.attempt import WorkerResult
from scheduler.errors import IllegalTransition, StoreError, UnknownIdError
from scheduler.records import AttemptEnd, EndCause
from scheduler.spec import load_spec
from scheduler.states import AttemptState, JobState
from scheduler.store import Store
from scheduler.sweep import plan_jobs

NOW = 1_700_000_000.0

CHAIN = """
experiment: chain
stages:
  - name: prep
    command: "echo prep"
    retries: 1
  - name: train
    command: "echo {lr}"
    after: [prep]
    sweep:
      grid:
        lr: [0.1, 0.2]
  - name: eval
    command: "echo eval"
    after: [train]
"""

JOIN = """
experiment: join
stages:
  - name: a
    command: "echo a"
  - name: b
    command: "echo b"
  - name: c
    command: "echo c"
    after: [a, b]
"""


def _submit_yaml(store: Store, spec_file: Path, now: float = NOW):
    """What scheduler.api.submit does, minus the code snapshot (package=None)."""
    spec, raw = load_spec(spec_file)
    drafts = plan_jobs(spec, str(spec_file))
    experiment_id, ids = store.submit(
        name=spec.experiment, user=getpass.getuser(), queue=spec.queue, priority=spec.priority,
        spec_path=str(spec_file.resolve()), spec=raw, package=None, metric=spec.metric, mode=spec.mode,
        drafts=drafts, stages={s.name: s for s in spec.stages}, now=now)
    return experiment_id, ids, drafts


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home):
    s = Store(home)
    yield s
    s.close()


@pytest.fixture
def submit(store, tmp_path):
    counter = iter(range(1000))

    def _submit(text: str, now: float = NOW):
        path = tmp_path / f"spec{next(counter)}.yaml"
        path.write_text(textwrap.dedent(text))
        return _submit_yaml(store, path, now)

    return _submit


def run_dir_for(job_id, number):
    return f"/runs/{job_id}/{number}"


def start(store: Store, *job_ids: int, now: float = NOW + 1, node: str = "node-1"):
    return store.start_attempts([(j, node) for j in job_ids], run_dir_for, now)


# What ended an attempt, when a test does not say: the usual cause of each end.
CAUSE_OF = {AttemptState.SUCCEEDED: EndCause.RETURNED, AttemptState.FAILED: EndCause.RETURNED,
            AttemptState.OUT_OF_MEMORY: EndCause.HOST_OOM, AttemptState.TIMED_OUT: EndCause.TIMED_OUT,
            AttemptState.CANCELLED: EndCause.CANCELLED, AttemptState.PREEMPTED: EndCause.PREEMPTED,
            AttemptState.LOST: EndCause.WORKER_DIED}


def end(attempt_id: int, outcome: AttemptState, cause: EndCause | None = None, *, result: dict | None = None,
        error: str | None = None, slot_from: float | None = None) -> AttemptEnd:
    """An attempt's end as the loop hands it to the store; ``result`` as a
    worker's result.json has it."""
    return AttemptEnd(attempt_id=attempt_id, state=outcome, cause=cause or CAUSE_OF[outcome],
                      result=None if result is None else WorkerResult.from_json({"outcome": outcome.value, **result}),
                      error=error, slot_from=slot_from)


def state(store: Store, job_id: int) -> JobState:
    return store.job(job_id).state


def ids_by_stage(store: Store, experiment_id: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for job in store.jobs_of_experiment(experiment_id):
        out.setdefault(job.stage, []).append(job.id)
    return out


# ---------------------------------------------------------------- opening

def test_fresh_database_permissions_and_wal(home):
    s = Store(home)
    try:
        assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(home / "labq.db").st_mode) == 0o600
        for side in ("labq.db-wal", "labq.db-shm"):  # they hold the same data
            if (home / side).exists():
                assert stat.S_IMODE(os.stat(home / side).st_mode) & 0o077 == 0
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        s.close()
    with sqlite3.connect(home / "labq.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert dict(raw.execute("SELECT key, value FROM meta").fetchall())["app"] == "labq"


def test_reopening_keeps_the_data(home, tmp_path):
    s = Store(home)
    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent(JOIN))
    experiment_id, ids, _ = _submit_yaml(s, spec)
    s.close()
    s2 = Store(home)
    try:
        assert [j.id for j in s2.jobs_of_experiment(experiment_id)] == ids
        assert s2.meta("app") == "labq"
    finally:
        s2.close()


def test_foreign_sqlite_database_raises_and_is_not_modified(home):
    home.mkdir()
    db = home / "labq.db"
    with sqlite3.connect(db) as other:
        other.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
        other.execute("INSERT INTO photos (path) VALUES ('a.jpg')")
    other.close()
    with pytest.raises(StoreError, match="not labq's"):
        Store(home)
    with sqlite3.connect(db) as other:
        assert other.execute("SELECT path FROM photos").fetchall() == [("a.jpg",)]
        assert {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"photos"}
    other.close()


def test_foreign_sqlite_database_bytes_are_unchanged(home):
    home.mkdir()
    db = home / "labq.db"
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    other.execute("INSERT INTO photos (path) VALUES ('a.jpg')")
    other.commit()
    other.close()
    before = db.read_bytes()
    with pytest.raises(StoreError):
        Store(home)
    assert db.read_bytes() == before


def test_garbage_file_raises_and_is_not_modified(home):
    home.mkdir()
    db = home / "labq.db"
    garbage = b"this is not an sqlite database at all\n" * 200
    db.write_bytes(garbage)
    with pytest.raises(StoreError, match="not a usable labq database"):
        Store(home)
    assert db.read_bytes() == garbage


def test_directory_in_place_of_the_db_raises(home):
    (home / "labq.db").mkdir(parents=True)
    with pytest.raises(StoreError, match="not a file"):
        Store(home)


def test_newer_schema_is_refused(home):
    Store(home).close()
    with sqlite3.connect(home / "labq.db") as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(StoreError, match="newer labq"):
        Store(home)


# ---------------------------------------------------------------- submit

def test_submit_stores_experiment_jobs_and_events(store, submit):
    experiment_id, ids, drafts = submit(CHAIN)
    # prep -> train x2 (swept) -> eval x2 (one per train job)
    assert len(ids) == len(drafts) == 5 and len(set(ids)) == 5

    exp = store.experiment(experiment_id)
    assert exp.name == "chain" and exp.queue == "default" and exp.package is None
    assert exp.spec["experiment"] == "chain" and exp.submitted_at == NOW
    assert store.experiment("chain").id == experiment_id
    assert store.experiment_names("chain") == [experiment_id]

    jobs = store.jobs_of_experiment(experiment_id)
    assert [j.id for j in jobs] == ids
    assert [j.stage for j in jobs] == ["prep", "train", "train", "eval", "eval"]
    assert [j.state for j in jobs] == [JobState.PENDING] + [JobState.BLOCKED] * 4
    assert jobs[0].reason is None and jobs[1].reason.startswith("waiting for")
    assert [j.params for j in jobs[1:3]] == [{"lr": 0.1}, {"lr": 0.2}]
    assert jobs[1].swept == {"lr": 0.1}
    assert jobs[0].target_kind == "command" and jobs[1].target == "echo {lr}"
    assert jobs[0].retries == 1 and jobs[1].retries == 0
    assert jobs[0].cpu == 1.0 and jobs[0].gpu == 0.0 and jobs[0].custom == {}
    assert all(j.attempts == 0 and not j.cancel_requested for j in jobs)

    prep, t1, t2, e1, e2 = ids
    assert store.job(prep).depends_on == []
    assert store.job(t1).depends_on == [prep] and store.job(t2).depends_on == [prep]
    assert store.job(e1).depends_on == [t1] and store.job(e2).depends_on == [t2]

    for job_id, expected in zip(ids, ["pending"] + ["blocked"] * 4):
        events = store.events(job_id)
        assert [(e.kind, e.message) for e in events] == [("submitted", f"submitted as {expected}")]
        assert events[0].ts == NOW
    assert store.state_counts(experiment_id) == {"pending": 1, "blocked": 4}
    assert store.count_active() == 5
    assert [j.id for j in store.pending_jobs()] == [prep]


def test_submit_resources_and_callable_target(store, submit):
    experiment_id, ids, _ = submit("""
        experiment: res
        priority: 3
        stages:
          - name: fit
            run: "json:dumps"
            resources: {cpu: 2, gpu: 0.5, memory: 2GiB, custom: {license: 1}}
            timeout: 90
    """)
    job = store.job(ids[0])
    assert job.target_kind == "callable" and job.target == "json:dumps"
    assert (job.cpu, job.gpu, job.memory, job.custom) == (2.0, 0.5, 2 * 2**30, {"license": 1.0})
    assert job.timeout == 90 and job.priority == 3


def test_unknown_ids_raise(store):
    with pytest.raises(UnknownIdError):
        store.job(12345)
    with pytest.raises(UnknownIdError):
        store.experiment(999)
    with pytest.raises(UnknownIdError):
        store.experiment("nope")
    with pytest.raises(UnknownIdError):
        store.finish_attempt(end(4242, AttemptState.SUCCEEDED), NOW)


# ---------------------------------------------------------------- attempts

def test_start_attempts_moves_pending_to_running_once(store, submit):
    _, ids, _ = submit(CHAIN)
    prep, t1 = ids[0], ids[1]
    started = start(store, prep, t1)  # t1 is blocked: skipped
    assert len(started) == 1
    a = started[0]
    assert (a.job_id, a.number, a.state, a.run_dir, a.node_id) == (prep, 1, AttemptState.RUNNING, f"/runs/{prep}/1",
                                                                     "node-1")
    job = store.job(prep)
    assert job.state is JobState.RUNNING and job.attempts == 1 and job.started_at == NOW + 1
    assert job.node_id == "node-1"
    assert state(store, t1) is JobState.BLOCKED

    assert start(store, prep, now=NOW + 2) == []  # not dispatched twice
    assert [x.number for x in store.attempts(prep)] == [1]
    assert store.job(prep).attempts == 1
    assert [(att.id, job.id) for att, job in store.running_attempts()] == [(a.id, prep)]
    assert [e.message for e in store.events(prep)][-1] == "pending -> running: attempt 1"


def test_success_stores_result_once_and_unblocks_dependents(store, submit):
    experiment_id, ids, _ = submit(CHAIN)
    prep, t1, t2, e1, e2 = ids
    (a,) = start(store, prep)
    result = {"metrics": {"rows": 150}, "artifacts": ["data.npz"], "exit_code": 0, "node_id": "node-9",
              "gpu_ids": ["0"], "started_at": NOW + 1.5, "peak_rss": 1234}
    assert store.finish_attempt(end(a.id, AttemptState.SUCCEEDED, result=result), NOW + 5) is JobState.SUCCEEDED
    job = store.job(prep)
    assert job.state is JobState.SUCCEEDED and job.ended_at == NOW + 5 and job.reason is None
    assert job.node_id == "node-9" and job.gpu_ids == ["0"]
    assert state(store, t1) is JobState.PENDING and state(store, t2) is JobState.PENDING
    assert state(store, e1) is JobState.BLOCKED and state(store, e2) is JobState.BLOCKED

    rows = store._conn.execute("SELECT job_id, metrics FROM results").fetchall()
    assert [(r["job_id"], r["metrics"]) for r in rows] == [(prep, '{"rows":150}')]

    (att,) = store.attempts(prep)
    assert att.state is AttemptState.SUCCEEDED and att.metrics == {"rows": 150} and att.artifacts == ["data.npz"]
    assert att.exit_code == 0 and att.peak_rss == 1234 and att.started_at == NOW + 1.5 and att.ended_at == NOW + 5
    assert att.node_id == "node-9" and att.gpu_ids == ["0"]

    # Each eval job waits for its own train job only.
    (b1, b2) = start(store, t1, t2)
    store.finish_attempt(end(b1.id, AttemptState.SUCCEEDED, result={"metrics": {"acc": 0.9}}), NOW + 6)
    assert state(store, e1) is JobState.PENDING and state(store, e2) is JobState.BLOCKED
    assert any(e.message == f"blocked -> pending: upstream job {t1} succeeded" for e in store.events(e1))
    store.finish_attempt(end(b2.id, AttemptState.SUCCEEDED, result={"metrics": {"acc": 0.8}}), NOW + 7)
    assert state(store, e2) is JobState.PENDING
    assert store._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3


def test_dependent_with_two_upstream_stages_waits_for_all(store, submit):
    experiment_id, ids, _ = submit(JOIN)
    stages = ids_by_stage(store, experiment_id)
    (a,), (b,), (c,) = stages["a"], stages["b"], stages["c"]
    assert store.job(c).depends_on == sorted([a, b])
    att_a, att_b = start(store, a, b)
    store.finish_attempt(end(att_a.id, AttemptState.SUCCEEDED), NOW + 2)
    assert state(store, c) is JobState.BLOCKED
    store.finish_attempt(end(att_b.id, AttemptState.SUCCEEDED), NOW + 3)
    assert state(store, c) is JobState.PENDING


def test_one_upstream_failing_fails_a_join(store, submit):
    experiment_id, ids, _ = submit(JOIN)
    stages = ids_by_stage(store, experiment_id)
    (a,), (b,), (c,) = stages["a"], stages["b"], stages["c"]
    att_a, att_b = start(store, a, b)
    store.finish_attempt(end(att_a.id, AttemptState.SUCCEEDED), NOW + 2)
    store.finish_attempt(end(att_b.id, AttemptState.FAILED, error="boom"), NOW + 3)
    assert state(store, b) is JobState.FAILED
    assert state(store, c) is JobState.UPSTREAM_FAILED


def test_failure_retries_then_fails_downstream_transitively(store, submit):
    experiment_id, ids, _ = submit(CHAIN)
    prep, t1, t2, e1, e2 = ids
    (a1,) = start(store, prep)
    error = "Traceback (most recent call last):\n  ...\nValueError: bad rows\n"
    target = store.finish_attempt(end(a1.id, AttemptState.FAILED, error=error), NOW + 2)
    assert target is JobState.PENDING
    job = store.job(prep)
    assert job.state is JobState.PENDING and job.attempts == 1
    assert job.reason == "requeued after attempt 1 failed"
    assert job.ended_at is None
    assert [state(store, j) for j in (t1, t2, e1, e2)] == [JobState.BLOCKED] * 4

    (a2,) = start(store, prep, now=NOW + 3)
    assert a2.number == 2 and a2.run_dir == f"/runs/{prep}/2"
    assert store.finish_attempt(end(a2.id, AttemptState.FAILED, error="ValueError: bad rows"),
                                NOW + 4) is JobState.FAILED
    job = store.job(prep)
    assert job.state is JobState.FAILED and job.attempts == 2 and job.reason == "ValueError: bad rows"
    assert [x.state for x in store.attempts(prep)] == [AttemptState.FAILED, AttemptState.FAILED]
    assert store.attempts(prep)[0].error.startswith("Traceback")
    for j in (t1, t2, e1, e2):  # transitively, through the train stage
        assert state(store, j) is JobState.UPSTREAM_FAILED
        assert store.job(j).ended_at == NOW + 4
    assert f"upstream job {prep} (prep) ended failed" == store.job(t1).reason
    assert store.job(e1).reason == f"upstream job {t1} (train) ended upstream_failed"
    assert store.count_active() == 0


def test_exhausting_no_retries_fails_at_once(store, submit):
    _, ids, _ = submit("""
        experiment: once
        stages:
          - name: s
            command: "false"
    """)
    (a,) = start(store, ids[0])
    assert store.finish_attempt(end(a.id, AttemptState.OUT_OF_MEMORY), NOW + 2) is JobState.FAILED


def test_timed_out_is_not_retried(store, submit):
    _, ids, _ = submit(CHAIN)
    (a,) = start(store, ids[0])  # prep has retries: 1
    assert store.finish_attempt(end(a.id, AttemptState.TIMED_OUT), NOW + 2) is JobState.TIMED_OUT
    assert state(store, ids[1]) is JobState.UPSTREAM_FAILED


def test_lost_with_free_retry_requeues_without_retries(store, submit):
    _, ids, _ = submit(JOIN)  # retries: 0 everywhere
    a = ids[0]
    (att,) = start(store, a)
    assert store.finish_attempt(end(att.id, AttemptState.LOST, EndCause.SCHEDULER_GONE, error="scheduler restarted"),
                                NOW + 2) is JobState.PENDING
    job = store.job(a)
    assert job.state is JobState.PENDING and job.reason == "requeued after attempt 1 lost"
    (att2,) = start(store, a, now=NOW + 3)
    assert att2.number == 2
    # A loss that may be the job's own doing (its worker died), with no retries left, is a failure.
    assert store.finish_attempt(end(att2.id, AttemptState.LOST, error="node died"), NOW + 4) is JobState.FAILED


def test_free_retry_does_not_use_up_the_retry_budget(store, submit):
    _, ids, _ = submit(CHAIN)
    prep = ids[0]  # retries: 1
    (a1,) = start(store, prep)
    store.finish_attempt(end(a1.id, AttemptState.LOST, EndCause.NODE_DIED), NOW + 2)
    (a2,) = start(store, prep, now=NOW + 3)
    assert store.finish_attempt(end(a2.id, AttemptState.FAILED, error="boom"), NOW + 4) is JobState.PENDING


def test_free_retries_are_capped_so_a_job_that_keeps_killing_its_node_ends(store, submit):
    from scheduler.endings import MAX_FREE_RETRIES
    _, ids, _ = submit(JOIN)  # retries: 0
    job = ids[0]
    for n in range(MAX_FREE_RETRIES):
        (att,) = start(store, job, now=NOW + 2 * n)
        assert store.finish_attempt(end(att.id, AttemptState.LOST, EndCause.NODE_DIED, error="NodeDiedError"),
                                    NOW + 2 * n + 1) is JobState.PENDING
    (att,) = start(store, job, now=NOW + 100)
    assert store.finish_attempt(end(att.id, AttemptState.LOST, EndCause.NODE_DIED, error="NodeDiedError"),
                                NOW + 101) is JobState.FAILED


def test_finish_attempt_is_idempotent(store, submit):
    experiment_id, ids, _ = submit(CHAIN)
    prep = ids[0]
    (a,) = start(store, prep)
    assert store.finish_attempt(end(a.id, AttemptState.SUCCEEDED, result={"metrics": {"x": 1}}), NOW + 2) \
        is JobState.SUCCEEDED
    snapshot = (store.job(prep), store.attempts(prep), store.events(prep),
                [store.job(j) for j in ids], store._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0],
                store._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    # Called again, even with another outcome and result: nothing changes.
    assert store.finish_attempt(end(a.id, AttemptState.FAILED, result={"metrics": {"x": 2}}, error="late"),
                                NOW + 9) is JobState.SUCCEEDED
    assert store.finish_attempt(end(a.id, AttemptState.SUCCEEDED), NOW + 9) is JobState.SUCCEEDED
    again = (store.job(prep), store.attempts(prep), store.events(prep),
             [store.job(j) for j in ids], store._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0],
             store._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    assert again == snapshot
    assert store.final_results(experiment_id)[prep][1] == {"x": 1}


def test_failed_attempt_finished_twice_does_not_consume_a_retry(store, submit):
    _, ids, _ = submit(CHAIN)
    prep = ids[0]
    (a,) = start(store, prep)
    store.finish_attempt(end(a.id, AttemptState.FAILED, error="x"), NOW + 2)
    store.finish_attempt(end(a.id, AttemptState.FAILED, error="x"), NOW + 3)
    job = store.job(prep)
    assert job.state is JobState.PENDING and job.attempts == 1
    assert len(store.attempts(prep)) == 1


# ---------------------------------------------------------------- cancel

def test_cancel_pending_and_blocked(store, submit):
    _, ids, _ = submit(CHAIN)
    prep, t1, t2, e1, e2 = ids
    done = store.cancel([t1], NOW + 1)
    assert done == {"cancelled": [t1], "stopping": [], "already_ended": []}
    assert state(store, t1) is JobState.CANCELLED and store.job(t1).ended_at == NOW + 1
    assert state(store, e1) is JobState.UPSTREAM_FAILED
    assert state(store, t2) is JobState.BLOCKED and state(store, e2) is JobState.BLOCKED
    assert state(store, prep) is JobState.PENDING

    done = store.cancel([prep], NOW + 2)
    assert done["cancelled"] == [prep]
    assert state(store, prep) is JobState.CANCELLED
    assert state(store, t2) is JobState.UPSTREAM_FAILED and state(store, e2) is JobState.UPSTREAM_FAILED
    assert start(store, prep) == []


def test_cancel_running_flags_it(store, submit):
    _, ids, _ = submit(CHAIN)
    prep, t1 = ids[0], ids[1]
    (a,) = start(store, prep)
    done = store.cancel([prep], NOW + 2)
    assert done == {"cancelled": [], "stopping": [prep], "already_ended": []}
    job = store.job(prep)
    assert job.state is JobState.RUNNING and job.cancel_requested
    assert store.cancel_requested() == {prep}
    assert store.events(prep)[-1].kind == "cancel"
    # The worker then dies from the cancel: recorded as cancelled, not failed or retried.
    assert store.finish_attempt(end(a.id, AttemptState.FAILED, error="killed"), NOW + 3) is JobState.CANCELLED
    assert store.attempts(prep)[0].state is AttemptState.CANCELLED
    assert state(store, t1) is JobState.UPSTREAM_FAILED
    assert store.cancel_requested() == set()


def test_cancel_requested_lost_attempt_is_not_requeued(store, submit):
    _, ids, _ = submit(CHAIN)
    (a,) = start(store, ids[0])
    store.cancel([ids[0]], NOW + 2)
    assert store.finish_attempt(end(a.id, AttemptState.LOST, EndCause.NODE_DIED), NOW + 3) is JobState.CANCELLED


def test_cancel_requested_out_of_memory_attempt_is_not_requeued(store, submit):
    _, ids, _ = submit(CHAIN)
    prep = ids[0]  # retries: 1
    (a,) = start(store, prep)
    store.cancel([prep], NOW + 2)
    store.finish_attempt(end(a.id, AttemptState.OUT_OF_MEMORY), NOW + 3)
    assert state(store, prep) is JobState.CANCELLED


def test_cancel_finished_and_unknown(store, submit):
    _, ids, _ = submit(JOIN)
    (a,) = start(store, ids[0])
    store.finish_attempt(end(a.id, AttemptState.SUCCEEDED), NOW + 2)
    events_before = len(store.events(ids[0]))
    assert store.cancel([ids[0]], NOW + 3) == {"cancelled": [], "stopping": [], "already_ended": [ids[0]]}
    assert state(store, ids[0]) is JobState.SUCCEEDED
    assert len(store.events(ids[0])) == events_before
    with pytest.raises(UnknownIdError):
        store.cancel([99999], NOW)


def test_cancel_with_an_unknown_id_changes_nothing(store, submit):
    _, ids, _ = submit(JOIN)
    with pytest.raises(UnknownIdError):
        store.cancel([ids[0], 99999], NOW)
    assert state(store, ids[0]) is JobState.PENDING  # the transaction rolled back


# ---------------------------------------------------------------- illegal transitions, unschedulable

def test_illegal_transition_raises_and_rolls_back(store, submit):
    _, ids, _ = submit(JOIN)
    a = ids[0]
    (att,) = start(store, a)
    store.finish_attempt(end(att.id, AttemptState.SUCCEEDED), NOW + 2)
    events_before = len(store.events(a))
    with pytest.raises(IllegalTransition, match="succeeded -> running"):
        with store._tx() as cur:
            store._move(cur, a, JobState.RUNNING, NOW + 3, "again")
    assert state(store, a) is JobState.SUCCEEDED
    assert len(store.events(a)) == events_before
    with pytest.raises(IllegalTransition):
        with store._tx() as cur:
            store._move(cur, ids[2], JobState.RUNNING, NOW + 3, "blocked cannot run")
    with pytest.raises(UnknownIdError):
        with store._tx() as cur:
            store._move(cur, 99999, JobState.RUNNING, NOW + 3, "")


def test_mark_unschedulable_fails_dependents(store, submit):
    _, ids, _ = submit(CHAIN)
    prep, *downstream = ids
    store.mark_unschedulable({prep: "needs 64 cpu (node has 4): more than the node has"}, NOW + 1)
    job = store.job(prep)
    assert job.state is JobState.UNSCHEDULABLE and job.reason.startswith("needs 64 cpu")
    assert [state(store, j) for j in downstream] == [JobState.UPSTREAM_FAILED] * 4
    # Only pending jobs are touched.
    store.mark_unschedulable({prep: "again"}, NOW + 2)
    assert store.job(prep).reason.startswith("needs 64 cpu")


def test_set_reasons_only_touches_pending_jobs(store, submit):
    _, ids, _ = submit(CHAIN)
    store.set_reasons({ids[0]: "needs 2 cpu", ids[1]: "nope"})
    assert store.job(ids[0]).reason == "needs 2 cpu"
    assert store.job(ids[1]).reason.startswith("waiting for")  # not "nope"


# ---------------------------------------------------------------- reads

def test_final_results_attempts_and_events_read_back(store, submit):
    experiment_id, ids, _ = submit(CHAIN)
    prep, t1, t2, e1, e2 = ids
    (a1,) = start(store, prep)
    store.finish_attempt(end(a1.id, AttemptState.FAILED, error="flaky"), NOW + 2)
    (a2,) = start(store, prep, now=NOW + 3, node="node-2")
    store.finish_attempt(end(a2.id, AttemptState.SUCCEEDED, result={"metrics": {"rows": 10}}), NOW + 4)
    (b1,) = start(store, t1, now=NOW + 5)
    store.finish_attempt(end(b1.id, AttemptState.SUCCEEDED,
                             result={"metrics": {"acc": 0.75, "loss": 0.5}, "artifacts": ["model.pt"]}), NOW + 6)

    finals = store.final_results(experiment_id)
    assert set(finals) == {prep, t1}  # t2 and eval never ran
    att, metrics = finals[prep]
    assert att.id == a2.id and att.number == 2 and att.node_id == "node-2" and metrics == {"rows": 10}
    att, metrics = finals[t1]
    assert metrics == {"acc": 0.75, "loss": 0.5} and att.artifacts == ["model.pt"]

    attempts = store.attempts(prep)
    assert [(x.number, x.state, x.error) for x in attempts] == [
        (1, AttemptState.FAILED, "flaky"), (2, AttemptState.SUCCEEDED, None)]
    assert attempts[0].metrics == {} and attempts[1].metrics == {"rows": 10}

    events = store.events(prep)
    assert [e.message for e in events] == [
        "submitted as pending",
        "pending -> running: attempt 1",
        "running -> pending: attempt 1 failed: flaky",
        "pending -> running: attempt 2",
        "running -> succeeded: attempt 2 succeeded",
    ]
    assert [e.attempt_id for e in events] == [None, a1.id, a1.id, a2.id, a2.id]
    assert [e.ts for e in events] == [NOW, NOW + 1, NOW + 2, NOW + 3, NOW + 4]
    assert store.events(t1)[-1].message.startswith("running -> succeeded")
    assert any(e.message == f"blocked -> pending: upstream job {prep} succeeded" for e in store.events(t2))

    ctx = store.launch_context(prep)
    assert ctx["previous_run_dir"] == f"/runs/{prep}/1" and ctx["package"] is None
    e1_inputs = store.launch_context(e1)["inputs"]
    assert [(i["job_id"], i["run_dir"], i["metrics"]) for i in e1_inputs] == [
        (t1, f"/runs/{t1}/1", {"acc": 0.75, "loss": 0.5})]
    assert store.launch_context(e2)["inputs"] == []  # t2 never ran
    inputs = store.launch_context(t1)["inputs"]
    assert [(i["job_id"], i["metrics"]) for i in inputs] == [(prep, {"rows": 10})]


def test_active_jobs_order_and_data_version(store, submit):
    _, ids, _ = submit(CHAIN)
    prep = ids[0]
    start(store, prep)
    assert [j.state for j in store.active_jobs()] == [JobState.RUNNING] + [JobState.BLOCKED] * 4
    assert len(store.active_jobs(limit=2)) == 2
    other = Store(store.home)
    try:
        version = store.data_version()
        other.set_meta({"heartbeat": "1"})
        assert store.data_version() != version
        assert store.meta("heartbeat") == "1"
    finally:
        other.close()


# ---------------------------------------------------------------- concurrency

FIFTY = """
experiment: conc{n}
stages:
  - name: s
    command: "echo {{i}}"
    sweep:
      grid:
        i: [{values}]
"""


def _concurrent_submitter(home: str, spec_path: str, barrier, results) -> None:
    try:
        spec_file = Path(spec_path)
        spec, raw = load_spec(spec_file)
        drafts = plan_jobs(spec, spec_path)
        barrier.wait(timeout=60)
        store = Store(home)
        try:
            experiment_id, ids = store.submit(
                name=spec.experiment, user="tester", queue=spec.queue, priority=spec.priority,
                spec_path=spec_path, spec=raw, package=None, metric=spec.metric, mode=spec.mode,
                drafts=drafts, stages={s.name: s for s in spec.stages}, now=time.time())
        finally:
            store.close()
        results.put(("ok", experiment_id, ids))
    except BaseException as exc:  # report everything to the parent
        results.put(("error", repr(exc), []))


def test_concurrent_submitters(tmp_path):
    home = tmp_path / "shared-home"
    Store(home).close()
    paths = []
    for n in range(6):
        p = tmp_path / f"conc{n}.yaml"
        p.write_text(FIFTY.format(n=n, values=", ".join(str(i) for i in range(50))))
        paths.append(str(p))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    results = ctx.Queue()
    procs = [ctx.Process(target=_concurrent_submitter, args=(str(home), p, barrier, results)) for p in paths]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    errors = [o[1] for o in outcomes if o[0] != "ok"]
    assert errors == []
    all_ids = [i for o in outcomes for i in o[2]]
    assert len(all_ids) == 300 and len(set(all_ids)) == 300
    assert len({o[1] for o in outcomes}) == 6

    s = Store(home)
    try:
        assert s.state_counts() == {"pending": 300}
        assert s._conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 300
        assert s._conn.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 6
        assert s._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 300
        for o in outcomes:
            assert [j.id for j in s.jobs_of_experiment(o[1])] == o[2]
    finally:
        s.close()


def test_opening_waits_for_a_concurrent_initialiser(home):
    home.mkdir()
    other = sqlite3.connect(home / "labq.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process is mid-way through setting the database up
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        Store(home).close()  # should wait (busy timeout is 60 s), then open
    finally:
        release.join()
        other.close()


GPU_SWEEP = """
experiment: gpus
stages:
  - name: fit
    command: "echo fit"
    resources: {gpu: 0.25}
    retry_on_oom: {gpu_scale: 2}
  - name: bymem
    command: "echo mem"
    resources: {gpu_memory: 6GiB}
"""


def test_gpu_oom_retries_with_a_doubled_share_up_to_a_whole_gpu_without_charging(store, submit):
    _, (fit, bymem), _ = submit(GPU_SWEEP)
    assert store.job(fit).oom_gpu_scale == 2 and store.job(bymem).gpu_memory == 6 * 2**30
    shares = []
    for n in range(2):
        (att,) = store.start_attempts([(fit, "n", store.job(fit).gpu)], run_dir_for, NOW + 10 * n)
        shares.append(att.gpu_share)
        assert store.finish_attempt(end(att.id, AttemptState.OUT_OF_MEMORY, EndCause.GPU_OOM,
                                        error="exceeded GPU memory share"), NOW + 10 * n + 1) is JobState.PENDING
    # 0.25 -> 0.5 -> 1.0; a job that ran out with a whole GPU is charged like any failure (retries: 0)
    assert shares == [0.25, 0.5] and store.job(fit).gpu == 1.0
    (att,) = store.start_attempts([(fit, "n", store.job(fit).gpu)], run_dir_for, NOW + 40)
    assert store.finish_attempt(end(att.id, AttemptState.OUT_OF_MEMORY, EndCause.GPU_OOM,
                                    error="CUDA out of memory. Tried to allocate 2.00 GiB"),
                                NOW + 41) is JobState.FAILED
    assert "retrying with gpu 0.5" in " ".join(e.message for e in store.events(fit))


def test_host_memory_oom_does_not_grow_the_gpu_share(store, submit):
    _, (fit, _), _ = submit(GPU_SWEEP)
    (att,) = store.start_attempts([(fit, "n", 0.25)], run_dir_for, NOW + 1)
    assert store.finish_attempt(end(att.id, AttemptState.OUT_OF_MEMORY, EndCause.HOST_OOM,
                                    error="used 3.0GiB, over its memory request of 2.0GiB"), NOW + 2) is JobState.FAILED
    assert store.job(fit).gpu == 0.25


def test_a_preempted_attempt_requeues_without_charging_and_keeps_history(store, submit):
    _, ids, _ = submit(JOIN)  # retries: 0
    (a1,) = start(store, ids[0])
    assert store.finish_attempt(end(a1.id, AttemptState.PREEMPTED, EndCause.PREEMPTED,
                                    error="preempted: queue 'prod' is below its guarantee"),
                                NOW + 2) is JobState.PENDING
    (a2,) = start(store, ids[0], now=NOW + 3)
    assert a2.number == 2
    assert store.finish_attempt(end(a2.id, AttemptState.SUCCEEDED, result={"metrics": {}}),
                                NOW + 4) is JobState.SUCCEEDED
    assert [a.state for a in store.attempts(ids[0])] == [AttemptState.PREEMPTED, AttemptState.SUCCEEDED]


def test_a_schema_1_database_is_migrated_in_place(tmp_path):
    from scheduler.store import MIGRATIONS, SCHEMA_VERSION
    home = tmp_path / "home"
    Store(home).close()
    # Given a database as labq's schema 1 wrote it (without the columns added since)
    conn = sqlite3.connect(home / "labq.db")
    for statement in MIGRATIONS[2]:
        table, column = statement.split()[2], statement.split()[5]
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    _drop_schema_3(conn)
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    # When labq opens it, it adds them, and the queue works
    store = Store(home)
    spec = tmp_path / "join.yaml"
    spec.write_text(JOIN)
    _, ids, _ = _submit_yaml(store, spec)
    (att,) = start(store, ids[0])
    assert store.finish_attempt(end(att.id, AttemptState.SUCCEEDED, result={"metrics": {}}),
                                NOW + 2) is JobState.SUCCEEDED
    assert store._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == \
        str(SCHEMA_VERSION)
    store.close()


def test_a_schema_6_database_keeps_its_outlooks_and_gains_the_time_left(tmp_path):
    """Schema 7 adds a running job's expected time left beside the outlooks, in
    a table of its own: a schema-6 scheduler still running goes on writing
    outlooks the way it did."""
    from scheduler.records import Outlook
    from scheduler.store import SCHEMA_VERSION

    home = tmp_path / "home"
    store = Store(home)
    store.save_estimates({}, NOW, {7: Outlook(60.0, "median of 3 recent run(s)", None, 0, 59.0)})
    store.close()
    conn = sqlite3.connect(home / "labq.db")
    conn.execute("DROP TABLE outlook_remaining")
    conn.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    store = Store(home)
    assert store.outlooks([7]) == {7: Outlook(60.0, "median of 3 recent run(s)", None, 0, None)}
    # What a schema-6 scheduler writes (five columns) still goes in
    store._conn.execute("INSERT INTO outlooks VALUES (8, 30.0, 'a schema-6 scheduler', NULL, 0)")
    assert store.outlooks([8])[8].remaining is None
    store.save_estimates({}, NOW + 10, {7: Outlook(60.0, "median of 3 recent run(s)", None, 0, 49.0)})
    assert store.outlooks([7])[7].remaining == 49.0
    assert SCHEMA_VERSION == 7 and store.meta("schema_version") == "7"
    store.close()


def _drop_schema_3(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TABLE final_metrics")
    conn.execute("DROP TABLE final_advice")
    conn.execute("DROP TABLE metric_names")
    conn.execute("DROP TABLE estimates")
    conn.execute("DROP TABLE stage_runtime")  # and what schema 4 added
    conn.execute("ALTER TABLE results DROP COLUMN outputs")
    conn.execute("DROP TABLE outlooks")  # and what schema 5 added
    conn.execute("DROP TABLE searches")  # and 6
    conn.execute("DROP TABLE outlook_remaining")  # and 7


def test_a_schema_2_database_gets_its_results_ranked_and_advised_on_migration(tmp_path):
    from scheduler import api

    home = tmp_path / "home"
    store = Store(home)
    spec = tmp_path / "sweep.yaml"
    spec.write_text("""
experiment: mig
stages:
  - name: train
    command: "true"
    resources: {cpu: 4, memory: 8GiB}
    sweep: {grid: {lr: [1, 2, 3]}}
""")
    _, ids, _ = _submit_yaml(store, spec)
    for job_id, acc in zip(ids, (0.7, 0.9, 0.8)):
        (att,) = start(store, job_id)
        store.finish_attempt(end(att.id, AttemptState.SUCCEEDED, result={
            "metrics": {"accuracy": acc, "note": "text"}, "peak_rss": 300 * 2**20, "started_at": NOW + 1,
            "ended_at": NOW + 61, "cpu_time": 60.0}), NOW + 2)
    store.close()
    # Given the database as schema 2 left it: results, but no rank or advice tables
    conn = sqlite3.connect(home / "labq.db")
    _drop_schema_3(conn)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    # When labq opens it, the results are ranked and advised as if recorded now
    store = Store(home)
    page = api.results(store, "mig", limit=2)
    assert [r["params"]["lr"] for r in page.rows] == [2, 3]
    assert page.total == 3 and page.metric == "accuracy" and page.rows[0]["best"]
    assert page.advice == ["asked 4 cpu, used 1.00 cores on average: 1.25 would pack 3.2x as many (3 jobs)",
                           "asked 8.0GiB memory, peak 300.0MiB: 512.0MiB would pack 16x as many (3 jobs)"]
    assert all(len(r["advice"]) == 2 for r in page.rows)
    store.close()


@pytest.mark.parametrize("per_shape, class_queries", [(100, 32), (3, 32), (3, 1)])
def test_waiting_per_shape_is_the_oldest_of_each_class(store, tmp_path, monkeypatch, per_shape, class_queries):
    """Whichever way it is read (everything, one query per class, one window
    over all), it is the oldest ``per_shape`` pending jobs of each class."""
    import scheduler.store as store_module

    monkeypatch.setattr(store_module, "_CLASS_QUERIES", class_queries)
    for name, cpu, n in (("a", 0.5, 7), ("b", 1, 2), ("c", 0.5, 5), ("d", 2, 6)):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(textwrap.dedent(f"""\
            experiment: {name}
            stages:
              - name: s
                command: "echo {{i}}"
                resources: {{cpu: {cpu}}}
                sweep: {{grid: {{i: {list(range(n))}}}}}
            """))
        _submit_yaml(store, spec)
    everyone = store.waiting()
    expected: dict[tuple, list[int]] = {}
    for w in sorted(everyone, key=lambda w: w.id):
        members = expected.setdefault((w.queue, w.user, w.priority, w.cpu, w.gpu, w.memory, w.timeout), [])
        if len(members) < per_shape:
            members.append(w.id)
    got = [w.id for w in store.waiting(per_shape=per_shape)]
    assert got == sorted(i for ids in expected.values() for i in ids)
    assert len(got) == (20 if per_shape == 100 else 3 + 2 + 3)  # a and c share a class (cpu 0.5)


def test_a_paused_job_is_promoted_or_given_up_once_and_its_attempts_are_its_curve(store, submit):
    experiment_id, ids, _ = submit("""
        experiment: paused
        stages:
          - name: train
            run: "json:dumps"
            sweep: {grid: {C: [0.1, 1.0, 10.0]}}
            early_stop: {method: asha, metric: acc, mode: max, grace: 2, eta: 3, max_t: 8, pause: true}
    """)
    a, b, c = ids
    attempts = start(store, a, b, c)
    for attempt in attempts[:2]:
        store.finish_attempts([end(attempt.id, AttemptState.PAUSED, EndCause.PAUSED, error="paused: at rung 1/1")],
                              NOW + 2)
    assert [state(store, j) for j in ids] == [JobState.PAUSED, JobState.PAUSED, JobState.RUNNING]
    assert store.stage_busy(experiment_id, "train")  # c still runs
    assert store.count_active() == 3 and {j.id for j in store.active_jobs()} == set(ids)
    assert store.promote({a: "promoted: top of rung 1", c: "not paused"}, NOW + 3) == [a]
    assert state(store, a) is JobState.PENDING and state(store, c) is JobState.RUNNING
    (second,) = start(store, a, now=NOW + 4)
    rows = [(r.job_id, r.run_dir, r.latest) for r in store.stage_run_dirs(experiment_id, "train") if r.job_id == a]
    assert rows == [(a, "/runs/%d/1" % a, False), (a, "/runs/%d/2" % a, True)]  # both parts of a's curve, in order
    assert store.launch_context(a)["previous_run_dir"] == "/runs/%d/1" % a  # it resumes from the paused attempt
    assert store.give_up({b: "asha: never promoted"}, NOW + 5) == [b] and store.give_up({b: "again"}, NOW + 6) == []
    assert state(store, b) is JobState.PRUNED and store.job(b).reason == "asha: never promoted"
    # A paused job is cancelled at once: nothing of it runs
    _, more, _ = submit("""
        experiment: paused2
        stages:
          - name: train
            run: "json:dumps"
            early_stop: {method: asha, metric: acc, mode: max, grace: 2, eta: 3, max_t: 8, pause: true}
    """)
    (attempt,) = start(store, more[0])
    store.finish_attempts([end(attempt.id, AttemptState.PAUSED, EndCause.PAUSED, error="paused")], NOW + 2)
    assert store.cancel([more[0]], NOW + 3)["cancelled"] == [more[0]]
    assert state(store, more[0]) is JobState.CANCELLED
