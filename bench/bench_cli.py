"""CLI: wall time of `labq submit` (a 100-job sweep, --no-start), `labq queue`
and `labq results EXP` with 10,000 and 100,000 jobs in the database.

The database is real: an experiment of N jobs stored with Store.submit (drafts
from scheduler.sweep.plan_jobs on a big grid), then 60% of them run to success
and 5% to failure through Store.start_attempts + Store.finish_attempts with
result dicts holding metrics, 20 left running, the rest pending.  Each command
runs as a subprocess of the installed `labq` console script with a temporary
LABQ_HOME; median of 3 runs.  Goal: under 0.5 s.

  python bench/bench_cli.py [--quick] [--sizes 10000,100000]
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "cli"
TITLE = "CLI wall time against a big queue"
GOAL_S = 0.5
REPS = 3


def populate(home: Path, code: Path, n: int, chunk: int = 5000) -> dict:
    """Store an n-job experiment 'big' and move most of it through real attempts."""
    from contract.attempt import WorkerResult
    from scheduler.identity import current_user
    from scheduler.records import AttemptEnd, EndCause
    from scheduler.spec import load_spec
    from scheduler.states import AttemptState
    from scheduler.store import Store
    from scheduler.sweep import plan_jobs
    from workers.paths import run_dir_for

    a = 100 if n >= 1000 else 10
    b = n // a
    spec_path = code / "big.yaml"
    spec_path.write_text(f"""experiment: big
metric: accuracy
stages:
  - name: train
    run: benchjobs:noop
    params: {{estimator: sklearn.ensemble.RandomForestClassifier}}
    sweep:
      grid: {{a: {list(range(a))}, b: {list(range(b))}}}
    resources: {{cpu: 0.5, memory: 4GiB}}
""")
    t0 = time.time()
    spec, raw = load_spec(spec_path)
    drafts = plan_jobs(spec, str(spec_path))
    store = Store(home)
    try:
        now = time.time()
        _, ids = store.submit(name=spec.experiment, user=current_user(), queue=spec.queue, priority=0,
                              spec_path=str(spec_path), spec=raw, package=None, metric=spec.metric, mode=spec.mode,
                              drafts=drafts, stages={s.name: s for s in spec.stages}, now=now)
        t_submit = time.time() - t0
        rng = random.Random(0)
        n_ok, n_fail = int(0.60 * n), int(0.05 * n)
        done = ids[: n_ok + n_fail]
        for start in range(0, len(done), chunk):
            part = done[start:start + chunk]
            attempts = store.start_attempts(((j, "node-a") for j in part), lambda j, k: run_dir_for(home, j, k), now)
            finished = []
            for att in attempts:
                ok = (att.job_id - ids[0]) < n_ok
                acc = rng.uniform(0.8, 0.99)
                result = {"outcome": "succeeded" if ok else "failed",
                          "metrics": {"accuracy": acc, "f1_macro": acc - 0.01, "log_loss": 1 - acc,
                                      "train_seconds": rng.uniform(1, 30), "model_bytes": rng.randrange(10**5, 10**7)},
                          "artifacts": ["model.joblib"], "exit_code": 0 if ok else 1,
                          "error": None if ok else "Traceback ...\nValueError: bad value",
                          "started_at": now + 1, "ended_at": now + 2 + rng.random() * 30, "node_id": "node-a",
                          "gpu_ids": [], "peak_rss": rng.randrange(10**8, 10**9), "rss_baseline": 60 * 2**20,
                          "cpu_time": rng.uniform(1, 30)}
                finished.append(AttemptEnd(att.id, AttemptState.SUCCEEDED if ok else AttemptState.FAILED,
                                           EndCause.RETURNED, WorkerResult.from_json(result), result["error"]))
            store.finish_attempts(finished, now + 3)
        store.start_attempts(((j, "node-a") for j in ids[n_ok + n_fail:n_ok + n_fail + 20]),
                             lambda j, k: run_dir_for(home, j, k), now)
        counts = store.state_counts()
    finally:
        store.close()
    size = sum(f.stat().st_size for f in home.glob("labq.db*"))
    return {"n": n, "populate_s": time.time() - t0, "store_submit_s": t_submit, "counts": counts, "db_bytes": size}


def scheduler_pass(home: Path) -> None:
    """One pass of the real Scheduler over ``home`` (FakeBackend for Ray, two
    16-cpu nodes): it dispatches what fits and writes its start estimates."""
    from scheduler.fake_backend import FakeBackend, make_nodes
    from scheduler.config import Settings
    from scheduler.loop import Scheduler
    from scheduler.store import Store

    store = Store(home)
    try:
        Scheduler(store, FakeBackend(make_nodes(2, cpu=16, gpu=0)), Settings(home=str(home))).tick(time.time())
    finally:
        store.close()


SLOW_S = 10.0  # a command slower than this runs once, not REPS times
TIMEOUT_S = 90.0


def time_cli(args: list[str], env: dict, reps: int = REPS) -> dict:
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([common.LABQ_CLI, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"walls": [TIMEOUT_S], "median_s": float("inf"), "timed_out": True}
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"labq {' '.join(args)} exited {proc.returncode}: {proc.stderr[-1500:]}")
        if walls[0] > SLOW_S:
            break
    return {"walls": walls, "median_s": common.median(walls), "out_lines": proc.stdout.count("\n")}


def import_profile(args: list[str], env: dict, top: int = 4) -> str:
    """The heaviest top-level imports of one run (python -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "scheduler.cli", *args], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if name[1:2] != " ":  # a top-level import: one space, no nesting indent
            rows.append((int(cumulative), name.strip()))
    rows.sort(reverse=True)
    return ", ".join(f"{name} {us / 1000:.0f} ms" for us, name in rows[:top])


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", help="comma-separated job counts (default 10000,100000; quick 1000,2000)")
    args = p.parse_args(argv)
    sizes = [int(x) for x in (args.sizes or ("1000,2000" if args.quick else "10000,100000")).split(",")]
    data: dict = {"sizes": sizes, "runs": []}
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="lqb-cli-") as d:
            d = Path(d)
            home, code = d / "home", d / "code"
            spec = common.write_noop_spec(d, "sweep100", 100, cpu=0.5)
            code = spec.parent
            print(f"populating a database with {n:,} jobs", flush=True)
            info = populate(home, code, n)
            print(f"  {info['populate_s']:.1f}s, {info['db_bytes'] / 2**20:.1f} MiB, states {info['counts']}", flush=True)
            env = {k: v for k, v in os.environ.items() if k not in ("LABQ_CLUSTER", "RAY_ADDRESS")}
            env.update({"LABQ_HOME": str(home), "COLUMNS": "200"})
            cmds = [
                ("labq --version (startup floor)", ["--version"]),
                ("labq submit SPEC --no-start (100-job sweep)", ["submit", str(spec), "--no-start"]),
                ("labq queue (no scheduler: the CLI replays the queue)", ["queue"]),
                ("labq queue --json (no scheduler)", ["queue", "--json"]),
                ("labq results sweep100 (100 jobs)", ["results", "sweep100"]),
                (f"labq results big ({n:,} jobs)", ["results", "big"]),
                (f"labq results big --json ({n:,} jobs)", ["results", "big", "--json"]),
            ]
            # Then as users see it: a scheduler runs (one real pass, on fake nodes)
            # and has written its start estimates.
            cmds += [("labq queue (scheduler running)", ["queue"], scheduler_pass),
                     ("labq queue --json (scheduler running)", ["queue", "--json"])]
            run = {"n": n, **info, "cmds": {}}
            for label, cmd, *before in cmds:
                for step in before:
                    step(home)
                r = time_cli(cmd, env)
                run["cmds"][label] = r
                ok = "yes" if r["median_s"] < GOAL_S else "**no**"
                if r.get("timed_out"):
                    rows.append([f"{n:,}", label, f"> {TIMEOUT_S:.0f} (timed out)", "1 run", None, "**no**"])
                else:
                    rows.append([f"{n:,}", label, r["median_s"], ", ".join(f"{w:.2f}" for w in r["walls"]),
                                 r["median_s"] / GOAL_S, ok])
                print(f"  {label}: {r['median_s']:.2f}s (runs {', '.join(f'{w:.2f}' for w in r['walls'])})", flush=True)
            if n == sizes[-1]:
                data["imports"] = {"queue": import_profile(["queue"], env),
                                   "submit": import_profile(["submit", str(spec), "--no-start"], env)}
            data["runs"].append(run)
    summary = {}
    for run in data["runs"]:
        for label, r in run["cmds"].items():
            summary[f"{run['n']}: {label}"] = r["median_s"]
    md = (f"Median of {REPS} subprocess runs of the installed `labq` script, seconds; goal < {GOAL_S} s. "
          "The database holds one experiment `big` of N jobs (60% succeeded with metrics, 5% failed, 20 running, "
          "the rest pending) plus the 100-job `sweep100` experiments the submit runs add. `labq queue` is timed "
          "twice: with no scheduler (the CLI replays the queue for its start estimates) and after a real "
          "scheduler pass has written them, as when a scheduler runs.\n\n"
          + common.table(["jobs in db", "command", "median s", "runs s", "x goal", f"< {GOAL_S} s"], rows)
          + "\n\n" + "\n".join(f"- {r['n']:,} jobs: database {r['db_bytes'] / 2**20:.0f} MiB, populated in "
                               f"{r['populate_s']:.0f}s (Store.submit of all jobs: {r['store_submit_s']:.1f}s)"
                               for r in data["runs"])
          + f"\n- Commands slower than {SLOW_S:.0f} s ran once; a run is stopped after {TIMEOUT_S:.0f} s."
          + (f"\n- Heaviest imports (python -X importtime, cumulative): `labq queue`: {data['imports']['queue']}; "
             f"`labq submit`: {data['imports']['submit']}." if data.get("imports") else ""))
    data["summary"] = summary
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
