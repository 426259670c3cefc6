"""Throughput: N trivial jobs through labq, against the same work as raw Ray
tasks, as Ray Jobs (`ray job submit --no-wait`) and as Ray Tune trials.

* labq: a sweep of N no-op callable jobs at {cpu: 0.1}, submitted with
  scheduler.api.submit (what `labq submit` calls), run by a real Scheduler (real
  store, policy and RayBackend, labq's own loop.run with the daemon's default
  poll_interval of 0.2 s) in a thread of this process, against a local Ray with
  2 CPUs.  Measured from the submit call to the last job recorded (max
  jobs.ended_at).  Run 1 is cold (Ray starts worker processes for the
  experiment's working_dir runtime env); runs 2.. are warm (same code snapshot,
  so the same runtime env).
* raw Ray: N `ray.remote(num_cpus=0.1)` no-op tasks in the same Ray, .remote()
  to the last ray.get.
* Ray Tune: N trials of a function trainable that returns at once,
  resources {cpu: 0.1}, in the same Ray (defaults, and reuse_actors=True).
* Ray Jobs: M jobs `python -c pass` with --working-dir (the same code dir) and
  --entrypoint-num-cpus=0.1 via `ray job submit --no-wait` (the CLI, one
  process per submit, as a user's loop would), and via the JobSubmissionClient
  SDK in one process; against a separate `ray start --head` with the dashboard,
  2 CPUs, token auth on.  Measured from the first submit to the last job's
  end_time.  This Ray runs only after the in-process Ray is shut down.

  python bench/bench_throughput.py [--quick] [--n N] [--m M]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "throughput"
TITLE = "Throughput: trivial jobs per second"


def _cpu_now() -> tuple[float, float, float]:
    """(wall, this process's CPU seconds, whole machine's busy CPU seconds)."""
    import psutil

    t = os.times()
    m = psutil.cpu_times()
    busy = m.user + m.system + m.nice + getattr(m, "irq", 0) + getattr(m, "softirq", 0)
    return time.time(), t.user + t.system, busy


def _usage(start: tuple[float, float, float], end: tuple[float, float, float]) -> dict[str, float]:
    wall = end[0] - start[0]
    return {"driver_cpu_pct": 100 * (end[1] - start[1]) / wall, "machine_cpu_pct": 100 * (end[2] - start[2]) / wall}


class TreeCpu:
    """CPU seconds used by this process and every process under it (the local
    Ray's gcs_server, raylet, agents and workers), by kind; plus how many worker
    processes Ray started (one python-core-worker log per worker).  CPU of a
    worker that exits during a run is lost, so warm runs are the reliable ones."""

    def __init__(self, ray_temp: Path):
        self.logs = ray_temp / "session_latest" / "logs"

    @staticmethod
    def _kind(cmd: str, is_me: bool) -> str:
        if is_me:
            return "driver"
        if cmd.startswith("ray::") or "default_worker.py" in cmd:
            return "workers"
        if "raylet" in cmd:
            return "raylet"
        if "gcs_server" in cmd:
            return "gcs"
        return "other Ray"

    def snapshot(self) -> dict:
        import psutil

        me = psutil.Process()
        cpu: dict[int, tuple[str, float]] = {}
        for proc in [me] + me.children(recursive=True):
            try:
                t = proc.cpu_times()
                cpu[proc.pid] = (self._kind(" ".join(proc.cmdline()), proc.pid == me.pid), t.user + t.system)
            except psutil.Error:
                continue
        return {"cpu": cpu, "workers_started": len(list(self.logs.glob("python-core-worker-*.log")))}

    @staticmethod
    def delta(a: dict, b: dict, n: int) -> dict:
        """CPU milliseconds per job, by kind, and worker processes started."""
        out: dict[str, float] = {}
        for pid, (kind, t) in b["cpu"].items():
            before = a["cpu"].get(pid, (kind, 0.0))[1]
            out[kind] = out.get(kind, 0.0) + (t - before)
        per_job = {f"cpu_ms_per_job_{k}": 1000 * v / n for k, v in out.items()}
        per_job["cpu_ms_per_job_total"] = sum(1000 * v / n for v in out.values())
        return {**per_job, "workers_started": b["workers_started"] - a["workers_started"]}


# ---------------------------------------------------------------- labq

def run_labq(spec: Path, settings, store, name: str, n: int, timeout: float, tree: TreeCpu) -> dict:
    from scheduler import api

    s0 = tree.snapshot()
    c0 = _cpu_now()
    t0 = time.time()
    sub = api.submit(spec, [f"experiment={name}"], settings)
    t_submitted = time.time()
    jobs = common.wait_experiment(store, sub.experiment_id, timeout=timeout)
    c1 = _cpu_now()
    acct = TreeCpu.delta(s0, tree.snapshot(), n)
    bad = [j for j in jobs if j.state.value != "succeeded"]
    if bad:
        raise RuntimeError(f"labq: {len(bad)} of {n} jobs did not succeed, e.g. {bad[0].id}: {bad[0].state} {bad[0].reason}")
    wall = max(j.ended_at for j in jobs) - t0
    # Where the slots went is read after the last run (LabqRunner.close): reading
    # 1,000 results here takes long enough (with Ray's idle workers reaped after
    # about a second) to make the next run start cold.
    return {"n": n, "wall_s": wall, "jobs_per_s": n / wall, "submit_s": t_submitted - t0, "t0": t0,
            "experiment_id": sub.experiment_id, **_usage(c0, c1), **acct}


# Runs after the first until one starts no Ray worker process: Ray brings its
# pool up over the first runs (it starts at most a couple of workers at a time
# and reaps idle ones after a second), and a run that starts workers is not warm.
MAX_WARMUP_RUNS = 3


def _kind(runs: list[dict], r: dict) -> str:
    """cold (the first run), warm-up (a later run that still started workers,
    before any warm one), or warm."""
    if not runs:
        return "cold"
    if r.get("workers_started", 0) and not any(x["kind"] == "warm" for x in runs):
        return "warm-up"
    return "warm"


def run_warm(runner, reps: int) -> None:
    """A cold run, warm-up runs until one starts no workers (at most
    MAX_WARMUP_RUNS), then runs until ``reps`` are warm."""
    runner.run()
    while sum(r["kind"] == "warm" for r in runner.runs) < reps:
        if sum(r["kind"] == "warm-up" for r in runner.runs) >= MAX_WARMUP_RUNS:
            runner.runs[-1]["kind"] = "warm"  # never settled: count what there is
        runner.run()


def run_rounds(runners: list, reps: int) -> None:
    """Each runner once per round (labq, raw Ray, labq, raw Ray, ...), so that a
    machine whose speed drifts (a shared VM: raw Ray alone moves 700-1,450
    tasks/s between minutes here) slows both sides of a ratio alike.  Round 1
    is cold; later rounds in which any run started a worker are warm-up rounds
    (at most MAX_WARMUP_RUNS); then ``reps`` warm rounds.  Interleaving needs
    both pools of workers kept while the other side runs: this Ray keeps idle
    workers 10 s (LOCAL_RAY_SYSTEM_CONFIG)."""
    rounds = 0
    while True:
        for runner in runners:
            runner.run()
        rounds += 1
        latest = [runner.runs[-1] for runner in runners]
        settled = any(r["kind"] == "warm" for r in runners[0].runs[:-1])
        if rounds == 1:
            kind = "cold"
        elif any(r.get("workers_started", 0) for r in latest) and not settled and rounds <= MAX_WARMUP_RUNS:
            kind = "warm-up"
        else:
            kind = "warm"
        for r in latest:
            r["kind"] = kind
        print(f"  round {rounds} ({kind}): " + ", ".join(f"{r['jobs_per_s']:.0f}" for r in latest) + " jobs/s, "
              "ratios to the last " + ", ".join(f"{r['jobs_per_s'] / latest[-1]['jobs_per_s']:.2f}"
                                                for r in latest[:-1]), flush=True)
        if sum(r["kind"] == "warm" for r in runners[0].runs) >= reps:
            return


def round_ratios(runs: list[dict], raw_runs: list[dict]) -> list[float]:
    """jobs/s of each warm round's run over raw Ray's in the same round."""
    return [a["jobs_per_s"] / b["jobs_per_s"] for a, b in zip(runs, raw_runs) if a["kind"] == "warm"]


def warm(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r["kind"] == "warm"]


def add_phases(store, r: dict) -> None:
    jobs = store.jobs_of_experiment(r["experiment_id"])
    finals = store.final_results(r["experiment_id"])
    r["first_start_s"] = min(a.started_at for a, _ in finals.values()) - r["t0"]
    r.update(phases(jobs, finals, r["wall_s"]))


def phases(jobs, finals, wall: float) -> dict:
    """Where each job's slot time goes (medians, ms), and how many jobs held a
    slot on average: dispatch (the scheduler's start_attempts) -> the worker's
    body starts -> the job returns -> recorded in the store (jobs.ended_at)."""
    med = common.median
    d2s, s2e, e2r, held = [], [], [], 0.0
    for job in jobs:
        attempt, _ = finals[job.id]
        d2s.append(1000 * (attempt.started_at - attempt.dispatched_at))
        s2e.append(1000 * (attempt.ended_at - attempt.started_at))
        e2r.append(1000 * (job.ended_at - attempt.ended_at))
        held += job.ended_at - attempt.dispatched_at
    return {"dispatch_to_start_ms": med(d2s), "start_to_end_ms": med(s2e), "end_to_recorded_ms": med(e2r),
            "slot_ms": med(a + b + c for a, b, c in zip(d2s, s2e, e2r)), "mean_in_flight": held / wall}


class LabqRunner:
    """A scheduler thread on the in-process Ray; each run submits the same
    N-job sweep under a new experiment name (same code snapshot)."""

    def __init__(self, temp: Path, n: int, timeout: float, pack_seconds: float = 0.5, home: Path | None = None,
                 label: str | None = None):
        from scheduler.store import Store

        self.n, self.timeout = n, timeout
        # The same spec dir for every runner: the same code snapshot, so the same Ray workers.
        self.spec = common.write_noop_spec(temp / "spec", "tp", n, cpu=0.1)
        self.label = label or ("labq" if pack_seconds else "labq, packing off")
        home = self.home = home or temp / ("home" if pack_seconds else "home-nopack")
        (home / "runs").mkdir(parents=True, exist_ok=True)
        self.sched, self.stop, self.thread, self.settings = common.scheduler_in_thread(
            home, poll_interval=0.2, pack_seconds=pack_seconds)
        self.store = Store(home)
        self.tree = TreeCpu(temp)
        self.runs: list[dict] = []

    def run(self) -> dict:
        rep = len(self.runs)
        before = self.sched.launched.copy()
        create_us = common.file_create_us(self.home / "runs")
        r = run_labq(self.spec, self.settings, self.store, f"tp-{rep}", self.n, self.timeout, self.tree)
        launched = self.sched.launched - before  # a Counter: jobs per Ray task -> tasks
        r["ray_tasks"] = sum(launched.values())
        r["jobs_alone"] = launched[1]
        r["file_create_us"] = create_us
        r["kind"] = _kind(self.runs, r)
        self.runs.append(r)
        print(f"  {self.label} run {rep + 1}: {r['jobs_per_s']:.1f} jobs/s, submit {r['submit_s']:.2f}s, "
              f"driver CPU {r['driver_cpu_pct']:.0f}%, {r['workers_started']} workers started, "
              f"CPU/job {r['cpu_ms_per_job_total']:.1f} ms (driver {r.get('cpu_ms_per_job_driver', 0):.1f}, "
              f"workers {r.get('cpu_ms_per_job_workers', 0):.1f}), {r['ray_tasks']} Ray tasks "
              f"({r['jobs_alone']} jobs alone), a file create before it {create_us:.0f} us", flush=True)
        return r

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        for rep, r in enumerate(self.runs):
            add_phases(self.store, r)
            print(f"  {self.label} run {rep + 1}, per job: dispatch->start {r['dispatch_to_start_ms']:.0f} ms, "
                  f"run {r['start_to_end_ms']:.0f} ms, end->recorded {r['end_to_recorded_ms']:.0f} ms, "
                  f"{r['mean_in_flight']:.1f} in flight", flush=True)
        self.store.close()


# ---------------------------------------------------------------- raw Ray

def _make_noop_task():
    import ray

    def noop(i):  # nested: cloudpickle ships it by value
        return i

    return ray.remote(num_cpus=0.1, max_retries=0)(noop)


class RawRunner:
    def __init__(self, n: int, temp: Path):
        self.n = n
        self.tree = TreeCpu(temp)
        self.task = _make_noop_task()
        self.runs: list[dict] = []

    def run(self) -> dict:
        import ray

        n = self.n
        s0 = self.tree.snapshot()
        c0 = _cpu_now()
        t0 = time.time()
        refs = [self.task.remote(i) for i in range(n)]
        ray.get(refs, timeout=600)
        wall = time.time() - t0
        r = {"n": n, "wall_s": wall, "jobs_per_s": n / wall,
             **_usage(c0, _cpu_now()), **TreeCpu.delta(s0, self.tree.snapshot(), n)}
        r["kind"] = _kind(self.runs, r)
        self.runs.append(r)
        print(f"  raw Ray run {len(self.runs)}: {n / wall:.1f} tasks/s, {r['workers_started']} workers started, "
              f"CPU/task {r['cpu_ms_per_job_total']:.1f} ms (driver {r.get('cpu_ms_per_job_driver', 0):.1f}, "
              f"workers {r.get('cpu_ms_per_job_workers', 0):.1f})", flush=True)
        return r


# ---------------------------------------------------------------- Ray Tune

def _make_trainable():
    def trainable(config):
        return {"ok": 1}

    return trainable


def bench_tune(temp: Path, n: int, reuse_actors: bool) -> dict:
    from ray import tune

    c0 = _cpu_now()
    t0 = time.time()
    tuner = tune.Tuner(
        tune.with_resources(_make_trainable(), {"cpu": 0.1}),
        param_space={"i": tune.grid_search(list(range(n)))},
        tune_config=tune.TuneConfig(reuse_actors=reuse_actors),
        run_config=tune.RunConfig(storage_path=str(temp / "tune"), name=f"tp-reuse{int(reuse_actors)}", verbose=0))
    results = tuner.fit()
    wall = time.time() - t0
    if results.num_errors or len(results) != n:
        raise RuntimeError(f"tune: {results.num_errors} errors, {len(results)} results of {n}")
    r = {"n": n, "wall_s": wall, "jobs_per_s": n / wall, "reuse_actors": reuse_actors, **_usage(c0, _cpu_now())}
    print(f"  Tune (reuse_actors={reuse_actors}): {r['jobs_per_s']:.2f} trials/s", flush=True)
    return r


# ---------------------------------------------------------------- Ray Jobs (runs in a child process)

def jobsubmit_part(m: int, reps: int, out: Path) -> None:
    """Runs in its own process: starts a Ray head with the dashboard, submits M
    trivial jobs per rep via the CLI and via the SDK, writes JSON to ``out``."""
    head = common.RayHead(num_cpus=2)
    result: dict = {"cli": [], "sdk": []}
    try:
        t = time.time()
        head.start()
        result["head_start_s"] = time.time() - t
        # The token must be in the environment before Ray is imported here.
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(head.token_path)
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(head.dashboard)
        code = head.temp / "code"
        code.mkdir()
        (code / "benchjobs.py").write_text(common.NOOP_MODULE)
        terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}

        def wait_all(ids: list[str], t0: float, timeout: float = 600) -> dict:
            deadline = time.monotonic() + timeout
            while True:
                infos = [client.get_job_info(i) for i in ids]
                if all(x.status in terminal for x in infos):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ray jobs not done after {timeout}s: {[x.status for x in infos]}")
                time.sleep(0.25)
            failed = [x for x in infos if x.status != JobStatus.SUCCEEDED]
            if failed:
                raise RuntimeError(f"{len(failed)} ray jobs failed: {failed[0].message}")
            end = max(x.end_time for x in infos) / 1000
            return {"n": len(ids), "wall_s": end - t0, "jobs_per_s": len(ids) / (end - t0)}

        for rep in range(reps):
            ids = []
            t0 = time.time()
            for i in range(m):
                sid = f"lqb-cli-{rep}-{i}"
                proc = subprocess.run([common.RAY_CLI, "job", "submit", "--no-wait", "--address", head.dashboard,
                                       f"--submission-id={sid}", "--entrypoint-num-cpus=0.1",
                                       f"--working-dir={code}", "--", "python", "-c", "pass"],
                                      env=head.env, capture_output=True, text=True, timeout=120)
                if proc.returncode != 0:
                    raise RuntimeError(f"ray job submit failed: {proc.stderr[-2000:]}")
                ids.append(sid)
            submitted = time.time() - t0
            r = {**wait_all(ids, t0), "submit_s": submitted}
            result["cli"].append(r)
            print(f"  ray job submit (CLI) rep {rep + 1}: {r['jobs_per_s']:.2f} jobs/s "
                  f"(submitting took {submitted:.1f}s)", flush=True)

            ids = []
            t0 = time.time()
            for i in range(m):
                ids.append(client.submit_job(entrypoint="python -c pass", runtime_env={"working_dir": str(code)},
                                             entrypoint_num_cpus=0.1, submission_id=f"lqb-sdk-{rep}-{i}"))
            submitted = time.time() - t0
            r = {**wait_all(ids, t0), "submit_s": submitted}
            result["sdk"].append(r)
            print(f"  JobSubmissionClient rep {rep + 1}: {r['jobs_per_s']:.2f} jobs/s "
                  f"(submitting took {submitted:.1f}s)", flush=True)
    finally:
        head.stop()
    out.write_text(json.dumps(result))


def bench_jobsubmit(m: int, reps: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="lqb-js-") as d:
        out = Path(d) / "out.json"
        proc = subprocess.run([sys.executable, __file__, "--part", "jobsubmit", "--m", str(m), "--reps", str(reps),
                               "--part-out", str(out)], timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the Ray Jobs part exited with {proc.returncode}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, help="labq / raw Ray jobs (default 1000; quick 100)")
    p.add_argument("--m", type=int, help="Ray Jobs (default 30; quick 5)")
    p.add_argument("--tune-n", type=int, help="Tune trials (default 40; quick 8)")
    p.add_argument("--slow-reps", type=int, default=1,
                   help="runs of Ray Jobs (CLI and SDK) and Tune: each takes minutes (default 1)")
    p.add_argument("--reps", type=int, default=3, help="warm repetitions (median)")
    p.add_argument("--skip", action="append", default=[], choices=["tune", "jobs", "nopack", "tmpfs"])
    p.add_argument("--home-dir", help="also run labq with its home in a new directory here, in the same rounds "
                   "(e.g. a mount of another file system)")
    p.add_argument("--part", help=  # internal: the Ray Jobs half runs in a child process
                   "internal")
    p.add_argument("--part-out", help="internal")
    args = p.parse_args(argv)
    if args.part == "jobsubmit":
        jobsubmit_part(args.m, args.reps, Path(args.part_out))
        return {}

    n = args.n or (100 if args.quick else 1000)
    m = args.m or (5 if args.quick else 30)
    tune_n = args.tune_n or (8 if args.quick else 40)
    reps = args.reps
    data: dict = {"n": n, "m": m, "tune_n": tune_n}
    timeout = 600

    import ray  # noqa: F401

    with common.local_ray(num_cpus=2) as temp:
        labq = LabqRunner(temp, n, timeout)
        quiet = common.wait_for_quiet_files(labq.home / "runs")
        data["file_system"] = quiet
        print(f"file creation in {labq.home / 'runs'}: {quiet['first_us']:.0f} us/file, {quiet['last_us']:.0f} "
              f"after waiting {quiet['waited_s']:.0f}s (quiet: at most {quiet['threshold_us']:.0f})", flush=True)
        runners = [labq]
        shm = Path("/dev/shm")
        if shm.is_dir() and "tmpfs" not in args.skip:
            runners.append(LabqRunner(temp, n, timeout, home=Path(tempfile.mkdtemp(dir=shm, prefix="lqb-home-")),
                                      label="labq, home on tmpfs"))
        if args.home_dir:
            runners.append(LabqRunner(temp, n, timeout, home=Path(tempfile.mkdtemp(dir=args.home_dir, prefix="lqb-home-")),
                                      label=f"labq, home in {args.home_dir}"))
        raw = RawRunner(n, temp)
        print(f"{', '.join(r.label for r in runners)} and raw Ray, {n} no-op jobs each, in rounds (one run of each "
              f"in turn): a cold round, warm-up rounds until none starts a Ray worker, then {reps} warm rounds",
              flush=True)
        try:
            run_rounds([*runners, raw], reps)
        finally:
            for runner in runners:
                runner.close()
            for runner in runners[1:]:
                shutil.rmtree(runner.home, ignore_errors=True)
        data["round_ratios"] = round_ratios(labq.runs, raw.runs)
        data["labq_elsewhere"] = [{"label": x.label, "runs": x.runs, "round_ratios": round_ratios(x.runs, raw.runs)}
                                  for x in runners[1:]]
        if "nopack" not in args.skip:
            print(f"labq with packing off (scheduler.pack_seconds: 0): {n} no-op jobs, back to back", flush=True)
            unpacked = LabqRunner(temp, n, timeout, pack_seconds=0)
            try:
                run_warm(unpacked, reps)
            finally:
                unpacked.close()
            data["labq_unpacked"] = unpacked.runs
        data["labq"], data["raw"] = labq.runs, raw.runs
        if "tune" not in args.skip:
            try:
                import ray.tune  # noqa: F401
            except ImportError as exc:
                data["tune_error"] = f"ray.tune does not import: {exc}"
            else:
                print(f"Ray Tune: {tune_n} trials (defaults, then reuse_actors=True)", flush=True)
                data["tune"] = bench_tune(temp, tune_n, reuse_actors=False)
                if not args.quick:
                    data["tune_reuse"] = bench_tune(temp, tune_n, reuse_actors=True)
    if "jobs" not in args.skip:
        print(f"Ray Jobs: {m} jobs x {args.slow_reps} via the CLI and the SDK", flush=True)
        try:
            data["jobs"] = bench_jobsubmit(m, args.slow_reps, timeout=1200)
        except Exception as exc:
            data["jobs_error"] = str(exc)

    markdown, summary = render(data, args.quick)
    data["summary"] = summary
    common.finish(args, NAME, TITLE, markdown, data)
    return data


def _row(label: str, runs: list[dict], n: int, many: bool) -> list:
    med = common.median
    pick = lambda key: med(r.get(key) for r in runs)  # noqa: E731
    return [label, n, pick("jobs_per_s"),
            ", ".join(common.fmt(r["jobs_per_s"]) for r in runs) if many else "1 run",
            pick("workers_started") if "workers_started" in runs[0] else None,
            pick("cpu_ms_per_job_total") if "cpu_ms_per_job_total" in runs[0] else None,
            pick("cpu_ms_per_job_driver") if "cpu_ms_per_job_total" in runs[0] else None,
            pick("cpu_ms_per_job_workers") if "cpu_ms_per_job_total" in runs[0] else None,
            pick("driver_cpu_pct") if "driver_cpu_pct" in runs[0] else None]


def render(data: dict, quick: bool) -> tuple[str, dict]:
    med = common.median
    labq, raw = data["labq"], data["raw"]
    labq_cold, labq_warm = labq[0]["jobs_per_s"], med(r["jobs_per_s"] for r in warm(labq))
    raw_cold, raw_warm = raw[0]["jobs_per_s"], med(r["jobs_per_s"] for r in warm(raw))
    def ups(label: str, runs: list[dict]) -> list[list]:
        mid = [r for r in runs if r["kind"] == "warm-up"]
        return [_row(f"{label}, warm-up runs (started workers)", mid, data["n"], True)] if mid else []

    rows = [_row("labq, cold (run 1)", labq[:1], data["n"], False), *ups("labq", labq),
            _row(f"labq, warm (median of {len(warm(labq))})", warm(labq), data["n"], True),
            *[_row(f"{x['label']}, warm (median of {len(warm(x['runs']))})", warm(x["runs"]), data["n"], True)
              for x in data.get("labq_elsewhere", [])],
            *([_row(f"labq, packing off, warm (median of {len(warm(data['labq_unpacked']))})",
                    warm(data["labq_unpacked"]), data["n"], True)] if data.get("labq_unpacked") else []),
            _row("raw Ray tasks, run 1", raw[:1], data["n"], False),
            *ups("raw Ray tasks", raw), _row(f"raw Ray tasks, warm (median of {len(warm(raw))})", warm(raw), data["n"], True)]
    fs = data.get("file_system")
    rounds = data.get("round_ratios") or []
    headline = med(rounds) if rounds else labq_warm / raw_warm
    summary = {"labq_cold_jobs_per_s": labq_cold, "labq_warm_jobs_per_s": labq_warm, "raw_jobs_per_s": raw_warm,
               "labq_over_raw": headline, "labq_over_raw_of_medians": labq_warm / raw_warm,
               "labq_over_raw_rounds": rounds, "labq_cold_over_raw_cold": labq_cold / raw_cold}
    ratio_rows = [*([[f"labq / raw Ray tasks, warm: median of the {len(rounds)} rounds' ratios "
                      f"({', '.join(f'{x:.2f}' for x in rounds)})", headline]] if rounds else []),
                  ["labq / raw Ray tasks, warm: ratio of the medians", labq_warm / raw_warm],
                  *[[f"{x['label']} / raw Ray tasks, warm: median of the rounds' ratios "
                     f"({', '.join(f'{r:.2f}' for r in x['round_ratios'])})", med(x["round_ratios"])]
                    for x in data.get("labq_elsewhere", []) if x["round_ratios"]],
                  ["labq / raw Ray tasks, cold (run 1 of each)", labq_cold / raw_cold],
                  ["labq warm / labq cold", labq_warm / labq_cold]]
    if data.get("labq_unpacked"):
        unpacked_warm = med(r["jobs_per_s"] for r in warm(data["labq_unpacked"]))
        ratio_rows.insert(1, ["labq with packing off / raw Ray tasks, warm", unpacked_warm / raw_warm])
        summary["labq_unpacked_over_raw"] = unpacked_warm / raw_warm
    notes = []
    if "tune" in data:
        rows.append(_row("Ray Tune, defaults (a new actor per trial)", [data["tune"]], data["tune_n"], False))
        ratio_rows.append(["labq warm / Ray Tune, defaults", labq_warm / data["tune"]["jobs_per_s"]])
        summary["tune_jobs_per_s"] = data["tune"]["jobs_per_s"]
        summary["labq_over_tune"] = labq_warm / data["tune"]["jobs_per_s"]
        if "tune_reuse" in data:
            rows.append(_row("Ray Tune, reuse_actors=True", [data["tune_reuse"]], data["tune_n"], False))
            ratio_rows.append(["labq warm / Ray Tune, reuse_actors=True", labq_warm / data["tune_reuse"]["jobs_per_s"]])
            summary["labq_over_tune_reuse"] = labq_warm / data["tune_reuse"]["jobs_per_s"]
    elif "tune_error" in data:
        notes.append(f"Ray Tune: {data['tune_error']}")
    if "jobs" in data:
        j = data["jobs"]
        cli, sdk = med(r["jobs_per_s"] for r in j["cli"]), med(r["jobs_per_s"] for r in j["sdk"])
        many = len(j["cli"]) > 1
        what = f"median of {len(j['cli'])}" if many else "1 run"
        rows.append(_row(f"Ray Jobs, `ray job submit --no-wait` CLI ({what})", j["cli"], data["m"], many))
        rows.append(_row(f"Ray Jobs, JobSubmissionClient SDK ({what})", j["sdk"], data["m"], many))
        ratio_rows.append(["labq warm / Ray Jobs via the CLI", labq_warm / cli])
        ratio_rows.append(["labq warm / Ray Jobs via the SDK", labq_warm / sdk])
        ratio_rows.append(["labq cold / Ray Jobs via the CLI", labq_cold / cli])
        summary.update({"jobs_cli_jobs_per_s": cli, "jobs_sdk_jobs_per_s": sdk, "labq_over_jobs_cli": labq_warm / cli,
                        "labq_over_jobs_sdk": labq_warm / sdk})
        notes.append(f"Ray Jobs: a separate `ray start --head` with the dashboard (started in {j['head_start_s']:.1f}s), "
                     f"token auth on, the client given RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH. Submitting "
                     f"{data['m']} jobs took {med(r['submit_s'] for r in j['cli']):.1f}s with the CLI (one `ray` "
                     f"process per submit) and {med(r['submit_s'] for r in j['sdk']):.2f}s with the SDK; each job is "
                     "a JobSupervisor actor plus a driver process.")
    elif "jobs_error" in data:
        notes.append(f"Ray Jobs could not be measured: {data['jobs_error']}")
    phase_rows = []
    for label, runs in (("cold (run 1)", labq[:1]), ("warm (median)", warm(labq))):
        pick = lambda key: med(r[key] for r in runs)  # noqa: E731
        phase_rows.append([label, pick("dispatch_to_start_ms"), pick("start_to_end_ms"), pick("end_to_recorded_ms"),
                           pick("slot_ms"), pick("mean_in_flight"), pick("submit_s"), pick("first_start_s")])
    notes.append("workers started: Ray worker processes started during the run (python-core-worker logs). CPU ms/job: "
                 "CPU time of this process (the scheduler thread, or the raw Ray / Tune driver) and of every process "
                 "of the local Ray (gcs, raylet, agents, workers) per job; workers that exit mid-run are not counted. "
                 "Ray Jobs ran in another Ray, so no CPU split there.")
    if data["tune_n"] < data["n"]:
        notes.append(f"Ray Tune ran {data['tune_n']} trials, not {data['n']}: by default each trial is a new actor "
                     "(a new worker process), about 1 trial/s here, so N trials would take far too long. Jobs/s is a "
                     "rate, so the ratio still compares like with like.")
    notes.append("rounds: labq and raw Ray run alternately (labq, raw, labq, raw, ...), and each round's ratio "
                 "compares two runs a second apart, so the machine's drift (a shared VM) moves both alike. warm: a "
                 "round in which no run started a Ray worker process. After the cold round, rounds that still "
                 f"started workers are warm-up rounds (at most {MAX_WARMUP_RUNS}), listed but not in the medians: "
                 "Ray starts at most a couple of workers at a time, so the pool can take a round or two to settle, "
                 "and a run that starts workers spends most of its CPU on that. This Ray keeps idle workers 10 s, "
                 "as labq's own local Ray does (scheduler.ray_backend.LOCAL_RAY_SYSTEM_CONFIG; Ray's default is "
                 "1 s), so neither side's workers are reaped while the other runs. 'packing off' runs back to "
                 "back after the rounds.")
    if fs:
        creates = ", ".join(f"{r['file_create_us']:.0f}" for r in labq if "file_create_us" in r)
        notes.append(f"file system: creating a file under the labq home cost {fs['first_us']:.0f} us at the start and "
                     f"{fs['last_us']:.0f} us after waiting {fs['waited_s']:.0f} s (normal here: at most "
                     f"{fs['threshold_us']:.0f} us), then {creates} us before each labq run. This root file system is "
                     "ext4 without a journal, which skips inodes freed in the last 30-330 s one by one on every "
                     "create: after a large delete (the last benchmark's temp dir, a test run) a labq job's five "
                     "inodes can cost more than the rest of it, and raw Ray creates none, so the bench waits "
                     "(common.wait_for_quiet_files).")
        summary["file_create_us"] = fs["last_us"]
    summary["labq_elsewhere_over_raw"] = {x["label"]: med(x["round_ratios"])
                                          for x in data.get("labq_elsewhere", []) if x["round_ratios"]}
    if data.get("labq_elsewhere"):
        notes.append("'labq, home on tmpfs' (and 'home in DIR', from --home-dir): another scheduler of the same kind "
                     "with its LABQ_HOME (store and run dirs) there, in the same rounds; the workers are shared, the "
                     "code snapshot being the same. labq's cost apart from the disk under /tmp.")
    notes.append("labq packs jobs of a stage it has seen end in under half of scheduler.pack_seconds (0.5 s) "
                 "several to a Ray task once three have ended (scheduler/packing.py); each job is still its own "
                 "attempt with its own run dir, logs and result. 'packing off' is the same scheduler with "
                 "pack_seconds: 0, one Ray task per job.")
    md = ("Trivial jobs per second, higher is better; labq at {cpu: 0.1} on a local Ray with 2 CPUs (20 slots).\n\n"
          + common.table(["system", "jobs", "jobs/s", "runs (jobs/s)", "workers started", "CPU ms/job, all",
                          "CPU ms/job, driver", "CPU ms/job, workers", "driver CPU %"], rows)
          + "\n\n" + common.table(["ratio", "value"], ratio_rows)
          + "\n\nWhere a labq job's slot goes (medians; dispatch = the scheduler's start_attempts; start/end = "
            "inside the worker; recorded = jobs.ended_at):\n\n"
          + common.table(["labq run", "dispatch->start ms", "start->end ms", "end->recorded ms", "slot ms",
                          "mean jobs in flight", "submit call s", "submit->first start s"], phase_rows)
          + "\n\n" + "\n".join(f"- {x}" for x in notes))
    return md, summary


if __name__ == "__main__":
    main()
