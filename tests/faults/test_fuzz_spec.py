"""Property-based fuzzing of the experiment spec parser.

Property: for any file and any ``--set`` overrides, ``load_spec(path, overrides)``
either returns or raises ``SpecError``, never another exception; every problem is
one line that starts with the spec's path (README, "The experiment spec":
"Each problem prints one line naming the file, the key and what was expected").
A spec that loads can also be planned (``plan_jobs``, at most a SpecError) and its
resources handed to the scheduling policy (``scheduler.policy.decide``) without an
exception.

Inputs: arbitrary YAML documents (recursive dicts/lists/scalars), mutations of
valid specs (dropped keys, unknown keys, values of another type, negative, NaN,
infinite and huge numbers, unicode names, GPU fractions above 1, cycles in
``after``, random ``{placeholders}``), random ``--set`` overrides, random YAML-ish
text, edits of the quickstart text, and raw bytes (invalid UTF-8, binary).

The deterministic tests at the bottom pin the bugs these fuzzers found (all
fixed): huge numbers, unicode digits, line breaks in user text, non-finite
resources, imports that raise or exit, self-referencing YAML, huge sweeps.

Hypothesis runs derandomized (reproducible in CI) with no example database;
LABQ_FUZZ_EXAMPLES scales the example counts.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import re
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from scheduler.errors import SpecError, UserError
from scheduler.policy import Demand, Node, decide
from scheduler.spec import ExperimentSpec, apply_override, load_spec
from scheduler.sweep import plan_jobs

SCALE = float(os.environ.get("LABQ_FUZZ_EXAMPLES", "1"))


def _fuzz(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# Characters str.splitlines() breaks on: a problem containing one is not one line.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"

QUICKSTART: dict[str, Any] = {
    "experiment": "quickstart",
    "metric": "accuracy",
    "stages": [
        {"name": "prep", "run": "jobs.prep:tabular",
         "params": {"dataset": "digits", "impute": "median", "scale": "standard", "test_size": 0.3, "seed": 0},
         "resources": {"cpu": 1}},
        {"name": "train", "after": ["prep"], "run": "jobs.train:sklearn",
         "params": {"estimator": "sklearn.ensemble.RandomForestClassifier"},
         "sweep": {"grid": {"n_estimators": [100, 300], "max_depth": [4, 8, None]}},
         "resources": {"cpu": 0.5, "memory": "256MiB"}, "retries": 1, "timeout": "5m"},
    ],
}

COMMANDS: dict[str, Any] = {
    "experiment": "cmd-sweep",
    "description": "command stages only",
    "queue": "default",
    "priority": 3,
    "metric": "loss",
    "mode": "min",
    "stages": [
        {"name": "make", "command": "python make.py --n {n}", "params": {"n": 10}},
        {"name": "fit", "after": ["make"], "command": "python fit.py --lr {lr} --depth {depth} --opt {opt}",
         "params": {"opt": "adam"},
         "sweep": {"grid": {"depth": [1, 2]}, "random": {"lr": {"loguniform": [1e-4, 1e-1]}},
                   "samples": 2, "seed": 7},
         "resources": {"cpu": 0.5, "gpu": 0.25, "memory": "1GiB", "custom": {"a100": 1}},
         "retries": 2, "timeout": 90},
        {"name": "report", "after": ["fit"], "command": "echo {what}",
         "sweep": {"random": {"what": {"choice": ["a", "b"]}, "k": {"randint": [0, 5]},
                              "u": {"uniform": [-1, 1]}}, "samples": 1}},
    ],
}

BASES = (QUICKSTART, COMMANDS)

QUICKSTART_TEXT = textwrap.dedent("""\
    experiment: quickstart
    metric: accuracy
    stages:
      - name: prep
        run: jobs.prep:tabular
        params: {dataset: digits, impute: median, scale: standard, test_size: 0.3, seed: 0}
        resources: {cpu: 1}
      - name: train
        after: [prep]
        run: jobs.train:sklearn
        params: {estimator: sklearn.ensemble.RandomForestClassifier}
        sweep:
          grid: {n_estimators: [100, 300], max_depth: [4, 8, null]}
        resources: {cpu: 0.5, memory: 256MiB}
        retries: 1
        timeout: 5m
    """)

SPEC_KEYS = ["experiment", "description", "queue", "priority", "metric", "mode", "stages", "name", "run",
             "command", "params", "after", "sweep", "resources", "retries", "timeout", "grid", "random", "samples",
             "seed", "cpu", "gpu", "memory", "custom", "choice", "uniform", "loguniform", "randint"]

SPECIAL_NUMBERS = [0, -1, -0.5, 0.0, 1, 1.5, 2, 2.5, 0.25, 100, 101, 1e308, -1e308, 1e-320, math.inf, -math.inf,
                   math.nan, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, int("9" * 400), True, False]

INTERESTING_STRINGS = [
    "", " ", "null", "~", "prep", "train", "a", "x" * 101, "1GiB", "512MiB", "2G", "1e5GiB", "-1GiB", "1.5XB",
    "9" * 400 + "B", "10m", "90s", "2h", "1d", "0s", "-5m", "1e400", "nan", ".inf", "jobs.prep:tabular",
    "jobs.train:sklearn", "jobs.prep:nope", "jobs.nosuch:main", "zz_labq_fuzz_missing:main", "a..b:c", "jobs.:x",
    "not a target", "{x}", "{}", "{0}", "{a.b}", "{a[0]}", "{!r}", "{a:{b}}", "{{literal}}", "{", "}", "é",
    "ünïcödé-名前", "a\nb", "line\u2028sep", "tab\there", "max", "min", "default", "sklearn.linear_model.Ridge",
    "iris", "digits", "[1, 2]", "{a: 1}", "&anchor", "*alias", "!!python/object:os.system",
]

names = st.one_of(st.sampled_from(["prep", "train", "make", "fit", "report", "a", "b", "é", "a b", "", "-x",
                                   "x" * 101, "名前"]),
                  st.text(max_size=10))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(SPECIAL_NUMBERS),
    st.text(max_size=16), st.sampled_from(INTERESTING_STRINGS), st.dates(),
)
keys = st.one_of(st.sampled_from(SPEC_KEYS), st.text(max_size=10), st.integers(-3, 3), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)),
                      max_leaves=24)

# A stage-shaped dict: mostly the real keys, with random values of any type.
stage_like = st.fixed_dictionaries(
    {"name": names},
    optional={"run": st.sampled_from(["jobs.prep:tabular", "jobs.train:sklearn", "jobs.evaluate:model",
                                      "zz_labq_fuzz_missing:main", "jobs.prep:nope", "bad target"]) | values,
              "command": st.text(alphabet="echo {}[]!:.ab0_ é\n", max_size=24) | values,
              "params": st.dictionaries(st.text(max_size=6), values, max_size=3) | values,
              "after": st.lists(names, max_size=3) | values,
              "sweep": st.fixed_dictionaries({}, optional={
                  "grid": st.dictionaries(st.text(max_size=4), st.lists(scalars, max_size=3), max_size=2) | values,
                  "random": st.dictionaries(st.text(max_size=4), values, max_size=2),
                  "samples": st.integers(-2, 5) | scalars, "seed": scalars}) | values,
              "resources": st.fixed_dictionaries({}, optional={
                  "cpu": scalars, "gpu": st.floats(0, 8) | scalars, "memory": scalars,
                  "custom": st.dictionaries(st.text(max_size=4), scalars, max_size=2) | values}) | values,
              "retries": scalars, "timeout": scalars, "colour": values})
structured_docs = st.fixed_dictionaries(
    {"experiment": names | scalars, "stages": st.lists(stage_like, max_size=3) | values},
    optional={"queue": names | scalars, "priority": scalars, "metric": scalars, "mode": scalars,
              "description": scalars, "unknown": values})

override_keys = st.lists(st.one_of(st.sampled_from(["stages", "prep", "train", "make", "fit", "0", "1", "7", "²",
                                                    "resources", "cpu", "gpu", "memory", "params", "sweep", "grid",
                                                    "after", "experiment", "priority", "timeout", "name", "",
                                                    "queue", "retries", "custom", "a"]),
                                   st.text(max_size=6)),
                         min_size=1, max_size=5).map(".".join)
override_values = st.one_of(st.sampled_from(["1", "-1", "0.5", "1.5", "null", "[a, b]", "{x: 1}", "[", "]: :",
                                             "'unterminated", ".nan", ".inf", "9" * 40, "1e400", "true", "",
                                             "train", "[prep]", "a\nb", "!!binary zz"]),
                            st.text(max_size=12))
overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", override_keys, override_values),
                               st.text(max_size=12), st.sampled_from(["=", "=1", "novalue", "a=b=c"])),
                     max_size=3)
file_names = st.sampled_from(["spec.yaml", "spéc ✓.yaml", "s p e c.yml", "-spec.yaml", "spec"])


# ---------------------------------------------------------------- mutations

def _slots(node: Any, acc: list | None = None) -> list[tuple[Any, Any]]:
    """(container, key) of every value in the document."""
    acc = [] if acc is None else acc
    if isinstance(node, dict):
        for k, v in node.items():
            acc.append((node, k))
            _slots(v, acc)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            acc.append((node, i))
            _slots(v, acc)
    return acc


def _containers(node: Any, acc: list | None = None) -> list[dict]:
    acc = [] if acc is None else acc
    if isinstance(node, dict):
        acc.append(node)
        for v in node.values():
            _containers(v, acc)
    elif isinstance(node, list):
        for v in node:
            _containers(v, acc)
    return acc


def _stages(doc: dict) -> list[dict]:
    stages = doc.get("stages")
    return [s for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []


MUTATIONS = ["drop", "unknown_key", "retype", "special_number", "unicode_name", "gpu_fraction", "cycle",
             "placeholders", "duplicate_stage", "interesting_string", "numeric_field"]
NUMERIC_STRINGS = ["9" * 400, "9" * 400 + "B", "9" * 30 + "GiB", "1e3", "0.5", "-0", "1_000", "0x10", ".5m", "5 m",
                   "1.5GiB", "0B", "1e400s", "99999999999999999999d"]
EXTREMES = [int("9" * 400), "9" * 400 + "B", 2**63, -(2**63) - 1, math.nan, math.inf, -math.inf, -1, 1e308]
numeric_values = st.one_of(st.sampled_from(EXTREMES), st.sampled_from(SPECIAL_NUMBERS + NUMERIC_STRINGS), st.floats(),
                           st.integers())
# Mutations that usually keep the spec valid, so the semantic checks and plan_jobs get exercised too.
BENIGN = ["valid_resources", "valid_sweep", "valid_rename", "valid_param"]


@st.composite
def mutated_specs(draw) -> dict:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    ops = draw(st.lists(st.sampled_from(BENIGN), max_size=3)) + draw(st.lists(st.sampled_from(MUTATIONS), max_size=2))
    for op in draw(st.permutations(ops)):
        slots = _slots(doc)
        stages = _stages(doc)
        if op == "drop" and slots:
            container, key = draw(st.sampled_from(slots))
            del container[key]
        elif op == "unknown_key":
            container = draw(st.sampled_from(_containers(doc)))
            container[draw(keys)] = draw(values)
        elif op == "retype" and slots:
            container, key = draw(st.sampled_from(slots))
            container[key] = draw(values)
        elif op == "special_number" and slots:
            container, key = draw(st.sampled_from(slots))
            container[key] = draw(st.sampled_from(SPECIAL_NUMBERS) | st.floats() | st.integers())
        elif op == "interesting_string" and slots:
            container, key = draw(st.sampled_from(slots))
            container[key] = draw(st.sampled_from(INTERESTING_STRINGS))
        elif op == "unicode_name" and stages:
            stage = draw(st.sampled_from(stages))
            target = draw(st.sampled_from(["stage", "experiment", "queue"]))
            name = draw(st.text(min_size=1, max_size=12))
            if target == "stage":
                stage["name"] = name
            else:
                doc[target] = name
        elif op == "gpu_fraction" and stages:
            stage = draw(st.sampled_from(stages))
            if not isinstance(stage.get("resources"), dict):
                stage["resources"] = {}
            stage["resources"]["gpu"] = draw(st.floats(min_value=1.0, max_value=64.0) | st.sampled_from([1.5, 2, 2.0, 7.999]))
        elif op == "cycle" and stages:
            a, b = draw(st.sampled_from(stages)), draw(st.sampled_from(stages))
            a["after"] = [b.get("name")]
            b["after"] = [a.get("name")] + ([b.get("name")] if draw(st.booleans()) else [])
        elif op == "placeholders" and stages:
            stage = draw(st.sampled_from(stages))
            stage.pop("run", None)
            pieces = draw(st.lists(st.one_of(st.text(alphabet="abc_0.[]!:{} é", max_size=6),
                                             st.sampled_from(["{n}", "{lr}", "{missing}", "{0}", "{}", "{a.b}",
                                                              "{x[0]}", "{!r}", "{n:>{w}}", "{{", "}}", "{", "}"])),
                                   max_size=6))
            stage["command"] = "run " + "".join(pieces)
        elif op == "duplicate_stage" and stages:
            doc["stages"].append(copy.deepcopy(draw(st.sampled_from(stages))))
        elif op == "numeric_field" and stages:
            stage = draw(st.sampled_from(stages))
            value = draw(numeric_values)
            field = draw(st.sampled_from(["timeout", "retries", "cpu", "gpu", "memory", "custom", "priority"]))
            if field in ("cpu", "gpu", "memory"):
                if not isinstance(stage.get("resources"), dict):
                    stage["resources"] = {}
                stage["resources"][field] = value
            elif field == "custom":
                if not isinstance(stage.get("resources"), dict):
                    stage["resources"] = {}
                stage["resources"]["custom"] = {"a100": value}
            elif field == "priority":
                doc["priority"] = value
            else:
                stage[field] = value
        elif op == "valid_resources" and stages:
            stage = draw(st.sampled_from(stages))
            stage["resources"] = draw(st.fixed_dictionaries({}, optional={
                "cpu": st.floats(0, 64), "gpu": st.floats(0, 1) | st.integers(0, 8),
                "memory": st.sampled_from(["512MiB", "2GiB", "1G", 0, 10**9, "1.5 kb"]),
                "custom": st.dictionaries(st.sampled_from(["a100", "tpu", "é"]), st.floats(0, 4), max_size=2)}))
        elif op == "valid_sweep" and stages:
            stage = draw(st.sampled_from(stages))
            grid = draw(st.dictionaries(st.sampled_from(["g1", "g2"]), st.lists(scalars, min_size=1, max_size=3),
                                        max_size=2))
            random = draw(st.dictionaries(st.sampled_from(["r1", "r2"]), st.one_of(
                st.builds(lambda v: {"choice": v}, st.lists(scalars, min_size=1, max_size=3)),
                st.builds(lambda a, b: {"uniform": sorted([a, a + b])}, st.floats(-1e6, 1e6), st.floats(1e-3, 1e3)),
                st.builds(lambda a, b: {"loguniform": [a, a * b]}, st.floats(1e-9, 1e3), st.floats(1.5, 1e3)),
                st.builds(lambda a, b: {"randint": [a, a + b]}, st.integers(-(10**20), 10**20), st.integers(1, 10**6))),
                max_size=2))
            sweep = {**({"grid": grid} if grid else {}), **({"random": random, "samples": draw(st.integers(1, 3)),
                                                              "seed": draw(st.integers())} if random else {})}
            if sweep:
                stage["sweep"] = sweep
                if "command" in stage:
                    stage["command"] += "".join(f" {{{k}}}" for k in [*grid, *random])
        elif op == "valid_rename" and stages:
            stage = draw(st.sampled_from(stages))
            new = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True))
            old = stage.get("name")
            for other in stages:
                if isinstance(other.get("after"), list):
                    other["after"] = [new if up == old else up for up in other["after"]]
            stage["name"] = new
        elif op == "valid_param" and stages:
            stage = draw(st.sampled_from(stages))
            if isinstance(stage.get("params"), dict):
                stage["params"][draw(st.sampled_from(["seed", "n", "opt", "extra", "scale"]))] = draw(scalars)
    return doc


def _override_paths(node: Any, prefix: str = "") -> list[str]:
    """Every KEY.PATH of a document as --set addresses it (stages by name)."""
    paths: list[str] = []
    items = (node.items() if isinstance(node, dict) else
             ((item.get("name", i) if isinstance(item, dict) else i, item) for i, item in enumerate(node))
             if isinstance(node, list) else ())
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        paths.append(path)
        paths += _override_paths(value, path)
    return paths


@st.composite
def plausible_overrides(draw, base: dict) -> list[str]:
    """--set items on paths that exist in ``base`` (plus a new leaf now and then)."""
    paths = _override_paths(base)
    out = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        if draw(st.integers(0, 3)) == 0:
            path += "." + draw(st.sampled_from(["new", "cpu", "0", "name", "x"]))
        value = draw(st.one_of(override_values, st.sampled_from(["0.5", "2", "[1, 2]", "9" * 400, "9" * 20 + "B",
                                                                 "{choice: [1]}", "prep", "[]", "{}"])))
        out.append(f"{path}={value}")
    return out


@st.composite
def mutated_texts(draw) -> str:
    text = QUICKSTART_TEXT
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 12))
        insert = draw(st.one_of(st.text(alphabet=":{}[],-&*!|>'\"#%@ \n\t\\x9é", max_size=6),
                                st.sampled_from(["\n  - ", ": ", "{", "}", "[", "]", "&a ", "*a", "!!str ", "\t",
                                                 "\x00", "\ufeff", "\u2028", "---\n", "...\n", "? "])))
        text = text[:pos] + insert + text[pos + cut:]
    return text


# ---------------------------------------------------------------- the property

def _has_line_break(value: Any, seen: set | None = None) -> bool:
    seen = set() if seen is None else seen
    if id(value) in seen:
        return False
    seen.add(id(value))
    if isinstance(value, str):
        return any(c in value for c in LINE_BREAKS)
    if isinstance(value, dict):
        return any(_has_line_break(k, seen) or _has_line_break(v, seen) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_line_break(v, seen) for v in value)
    return False


def _parse_quietly(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except Exception:
        return None


NODE = Node("node-1", cpu_total=8, cpu_free=8, memory_total=2**36, memory_free=2**36, gpu_free=[1.0, 1.0],
            custom_total={"a100": 1.0}, custom_free={"a100": 1.0})


def _schedule(spec: ExperimentSpec) -> None:
    """What the scheduler does with a stored job's resources: scheduler.policy.decide."""
    demands = [Demand(job_id=i, cpu=s.resources.cpu, gpu=s.resources.gpu, memory=s.resources.memory or 0,
                      custom=dict(s.resources.custom), priority=spec.priority, seq=i)
               for i, s in enumerate(spec.stages)]
    decide(demands, [NODE])


def _too_big_or_unsafe(text: str | None, doc: Any, overrides: list[str]) -> bool:
    """Inputs the fuzzer must not feed: sweeps whose expansion is huge (known bug
    test_huge_sweep_*: they hang instead of failing fast) and ``run`` targets whose
    top-level module exists outside ``jobs`` (labq imports them to check them)."""
    if doc is None and text is not None:
        doc = _parse_quietly(text)
    if not isinstance(doc, dict):
        return False
    doc = copy.deepcopy(doc)
    for item in overrides:
        try:
            apply_override(doc, item, "spec")
        except Exception:
            pass
    for container in _containers(doc):
        samples = container.get("samples")
        if isinstance(samples, (int, float)) and not isinstance(samples, bool) and abs(samples) > 1000:
            return True
        grid = container.get("grid")
        if isinstance(grid, dict):
            sizes = [len(v) for v in grid.values() if isinstance(v, list)]
            if math.prod(sizes) > 1000:
                return True
        run = container.get("run")
        if isinstance(run, str) and re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", run):
            top = run.partition(":")[0].split(".")[0]
            if top != "jobs":
                try:
                    if importlib.util.find_spec(top) is not None:
                        return True
                except Exception:
                    return True
    return False


def check_load(path: Path, overrides: list[str], text: str | None) -> str:
    """Load ``path`` and check the property; returns the outcome (for events)."""
    try:
        # load_spec takes a str or a Path; alternate (deterministically) between the two.
        spec, raw = load_spec(path if len(str(path)) % 2 else str(path), list(overrides))
    except SpecError as err:
        assert isinstance(err, UserError)
        assert err.source == str(path)
        assert err.problems, "a SpecError must carry at least one problem"
        lines = str(err).splitlines()
        # one line per problem, the first SpecError.SHOWN of them, then one that counts the rest
        shown = min(len(err.problems), SpecError.SHOWN) + (len(err.problems) > SpecError.SHOWN)
        assert len(lines) == shown, f"a problem spans several lines:\n{err}"
        for line in lines:
            assert line.startswith(f"{path}: "), f"problem line does not start with the spec path: {line!r}"
        return "SpecError"
    assert isinstance(spec, ExperimentSpec) and isinstance(raw, dict)
    try:
        drafts = plan_jobs(spec, str(path))
    except SpecError:
        return "planned: SpecError"
    assert drafts, "a valid spec plans at least one job"
    _schedule(spec)  # a spec that validates must not crash the scheduling policy
    return "loaded"


def _write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


# ---------------------------------------------------------------- fuzzers

@_fuzz(250)
@given(doc=st.one_of(values, structured_docs), extra=overrides, name=file_names)
def test_random_documents_load_or_raise_spec_error(tmp_path, doc, extra, name):
    text = _dump(doc)
    assume(not _too_big_or_unsafe(text, doc, extra))
    event(check_load(_write(tmp_path, name, text), extra, text))


@_fuzz(250)
@given(doc=mutated_specs(), extra=overrides, name=file_names)
def test_mutated_valid_specs_load_or_raise_spec_error(tmp_path, doc, extra, name):
    text = _dump(doc)
    assume(not _too_big_or_unsafe(text, doc, extra))
    event(check_load(_write(tmp_path, name, text), extra, text))


NUMERIC_FIELDS = ["priority", "timeout", "retries", "cpu", "gpu", "memory", "custom", "seed", "randint", "uniform",
                  "loguniform", "samples"]


@_fuzz(150)
@given(field=st.sampled_from(NUMERIC_FIELDS), value=numeric_values, other=numeric_values)
def test_numeric_fields_load_or_raise_spec_error(tmp_path, field, value, other):
    """Every numeric field of a command spec with extreme numbers and numeric strings."""
    doc = copy.deepcopy(COMMANDS)
    fit = doc["stages"][1]
    if field == "priority":
        doc["priority"] = value
    elif field in ("timeout", "retries"):
        fit[field] = value
    elif field == "custom":
        fit["resources"]["custom"] = {"a100": value}
    elif field in ("cpu", "gpu", "memory"):
        fit["resources"][field] = value
    elif field in ("seed", "samples"):
        fit["sweep"][field] = value
    else:
        fit["sweep"]["random"]["lr"] = {field: [value, other]}
    text = _dump(doc)
    assume(not _too_big_or_unsafe(text, doc, []))
    event(check_load(_write(tmp_path, "spec.yaml", text), [], text))


@_fuzz(200)
@given(data=st.data(), base=st.sampled_from(BASES))
def test_random_overrides_on_a_valid_spec(tmp_path, data, base):
    extra = data.draw(st.one_of(plausible_overrides(base), st.lists(
        st.builds(lambda k, v: f"{k}={v}", override_keys, override_values), min_size=1, max_size=4)))
    text = _dump(base)
    assume(not _too_big_or_unsafe(text, base, extra))
    event(check_load(_write(tmp_path, "spec.yaml", text), extra, text))


@_fuzz(200)
@given(text=st.one_of(mutated_texts(), st.text(alphabet=":{}[],-&*!|>'\"#%@ \n\tabexpimrntsg01.é~", max_size=200),
                      st.text(max_size=120)))
def test_yaml_ish_text_loads_or_raises_spec_error(tmp_path, text):
    assume(not _too_big_or_unsafe(text, None, []))
    event(check_load(_write(tmp_path, "spec.yaml", text), [], text))


@_fuzz(150)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: b"\xff\xfe" + b, st.binary(max_size=50)),
    st.sampled_from([QUICKSTART_TEXT.encode("utf-16"), QUICKSTART_TEXT.encode("utf-32"),
                     QUICKSTART_TEXT.encode("latin-1") + b"\xe9\xff", b"\x00" * 10, b"\x89PNG\r\n\x1a\n\x00\x00",
                     b"PK\x03\x04", "\ufeff".encode() + QUICKSTART_TEXT.encode(), b"experiment: x\x00\n"]),
    st.builds(lambda pos, byte: QUICKSTART_TEXT.encode()[:pos] + bytes([byte]) + QUICKSTART_TEXT.encode()[pos + 1:],
              st.integers(0, len(QUICKSTART_TEXT) - 1), st.integers(0, 255)),
))
def test_raw_bytes_load_or_raise_spec_error(tmp_path, data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    assume(not _too_big_or_unsafe(text, None, []))
    event(check_load(_write(tmp_path, "spec.yaml", data), [], text))


# ---------------------------------------------------------------- deterministic cases

@pytest.mark.parametrize("base", BASES, ids=["quickstart", "commands"])
def test_the_fuzzers_bases_are_valid(tmp_path, base):
    path = _write(tmp_path, "spec.yaml", _dump(base))
    assert check_load(path, [], _dump(base)) == "loaded"


def test_quickstart_text_is_valid(tmp_path):
    assert check_load(_write(tmp_path, "spec.yaml", QUICKSTART_TEXT), [], QUICKSTART_TEXT) == "loaded"


@pytest.mark.parametrize("content, fragment", [
    (b"\xff\xfe\x00bad", "cannot read: UnicodeDecodeError"),
    (QUICKSTART_TEXT.encode("utf-16"), "cannot read"),
    (b"experiment: x\x00\n", "invalid YAML"),
    (b"", "expected a mapping"),
    (b"- just\n- a list\n", "expected a mapping"),
    (b"experiment: !!python/object/apply:os.system [echo hi]\n", "invalid YAML"),
    (b"experiment: [unclosed\n", "invalid YAML"),
    (b"? [a, b]\n: c\n", "invalid YAML"),  # unhashable key
])
def test_unreadable_or_non_mapping_files(tmp_path, content, fragment):
    path = _write(tmp_path, "spec.yaml", content)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_file_and_directory(tmp_path):
    for path in (tmp_path / "missing.yaml", tmp_path):
        assert check_load(path, [], None) == "SpecError"


@pytest.mark.parametrize("body, expected", [
    # A stage whose params hold the stage itself, and a params map that holds itself:
    # they cannot be stored (JSON), so they are input errors, not crashes.
    ("experiment: x\nstages:\n  - &s {name: a, command: echo, params: {self: *s}}\n", "SpecError"),
    ("experiment: x\nstages:\n  - {name: a, command: echo, params: &p {x: *p}}\n", "SpecError"),
    # Aliases that would expand exponentially if copied.
    ("experiment: x\nstages:\n  - name: a\n    command: echo\n    params:\n"
     "      l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1]\n      l1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]\n"
     "      l2: &l2 [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]\n      l3: [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]\n",
     "loaded"),
])
def test_recursive_and_aliased_yaml_loads(tmp_path, body, expected):
    assert check_load(_write(tmp_path, "spec.yaml", body), [], body) == expected


@pytest.mark.parametrize("override", ["=", "=1", "novalue", "experiment.x=1", "stages..name=b", "stages.9.name=b",
                                      "stages.nope.cpu=1", "priority.x.y=1", "a=b=c", "stages=[]", "stages={}"])
def test_odd_overrides_are_spec_errors(tmp_path, override):
    path = _write(tmp_path, "spec.yaml", _dump(COMMANDS))
    with pytest.raises(SpecError) as info:
        load_spec(path, [override])
    assert all(line.startswith(f"{path}: ") for line in str(info.value).splitlines())


@pytest.mark.parametrize("stage_extra, fragment", [
    ({"resources": {"gpu": 1.5}}, "whole number of GPUs"),
    ({"resources": {"gpu": math.nan}}, "finite number"),
    ({"resources": {"cpu": -1}}, "greater than or equal to 0"),
    ({"resources": {"memory": 1e400}}, "such as 512MiB"),
    ({"resources": {"memory": "-1GiB"}}, "such as 512MiB"),
    ({"timeout": "1e400"}, "expected a duration"),
    ({"timeout": 0}, "positive duration"),
    ({"sweep": {"random": {"lr": {"uniform": [math.nan, 1]}}, "samples": 2}}, "finite number"),
    ({"sweep": {"random": {"lr": {"loguniform": [0, 1]}}, "samples": 2}}, "positive bounds"),
    ({"sweep": {"grid": {"n": []}}}, "non-empty list"),
    ({"command": "echo {0} {} {a.b}"}, "placeholder"),
    ({"command": "echo {"}, "bad placeholder"),
    ({"after": ["a"]}, "cannot depend on itself"),
])
def test_interesting_values_are_reported(tmp_path, stage_extra, fragment):
    doc = {"experiment": "x", "stages": [{"name": "a", "command": "echo", **stage_extra}]}
    path = _write(tmp_path, "spec.yaml", _dump(doc))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert fragment in str(info.value)
    assert all(line.startswith(f"{path}: ") for line in str(info.value).splitlines())


# ---------------------------------------------------------------- known bugs (xfail, strict)

HUGE = int("9" * 400)


@pytest.mark.parametrize("stage_extra", [
    {"timeout": HUGE},
    {"resources": {"memory": HUGE}},
    {"resources": {"memory": "9" * 400 + "B"}},
], ids=["timeout-int", "memory-int", "memory-str"])
def test_huge_numbers_are_spec_errors(tmp_path, stage_extra):
    doc = {"experiment": "x", "stages": [{"name": "a", "command": "echo", **stage_extra}]}
    with pytest.raises(SpecError):
        load_spec(_write(tmp_path, "spec.yaml", _dump(doc)))


def test_set_with_unicode_digit_index(tmp_path):
    path = _write(tmp_path, "spec.yaml", _dump(COMMANDS))
    with pytest.raises(SpecError):
        load_spec(path, ["stages.².name=b"])


_NL_CASES = {
    "unknown-top-key": ({"a\nb": 1}, []),
    "unknown-stage-key": ({"stages": [{"name": "a", "command": "echo", "x\ny": 1}]}, []),
    "bad-stage-name": ({"stages": [{"name": "a\nb", "command": "echo"}]}, []),
    "placeholder": ({"stages": [{"name": "a", "command": "echo {a\nb}"}]}, []),
    "param-names-listed": ({"stages": [{"name": "a", "command": "echo {z}", "params": {"p\nq": 1}}]}, []),
    "custom-resource-name": ({"stages": [{"name": "a", "command": "echo", "resources": {"custom": {"g\nh": -1}}}]}, []),
    "grid-param-name": ({"stages": [{"name": "a", "command": "echo", "sweep": {"grid": {"g\nh": []}}}]}, []),
    "unicode-line-separator": ({"stages": [{"name": "a", "command": "echo", "x\u2028y": 1}]}, []),
    "set-without-equals": ({}, ["a\nb"]),
    "set-unknown-stage": ({}, ["stages.x\ny.name=1"]),
    "job-check-params": ({"stages": [{"name": "a", "run": "jobs.evaluate:model", "params": {"u\nv": 1}}]}, []),
}


@pytest.mark.parametrize("case", list(_NL_CASES))
def test_problem_is_one_line_even_with_line_breaks_in_user_text(tmp_path, case):
    patch, extra = _NL_CASES[case]
    doc = {"experiment": "x", "stages": [{"name": "a", "command": "echo"}], **patch}
    path = _write(tmp_path, "spec.yaml", _dump(doc))
    with pytest.raises(SpecError) as info:
        load_spec(path, extra)
    err = info.value
    assert len(str(err).splitlines()) == len(err.problems)
    assert all(line.startswith(f"{path}: ") for line in str(err).splitlines())


@pytest.mark.parametrize("resources", [{"cpu": math.inf}, {"cpu": 1e305}, {"custom": {"a100": math.nan}},
                                       {"custom": {"a100": math.inf}}, {"custom": {"a100": 1e305}}],
                         ids=["cpu-inf", "cpu-1e305", "custom-nan", "custom-inf", "custom-1e305"])
def test_resources_the_policy_cannot_handle_are_rejected(tmp_path, resources):
    doc = {"experiment": "x", "stages": [{"name": "a", "command": "echo", "resources": resources}]}
    path = _write(tmp_path, "spec.yaml", _dump(doc))
    try:
        spec, _ = load_spec(path)
    except SpecError:
        return
    _schedule(spec)  # raises today


@pytest.mark.parametrize("dist", [{"uniform": [0, math.inf]}, {"uniform": [-math.inf, math.inf]},
                                  {"loguniform": [1, math.inf]}], ids=["uniform", "uniform-both", "loguniform"])
def test_infinite_distribution_bounds_are_rejected(tmp_path, dist):
    doc = {"experiment": "x", "stages": [{"name": "a", "command": "echo {p}",
                                          "sweep": {"random": {"p": dist}, "samples": 2}}]}
    with pytest.raises(SpecError):
        load_spec(_write(tmp_path, "spec.yaml", _dump(doc)))


def test_user_package_that_raises_on_import_is_a_spec_error(tmp_path):
    pkg = tmp_path / "zz_fuzz_boom_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('boom at import')\n")
    doc = {"experiment": "x", "stages": [{"name": "a", "run": "zz_fuzz_boom_pkg.mod:main"}]}
    with pytest.raises(SpecError):
        load_spec(_write(tmp_path, "spec.yaml", _dump(doc)))


def test_user_module_exiting_at_import_is_a_spec_error(tmp_path):
    (tmp_path / "zz_fuzz_exit_mod.py").write_text(
        "import sys\n\ndef check_params(params):\n    return []\n\ndef main(ctx):\n    return {}\n\nsys.exit(3)\n")
    doc = {"experiment": "x", "stages": [{"name": "a", "run": "zz_fuzz_exit_mod:main"}]}
    try:
        load_spec(_write(tmp_path, "spec.yaml", _dump(doc)))
    except SpecError:
        return
    except SystemExit:
        pytest.fail("SystemExit escaped load_spec")


class _TookTooLong(BaseException):  # BaseException: not swallowed by `except Exception`
    pass


def _within(seconds: float, fn):
    def on_alarm(*_):
        raise _TookTooLong()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    except _TookTooLong:
        pytest.fail(f"did not finish within {seconds} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_huge_sweep_fails_fast_in_plan_jobs(tmp_path):
    # samples above the job limit are rejected by the schema; a huge grid product is
    # caught by plan_jobs before a single point is built
    doc = {"experiment": "x", "stages": [{"name": "a", "command": "echo {p} {q} {r}",
                                          "sweep": {"grid": {"p": list(range(1000)), "q": list(range(1000)),
                                                             "r": list(range(1000))}}}]}
    spec, _ = load_spec(_write(tmp_path, "spec.yaml", _dump(doc)))
    with pytest.raises(SpecError, match="more than"):
        _within(1.0, lambda: plan_jobs(spec))


def test_huge_sweep_fails_fast_in_load_spec(tmp_path):
    doc = {"experiment": "x", "stages": [{"name": "a", "run": "jobs.train:sklearn",
                                          "params": {"estimator": "sklearn.linear_model.Ridge"},
                                          "sweep": {"random": {"alpha": {"uniform": [0, 1]}}, "samples": 10**12}}]}
    path = _write(tmp_path, "spec.yaml", _dump(doc))
    try:
        _within(2.0, lambda: load_spec(path))
    except SpecError:
        pass


@given(depth=st.integers(min_value=1, max_value=12), width=st.integers(min_value=2, max_value=12),
       where=st.sampled_from(["params", "description", "sweep"]))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_alias_bombs_load_or_raise_spec_error_without_expanding(tmp_path, depth, width, where):
    """Aliases of aliases, up to 12**12 values once expanded: refused (or, when
    small, loaded) in well under a second, never expanded in memory."""
    import time as _time

    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    use = {"params": f"  - {{name: s, command: 'echo {{p}}', params: {{p: *a{depth - 1}}}}}",
           "description": "  - {name: s, command: 'true'}",
           "sweep": f"  - {{name: s, command: 'echo {{p}}', sweep: {{grid: {{p: *a{depth - 1}}}}}}}"}[where]
    top = f"description: *a{depth - 1}\n" if where == "description" else ""
    path = tmp_path / "bomb.yaml"
    path.write_text("experiment: bomb\n" + top + "anchors:\n" + "".join(f"  {line}\n" for line in lines)
                    + "stages:\n" + use + "\n")
    t0 = _time.monotonic()
    try:
        load_spec(path, [])
    except SpecError as err:
        assert len(str(err).splitlines()) <= SpecError.SHOWN + 1
    assert _time.monotonic() - t0 < 10
