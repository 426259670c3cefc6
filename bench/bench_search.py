"""Hyperparameter search (issue 20): the same search space and trial budget
through labq (TPE + ASHA) and through Ray Tune (OptunaSearch + ASHAScheduler),
side by side, with a 64-trial random search through labq as the baseline.

    python bench/bench_search.py [--quick] [--seed S] [--seeds N] [--no-save]

The job (bench/search_jobs.py, the same function in all three): a
one-hidden-layer MLP (scikit-learn, SGD with momentum) on scikit-learn's digits,
trained one epoch at a time by partial_fit for up to 20 epochs, reporting the
validation accuracy (540 examples) after each.  An epoch computes for 5-30 ms
here and is padded with a sleep to 0.4 s (in both systems alike), so that
early stopping can act between epochs: labq reads the curves every 0.5 s.
Search space: lr loguniform [1e-4, 1], alpha loguniform [1e-6, 1], hidden
randint [4, 129), batch choice {16, 32, 64, 128, 256}.  Every trial holds
1 CPU; 2 trials at a time (this machine has 2 cores).

* labq, TPE + ASHA: a stage with ``sweep.search {algo: tpe, samples: 32,
  parallel: 2, seed}`` and ``early_stop {asha, grace 2, eta 3, max_t 20}``
  (rungs at epochs 2, 6, 18), submitted to labq's real Scheduler running its own
  loop in a thread, on a local Ray of our own with 2 CPUs (as the other
  benchmarks do; the daemon runs the same loop).
* Ray Tune, OptunaSearch + ASHAScheduler: ``tune.Tuner`` with OptunaSearch
  (its default TPE sampler, the same seed), ASHAScheduler(grace_period 2,
  reduction_factor 3, max_t 20), num_samples 32, max_concurrent_trials 2,
  1 CPU per trial, on a stock local Ray of our own with 2 CPUs.
* labq, random search: ``search.algo random``, 64 trials, no early stopping.

Seeds: S, S+1, ..., S+N-1 (``--seed``, default 1; ``--seeds``, default 3, also
with --quick); the random search draws with seed + 1000 (otherwise it would
share TPE's first 10 random points).  For each seed the three run as above, each
on a fresh Ray of its own, one after another.  Measured per system and seed:
the best validation accuracy reached (the best trial's last-reported accuracy;
also the best at any epoch), CPU-seconds (1 CPU x each trial's run time as
the system records it: labq's attempts, dispatch to end; Tune's trials, from
on_trial_start to on_trial_complete in a callback; pruned trials count), the
same from inside the job (function entry, after imports, to its last report)
and the CPU time the training really used (its thread's), the wall time from
submit / Tuner.fit to the last trial's end, and trials run / pruned.

Goals (issue 20): labq reaches Ray Tune's best at no more CPU-seconds; labq and
Tune each reach the random search's best with at most 40% of its CPU-seconds.
"Reach" is judged both exactly and within one validation example (1/540).
One seed is one draw of each search, and the best accuracy moves by an example
or two from draw to draw, so the goals are judged on the typical draw: on the
medians over the seeds of each system's best accuracy and CPU-seconds (with an
even number of seeds, the mean of the middle two; the 40% on the ratio of the
medians), and counted per seed (met in k of N seeds, exactly and within one
example).  Printed: each seed's tables, then per system the median (min-max)
over the seeds, and the goals on the medians and per seed.  The raw result
(bench/results/, unless --no-save) holds every seed's trials, summaries and
goals, and the summary across seeds.  A seed that fails (a system times out)
is reported and left out of the summary; the script then exits 1.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "search"
TITLE = "Hyperparameter search: labq (TPE + ASHA) vs Ray Tune (OptunaSearch + ASHA) vs random search"
CORES = 2
N_VAL = 540  # validation examples (30% of digits' 1,797)
GOAL_RATIO = 0.40
# The random baseline draws with another seed: labq's TPE starts with 10 random
# points drawn exactly as its random sampler draws them (one seed per ask), so
# with the same seed the two would share their first 10 trials.
RANDOM_SEED_OFFSET = 1000
# The Rays' temp dirs: after a later ray.init in this process, something of an
# earlier, shut-down Ray recreates its (empty) session dir; removed at the end.
TEMP_DIRS: list[Path] = []

# name -> (kind, args): the same space in labq's spec and in Tune's param_space
SPACE: dict[str, tuple[str, Any]] = {
    "lr": ("loguniform", [1e-4, 1.0]),
    "alpha": ("loguniform", [1e-6, 1.0]),
    "hidden": ("randint", [4, 129]),  # upper bound exclusive in both
    "batch": ("choice", [16, 32, 64, 128, 256]),
}


def settings_for(quick: bool, seed: int) -> dict[str, Any]:
    if quick:
        return {"epochs": 6, "epoch_s": 0.25, "samples": 6, "random_samples": 8, "grace": 1, "eta": 3, "seed": seed,
                "random_seed": seed + RANDOM_SEED_OFFSET}
    return {"epochs": 20, "epoch_s": 0.4, "samples": 32, "random_samples": 64, "grace": 2, "eta": 3, "seed": seed,
            "random_seed": seed + RANDOM_SEED_OFFSET}


# ---------------------------------------------------------------- labq

def write_spec(code: Path, experiment: str, cfg: dict[str, Any], algo: str, samples: int, asha: bool,
               seed: int) -> Path:
    """The spec and the job module, together in one project dir (its code snapshot)."""
    code.mkdir(parents=True, exist_ok=True)
    shutil.copy(common.BENCH / "search_jobs.py", code / "search_jobs.py")
    space = "\n".join(f"        {name}: {{{kind}: {json.dumps(args)}}}" for name, (kind, args) in SPACE.items())
    early = (f"\n    early_stop: {{method: asha, grace: {cfg['grace']}, eta: {cfg['eta']}, max_t: {cfg['epochs']}}}"
             if asha else "")
    spec = code / f"{experiment}.yaml"
    spec.write_text(f"""experiment: {experiment}
metric: acc
mode: max
stages:
  - name: train
    run: search_jobs:labq_trial
    params: {{epochs: {cfg['epochs']}, epoch_s: {cfg['epoch_s']}}}
    resources: {{cpu: 1}}
    sweep:
      search: {{algo: {algo}, samples: {samples}, parallel: {CORES}, seed: {seed}}}
      space:
{space}{early}
""")
    return spec


def _curve(run_dir: str | None) -> list[dict[str, Any]]:
    if not run_dir:
        return []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def run_labq(label: str, cfg: dict[str, Any], algo: str, samples: int, asha: bool, seed: int,
             timeout: float) -> dict[str, Any]:
    from scheduler import api
    from scheduler.store import Store

    with common.local_ray(num_cpus=CORES) as temp:
        TEMP_DIRS.append(temp)
        spec = write_spec(temp / "code", label, cfg, algo, samples, asha, seed)
        home = temp / "home"
        sched, stop, thread, settings = common.scheduler_in_thread(home, poll_interval=0.2)
        store = Store(home)
        try:
            t0 = time.time()
            sub = api.submit(spec, [], settings)
            deadline = time.monotonic() + timeout
            last_note = 0.0
            while True:
                jobs = store.jobs_of_experiment(sub.experiment_id)
                done = [j for j in jobs if j.state.is_terminal()]
                if len(jobs) >= samples and len(done) == len(jobs):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"labq {label}: {len(done)}/{samples} trials done after {timeout:.0f}s")
                if time.monotonic() - last_note > 30:
                    last_note = time.monotonic()
                    print(f"    {label}: {len(done)}/{samples} trials done, {time.time() - t0:.0f}s", flush=True)
                time.sleep(0.2)
            trials = []
            for job in jobs:
                attempts = store.attempts(job.id)
                # Held from dispatch (labq books the CPU from there; its search
                # budget counts the same) to the end.  A pruned attempt has no
                # started_at (it ends without a worker result), so started_at
                # cannot be the start here.
                held = sum(a.ended_at - a.dispatched_at for a in attempts if a.dispatched_at and a.ended_at)
                ran = [a.ended_at - a.started_at for a in attempts if a.started_at and a.ended_at]
                curve = _curve(attempts[-1].run_dir if attempts else None)
                accs = [r["acc"] for r in curve if isinstance(r.get("acc"), (int, float))]
                trials.append({
                    "id": job.id, "state": job.state.value, "params": {k: job.params.get(k) for k in SPACE},
                    "attempts": len(attempts), "cpu": 1.0, "held_s": held,
                    "started_to_end_s": sum(ran) if len(ran) == len(attempts) else None,
                    "missing_started_at": len(attempts) - len(ran),
                    "epochs": int(curve[-1].get("step", len(curve))) if curve else 0,
                    "last_acc": accs[-1] if accs else None, "best_acc": max(accs) if accs else None,
                    "final_metrics": attempts[-1].metrics if attempts else {},
                    "in_job_s": curve[-1].get("run_s") if curve else None,
                    "compute_cpu_s": curve[-1].get("cpu_s") if curve else None,
                    "worker_cpu_s": (attempts[-1].usage or {}).get("cpu_time") if attempts else None,
                    "error": attempts[-1].error[:300] if attempts and attempts[-1].error else None,
                    "start": min((a.dispatched_at for a in attempts if a.dispatched_at), default=None),
                    "end": max((a.ended_at for a in attempts if a.ended_at), default=None),
                })
            end = max((t["end"] for t in trials if t["end"]), default=time.time())
            return {"system": label, "wall_s": end - t0, "trials": trials}
        finally:
            stop.set()
            thread.join(timeout=30)
            store.close()


# ---------------------------------------------------------------- Ray Tune

def run_tune(cfg: dict[str, Any], reuse_actors: bool = False) -> dict[str, Any]:
    import ray.cloudpickle
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from bench import search_jobs

    # Ship the job module by value: Tune's workers do not have bench/ on their path.
    ray.cloudpickle.register_pickle_by_value(search_jobs)
    fixed = {"epochs": cfg["epochs"], "epoch_s": cfg["epoch_s"]}

    def trainable(config: dict[str, Any]) -> None:
        from ray import tune as _tune

        search_jobs.train({**config, **fixed}, lambda epoch, metrics: _tune.report({**metrics, "epoch": epoch}))

    class Timing(tune.Callback):
        """Each trial's run as Tune records it: on_trial_start .. on_trial_complete/error."""

        def __init__(self) -> None:
            self.start: dict[str, float] = {}
            self.end: dict[str, float] = {}
            self.errored: set[str] = set()

        def on_trial_start(self, iteration, trials, trial, **info):
            self.start.setdefault(trial.trial_id, time.time())

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end[trial.trial_id] = time.time()

        def on_trial_error(self, iteration, trials, trial, **info):
            self.end[trial.trial_id] = time.time()
            self.errored.add(trial.trial_id)

    space = {}
    for name, (kind, args) in SPACE.items():
        space[name] = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
                       "randint": lambda a: tune.randint(*a), "choice": tune.choice}[kind](args)
    timing = Timing()
    with common.local_ray(CORES, stock=True) as temp:
        TEMP_DIRS.append(temp)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="acc", mode="max", num_samples=cfg["samples"], max_concurrent_trials=CORES,
                reuse_actors=reuse_actors,
                search_alg=OptunaSearch(seed=cfg["seed"]),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=cfg["epochs"],
                                        grace_period=cfg["grace"], reduction_factor=cfg["eta"])),
            run_config=tune.RunConfig(name="search", storage_path=str(temp / "tune"), verbose=0,
                                      callbacks=[timing]),
        )
        t0 = time.time()
        grid = tuner.fit()
        t_fit = time.time()
        trials = []
        for result in grid:
            df = result.metrics_dataframe
            rows = df.to_dict("records") if df is not None else []
            last = rows[-1] if rows else (result.metrics or {})
            trial_id = (result.metrics or {}).get("trial_id") or last.get("trial_id")
            accs = [r["acc"] for r in rows if isinstance(r.get("acc"), (int, float)) and not math.isnan(r["acc"])]
            epochs = int(last.get("training_iteration", 0) or 0)
            start, end = timing.start.get(trial_id), timing.end.get(trial_id)
            state = ("failed" if result.error is not None or trial_id in timing.errored
                     else "succeeded" if epochs >= cfg["epochs"] else "pruned")
            trials.append({
                "id": trial_id, "state": state, "params": {k: result.config.get(k) for k in SPACE},
                "attempts": 1, "cpu": 1.0, "held_s": (end - start) if start and end else None,
                "epochs": epochs, "last_acc": accs[-1] if accs else None, "best_acc": max(accs) if accs else None,
                "in_job_s": last.get("run_s"), "compute_cpu_s": last.get("cpu_s"),
                "tune_time_total_s": last.get("time_total_s"),
                "error": str(result.error)[:300] if result.error is not None else None,
                "start": start, "end": end,
            })
    end = max((t["end"] for t in trials if t["end"]), default=t_fit)
    return {"system": "tune-optuna-asha", "wall_s": end - t0, "fit_s": t_fit - t0, "trials": trials}


# ---------------------------------------------------------------- summary

def summarize(run: dict[str, Any]) -> dict[str, Any]:
    trials = run["trials"]
    scored = [t for t in trials if t["last_acc"] is not None]
    best = max(scored, key=lambda t: t["last_acc"], default=None)

    def total(key: str) -> float | None:
        values = [t[key] * t["cpu"] for t in trials if t.get(key) is not None]
        return sum(values) if values else None

    pruned = [t for t in trials if t["state"] == "pruned"]
    past_rung = []  # labq: epochs reported after the rung that decided the stop
    for t in pruned:
        m = re.search(r"\(step (\d+(?:\.\d+)?)\)", t.get("error") or "")
        if m:
            past_rung.append(t["epochs"] - float(m.group(1)))
    return {
        "pruned_epochs_mean": sum(t["epochs"] for t in pruned) / len(pruned) if pruned else None,
        "pruned_epochs_past_rung_mean": sum(past_rung) / len(past_rung) if past_rung else None,
        "trials": len(trials), "succeeded": sum(t["state"] == "succeeded" for t in trials),
        "pruned": sum(t["state"] == "pruned" for t in trials), "failed": sum(t["state"] == "failed" for t in trials),
        "epochs": sum(t["epochs"] for t in trials),
        "missing_times": sum(t["held_s"] is None for t in trials),
        "missing_started_at": sum(t.get("missing_started_at", 0) for t in trials),
        "best_acc": best["last_acc"] if best else None,
        "best_acc_any_epoch": max((t["best_acc"] for t in trials if t["best_acc"] is not None), default=None),
        "best_params": best["params"] if best else None,
        "best_epochs": best["epochs"] if best else None,
        "cpu_s": total("held_s"), "in_job_cpu_s": total("in_job_s"), "compute_cpu_s": total("compute_cpu_s"),
        "wall_s": run["wall_s"],
    }


def reaches(best: float | None, target: float | None, tol: float = 0.0) -> bool:
    return best is not None and target is not None and best >= target - tol - 1e-12


SYSTEMS = ("labq", "tune", "random")
# goal key -> its line in the tables; each is judged exactly and within one example
GOALS = (
    ("labq_vs_tune", "labq reaches Ray Tune's best at no more CPU-s"),
    ("labq_vs_random", f"labq TPE + ASHA reaches the random search's best with <= {GOAL_RATIO:.0%} of its CPU-s"),
    ("tune_vs_random", f"Ray Tune reaches the random search's best with <= {GOAL_RATIO:.0%} of its CPU-s"),
)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1,
                   help="first seed of the searches (default 1; random search: +1000)")
    p.add_argument("--seeds", type=int, default=3,
                   help="how many seeds: --seed, --seed+1, ...; all three systems run once per seed (default 3)")
    p.add_argument("--tune-reuse-actors", action="store_true",
                   help="TuneConfig(reuse_actors=True) (Tune's default: False, a new actor per trial)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    seeds = [args.seed + i for i in range(args.seeds)]
    timeout = 300 if args.quick else 1200
    t_start = time.time()
    cfgs = []
    for seed in seeds:
        cfg = settings_for(args.quick, seed)
        cfg["tune_reuse_actors"] = args.tune_reuse_actors
        cfgs.append(cfg)
    base = {k: v for k, v in cfgs[0].items() if k not in ("seed", "random_seed")}
    print(f"Settings: {base}; seeds {seeds} (random search: {[c['random_seed'] for c in cfgs]})", flush=True)
    per_seed: list[dict[str, Any]] = []

    try:
        for i, cfg in enumerate(cfgs):
            print(f"Seed {cfg['seed']} ({i + 1} of {len(cfgs)}):", flush=True)
            runs: dict[str, dict[str, Any]] = {}
            t0 = time.time()
            error = trace = None
            try:
                run_all(cfg, runs, timeout)
            except Exception as exc:  # keep the seeds done so far; report this one as failed
                error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
                print(f"  seed {cfg['seed']} FAILED:\n{trace}", flush=True)
            per_seed.append({"seed": cfg["seed"], "settings": cfg, "runs": runs, "wall_s": time.time() - t0,
                             "error": error, "traceback": trace})
            if error is None:
                s = {k: summarize(v) for k, v in runs.items()}
                print(f"  seed {cfg['seed']} done in {time.time() - t0:.0f}s: "
                      + "; ".join(f"{k} {common.fmt(s[k]['best_acc'], 4)} at {common.fmt(s[k]['cpu_s'])} CPU-s"
                                  for k in SYSTEMS), flush=True)
    finally:
        for temp in TEMP_DIRS:
            shutil.rmtree(temp, ignore_errors=True)
    if not any(r["error"] is None for r in per_seed):
        raise RuntimeError("no seed completed: " + "; ".join(f"seed {r['seed']}: {r['error']}" for r in per_seed))
    return report(args, base, per_seed, t_start)


def run_all(cfg: dict[str, Any], runs: dict[str, dict[str, Any]], timeout: float) -> None:
    print("  labq TPE + ASHA ...", flush=True)
    runs["labq"] = run_labq("labq-tpe-asha", cfg, "tpe", cfg["samples"], asha=True, seed=cfg["seed"],
                            timeout=timeout)
    print(f"    done in {runs['labq']['wall_s']:.0f}s", flush=True)
    print("  Ray Tune OptunaSearch + ASHAScheduler ...", flush=True)
    runs["tune"] = run_tune(cfg, reuse_actors=cfg["tune_reuse_actors"])
    print(f"    done in {runs['tune']['wall_s']:.0f}s", flush=True)
    print(f"  labq random search, {cfg['random_samples']} trials, no early stopping ...", flush=True)
    runs["random"] = run_labq("labq-random", cfg, "random", cfg["random_samples"], asha=False,
                              seed=cfg["random_seed"], timeout=timeout)
    print(f"    done in {runs['random']['wall_s']:.0f}s", flush=True)


# ---------------------------------------------------------------- goals and report

def judge(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The goals from each system's best_acc and cpu_s (one seed's, or the medians)."""
    lq, tu, rand = s["labq"], s["tune"], s["random"]
    tol = 1 / N_VAL
    goals: dict[str, Any] = {
        "labq_reaches_tune_exact": reaches(lq["best_acc"], tu["best_acc"]),
        "labq_reaches_tune_within_1": reaches(lq["best_acc"], tu["best_acc"], tol),
        "labq_cpu_le_tune": lq["cpu_s"] is not None and tu["cpu_s"] is not None and lq["cpu_s"] <= tu["cpu_s"],
    }
    goals["labq_vs_tune_met"] = goals["labq_reaches_tune_exact"] and goals["labq_cpu_le_tune"]
    goals["labq_vs_tune_met_within_1"] = goals["labq_reaches_tune_within_1"] and goals["labq_cpu_le_tune"]
    for key in ("labq", "tune"):
        goals[f"{key}_reaches_random_exact"] = reaches(s[key]["best_acc"], rand["best_acc"])
        goals[f"{key}_reaches_random_within_1"] = reaches(s[key]["best_acc"], rand["best_acc"], tol)
        goals[f"{key}_cpu_ratio"] = common.ratio(s[key]["cpu_s"], rand["cpu_s"]) if s[key]["cpu_s"] else float("nan")
        goals[f"{key}_cpu_ratio_ok"] = goals[f"{key}_cpu_ratio"] <= GOAL_RATIO
        goals[f"{key}_vs_random_met"] = goals[f"{key}_reaches_random_exact"] and goals[f"{key}_cpu_ratio_ok"]
        goals[f"{key}_vs_random_met_within_1"] = (goals[f"{key}_reaches_random_within_1"]
                                                  and goals[f"{key}_cpu_ratio_ok"])
    return goals


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def gap(a: float | None, b: float | None) -> str:
    """a - b in validation examples."""
    if a is None or b is None:
        return "–"
    d = round((a - b) * N_VAL, 1)
    return f"{d:+g} ex." if d else "±0 ex."


def goal_table(s: dict[str, dict[str, Any]], goals: dict[str, Any], acc_digits: int = 4) -> str:
    lq, tu, rand = s["labq"], s["tune"], s["random"]

    def acc(x: float | None) -> str:
        return common.fmt(x, acc_digits)

    figures = {
        "labq_vs_tune": (f"{acc(lq['best_acc'])} vs {acc(tu['best_acc'])} ({gap(lq['best_acc'], tu['best_acc'])}); "
                         f"{common.fmt(lq['cpu_s'])} vs {common.fmt(tu['cpu_s'])} CPU-s"),
    }
    for key in ("labq", "tune"):
        figures[f"{key}_vs_random"] = (f"{acc(s[key]['best_acc'])} vs {acc(rand['best_acc'])} "
                                       f"({gap(s[key]['best_acc'], rand['best_acc'])}); "
                                       f"{goals[f'{key}_cpu_ratio']:.0%} of its CPU-s")
    rows = [[name, figures[g], f"{yes(goals[f'{g}_met'])} (within 1 example: {yes(goals[f'{g}_met_within_1'])})"]
            for g, name in GOALS]
    return common.table(["goal (issue 20)", "figures", "met"], rows)


def seed_section(cfg: dict[str, Any], runs: dict[str, dict[str, Any]], s: dict[str, dict[str, Any]],
                 goals: dict[str, Any]) -> str:
    """One seed's tables (per system, best trials, goals) and its notes."""
    labels = system_labels(cfg)
    rand = s["random"]
    rows = []
    for key in SYSTEMS:
        x = s[key]
        rows.append([labels[key], x["best_acc"], x["best_acc_any_epoch"], x["cpu_s"],
                     common.ratio(x["cpu_s"], rand["cpu_s"]), x["in_job_cpu_s"], x["compute_cpu_s"], x["wall_s"],
                     f"{x['trials']} / {x['pruned']} / {x['failed']}", x["epochs"]])
    main_table = common.table(
        ["system", "best val acc (last epoch)", "best val acc (any epoch)", "CPU-s held",
         "CPU-s / random's", "CPU-s in job", "CPU-s computing", "wall s", "trials / pruned / failed",
         "epochs trained"], rows)
    best_rows = [[labels[k], s[k]["best_acc"], s[k]["best_epochs"],
                  ", ".join(f"{n}={common.fmt(v)}" for n, v in (s[k]["best_params"] or {}).items())]
                 for k in SYSTEMS]
    best_table = common.table(["system", "best val acc", "its epochs", "its params"], best_rows)
    lq, tu = s["labq"], s["tune"]
    no_value = sum(1 for t in runs["labq"]["trials"]
                   if t["state"] == "pruned" and not isinstance((t.get("final_metrics") or {}).get("acc"), (int, float)))
    notes = ((f"- labq's pruned trials ran {lq['pruned_epochs_past_rung_mean']:.2f} epochs on average past the rung "
              "that stopped them (its loop reads curves every 0.5 s; Tune decides at the report itself); pruned "
              f"trials ran {common.fmt(lq['pruned_epochs_mean'])} epochs on average in labq, "
              f"{common.fmt(tu['pruned_epochs_mean'])} in Tune.\n" if lq["pruned_epochs_past_rung_mean"] is not None
              else "")
             + (f"- labq's TPE got no value for {no_value} of its {lq['pruned']} pruned trials (a pruned attempt "
                "usually ends in Ray's cancel, without a worker result, so it has no final metrics): it ranks them "
                "alike, whatever they reached at their rung. Tune's OptunaSearch tells Optuna each stopped trial's "
                "last value.\n" if no_value else "")
             + (f"- labq recorded no started_at for {lq['missing_started_at'] + rand['missing_started_at']} "
                "attempt(s) (its pruned attempts end without a worker result), so their run time here is from "
                "dispatch.\n" if lq["missing_started_at"] + rand["missing_started_at"] else ""))
    return (f"### Seed {cfg['seed']} (random search: {cfg['random_seed']})\n\n" + main_table + "\n\n" + best_table
            + "\n\n" + goal_table(s, goals, acc_digits=4) + ("\n\n" + notes.rstrip() if notes else ""))


def system_labels(cfg: dict[str, Any]) -> dict[str, str]:
    return {"labq": f"labq: TPE + ASHA, {cfg['samples']} trials",
            "tune": f"Ray Tune: OptunaSearch + ASHAScheduler, {cfg['samples']} trials",
            "random": f"labq: random search, {cfg['random_samples']} trials, no early stop"}


def spread(values: list[float | None]) -> dict[str, Any]:
    xs = [x for x in values if x is not None and x == x]
    med = statistics.median(xs) if xs else None
    if isinstance(med, float) and all(isinstance(x, int) for x in xs) and med.is_integer():
        med = int(med)  # counts: 6, not 6.00
    return {"median": med, "min": min(xs) if xs else None,
            "max": max(xs) if xs else None, "values": values}


def across_seeds(done: list[dict[str, Any]]) -> dict[str, Any]:
    """Per system, each figure's median, min and max over the seeds; the goals
    judged on the medians; and per goal, the seeds where it held."""
    figures = ("best_acc", "best_acc_any_epoch", "cpu_s", "in_job_cpu_s", "compute_cpu_s", "wall_s", "trials",
               "pruned", "failed", "epochs")
    systems: dict[str, dict[str, Any]] = {}
    for key in SYSTEMS:
        systems[key] = {f: spread([r["summary"][key][f] for r in done]) for f in figures}
        systems[key]["cpu_ratio_to_random"] = spread([common.ratio(r["summary"][key]["cpu_s"] or float("nan"),
                                                                   r["summary"]["random"]["cpu_s"] or float("nan"))
                                                      for r in done])
    medians = {key: {f: systems[key][f]["median"] for f in ("best_acc", "cpu_s")} for key in SYSTEMS}
    per_goal = {}
    for g, _ in GOALS:
        per_goal[g] = {"seeds": len(done),
                       "met": [r["seed"] for r in done if r["goals"][f"{g}_met"]],
                       "met_within_1": [r["seed"] for r in done if r["goals"][f"{g}_met_within_1"]]}
    # the goal's parts: the best reached (exactly, within one example) and the CPU-s condition
    parts = {"labq_vs_tune": ("labq_reaches_tune_exact", "labq_reaches_tune_within_1", "labq_cpu_le_tune")}
    for key in ("labq", "tune"):
        parts[f"{key}_vs_random"] = (f"{key}_reaches_random_exact", f"{key}_reaches_random_within_1",
                                     f"{key}_cpu_ratio_ok")
    for g, names in parts.items():
        for part, name in zip(("reached_exact", "reached_within_1", "cpu_ok"), names):
            per_goal[g][part] = [r["seed"] for r in done if r["goals"][name]]
    return {"seeds": [r["seed"] for r in done], "systems": systems, "medians": medians,
            "goals_on_medians": judge(medians), "goals_per_seed": per_goal}


def summary_section(base: dict[str, Any], across: dict[str, Any], done: list[dict[str, Any]]) -> str:
    labels = system_labels(base)
    n = len(done)

    def mmm(f: dict[str, Any], digits: int = 3) -> str:
        if f["median"] is None:
            return "–"
        return (f"{common.fmt(f['median'], digits)} ({common.fmt(f['min'], digits)}–"
                f"{common.fmt(f['max'], digits)})")

    rows = []
    for key in SYSTEMS:
        x = across["systems"][key]
        rows.append([labels[key], mmm(x["best_acc"], 4), mmm(x["best_acc_any_epoch"], 4), mmm(x["cpu_s"]),
                     mmm(x["cpu_ratio_to_random"]), mmm(x["wall_s"]),
                     f"{common.fmt(x['trials']['median'])} / {common.fmt(x['pruned']['median'])} / "
                     f"{common.fmt(x['failed']['median'])}", common.fmt(x["epochs"]["median"])])
    table_all = common.table(
        ["system", "best val acc (last epoch)", "best val acc (any epoch)", "CPU-s held",
         "CPU-s / random's (each seed's)", "wall s", "trials / pruned / failed", "epochs trained"], rows)

    seed_rows = []
    for r in done:
        s, goals = r["summary"], r["goals"]
        seed_rows.append([r["seed"]] + [f"{common.fmt(s[k]['best_acc'], 4)}; {common.fmt(s[k]['cpu_s'])}; "
                                        f"{common.fmt(s[k]['wall_s'])}" for k in SYSTEMS]
                         + [f"{yes(goals[f'{g}_met'])} (within 1: {yes(goals[f'{g}_met_within_1'])})"
                            for g, _ in GOALS])
    table_seeds = common.table(
        ["seed", "labq TPE + ASHA: acc; CPU-s; wall s", "Ray Tune: acc; CPU-s; wall s",
         "random: acc; CPU-s; wall s", "goal labq vs Tune", "goal labq vs random", "goal Tune vs random"],
        seed_rows)

    def seeds_of(seeds: list[int]) -> str:
        return f"{len(seeds)} of {n}" + (f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
                                         if seeds and len(seeds) < n else "")

    count_rows = []
    for g, name in GOALS:
        pg = across["goals_per_seed"][g]
        count_rows.append([name, seeds_of(pg["met"]), seeds_of(pg["met_within_1"]),
                           f"{len(pg['reached_exact'])} / {len(pg['reached_within_1'])}; {len(pg['cpu_ok'])}"])
    table_counts = common.table(
        ["goal (issue 20)", "met exactly in", "met within 1 example in",
         f"of {n}: best reached exactly / within 1; CPU-s condition held"], count_rows)
    medians = across["medians"]
    return (f"### Across {n} seed{'s' if n > 1 else ''} ({', '.join(str(r['seed']) for r in done)}): "
            "median (min–max)\n\n" + table_all + "\n\n"
            "Per seed (best val acc at the last epoch; CPU-s held; wall s) and its goals, met exactly (and "
            "within 1 example):\n\n" + table_seeds + "\n\n"
            "Goals judged on the medians (the typical draw; CPU-s / random's: the ratio of the medians):\n\n"
            + goal_table(medians, across["goals_on_medians"], acc_digits=4) + "\n\n"
            "Goals per seed:\n\n" + table_counts)


def report(args, base: dict[str, Any], per_seed: list[dict[str, Any]], t_start: float) -> dict:
    for r in per_seed:
        if r["error"] is None:
            r["summary"] = {k: summarize(v) for k, v in r["runs"].items()}
            r["goals"] = judge(r["summary"])
    done = [r for r in per_seed if r["error"] is None]
    failed = [r for r in per_seed if r["error"] is not None]
    across = across_seeds(done)
    tol = 1 / N_VAL
    sections = [seed_section(r["settings"], r["runs"], r["summary"], r["goals"]) for r in done]
    sections += [f"### Seed {r['seed']}: FAILED\n\n{r['error']}\n\nSystems finished before the failure: "
                 f"{', '.join(r['runs']) or 'none'}; this seed is left out of the summary." for r in failed]
    total_s = time.time() - t_start
    seeds = [r["seed"] for r in per_seed]
    md = (f"Digits, one-hidden-layer MLP (SGD), up to {base['epochs']} epochs of {base['epoch_s']} s "
          f"(computing 5-30 ms, the rest a sleep, alike in all three), validation accuracy on {N_VAL} examples; "
          f"space lr, alpha (loguniform), hidden (randint 4-128), batch (choice of 5); 1 CPU per trial, "
          f"{CORES} at a time; ASHA grace {base['grace']}, eta {base['eta']}, max_t {base['epochs']}; "
          f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; each system runs once per seed "
          f"(the random search with seed +{RANDOM_SEED_OFFSET}, so that it does not share TPE's first random "
          "points).\n\n"
          + "\n\n".join(sections) + "\n\n" + summary_section(base, across, done) + "\n\n"
          "- CPU-s held: 1 CPU x each trial's run as the system records it (labq: its attempts, dispatch to "
          "end, as its search budget counts them; Tune: on_trial_start to on_trial_complete), pruned trials "
          "included; worker start-up and imports fall in it (labq reuses its workers; Tune starts an actor per "
          f"trial, reuse_actors={base['tune_reuse_actors']}). CPU-s in job: from the job "
          "function's entry (after imports) to its last report. CPU-s computing: the CPU time the training "
          "thread used (the rest of each epoch is the sleep).\n"
          f"- Best val acc: the best trial's accuracy at its last reported epoch; 1 example = {tol:.4f} "
          "(ex. above: examples). Each seed is one draw of each search, and the best metric carries search "
          "noise of an example or two: the goals are judged on the medians over the seeds (with an even number "
          "of seeds, the mean of the middle two) and counted per seed.\n"
          "- Tune's OptunaSearch uses Optuna's TPESampler(seed) (no constant liar) and tells a stopped trial "
          "COMPLETE with its last value; labq tells its TPE (constant liar on) a pruned trial as PRUNED.\n"
          + (f"- FAILED seeds, left out of the summary: {', '.join(str(r['seed']) for r in failed)}.\n"
             if failed else "")
          + f"- Whole benchmark: {total_s:.0f} s wall (a Ray start per system and seed included).")
    data = {"settings": {**base, "seeds": seeds, "random_seeds": [r["settings"]["random_seed"] for r in per_seed]},
            "space": {k: [kind, args] for k, (kind, args) in SPACE.items()},
            "per_seed": per_seed, "across_seeds": across,
            "failed_seeds": [r["seed"] for r in failed], "bench_wall_s": total_s}
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    sys.exit(1 if main()["failed_seeds"] else 0)
