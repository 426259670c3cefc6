"""Early stopping's signals on a node, on plain files: the scheduler reads a
run dir's curve in pieces (workers.node_ops.curves_since) and writes its
verdicts there (signal_attempts); a callable's report() waits at a rung for
them (jobs.api), and stops on a stop."""

from __future__ import annotations

import json
import threading
import time

import pytest

from jobs import api
from jobs.api import CLEARED_FILE, STOP_FILE, JobContext, StopTrial
from workers import node_ops


def context(tmp_path, rungs=(2.0, 4.0)) -> JobContext:
    return JobContext(job_id=1, attempt=1, experiment="e", stage="s", params={}, run_dir=tmp_path, rungs=rungs)


def test_curves_are_read_in_complete_lines_from_an_offset(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1}\n{"step": 2}\n{"ste')
    ((used, first),) = node_ops.curves_since([(str(tmp_path), 0)])
    assert first == b'{"step": 1}\n{"step": 2}\n' and used == len(first)  # the half-written line waits
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'p": 3}\n')
    (used, again), missing = node_ops.curves_since([(str(tmp_path), len(first)), (str(tmp_path / "none"), 0)])
    assert json.loads(again) == {"step": 3} and missing == (0, b"")


def test_a_line_longer_than_a_read_is_skipped_and_the_next_ones_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(node_ops, "CURVE_READ_BYTES", 64)
    long_line = b'{"note": "' + b"x" * 200 + b'"}\n'
    (tmp_path / "metrics.jsonl").write_bytes(long_line + b'{"step": 2, "acc": 0.5}\n')
    ((used, data),) = node_ops.curves_since([(str(tmp_path), 0)])
    assert (used, data) == (len(long_line), b"")
    ((_, data),) = node_ops.curves_since([(str(tmp_path), used)])
    assert json.loads(data) == {"step": 2, "acc": 0.5}


def test_signals_are_written_whole_and_only_the_two_early_stopping_files(tmp_path):
    node_ops.signal_attempts([(str(tmp_path), CLEARED_FILE, "4"), (str(tmp_path / "gone"), STOP_FILE, "x")])
    assert (tmp_path / CLEARED_FILE).read_text() == "4" and not (tmp_path / "gone").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="not an early-stopping signal"):
        node_ops.signal_attempts([(str(tmp_path), "../../etc/passwd", "x")])


def test_report_waits_at_a_rung_until_the_scheduler_clears_it(tmp_path):
    ctx = context(tmp_path)
    started = time.monotonic()
    ctx.report(step=1, acc=0.1)  # not a rung: no wait
    assert time.monotonic() - started < 0.5
    threading.Timer(0.3, lambda: node_ops.signal_attempts([(str(tmp_path), CLEARED_FILE, "2")])).start()
    started = time.monotonic()
    ctx.report(step=2, acc=0.2)
    assert 0.25 < time.monotonic() - started < 5
    started = time.monotonic()
    ctx.report(step=3, acc=0.3)  # between rungs
    assert time.monotonic() - started < 0.5


def test_a_stop_at_a_rung_raises_with_the_scheduler_s_reason(tmp_path):
    ctx = context(tmp_path)
    threading.Timer(0.2, lambda: node_ops.signal_attempts(
        [(str(tmp_path), STOP_FILE, "paused this job: acc 0.2 at rung 1/2 is not (yet) in the top")])).start()
    with pytest.raises(StopTrial, match="labq paused this job: acc 0.2 at rung 1/2"):
        ctx.report(step=2, acc=0.2)


def test_a_resumed_job_s_first_report_waits_for_the_rungs_it_passed(tmp_path):
    """Its first report may cross several rungs at once: it waits for the highest."""
    ctx = context(tmp_path)
    node_ops.signal_attempts([(str(tmp_path), CLEARED_FILE, "2")])
    threading.Timer(0.3, lambda: node_ops.signal_attempts([(str(tmp_path), CLEARED_FILE, "5")])).start()
    started = time.monotonic()
    ctx.report(step=5, acc=0.5)
    assert time.monotonic() - started > 0.25


def test_without_a_scheduler_report_goes_on_after_the_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "RUNG_WAIT_SECONDS", 0.2)
    ctx = context(tmp_path)
    started = time.monotonic()
    ctx.report(step=2, acc=0.2)
    assert 0.15 < time.monotonic() - started < 2
    assert context(tmp_path, rungs=()).report(step=2) is None  # no rungs: never waits


def test_only_a_report_of_the_judged_metric_waits_at_a_rung(tmp_path):
    """Two reports of one step, the loss first: the loss does not wait (the
    scheduler judges acc, and could not clear a step it has no acc for)."""
    ctx = JobContext(job_id=1, attempt=1, experiment="e", stage="s", params={}, run_dir=tmp_path, rungs=(2.0,),
                     rung_metric="acc")
    started = time.monotonic()
    ctx.report(step=2, loss=0.3)
    assert time.monotonic() - started < 0.5
    threading.Timer(0.3, lambda: node_ops.signal_attempts([(str(tmp_path), CLEARED_FILE, "2")])).start()
    started = time.monotonic()
    ctx.report(step=2, acc=0.7)
    assert time.monotonic() - started > 0.25


def test_a_scripts_output_steps_read_as_they_grow_match_a_read_of_the_whole():
    """metrics_from.stdout, followed while the script runs (so early stopping
    can judge it), numbers each metric's matches as a read of the whole output does."""
    import random

    from workers.metrics_from import StdoutSteps, steps_from_lines

    patterns = {"acc": r"acc=([0-9.]+)", "loss": r"loss ([0-9.]+)"}
    text = "".join(f"epoch {i} acc={i / 10:.2f}" + (f" loss {1 - i / 10:.2f}" if i % 2 else "") + "\n"
                   for i in range(10)) + "noise\nacc=0.99"
    data = text.encode()
    rng = random.Random(0)
    steps, records, at = StdoutSteps(patterns), [], 0
    while at < len(data):
        cut = min(len(data), at + rng.randint(1, 12))
        records += steps.feed(data[at:cut])
        at = cut
    records += steps.feed(b"", final=True)
    whole = steps_from_lines(text.splitlines(), patterns)
    from workers.metrics_from import final_of

    assert steps.final == final_of(whole)  # the final values too, without reading the output again
    for name in patterns:
        followed = [(r["step"], r[name]) for r in records if name in r]
        read = [(r["step"], r[name]) for r in whole if name in r]
        assert followed == read and followed, name
