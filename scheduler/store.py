"""The durable queue: the only module that talks SQL.

SQLite in WAL mode under ``LABQ_HOME``.  Every state change is one ``BEGIN
IMMEDIATE`` transaction that also appends an event row, so after any crash the
database says exactly what was acknowledged and what ran.  A busy timeout plus a
retry loop around ``BEGIN IMMEDIATE`` means concurrent CLI processes wait their
turn instead of seeing "database is locked".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import operator
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from scheduler import endings
from scheduler.advice import advise
from scheduler.errors import IllegalTransition, StoreError, UnknownIdError
from scheduler.identity import check_private
from scheduler.records import (Attempt, AttemptEnd, Event, Experiment, Job, NodeSnapshot, Outlook, StageRunDir,
                               Waiting, is_id)
from scheduler.states import AttemptState, JobState, can_transition

SCHEMA_VERSION = 7
# Columns added since schema 1, added in place to a database written by it.
MIGRATIONS = {2: ["ALTER TABLE jobs ADD COLUMN gpu_memory INTEGER",
                  "ALTER TABLE jobs ADD COLUMN oom_gpu_scale REAL",
                  "ALTER TABLE jobs ADD COLUMN node_requeues INTEGER NOT NULL DEFAULT 0",
                  "ALTER TABLE attempts ADD COLUMN gpu_share REAL",
                  "ALTER TABLE results ADD COLUMN usage TEXT NOT NULL DEFAULT '{}'"],
              # A statement, or a function of the cursor for work SQL alone cannot do.
              3: ["CREATE TABLE final_metrics (experiment_id INTEGER NOT NULL, job_id INTEGER NOT NULL,"
                  " stage TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (job_id, name))"
                  " WITHOUT ROWID",
                  "CREATE INDEX final_metrics_rank ON final_metrics(experiment_id, name, value)",
                  "CREATE TABLE final_advice (experiment_id INTEGER NOT NULL, job_id INTEGER NOT NULL,"
                  " line TEXT NOT NULL)",
                  "CREATE INDEX final_advice_experiment ON final_advice(experiment_id, line)",
                  "CREATE INDEX final_advice_job ON final_advice(job_id)",
                  "CREATE TABLE metric_names (experiment_id INTEGER NOT NULL, stage TEXT NOT NULL, name TEXT NOT NULL,"
                  " PRIMARY KEY (experiment_id, stage, name)) WITHOUT ROWID",
                  lambda cur: _backfill_finals(cur),
                  "CREATE TABLE estimates (job_id INTEGER PRIMARY KEY, start REAL)"],
              4: ["CREATE TABLE stage_runtime (experiment_id INTEGER NOT NULL, stage TEXT NOT NULL,"
                  " runtime TEXT NOT NULL, PRIMARY KEY (experiment_id, stage)) WITHOUT ROWID",
                  "ALTER TABLE results ADD COLUMN outputs TEXT NOT NULL DEFAULT '[]'"],
              5: ["CREATE TABLE outlooks (job_id INTEGER PRIMARY KEY, predicted REAL, basis TEXT NOT NULL,"
                  " tier INTEGER, tiers INTEGER NOT NULL)"],
              6: ["CREATE TABLE searches (experiment_id INTEGER NOT NULL, stage TEXT NOT NULL, config TEXT NOT NULL,"
                  " PRIMARY KEY (experiment_id, stage)) WITHOUT ROWID"],
              # A running job's expected time left, in a table of its own: a
              # scheduler of schema 6 still running while a newer CLI migrates
              # goes on writing its outlooks (a column would break its insert).
              # The number also makes a labq older than the 'paused' state (which
              # came under schema 6) refuse a database a schema-7 labq has opened.
              7: ["CREATE TABLE outlook_remaining (job_id INTEGER PRIMARY KEY, remaining REAL NOT NULL)"]}
APP_ID = "labq"
LOCK_WAIT_SECONDS = 60.0
# Pending jobs as Store.waiting loads them (no params, no targets).
# GPU-seconds a job's preempted attempts held (a CPU-only job counts as one
# GPU), and how many there were: what least-attained-service tiers go by
# (scheduler/policy/tiers.py weighs a running attempt the same way).  ``jobs`` is
# the job's row; only a job with attempts has any.
_SQL_ATTAINED = ("CASE WHEN jobs.attempts > 0 THEN (SELECT COALESCE(SUM((a.ended_at - a.dispatched_at) * CASE"
                 " WHEN COALESCE(a.gpu_share, jobs.gpu) <= 0 THEN 1.0 WHEN jobs.gpu > 1 THEN jobs.gpu"
                 " ELSE COALESCE(a.gpu_share, jobs.gpu) END), 0) FROM attempts a WHERE a.job_id = jobs.id"
                 " AND a.state = 'preempted' AND a.ended_at IS NOT NULL AND a.dispatched_at IS NOT NULL)"
                 " ELSE 0.0 END AS attained, CASE WHEN jobs.attempts > 0 THEN (SELECT COUNT(*) FROM attempts a"
                 " WHERE a.job_id = jobs.id AND a.state = 'preempted') ELSE 0 END AS preemptions")
_WAITING_COLUMNS = ("id, cpu, gpu, COALESCE(memory, 0) AS memory, custom, priority, user, queue, timeout,"
                    " submitted_at, COALESCE(gpu_memory, 0) AS gpu_memory, reason,"
                    " (SELECT name FROM experiments e WHERE e.id = experiment_id) || '/' || stage AS \"group\", "
                    + _SQL_ATTAINED)
_WAITING_FIELDS = tuple(f.name for f in dataclasses.fields(Waiting))
_PENDING = "state = 'pending' AND cancel_requested = 0"
_SQL_WAITING = f"SELECT {_WAITING_COLUMNS} FROM jobs WHERE {_PENDING}"
# What makes pending jobs interchangeable to the policy (a class), and how many
# classes Store.waiting(per_shape=...) queries one by one.
_CLASS = "queue, user, priority, cpu, gpu, memory, gpu_memory, timeout, custom"
_CLASS_QUERIES = 32
_SQL_CLASSES = f"SELECT {_CLASS}, COUNT(*) AS n FROM jobs WHERE {_PENDING} GROUP BY {_CLASS}"
_SQL_FIRST_OF_CLASS = (_SQL_WAITING + "".join(f" AND {column} IS ?" for column in _CLASS.split(", "))
                       + " ORDER BY id LIMIT ?")
_SQL_FIRST_OF_EACH_CLASS = (f"SELECT {_WAITING_COLUMNS} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {_CLASS}"
                            f" ORDER BY id) AS nth FROM jobs WHERE {_PENDING}) AS jobs WHERE nth <= ? ORDER BY id")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, user TEXT NOT NULL, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, spec_path TEXT NOT NULL, spec TEXT NOT NULL, package TEXT,
    metric TEXT, mode TEXT, submitted_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS experiments_name ON experiments(name);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    stage TEXT NOT NULL, params TEXT NOT NULL, swept TEXT NOT NULL,
    target_kind TEXT NOT NULL, target TEXT NOT NULL,
    cpu REAL NOT NULL, gpu REAL NOT NULL, memory INTEGER, custom TEXT NOT NULL,
    retries INTEGER NOT NULL, timeout REAL, queue TEXT NOT NULL, priority INTEGER NOT NULL,
    user TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0, free_retries INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    started_at REAL, ended_at REAL, node_id TEXT, gpu_ids TEXT NOT NULL DEFAULT '[]',
    gpu_memory INTEGER, oom_gpu_scale REAL, node_requeues INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_experiment ON jobs(experiment_id);
CREATE TABLE IF NOT EXISTS job_deps (
    job_id INTEGER NOT NULL, dep_job_id INTEGER NOT NULL, PRIMARY KEY (job_id, dep_job_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_deps_dep ON job_deps(dep_job_id);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs(id), number INTEGER NOT NULL,
    state TEXT NOT NULL, run_dir TEXT NOT NULL, node_id TEXT, gpu_ids TEXT NOT NULL DEFAULT '[]',
    dispatched_at REAL, started_at REAL, ended_at REAL, exit_code INTEGER, error TEXT, peak_rss INTEGER,
    gpu_share REAL, UNIQUE (job_id, number));
CREATE INDEX IF NOT EXISTS attempts_state ON attempts(state);
CREATE TABLE IF NOT EXISTS results (
    attempt_id INTEGER PRIMARY KEY REFERENCES attempts(id), job_id INTEGER NOT NULL,
    metrics TEXT NOT NULL, artifacts TEXT NOT NULL, recorded_at REAL NOT NULL,
    usage TEXT NOT NULL DEFAULT '{}', outputs TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS results_job ON results(job_id);
-- results.outputs: the files the job created or changed in its working directory,
-- [{path, bytes, kept}] (workers.workdir).
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, job_id INTEGER NOT NULL, attempt_id INTEGER,
    kind TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
-- What `labq results` ranks and summarises, kept per job for its latest attempt
-- (emptied when a new attempt starts, filled when it ends with a result), so a
-- 100k-job experiment's best rows come from an index, not from decoding 100k
-- results.  Numeric metrics only: anything else cannot be ranked.
CREATE TABLE IF NOT EXISTS final_metrics (
    experiment_id INTEGER NOT NULL, job_id INTEGER NOT NULL, stage TEXT NOT NULL, name TEXT NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (job_id, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS final_metrics_rank ON final_metrics(experiment_id, name, value);
CREATE TABLE IF NOT EXISTS final_advice (
    experiment_id INTEGER NOT NULL, job_id INTEGER NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS final_advice_experiment ON final_advice(experiment_id, line);
CREATE INDEX IF NOT EXISTS final_advice_job ON final_advice(job_id);
-- Every numeric metric name a stage's jobs ever recorded: the candidates for the
-- main metric and the columns, without a scan of final_metrics.
CREATE TABLE IF NOT EXISTS metric_names (
    experiment_id INTEGER NOT NULL, stage TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (experiment_id, stage, name)) WITHOUT ROWID;
-- The running scheduler's estimated start of each pending job it replayed (NULL:
-- not known), all rewritten at once, and meta 'estimated_at' says when.
CREATE TABLE IF NOT EXISTS estimates (job_id INTEGER PRIMARY KEY, start REAL);
-- A stage's model-based search (scheduler.search): its config, samples included (its trials are its jobs).
CREATE TABLE IF NOT EXISTS searches (experiment_id INTEGER NOT NULL, stage TEXT NOT NULL, config TEXT NOT NULL,
    PRIMARY KEY (experiment_id, stage)) WITHOUT ROWID;
-- What the scheduler predicts for each active job (records.Outlook), written with the estimates.
CREATE TABLE IF NOT EXISTS outlooks (job_id INTEGER PRIMARY KEY, predicted REAL, basis TEXT NOT NULL,
    tier INTEGER, tiers INTEGER NOT NULL);
-- A running job's expected time left (records.Outlook.remaining), written with its outlook.
CREATE TABLE IF NOT EXISTS outlook_remaining (job_id INTEGER PRIMARY KEY, remaining REAL NOT NULL);
-- What a stage's workers need beyond the job row (metrics_from, env), resolved at submit.
CREATE TABLE IF NOT EXISTS stage_runtime (
    experiment_id INTEGER NOT NULL, stage TEXT NOT NULL, runtime TEXT NOT NULL,
    PRIMARY KEY (experiment_id, stage)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, address TEXT NOT NULL, alive INTEGER NOT NULL, total TEXT NOT NULL,
    allocated TEXT NOT NULL, running_jobs INTEGER NOT NULL, gpus TEXT NOT NULL, updated_at REAL NOT NULL);
"""

_JOB_COLUMNS = (
    "j.id, j.experiment_id, e.name AS experiment, j.stage, j.params, j.swept, j.target_kind, j.target, "
    "j.cpu, j.gpu, j.memory, j.custom, j.retries, j.timeout, j.queue, j.priority, j.user, j.state, j.reason, "
    "j.attempts, j.cancel_requested, j.submitted_at, j.started_at, j.ended_at, j.node_id, j.gpu_ids, "
    "j.gpu_memory, j.oom_gpu_scale, j.free_retries"
)
_JOB_FROM = " FROM jobs j JOIN experiments e ON e.id = j.experiment_id "


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class Store:
    """One connection to the state database.  Cheap to open (no Ray, no pandas)."""

    def __init__(self, home: str | Path, *, fsync_commits: bool = True):
        """``fsync_commits=False`` is for the scheduler's own connection
        (synchronous=NORMAL under WAL): a commit is safe from any crash of the
        process, kill -9 included, without waiting for the disk; an OS crash or
        power cut may take back its last few transitions, which the next start
        treats like any loss (attempts it had started are requeued; a job whose
        end was not kept runs again).  What users commit (submit, cancel) is
        fsync'd, and carries the scheduler's earlier commits to disk with it."""
        self.home = Path(home).expanduser()
        self.path = self.home / "labq.db"
        self._fsync_commits = fsync_commits
        self._conn = self._connect()

    # ------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.home}: cannot create the state directory: {exc.strerror}") from None
        check_private(self.home, "state directory")
        check_private(self.path, "state database")
        fresh = not self.path.exists()
        if not fresh and not self.path.is_file():
            raise StoreError(f"{self.path}: exists but is not a file; move it away")
        conn = sqlite3.connect(self.path, timeout=LOCK_WAIT_SECONDS, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 60000")
            if fresh:
                os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)
            # Identify the file before changing anything about it: a foreign
            # database must be left byte-for-byte as it was.
            self._check_identity(conn)
            self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = FULL" if self._fsync_commits else "PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            try:
                conn.execute("SELECT exp(0)")
            except sqlite3.OperationalError:  # SQLite built without its math functions
                conn.create_function("exp", 1, math.exp, deterministic=True)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_storage_failure(exc):  # the disk, not the file: moving the queue away would lose it for nothing
                raise StoreError(f"{self.path}: could not open the state database ({exc}): the disk holding it is "
                                 "full, read-only or failing; the queue itself is intact. Free some space (or "
                                 "fix the disk) and try again.") from None
            raise StoreError(
                f"{self.path}: not a usable labq database ({exc}); labq will not overwrite it. "
                "Move it away to start a new queue, or point LABQ_HOME elsewhere."
            ) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _retry_locked(self, action):
        """Run ``action`` until it gets past a lock: some statements (switching the
        journal mode, BEGIN IMMEDIATE) fail at once instead of honouring the busy
        timeout while another process initialises or writes the database."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(f"{self.path}: still locked by another process after {LOCK_WAIT_SECONDS:.0f}s") from None
                time.sleep(0.05)

    def _check_identity(self, conn: sqlite3.Connection) -> None:
        tables = {r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise StoreError(f"{self.path}: an SQLite database that is not labq's (tables: "
                             f"{', '.join(sorted(tables)[:5])}); labq will not touch it")
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'app'").fetchone()
            if row is None or row["value"] != APP_ID:
                raise StoreError(f"{self.path}: an SQLite database that is not labq's; labq will not touch it")
            version = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()["value"])
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: written by a newer labq (schema {version}); upgrade labq")
            if version < SCHEMA_VERSION:
                self._migrate(conn)
            return
        with self._tx(conn) as cur:
            if cur.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                return  # another process initialised it while we waited for the lock
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            cur.execute("INSERT OR IGNORE INTO meta VALUES ('app', ?), ('schema_version', ?)",
                        (APP_ID, str(SCHEMA_VERSION)))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring a database of an older schema up to date, in one transaction
        (re-checked under the lock: another process may have done it)."""
        with self._tx(conn) as cur:
            version = int(cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()["value"])
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    statement(cur) if callable(statement) else cur.execute(statement)
            cur.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._conn.close()

    def check_intact(self, thorough: bool = True) -> None:
        """Raise StoreError when SQLite finds the file damaged (a page overwritten
        in the middle): labq must not take its answers for the truth or write
        into it.  ``thorough`` reads every page (``quick_check``, a fraction of a
        second per 100 MB); otherwise only up to the first problem."""
        try:
            rows = self._conn.execute("PRAGMA quick_check" if thorough else "PRAGMA quick_check(1)").fetchall()
        except sqlite3.DatabaseError as exc:
            raise damaged(self.path, exc) from None
        problems = [r["quick_check"] for r in rows if r["quick_check"] != "ok"]
        if problems:
            raise damaged(self.path, problems[0])

    @contextlib.contextmanager
    def _tx(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Cursor]:
        """An IMMEDIATE transaction: takes the write lock up front so two writers
        never deadlock half-way; retried while another process holds it."""
        conn = conn or self._conn
        self._retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        cur = conn.cursor()
        try:
            yield cur
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")  # nothing half-written
            if isinstance(exc, sqlite3.OperationalError) and _is_storage_failure(exc):
                raise StoreError(f"{self.path}: could not write: {exc}; nothing was changed. "
                                 "Free some space and try again.") from None
            raise

    def data_version(self) -> int:
        """Changes when another connection commits: lets the loop skip re-reading an
        unchanged queue."""
        return self._conn.execute("PRAGMA data_version").fetchone()["data_version"]

    # ------------------------------------------------------------ submit

    def submit(self, *, name: str, user: str, queue: str, priority: int, spec_path: str,
               spec: dict[str, Any], package: str | None, metric: str | None, mode: str | None,
               drafts: list[Any], stages: dict[str, Any], now: float,
               runtimes: dict[str, dict[str, Any]] | None = None,
               searches: dict[str, dict[str, Any]] | None = None) -> tuple[int, list[int]]:
        """Store an experiment and all its jobs in one transaction; returns ids.
        Jobs with upstream jobs start blocked, the rest pending."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO experiments (name, user, queue, priority, spec_path, spec, package, metric, mode,"
                " submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, user, queue, priority, spec_path, _dumps(spec), package, metric, mode, now))
            experiment_id = cur.lastrowid
            cur.executemany("INSERT INTO stage_runtime (experiment_id, stage, runtime) VALUES (?, ?, ?)",
                            [(experiment_id, stage, _dumps(runtime)) for stage, runtime in (runtimes or {}).items()])
            cur.executemany("INSERT INTO searches (experiment_id, stage, config) VALUES (?, ?, ?)",
                            [(experiment_id, stage, _dumps(config)) for stage, config in (searches or {}).items()])
            ids: list[int] = []
            for draft in drafts:
                stage = stages[draft.stage]
                target_kind, target = ("callable", stage.run) if stage.run else ("command", stage.command)
                state = JobState.BLOCKED if draft.depends_on else JobState.PENDING
                reason = ("waiting for " + ", ".join(f"job {ids[up]} ({drafts[up].stage})" for up in draft.depends_on)
                          if draft.depends_on else None)
                res = stage.resources
                cur.execute(
                    "INSERT INTO jobs (experiment_id, stage, params, swept, target_kind, target, cpu, gpu, memory,"
                    " custom, retries, timeout, queue, priority, user, state, reason, submitted_at, gpu_memory,"
                    " oom_gpu_scale) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (experiment_id, draft.stage, _dumps(draft.params), _dumps(draft.swept), target_kind, target,
                     res.cpu, res.gpu, res.memory, _dumps(res.custom), stage.retries, stage.timeout, queue,
                     priority, user, state.value, reason, now, res.gpu_memory,
                     stage.retry_on_oom.gpu_scale if stage.retry_on_oom else None))
                ids.append(cur.lastrowid)
            cur.executemany("INSERT INTO job_deps (job_id, dep_job_id) VALUES (?, ?)",
                            [(ids[d.index], ids[up]) for d in drafts for up in d.depends_on])
            cur.executemany("INSERT INTO events (ts, job_id, kind, message) VALUES (?, ?, 'submitted', ?)",
                            [(now, job_id, f"submitted as {JobState.BLOCKED.value if d.depends_on else JobState.PENDING.value}")
                             for job_id, d in zip(ids, drafts)])
        return experiment_id, ids

    # ------------------------------------------------------------ searches (scheduler.search)

    def open_searches(self, experiment_id: int | None = None) -> list[tuple[int, str, dict[str, Any], int, int]]:
        """The searches (of one experiment, or all) that may ask for more trials:
        (experiment id, stage, config, trials asked so far, trials queued or running now)."""
        rows = self._conn.execute(
            "SELECT s.experiment_id, s.stage, s.config, COUNT(j.id) AS asked,"
            " SUM(j.state IN ('pending', 'running', 'blocked')) AS active FROM searches s"
            " JOIN jobs j ON j.experiment_id = s.experiment_id AND j.stage = s.stage"
            " WHERE ? IS NULL OR s.experiment_id = ? GROUP BY s.experiment_id, s.stage",
            (experiment_id, experiment_id)).fetchall()
        out = []
        for r in rows:
            config = json.loads(r["config"])
            if r["asked"] < config["samples"]:
                out.append((r["experiment_id"], r["stage"], config, r["asked"], r["active"] or 0))
        return out

    def search_spent(self, experiment_id: int, stage: str, now: float) -> dict[str, float]:
        """What a search's trials have held so far: CPU and GPU hours over their
        attempts (a running one up to ``now``), and the wall time since the
        experiment was submitted."""
        row = self._conn.execute(
            "SELECT COALESCE(SUM(j.cpu * (COALESCE(a.ended_at, ?) - a.dispatched_at)), 0) AS cpu_s,"
            " COALESCE(SUM(CASE WHEN j.gpu > 1 THEN j.gpu ELSE COALESCE(a.gpu_share, j.gpu) END"
            " * (COALESCE(a.ended_at, ?) - a.dispatched_at)), 0) AS gpu_s"
            " FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.experiment_id = ? AND j.stage = ?"
            " AND a.dispatched_at IS NOT NULL", (now, now, experiment_id, stage)).fetchone()
        submitted = self._conn.execute("SELECT submitted_at FROM experiments WHERE id = ?",
                                       (experiment_id,)).fetchone()[0]
        return {"cpu_hours": max(0.0, row["cpu_s"]) / 3600, "gpu_hours": max(0.0, row["gpu_s"]) / 3600,
                "wall": max(0.0, now - submitted)}

    def searches(self, experiment_id: int) -> list[tuple[str, dict[str, Any], int]]:
        """An experiment's searches: (stage, config, trials asked)."""
        return [(r["stage"], json.loads(r["config"]), r["asked"]) for r in self._conn.execute(
            "SELECT s.stage, s.config, (SELECT COUNT(*) FROM jobs j WHERE j.experiment_id = s.experiment_id"
            " AND j.stage = s.stage) AS asked FROM searches s WHERE s.experiment_id = ? ORDER BY s.stage",
            (experiment_id,))]

    def trials(self, experiment_id: int, stage: str,
               metrics: list[str] | None = None) -> list[tuple[dict[str, Any], str, Any]]:
        """A search stage's trials in the order asked: (swept params, job state,
        the latest attempt's value of the experiment's metric, or a tuple of
        ``metrics``' values; None where it has none)."""
        names = metrics or [self._conn.execute("SELECT metric FROM experiments WHERE id = ?",
                                               (experiment_id,)).fetchone()[0] or ""]
        finals = self.final_values(experiment_id, stage, names)

        def value(job_id: int) -> Any:
            got = finals.get(job_id, {})
            return tuple(got.get(n) for n in names) if metrics else got.get(names[0])

        return [(json.loads(r["swept"]), r["state"], value(r["id"])) for r in self._conn.execute(
            "SELECT id, swept, state FROM jobs WHERE experiment_id = ? AND stage = ? ORDER BY id",
            (experiment_id, stage))]

    def final_values(self, experiment_id: int, stage: str, names: list[str]) -> dict[int, dict[str, float]]:
        """{job id: {metric: value}} of ``names`` among a stage's final (numeric) metrics."""
        out: dict[int, dict[str, float]] = {}
        for r in self._conn.execute(
                f"SELECT job_id, name, value FROM final_metrics WHERE experiment_id = ? AND stage = ?"
                f" AND name IN ({','.join('?' * len(names))})", (experiment_id, stage, *names)):
            out.setdefault(r["job_id"], {})[r["name"]] = r["value"]
        return out

    def add_trials(self, experiment_id: int, stage: str, points: list[dict[str, Any]], asked: int,
                   now: float) -> list[int]:
        """New jobs of a search stage, one per point, like its first job (its
        resources, target, fixed params and upstream jobs); in one transaction
        that first checks the stage still has ``asked`` jobs, so a suggestion
        is stored once however many times it is asked for.  Returns the new ids."""
        with self._tx() as cur:
            have = cur.execute("SELECT COUNT(*) FROM jobs WHERE experiment_id = ? AND stage = ?",
                               (experiment_id, stage)).fetchone()[0]
            if have != asked or not points:
                return []
            first = cur.execute("SELECT * FROM jobs WHERE experiment_id = ? AND stage = ? ORDER BY id LIMIT 1",
                                (experiment_id, stage)).fetchone()
            ups = [r[0] for r in cur.execute("SELECT dep_job_id FROM job_deps WHERE job_id = ? ORDER BY dep_job_id",
                                             (first["id"],))]
            waiting = [u for u in ups if cur.execute("SELECT state FROM jobs WHERE id = ?", (u,)).fetchone()[0]
                       != JobState.SUCCEEDED.value]
            state = JobState.BLOCKED if waiting else JobState.PENDING
            reason = "waiting for " + ", ".join(f"job {u}" for u in waiting) if waiting else None
            fixed = {k: v for k, v in json.loads(first["params"]).items() if k not in json.loads(first["swept"])}
            ids = []
            for point in points:
                cur.execute(
                    "INSERT INTO jobs (experiment_id, stage, params, swept, target_kind, target, cpu, gpu, memory,"
                    " custom, retries, timeout, queue, priority, user, state, reason, submitted_at, gpu_memory,"
                    " oom_gpu_scale) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (experiment_id, stage, _dumps({**fixed, **point}), _dumps(point), first["target_kind"],
                     first["target"], first["cpu"], first["gpu"], first["memory"], first["custom"], first["retries"],
                     first["timeout"], first["queue"], first["priority"], first["user"], state.value, reason, now,
                     first["gpu_memory"], first["oom_gpu_scale"]))
                ids.append(cur.lastrowid)
            cur.executemany("INSERT INTO job_deps (job_id, dep_job_id) VALUES (?, ?)",
                            [(job_id, up) for job_id in ids for up in ups])
            cur.executemany("INSERT INTO events (ts, job_id, kind, message) VALUES (?, ?, 'submitted', ?)",
                            [(now, job_id, f"asked by the search as trial {asked + k + 1}, {state.value}")
                             for k, job_id in enumerate(ids)])
        return ids

    def extend_search(self, experiment_id: int, more: int, stage: str | None = None) -> list[str]:
        """Raise the samples of the experiment's searches (or one stage's) by
        ``more`` (a negative ``more``: close them, no trial asked beyond those
        there); the stages changed."""
        with self._tx() as cur:
            rows = cur.execute("SELECT stage, config FROM searches WHERE experiment_id = ? AND (? IS NULL OR stage = ?)",
                               (experiment_id, stage, stage)).fetchall()
            for r in rows:
                config = json.loads(r["config"])
                asked = cur.execute("SELECT COUNT(*) FROM jobs WHERE experiment_id = ? AND stage = ?",
                                    (experiment_id, r["stage"])).fetchone()[0]
                config["samples"] = max(config["samples"], asked) + more if more > 0 else asked
                cur.execute("UPDATE searches SET config = ? WHERE experiment_id = ? AND stage = ?",
                            (_dumps(config), experiment_id, r["stage"]))
        return [r["stage"] for r in rows]

    # ------------------------------------------------------------ transitions

    def _move(self, cur: sqlite3.Cursor, job_id: int, target: JobState, now: float, message: str,
              attempt_id: int | None = None, reason: str | None = None) -> JobState:
        """The one place a job changes state: rejects illegal moves, stamps times,
        and records an event."""
        row = cur.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownIdError(f"no job {job_id}")
        current = JobState(row["state"])
        if not can_transition(current, target):
            raise IllegalTransition(f"job {job_id}: {current.value} -> {target.value} is not allowed")
        ended = now if target.is_terminal() else None
        cur.execute(
            "UPDATE jobs SET state = ?, reason = ?, ended_at = ?,"
            " started_at = CASE WHEN ? = 'running' AND started_at IS NULL THEN ? ELSE started_at END"
            " WHERE id = ?",
            (target.value, reason, ended, target.value, now, job_id))
        cur.execute("INSERT INTO events (ts, job_id, attempt_id, kind, message) VALUES (?, ?, ?, 'state', ?)",
                    (now, job_id, attempt_id, f"{current.value} -> {target.value}" + (f": {message}" if message else "")))
        return current

    def start_attempts(self, placements: Iterable[tuple], run_dir_for, now: float,
                       reasons: dict[int, str] | None = None) -> list[Attempt]:
        """Create one attempt per placement ``(job_id, node_id[, gpu_share[, why]])`` and
        mark the jobs running, in one transaction, which also writes ``reasons``
        (:meth:`set_reasons`) for the jobs left waiting.  A job cancelled since
        the policy looked is skipped."""
        started: list[Attempt] = []
        with self._tx() as cur:
            if reasons:
                self._write_reasons(cur, reasons)
            for job_id, node_id, *extra in placements:
                gpu_share = extra[0] if extra else None
                why = extra[1] if len(extra) > 1 else ""
                row = cur.execute("SELECT state, attempts, cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or row["state"] != JobState.PENDING.value or row["cancel_requested"]:
                    continue
                number = row["attempts"] + 1
                run_dir = str(run_dir_for(job_id, number))
                cur.execute(
                    "INSERT INTO attempts (job_id, number, state, run_dir, node_id, dispatched_at, gpu_share)"
                    " VALUES (?, ?, 'running', ?, ?, ?, ?)", (job_id, number, run_dir, node_id, now, gpu_share))
                attempt_id = cur.lastrowid
                cur.execute("UPDATE jobs SET attempts = ?, node_id = ? WHERE id = ?", (number, node_id, job_id))
                if number > 1:  # the job's results are its latest attempt's: none yet
                    cur.execute("DELETE FROM final_metrics WHERE job_id = ?", (job_id,))
                    cur.execute("DELETE FROM final_advice WHERE job_id = ?", (job_id,))
                self._move(cur, job_id, JobState.RUNNING, now, f"attempt {number}" + (f" on {node_id}: {why}" if why else ""),
                           attempt_id)
                started.append(Attempt(id=attempt_id, job_id=job_id, number=number, state=AttemptState.RUNNING,
                                       run_dir=run_dir, node_id=node_id, dispatched_at=now, gpu_share=gpu_share))
        return started

    def finish_attempts(self, ends: list[AttemptEnd], now: float) -> list[JobState]:
        """Several :meth:`finish_attempt` calls in one transaction (one fsync): the
        loop records every task that ended during a pass at once."""
        with self._tx() as cur:
            return [self._finish(cur, end, now) for end in ends]

    def finish_attempt(self, end: AttemptEnd, now: float) -> JobState:
        """Record how an attempt ended and move its job on, as
        :func:`scheduler.endings.decide` rules: success unblocks dependents; a
        final failure marks every job downstream as upstream_failed.  Idempotent
        per attempt: an attempt already finished is left as it is."""
        with self._tx() as cur:
            return self._finish(cur, end, now)

    def _finish(self, cur: sqlite3.Cursor, end: AttemptEnd, now: float) -> JobState:
        """Read the facts, ask the rules, write the plan.  ``end.slot_from``: when
        the attempt really got its share, for a job packed behind others
        (scheduler.packing): its dispatch moves there, so usage counts each job of
        a pack from its own start, not the pack's launch."""
        attempt_id = end.attempt_id
        row = cur.execute(
            "SELECT a.state AS attempt_state, a.number, a.job_id, a.gpu_share, a.started_at, j.retries,"
            " j.free_retries, j.node_requeues, j.state AS job_state, j.cancel_requested, j.cpu, j.gpu, j.gpu_memory,"
            " j.memory, j.oom_gpu_scale, j.experiment_id, j.stage"
            " FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.id = ?", (attempt_id,)).fetchone()
        if row is None:
            raise UnknownIdError(f"no attempt {attempt_id}")
        if row["attempt_state"] != AttemptState.RUNNING.value:
            return JobState(row["job_state"])
        job_id = row["job_id"]
        plan = endings.decide(_end_facts(row), end, now)
        result = end.result
        cur.execute(
            "UPDATE attempts SET state = ?, ended_at = ?, started_at = COALESCE(?, started_at),"
            " node_id = COALESCE(?, node_id), gpu_ids = ?, exit_code = ?, error = ?, peak_rss = ?,"
            " dispatched_at = COALESCE(?, dispatched_at) WHERE id = ?",
            (plan.attempt_state.value, plan.ended_at, result.started_at if result else None,
             result.node_id if result else None, _dumps(result.gpu_ids if result else []),
             result.exit_code if result else None, end.message, result.peak_rss if result else None,
             end.slot_from, attempt_id))
        if result is not None:
            cur.execute("INSERT OR IGNORE INTO results (attempt_id, job_id, metrics, artifacts, recorded_at, usage,"
                        " outputs) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (attempt_id, job_id, _dumps(result.metrics), _dumps(result.artifacts), now,
                         _dumps(result.usage), _dumps(result.outputs)))
            cur.execute("UPDATE jobs SET node_id = COALESCE(?, node_id), gpu_ids = ? WHERE id = ?",
                        (result.node_id, _dumps(result.gpu_ids), job_id))
            _write_finals(cur, row, result.metrics, plan.advice)
        if plan.free_retry:
            cur.execute("UPDATE jobs SET free_retries = free_retries + 1, node_requeues = node_requeues + ?"
                        " WHERE id = ?", (int(plan.node_requeue), job_id))
        if plan.gpu is not None:  # the grown share replaces a gpu_memory request
            cur.execute("UPDATE jobs SET gpu = ?, gpu_memory = NULL WHERE id = ?", (plan.gpu, job_id))
        self._move(cur, job_id, plan.job_state, now, plan.detail, attempt_id, plan.reason)
        if plan.unblocks_dependents:
            self._unblock_dependents(cur, job_id, now)
        elif plan.fails_dependents:
            self._fail_dependents(cur, job_id, now)
        return plan.job_state

    def _unblock_dependents(self, cur: sqlite3.Cursor, job_id: int, now: float) -> None:
        waiting = cur.execute(
            "SELECT j.id FROM job_deps d JOIN jobs j ON j.id = d.job_id WHERE d.dep_job_id = ? AND j.state = 'blocked'"
            " AND NOT EXISTS (SELECT 1 FROM job_deps d2 JOIN jobs up ON up.id = d2.dep_job_id"
            "                 WHERE d2.job_id = j.id AND up.state != 'succeeded')", (job_id,)).fetchall()
        for row in waiting:
            self._move(cur, row["id"], JobState.PENDING, now, f"upstream job {job_id} succeeded")

    def _fail_dependents(self, cur: sqlite3.Cursor, job_id: int, now: float) -> None:
        frontier = [job_id]
        while frontier:
            up = frontier.pop()
            up_state = cur.execute("SELECT state, stage FROM jobs WHERE id = ?", (up,)).fetchone()
            for row in cur.execute("SELECT j.id FROM job_deps d JOIN jobs j ON j.id = d.job_id"
                                   " WHERE d.dep_job_id = ? AND j.state = 'blocked'", (up,)).fetchall():
                why = f"upstream job {up} ({up_state['stage']}) ended {up_state['state']}"
                self._move(cur, row["id"], JobState.UPSTREAM_FAILED, now, why, reason=why)
                frontier.append(row["id"])

    def mark_unschedulable(self, reasons: dict[int, str], now: float) -> None:
        with self._tx() as cur:
            for job_id, reason in reasons.items():
                if cur.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()["state"] == "pending":
                    self._move(cur, job_id, JobState.UNSCHEDULABLE, now, reason, reason=reason)
                    self._fail_dependents(cur, job_id, now)

    def set_reasons(self, reasons: dict[int, str]) -> None:
        """Why each pending job waits (shown by `labq queue`); not an event."""
        if not reasons:
            return
        with self._tx() as cur:
            self._write_reasons(cur, reasons)

    @staticmethod
    def _write_reasons(cur: sqlite3.Cursor, reasons: dict[int, str]) -> None:
        cur.executemany("UPDATE jobs SET reason = ? WHERE id = ? AND state = 'pending'",
                        [(r, j) for j, r in reasons.items()])

    def set_running_notes(self, notes: dict[int, str]) -> None:
        """What `labq queue` says of running jobs (a trial's rung under early
        stopping) in their reason; a job no longer running keeps none."""
        with self._tx() as cur:
            cur.executemany("UPDATE jobs SET reason = ? WHERE id = ? AND state = 'running'",
                            [(note, job_id) for job_id, note in notes.items()])

    def cancel(self, job_ids: Iterable[int], now: float) -> dict[str, list[int]]:
        """Pending and blocked jobs end cancelled at once; running ones are flagged
        for the scheduler, which stops their Ray task and records the end."""
        done: dict[str, list[int]] = {"cancelled": [], "stopping": [], "already_ended": []}
        with self._tx() as cur:
            for job_id in job_ids:
                row = cur.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise UnknownIdError(f"no job {job_id}")
                state = JobState(row["state"])
                if state in (JobState.PENDING, JobState.BLOCKED, JobState.PAUSED):
                    self._move(cur, job_id, JobState.CANCELLED, now, "cancelled by user")
                    done["cancelled"].append(job_id)
                elif state is JobState.RUNNING:
                    cur.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                    cur.execute("INSERT INTO events (ts, job_id, kind, message) VALUES (?, ?, 'cancel', ?)",
                                (now, job_id, "cancel requested by user"))
                    done["stopping"].append(job_id)
                else:
                    done["already_ended"].append(job_id)
            # Only after every requested job is cancelled, so a cancelled experiment
            # reads "cancelled" throughout rather than "upstream_failed".
            for job_id in done["cancelled"]:
                self._fail_dependents(cur, job_id, now)
        return done

    # ------------------------------------------------------------ reads for the loop

    def pending_jobs(self) -> list[Job]:
        return self._jobs("WHERE j.state = 'pending' AND j.cancel_requested = 0 ORDER BY j.priority DESC, j.id", ())

    def waiting(self, ids: list[int] | None = None, per_shape: int | None = None) -> list[Waiting]:
        """Pending jobs (all, or those of ``ids`` still pending) as the scheduler
        decides on them; cheap to load: no params, no targets.  ``per_shape``:
        only the oldest that many of each queue, user, priority and request shape
        (what an estimate looks at; the policy treats the rest of a shape alike)."""
        if per_shape is not None:
            rows = self._first_of_each_class(per_shape)
        elif ids is None:
            rows = self._conn.execute(_SQL_WAITING).fetchall()
        else:
            rows = self._rows_in(_SQL_WAITING + " AND id IN ", ids)
        return _waiting(rows)

    def _first_of_each_class(self, per_shape: int) -> list[Any]:
        """The oldest ``per_shape`` pending jobs of each class.  With a few
        classes, one indexed ``LIMIT`` query each (a millisecond); a window over
        every pending job took 0.2 s at 35,000 of them.  With many classes that
        could walk the pending jobs once per class, so the window it is then."""
        classes = self._conn.execute(_SQL_CLASSES).fetchall()
        if all(c["n"] <= per_shape for c in classes):
            return self._conn.execute(_SQL_WAITING + " ORDER BY id").fetchall()
        if len(classes) > _CLASS_QUERIES:
            return self._conn.execute(_SQL_FIRST_OF_EACH_CLASS, (per_shape,)).fetchall()
        rows = [row for c in classes for row in self._conn.execute(
            _SQL_FIRST_OF_CLASS, (*(c[column] for column in _CLASS.split(", ")), per_shape))]
        return sorted(rows, key=lambda row: row["id"])

    def last_event_id(self) -> int:
        return self._conn.execute("SELECT COALESCE(MAX(id), 0) AS last FROM events").fetchone()["last"]

    def jobs_changed_since(self, event_id: int) -> tuple[int, list[int]]:
        """(newest event id, ids of the jobs that changed state after ``event_id``).
        Every state change writes an event in the same transaction, and writers
        commit one at a time, so a reader never sees a newer id before an older one:
        the loop keeps its pending view current by reading only what moved."""
        rows = self._conn.execute("SELECT id, job_id FROM events WHERE id > ? ORDER BY id", (event_id,)).fetchall()
        if not rows:
            return event_id, []
        return rows[-1]["id"], list(dict.fromkeys(r["job_id"] for r in rows))

    def held_since(self, after: float) -> list[Any]:
        """Every attempt that held resources at some time after ``after`` (running
        ones included), with its job's user, queue and shape: the input of
        :mod:`scheduler.accounting`."""
        from scheduler.accounting import Held

        rows = self._conn.execute(
            "SELECT j.user, j.queue, j.id AS job_id, j.cpu, COALESCE(a.gpu_share, j.gpu) AS gpu, a.dispatched_at,"
            " a.ended_at, j.submitted_at, j.started_at AS first_started_at,"  # jobs.started_at: its first dispatch
            " COALESCE(j.memory, 0) AS memory"
            " FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE a.dispatched_at IS NOT NULL AND (a.ended_at IS NULL OR a.ended_at >= ?)", (after,)).fetchall()
        return [Held(user=r["user"], queue=r["queue"], job_id=r["job_id"], cpu=r["cpu"], gpu=r["gpu"],
                     dispatched_at=r["dispatched_at"], ended_at=r["ended_at"], submitted_at=r["submitted_at"],
                     first_started_at=r["first_started_at"], memory=r["memory"]) for r in rows]

    def decayed_use(self, after: float, now: float, half_life: float) -> list[tuple]:
        """:func:`scheduler.accounting.decayed_usage`'s sum done in SQL, grouped by
        queue, user and shape: ``(queue, user, cpu, gpu, memory, decayed
        seconds)`` rows, a handful however long the history.  The closed form is
        accounting.decayed_seconds'; a test holds the two to the same numbers."""
        k = math.log(2) / half_life if half_life > 0 else 0.0
        held = ("(exp(-:k * (:now - MIN(COALESCE(a.ended_at, :now), :now))) - exp(-:k * (:now - a.dispatched_at))) / :k"
                if k else "MIN(COALESCE(a.ended_at, :now), :now) - a.dispatched_at")
        return [(r["queue"], r["user"], r["cpu"], r["g"], r["m"], r["seconds"]) for r in self._conn.execute(
            "SELECT j.queue, j.user, j.cpu, COALESCE(a.gpu_share, j.gpu) AS g, COALESCE(j.memory, 0) AS m,"
            f" SUM(CASE WHEN MIN(COALESCE(a.ended_at, :now), :now) > a.dispatched_at THEN {held} ELSE 0 END)"
            " AS seconds"
            " FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE a.dispatched_at IS NOT NULL AND (a.ended_at IS NULL OR a.ended_at >= :after)"
            " GROUP BY j.queue, j.user, j.cpu, g, m", {"k": k, "now": now, "after": after})]

    def usage_summary(self, after: float, since: float, now: float, half_life: float,
                      by: tuple[str, ...]) -> list[dict[str, Any]]:
        """:func:`scheduler.accounting.summarize` of ``held_since(after)`` done by
        SQLite: one row per group of ``by`` (``queue``, ``user``), not one Python
        object per attempt (a 100k-job history cost 0.7 s that way).  A test
        holds the two to the same numbers."""
        if not by or not set(by) <= {"queue", "user"}:
            raise ValueError(f"usage groups: {by!r}")
        cols = ", ".join(by)
        k = math.log(2) / half_life if half_life > 0 else 0.0
        end = "MIN(e, :now)"
        decayed = (f"(CASE WHEN {end} > d THEN (exp(-:k * (:now - {end})) - exp(-:k * (:now - d))) / :k ELSE 0 END)"
                   if k else f"MAX(0, {end} - d)")
        inside = f"MAX(0.0, {end} - MAX(d, :since))"
        held = ("SELECT j.queue, j.user, j.id AS job_id, j.cpu AS cpu, COALESCE(a.gpu_share, j.gpu) AS gpu,"
                " a.dispatched_at AS d, COALESCE(a.ended_at, :now) AS e, j.submitted_at AS sub, j.started_at AS first"
                " FROM attempts a JOIN jobs j ON j.id = a.job_id"
                " WHERE a.dispatched_at IS NOT NULL AND (a.ended_at IS NULL OR a.ended_at >= :after)")
        args = {"k": k, "now": now, "after": after, "since": since}
        rows = {tuple(r[c] for c in by): {**{c: r[c] for c in by}, "jobs": 0, "attempts": r["attempts"],
                                          "cpu_hours": r["cpu_s"] / 3600, "gpu_hours": r["gpu_s"] / 3600,
                                          "avg_wait_s": None, "decayed_cpu_hours": r["dcpu"] / 3600,
                                          "decayed_gpu_hours": r["dgpu"] / 3600}
                for r in self._conn.execute(
                    f"WITH h AS ({held}) SELECT {cols},"
                    f" SUM(CASE WHEN {inside} > 0 OR d BETWEEN :since AND :now THEN 1 ELSE 0 END) AS attempts,"
                    f" SUM(CASE WHEN {inside} > 0 OR d BETWEEN :since AND :now THEN cpu * {inside} ELSE 0 END)"
                    " AS cpu_s,"
                    f" SUM(CASE WHEN {inside} > 0 OR d BETWEEN :since AND :now THEN gpu * {inside} ELSE 0 END)"
                    " AS gpu_s,"
                    f" SUM(cpu * {decayed}) AS dcpu, SUM(gpu * {decayed}) AS dgpu FROM h GROUP BY {cols}", args)}
        # A job's wait counts once, however many attempts it had.
        for r in self._conn.execute(
                f"WITH h AS ({held}) SELECT {cols}, COUNT(*) AS jobs, AVG(w) AS wait FROM"
                f" (SELECT DISTINCT {cols}, job_id, first - sub AS w FROM h WHERE first BETWEEN :since AND :now)"
                f" GROUP BY {cols}", args):
            row = rows[tuple(r[c] for c in by)]
            row["jobs"], row["avg_wait_s"] = r["jobs"], r["wait"]
        kept = [r for r in rows.values() if r["attempts"] or r["decayed_cpu_hours"] > 1e-9
                or r["decayed_gpu_hours"] > 1e-9]
        return sorted(kept, key=lambda r: (-(r["gpu_hours"] + r["cpu_hours"]), tuple(str(r[f]) for f in by)))

    def stage_durations(self, job_ids: list[int], recent: int = 50) -> dict[int, list[float]]:
        """For each of ``job_ids``: how long (seconds, dispatch to end) the latest
        ``recent`` succeeded attempts of the same experiment name and stage held
        their resources; [] when none has succeeded yet.  Jobs of one stage share
        one list.  The history :mod:`scheduler.estimate` guesses durations from."""
        pair_of = {r["id"]: (r["name"], r["stage"]) for r in self._rows_in(
            "SELECT j.id, e.name, j.stage FROM jobs j JOIN experiments e ON e.id = j.experiment_id WHERE j.id IN ",
            job_ids)}
        # One query per (experiment name, stage), newest first with a LIMIT: SQLite
        # keeps the top ``recent`` as it scans, where a window function sorted
        # every succeeded attempt of those names (0.16 s at 60,000).
        durations: dict[tuple[str, str], list[float]] = {}
        for name, stage in sorted(set(pair_of.values())):
            durations[(name, stage)] = [max(0.0, r["held"]) for r in self._conn.execute(
                "SELECT a.ended_at - a.dispatched_at AS held FROM experiments e JOIN jobs j ON j.experiment_id = e.id"
                " JOIN attempts a ON a.job_id = j.id WHERE e.name = ? AND j.stage = ? AND a.state = 'succeeded'"
                " AND a.dispatched_at IS NOT NULL AND a.ended_at IS NOT NULL ORDER BY a.ended_at DESC LIMIT ?",
                (name, stage, recent))]
        return {job_id: durations.get(pair, []) for job_id, pair in pair_of.items()}

    def recent_runs(self, limit: int = 5000) -> list[tuple[str, float, float, int, int, dict, str, float]]:
        """The latest ``limit`` attempts that ran to an end (succeeded, failed or
        timed out), oldest first: (user, cpu, gpu, memory, gpu_memory, custom,
        "experiment/stage", seconds held), what durations are predicted from
        (policy.durations).  Newest by attempt id, so no sort of every attempt."""
        rows = self._conn.execute(
            "SELECT j.user, j.cpu, j.gpu, COALESCE(j.memory, 0) AS memory, COALESCE(j.gpu_memory, 0) AS gpu_memory,"
            " j.custom, e.name || '/' || j.stage AS grp, a.ended_at - a.dispatched_at AS held"
            " FROM attempts a JOIN jobs j ON j.id = a.job_id JOIN experiments e ON e.id = j.experiment_id"
            " WHERE a.state IN ('succeeded', 'failed', 'timed_out') AND a.dispatched_at IS NOT NULL"
            " AND a.ended_at IS NOT NULL ORDER BY a.id DESC LIMIT ?", (limit,)).fetchall()
        return [(r["user"], r["cpu"], r["gpu"], r["memory"], r["gpu_memory"], json.loads(r["custom"]), r["grp"],
                 max(0.0, r["held"])) for r in reversed(rows)]

    def submitted_shapes(self, since: float) -> list[tuple[float, float, int, int, dict, float, int]]:
        """How many jobs of each shape were submitted since ``since``, by hour:
        (cpu, gpu, memory, gpu_memory, custom, hour start, count), what the mix
        of shapes placement keeps unfragmented is decayed from."""
        return [(r["cpu"], r["gpu"], r["memory"], r["gpu_memory"], json.loads(r["custom"]), r["hour"] * 3600.0, r["n"])
                for r in self._conn.execute(
                    "SELECT cpu, gpu, COALESCE(memory, 0) AS memory, COALESCE(gpu_memory, 0) AS gpu_memory, custom,"
                    " CAST(submitted_at / 3600 AS INTEGER) AS hour, COUNT(*) AS n FROM jobs WHERE submitted_at >= ?"
                    " GROUP BY cpu, gpu, memory, gpu_memory, custom, hour", (since,))]

    def attained(self, job_ids: list[int]) -> dict[int, tuple[float, int]]:
        """{job id: (GPU-seconds its preempted attempts held, how many)} for ``job_ids``."""
        return {r["id"]: (r["attained"], r["preemptions"]) for r in self._rows_in(
            f"SELECT jobs.id, {_SQL_ATTAINED} FROM jobs WHERE jobs.id IN ", job_ids)}

    def running_attempts(self) -> list[tuple[Attempt, Job]]:
        rows = self._conn.execute("SELECT a.* FROM attempts a WHERE a.state = 'running' ORDER BY a.id").fetchall()
        jobs = {j.id: j for j in self.jobs_by_ids([r["job_id"] for r in rows])}
        return [(_attempt(r), jobs[r["job_id"]]) for r in rows]

    def cancel_requested(self) -> set[int]:
        return {r["id"] for r in self._conn.execute(
            "SELECT id FROM jobs WHERE state = 'running' AND cancel_requested = 1")}

    def count_active(self) -> int:
        return self._conn.execute(
            "SELECT COUNT(*) AS n FROM jobs WHERE state IN ('pending', 'running', 'blocked', 'paused')").fetchone()["n"]

    def job_stages(self, ids: list[int]) -> dict[int, tuple[int, str]]:
        """Job id -> (experiment id, stage): what jobs of one pack must share."""
        return {r["id"]: (r["experiment_id"], r["stage"])
                for r in self._rows_in("SELECT id, experiment_id, stage FROM jobs WHERE id IN ", ids)}

    def early_stopping(self) -> dict[tuple[int, str], dict[str, Any]]:
        """{(experiment id, stage): its early_stop rule} for the stages with one
        and a running job (scheduler.early_stop)."""
        return {(r["experiment_id"], r["stage"]): json.loads(r["runtime"])["early_stop"]
                for r in self._conn.execute(
                    "SELECT s.experiment_id, s.stage, s.runtime FROM stage_runtime s WHERE s.runtime LIKE"
                    " '%\"early_stop\"%' AND EXISTS (SELECT 1 FROM jobs j WHERE j.experiment_id = s.experiment_id"
                    " AND j.stage = s.stage AND j.state IN ('running', 'paused'))")}

    def stage_run_dirs(self, experiment_id: int, stage: str) -> list[StageRunDir]:
        """Every attempt of a stage's jobs, by job then attempt: where each one's
        curve is (a job resumed after a pause or a preemption has one per attempt)."""
        return [StageRunDir(r["id"], r["state"], r["run_dir"], r["node_id"], r["number"] == r["attempts"])
                for r in self._conn.execute(
                    "SELECT j.id, j.state, j.attempts, a.number, a.run_dir, a.node_id FROM jobs j"
                    " JOIN attempts a ON a.job_id = j.id WHERE j.experiment_id = ? AND j.stage = ?"
                    " ORDER BY j.id, a.number", (experiment_id, stage))]

    def checkpointing(self, stages: Iterable[tuple[int, str]]) -> dict[tuple[int, str], bool]:
        """{(experiment id, stage): whether its jobs say they resume from a
        checkpoint (`checkpoints: true`), which tiers may preempt}."""
        out = {}
        for experiment_id, stage in set(stages):
            row = self._conn.execute("SELECT runtime FROM stage_runtime WHERE experiment_id = ? AND stage = ?",
                                     (experiment_id, stage)).fetchone()
            out[(experiment_id, stage)] = bool(row and json.loads(row["runtime"]).get("checkpoints"))
        return out

    def stage_busy(self, experiment_id: int, stage: str) -> bool:
        """Whether a stage still has a job to run (blocked, pending, running), or a
        search with trials left to ask: what could still reach a rung and change
        who is promoted (scheduler.early_stop)."""
        if self._conn.execute("SELECT 1 FROM jobs WHERE experiment_id = ? AND stage = ?"
                              " AND state IN ('blocked', 'pending', 'running') LIMIT 1",
                              (experiment_id, stage)).fetchone():
            return True
        return any(s == stage for _, s, *_ in self.open_searches(experiment_id))

    def promote(self, whys: dict[int, str], now: float) -> list[int]:
        """Paused jobs back to pending, to resume from their checkpoints (one
        transaction); those no longer paused (cancelled meanwhile) are skipped."""
        return self._move_paused(whys, JobState.PENDING, now)

    def give_up(self, whys: dict[int, str], now: float) -> list[int]:
        """Paused jobs that will never be promoted end pruned."""
        return self._move_paused(whys, JobState.PRUNED, now)

    def _move_paused(self, whys: dict[int, str], target: JobState, now: float) -> list[int]:
        moved = []
        with self._tx() as cur:
            for job_id, why in whys.items():
                row = cur.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or row["state"] != JobState.PAUSED.value:
                    continue
                self._move(cur, job_id, target, now, why, reason=why if target is JobState.PRUNED else None)
                if target is JobState.PRUNED:
                    self._fail_dependents(cur, job_id, now)
                moved.append(job_id)
        return moved

    def launch_context(self, job_id: int) -> dict[str, Any]:
        """What a worker needs beyond the job row: the code snapshot, upstream
        outputs, and the previous attempt's run dir (to resume from)."""
        row = self._conn.execute(
            "SELECT e.package, e.spec_path, j.attempts, s.runtime FROM jobs j JOIN experiments e"
            " ON e.id = j.experiment_id LEFT JOIN stage_runtime s ON s.experiment_id = j.experiment_id"
            " AND s.stage = j.stage WHERE j.id = ?", (job_id,)).fetchone()
        inputs = []
        for up in self._conn.execute(
                "SELECT j.id, j.stage, j.params, a.run_dir, r.metrics FROM job_deps d JOIN jobs j ON j.id = d.dep_job_id"
                " JOIN attempts a ON a.job_id = j.id AND a.number = j.attempts"
                " LEFT JOIN results r ON r.attempt_id = a.id WHERE d.job_id = ? ORDER BY j.id", (job_id,)):
            inputs.append({"job_id": up["id"], "stage": up["stage"], "params": json.loads(up["params"]),
                           "run_dir": up["run_dir"], "metrics": json.loads(up["metrics"] or "{}")})
        # The latest earlier attempt that started: where a checkpoint to resume
        # from would be.  One requeued from a pack before it started has no run
        # dir; it is recorded as having held nothing (dispatched when it ended).
        previous = self._conn.execute(
            "SELECT run_dir FROM attempts WHERE job_id = ? AND number < ? AND NOT (started_at IS NULL"
            " AND dispatched_at = ended_at AND state IN ('lost', 'preempted')) ORDER BY number DESC LIMIT 1",
            (job_id, row["attempts"])).fetchone()
        return {"package": row["package"], "spec_path": row["spec_path"], "inputs": inputs,
                "previous_run_dir": previous["run_dir"] if previous else None,
                "runtime": json.loads(row["runtime"]) if row["runtime"] else {}}

    # ------------------------------------------------------------ reads for the CLI

    def _jobs(self, where: str, args: tuple[Any, ...]) -> list[Job]:
        rows = self._conn.execute("SELECT " + _JOB_COLUMNS + _JOB_FROM + where, args).fetchall()
        return [_job(r) for r in rows]

    def job(self, job_id: int) -> Job:
        found = self._jobs("WHERE j.id = ?", (job_id,))
        if not found:
            self.check_intact()  # a damaged table loses rows: say so rather than "no job"
            raise UnknownIdError(f"no job {job_id}; `labq queue` lists the active ones")
        job = found[0]
        job.depends_on = [r["dep_job_id"] for r in self._conn.execute(
            "SELECT dep_job_id FROM job_deps WHERE job_id = ? ORDER BY dep_job_id", (job_id,))]
        return job

    def jobs_by_ids(self, ids: list[int]) -> list[Job]:
        return [_job(r) for r in self._rows_in("SELECT " + _JOB_COLUMNS + _JOB_FROM + "WHERE j.id IN ", ids)]

    def _rows_in(self, sql: str, values: list[Any], tail: str = "", tail_args: tuple = ()) -> list[sqlite3.Row]:
        """``sql`` ending in "IN ", then ``tail``, run over ``values`` in chunks:
        SQLite caps the number of bound parameters."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(values), 500):
            chunk = values[start:start + 500]
            rows += self._conn.execute(sql + "(" + ",".join("?" * len(chunk)) + ")" + tail,
                                       (*chunk, *tail_args)).fetchall()
        return rows

    def active_jobs(self, limit: int | None = None, offset: int = 0) -> list[Job]:
        """Running first, then pending and blocked in the order they will be considered."""
        sql = ("WHERE j.state IN ('running', 'pending', 'paused', 'blocked') ORDER BY "
               "CASE j.state WHEN 'running' THEN 0 WHEN 'pending' THEN 1 WHEN 'paused' THEN 2 ELSE 3 END,"
               " j.priority DESC, j.id")
        if limit is not None or offset:
            return self._jobs(sql + " LIMIT ? OFFSET ?", (-1 if limit is None else limit, offset))
        return self._jobs(sql, ())

    def experiment_page(self, limit: int, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """(how many experiments there are, the newest ``limit`` after ``offset``,
        each with its job count by state): the dashboard's list, without decoding specs."""
        total = self._conn.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
        rows = [dict(r) for r in self._conn.execute(
            "SELECT id, name, user, queue, priority, submitted_at, metric, mode FROM experiments"
            " ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset))]
        for row in rows:
            counts = {r["state"]: r["n"] for r in self._conn.execute(
                "SELECT state, COUNT(*) AS n FROM jobs WHERE experiment_id = ? GROUP BY state", (row["id"],))}
            row["counts"], row["jobs"] = counts, sum(counts.values())
        return total, rows

    def state_counts(self, experiment_id: int | None = None) -> dict[str, int]:
        if experiment_id is None:
            rows = self._conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        else:
            rows = self._conn.execute("SELECT state, COUNT(*) AS n FROM jobs WHERE experiment_id = ? GROUP BY state",
                                      (experiment_id,))
        return {r["state"]: r["n"] for r in rows}

    def jobs_of_experiment(self, experiment_id: int) -> list[Job]:
        return self._jobs("WHERE j.experiment_id = ? ORDER BY j.id", (experiment_id,))

    def experiment(self, ref: str | int) -> Experiment:
        """By id, or by name (the newest experiment of that name)."""
        if isinstance(ref, int) or is_id(ref):
            row = self._conn.execute("SELECT * FROM experiments WHERE id = ?", (int(ref),)).fetchone()
        else:
            row = self._conn.execute("SELECT * FROM experiments WHERE name = ? ORDER BY id DESC LIMIT 1",
                                     (ref,)).fetchone()
        if row is None:
            names = [r["name"] for r in self._conn.execute(
                "SELECT name FROM experiments GROUP BY name ORDER BY MAX(id) DESC LIMIT 5")]
            hint = f"; recent: {', '.join(names)}" if names else ""
            raise UnknownIdError(f"no experiment {ref!r}{hint}")
        return Experiment(id=row["id"], name=row["name"], user=row["user"], queue=row["queue"],
                          priority=row["priority"], spec_path=row["spec_path"], spec=json.loads(row["spec"]),
                          package=row["package"], metric=row["metric"], mode=row["mode"],
                          submitted_at=row["submitted_at"])

    def experiment_names(self, name: str) -> list[int]:
        return [r["id"] for r in self._conn.execute("SELECT id FROM experiments WHERE name = ?", (name,))]

    def active_job_ids_of(self, experiment_ids: list[int]) -> list[int]:
        ids: list[int] = []
        for experiment_id in experiment_ids:
            ids += [r["id"] for r in self._conn.execute(
                "SELECT id FROM jobs WHERE experiment_id = ? AND state IN ('pending', 'running', 'blocked', 'paused')",
                (experiment_id,))]
        return ids

    def attempts(self, job_id: int) -> list[Attempt]:
        rows = self._conn.execute(
            "SELECT a.*, r.metrics, r.artifacts, r.usage, r.outputs FROM attempts a LEFT JOIN results r ON r.attempt_id = a.id"
            " WHERE a.job_id = ? ORDER BY a.number", (job_id,)).fetchall()
        return [_attempt(r) for r in rows]

    def events(self, job_id: int) -> list[Event]:
        rows = self._conn.execute("SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
        return [Event(ts=r["ts"], job_id=r["job_id"], attempt_id=r["attempt_id"], kind=r["kind"],
                      message=r["message"]) for r in rows]

    def final_results(self, experiment_id: int) -> dict[int, tuple[Attempt, dict[str, Any]]]:
        """The latest attempt of each job of an experiment with its metrics."""
        rows = self._conn.execute(
            "SELECT a.*, r.metrics, r.artifacts, r.usage, r.outputs FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " LEFT JOIN results r ON r.attempt_id = a.id"
            " WHERE j.experiment_id = ? AND a.number = j.attempts", (experiment_id,)).fetchall()
        return {r["job_id"]: (_attempt(r), json.loads(r["metrics"]) if r["metrics"] else {}) for r in rows}

    # ------------------------------------------------------------ one page of results, ranked in SQL

    def job_count(self, experiment_id: int) -> tuple[int, str | None]:
        """(how many jobs the experiment has, the stage of its last job)."""
        row = self._conn.execute("SELECT COUNT(*) AS n, MAX(id) AS last_id FROM jobs WHERE experiment_id = ?",
                                 (experiment_id,)).fetchone()
        last = (self._conn.execute("SELECT stage FROM jobs WHERE id = ?", (row["last_id"],)).fetchone()
                if row["last_id"] else None)
        return row["n"], last["stage"] if last else None

    def final_metric_names(self, experiment_id: int) -> dict[str, list[str]]:
        """{stage: names of the numeric metrics its jobs recorded}."""
        names: dict[str, list[str]] = {}
        for r in self._conn.execute(
                "SELECT stage, name FROM metric_names WHERE experiment_id = ? ORDER BY stage, name", (experiment_id,)):
            names.setdefault(r["stage"], []).append(r["name"])
        return names

    def ranked_job_ids(self, experiment_id: int, metric: str | None, descending: bool, limit: int) -> list[int]:
        """The first ``limit`` jobs by ``metric`` (best first, ties by id), then
        the jobs without it by id: from the rank index, whatever the experiment's size."""
        ids: list[int] = []
        if metric:
            order = "DESC" if descending else "ASC"
            ids = [r["job_id"] for r in self._conn.execute(
                f"SELECT job_id FROM final_metrics WHERE experiment_id = ? AND name = ? ORDER BY value {order}, job_id"
                " LIMIT ?", (experiment_id, metric, limit))]
        if len(ids) < limit:
            ids += [r["id"] for r in self._conn.execute(
                "SELECT id FROM jobs j WHERE experiment_id = ? AND NOT EXISTS (SELECT 1 FROM final_metrics f"
                " WHERE f.job_id = j.id AND f.name = ?) ORDER BY id LIMIT ?",
                (experiment_id, metric or "", limit - len(ids)))]
        return ids

    def ranked_by_param(self, experiment_id: int, name: str, descending: bool, limit: int) -> list[int]:
        """The first ``limit`` jobs by the param ``name``: numbers first, in
        order (ties by id), then the jobs where it is not a number, by id, as
        ranking.results sorts decoded rows; SQLite reads the params, so a page
        of a 100k-job experiment costs one scan, not 100k decoded jobs."""
        order = "DESC" if descending else "ASC"
        return [r["id"] for r in self._conn.execute(
            "SELECT id FROM (SELECT j.id, p.type AS type, p.value AS value FROM jobs j"
            " LEFT JOIN json_each(j.params) p ON p.key = ? WHERE j.experiment_id = ?)"
            f" ORDER BY type IS NULL OR type NOT IN ('integer', 'real'),"
            f" CASE WHEN type IN ('integer', 'real') THEN value END {order}, id LIMIT ?",
            (name, experiment_id, limit))]

    def final_attempts(self, job_ids: list[int]) -> dict[int, tuple[Attempt, dict[str, Any]]]:
        """The latest attempt of each of ``job_ids`` with its metrics."""
        rows = self._rows_in(
            "SELECT a.*, r.metrics, r.artifacts, r.usage, r.outputs FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " LEFT JOIN results r ON r.attempt_id = a.id WHERE a.number = j.attempts AND j.id IN ", job_ids)
        return {r["job_id"]: (_attempt(r), json.loads(r["metrics"]) if r["metrics"] else {}) for r in rows}

    def final_advice(self, experiment_id: int, job_ids: list[int] | None = None) -> dict[int, list[str]]:
        """{job id: right-sizing advice on its latest attempt} (jobs with some)."""
        if job_ids is None:
            rows = self._conn.execute("SELECT job_id, line FROM final_advice WHERE experiment_id = ? ORDER BY rowid",
                                      (experiment_id,)).fetchall()
        else:
            rows = self._rows_in("SELECT job_id, line FROM final_advice WHERE job_id IN ", job_ids, " ORDER BY rowid")
        advice: dict[int, list[str]] = {}
        for r in rows:
            advice.setdefault(r["job_id"], []).append(r["line"])
        return advice

    def advice_counts(self, experiment_id: int, top: int) -> list[tuple[str, int]]:
        """The most common advice lines over the experiment's jobs, most jobs first."""
        return [(r["line"], r["n"]) for r in self._conn.execute(
            "SELECT line, COUNT(*) AS n FROM final_advice WHERE experiment_id = ? GROUP BY line"
            " ORDER BY n DESC, line LIMIT ?", (experiment_id, top))]

    def _stage_firsts(self, experiment_id: int) -> list[sqlite3.Row]:
        """(stage, params, swept) of each stage's first job, in stage order: every
        job of a stage has the same param names and differs only in swept values."""
        return self._conn.execute(
            "SELECT stage, params, swept FROM jobs WHERE id IN"
            " (SELECT MIN(id) FROM jobs WHERE experiment_id = ? GROUP BY stage) ORDER BY id", (experiment_id,)).fetchall()

    def param_names(self, experiment_id: int) -> set[str]:
        """Every param name of the experiment's stages."""
        return {name for row in self._stage_firsts(experiment_id) for name in json.loads(row["params"])}

    def varying_params(self, experiment_id: int) -> list[str]:
        """Params whose value differs between jobs of one stage.  Within a stage
        only swept params can differ (scheduler.sweep), so each stage's first job
        names the candidates, and one indexed probe per candidate settles it."""
        varying: list[str] = []
        for first in self._stage_firsts(experiment_id):
            stage, params_text = first["stage"], first["params"]
            params, swept = json.loads(params_text), json.loads(first["swept"])
            for name in (k for k in params if k in swept and k not in varying):
                # By decoded key (json_each), not by a JSON path: any key text matches.
                if self._conn.execute(
                        "SELECT 1 FROM jobs j WHERE experiment_id = ? AND stage = ?"
                        " AND (SELECT json_quote(value) FROM json_each(j.params) WHERE key = ?)"
                        " IS NOT (SELECT json_quote(value) FROM json_each(?) WHERE key = ?) LIMIT 1",
                        (experiment_id, stage, name, params_text, name)).fetchone():
                    varying.append(name)
        return varying

    # ------------------------------------------------------------ start estimates

    def save_estimates(self, starts: dict[int, float | None], now: float,
                       outlooks: dict[int, Outlook] | None = None) -> None:
        """Replace every estimate with ``starts`` (the scheduler's latest replay)
        and every outlook with ``outlooks``."""
        with self._tx() as cur:
            cur.execute("DELETE FROM estimates")
            cur.executemany("INSERT INTO estimates (job_id, start) VALUES (?, ?)", list(starts.items()))
            cur.execute("DELETE FROM outlooks")
            cur.execute("DELETE FROM outlook_remaining")
            outlooks = outlooks or {}
            cur.executemany("INSERT INTO outlooks VALUES (?, ?, ?, ?, ?)",
                            [(j, o.predicted, o.basis, o.tier, o.tiers) for j, o in outlooks.items()])
            cur.executemany("INSERT INTO outlook_remaining VALUES (?, ?)",
                            [(j, o.remaining) for j, o in outlooks.items() if o.remaining is not None])
            cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('estimated_at', ?)", (repr(now),))

    def outlooks(self, job_ids: list[int]) -> dict[int, Outlook]:
        """The scheduler's last outlooks for those of ``job_ids`` it wrote one for."""
        return {r["job_id"]: Outlook(r["predicted"], r["basis"], r["tier"], r["tiers"], r["remaining"])
                for r in self._rows_in(
            "SELECT o.*, r.remaining FROM outlooks o LEFT JOIN outlook_remaining r ON r.job_id = o.job_id"
            " WHERE o.job_id IN ", job_ids)}

    def estimates(self, job_ids: list[int]) -> tuple[float | None, dict[int, float | None]]:
        """(when the scheduler last estimated, or None; {job id: estimated start}
        for those of ``job_ids`` it estimated)."""
        at = self.meta("estimated_at")
        rows = self._rows_in("SELECT job_id, start FROM estimates WHERE job_id IN ", job_ids)
        return (float(at) if at else None), {r["job_id"]: r["start"] for r in rows}

    # ------------------------------------------------------------ nodes and heartbeat

    def save_nodes(self, nodes: list[NodeSnapshot]) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM nodes")
            cur.executemany(
                "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(n.node_id, n.address, int(n.alive), _dumps(n.total), _dumps(n.allocated), n.running_jobs,
                  _dumps(n.gpus), n.updated_at) for n in nodes])

    def nodes(self) -> list[NodeSnapshot]:
        return [NodeSnapshot(node_id=r["node_id"], address=r["address"], alive=bool(r["alive"]),
                             total=json.loads(r["total"]), allocated=json.loads(r["allocated"]),
                             running_jobs=r["running_jobs"], gpus=json.loads(r["gpus"]), updated_at=r["updated_at"])
                for r in self._conn.execute("SELECT * FROM nodes ORDER BY address, node_id")]

    def set_meta(self, values: dict[str, str]) -> None:
        with self._tx() as cur:
            cur.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))

    def meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None


def damaged(path: Path, detail: Any) -> StoreError:
    return StoreError(f"{path}: the state database is damaged ({detail}); labq will not read or write it. "
                      "Restore a backup, or move it away to start a new queue (its jobs are then lost).")


def _is_storage_failure(exc: sqlite3.Error) -> bool:
    """Disk full, read-only or failing storage: the user's environment, not a bug."""
    text = str(exc).lower()
    return any(s in text for s in ("disk is full", "disk i/o error", "readonly database", "unable to open"))


def _write_finals(cur: sqlite3.Cursor, row: sqlite3.Row, metrics: dict[str, Any], advice: Iterable[str]) -> None:
    """The ranked metrics and the right-sizing advice of a job's latest attempt
    (``row``: its experiment_id, job_id and stage)."""
    experiment_id, job_id = row["experiment_id"], row["job_id"]
    ranked = [(experiment_id, job_id, row["stage"], k, float(v)) for k, v in metrics.items() if is_number(v)]
    cur.executemany("INSERT OR REPLACE INTO final_metrics VALUES (?, ?, ?, ?, ?)", ranked)
    cur.executemany("INSERT OR IGNORE INTO metric_names VALUES (?, ?, ?)", [r[:1] + r[2:4] for r in ranked])
    cur.executemany("INSERT INTO final_advice VALUES (?, ?, ?)", [(experiment_id, job_id, line) for line in advice])


def is_number(value: Any) -> bool:
    """A value a result can be ranked by: an int or float (one a double can hold),
    not a bool, not NaN."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return not math.isnan(float(value))
    except OverflowError:  # an int beyond any double: nothing to rank it against
        return False


def _backfill_finals(cur: sqlite3.Cursor) -> None:
    """Schema 3: rank and advise the latest attempt of every job that has a result."""
    rows = cur.execute(
        "SELECT a.id AS attempt_id, a.job_id, a.gpu_share, a.started_at, a.ended_at, a.peak_rss, j.experiment_id,"
        " j.stage, j.cpu, j.gpu, j.gpu_memory, j.memory, r.metrics, r.usage FROM jobs j"
        " JOIN attempts a ON a.job_id = j.id AND a.number = j.attempts JOIN results r ON r.attempt_id = a.id"
        " WHERE a.ended_at IS NOT NULL").fetchall()
    for r in rows:
        usage = {"peak_rss": r["peak_rss"], "started_at": r["started_at"], "ended_at": r["ended_at"],
                 **json.loads(r["usage"] or "{}")}
        requested = endings.booked(cpu=r["cpu"], gpu=r["gpu"], gpu_share=r["gpu_share"], gpu_memory=r["gpu_memory"],
                                   memory=r["memory"])
        _write_finals(cur, r, json.loads(r["metrics"] or "{}"), advise(requested, usage))


def _waiting(rows: list[sqlite3.Row]) -> list[Waiting]:
    """Pending jobs as the policy sees them, from ``_WAITING_COLUMNS`` rows: each
    field of :class:`Waiting` from the column of its name.  The columns are looked
    up by name once per query, not per row: sqlite3.Row's lookup by name, or a
    call by keyword, per row made loading 100,000 pending jobs 30-50% slower."""
    if not rows:
        return []
    at = {name: i for i, name in enumerate(rows[0].keys())}
    fields = operator.itemgetter(*(at[name] for name in _WAITING_FIELDS))
    waiting = [Waiting(*fields(r)) for r in rows]
    loads = json.loads
    for w in waiting:  # custom resources, stored as JSON: nearly always none
        w.custom = {} if w.custom == "{}" else loads(w.custom)
    return waiting


def _end_facts(row: sqlite3.Row) -> endings.EndFacts:
    """What the rules of an attempt's end need, from the attempt joined with its job."""
    return endings.EndFacts(attempt=row["number"], retries=row["retries"], free_retries=row["free_retries"],
                            node_requeues=row["node_requeues"], cancel_requested=bool(row["cancel_requested"]),
                            cpu=row["cpu"], gpu=row["gpu"], gpu_share=row["gpu_share"], gpu_memory=row["gpu_memory"],
                            memory=row["memory"], oom_gpu_scale=row["oom_gpu_scale"], started_at=row["started_at"])


def _job(r: sqlite3.Row) -> Job:
    return Job(id=r["id"], experiment_id=r["experiment_id"], experiment=r["experiment"], stage=r["stage"],
               params=json.loads(r["params"]), swept=json.loads(r["swept"]), target_kind=r["target_kind"],
               target=r["target"], cpu=r["cpu"], gpu=r["gpu"], memory=r["memory"], custom=json.loads(r["custom"]),
               retries=r["retries"], timeout=r["timeout"], queue=r["queue"], priority=r["priority"], user=r["user"],
               state=JobState(r["state"]), reason=r["reason"], attempts=r["attempts"],
               cancel_requested=bool(r["cancel_requested"]), submitted_at=r["submitted_at"],
               started_at=r["started_at"], ended_at=r["ended_at"], node_id=r["node_id"],
               gpu_ids=json.loads(r["gpu_ids"]), gpu_memory=r["gpu_memory"], oom_gpu_scale=r["oom_gpu_scale"],
               free_retries=r["free_retries"])


def _attempt(r: sqlite3.Row) -> Attempt:
    keys = r.keys()
    return Attempt(id=r["id"], job_id=r["job_id"], number=r["number"], state=AttemptState(r["state"]),
                   run_dir=r["run_dir"], node_id=r["node_id"], gpu_ids=json.loads(r["gpu_ids"] or "[]"),
                   dispatched_at=r["dispatched_at"], started_at=r["started_at"], ended_at=r["ended_at"],
                   exit_code=r["exit_code"], error=r["error"], peak_rss=r["peak_rss"], gpu_share=r["gpu_share"],
                   metrics=json.loads(r["metrics"]) if "metrics" in keys and r["metrics"] else {},
                   artifacts=json.loads(r["artifacts"]) if "artifacts" in keys and r["artifacts"] else [],
                   usage=json.loads(r["usage"]) if "usage" in keys and r["usage"] else {},
                   outputs=json.loads(r["outputs"]) if "outputs" in keys and r["outputs"] else [])
