"""What limits labq's throughput of trivial jobs?  Three controlled experiments
(not part of run_all; run it alone):

A. The worker path alone, in Ray: N tasks at num_cpus=0.1 on a local Ray with 2
   CPUs, back to back after a warm-up, each one
     1. a raw no-op task;
     2. workers.attempt.run_attempt on a no-op callable job (what labq's Ray
        task runs: run dir, output capture, RSS sampler thread, result.json);
     3. the same with the RSS sampler replaced by a no-op (patched in the worker);
     4. the same with the sampler and os.fsync both no-ops.
   Tasks/s and CPU ms per task of all Ray processes (workers, raylet, gcs).
B. The control plane alone: a real Scheduler (store, policy, loop) with
   scheduler/fake_backend.py, 20 slots, tasks that finish at once: jobs/s with no
   Ray at all, and where a tick's time goes (cProfile).
C. (with --py-spy) py-spy over the whole process tree during a warm labq run
   of N jobs: samples per process kind and the heaviest frames in the workers
   and in the scheduler thread.

  python bench/profile_throughput.py [--quick] [--n N] [--py-spy]
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.bench_throughput import LabqRunner, TreeCpu  # noqa: E402

NAME = "profile_throughput"
TITLE = "Profile: what limits labq's throughput"


# ---------------------------------------------------------------- A: the worker path in Ray

def _make_tasks(code_dir: str):
    import ray

    def raw_noop(i):
        return i

    def attempt(task, variant):
        import os as _os

        import workers.attempt as wa

        saved_sampler, saved_fsync = wa._RssSampler, _os.fsync

        class NoSampler(saved_sampler):  # keeps every attribute; never reads /proc, never starts a thread
            @staticmethod
            def _tree_rss():
                return 0

            def start(self):
                pass

            def stop(self):
                pass

        try:
            if variant >= 3:
                wa._RssSampler = NoSampler
            if variant >= 4:
                _os.fsync = lambda fd: None
            return wa.run_attempt(task)["outcome"]
        finally:
            wa._RssSampler, _os.fsync = saved_sampler, saved_fsync

    return (ray.remote(num_cpus=0.1, max_retries=0)(raw_noop), ray.remote(num_cpus=0.1, max_retries=0)(attempt))


def worker_path(temp: Path, n: int) -> list[dict]:
    import ray

    code = temp / "code-a"
    code.mkdir()
    (code / "benchjobs.py").write_text(common.NOOP_MODULE)
    raw, attempt = _make_tasks(str(code))
    tree = TreeCpu(temp)
    counter = iter(range(10**9))

    def task():
        i = next(counter)
        return {"job_id": i, "attempt": 1, "experiment": "p", "stage": "s", "params": {"i": i},
                "run_dir": str(temp / "runs-a" / str(i) / "attempt-1"), "target_kind": "callable",
                "target": "benchjobs:noop", "inputs": [], "previous_run_dir": None,
                "resources": {"cpu": 0.1, "gpu": 0, "memory": None, "custom": {}}, "code_dir": str(code),
                "cache_dir": None, "collect_to_node": None}

    variants = [("raw no-op Ray task", lambda: raw.remote(0)),
                ("run_attempt (labq's worker path)", lambda: attempt.remote(task(), 2)),
                ("run_attempt, RSS sampler off", lambda: attempt.remote(task(), 3)),
                ("run_attempt, RSS sampler and fsync off", lambda: attempt.remote(task(), 4))]
    ray.get([raw.remote(0) for _ in range(100)])  # start the 20 workers
    ray.get([attempt.remote(task(), 2) for _ in range(100)])
    out = []
    for rep in range(3):
        for label, submit in variants:
            s0 = tree.snapshot()
            t0 = time.time()
            ray.get([submit() for _ in range(n)], timeout=600)
            wall = time.time() - t0
            r = {"variant": label, "rep": rep, "tasks_per_s": n / wall, **TreeCpu.delta(s0, tree.snapshot(), n)}
            out.append(r)
            print(f"  A {label}: {r['tasks_per_s']:.0f} tasks/s, CPU {r['cpu_ms_per_job_total']:.1f} ms/task "
                  f"(workers {r.get('cpu_ms_per_job_workers', 0):.1f}), {r['workers_started']} workers started",
                  flush=True)
    return out


# ---------------------------------------------------------------- B: the control plane alone

def control_plane(temp: Path, n: int) -> dict:
    import cProfile
    import pstats

    from scheduler.fake_backend import FakeBackend, make_nodes
    from scheduler import api
    from scheduler.config import Settings
    from scheduler.loop import Scheduler
    from scheduler.store import Store

    spec = common.write_noop_spec(temp / "spec-b", "cp", n, cpu=0.1)
    home = temp / "home-b"
    settings = Settings(home=str(home))
    backend = FakeBackend(make_nodes(1, cpu=2, gpu=0))  # 20 slots at 0.1 CPU, like the real runs
    store = Store(home)
    sched = Scheduler(store, backend, settings)
    sub = api.submit(spec, [], settings)
    prof = cProfile.Profile()
    ticks = 0
    t0 = time.perf_counter()
    prof.enable()
    while store.count_active():
        sched.tick(time.time())
        backend.finish_oldest(len(backend.launched))  # everything launched finishes at once
        ticks += 1
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    total = max(stats.total_tt, 1e-9)
    parts = {}
    for (filename, _, func), (_, _, _, cum, _) in stats.stats.items():
        if "/scheduler/" in filename.replace("\\", "/") and func in (
                "pending_jobs", "set_reasons", "decide", "start_attempts", "finish_attempts", "launch_context",
                "launch", "launch_pack", "_save_node_snapshot", "_record_ends", "data_version", "cancel_requested"):
            key = f"{Path(filename).stem}.{func}"  # endings.decide is not policy.walk.decide
            parts[key] = parts.get(key, 0) + cum / total
    ok = store.state_counts(sub.experiment_id).get("succeeded", 0)
    store.close()
    r = {"n": n, "jobs_per_s": n / wall, "ticks": ticks, "ms_per_job": 1000 * wall / n, "succeeded": ok,
         "profile": parts}
    print(f"  B control plane alone: {r['jobs_per_s']:.0f} jobs/s, {r['ms_per_job']:.2f} ms per job, {ticks} ticks",
          flush=True)
    return r


# ---------------------------------------------------------------- C: py-spy over a warm labq run

def _aggregate(raw_file: Path) -> dict:
    kinds: collections.Counter = collections.Counter()
    frames: dict[str, collections.Counter] = {"worker": collections.Counter(), "scheduler": collections.Counter()}
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        parts = stack.split(";")
        procs = [p for p in parts if p.startswith("process ")]
        names = [re.sub(r" \(.*\)$", "", p) for p in parts if not p.startswith(("process ", "thread "))]
        last = procs[-1] if procs else ""
        if len(procs) <= 1:
            kind = "scheduler" if "Scheduler.tick" in names or "run" in names[:6] else "driver, other"
        elif "default_worker" in last or '"ray::' in last:
            kind = "worker"
        else:
            kind = "other Ray processes"
        kinds[kind] += n
        if kind in frames:
            for name in set(names):
                frames[kind][name] += n
    return {"kinds": dict(kinds), "frames": {k: v.most_common(40) for k, v in frames.items()}}


def py_spy_run(temp: Path, n: int) -> dict | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("  C skipped: py-spy is not installed (pip install py-spy)", flush=True)
        return None
    labq = LabqRunner(temp, n, timeout=900)
    out = temp / "pyspy.txt"
    try:
        labq.run()  # cold
        labq.run()  # warm
        proc = subprocess.Popen([spy, "record", "--subprocesses", "--rate", "25", "--format", "raw", "--output",
                                 str(out), "--pid", str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)  # Ray ends idle workers after ~1 s: start the measured run at once
        r = labq.run()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        labq.close()
    if not out.exists():
        print("  C: py-spy wrote nothing (ptrace not permitted?)", flush=True)
        return None
    agg = _aggregate(out)
    agg["run"] = r
    return agg


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, help="tasks/jobs per measurement (default 600; quick 200)")
    p.add_argument("--py-spy", action="store_true", help="also run part C")
    args = p.parse_args(argv)
    n = args.n or (200 if args.quick else 600)
    data: dict = {"n": n}
    with common.local_ray(num_cpus=2) as temp:
        print(f"A: the worker path in Ray, {n} tasks per variant, 3 rounds", flush=True)
        data["worker_path"] = worker_path(temp, n)
        if args.py_spy:
            print(f"C: py-spy over a warm labq run of {n} jobs", flush=True)
            data["py_spy"] = py_spy_run(temp, n)
    data["control_plane_sizes"] = []
    for size in ([200, 1000] if args.quick else [1000, 5000]):
        with tempfile.TemporaryDirectory(prefix="lqb-cp-") as d:
            print(f"B: the control plane alone, {size} jobs", flush=True)
            data["control_plane_sizes"].append(control_plane(Path(d), size))
    data["control_plane"] = data["control_plane_sizes"][-1]

    med = common.median
    rows = []
    by: dict[str, list[dict]] = collections.defaultdict(list)
    for r in data["worker_path"]:
        by[r["variant"]].append(r)
    raw_rate = med(r["tasks_per_s"] for r in by["raw no-op Ray task"])
    for label, runs in by.items():
        rate = med(r["tasks_per_s"] for r in runs)
        rows.append([label, rate, ", ".join(f"{r['tasks_per_s']:.0f}" for r in runs), rate / raw_rate,
                     med(r["cpu_ms_per_job_total"] for r in runs), med(r.get("cpu_ms_per_job_workers", 0) for r in runs)])
    cp = data["control_plane"]
    cps = data["control_plane_sizes"]
    import psutil

    md = (f"A. The worker path alone in Ray ({n} tasks at num_cpus=0.1 per variant, 3 rounds, median; "
          f"{len(psutil.pids())} processes on the machine at the end, each of which the RSS sampler's first "
          "psutil children(recursive=True) call reads from /proc):\n\n"
          + common.table(["task", "tasks/s", "rounds", "x raw", "CPU ms/task, all Ray", "CPU ms/task, workers"], rows)
          + "\n\nB. The control plane alone (real Scheduler, store and policy; fake backend; 20 slots; tasks finish "
            "at once), for two sweep sizes: "
          + "; ".join(f"{c['n']} jobs: {c['jobs_per_s']:.0f} jobs/s ({c['ms_per_job']:.2f} ms per job, {c['ticks']} ticks)"
                      for c in cps)
          + f". Share of its time at {cp['n']} jobs (cProfile, cumulative): "
          + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(cp["profile"].items(), key=lambda kv: -kv[1])) + ".")
    spy = data.get("py_spy")
    if spy:
        total = sum(spy["kinds"].values()) or 1
        md += ("\n\nC. py-spy (25 Hz, all processes) over a warm labq run of "
               f"{n} jobs ({spy['run']['jobs_per_s']:.0f} jobs/s under the profiler; {spy['run']['workers_started']} "
               "workers started during it). Samples by process: "
               + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(spy["kinds"].items(), key=lambda kv: -kv[1]))
               + ".")
        for kind in ("worker", "scheduler"):
            frames = spy["frames"].get(kind) or []
            if not frames:
                continue
            keep = [(f, c) for f, c in frames if not f.startswith(("<module>", "Thread._bootstrap", "_bootstrap"))][:14]
            md += (f"\n\nHeaviest frames in the {kind} samples (inclusive, % of that kind's samples):\n\n"
                   + common.table(["frame", "% of samples"], [[f, 100 * c / spy["kinds"][kind]] for f, c in keep]))
    data["summary"] = {"raw": raw_rate, "control_plane_jobs_per_s": cp["jobs_per_s"]}
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
