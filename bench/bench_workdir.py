"""The private working directory per attempt: what it costs, and what a new
code snapshot costs the first job that runs it.

Part 1, the working directory (no Ray): for a 3 MiB project and one at the
100 MiB limit, the cost per attempt of
  * labq, a pooled copy (the steady state: a rename in, a walk, a rename out),
  * labq, a fresh copy (the first attempts of a snapshot on a node),
  * the mechanisms labq did not choose: per-attempt zip extraction, a mirror of
    directories with symlinks or with hard links to the snapshot (cheap, but a
    job that writes to an input writes through the link into the shared copy:
    permission bits do not stop a job running as root).
Each attempt writes a 1 MiB model.pt, which labq keeps as its output.

Part 2, first-job latency (real Ray, a warm in-process scheduler): submit a
20-job sweep whose code changed since the last submit (a new snapshot) and one
whose code did not, alternately; time submit -> the first job's body starts.

  python bench/bench_workdir.py [--quick] [--rounds N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
import zipfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

NAME = "workdir"
TITLE = "Private working directory per attempt, and a new snapshot's first job"


def _project(root: Path, data_bytes: int) -> Path:
    """50 source files of 20 KiB in 5 packages, plus one data file."""
    root.mkdir(parents=True)
    for i in range(50):
        package = root / f"pkg{i % 5}"
        package.mkdir(exist_ok=True)
        (package / f"mod{i}.py").write_bytes(os.urandom(10 * 1024).hex().encode())
    (root / "data").mkdir()
    (root / "data" / "train.bin").write_bytes(os.urandom(data_bytes))
    return root


def _time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def workdir_costs(temp: Path, reps: int) -> list[list]:
    from scheduler.packaging import snapshot as package_of
    from workers import workdir

    rows = []
    model = os.urandom(1 << 20)
    for label, data_bytes in (("3 MiB", 2 * 2**20), ("100 MiB", 99 * 2**20)):
        base = temp / label.replace(" ", "")
        project = _project(base / "project", data_bytes)
        home = base / "home"
        package = package_of(project, home, "bench.yaml")
        snap = workdir.open_snapshot(home / "code", package)
        counter = iter(range(10**9))

        def attempt(pooled: bool) -> None:
            run = base / "runs" / str(next(counter))
            run.mkdir(parents=True)
            if not pooled:
                shutil.rmtree(snap.pool, ignore_errors=True)
            cwd = workdir.prepare(run, snap)
            (cwd / "model.pt").write_bytes(model)
            workdir.collect(run, snap, limit=None)

        attempt(True)  # fill the pool with one copy
        pooled = _time(lambda: attempt(True), reps)
        fresh = _time(lambda: attempt(False), reps)
        files = [p.relative_to(snap.root) for p in snap.root.rglob("*") if p.is_file()]
        dirs = sorted({f.parent for f in files})

        def mirror(link) -> None:
            dst = base / "mirror"
            for d in dirs:
                (dst / d).mkdir(parents=True, exist_ok=True)
            for f in files:
                link(snap.root / f, dst / f)
            (dst / "model.pt").write_bytes(model)
            shutil.rmtree(dst)

        def extract() -> None:
            dst = base / "extract"
            with zipfile.ZipFile(package) as zf:
                zf.extractall(dst)
            (dst / "model.pt").write_bytes(model)
            shutil.rmtree(dst)

        rows += [[label, "labq: pooled copy (steady state)", pooled, "yes"],
                 [label, "labq: fresh copy (first use on a node)", fresh, "yes"],
                 [label, "zip extraction per attempt", _time(extract, reps), "yes"],
                 [label, "symlink mirror", _time(lambda: mirror(os.symlink), reps), "no: writes reach the snapshot"],
                 [label, "hard-link mirror", _time(lambda: mirror(os.link), reps), "no: writes reach the snapshot"]]
    return rows


def first_job_latency(temp: Path, rounds: int, n: int) -> dict[str, list[float]]:
    from scheduler import api
    from scheduler.store import Store

    spec = common.write_noop_spec(temp / "spec", "fj", n, cpu=0.25, target="benchjobs:noop")
    module = spec.parent / "benchjobs.py"
    home = temp / "home"
    sched, stop, thread, settings = common.scheduler_in_thread(home, poll_interval=0.2)
    store = Store(home)
    out: dict[str, list[float]] = {"unchanged": [], "new": []}
    try:
        def first_start(kind: str, i: int) -> float:
            if kind == "new":  # the user edited the code: a new snapshot
                module.write_text(module.read_text() + f"\n# edit {i}\n")
            sub = api.submit(spec, [f"experiment=fj-{kind}-{i}"], settings)
            jobs = common.wait_experiment(store, sub.experiment_id, timeout=300, poll=0.01)
            starts = [a.started_at for j in jobs for a in store.attempts(j.id)[-1:] if a.started_at]
            submitted = min(j.submitted_at for j in jobs)
            return 1000 * (min(starts) - submitted)

        first_start("unchanged", -1)  # warm: workers started, code extracted
        for i in range(rounds):
            for kind in ("new", "unchanged"):
                out[kind].append(first_start(kind, i))
    finally:
        stop.set()
        thread.join(timeout=30)
        store.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, help="submits of each kind in part 2 (default 10; quick 3)")
    p.add_argument("--only", choices=["workdir", "latency"], help="run one part")
    args = p.parse_args(argv)
    reps = 5 if args.quick else 15
    rounds = args.rounds or (3 if args.quick else 10)
    data: dict = {}
    md = ""
    temp = common.short_tempdir("lqw-")
    try:
        if args.only in (None, "workdir"):
            rows = workdir_costs(temp / "wd", reps)
            data["workdir_ms"] = rows
            md += (f"Part 1: the working directory of one attempt that writes a 1 MiB model.pt, median of {reps} "
                   f"(ms), home under {temp}.\n\n"
                   + common.table(["project", "mechanism", "ms per attempt", "isolated"], rows) + "\n\n")
        if args.only in (None, "latency"):
            with common.local_ray(num_cpus=2):
                lat = first_job_latency(temp / "lat", rounds, 20)
            data["first_job_ms"] = lat
            pct = common.percentile
            md += (f"Part 2: submit -> first job starts on a warm scheduler (20-job sweeps, {rounds} of each, "
                   "alternating), ms.\n\n"
                   + common.table(["snapshot", "p50", "max"],
                                  [["new (code changed)", pct(lat["new"], 50), max(lat["new"])],
                                   ["unchanged (resubmitted)", pct(lat["unchanged"], 50), max(lat["unchanged"])]])
                   + f"\n\nnew / unchanged at p50: {common.ratio(pct(lat['new'], 50), pct(lat['unchanged'], 50)):.2f}\n")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
