"""Parallel ML work: a 12-job scikit-learn sweep with a shared prep stage
through labq, against the same jobs one after another in one Python process,
against the lower bound.

The experiment: jobs.prep:tabular on digits, then jobs.train:sklearn with a
RandomForestClassifier on a 12-point grid (n_estimators x max_depth x
criterion), every job at {cpu: 1}, on a local Ray with 2 CPUs, so two jobs run
at once.  Prep caching is off (cache: false) so every run does the same work.

* labq: submit (scheduler.api.submit) to a real Scheduler running loop.run in
  a thread (daemon defaults), until all 13 jobs are recorded.  Run 1 is cold
  (new Ray workers import scikit-learn); later runs are warm.
* sequential: the same 13 jobs (params from the same plan_jobs) called
  directly, jobs.prep.tabular then jobs.train.sklearn with JobContext objects,
  in this process (imports done before timing).
* lower bound: the CPU seconds of the sequential run / 2 cores.

Runs alternate (labq, sequential, labq, ...) so drift on this shared machine
hits both.

  python bench/bench_mlwork.py [--quick] [--reps 3]
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "mlwork"
TITLE = "Parallel ML work: a 12-job scikit-learn sweep"
CORES = 2


def write_spec(directory: Path, quick: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    trees = "[25, 50, 100]" if quick else "[150, 300, 600]"
    spec = directory / "sweep.yaml"
    spec.write_text(f"""experiment: rf-sweep
metric: accuracy
stages:
  - name: prep
    run: jobs.prep:tabular
    params: {{dataset: digits, impute: median, scale: standard, test_size: 0.3, seed: 0, cache: false}}
    resources: {{cpu: 1}}
  - name: train
    after: [prep]
    run: jobs.train:sklearn
    params: {{estimator: sklearn.ensemble.RandomForestClassifier, seed: 0}}
    sweep:
      grid: {{n_estimators: {trees}, max_depth: [10, null], criterion: [gini, entropy]}}
    resources: {{cpu: 1}}
""")
    return spec


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_sequential(spec: Path, run_root: Path) -> dict:
    """Every job of the plan, in order, in this process."""
    import importlib

    from jobs.api import JobContext, Upstream
    from scheduler.spec import load_spec
    from scheduler.sweep import plan_jobs

    parsed, _ = load_spec(spec)
    stages = {s.name: s for s in parsed.stages}
    drafts = plan_jobs(parsed, str(spec))
    done: dict[int, tuple[Path, dict]] = {}
    funcs = {}
    for d in drafts:  # imports before the clock starts
        module, _, func = stages[d.stage].run.partition(":")
        funcs[d.stage] = getattr(importlib.import_module(module), func)
    c0, t0 = _cpu_self(), time.perf_counter()
    metrics = []
    for d in drafts:
        run_dir = run_root / f"job-{d.index}"
        run_dir.mkdir(parents=True)
        inputs = {}
        for up in d.depends_on:
            up_dir, up_metrics = done[up]
            inputs[drafts[up].stage] = Upstream(job_id=up, stage=drafts[up].stage, params=drafts[up].params,
                                                run_dir=up_dir, metrics=up_metrics)
        ctx = JobContext(job_id=d.index, attempt=1, experiment=parsed.experiment, stage=d.stage, params=d.params,
                         run_dir=run_dir, inputs=inputs, resources={"cpu": 1})
        m = funcs[d.stage](ctx) or {}
        done[d.index] = (run_dir, m)
        metrics.append(m)
    wall, cpu = time.perf_counter() - t0, _cpu_self() - c0
    best = max(m.get("accuracy", 0) for m in metrics)
    return {"wall_s": wall, "cpu_s": cpu, "lower_bound_s": cpu / CORES, "jobs": len(drafts), "best_accuracy": best}


def run_labq(spec: Path, settings, store, name: str) -> dict:
    from scheduler import api

    t0 = time.time()
    sub = api.submit(spec, [f"experiment={name}"], settings)
    jobs = common.wait_experiment(store, sub.experiment_id, timeout=900, poll=0.05)
    bad = [j for j in jobs if j.state.value != "succeeded"]
    if bad:
        raise RuntimeError(f"labq: job {bad[0].id} {bad[0].state.value}: {bad[0].reason}")
    finals = store.final_results(sub.experiment_id)
    end = max(j.ended_at for j in jobs)
    busy = sum(a.ended_at - a.started_at for a, _ in finals.values())
    best = max(m.get("accuracy", 0) for _, m in finals.values())
    return {"wall_s": end - t0, "jobs": len(jobs), "job_seconds": busy, "best_accuracy": best}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, help="runs of each (default 3; quick 1)")
    args = p.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    data: dict = {"reps": reps, "labq": [], "seq": []}
    with common.local_ray(num_cpus=CORES) as temp:
        from scheduler.store import Store

        spec = write_spec(temp / "spec", args.quick)
        home = temp / "home"
        sched, stop, thread, settings = common.scheduler_in_thread(home, poll_interval=0.2)
        store = Store(home)
        try:
            for rep in range(reps):
                r = run_labq(spec, settings, store, f"rf-{rep}")
                data["labq"].append(r)
                print(f"  labq run {rep + 1}{' (cold)' if rep == 0 else ''}: {r['wall_s']:.1f}s, "
                      f"best accuracy {r['best_accuracy']:.3f}", flush=True)
                s = run_sequential(spec, temp / f"seq-{rep}")
                data["seq"].append(s)
                print(f"  sequential run {rep + 1}: {s['wall_s']:.1f}s wall, {s['cpu_s']:.1f} CPU-s, "
                      f"best accuracy {s['best_accuracy']:.3f}", flush=True)
        finally:
            stop.set()
            thread.join(timeout=30)
            store.close()
    med = common.median
    labq_cold = data["labq"][0]["wall_s"]
    labq_med = med(r["wall_s"] for r in data["labq"])
    labq_warm = med(r["wall_s"] for r in data["labq"][1:]) if reps > 1 else labq_cold
    seq = med(s["wall_s"] for s in data["seq"])
    bound = med(s["lower_bound_s"] for s in data["seq"])
    rows = [
        ["sequential, one process", seq, ", ".join(f"{s['wall_s']:.1f}" for s in data["seq"]), 1.0, seq / bound],
        ["lower bound (sequential CPU-s / 2 cores)", bound, ", ".join(f"{s['lower_bound_s']:.1f}" for s in data["seq"]),
         seq / bound, 1.0],
        ["labq, cold (run 1)", labq_cold, "1 run", seq / labq_cold, labq_cold / bound],
    ]
    if reps > 1:
        rows += [[f"labq, warm (median of runs 2-{reps})", labq_warm,
                  ", ".join(f"{r['wall_s']:.1f}" for r in data["labq"][1:]), seq / labq_warm, labq_warm / bound],
                 [f"labq, all runs (median of {reps})", labq_med, ", ".join(f"{r['wall_s']:.1f}" for r in data["labq"]),
                  seq / labq_med, labq_med / bound]]
    summary = {"reps": reps, "seq_s": seq, "lower_bound_s": bound, "labq_cold_s": labq_cold, "labq_warm_s": labq_warm,
               "speedup_vs_seq_warm": seq / labq_warm, "speedup_vs_seq_cold": seq / labq_cold,
               "labq_over_bound_warm": labq_warm / bound, "labq_over_bound_cold": labq_cold / bound}
    md = (f"13 jobs (1 prep + 12 training), seconds, lower is better; {reps} run{'s' if reps > 1 else ''} of each{', alternating' if reps > 1 else ''}.\n\n"
          + common.table(["way", "wall s (median)", "runs s", "speedup over sequential", "x lower bound"], rows)
          + (f"\n\n- labq is {seq / labq_warm:.2f}x as fast as running the jobs one after another (warm; "
             f"{seq / labq_cold:.2f}x cold) and takes {labq_warm / bound:.2f}x the 2-core lower bound "
             f"({labq_cold / bound:.2f}x cold)." if reps > 1 else
             f"\n\n- labq (one cold run) is {seq / labq_cold:.2f}x as fast as running the jobs one after another "
             f"and takes {labq_cold / bound:.2f}x the 2-core lower bound.")
          + " The prep job runs alone first (nothing can overlap it), which the bound ignores.\n"
          + f"- The sequential run got {med(s['cpu_s'] / s['wall_s'] for s in data['seq']):.0%} of a core on "
            "this shared machine (CPU-s / wall)"
          + ("; the lower bound assumes both cores fully ours, so it is optimistic here.\n"
             if med(s['cpu_s'] / s['wall_s'] for s in data['seq']) < 0.9 else ".\n")
          + f"- Best accuracy: labq {data['labq'][-1]['best_accuracy']:.4f}, sequential "
            f"{data['seq'][-1]['best_accuracy']:.4f} (same params, same seeds).\n"
          + "- The sequential run's imports (scikit-learn) happen before its clock starts; labq's cold run pays "
            "them in each new Ray worker.")
    data["summary"] = summary
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
