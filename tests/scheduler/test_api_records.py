"""scheduler.api returns records and the CLI prints them: each record's
``to_json`` is exactly what the verb's ``--json`` prints, read from a real
Store (the CLI run in this process against the same LABQ_HOME)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from scheduler import api, cli
from scheduler.errors import UnknownIdError, UserError
from scheduler.policy import QueueConfig
from scheduler.records import NodeSnapshot
from scheduler.states import AttemptState
from scheduler.store import Store

from test_store import NOW, _submit_yaml, end, store  # noqa: F401  (store: over this module's home)

SPEC = """
experiment: records
stages:
  - name: train
    command: "true"
    sweep: {grid: {lr: [0.1, 0.2, 0.3]}}
    resources: {cpu: 1}
"""

ESTIMATES = api.EstimateSettings(half_life=7 * 86400.0, queues=[QueueConfig(name="default")])


@pytest.fixture
def home() -> Path:
    return Path(os.environ["LABQ_HOME"])  # the autouse fixture's: the CLI reads the same one


@pytest.fixture
def submitted(store, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    experiment_id, ids, _ = _submit_yaml(store, spec)
    return experiment_id, ids


def _start(store: Store, tmp_path: Path, job_id: int):
    (attempt,) = store.start_attempts([(job_id, "node-1")], lambda j, n: str(tmp_path / "runs" / f"{j}-{n}"), NOW + 1)
    Path(attempt.run_dir).mkdir(parents=True)
    return attempt


def _cli_json(capsys, *args: str):
    code = cli.main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_queue_lists_running_first_with_the_summary_a_table_needs(store, submitted, tmp_path, capsys):
    _, ids = submitted
    _start(store, tmp_path, ids[1])
    view = api.queue(store, ESTIMATES)
    assert [j.id for j in view.jobs] == [ids[1], ids[0], ids[2]]
    assert view.total == 3 and not view.scheduler.running
    assert view.unplaced == "no scheduler running"
    assert view.starts.warning is None
    bare = api.queue(store, ESTIMATES, limit=1, summary=False)
    assert [j.id for j in bare.jobs] == [ids[1]] and bare.total is None and bare.unplaced == ""
    code, printed = _cli_json(capsys, "queue")
    assert code == 0 and printed == api.queue(store, ESTIMATES, summary=False).to_json()
    assert [row["id"] for row in printed] == [ids[1], ids[0], ids[2]]
    assert all("estimated_start" in row for row in printed)


def test_status_of_a_job_and_of_an_experiment(store, submitted, tmp_path, capsys):
    _, ids = submitted
    attempt = _start(store, tmp_path, ids[0])
    store.finish_attempt(end(attempt.id, AttemptState.SUCCEEDED, result={"metrics": {"accuracy": 0.9}}), NOW + 5)
    found = api.status(store, str(ids[0]), ESTIMATES)
    assert isinstance(found, api.JobStatus)
    assert found.job.state.value == "succeeded" and [a.number for a in found.attempts] == [1]
    assert found.estimated_start is None and found.events
    code, printed = _cli_json(capsys, "status", str(ids[0]))
    assert code == 0 and printed == found.to_json()
    assert printed["attempts_detail"][0]["state"] == "succeeded"

    exp = api.status(store, "records", ESTIMATES)
    assert isinstance(exp, api.ExperimentStatus)
    assert exp.counts == {"succeeded": 1, "pending": 2}
    code, printed = _cli_json(capsys, "status", "records")
    assert code == 0 and printed == exp.to_json()
    with pytest.raises(UnknownIdError):
        api.status(store, "999", ESTIMATES)


def test_a_log_cursor_reads_what_is_new_and_knows_when_it_has_all(store, submitted, tmp_path):
    _, ids = submitted
    with pytest.raises(UserError, match="has not started yet"):
        api.logs(store, ids[0])
    assert not api.log_ready(store, ids[0])
    attempt = _start(store, tmp_path, ids[0])
    assert api.log_ready(store, ids[0])
    run = Path(attempt.run_dir)
    (run / "stdout.log").write_bytes(b"epoch 1\n")
    cursor = api.logs(store, ids[0])
    assert cursor.read() == [("stdout", b"epoch 1\n")]
    assert cursor.read() == []
    with open(run / "stdout.log", "ab") as f:
        f.write(b"epoch 2\n")
    (run / "stderr.log").write_bytes(b"warn\n")
    assert cursor.read() == [("stdout", b"epoch 2\n"), ("stderr", b"warn\n")]
    assert not cursor.finished()  # still running
    with open(run / "stdout.log", "ab") as f:
        f.write(b"done\n")
    store.finish_attempt(end(attempt.id, AttemptState.SUCCEEDED, result={}), NOW + 5)
    assert not cursor.finished()  # ended, but "done" is not read yet
    assert cursor.read() == [("stdout", b"done\n")]
    assert cursor.finished()
    only_err = api.logs(store, ids[0], 1, ("stderr",))
    assert only_err.read() == [("stderr", b"warn\n")]
    with pytest.raises(UserError, match="no log stream"):
        api.logs(store, ids[0], None, ("stdin",))


def test_the_cli_prints_the_cursors_bytes(store, submitted, tmp_path, capsysbinary):
    _, ids = submitted
    attempt = _start(store, tmp_path, ids[0])
    (Path(attempt.run_dir) / "stdout.log").write_bytes(b"out\n")
    (Path(attempt.run_dir) / "stderr.log").write_bytes(b"err\n")
    assert cli.main(["logs", str(ids[0])]) == 0
    captured = capsysbinary.readouterr()
    assert (captured.out, captured.err) == (b"out\n", b"err\n")
    assert cli.main(["logs", str(ids[0]), "--stderr"]) == 0
    assert capsysbinary.readouterr().out == b"err\n"  # one stream alone goes to stdout


def test_artifacts_and_step_curves(store, submitted, tmp_path, capsys):
    _, ids = submitted
    attempt = _start(store, tmp_path, ids[0])
    run = Path(attempt.run_dir)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"time": NOW, "step": s, "loss": 1 / s}) + "\n"
                                               for s in (1, 2, 3)))
    store.finish_attempt(end(attempt.id, AttemptState.SUCCEEDED, result={"metrics": {"loss": 0.33}}), NOW + 5)
    files = api.attempt_files(store, ids[0])
    code, printed = _cli_json(capsys, "artifacts", str(ids[0]))
    assert code == 0 and printed == files.to_json()
    assert printed["attempt"] == 1 and printed["state"] == "succeeded"
    res = api.results(store, "records")
    assert res.to_json()[0]["main_metric"] == "loss"
    (curve,) = api.step_curves(res.rows, res.metric)
    assert (curve.job_id, curve.metric, curve.steps) == (ids[0], "loss", [1, 2, 3])
    assert curve.values == pytest.approx([1.0, 0.5, 1 / 3])
    code, printed = _cli_json(capsys, "results", "records")
    assert code == 0 and printed == res.to_json()


def test_nodes_and_usage(store, submitted, tmp_path, capsys):
    store.save_nodes([NodeSnapshot(node_id="node-1", address="10.0.0.1", alive=True, total={"CPU": 4.0},
                                   allocated={"CPU": 1.0}, running_jobs=1, gpus=[], updated_at=NOW)])
    view = api.nodes(store)
    assert [n.node_id for n in view.nodes] == ["node-1"] and not view.scheduler.running
    code, printed = _cli_json(capsys, "nodes")
    assert code == 0 and printed == view.to_json()

    _, ids = submitted
    attempt = _start(store, tmp_path, ids[0])
    store.finish_attempt(end(attempt.id, AttemptState.SUCCEEDED, result={}), NOW + 3601)
    report = api.usage(store, "2h", "user", half_life=7 * 86400.0, now=NOW + 7200)
    assert report.groups == ("user",) and len(report.rows) == 1
    assert report.to_json() == {"since": NOW, "now": NOW + 7200, "half_life_s": 7 * 86400.0, "rows": report.rows}
    code, printed = _cli_json(capsys, "usage", "--since", "365d", "--by", "user")
    assert code == 0
    assert printed == api.usage(store, "365d", "user", half_life=printed["half_life_s"], now=printed["now"]).to_json()
    with pytest.raises(UserError, match="--since soon"):
        api.usage(store, "soon", "user", half_life=3600.0)


def test_estimates_without_a_cluster_file_replay_the_default_queue_alone():
    settings = api.EstimateSettings(half_life=3600.0)
    assert settings.queue_configs() == [QueueConfig(name="default")]
    assert ESTIMATES.queue_configs() == [QueueConfig(name="default")]


def test_read_logs_is_one_stateless_step_of_a_follower(store, submitted, tmp_path):
    _, ids = submitted
    with pytest.raises(UserError, match="has not started yet"):
        api.read_logs(store, ids[0])
    attempt = _start(store, tmp_path, ids[0])
    run = Path(attempt.run_dir)
    got = api.read_logs(store, ids[0])
    assert (got.attempt, got.chunks, got.offsets, got.done) == (1, (), {"stdout": 0, "stderr": 0}, False)
    (run / "stdout.log").write_bytes(b"epoch 1\n")
    (run / "stderr.log").write_bytes(b"warn\n")
    got = api.read_logs(store, ids[0], got.attempt, offsets=got.offsets)
    assert got.chunks == (("stdout", b"epoch 1\n"), ("stderr", b"warn\n")) and not got.done
    assert got.offsets == {"stdout": 8, "stderr": 5}
    with open(run / "stdout.log", "ab") as f:
        f.write(b"done \xff\n")  # bytes as written, not text
    store.finish_attempt(end(attempt.id, AttemptState.SUCCEEDED, result={}), NOW + 5)
    got = api.read_logs(store, ids[0], got.attempt, offsets=got.offsets)
    assert got.chunks == (("stdout", b"done \xff\n"),) and got.done
    assert api.LogRead.from_json(json.loads(json.dumps(got.to_json()))) == got
    again = api.read_logs(store, ids[0], 1, ("stdout",), offsets={"stdout": 8, "stderr": 5})
    assert again.chunks == (("stdout", b"done \xff\n"),) and again.offsets == {"stdout": 15} and again.done
    with pytest.raises(UserError, match="no attempt 2"):
        api.read_logs(store, ids[0], 2)


def test_a_follower_of_a_superseded_attempt_stops_once_it_has_read_all(store, submitted, tmp_path, capsysbinary):
    _, ids = submitted
    first = _start(store, tmp_path, ids[0])
    (Path(first.run_dir) / "stdout.log").write_bytes(b"try 1\n")
    store.finish_attempt(end(first.id, AttemptState.PREEMPTED, result={}), NOW + 5)
    assert store.job(ids[0]).state.value == "pending"  # requeued: not terminal
    assert not api.read_logs(store, ids[0]).done  # no newer attempt yet
    second = _start(store, tmp_path, ids[0])
    assert second.number == 2
    got = api.read_logs(store, ids[0], 1)
    assert got.chunks == (("stdout", b"try 1\n"),) and got.done
    assert cli.main(["logs", str(ids[0]), "-f", "--attempt", "1"]) == 0
    assert capsysbinary.readouterr().out == b"try 1\n"


def test_a_submit_that_starts_a_scheduler_reads_the_database_first(home):
    assert not api.check_before_start(home)  # no queue yet
    Store(home).close()
    assert api.check_before_start(home)


def test_the_cli_reads_the_queue_only_through_the_api():
    """No verb of cli.py calls a Store method or reads a run dir itself: it
    passes the store it opened to scheduler.api and prints what comes back."""
    import ast

    tree = ast.parse(Path(cli.__file__).read_text())
    calls = [node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
             and node.func.value.id == "store"]
    assert calls == []
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in [ast.alias(node.module or "")]}
    assert "workers" not in imported


# ---------------------------------------------------------------- over the wire (`labq --server`)

def _through_json(data):
    """What an HTTP hop does to a record's wire form."""
    return json.loads(json.dumps(data))


def test_every_view_comes_back_whole_from_its_wire_form(store, submitted, tmp_path):
    """A remote verb prints from the record its wire form rebuilds: the same
    record a local verb prints from (so the same table and --json)."""
    from scheduler.api.cluster_view import NodesView, UsageReport
    from scheduler.api.files import AttemptFiles
    from scheduler.api.queue_view import QueueView, status_from_wire
    from scheduler.api.ranking import Results

    _, ids = submitted
    attempt = _start(store, tmp_path, ids[0])
    store.finish_attempt(end(attempt.id, AttemptState.SUCCEEDED, result={"metrics": {"accuracy": 0.9}}), NOW + 5)
    _start(store, tmp_path, ids[1])
    store.save_nodes([NodeSnapshot("n1", "10.0.0.1", True, {"CPU": 4.0}, {"CPU": 1.0}, 1, [], NOW)])

    view = api.queue(store, ESTIMATES)
    back = QueueView.from_wire(_through_json(view.to_wire()))
    assert back.jobs == view.jobs and back.starts == view.starts and back.total == view.total
    assert back.scheduler == view.scheduler and back.unplaced == view.unplaced

    for ref in (str(ids[0]), "records"):
        found = api.status(store, ref, ESTIMATES)
        again = status_from_wire(_through_json(found.to_wire()))
        assert type(again) is type(found) and again.to_json() == found.to_json()
        if ref != "records":
            assert again.attempts == found.attempts and again.events == found.events
            assert again.advice == found.advice
        else:
            assert again.experiment == found.experiment and again.counts == found.counts

    res = api.results(store, "records", limit=2)
    assert Results.from_wire(_through_json(res.to_wire())) == res
    nodes = api.nodes(store)
    assert NodesView.from_json(_through_json(nodes.to_json())) == nodes
    report = api.usage(store, "7d", "both", 3600.0)
    assert UsageReport.from_wire(_through_json(report.to_wire())) == report
    files = api.attempt_files(store, ids[0])
    assert AttemptFiles.from_wire(_through_json(files.to_wire())) == files


def test_results_pages_by_offset_in_both_orders(store, submitted, tmp_path):
    _, ids = submitted
    for job_id, acc in zip(ids, (0.5, 0.9, 0.7)):
        attempt = _start(store, tmp_path, job_id)
        store.finish_attempt(end(attempt.id, AttemptState.SUCCEEDED, result={"metrics": {"accuracy": acc}}), NOW + 5)
    first, second = (api.results(store, "records", limit=2, offset=o) for o in (0, 2))
    assert [r["metrics"]["accuracy"] for r in first.rows + second.rows] == [0.9, 0.7, 0.5]
    by_param = [api.results(store, "records", sort="lr", ascending=True, limit=1, offset=o).rows[0]["params"]["lr"]
                for o in range(3)]
    assert by_param == [0.1, 0.2, 0.3]
    assert api.queue(store, ESTIMATES, limit=1, offset=1).jobs == []  # every job has ended: nothing active


def test_the_experiment_page_counts_jobs_by_state(store, submitted, tmp_path):
    experiment_id, ids = submitted
    _start(store, tmp_path, ids[0])
    page = api.experiment_page(store, limit=10)
    assert page["total"] == 1
    (row,) = page["experiments"]
    assert row["id"] == experiment_id and row["name"] == "records" and row["jobs"] == 3
    assert row["counts"] == {"running": 1, "pending": 2}
    assert api.experiment_page(store, limit=10, offset=1)["experiments"] == []


MIXED = """
experiment: mixed
stages:
  - name: train
    command: "true"
    sweep: {grid: {x: [3, 1.5, "a", true, null, 2, -1, 1.5e300], y: [0, 1]}}
    resources: {cpu: 1}
"""


@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("key", ["x", "y"])
def test_a_page_sorted_by_a_param_is_the_same_rows_as_sorting_them_all(store, tmp_path, key, ascending):
    """SQLite ranks a param (numbers in order, ties by id, then the rest by id)
    exactly as sorting every decoded row does: booleans, text and null last."""
    spec = tmp_path / "mixed.yaml"
    spec.write_text(textwrap.dedent(MIXED))
    _submit_yaml(store, spec)
    everything = [r["job_id"] for r in api.results(store, "mixed", sort=key, ascending=ascending).rows]
    assert len(everything) == 16
    paged = [r["job_id"] for offset in range(0, 16, 5)
             for r in api.results(store, "mixed", sort=key, ascending=ascending, limit=5, offset=offset).rows]
    assert paged == everything
