"""Latency: single jobs submitted one at a time to an idle in-process scheduler,
against raw Ray task start latency in the same Ray.

* labq: submit one no-op job (scheduler.api.submit, as `labq submit` does), wait
  until it is recorded, repeat.  The scheduler is a real Scheduler running
  labq's loop.run in a thread (as the daemon runs it) against a local Ray with
  2 CPUs.  submit->start = attempt.started_at (the worker's clock as the job
  body begins) - job.submitted_at; finish->recorded = job.ended_at -
  attempt.ended_at.  Measured at the daemon's default poll_interval (0.2 s) and
  at 0.05 s (what the integration tests use): without the submit's nudge an
  idle scheduler would sleep up to poll_interval before looking at the queue.
* raw Ray: time from .remote() to the task body starting, measured inside the
  task, one task at a time.

Each labq submit comes at a random moment (a uniform pause of up to
poll_interval + 50 ms first), so it lands anywhere in the idle scheduler's sleep.
A few warm-up jobs/tasks run first (not counted) so both sides have warm workers.

  python bench/bench_latency.py [--quick] [--n N]
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "latency"
TITLE = "Latency: one job at a time"
WARMUP = 5


def labq_latency(temp: Path, n: int, poll: float) -> dict:
    from scheduler import api
    from scheduler.store import Store

    spec = common.write_noop_spec(temp / f"spec-{poll}", "lat", 1, cpu=0.1)
    home = temp / f"home-{poll}"
    sched, stop, thread, settings = common.scheduler_in_thread(home, poll_interval=poll)
    store = Store(home)
    s2s, f2r, submit_call, end_to_end = [], [], [], []
    rng = random.Random(0)
    try:
        for i in range(WARMUP + n):
            # Arrive at a random moment of the scheduler's idle sleep, as a user
            # would, not right after the previous job was recorded (when the
            # loop has just started a full poll_interval sleep).
            time.sleep(rng.uniform(0, poll + 0.05))
            t0 = time.time()
            sub = api.submit(spec, [f"experiment=lat-{i}"], settings)
            t1 = time.time()
            (job,) = common.wait_experiment(store, sub.experiment_id, timeout=120, poll=0.005)
            t2 = time.time()
            if job.state.value != "succeeded":
                raise RuntimeError(f"job {job.id}: {job.state.value}: {job.reason}")
            attempt = store.attempts(job.id)[-1]
            if i >= WARMUP:
                s2s.append(1000 * (attempt.started_at - job.submitted_at))
                f2r.append(1000 * (job.ended_at - attempt.ended_at))
                submit_call.append(1000 * (t1 - t0))
                end_to_end.append(1000 * (t2 - t0))
    finally:
        stop.set()
        thread.join(timeout=30)
        store.close()
    return {"poll": poll, "n": n, "submit_to_start_ms": s2s, "finish_to_recorded_ms": f2r,
            "submit_call_ms": submit_call, "end_to_end_ms": end_to_end}


def _make_probe():
    import ray

    def probe():  # nested: shipped by value
        return time.time()

    return ray.remote(num_cpus=0.1, max_retries=0)(probe)


def raw_latency(n: int) -> dict:
    import ray

    probe = _make_probe()
    start, end_to_end = [], []
    for i in range(WARMUP + n):
        t0 = time.time()
        body = ray.get(probe.remote(), timeout=120)
        t2 = time.time()
        if i >= WARMUP:
            start.append(1000 * (body - t0))
            end_to_end.append(1000 * (t2 - t0))
    return {"n": n, "start_ms": start, "end_to_end_ms": end_to_end}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, help="jobs per measurement (default 200; quick 30)")
    args = p.parse_args(argv)
    n = args.n or (30 if args.quick else 200)
    pct = common.percentile
    data: dict = {"n": n}
    with common.local_ray(num_cpus=2) as temp:
        print(f"raw Ray: {n} tasks one at a time", flush=True)
        data["raw_first"] = raw_latency(n)
        for poll in (0.2, 0.05):
            print(f"labq (poll_interval {poll}s): {n} jobs one at a time", flush=True)
            data[f"labq_{poll}"] = labq_latency(temp, n, poll)
        print(f"raw Ray again: {n} tasks one at a time", flush=True)
        data["raw_again"] = raw_latency(n)

    raw_all = data["raw_first"]["start_ms"] + data["raw_again"]["start_ms"]
    raw_e2e = data["raw_first"]["end_to_end_ms"] + data["raw_again"]["end_to_end_ms"]
    rows = []
    for poll in (0.2, 0.05):
        d = data[f"labq_{poll}"]
        rows.append([f"labq, poll_interval {poll}s{' (default)' if poll == 0.2 else ''}", "submit -> job body starts",
                     pct(d["submit_to_start_ms"], 50), pct(d["submit_to_start_ms"], 99),
                     pct(d["submit_to_start_ms"], 50) - pct(raw_all, 50)])
        rows.append(["", "job returns -> recorded in the store", pct(d["finish_to_recorded_ms"], 50),
                     pct(d["finish_to_recorded_ms"], 99), None])
        rows.append(["", "api.submit call itself (validate, snapshot, store)", pct(d["submit_call_ms"], 50),
                     pct(d["submit_call_ms"], 99), None])
        rows.append(["", "submit call -> seen terminal by the client", pct(d["end_to_end_ms"], 50),
                     pct(d["end_to_end_ms"], 99), pct(d["end_to_end_ms"], 50) - pct(raw_e2e, 50)])
    rows.append([f"raw Ray task ({2 * n} tasks, before and after labq)", ".remote() -> task body starts",
                 pct(raw_all, 50), pct(raw_all, 99), None])
    rows.append(["", ".remote() -> ray.get returns", pct(raw_e2e, 50), pct(raw_e2e, 99), None])
    d = data["labq_0.2"]
    added = pct(d["submit_to_start_ms"], 50) - pct(raw_all, 50)
    added_fast = pct(data["labq_0.05"]["submit_to_start_ms"], 50) - pct(raw_all, 50)
    summary = {"labq_submit_to_start_p50_ms": pct(d["submit_to_start_ms"], 50),
               "labq_submit_to_start_p99_ms": pct(d["submit_to_start_ms"], 99),
               "labq_finish_to_recorded_p50_ms": pct(d["finish_to_recorded_ms"], 50),
               "labq_finish_to_recorded_p99_ms": pct(d["finish_to_recorded_ms"], 99),
               "raw_start_p50_ms": pct(raw_all, 50), "raw_start_p99_ms": pct(raw_all, 99),
               "labq_added_p50_ms": added, "labq_added_p50_ms_poll_0.05": added_fast,
               "labq_over_raw_start_p50": pct(d["submit_to_start_ms"], 50) / pct(raw_all, 50)}
    md = (f"{n} jobs (and {2 * n} raw tasks), one at a time, after {WARMUP} warm-up jobs each; milliseconds.\n\n"
          + common.table(["system", "interval", "p50 ms", "p99 ms", "labq added at p50, ms"], rows)
          + f"\n\n- **labq adds {added:.0f} ms at p50** to the start of a job over a raw Ray task with the daemon's "
            f"default poll_interval of 0.2 s ({added_fast:.0f} ms at 0.05 s). A submit nudges the idle scheduler "
            "(scheduler/wakeup.py), so the poll interval hardly matters; what remains is one pass (read what changed, "
            "decide, start_attempts with an fsync) and the Ray launch with the experiment's runtime env.\n"
            f"- ratio labq submit->start / raw Ray start at p50: "
            f"{summary['labq_over_raw_start_p50']:.0f}x.\n"
            "- raw Ray was measured before and after labq (pooled) to even out the machine's drift.")
    data["summary"] = summary
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
