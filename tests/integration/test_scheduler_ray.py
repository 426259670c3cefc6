"""The scheduler on real local Ray: dispatch, packing, dependencies, retries,
timeouts, cancel, lost workers, restart reconciliation.  Each test ends with
Ray's own leak check: available resources equal the totals again."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import psutil
import pytest

from helpers import assert_resources_released, drive, make_scheduler, submit_spec, write_spec
from scheduler.states import AttemptState, JobState
from workers.paths import RunPaths

pytestmark = pytest.mark.ray


def test_quickstart_shape_runs_prep_then_parallel_training(tmp_path, ray_backend):
    # Given an iris prep stage and a 4-point random-forest sweep at half a CPU each
    spec = write_spec(tmp_path, """
        experiment: iris
        stages:
          - name: prep
            run: jobs.prep:tabular
            params: {dataset: iris}
          - name: train
            after: [prep]
            run: jobs.train:sklearn
            params: {estimator: sklearn.ensemble.RandomForestClassifier}
            sweep: {grid: {n_estimators: [10, 30], max_depth: [2, null]}}
            resources: {cpu: 0.5}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    # When the scheduler runs it to the end
    jobs = drive(scheduler, store, sub.experiment_id)
    # Then every job succeeded with real metrics, and training started after prep ended
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 5
    finals = store.final_results(sub.experiment_id)
    prep_attempt, prep_metrics = finals[jobs[0].id]
    assert prep_metrics["rows"] == 150
    for job in jobs[1:]:
        attempt, metrics = finals[job.id]
        assert metrics["accuracy"] > 0.8
        assert attempt.started_at >= prep_attempt.ended_at
        assert "model.joblib" in attempt.artifacts
        assert attempt.node_id and attempt.peak_rss > 0
    # And the notebook one-liner gives one row per job with flat params/metrics columns
    from scheduler.api import results_frame

    df = results_frame("iris", home=settings.home_path)
    assert len(df) == 5 and df["metrics.accuracy"].notna().sum() == 4
    assert df.iloc[0]["metrics.accuracy"] == df["metrics.accuracy"].max()  # best first
    assert set(df.loc[df["stage"] == "train", "params.n_estimators"]) == {10, 30}
    assert_resources_released()


def test_four_quarter_gpu_jobs_share_one_logical_gpu_concurrently(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: pack
        stages:
          - name: s
            run: testjobs:sleepy
            params: {seconds: 3}
            sweep: {grid: {i: [1, 2, 3, 4]}}
            resources: {cpu: 0.25, gpu: 0.25}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    jobs = drive(scheduler, store, sub.experiment_id)
    assert all(j.state is JobState.SUCCEEDED for j in jobs)
    metrics = [m for _, m in store.final_results(sub.experiment_id).values()]
    # All four on the same GPU (Ray packs fractions; labq's policy best-fits them)...
    assert {m["gpu"] for m in metrics} == {metrics[0]["gpu"]} and metrics[0]["gpu"] != ""
    assert {m["cuda"] for m in metrics} == {metrics[0]["gpu"]}
    # ...and running at the same time: the latest start precedes the earliest end.
    assert max(m["start"] for m in metrics) < min(m["end"] for m in metrics)
    assert_resources_released()


def test_user_module_beside_the_spec_is_shipped_and_snapshotted(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: shipped
        stages:
          - name: s
            run: testjobs:record_env
            params: {a: 1}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    # Editing the code after submitting does not change the queued job (snapshot).
    (spec.parent / "testjobs.py").write_text("def record_env(ctx):\n    raise SystemExit('edited after submit')\n")
    jobs = drive(scheduler, store, sub.experiment_id)
    assert jobs[0].state is JobState.SUCCEEDED, store.attempts(jobs[0].id)[-1].error
    assert store.final_results(sub.experiment_id)[jobs[0].id][1]["params"] == '{"a": 1}'


def test_downstream_job_reads_upstream_artifacts_and_metrics(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: chain
        stages:
          - name: w
            run: testjobs:writer
            sweep: {grid: {v: [1, 2]}}
            resources: {cpu: 0.5}
          - name: r
            after: [w]
            run: testjobs:upstream_reader
            resources: {cpu: 0.5}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    jobs = drive(scheduler, store, sub.experiment_id)
    assert all(j.state is JobState.SUCCEEDED for j in jobs)
    finals = store.final_results(sub.experiment_id)
    readers = [finals[j.id][1] for j in jobs if j.stage == "r"]
    assert sorted((m["upstream_value"], m["upstream_file"]) for m in readers) == [(1, "hello 1"), (2, "hello 2")]


def test_failed_attempt_is_retried_then_succeeds(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: flaky
        stages:
          - {name: s, run: "testjobs:flaky", retries: 1, resources: {cpu: 0.5}}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    (job,) = drive(scheduler, store, sub.experiment_id)
    assert job.state is JobState.SUCCEEDED and job.attempts == 2
    first, second = store.attempts(job.id)
    assert first.state is AttemptState.FAILED and "first attempt always fails" in first.error
    assert "attempt 1" in RunPaths(Path(first.run_dir)).stdout.read_text()
    assert second.state is AttemptState.SUCCEEDED


def test_retries_exhausted_fails_job_and_marks_dependents(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: fails
        stages:
          - {name: a, run: "testjobs:always_fails", params: {x: 7}, retries: 1, resources: {cpu: 0.5}}
          - {name: b, run: "testjobs:record_env", after: [a]}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    a, b = drive(scheduler, store, sub.experiment_id)
    assert a.state is JobState.FAILED and a.attempts == 2
    assert "ValueError: bad value 7" in a.reason
    assert b.state is JobState.UPSTREAM_FAILED and f"upstream job {a.id}" in b.reason
    assert "Traceback" in store.attempts(a.id)[-1].error


def test_timeout_ends_the_job_and_returns_its_resources(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: slow
        stages:
          - {name: s, run: "testjobs:blocks_in_c", timeout: 2s, retries: 2, resources: {cpu: 1}}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    started = time.monotonic()
    (job,) = drive(scheduler, store, sub.experiment_id, timeout=60)
    # Blocked in C, so the polite cancel cannot land: the forced one ends it.
    assert job.state is JobState.TIMED_OUT and job.attempts == 1  # a timeout is not retried
    assert "timeout" in store.attempts(job.id)[0].error
    assert time.monotonic() - started < 30
    assert_resources_released()


def test_cancel_running_command_kills_its_whole_process_group(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: cmd
        stages:
          - name: s
            command: "sleep 300 & sleep 301; echo never"
            resources: {cpu: 0.5}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    drive(scheduler, store, sub.experiment_id,
          until=lambda jobs: jobs[0].state is JobState.RUNNING and store.attempts(jobs[0].id)
          and RunPaths(Path(store.attempts(jobs[0].id)[0].run_dir)).pgid.exists())
    job_id = store.jobs_of_experiment(sub.experiment_id)[0].id
    pgid = int(RunPaths(Path(store.attempts(job_id)[0].run_dir)).pgid.read_text().split()[0])
    time.sleep(0.5)
    assert [p for p in psutil.process_iter() if _pgid(p) == pgid], "command not running"
    store.cancel([job_id], time.time())
    (job,) = drive(scheduler, store, sub.experiment_id, timeout=30)
    assert job.state is JobState.CANCELLED
    deadline = time.monotonic() + 10
    while [p for p in psutil.process_iter() if _pgid(p) == pgid] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in psutil.process_iter() if _pgid(p) == pgid], "processes of the job survived cancel"
    assert_resources_released()


def _pgid(proc) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except (ProcessLookupError, PermissionError):
        return None


def test_cancel_running_python_job(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: spin
        stages:
          - {name: s, run: "testjobs:spins", resources: {cpu: 0.5}}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    (job,) = drive(scheduler, store, sub.experiment_id, until=lambda jobs: jobs[0].state is JobState.RUNNING)
    time.sleep(1.0)
    store.cancel([job.id], time.time())
    (job,) = drive(scheduler, store, sub.experiment_id, timeout=30)
    assert job.state is JobState.CANCELLED
    assert store.attempts(job.id)[0].state is AttemptState.CANCELLED
    assert_resources_released()


def test_killed_worker_is_recorded_lost_and_retried(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: die
        stages:
          - {name: s, run: "testjobs:die", retries: 1, resources: {cpu: 0.5}}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    (job,) = drive(scheduler, store, sub.experiment_id)
    first, second = store.attempts(job.id)
    assert first.state is AttemptState.LOST and "WorkerCrashedError" in first.error
    assert second.state is AttemptState.SUCCEEDED and job.state is JobState.SUCCEEDED
    # The error says what happened, not where Ray's own logs are; the status shows
    # how long the lost attempt ran (from its dispatch: it never reported a start)
    assert "killed by a signal" in first.error and "python-core-worker" not in first.error
    from scheduler import render

    with render.console.capture() as captured:
        render.console.print(render.status_view(store.job(job.id), store.attempts(job.id), store.events(job.id)))
    text = captured.get()
    lost_row = next(line for line in text.splitlines() if " lost " in line)
    assert re.search(r"~\d", lost_row), lost_row  # "~0.5s": ran since its dispatch
    assert "2 of 2 attempt(s) allowed used" in text


def test_unschedulable_job_does_not_block_the_queue(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: big
        priority: 5
        stages:
          - {name: huge, run: "testjobs:record_env", resources: {cpu: 1, gpu: 8}}
          - {name: special, run: "testjobs:record_env", resources: {cpu: 1, custom: {tpu_v9: 1}}}
          - {name: small, run: "testjobs:record_env", resources: {cpu: 0.5}}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    huge, special, small = drive(scheduler, store, sub.experiment_id)
    assert huge.state is JobState.UNSCHEDULABLE and "8 gpu" in huge.reason
    assert special.state is JobState.UNSCHEDULABLE and "offered by no node" in special.reason
    assert small.state is JobState.SUCCEEDED


def test_job_output_goes_to_its_log_files(tmp_path, ray_backend):
    spec = write_spec(tmp_path, """
        experiment: logs
        stages:
          - {name: s, run: "testjobs:writes_stdout", resources: {cpu: 0.5}}
          - {name: c, command: "echo out-{x}; echo err-{x} >&2; echo '{{\\"m\\": 3}}' > $LABQ_RUN_DIR/metrics.json",
             params: {x: "a b"}, resources: {cpu: 0.5}}
    """)
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    sub = submit_spec(spec, settings)
    py, cmd = drive(scheduler, store, sub.experiment_id)
    assert py.state is JobState.SUCCEEDED and cmd.state is JobState.SUCCEEDED
    py_paths = RunPaths(Path(store.attempts(py.id)[0].run_dir))
    assert "to stdout" in py_paths.stdout.read_text()
    assert "from a child process" in py_paths.stdout.read_text()
    assert "to stderr" in py_paths.stderr.read_text()
    cmd_paths = RunPaths(Path(store.attempts(cmd.id)[0].run_dir))
    assert cmd_paths.stdout.read_text().strip() == "out-a b"  # the param was quoted, not split
    assert cmd_paths.stderr.read_text().strip() == "err-a b"
    assert store.final_results(sub.experiment_id)[cmd.id][1] == {"m": 3}


def test_restart_reconciles_attempts_of_a_dead_scheduler(tmp_path, ray_backend):
    # Given a job that a previous scheduler marked running and then died with
    spec = write_spec(tmp_path, """
        experiment: orphan
        stages:
          - {name: s, run: "testjobs:record_env", resources: {cpu: 0.5}}
    """)
    home = tmp_path / "home"
    _, store, settings = make_scheduler(home, ray_backend)
    sub = submit_spec(spec, settings)
    job_id = sub.job_ids[0]
    from workers.paths import run_dir_for

    store.start_attempts([(job_id, None)], lambda j, n: run_dir_for(home, j, n), time.time())
    # When a new scheduler starts
    scheduler, store, _ = make_scheduler(home, ray_backend)
    assert scheduler.reconcile(time.time()).lost == 1
    # Then the orphaned attempt (no owner holds it: it never launched) is lost, not
    # charged to retries, and the job reruns
    (job,) = drive(scheduler, store, sub.experiment_id)
    first, second = store.attempts(job_id)
    assert first.state is AttemptState.LOST and "no labq owner held it" in first.error
    assert job.state is JobState.SUCCEEDED and second.state is AttemptState.SUCCEEDED


def test_short_jobs_are_packed_and_each_keeps_its_own_logs_artifacts_and_result(tmp_path, ray_backend):
    # Given a 60-job sweep of millisecond jobs at half a CPU (8 slots), one of which kills its worker once
    spec = write_spec(tmp_path, """
        experiment: quick
        stages:
          - name: train
            run: testjobs:quick
            params: {die: 40}
            sweep: {grid: {seed: [RANGE]}}
            resources: {cpu: 0.5}
            retries: 1
    """.replace("RANGE", ", ".join(str(i) for i in range(60))))
    scheduler, store, settings = make_scheduler(tmp_path / "home", ray_backend)
    launches = []  # the job ids of each Ray task, in launch order
    launch, launch_pack = ray_backend.launch, ray_backend.launch_pack

    def one(task, **kwargs):  # the real launches, recorded
        launches.append([task.job_id])
        return launch(task, **kwargs)

    def pack(tasks, **kwargs):
        launches.append([t.job_id for t in tasks])
        return launch_pack(tasks, **kwargs)

    ray_backend.launch, ray_backend.launch_pack = one, pack
    try:
        sub = submit_spec(spec, settings)
        # When the scheduler runs it
        jobs = drive(scheduler, store, sub.experiment_id)
    finally:
        del ray_backend.launch, ray_backend.launch_pack
    packs = [ids for ids in launches if len(ids) > 1]
    # Then once the first jobs were seen to be short, the rest ran several to a Ray task
    assert packs, "no Ray task ran more than one job"
    # And every job succeeded with its own stdout, artifact and metrics
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 60
    finals = store.final_results(sub.experiment_id)
    for job in jobs:
        attempt, metrics = finals[job.id]
        assert metrics["seed"] == job.params["seed"]
        paths = RunPaths(Path(attempt.run_dir))
        assert paths.stdout.read_text() == f"job {job.id} seed {job.params['seed']}\n"
        assert (paths.artifacts / "seed.txt").read_text() == str(job.params["seed"])
    # And the job that killed its worker was retried alone; the pack's other jobs were not charged
    dead = next(j for j in jobs if j.params["seed"] == 40)
    assert [a.state for a in store.attempts(dead.id)] == [AttemptState.LOST, AttemptState.SUCCEEDED]
    for job in jobs:  # every other job was charged at most the one attempt that ran it
        row = store._conn.execute("SELECT attempts, free_retries, node_requeues FROM jobs WHERE id = ?",
                                  (job.id,)).fetchone()
        assert row["node_requeues"] == 0
        if job.id != dead.id:
            assert row["attempts"] - row["free_retries"] == 1, (job.id, tuple(row))
    first = next(ids for ids in launches if dead.id in ids)  # its first attempt's task
    for j in first[first.index(dead.id) + 1:]:  # in a pack, what came after it was requeued unstarted
        assert store.attempts(j)[0].state is AttemptState.LOST and "not started" in store.attempts(j)[0].error
    assert_resources_released()


def test_labqs_local_ray_keeps_idle_workers_through_a_pause(ray_backend):
    """Ray kills idle workers beyond one per CPU after a second; labq's own Ray
    (LOCAL_RAY_SYSTEM_CONFIG) keeps them 10 s, so a wave of fractional-CPU jobs
    after a short pause reuses the workers of the last instead of starting them."""
    import ray

    @ray.remote(num_cpus=0.1, max_retries=0)
    def hold(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    pids = set(ray.get([hold.remote(2.0) for _ in range(10)], timeout=120))
    assert len(pids) > 6  # more workers than this Ray's 4 CPUs: Ray's default would reap the extra ones
    time.sleep(3.0)  # idle three times Ray's default threshold
    assert all(psutil.pid_exists(pid) for pid in pids)
