"""Run every labq benchmark, then write a summary of the headline ratios under
bench/results/.

    python bench/run_all.py            # full: about 15 minutes on 2 cores
    python bench/run_all.py --quick    # small N: a smoke run of a few minutes
    python bench/run_all.py --only throughput,latency
    python bench/run_all.py --throughput-home-dir /mnt/ext4   # also a labq home there

Each benchmark runs as its own process (a fresh Ray, a clean RSS), with a time
limit; a benchmark that fails or runs out of time is reported and the rest go
on.  Each writes its raw result as a dated JSON file under bench/results/ (and
prints it); the summary comes last.  The current table in BENCHMARKS.md is
updated by hand from those files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

BENCHMARKS = ["throughput", "latency", "cli", "server", "mlwork", "queue_scale", "footprint", "policy", "sim_scale",
              "sim_vs_ray"]
LIMIT_S = {"quick": 420, "full": 1200}


def run_one(name: str, quick: bool, out: Path, extra: list[str] | None = None) -> tuple[dict | None, str, float]:
    cmd = ([sys.executable, str(common.BENCH / f"bench_{name}.py"), "--json-out", str(out)]
           + (["--quick"] if quick else []) + (extra or []))
    t0 = time.time()
    limit = LIMIT_S["quick" if quick else "full"]
    print(f"\n===== bench_{name} {'--quick ' if quick else ''}(limit {limit}s)", flush=True)
    try:
        proc = subprocess.run(cmd, timeout=limit, cwd=common.ROOT)
        status = "ok" if proc.returncode == 0 else f"exited {proc.returncode}"
    except subprocess.TimeoutExpired:
        status = f"ran past {limit}s and was stopped"
        # A killed benchmark cannot clean up after itself: end its Rays.
        common.kill_processes_under("/tmp/lqb-")
        common.kill_processes_under("/tmp/lqh-")
    wall = time.time() - t0
    data = json.loads(out.read_text()) if out.exists() else None
    return data, status, wall


def summary_rows(results: dict[str, dict]) -> list[list]:
    rows = []

    def s(name: str) -> dict:
        return (results.get(name) or {}).get("data", {}).get("summary", {})

    t = s("throughput")
    if t:
        rows.append(["throughput", "labq jobs/s, warm / cold", f"{t['labq_warm_jobs_per_s']:.1f} / {t['labq_cold_jobs_per_s']:.1f}"])
        fs = f", a file create {t['file_create_us']:.0f} us" if t.get("file_create_us") is not None else ""
        rows.append(["throughput", f"labq / raw Ray tasks (warm; median of rounds; home under /tmp{fs})",
                     f"{t['labq_over_raw']:.3f}"])
        for label, ratio in (t.get("labq_elsewhere_over_raw") or {}).items():
            rows.append(["throughput", f"{label} / raw Ray tasks (same rounds)", f"{ratio:.3f}"])
        if "labq_over_jobs_cli" in t:
            rows.append(["throughput", "labq / Ray Jobs (`ray job submit` CLI; SDK)",
                         f"{t['labq_over_jobs_cli']:.0f}x; {t['labq_over_jobs_sdk']:.0f}x"])
        if "labq_over_tune" in t:
            rows.append(["throughput", "labq / Ray Tune (defaults)", f"{t['labq_over_tune']:.0f}x"])
        if "labq_over_tune_reuse" in t:
            rows.append(["throughput", "labq / Ray Tune (reuse_actors=True)", f"{t['labq_over_tune_reuse']:.0f}x"])
    lat = s("latency")
    if lat:
        rows.append(["latency", "submit -> start p50 / p99 (poll_interval 0.2 s)",
                     f"{lat['labq_submit_to_start_p50_ms']:.0f} / {lat['labq_submit_to_start_p99_ms']:.0f} ms"])
        rows.append(["latency", "labq added at p50 over a raw Ray task (0.2 s; 0.05 s poll)",
                     f"{lat['labq_added_p50_ms']:.0f} ms; {lat['labq_added_p50_ms_poll_0.05']:.0f} ms"])
        rows.append(["latency", "finish -> recorded p50 / p99",
                     f"{lat['labq_finish_to_recorded_p50_ms']:.1f} / {lat['labq_finish_to_recorded_p99_ms']:.0f} ms"])
    cli = (results.get("cli") or {}).get("data")
    if cli:
        last = cli["runs"][-1]
        n = last["n"]
        for label, r in last["cmds"].items():
            if label.startswith(("labq submit", "labq queue", "labq results big")) and "--json" not in label:
                value = "timed out" if r.get("timed_out") else f"{r['median_s']:.2f} s"
                rows.append(["cli", f"{label}, {n:,} jobs in db (goal < 0.5 s)", value])
    m = s("mlwork")
    if m and m.get("reps", 1) > 1:
        rows.append(["ML sweep", "speedup over sequential, warm / cold",
                     f"{m['speedup_vs_seq_warm']:.2f}x / {m['speedup_vs_seq_cold']:.2f}x"])
        rows.append(["ML sweep", "labq / 2-core lower bound, warm / cold",
                     f"{m['labq_over_bound_warm']:.2f}x / {m['labq_over_bound_cold']:.2f}x"])
    elif m:
        rows.append(["ML sweep", "speedup over sequential (one cold run)", f"{m['speedup_vs_seq_cold']:.2f}x"])
        rows.append(["ML sweep", "labq / 2-core lower bound (one cold run)", f"{m['labq_over_bound_cold']:.2f}x"])
    q = s("queue_scale")
    if q:
        n = results["queue_scale"]["data"]["n"]
        rows.append(["queue scale", f"restart -> first dispatch, {n:,} pending", f"{q['restart_to_first_launch_s']:.2f} s"])
        rows.append(["queue scale", f"tick after 20 jobs finished, {n:,} pending", f"{q['busy_tick_s']:.2f} s"])
        rows.append(["queue scale", f"scheduler RSS with {n:,} pending (peak)",
                     f"{q['rss_loaded_mib']:.0f} MiB ({q['rss_peak_mib']:.0f} MiB)"])
        if q.get("policy_10k_ms"):
            rows.append(["queue scale", "policy.decide, 10k demands x 100 nodes", f"{q['policy_10k_ms']:.0f} ms"])
    server = (results.get("server") or {}).get("data")
    if server and server.get("api"):
        for label in ("queue, first 50", "results, best 50", "results, 50 sorted by a param"):
            if label in server["api"]:
                rows.append(["server", f"GET {label}, {server['n']:,} jobs",
                             f"{server['api'][label]['median_s'] * 1000:.0f} ms"])
    scale = (results.get("sim_scale") or {}).get("data")
    if scale and scale.get("scaling"):
        biggest = max(scale["scaling"], key=int)
        rows.append(["sim scale", f"replay of {int(biggest):,} jobs on {scale['nodes']:,} nodes (goal < 10 s)",
                     f"{scale['scaling'][biggest]['wall_s']:.1f} s"])
    f = s("footprint")
    if f:
        rows.append(["footprint", "per running job: labq scheduler vs Ray Jobs' JobSupervisor",
                     f"{f['labq_per_job_kib']:.0f} KiB vs {f['supervisor_per_job_mib']:.0f} MiB "
                     f"({f['supervisor_over_labq']:.0f}x)"])
        rows.append(["footprint", "whole sleeping job, Ray Jobs / labq", f"{f['whole_job_jobs_over_labq']:.2f}x"])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated subset: " + ",".join(BENCHMARKS))
    p.add_argument("--throughput-home-dir", help="passed to bench_throughput as --home-dir")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else BENCHMARKS
    results: dict[str, dict] = {}
    statuses = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="lqb-all-") as d:
        for name in names:
            extra = ["--home-dir", args.throughput_home_dir] if name == "throughput" and args.throughput_home_dir else []
            extra += ["--no-save"] if args.no_md else []
            data, status, wall = run_one(name, args.quick, Path(d) / f"{name}.json", extra)
            results[name] = data or {}
            statuses.append([f"bench_{name}", status, wall])
    rows = summary_rows(results)
    md = ("Headline numbers of this run (details in this run's other files under bench/results/).\n\n"
          + common.table(["benchmark", "measure", "value"], rows)
          + "\n\n" + common.table(["benchmark", "status", "wall s"], statuses)
          + f"\n\nCommand: `python bench/run_all.py{' --quick' if args.quick else ''}"
            f"{' --throughput-home-dir ' + args.throughput_home_dir if args.throughput_home_dir else ''}`, "
            f"{time.time() - t0:.0f}s in all.")
    common.finish(args, "summary", "Summary", md, {"statuses": statuses})
    return 0 if all(s[1] == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
