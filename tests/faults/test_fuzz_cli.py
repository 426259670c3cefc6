"""Property-based fuzzing of the `labq` command line, in process.

``scheduler.cli.main(argv)`` is called with random argument lists built from the
verbs (submit, queue, status, cancel, logs, results, nodes, scheduler
stop/status) and random options and values (unknown flags, bad numbers, missing
files, ids that are not numbers, huge ids, empty strings, --set overrides,
--cluster files), with LABQ_HOME a fresh directory per call: either absent (a
new queue) or a copy of a small populated queue (an experiment with finished,
running and blocked jobs, logs and metrics).

Properties (README, "CLI reference"):

* the return code is 0, 1, 2 or 3; nothing escapes as an exception;
* on 2, stderr is non-empty and every line starts with ``error:``;
* bad input writes nothing: after ``submit`` returns 2, a fresh LABQ_HOME has no
  labq.db (and no code snapshot), a populated one has the same experiments and
  jobs as before;
* with ``--json`` (placed where it is parsed as the flag) and success, stdout is JSON.

Nothing here may start a scheduler or block: ``run`` and ``scheduler start``
are never generated, ``submit`` always gets ``--no-start`` (first, so no option
can swallow it) and never ``--wait``, ``logs`` never gets ``-f``.  As a safety
net ``daemon.start``, ``api.wait`` and the CLI's ``time.sleep`` raise.

The deterministic tests at the bottom pin the bugs this fuzzer found (all
fixed).  Hypothesis runs derandomized with no example database;
LABQ_FUZZ_EXAMPLES scales the example counts.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from contract.attempt import WorkerOutcome, WorkerResult
from scheduler import api, cli, daemon
from scheduler.records import AttemptEnd, EndCause
from scheduler.states import AttemptState
from scheduler.store import Store

SCALE = float(os.environ.get("LABQ_FUZZ_EXAMPLES", "1"))
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _fuzz(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ---------------------------------------------------------------- the world the fuzzer runs in

OK_SPEC = """\
experiment: fz
stages:
  - {name: prep, command: 'echo prep'}
  - name: train
    after: [prep]
    command: 'echo {depth} {lr}'
    sweep: {grid: {depth: [3, null, auto]}, random: {lr: {loguniform: [0.001, 0.1]}}, samples: 1}
    resources: {cpu: 0.5, gpu: 0.25, memory: 64MiB}
"""

SPECS: dict[str, str | bytes] = {
    "ok.yaml": OK_SPEC,
    "jobs.yaml": "experiment: qs\nstages:\n  - {name: prep, run: 'jobs.prep:tabular', params: {dataset: iris}}\n"
                 "  - {name: train, after: [prep], run: 'jobs.train:sklearn',\n"
                 "     params: {estimator: sklearn.linear_model.LogisticRegression}}\n",
    "gpu_queue.yaml": "experiment: g\nqueue: gpu\nstages: [{name: a, command: 'echo'}]\n",
    "bad_gpu.yaml": "experiment: x\nstages: [{name: a, command: echo, resources: {gpu: 1.5}}]\n",
    "bad_key.yaml": "experiment: x\ncolour: red\nstages: [{name: a, command: echo, size: 3}]\n",
    "cycle.yaml": "experiment: x\nstages: [{name: a, command: echo, after: [b]}, {name: b, command: echo, after: [a]}]\n",
    "missing_target.yaml": "experiment: x\nstages: [{name: a, run: 'zz_labq_fuzz_missing:main'}]\n",
    "placeholder.yaml": "experiment: x\nstages: [{name: a, command: 'echo {nope}'}]\n",
    "invalid.yaml": "experiment: [unclosed\n",
    "empty.yaml": "",
    "list.yaml": "- a\n- b\n",
    "binary.yaml": b"\xff\xfe\x00\x01binary",
    "utf16.yaml": OK_SPEC.encode("utf-16"),
    "too_many.yaml": "experiment: x\nstages: [{name: a, command: 'echo {p}',\n"
                     "  sweep: {random: {p: {choice: [1]}}, samples: 100001}}]\n",
}
# Known-bug inputs (see the xfail tests) that the fuzzer may also pick.
BUG_SPECS: dict[str, str] = {
    "recursive.yaml": "experiment: x\nstages:\n  - {name: a, command: echo, params: &p {x: *p}}\n",
    "huge_priority.yaml": f"experiment: x\npriority: {2**63}\nstages: [{{name: a, command: echo}}]\n",
}

CLUSTERS: dict[str, str | bytes] = {
    "cluster_ok.yaml": "cluster_name: t\nmetadata:\n  labq:\n    home: /nonexistent/ignored-because-LABQ_HOME\n"
                       "    queues: [{name: default}, {name: gpu}]\n",
    "cluster_no_labq.yaml": "cluster_name: t\nmax_workers: 0\n",
    "cluster_bad_key.yaml": "metadata:\n  labq:\n    colour: red\n",
    "cluster_bad_type.yaml": "metadata:\n  labq:\n    scheduler: {poll_interval: -1}\n",
    "cluster_labq_list.yaml": "metadata:\n  labq: [1, 2]\n",
    "cluster_list.yaml": "- 1\n",
    "cluster_invalid.yaml": "metadata: {labq: [\n",
}
BUG_CLUSTERS: dict[str, bytes] = {"cluster_binary.yaml": b"\xff\xfe\x00binary"}


class World:
    def __init__(self, root: Path):
        self.root = root
        self.specs = root / "specs"
        self.specs.mkdir()
        for name, content in {**SPECS, **BUG_SPECS}.items():
            _write(self.specs / name, content)
        (self.specs / "a_directory").mkdir()
        self.clusters = root / "clusters"
        self.clusters.mkdir()
        for name, content in {**CLUSTERS, **BUG_CLUSTERS}.items():
            _write(self.clusters / name, content)
        self.homes = root / "homes"
        self.homes.mkdir()
        self.template = root / "template-home"
        self._populate(self.template)
        self._counter = itertools.count()

    def spec_paths(self) -> list[str]:
        return ([str(self.specs / n) for n in SPECS] + [str(self.specs / "a_directory"), str(self.specs / "nope.yaml"),
                                                        "", "-", "nope.yaml"])

    def cluster_paths(self) -> list[str]:
        return [str(self.clusters / n) for n in CLUSTERS] + [str(self.clusters / "missing.yaml"), ""]

    def _populate(self, home: Path) -> None:
        """An experiment 'fz' (id 1): prep job 1 succeeded with logs, train jobs 2-3
        succeeded with metrics (one NaN, one not a number), job 4 running."""
        with _labq_home(home):
            code, out, err = _call(["submit", "--no-start", str(self.specs / "ok.yaml")])
            assert code == 0, err
        store = Store(home)
        try:
            now = time.time()

            def run_dir(job_id: int, n: int) -> Path:
                return home / "runs" / str(job_id) / f"attempt-{n}"

            [first] = store.start_attempts([(1, "node-1")], run_dir, now)
            Path(first.run_dir).mkdir(parents=True)
            (Path(first.run_dir) / "stdout.log").write_text("prep out\n")
            (Path(first.run_dir) / "stderr.log").write_bytes(b"prep err \xff\n")
            store.finish_attempt(AttemptEnd(first.id, AttemptState.SUCCEEDED, EndCause.RETURNED, WorkerResult(
                outcome=WorkerOutcome.SUCCEEDED, metrics={"rows": 150}, started_at=now)), now + 1)
            for job_id, metrics in ((2, {"accuracy": 0.9, "loss": float("nan")}), (3, {"accuracy": "n/a"})):
                [attempt] = store.start_attempts([(job_id, "node-1")], run_dir, now)
                store.finish_attempt(AttemptEnd(attempt.id, AttemptState.SUCCEEDED, EndCause.RETURNED, WorkerResult(
                    outcome=WorkerOutcome.SUCCEEDED, metrics=metrics, started_at=now)), now + 2)
            store.start_attempts([(4, "node-1")], run_dir, now)
        finally:
            store.close()

    def new_home(self, populated: bool) -> Path:
        home = self.homes / f"h{next(self._counter)}"
        if populated:
            shutil.copytree(self.template, home)
        return home


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("fuzz-cli"))


class _Forbidden(BaseException):
    """Raised by the safety net; a BaseException so that main() cannot map it to a code."""


class _NoSleepTime:
    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        raise _Forbidden(f"the CLI tried to sleep {seconds}s (follow/wait loop) during fuzzing")


@pytest.fixture
def safety_net(monkeypatch):
    def no_start(*args, **kwargs):
        raise _Forbidden("the fuzzer made the CLI start a scheduler")

    def no_wait(*args, **kwargs):
        raise _Forbidden("the fuzzer made the CLI wait for jobs")

    monkeypatch.setattr(daemon, "start", no_start)
    monkeypatch.setattr(api, "wait", no_wait)
    monkeypatch.setattr(cli, "time", _NoSleepTime())
    monkeypatch.delenv("LABQ_CLUSTER", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


# ---------------------------------------------------------------- calling main

def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


@contextlib.contextmanager
def _labq_home(home: Path):
    old = os.environ.get("LABQ_HOME")
    os.environ["LABQ_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LABQ_HOME", None)
        else:
            os.environ["LABQ_HOME"] = old


def _call(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with stdout/stderr captured (binary-capable: `logs` writes bytes)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    out.flush()
    err.flush()
    return code, out.buffer.getvalue().decode("utf-8", "replace"), err.buffer.getvalue().decode("utf-8", "replace")


def _counts(home: Path) -> tuple[int, int, tuple[str, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{home / 'labq.db'}?mode=ro", uri=True)) as conn:
        experiments = conn.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    packages = tuple(sorted(p.name for p in (home / "packages").glob("*"))) if (home / "packages").exists() else ()
    return experiments, jobs, packages


def check_cli(world: World, argv: list[str], populated: bool, json_flag: bool) -> str:
    home = world.new_home(populated)
    before = _counts(home) if populated else None
    try:
        with _labq_home(home):
            try:
                code, out, err = _call(argv)
            except Exception as exc:  # noqa: BLE001 - the property under test
                raise AssertionError(f"labq {argv!r} raised {exc.__class__.__name__}: {exc}") from exc
        assert code in (0, 1, 2, 3), f"labq {argv!r} returned {code!r}"
        assert "Traceback (most recent call last)" not in err
        if code == 2:
            assert err.strip(), f"labq {argv!r} returned 2 with an empty stderr"
            bad = [line for line in err.splitlines() if not line.startswith("error:")]
            assert not bad, f"labq {argv!r}: stderr lines without 'error:': {bad!r}\n{err}"
            if "submit" in argv:
                if populated:
                    assert _counts(home) == before, f"labq {argv!r} returned 2 but changed the queue"
                else:
                    assert not (home / "labq.db").exists(), f"labq {argv!r} returned 2 but created labq.db"
                    assert not (home / "packages").exists(), f"labq {argv!r} returned 2 but wrote a snapshot"
        if json_flag and code in (0, 1) and "--help" not in argv and "-h" not in argv:
            json.loads(out)  # --json output must be JSON
        return f"exit {code}"
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------- strategies

LINE_BREAK_TOKENS = ["a\nb", "x\u2028y"]


def _text(max_size: int) -> st.SearchStrategy[str]:
    """Random text without line breaks: those are tried on purpose, rarely (LINE_BREAK_TOKENS),
    because a known bug makes the stderr check skip any argv that has one."""
    return st.text(st.characters(exclude_characters=LINE_BREAKS), max_size=max_size)


ids = st.one_of(
    st.sampled_from(["1", "2", "3", "4", "5", "0", "999", "-1", "", " 1", "1.0", "0x1", "abc", "fz", "²", "١٢",
                     "1_000", "+1", "9" * 19, str(2**63 - 1), str(2**63), "9" * 30, "9" * 5000, "1e3", "ünï"]),
    st.sampled_from(["1", "2", "4", "²", str(2**63), "9" * 5000]),
    st.integers(-5, 10**25).map(str),
    _text(8),
)
names = st.one_of(st.sampled_from(["fz", "qs", "x", "", "1", "nope", "fz ", "FZ", "名前", "%", "'; DROP TABLE jobs"]),
                  _text(8))
numbers = st.one_of(st.sampled_from(["1", "0", "-1", "1.5", "nan", "inf", "-inf", "1e3", "1e400", "9" * 19,
                                     "9" * 30, "", "abc", "0x10", "٣", " 2"]),
                    st.sampled_from(["1", "2", "nan", str(2**63)]), st.integers(-3, 10**20).map(str))
sort_keys = st.one_of(st.sampled_from(["accuracy", "loss", "depth", "lr", "rows", "stage", "job_id", "", "nope"]),
                      _text(6))
override_items = st.one_of(
    st.builds(lambda k, v: f"{k}={v}",
              st.lists(st.sampled_from(["stages", "train", "prep", "0", "1", "9", "²", "resources", "cpu", "gpu",
                                        "memory", "params", "depth", "priority", "queue", "experiment", "sweep",
                                        "samples", "retries", "timeout", "", "zz"]), min_size=1, max_size=4)
              .map(".".join),
              st.sampled_from(["1", "-1", "0.5", "2.5", "null", "[a]", "{x: 1}", "[", "gpu", "nope", "1e400",
                               "9" * 30, "", "true", "10m", "1GiB"]) | _text(6)),
    st.sampled_from(["", "=", "novalue", "a=b=c", "priority=5", "queue=gpu", "stages.train.resources.gpu=0.5"]),
)
FORBIDDEN = {"run", "start", "--wait", "--follow", "-f"}


def _safe_token(token: str) -> bool:
    """Tokens that cannot start a scheduler, wait, or follow logs."""
    if token in FORBIDDEN or token.startswith(("--w", "--f")):
        return False
    return not (token.startswith("-") and not token.startswith("--") and "f" in token)


junk = st.one_of(
    st.sampled_from(["--bogus", "-x", "--", "--json", "--limit", "--set", "--attempt", "--experiment", "--cpus",
                     "--gpus", "--sort", "--plot", "--csv", "--asc", "--desc", "--stdout", "--stderr", "-h", "--help",
                     "--no-start", "extra", "", " ", "=", "--json=1", "--limit=0", "-", "—", "queue", "nodes"]),
    _text(8),
).filter(_safe_token)


def _flags(draw, *options: list[str]) -> list[str]:
    chosen: list[str] = []
    for option in options:
        if draw(st.booleans()):
            chosen += option
    return chosen


@st.composite
def invocations(draw, world: World) -> tuple[list[str], bool, bool]:
    """(argv, populated home?, --json parsed as the flag?)."""
    verb = draw(st.sampled_from(["submit", "queue", "status", "cancel", "logs", "results", "nodes",
                                 "scheduler stop", "scheduler status", "help", "no-command"]))
    json_flag = draw(st.booleans())
    j = ["--json"] if json_flag else []
    if verb == "submit":
        argv = ["submit", "--no-start", draw(st.sampled_from(world.spec_paths()))]
        argv += [x for item in draw(st.lists(override_items, max_size=3)) for x in ("--set", item)]
        argv += _flags(draw, ["--cpus", draw(numbers)], ["--gpus", draw(numbers)]) + j
    elif verb == "queue":
        argv = ["queue"] + _flags(draw, ["--limit", draw(numbers)]) + j
    elif verb == "status":
        argv = ["status", draw(ids | names)] + j
    elif verb == "cancel":
        argv = ["cancel"] + draw(st.lists(ids, max_size=3)) + _flags(draw, ["--experiment", draw(names)]) + j
    elif verb == "logs":
        argv = ["logs", draw(ids)] + _flags(draw, ["--attempt", draw(numbers)]) + draw(
            st.sampled_from([[], ["--stdout"], ["--stderr"], ["--stdout", "--stderr"]]))
        json_flag = False
    elif verb == "results":
        fmt = draw(st.sampled_from([[], ["--json"], ["--csv"], ["--json", "--csv"]]))
        plot = draw(st.sampled_from(["p.png", "", "missing-dir/p.png", "."]))
        argv = ["results", draw(names | ids)] + fmt + _flags(
            draw, ["--sort", draw(sort_keys)], [draw(st.sampled_from(["--asc", "--desc"]))],
            ["--plot", str(world.root / plot) if plot else ""])
        json_flag = "--json" in fmt
    elif verb == "nodes":
        argv = ["nodes"] + j
    elif verb == "scheduler stop":
        argv = ["scheduler", "stop"]
        json_flag = False
    elif verb == "scheduler status":
        argv = ["scheduler", "status"] + j
    elif verb == "help":
        argv = draw(st.sampled_from([["--help"], ["--version"], ["-h"], ["submit", "--help"], ["logs", "-h"],
                                     ["scheduler", "--help"], ["scheduler", "stop", "--help"]]))
        json_flag = False
    else:
        argv = draw(st.sampled_from([[], ["scheduler"], ["bogus"], ["Queue"], ["scheduler", "bogus"],
                                     ["scheduler", "restart"]]))
        json_flag = False
    extra = draw(st.lists(junk, min_size=1, max_size=3)) if draw(st.integers(0, 2)) == 0 else []
    if draw(st.integers(0, 30)) == 0:
        extra.append(draw(st.sampled_from(LINE_BREAK_TOKENS)))
    if extra:
        json_flag = False  # junk may swallow or shadow --json
        for token in extra:
            argv.insert(draw(st.integers(min(2, len(argv)), len(argv))), token)
    if draw(st.integers(0, 4)) == 0:
        argv = ["--cluster", draw(st.sampled_from(world.cluster_paths()))] + argv
    populated = draw(st.booleans())
    return argv, populated, json_flag


def _assert_safe(argv: list[str]) -> None:
    """Belt and braces: the generator never asks for a scheduler, a wait or -f."""
    rest = argv[2:] if argv[:1] == ["--cluster"] else argv
    assert rest[:1] != ["run"] and rest[:2] != ["scheduler", "start"]
    if "submit" in argv:
        assert argv[argv.index("submit") + 1] == "--no-start"
    assert "--wait" not in argv and "-f" not in argv and "--follow" not in argv


# ---------------------------------------------------------------- fuzzers

@_fuzz(300)
@given(data=st.data())
def test_cli_exit_codes_and_error_lines(world, safety_net, data):
    argv, populated, json_flag = data.draw(invocations(world))
    _assert_safe(argv)
    event(check_cli(world, argv, populated, json_flag))


@_fuzz(150)
@given(data=st.data())
def test_cli_submit_bad_input_writes_nothing(world, safety_net, data):
    good = [str(world.specs / "ok.yaml"), str(world.specs / "jobs.yaml")]
    spec = data.draw(st.one_of(st.sampled_from(good), st.sampled_from(world.spec_paths())))
    plausible = st.sampled_from(["priority=5", "priority=-3", "description=hi", "experiment=other", "metric=loss",
                                 "mode=min", "stages.1.retries=2", "stages.0.resources.cpu=0.25",
                                 "stages.train.resources.gpu=1", "stages.train.timeout=90s"])
    sets = [x for item in data.draw(st.lists(plausible | override_items, max_size=3)) for x in ("--set", item)]
    argv = ["submit", "--no-start", spec] + sets + data.draw(st.sampled_from([[], ["--json"]]))
    if data.draw(st.booleans()):
        argv = ["--cluster", data.draw(st.sampled_from(world.cluster_paths()))] + argv
    event(check_cli(world, argv, data.draw(st.booleans()), "--json" in argv))


# ---------------------------------------------------------------- deterministic cases

def test_populated_template_is_what_the_fuzzer_expects(world, safety_net):
    home = world.new_home(populated=True)
    with _labq_home(home):
        code, out, _ = _call(["status", "fz", "--json"])
        assert code == 0
        states = {j["id"]: j["state"] for j in json.loads(out)["jobs"]}
        assert states == {1: "succeeded", 2: "succeeded", 3: "succeeded", 4: "running"}
        code, out, err = _call(["logs", "1"])
        assert (code, out, err) == (0, "prep out\n", "prep err \ufffd\n")


@pytest.mark.parametrize("spec", [n for n in SPECS if n not in ("ok.yaml", "jobs.yaml", "gpu_queue.yaml")]
                         + ["a_directory", "nope.yaml"])
@pytest.mark.parametrize("populated", [False, True], ids=["fresh", "populated"])
def test_every_bad_spec_exits_2_and_writes_nothing(world, safety_net, spec, populated):
    assert check_cli(world, ["submit", "--no-start", str(world.specs / spec)], populated, False) == "exit 2"


def test_queue_of_another_cluster_needs_its_cluster_file(world, safety_net):
    spec = str(world.specs / "gpu_queue.yaml")
    assert check_cli(world, ["submit", "--no-start", spec], False, False) == "exit 2"
    cluster = str(world.clusters / "cluster_ok.yaml")
    assert check_cli(world, ["--cluster", cluster, "submit", "--no-start", spec, "--json"], False, True) == "exit 0"


@pytest.mark.parametrize("argv", [
    ["status", "0"], ["status", ""], ["status", "nope"], ["cancel"], ["cancel", "--experiment", ""],
    ["cancel", "abc"], ["cancel", "1", "999"], ["logs", "abc"], ["logs", "-1"], ["logs", "5"],
    ["logs", "1", "--attempt", "0"], ["logs", "1", "--attempt", "2"], ["queue", "--limit", "0"],
    ["queue", "--limit", "nan"], ["results", "nope"], ["results", "fz", "--plot", "."],
    ["submit", "--no-start"], ["submit", "--no-start", "x.yaml", "--cpus", "0"], ["scheduler", "bogus"],
    ["--cluster", "/nonexistent/cluster.yaml", "queue"],
])
def test_interesting_bad_arguments_exit_2(world, safety_net, argv):
    assert check_cli(world, argv, True, False) == "exit 2"


@pytest.mark.parametrize("argv", [
    ["queue", "--json"], ["nodes", "--json"], ["status", "4", "--json"], ["status", "fz", "--json"],
    ["results", "fz", "--json", "--sort", "depth", "--asc"], ["results", "1", "--json"],
    ["cancel", "4", "2", "--json"], ["cancel", "--experiment", "fz", "--json"], ["scheduler", "status", "--json"],
])
def test_json_output_parses(world, safety_net, argv):
    assert check_cli(world, argv, True, True) in ("exit 0", "exit 1")


# ---------------------------------------------------------------- known bugs (xfail, strict)

def _expect_exit_2(world: World, argv: list[str], populated: bool = True) -> str:
    home = world.new_home(populated)
    with _labq_home(home):
        code, _, err = _call(argv)
    assert code == 2, err
    assert err and all(line.startswith("error:") for line in err.splitlines()), err
    return err


@pytest.mark.parametrize("argv", [["status", "²"], ["cancel", "²"], ["results", "²"], ["status", "١"],
                                  ["status", "9" * 5000]], ids=["status", "cancel", "results", "arabic", "long"])
def test_refs_that_are_digits_but_not_ints(world, safety_net, argv):
    _expect_exit_2(world, argv)


@pytest.mark.parametrize("argv", [
    ["status", str(2**63)], ["cancel", str(2**63)], ["logs", str(2**63)], ["results", str(2**63)],
    ["queue", "--limit", str(2**63)],
], ids=["status", "cancel", "logs", "results", "queue-limit"])
def test_numbers_beyond_64_bits(world, safety_net, argv):
    _expect_exit_2(world, argv)


@pytest.mark.parametrize("override", [f"priority={2**63}", f"stages.train.resources.memory={2**63}"],
                         ids=["priority", "memory"])
def test_submit_number_beyond_64_bits(world, safety_net, override):
    home = world.new_home(populated=False)
    with _labq_home(home):
        code, _, err = _call(["submit", "--no-start", str(world.specs / "ok.yaml"), "--set", override])
    assert code == 2, err
    assert not (home / "labq.db").exists()


def test_submit_recursive_alias_spec(world, safety_net):
    home = world.new_home(populated=False)
    with _labq_home(home):
        code, _, err = _call(["submit", "--no-start", str(world.specs / "recursive.yaml")])
    assert code == 2, err
    assert not (home / "labq.db").exists()


def test_cluster_file_not_utf8(world, safety_net):
    _expect_exit_2(world, ["--cluster", str(world.clusters / "cluster_binary.yaml"), "queue"])


def test_plot_into_missing_directory(world, safety_net):
    _expect_exit_2(world, ["results", "fz", "--plot", str(world.root / "missing-dir" / "p.png")])


@pytest.mark.parametrize("argv", [[], ["scheduler"]], ids=["labq", "labq-scheduler"])
def test_no_command_prints_help_as_error_lines(world, safety_net, argv):
    home = world.new_home(populated=False)
    with _labq_home(home):
        code, _, err = _call(argv)
    assert code != 2 or all(line.startswith("error:") for line in err.splitlines()), err


def test_argument_with_newline_in_click_error(world, safety_net):
    _expect_exit_2(world, ["queue", "extra\nargument"])


def test_top_level_usage_hint(world, safety_net):
    err = _expect_exit_2(world, ["--bogus"])
    assert "labq labq" not in err, err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_cpus_nan_or_inf_is_rejected(world, safety_net, value):
    # The spec does not exist, so nothing can start whatever --cpus does.
    err = _expect_exit_2(world, ["submit", "--no-start", str(world.specs / "nope.yaml"), "--cpus", value])
    assert "--cpus" in err, err
