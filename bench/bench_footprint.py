"""Footprint: memory per running job.

* labq: RSS of the process running the scheduler (a real Scheduler running
  loop.run in a thread, on a local Ray) with K sleeping jobs running, minus
  the same process idle (after a warm-up job).  That delta / K is what the
  scheduler holds per running job (its Ray handle, its records).  For context,
  also the RSS/USS of the Ray worker processes that run the jobs (the job's
  own process: the counterpart of a Ray Jobs driver, not overhead).
* Ray Jobs: `ray start --head` with the dashboard, K sleeping jobs submitted
  with the SDK; the RSS/USS of the JobSupervisor actor processes (one per job,
  found among the processes of that Ray only) and of the shell helpers each
  job gets, per job.  Also the dashboard's processes, which Ray Jobs needs and
  labq does not.

  python bench/bench_footprint.py [--quick] [--k 50] [--k-jobs 10]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "footprint"
TITLE = "Footprint: memory per running job"
MIB = 2**20


def _mem(proc) -> tuple[int, int]:
    import psutil

    try:
        full = proc.memory_full_info()
        return full.rss, full.uss
    except psutil.Error:
        return 0, 0


def _sample_rss(samples: int = 5, every: float = 0.3) -> int:
    values = []
    for _ in range(samples):
        values.append(common.rss())
        time.sleep(every)
    return int(common.median(values))


def labq_part(k: int) -> dict:
    import psutil

    from scheduler import api
    from scheduler.store import Store

    with common.local_ray(num_cpus=2) as temp:
        spec = common.write_noop_spec(temp / "spec", "fp", k, cpu=round(1.0 / k, 4), target="benchjobs:sleepy",
                                      params={"seconds": 900})
        warm = common.write_noop_spec(temp / "spec", "warm", 1, cpu=0.1)
        home = temp / "home"
        sched, stop, thread, settings = common.scheduler_in_thread(home, poll_interval=0.2)
        store = Store(home)
        try:
            sub = api.submit(warm, [], settings)
            common.wait_experiment(store, sub.experiment_id, timeout=300)
            time.sleep(2)
            idle = _sample_rss()
            sub = api.submit(spec, [], settings)
            t0 = time.time()
            deadline = time.monotonic() + 600
            while True:  # every job's worker has started it (its run dir has a log)
                jobs = store.jobs_of_experiment(sub.experiment_id)
                started = [j for j in jobs if j.state.value == "running" and
                           any((Path(a.run_dir) / "stdout.log").exists() for a in store.attempts(j.id))]
                if len(started) == k:
                    break
                if any(j.state.is_terminal() for j in jobs):
                    raise RuntimeError("a sleeping job ended early: "
                                       + ", ".join(f"{j.id} {j.state.value} {j.reason}" for j in jobs if j.state.is_terminal()))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(started)} of {k} jobs started")
                time.sleep(0.5)
            all_running_s = time.time() - t0
            time.sleep(2)
            busy = _sample_rss()
            workers = []
            for proc in psutil.Process().children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if title.startswith("ray::") and "IDLE" not in title and "Agent" not in title:
                    workers.append(_mem(proc))
            store.cancel([j.id for j in store.jobs_of_experiment(sub.experiment_id)], time.time())
            common.wait_experiment(store, sub.experiment_id, timeout=120)
        finally:
            stop.set()
            thread.join(timeout=30)
            store.close()
    return {"k": k, "idle_rss": idle, "busy_rss": busy, "per_job": (busy - idle) / k, "all_running_s": all_running_s,
            "worker_count": len(workers), "worker_rss": common.median(w[0] for w in workers),
            "worker_uss": common.median(w[1] for w in workers)}


def ray_jobs_part(k: int) -> dict:
    import psutil

    head = common.RayHead(num_cpus=2)
    try:
        head.start()
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(head.token_path)
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(head.dashboard)
        ids = [client.submit_job(entrypoint="python -c 'import time; time.sleep(900)'",
                                 submission_id=f"lqb-fp-{i}") for i in range(k)]
        deadline = time.monotonic() + 600
        while True:
            states = [client.get_job_status(i) for i in ids]
            if all(s == JobStatus.RUNNING for s in states):
                break
            if any(s in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.SUCCEEDED) for s in states):
                raise RuntimeError(f"ray jobs ended early: {states}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray jobs not all running: {states}")
            time.sleep(0.5)
        time.sleep(3)
        roots = [p for p in psutil.process_iter(["cmdline"])
                 if any(str(head.temp) in part for part in (p.info["cmdline"] or []))]
        procs: dict[int, psutil.Process] = {}
        for root in roots:
            procs[root.pid] = root
            for child in root.children(recursive=True):
                procs[child.pid] = child
        supervisors, helpers, dashboard, drivers = [], [], [], []
        for proc in procs.values():
            try:
                title = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if "JobSupervisor" in title:
                supervisors.append(_mem(proc))
            elif title.startswith("/bin/sh -c"):
                helpers.append(_mem(proc))
            elif "dashboard" in title.lower() and "DashboardAgent" not in title:
                dashboard.append(_mem(proc))
            elif "time.sleep(900)" in title:
                drivers.append(_mem(proc))
    finally:
        head.stop()
    return {"k": k, "supervisors": len(supervisors),
            "supervisor_rss": common.median(s[0] for s in supervisors), "supervisor_uss": common.median(s[1] for s in supervisors),
            "helpers_per_job": len(helpers) / k, "helper_rss_per_job": sum(h[0] for h in helpers) / k,
            "helper_uss_per_job": sum(h[1] for h in helpers) / k,
            "driver_rss": common.median(d[0] for d in drivers) if drivers else None,
            "dashboard_procs": len(dashboard), "dashboard_rss": sum(d[0] for d in dashboard),
            "dashboard_uss": sum(d[1] for d in dashboard)}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--k", type=int, help="sleeping labq jobs (default 50; quick 5)")
    p.add_argument("--k-jobs", type=int, help="sleeping Ray Jobs (default 10; quick 2)")
    p.add_argument("--part", help="internal")
    p.add_argument("--part-out", help="internal")
    args = p.parse_args(argv)
    if args.part == "rayjobs":  # its own process: the token must be set before Ray is first used
        Path(args.part_out).write_text(json.dumps(ray_jobs_part(args.k_jobs)))
        return {}
    k = args.k or (5 if args.quick else 50)
    kj = args.k_jobs or (2 if args.quick else 10)
    print(f"labq: {k} sleeping jobs", flush=True)
    lq = labq_part(k)
    print(f"  scheduler RSS idle {lq['idle_rss'] / MIB:.1f} MiB, with {k} running {lq['busy_rss'] / MIB:.1f} MiB "
          f"({lq['per_job'] / 1024:.0f} KiB per job)", flush=True)
    print(f"Ray Jobs: {kj} sleeping jobs", flush=True)
    with tempfile.TemporaryDirectory(prefix="lqb-fp-") as d:
        out = Path(d) / "out.json"
        subprocess.run([sys.executable, __file__, "--part", "rayjobs", "--k-jobs", str(kj), "--part-out", str(out)],
                       check=True, timeout=900)
        rj = json.loads(out.read_text())
    print(f"  JobSupervisor RSS {rj['supervisor_rss'] / MIB:.0f} MiB each ({rj['supervisors']} found)", flush=True)
    sup_per_job = rj["supervisor_rss"] + rj["helper_rss_per_job"]
    sup_uss_per_job = rj["supervisor_uss"] + rj["helper_uss_per_job"]
    labq_per_job = max(lq["per_job"], 1.0)
    rows = [
        [f"labq scheduler, per running job (RSS delta / {k})", lq["per_job"] / MIB, None, 1],
        [f"Ray Jobs: JobSupervisor actor, per job (median of {rj['supervisors']})", rj["supervisor_rss"] / MIB,
         rj["supervisor_uss"] / MIB, rj["supervisor_rss"] / labq_per_job],
        [f"Ray Jobs: supervisor + its {rj['helpers_per_job']:.0f} shell helpers, per job", sup_per_job / MIB,
         sup_uss_per_job / MIB, sup_per_job / labq_per_job],
        [f"Ray Jobs: the dashboard it needs ({rj['dashboard_procs']} processes, once per cluster)",
         rj["dashboard_rss"] / MIB, rj["dashboard_uss"] / MIB, None],
        ["for context: labq scheduler process, idle (Ray driver included)", lq["idle_rss"] / MIB, None, None],
        [f"for context: the Ray worker running a labq job (median of {lq['worker_count']})", lq["worker_rss"] / MIB,
         lq["worker_uss"] / MIB, None],
        ["for context: a Ray Jobs entrypoint process (bare `python -c sleep`, no Ray imported)",
         (rj["driver_rss"] or 0) / MIB, None, None],
    ]
    whole_labq = lq["worker_rss"] + lq["per_job"]
    whole_jobs = sup_per_job + (rj["driver_rss"] or 0)
    rows.append(["whole per-job footprint, labq: worker + scheduler share", whole_labq / MIB, None, None])
    rows.append(["whole per-job footprint, Ray Jobs: supervisor + helpers + entrypoint", whole_jobs / MIB, None,
                 None])
    summary = {"labq_per_job_kib": lq["per_job"] / 1024, "supervisor_per_job_mib": rj["supervisor_rss"] / MIB,
               "supervisor_over_labq": rj["supervisor_rss"] / labq_per_job,
               "whole_job_jobs_over_labq": (sup_per_job + (rj["driver_rss"] or 0)) / (lq["worker_rss"] + lq["per_job"])}
    md = (f"labq: {k} sleeping jobs running at once; Ray Jobs: {kj} sleeping jobs. MiB; the ratio is that row's "
          "RSS over labq's per-job RSS.\n\n"
          + common.table(["what", "RSS MiB", "USS MiB", "x labq per job"], rows)
          + f"\n\n- labq's scheduler holds {lq['per_job'] / 1024:.0f} KiB per running job; Ray Jobs adds a "
            f"JobSupervisor process of {rj['supervisor_rss'] / MIB:.0f} MiB RSS ({rj['supervisor_uss'] / MIB:.0f} MiB "
            f"unique) per job: {summary['supervisor_over_labq']:.0f}x.\n"
          + "- Both run the job itself in a process of its own (a Ray worker for labq, the entrypoint's process for "
            "Ray Jobs). A labq callable job's process is a Ray worker (Ray imported), heavier than a bare Python "
            f"entrypoint; counting everything a sleeping job costs, labq is {whole_labq / MIB:.0f} MiB and Ray Jobs "
            f"{whole_jobs / MIB:.0f} MiB per job ({whole_jobs / whole_labq:.2f}x), before Ray Jobs' dashboard. An "
            "entrypoint that itself uses Ray (ray.init) would add a Ray driver on top.\n"
          + f"- The RSS delta of a Python process is coarse (allocator arenas); it took {lq['all_running_s']:.0f}s "
            f"for all {k} labq jobs to start (one new worker process each).")
    data = {"labq": lq, "ray_jobs": rj, "summary": summary}
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
