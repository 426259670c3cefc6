"""Jobs the integration tests run.  Copied beside each test spec, so importing it
in the workers also proves the spec's directory is shipped to them."""

import json
import os
import signal
import time

from jobs import report


def sleepy(ctx):
    """Sleeps, reporting when it ran and on which GPU."""
    start = time.time()
    time.sleep(ctx.params.get("seconds", 1.0))
    report(step=1, slept=ctx.params.get("seconds", 1.0))
    return {"start": start, "end": time.time(), "gpu": ",".join(ctx.gpu_ids), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def flaky(ctx):
    """Fails on the first attempt, succeeds on the next (state lives in the run dirs)."""
    print(f"attempt {ctx.attempt}")
    if ctx.attempt == 1:
        raise RuntimeError("first attempt always fails")
    assert ctx.previous_run_dir is not None and ctx.previous_run_dir.exists()
    return {"attempt": ctx.attempt}


def always_fails(ctx):
    raise ValueError(f"bad value {ctx.params.get('x')}")


def die(ctx):
    """The worker process is killed outright, as by the OOM killer or kill -9."""
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"survived": 1}


def upstream_reader(ctx):
    up = ctx.input()
    return {"upstream_value": up.metrics["value"], "upstream_file": up.artifact("note.txt").read_text()}


def writer(ctx):
    ctx.artifact_path("note.txt").write_text(f"hello {ctx.params['v']}")
    return {"value": ctx.params["v"]}


def writes_stdout(ctx):
    print("to stdout", flush=True)
    import sys
    print("to stderr", file=sys.stderr, flush=True)
    os.system("echo from a child process")
    return {"ok": 1}


def spins(ctx):
    """Busy in Python, so a polite cancel lands quickly."""
    end = time.time() + 300
    while time.time() < end:
        sum(range(1000))
    return {}


def blocks_in_c(ctx):
    """Blocked in a C call: only a forced cancel can stop it."""
    time.sleep(300)
    return {}


def record_env(ctx):
    return {"params": json.dumps(ctx.params, sort_keys=True)}


def hog(ctx):
    """Allocates well past its memory request, in Python (so an interrupt lands)."""
    chunks = []
    for _ in range(ctx.params.get("chunks", 40)):
        chunks.append(bytearray(25 * 2**20))
        time.sleep(0.02)
    time.sleep(2)
    return {"allocated_mib": 25 * len(chunks)}


def hog_then_sleep(ctx):
    """Over its request at once, then blocked in C for less than the kill grace."""
    block = bytearray(300 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(2.0)
    return {"held_mib": len(block) // 2**20}


def checkpointed(ctx):
    """Counts to `steps`, a step every 0.1 s, checkpointing each; a later attempt
    resumes from the previous attempt's checkpoint."""
    start = 0
    if ctx.previous_run_dir is not None:
        saved = ctx.previous_run_dir / "checkpoints" / "step.txt"
        if saved.exists():
            start = int(saved.read_text())
    mark = ctx.checkpoints_dir / "step.txt"
    mark.write_text(str(start))
    for step in range(start, ctx.params.get("steps", 50)):
        time.sleep(0.1)
        mark.write_text(str(step + 1))
    return {"resumed_from": start, "attempt": ctx.attempt}


def quick(ctx):
    """A job of a millisecond that says who it is on stdout and in an artifact;
    the one with ``die`` set kills its worker on its first attempt."""
    print(f"job {ctx.job_id} seed {ctx.params['seed']}", flush=True)
    if ctx.params["seed"] == ctx.params.get("die") and ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    ctx.artifact_path("seed.txt").write_text(str(ctx.params["seed"]))
    return {"seed": ctx.params["seed"], "pid": os.getpid()}


def curve(ctx):
    """A training curve: ``steps`` steps ``pause`` s apart, accuracy rising
    towards ``q`` (labq may stop it early: report() then raises StopTrial)."""
    import math

    from jobs import report

    q = ctx.params["q"]
    for step in range(1, ctx.params.get("steps", 16) + 1):
        time.sleep(ctx.params.get("pause", 0.05))
        report(step=step, acc=q * (1 - math.exp(-step / 4)))
    return {"acc": q * (1 - math.exp(-ctx.params.get("steps", 16) / 4))}


def resumable_curve(ctx):
    """``curve`` that checkpoints its step before each report and, resumed
    (promoted after a pause), goes on from its checkpoint instead of step 1."""
    import json
    import math

    from jobs import report

    q, steps = ctx.params["q"], ctx.params.get("steps", 8)
    start = 1
    if ctx.previous_run_dir is not None:
        saved = ctx.previous_run_dir / "checkpoints" / "step.json"
        if saved.exists():
            start = json.loads(saved.read_text())["step"] + 1
    for step in range(start, steps + 1):
        time.sleep(ctx.params.get("pause", 0.05))
        (ctx.checkpoints_dir / "step.json").write_text(json.dumps({"step": step}))
        report(step=step, acc=q * (1 - math.exp(-step / 4)))
    return {"acc": q * (1 - math.exp(-steps / 4)), "resumed_from": start}
