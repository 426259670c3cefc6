"""Experiment spec loading and validation: YAML in, ExperimentSpec or SpecError out.

Every rejected spec must raise a SpecError (a UserError) whose text names the
file, the key path and what was expected, one line per problem.
"""

from __future__ import annotations

import re
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from scheduler.errors import SpecError, UserError
from scheduler.spec import ExperimentSpec, load_spec

REPO = Path(__file__).resolve().parents[2]

QUICKSTART = """
experiment: quickstart
metric: accuracy
stages:
  - name: prep
    run: jobs.prep:tabular
    params: {dataset: iris, impute: median, scale: standard, test_size: 0.3, seed: 0}
    resources: {cpu: 1}

  - name: train
    after: [prep]
    run: jobs.train:sklearn
    params: {estimator: sklearn.ensemble.RandomForestClassifier}
    sweep:
      grid: {n_estimators: [20, 100], max_depth: [2, 4, null]}
    resources: {cpu: 0.5, memory: 1GiB}
    retries: 1
    timeout: 10m
"""


# ------------------------------------------------------------------ helpers

def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, overrides: list[str] = ()) -> ExperimentSpec:
    spec, _raw = load_spec(write(tmp_path, text), list(overrides))
    return spec


def reject(tmp_path: Path, text: str, overrides: list[str] = ()) -> SpecError:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path, list(overrides))
    err = info.value
    assert isinstance(err, UserError)
    assert err.source == str(path)
    assert err.problems, "a SpecError must carry at least one problem"
    # Every line of the message names the file.
    for line in str(err).splitlines():
        assert line.startswith(f"{path}: "), line
    return err


def assert_problem(err: SpecError, key: str, *fragments: str) -> None:
    """One line of str(err) is ``<file>: <key>: <message>`` and the message contains
    every fragment (what was expected, the bad value...)."""
    prefix = f"{err.source}: {key}: " if key else f"{err.source}: "
    messages = [line[len(prefix):] for line in str(err).splitlines() if line.startswith(prefix)]
    assert any(all(f in m for f in fragments) for m in messages), (
        f"no problem at key {key!r} mentioning {fragments!r} in:\n{err}")


def one_stage(stage_body: str, top: str = "") -> str:
    """A spec with a single command stage named ``train``; ``stage_body`` is extra
    flow-mapping entries of that stage."""
    return (f"experiment: exp\n{top}stages:\n"
            f"  - {{name: train, command: 'python t.py', {stage_body}}}\n")


def resources(body: str) -> str:
    return one_stage(f"resources: {{{body}}}")


def run_stage(run: str) -> str:
    return f"experiment: exp\nstages:\n  - {{name: train, run: '{run}'}}\n"


@pytest.fixture
def user_module(tmp_path):
    """Write a uniquely named module beside the spec; forget it afterwards so no
    test sees another's module through sys.modules."""
    names: list[str] = []

    def make(source: str) -> str:
        name = f"labq_usermod_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


# ------------------------------------------------------------------ a valid spec

def test_quickstart_like_spec_loads(tmp_path):
    spec, raw = load_spec(write(tmp_path, QUICKSTART), [])
    assert isinstance(spec, ExperimentSpec)
    assert spec.experiment == "quickstart"
    assert spec.metric == "accuracy"
    assert spec.queue == "default" and spec.priority == 0 and spec.mode is None
    assert [s.name for s in spec.stages] == ["prep", "train"]
    train = spec.stage("train")
    assert train.run == "jobs.train:sklearn"
    assert train.after == ["prep"]
    assert train.sweep.grid == {"n_estimators": [20, 100], "max_depth": [2, 4, None]}
    assert train.sweep.random is None
    assert train.resources.cpu == 0.5
    assert train.resources.memory == 1073741824
    assert train.timeout == 600.0
    assert train.retries == 1
    # The raw document comes back as parsed, for storing verbatim.
    assert raw["experiment"] == "quickstart"
    assert raw["stages"][1]["resources"] == {"cpu": 0.5, "memory": "1GiB"}


def test_bundled_quickstart_example_loads():
    path = REPO / "examples" / "quickstart.yaml"
    if not path.exists():
        pytest.skip("examples/quickstart.yaml not present")
    spec, _ = load_spec(path, [])
    assert [s.name for s in spec.stage_order()][0] == "prep"


def test_stage_defaults(tmp_path):
    stage = load(tmp_path, one_stage("")).stage("train")
    assert stage.resources.cpu == 1.0
    assert stage.resources.gpu == 0.0
    assert stage.resources.memory is None
    assert stage.resources.custom == {}
    assert stage.timeout is None
    assert stage.retries == 0
    assert stage.after == [] and stage.params == {} and stage.sweep is None


def test_stage_order_puts_prep_first_even_when_listed_last(tmp_path):
    text = """
    experiment: exp
    stages:
      - {name: train, after: [prep], command: 'python train.py'}
      - {name: prep, command: 'python prep.py'}
    """
    spec = load(tmp_path, text)
    assert [s.name for s in spec.stages] == ["train", "prep"]
    assert [s.name for s in spec.stage_order()] == ["prep", "train"]


def test_stage_order_diamond(tmp_path):
    text = """
    experiment: exp
    stages:
      - {name: report, after: [left, right], command: r}
      - {name: left, after: [prep], command: l}
      - {name: right, after: [prep], command: r}
      - {name: prep, command: p}
    """
    order = [s.name for s in load(tmp_path, text).stage_order()]
    assert sorted(order) == ["left", "prep", "report", "right"]
    assert order.index("prep") < order.index("left") < order.index("report")
    assert order.index("prep") < order.index("right") < order.index("report")


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("45", 45.0), ("1d", 86400.0)])
def test_timeout_units(tmp_path, text, seconds):
    assert load(tmp_path, one_stage(f"timeout: {text}")).stage("train").timeout == seconds


@pytest.mark.parametrize(("text", "size"), [("1GiB", 1073741824), ("256MiB", 256 * 1024**2), ("2G", 2 * 10**9), ("4096", 4096)])
def test_memory_units(tmp_path, text, size):
    assert load(tmp_path, resources(f"memory: {text}")).stage("train").resources.memory == size


@pytest.mark.parametrize("gpu", [0, 0.25, 0.5, 1, 2, 4.0])
def test_gpu_shares_and_whole_gpus_accepted(tmp_path, gpu):
    assert load(tmp_path, resources(f"gpu: {gpu}")).stage("train").resources.gpu == gpu


def test_custom_resources_accepted(tmp_path):
    spec = load(tmp_path, resources("custom: {license: 1, accelerator_slot: 0.5}"))
    assert spec.stage("train").resources.custom == {"license": 1.0, "accelerator_slot": 0.5}


def test_top_level_fields(tmp_path):
    spec = load(tmp_path, one_stage("", top="queue: gpu-queue\npriority: 7\nmetric: loss\nmode: min\ndescription: hi\n"))
    assert (spec.queue, spec.priority, spec.metric, spec.mode, spec.description) == ("gpu-queue", 7, "loss", "min", "hi")


# ------------------------------------------------------------------ unknown keys, wrong types, missing keys

def test_unknown_top_level_key(tmp_path):
    err = reject(tmp_path, one_stage("", top="experimnet_typo: 1\n"))
    assert_problem(err, "experimnet_typo", "unknown key", "expected one of:", "experiment", "stages", "priority")


def test_unknown_key_inside_stage(tmp_path):
    err = reject(tmp_path, one_stage("gpus: 1"))
    assert_problem(err, "stages[train].gpus", "unknown key", "expected one of:", "run", "command", "resources", "timeout")


def test_unknown_key_inside_resources_lists_valid_keys(tmp_path):
    err = reject(tmp_path, resources("cpus: 2"))
    assert_problem(err, "stages[train].resources.cpus", "unknown key; expected one of: cpu, gpu, memory, custom")


def test_unknown_key_inside_sweep(tmp_path):
    err = reject(tmp_path, one_stage("sweep: {grid: {a: [1]}, seeds: 3}"))
    assert_problem(err, "stages[train].sweep.seeds", "unknown key", "grid, random, samples, seed")


def test_unknown_key_inside_distribution(tmp_path):
    err = reject(tmp_path, one_stage("sweep: {random: {lr: {choice: [1], weights: [1]}}, samples: 2}"))
    assert_problem(err, "stages[train].sweep.random.lr.weights", "unknown key", "choice, uniform, loguniform, randint")


@pytest.mark.parametrize("param", ["sweep", "resources"])
def test_unknown_key_inside_distribution_of_param_named_like_a_section(tmp_path, param):
    err = reject(tmp_path, one_stage(f"sweep: {{random: {{{param}: {{choice: [1], weights: [1]}}}}, samples: 2}}"))
    assert_problem(err, f"stages[train].sweep.random.{param}.weights", "unknown key",
                   "choice, uniform, loguniform, randint")


@pytest.mark.parametrize(("body", "key"), [
    ("sweep: {grid: {int: 5}}", "stages[train].sweep.grid.int"),
    ("resources: {custom: {float: abc}}", "stages[train].resources.custom.float"),
])
def test_user_key_named_like_a_type_is_kept_in_key_path(tmp_path, body, key):
    err = reject(tmp_path, one_stage(body))
    assert_problem(err, key, "valid")


def test_priority_wrong_type(tmp_path):
    err = reject(tmp_path, one_stage("", top="priority: high\n"))
    assert_problem(err, "priority", "valid integer", "'high'")


def test_cpu_wrong_type(tmp_path):
    err = reject(tmp_path, resources("cpu: lots"))
    assert_problem(err, "stages[train].resources.cpu", "valid number", "'lots'")


def test_retries_negative(tmp_path):
    err = reject(tmp_path, one_stage("retries: -1"))
    assert_problem(err, "stages[train].retries", "greater than or equal to 0", "-1")


def test_mode_must_be_max_or_min(tmp_path):
    err = reject(tmp_path, one_stage("", top="mode: best\n"))
    assert_problem(err, "mode", "'max' or 'min'", "'best'")


def test_bad_stage_name(tmp_path):
    err = reject(tmp_path, "experiment: exp\nstages: [{name: 'bad name!', command: x}]\n")
    assert_problem(err, "stages[bad name!].name", "expected a name of letters, digits")


def test_bad_experiment_name(tmp_path):
    err = reject(tmp_path, "experiment: 'has space'\nstages: [{name: a, command: x}]\n")
    assert_problem(err, "experiment", "expected a name of letters, digits", "'has space'")


def test_stage_that_is_not_a_mapping(tmp_path):
    err = reject(tmp_path, "experiment: exp\nstages: [just-a-string]\n")
    assert_problem(err, "stages[0]", "valid dictionary", "'just-a-string'")


def test_stage_without_name(tmp_path):
    err = reject(tmp_path, "experiment: exp\nstages: [{command: x}]\n")
    assert_problem(err, "stages[0].name", "required key is missing")


def test_missing_experiment(tmp_path):
    err = reject(tmp_path, "stages: [{name: a, command: x}]\n")
    assert_problem(err, "experiment", "required key is missing")


def test_missing_stages(tmp_path):
    err = reject(tmp_path, "experiment: exp\n")
    assert_problem(err, "stages", "required key is missing")


def test_empty_stages_list(tmp_path):
    err = reject(tmp_path, "experiment: exp\nstages: []\n")
    assert_problem(err, "stages", "at least 1 item")


# ------------------------------------------------------------------ resources

def test_fractional_gpu_above_one_rejected(tmp_path):
    err = reject(tmp_path, resources("gpu: 1.5"))
    assert_problem(err, "stages[train].resources", "gpu:", "share of one GPU", "whole number of GPUs", "1.5")


@pytest.mark.parametrize("key", ["cpu", "gpu"])
def test_negative_cpu_gpu_rejected(tmp_path, key):
    err = reject(tmp_path, resources(f"{key}: -1"))
    assert_problem(err, f"stages[train].resources.{key}", "greater than or equal to 0", "-1")


def test_negative_custom_resource_rejected(tmp_path):
    err = reject(tmp_path, resources("custom: {license: -2}"))
    assert_problem(err, "stages[train].resources", "custom.license", "non-negative", "-2")


def test_bad_memory_unit_rejected(tmp_path):
    err = reject(tmp_path, resources("memory: 12 parsecs"))
    assert_problem(err, "stages[train].resources.memory", "expected a size such as 512MiB or 2GiB", "'12 parsecs'")


def test_negative_memory_rejected(tmp_path):
    err = reject(tmp_path, resources("memory: -5"))
    assert_problem(err, "stages[train].resources.memory", "non-negative size")


def test_bad_timeout_rejected(tmp_path):
    err = reject(tmp_path, one_stage("timeout: soon"))
    assert_problem(err, "stages[train].timeout", "expected a duration such as 90s, 10m or 2h", "'soon'")


def test_zero_timeout_rejected(tmp_path):
    err = reject(tmp_path, one_stage("timeout: 0"))
    assert_problem(err, "stages[train].timeout", "positive duration")


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_non_finite_memory_rejected(tmp_path, value):
    err = reject(tmp_path, resources(f"memory: {value}"))
    assert_problem(err, "stages[train].resources.memory", "expected a non-negative size such as 512MiB or 2GiB")


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_non_finite_timeout_rejected(tmp_path, value):
    err = reject(tmp_path, one_stage(f"timeout: {value}"))
    assert_problem(err, "stages[train].timeout", "expected a positive duration")


# ------------------------------------------------------------------ run / command

def test_neither_run_nor_command(tmp_path):
    err = reject(tmp_path, "experiment: exp\nstages: [{name: train}]\n")
    assert_problem(err, "stages[train]", "expected exactly one of run (module:function) or command")


def test_both_run_and_command(tmp_path):
    err = reject(tmp_path, "experiment: exp\nstages: [{name: train, run: 'jobs.prep:tabular', command: 'python x.py'}]\n")
    assert_problem(err, "stages[train]", "expected exactly one of run (module:function) or command")


@pytest.mark.parametrize("run", ["nocolon", "a:b:c", "mod:", ":func", "1mod:f", "mod:1f"])
def test_run_bad_syntax(tmp_path, run):
    err = reject(tmp_path, run_stage(run))
    assert_problem(err, "stages[train].run", "expected module:function (e.g. jobs.train:sklearn)", repr(run))


@pytest.mark.parametrize("run", ["labq_no_such_module_xyz:main", "labq_no_such_pkg_xyz.sub:main"])
def test_run_module_not_found(tmp_path, run):
    err = reject(tmp_path, run_stage(run))
    module = run.partition(":")[0]
    assert_problem(err, "stages[train].run", f"module {module!r} not found", str(tmp_path))


def test_run_existing_module_without_function(tmp_path):
    err = reject(tmp_path, run_stage("jobs.prep:no_such_function"))
    assert_problem(err, "stages[train].run", "module 'jobs.prep' has no function 'no_such_function'")


def test_user_module_beside_spec_is_found_without_importing_it(tmp_path, user_module):
    marker = tmp_path / "imported.marker"
    name = user_module(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")
        raise RuntimeError("this module must not be imported by validation")

        def main(ctx):
            return {{}}
    """)
    spec = load(tmp_path, run_stage(f"{name}:main"))
    assert spec.stage("train").run == f"{name}:main"
    assert not marker.exists(), "validation imported the user's module"
    assert name not in sys.modules


def test_user_module_named_mytrain(tmp_path):
    (tmp_path / "mytrain.py").write_text("raise RuntimeError('not at validation')\n\ndef main(ctx):\n    pass\n")
    already = "mytrain" in sys.modules
    spec = load(tmp_path, run_stage("mytrain:main"))
    assert spec.stage("train").run == "mytrain:main"
    assert ("mytrain" in sys.modules) == already


def test_user_module_without_that_function(tmp_path, user_module):
    name = user_module("def main(ctx):\n    pass\n")
    err = reject(tmp_path, run_stage(f"{name}:train"))
    assert_problem(err, "stages[train].run", f"module {name!r} has no function 'train'")


@pytest.mark.parametrize("source", [
    "main = lambda ctx: None\n",
    "from os.path import join as main\n",
    "class main:\n    def __init__(self, ctx):\n        pass\n",
    "async def main(ctx):\n    pass\n",
])
def test_user_module_other_top_level_definitions(tmp_path, user_module, source):
    name = user_module(source)
    assert load(tmp_path, run_stage(f"{name}:main")).stage("train").run == f"{name}:main"


def test_user_module_with_syntax_error(tmp_path, user_module):
    name = user_module("def main(ctx) pass\n")
    err = reject(tmp_path, run_stage(f"{name}:main"))
    assert_problem(err, "stages[train].run", f"module {name!r} has a syntax error at line 1")


def test_star_import_module_is_imported_to_check(tmp_path, user_module):
    name = user_module("from os.path import *\n")
    assert load(tmp_path, run_stage(f"{name}:join")) is not None
    err = reject(tmp_path, run_stage(f"{name}:no_such_name"))
    assert_problem(err, "stages[train].run", "has no callable 'no_such_name'")


def test_spec_directory_is_removed_from_sys_path(tmp_path, user_module):
    before = list(sys.path)
    name = user_module("def main(ctx):\n    pass\n")
    load(tmp_path, run_stage(f"{name}:main"))
    assert sys.path == before


@pytest.mark.parametrize("source", [
    "try:\n    from labq_no_such_fast_impl import main\nexcept ImportError:\n    def main(ctx):\n        pass\n",
    "try:\n    import labq_no_such_dep\nexcept ImportError:\n    pass\nelse:\n    pass\nfinally:\n    def main(ctx):\n        pass\n",
    "import sys\nif sys.version_info >= (3,):\n    def main(ctx):\n        pass\n",
    "import sys\nif sys.version_info < (3,):\n    pass\nelse:\n    def main(ctx):\n        pass\n",
], ids=["try-except-fallback", "try-finally", "if-block", "else-block"])
def test_user_module_function_defined_in_block(tmp_path, user_module, source):
    # Optional-import fallbacks: found from the AST, still without importing.
    name = user_module("raise RuntimeError('not at validation')\n" + source)
    assert load(tmp_path, run_stage(f"{name}:main")).stage("train").run == f"{name}:main"
    assert name not in sys.modules


def test_function_nested_in_another_function_is_not_top_level(tmp_path, user_module):
    name = user_module("def outer():\n    def main(ctx):\n        pass\n    return main\n")
    err = reject(tmp_path, run_stage(f"{name}:main"))
    assert_problem(err, "stages[train].run", f"module {name!r} has no function 'main'")


@pytest.mark.parametrize("source", [
    "from typing import Callable\nmain: Callable = print\n",
    "main, other = print, print\n",
], ids=["annotated", "tuple-unpacking"])
def test_user_module_function_bound_by_other_assignments(tmp_path, user_module, source):
    name = user_module(source)
    assert load(tmp_path, run_stage(f"{name}:main")).stage("train").run == f"{name}:main"


def test_check_params_module_raising_at_import_is_a_spec_error(tmp_path, user_module):
    name = user_module("raise RuntimeError('boom')\n\ndef main(ctx):\n    pass\n\ndef check_params(params):\n    return []\n")
    err = reject(tmp_path, run_stage(f"{name}:main"))
    assert_problem(err, "stages[train].params", f"importing {name!r} to check params failed: RuntimeError: boom")


def test_check_params_raising_is_a_spec_error(tmp_path, user_module):
    name = user_module("def main(ctx):\n    pass\n\ndef check_params(params):\n    raise KeyError('lr')\n")
    err = reject(tmp_path, run_stage(f"{name}:main"))
    assert_problem(err, "stages[train].params", f"{name}.check_params raised KeyError", "'lr'")


def test_user_check_params_hook_is_called_with_every_point(tmp_path, user_module):
    name = user_module("""
        def main(ctx):
            pass

        def check_params(params):
            return [] if params["lr"] < 1 else [f"lr: expected < 1, got {params['lr']}"]
    """)
    text = (f"experiment: exp\nstages:\n  - {{name: train, run: '{name}:main', params: {{lr: 0.1}}, "
            f"sweep: {{grid: {{lr: [0.1, 0.5, 2, 3]}}}}}}\n")
    err = reject(tmp_path, text)
    assert_problem(err, "stages[train].params", "lr: expected < 1, got 2")
    assert_problem(err, "stages[train].params", "lr: expected < 1, got 3")
    assert len(err.problems) == 2


# ------------------------------------------------------------------ check_params of the bundled jobs

def test_prep_unknown_dataset_rejected_at_load(tmp_path):
    err = reject(tmp_path, QUICKSTART.replace("dataset: iris", "dataset: nope"))
    assert_problem(err, "stages[prep].params", "dataset: unknown value 'nope'", "choose one of", "iris")


def test_prep_unknown_dataset_inside_sweep_rejected(tmp_path):
    text = QUICKSTART.replace(
        "resources: {cpu: 1}", "resources: {cpu: 1}\n    sweep: {grid: {dataset: [iris, wine, nope]}}")
    err = reject(tmp_path, text)
    assert_problem(err, "stages[prep].params", "dataset: unknown value 'nope'")
    assert len(err.problems) == 1


def test_train_without_estimator_rejected(tmp_path):
    err = reject(tmp_path, QUICKSTART.replace("params: {estimator: sklearn.ensemble.RandomForestClassifier}", "params: {}"))
    assert_problem(err, "stages[train].params", "estimator: required")


# ------------------------------------------------------------------ the stage graph

def test_after_unknown_stage(tmp_path):
    text = """
    experiment: exp
    stages:
      - {name: prep, command: p}
      - {name: train, after: [perp], command: t}
    """
    err = reject(tmp_path, text)
    assert_problem(err, "stages[train].after", "no stage named 'perp'", "stages: prep, train")


def test_stage_depending_on_itself(tmp_path):
    err = reject(tmp_path, "experiment: exp\nstages: [{name: train, after: [train], command: t}]\n")
    assert_problem(err, "stages[train].after", "cannot depend on itself")


def test_two_cycle(tmp_path):
    text = """
    experiment: exp
    stages:
      - {name: a, after: [b], command: x}
      - {name: b, after: [a], command: x}
    """
    err = reject(tmp_path, text)
    assert_problem(err, "stages[a].after", "dependency cycle: a -> b -> a")


def test_three_cycle(tmp_path):
    text = """
    experiment: exp
    stages:
      - {name: a, after: [c], command: x}
      - {name: b, after: [a], command: x}
      - {name: c, after: [b], command: x}
    """
    err = reject(tmp_path, text)
    assert len(err.problems) == 1
    key, message = err.problems[0]
    assert key.endswith(".after")
    assert "dependency cycle" in message
    assert re.search(r"dependency cycle: (\w) -> \w -> \w -> \1$", message), message
    assert {"a", "b", "c"} <= set(re.findall(r"\w", message.split(":", 1)[1]))


def test_cycle_not_through_first_stage(tmp_path):
    text = """
    experiment: exp
    stages:
      - {name: ok, command: x}
      - {name: a, after: [ok, b], command: x}
      - {name: b, after: [a], command: x}
    """
    err = reject(tmp_path, text)
    assert_problem(err, "stages[a].after", "dependency cycle: a -> b -> a")


def test_duplicate_stage_names(tmp_path):
    text = """
    experiment: exp
    stages:
      - {name: train, command: x}
      - {name: train, command: y}
    """
    err = reject(tmp_path, text)
    assert_problem(err, "stages[train].name", "stage names must be unique")


# ------------------------------------------------------------------ command placeholders

def test_placeholder_from_random_sweep_accepted(tmp_path):
    text = ("experiment: exp\nstages:\n  - {name: train, command: 'python t.py --lr {lr}', "
            "sweep: {random: {lr: {loguniform: [0.0001, 0.1]}}, samples: 4}}\n")
    assert load(tmp_path, text).stage("train").command == "python t.py --lr {lr}"


def test_placeholders_from_params_and_grid_with_format_specs(tmp_path):
    text = ("experiment: exp\nstages:\n  - {name: train, command: 'python t.py {{literal}} --lr {lr:.3g} --e {epochs} "
            "--o {opts[0]} --c {cfg.x}', params: {epochs: 3, opts: [1], cfg: {x: 1}}, sweep: {grid: {lr: [0.1, 0.2]}}}\n")
    load(tmp_path, text)


def test_unknown_placeholder_rejected(tmp_path):
    text = ("experiment: exp\nstages:\n  - {name: train, command: 'python t.py --lr {lr} --x {missing}', "
            "params: {epochs: 3}, sweep: {random: {lr: {uniform: [0, 1]}}, samples: 2}}\n")
    err = reject(tmp_path, text)
    assert_problem(err, "stages[train].command", "placeholder {missing} has no param", "params: epochs, lr")
    assert len(err.problems) == 1


def test_unknown_placeholder_with_no_params(tmp_path):
    err = reject(tmp_path, one_stage("").replace("'python t.py'", "'python t.py {missing}'"))
    assert_problem(err, "stages[train].command", "placeholder {missing} has no param; params: none")


@pytest.mark.parametrize("placeholder", ["{}", "{0}"])
def test_positional_placeholder_rejected(tmp_path, placeholder):
    err = reject(tmp_path, one_stage("").replace("'python t.py'", f"'python t.py {placeholder}'"))
    assert_problem(err, "stages[train].command", f"placeholder {placeholder}: expected {{param_name}}")


def test_unbalanced_placeholder_rejected(tmp_path):
    err = reject(tmp_path, one_stage("params: {lr: 1}").replace("'python t.py'", "'python t.py {lr'"))
    assert_problem(err, "stages[train].command", "bad placeholder")


# ------------------------------------------------------------------ sweeps

def sweep_stage(sweep: str) -> str:
    return one_stage(f"sweep: {sweep}")


def test_valid_sweep_grid_and_random(tmp_path):
    sweep = load(tmp_path, sweep_stage(
        "{grid: {a: [1, 2]}, random: {lr: {loguniform: [0.001, 0.1]}, n: {randint: [1, 5]}, "
        "act: {choice: [relu, tanh]}, d: {uniform: [0, 0.5]}}, samples: 3, seed: 7}")).stage("train").sweep
    assert sweep.samples == 3 and sweep.seed == 7
    assert sweep.random["lr"].loguniform == (0.001, 0.1)
    assert sweep.random["n"].randint == (1, 5)
    assert sweep.random["act"].choice == ["relu", "tanh"]


def test_random_without_samples(tmp_path):
    err = reject(tmp_path, sweep_stage("{random: {lr: {uniform: [0, 1]}}}"))
    assert_problem(err, "stages[train].sweep", "samples: required with random")


def test_samples_without_random(tmp_path):
    err = reject(tmp_path, sweep_stage("{grid: {a: [1, 2]}, samples: 3}"))
    assert_problem(err, "stages[train].sweep", "samples: only meaningful with random")


def test_samples_must_be_positive(tmp_path):
    err = reject(tmp_path, sweep_stage("{random: {lr: {uniform: [0, 1]}}, samples: 0}"))
    assert_problem(err, "stages[train].sweep.samples", "greater than or equal to 1")


def test_sweep_with_neither_grid_nor_random(tmp_path):
    err = reject(tmp_path, sweep_stage("{seed: 3}"))
    assert_problem(err, "stages[train].sweep", "expected grid and/or random")


def test_empty_grid_list(tmp_path):
    err = reject(tmp_path, sweep_stage("{grid: {lr: []}}"))
    assert_problem(err, "stages[train].sweep", "grid.lr: expected a non-empty list of values")


def test_grid_value_not_a_list(tmp_path):
    err = reject(tmp_path, sweep_stage("{grid: {lr: 0.1}}"))
    assert_problem(err, "stages[train].sweep.grid.lr", "valid list", "0.1")


@pytest.mark.parametrize("bounds", ["[0, 1]", "[-1, 1]"])
def test_loguniform_non_positive_bound(tmp_path, bounds):
    err = reject(tmp_path, sweep_stage(f"{{random: {{lr: {{loguniform: {bounds}}}}}, samples: 2}}"))
    assert_problem(err, "stages[train].sweep.random.lr", "loguniform: expected positive bounds")


@pytest.mark.parametrize(("kind", "bounds"), [("uniform", "[1, 1]"), ("uniform", "[2, 1]"), ("randint", "[5, 5]"),
                                              ("loguniform", "[0.1, 0.01]")])
def test_low_not_below_high(tmp_path, kind, bounds):
    err = reject(tmp_path, sweep_stage(f"{{random: {{lr: {{{kind}: {bounds}}}}}, samples: 2}}"))
    assert_problem(err, "stages[train].sweep.random.lr", f"{kind}: expected [low, high] with low < high")


def test_distribution_with_two_keys(tmp_path):
    err = reject(tmp_path, sweep_stage("{random: {lr: {uniform: [0, 1], choice: [0.1]}}, samples: 2}"))
    assert_problem(err, "stages[train].sweep.random.lr", "expected exactly one of choice, uniform, loguniform, randint")


def test_distribution_with_no_keys(tmp_path):
    err = reject(tmp_path, sweep_stage("{random: {lr: {}}, samples: 2}"))
    assert_problem(err, "stages[train].sweep.random.lr", "expected exactly one of choice, uniform, loguniform, randint")


def test_empty_choice(tmp_path):
    err = reject(tmp_path, sweep_stage("{random: {lr: {choice: []}}, samples: 2}"))
    assert_problem(err, "stages[train].sweep.random.lr.choice", "at least 1 item")


def test_param_in_both_grid_and_random(tmp_path):
    err = reject(tmp_path, sweep_stage("{grid: {lr: [0.1]}, random: {lr: {uniform: [0, 1]}}, samples: 2}"))
    assert_problem(err, "stages[train].sweep", "params swept by both grid and random: lr")


# ------------------------------------------------------------------ the file itself

@pytest.mark.parametrize("text", ["experiment: [unclosed\n", "experiment: exp\n  stages: x: y\n", "a: 'open\n"])
def test_invalid_yaml(tmp_path, text):
    err = reject(tmp_path, text)
    assert len(err.problems) == 1
    key, message = err.problems[0]
    assert re.fullmatch(r"line \d+", key), key
    assert message.startswith("invalid YAML: ")
    assert re.search(rf"^{re.escape(err.source)}: line \d+: invalid YAML: \S", str(err))


@pytest.mark.parametrize("text", ["- experiment: exp\n- stages: []\n", "just a string\n", "", "42\n"])
def test_top_level_not_a_mapping(tmp_path, text):
    err = reject(tmp_path, text)
    assert_problem(err, "", "expected a mapping with keys experiment and stages")


def test_missing_file(tmp_path):
    path = tmp_path / "no-such-spec.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path, [])
    assert str(info.value) == f"{path}: no such file"


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path, [])
    assert str(info.value).startswith(f"{tmp_path}: cannot read")


# ------------------------------------------------------------------ many problems at once

def test_several_schema_problems_all_reported(tmp_path):
    text = """
    experiment: exp
    priority: high
    colour: blue
    stages:
      - {name: train, command: x, resources: {cpu: lots, gpu: 1.5}, timeout: soon}
    """
    err = reject(tmp_path, text)
    assert len(err.problems) >= 4
    assert_problem(err, "priority", "valid integer")
    assert_problem(err, "colour", "unknown key")
    assert_problem(err, "stages[train].resources.cpu", "valid number")
    assert_problem(err, "stages[train].timeout", "expected a duration")
    assert len(str(err).splitlines()) == len(err.problems)


def test_several_semantic_problems_all_reported(tmp_path):
    text = """
    experiment: exp
    stages:
      - {name: prep, run: 'labq_no_such_module_xyz:main'}
      - {name: train, after: [nosuch], command: 'python t.py {missing}'}
    """
    err = reject(tmp_path, text)
    assert len(err.problems) == 3
    assert_problem(err, "stages[train].after", "no stage named 'nosuch'")
    assert_problem(err, "stages[prep].run", "not found")
    assert_problem(err, "stages[train].command", "placeholder {missing}")


def test_schema_and_semantic_problems_reported_together(tmp_path):
    text = """
    experiment: exp
    priority: high
    stages:
      - {name: train, after: [nosuch], command: 'python t.py'}
    """
    err = reject(tmp_path, text)
    assert_problem(err, "priority", "valid integer")
    assert_problem(err, "stages[train].after", "no stage named 'nosuch'")


# ------------------------------------------------------------------ --set overrides

def test_set_top_level_int(tmp_path):
    path = write(tmp_path, QUICKSTART)
    spec, raw = load_spec(path, ["priority=5"])
    assert spec.priority == 5 and isinstance(spec.priority, int)
    assert raw["priority"] == 5
    assert "priority" not in path.read_text(), "overrides must not touch the file"


def test_set_stage_by_name(tmp_path):
    spec = load(tmp_path, QUICKSTART, ["stages.train.resources.cpu=2"])
    assert spec.stage("train").resources.cpu == 2.0
    assert spec.stage("prep").resources.cpu == 1.0


def test_set_stage_by_index(tmp_path):
    spec, raw = load_spec(write(tmp_path, QUICKSTART), ["stages.0.params.dataset=wine"])
    assert spec.stage("prep").params["dataset"] == "wine"
    assert raw["stages"][0]["params"]["dataset"] == "wine"


def test_set_creates_missing_mappings(tmp_path):
    spec = load(tmp_path, one_stage(""), ["stages.train.params.lr=0.01", "stages.train.resources.gpu=0.5"])
    assert spec.stage("train").params == {"lr": 0.01}
    assert spec.stage("train").resources.gpu == 0.5


@pytest.mark.parametrize(("assignment", "expected"), [
    ("stages.train.params.max_depth=null", None),
    ("stages.train.params.layers=[64, 32]", [64, 32]),
    ("stages.train.params.flag=true", True),
    ("stages.train.params.name=hello world", "hello world"),
    ("stages.train.params.empty=", ""),
    ("stages.train.params.text=[unclosed", "[unclosed"),  # not YAML: kept as text
    ("stages.train.params.eq=a=b", "a=b"),  # only the first '=' splits
])
def test_set_values_are_parsed_as_yaml(tmp_path, assignment, expected):
    key = assignment.split("=", 1)[0].rsplit(".", 1)[1]
    assert load(tmp_path, one_stage(""), [assignment]).stage("train").params[key] == expected


def test_set_later_override_wins(tmp_path):
    assert load(tmp_path, QUICKSTART, ["priority=1", "priority=9"]).priority == 9


def test_set_replaces_sweep(tmp_path):
    spec = load(tmp_path, QUICKSTART, ["stages.train.sweep.grid.max_depth=[8]"])
    assert spec.stage("train").sweep.grid == {"n_estimators": [20, 100], "max_depth": [8]}


def test_set_unknown_stage_rejected(tmp_path):
    err = reject(tmp_path, QUICKSTART, ["stages.nosuch.params.x=1"])
    assert_problem(err, "--set stages.nosuch", "no item named 'nosuch'", "have: prep, train")


def test_set_index_out_of_range_rejected(tmp_path):
    err = reject(tmp_path, QUICKSTART, ["stages.5.params.x=1"])
    assert_problem(err, "--set stages.5", "no item named '5'")


@pytest.mark.parametrize("assignment", ["novalue", "=5"])
def test_set_without_key_or_equals_rejected(tmp_path, assignment):
    err = reject(tmp_path, QUICKSTART, [assignment])
    assert_problem(err, f"--set {assignment}", "expected KEY.PATH=VALUE")


def test_set_through_a_scalar_rejected(tmp_path):
    err = reject(tmp_path, QUICKSTART, ["experiment.sub=1"])
    assert_problem(err, "--set experiment.sub", "not a mapping or list")


def test_set_that_makes_spec_invalid_rejected(tmp_path):
    err = reject(tmp_path, QUICKSTART, ["stages.train.resources.gpu=1.5"])
    assert_problem(err, "stages[train].resources", "gpu:", "whole number of GPUs")


def test_set_unknown_key_rejected_by_validation(tmp_path):
    err = reject(tmp_path, QUICKSTART, ["stages.train.resources.gpus=1"])
    assert_problem(err, "stages[train].resources.gpus", "unknown key; expected one of: cpu, gpu, memory, custom")


def test_set_bad_dataset_rejected_by_check_params(tmp_path):
    err = reject(tmp_path, QUICKSTART, ["stages.prep.params.dataset=nope"])
    assert_problem(err, "stages[prep].params", "dataset: unknown value 'nope'")


# ------------------------------------------------------------------ GPU memory requests and OOM-aware retry

@pytest.mark.parametrize("text, size", [("6GiB", 6 * 2**30), ("512MiB", 512 * 2**20), ("8G", 8 * 10**9)])
def test_gpu_memory_request_accepted_in_size_units(tmp_path, text, size):
    res = load(tmp_path, resources(f"gpu_memory: {text}")).stage("train").resources
    assert res.gpu_memory == size and res.gpu == 0 and res.fractional_gpu


def test_gpu_memory_and_gpu_together_rejected(tmp_path):
    err = reject(tmp_path, resources("gpu: 0.5, gpu_memory: 6GiB"))
    assert_problem(err, "stages[train].resources", "gpu_memory:", "either gpu", "not both")


@pytest.mark.parametrize("value, fragment", [("lots", "expected a size such as 512MiB or 2GiB"),
                                             ("-1GiB", "expected a size"), (".inf", "non-negative size")])
def test_bad_gpu_memory_rejected_with_its_key(tmp_path, value, fragment):
    err = reject(tmp_path, resources(f"gpu_memory: {value}"))
    assert_problem(err, "stages[train].resources.gpu_memory", fragment)


def test_zero_gpu_memory_rejected(tmp_path):
    err = reject(tmp_path, resources("gpu_memory: 0"))
    assert_problem(err, "stages[train].resources", "gpu_memory:", "positive size")


@pytest.mark.parametrize("request_", ["gpu: 0.25", "gpu_memory: 4GiB"])
def test_retry_on_oom_accepted_for_a_gpu_share(tmp_path, request_):
    spec = load(tmp_path, one_stage(f"retry_on_oom: {{gpu_scale: 2}}, resources: {{{request_}}}"))
    assert spec.stage("train").retry_on_oom.gpu_scale == 2


@pytest.mark.parametrize("scale, fragment", [(1, "greater than 1"), (0.5, "greater than 1"), (".inf", "finite"),
                                             (".nan", "finite"), ("'x'", "valid number")])
def test_retry_on_oom_scale_must_be_finite_and_above_one(tmp_path, scale, fragment):
    err = reject(tmp_path, one_stage(f"retry_on_oom: {{gpu_scale: {scale}}}, resources: {{gpu: 0.25}}"))
    assert_problem(err, "stages[train].retry_on_oom.gpu_scale", fragment)


def test_retry_on_oom_unknown_key_lists_valid_ones(tmp_path):
    err = reject(tmp_path, one_stage("retry_on_oom: {scale: 2}, resources: {gpu: 0.25}"))
    assert_problem(err, "stages[train].retry_on_oom.scale", "unknown key; expected one of: gpu_scale")


@pytest.mark.parametrize("request_", ["cpu: 1", "gpu: 1", "gpu: 2"])
def test_retry_on_oom_needs_a_share_of_one_gpu_to_scale(tmp_path, request_):
    err = reject(tmp_path, one_stage(f"retry_on_oom: {{gpu_scale: 2}}, resources: {{{request_}}}"))
    assert_problem(err, "stages[train]", "retry_on_oom:", "share of one GPU")


# ------------------------------------------------------------------ metrics_from and env


def test_metrics_from_stdout_and_json_load(tmp_path):
    spec = load(tmp_path, one_stage(
        r"metrics_from: {stdout: {test_ppl: 'test ppl\s+([0-9.eE+-]+)', loss: 'loss:\s*(\S+)'},"
        " json: results/metrics.json}"))
    mf = spec.stages[0].metrics_from
    assert mf.stdout == {"test_ppl": r"test ppl\s+([0-9.eE+-]+)", "loss": r"loss:\s*(\S+)"}
    assert mf.json_path == "results/metrics.json"


@pytest.mark.parametrize("body, key, fragment", [
    ("metrics_from: {stdout: {loss: 'loss: ([0-9'}}", "stages[train].metrics_from", "stdout.loss: not a valid regular expression"),
    ("metrics_from: {stdout: {loss: 'loss: [0-9]+'}}", "stages[train].metrics_from", "stdout.loss: expected a regular expression with a group"),
    ("metrics_from: {stdout: {'bad name': '(x)'}}", "stages[train].metrics_from", "expected a metric name"),
    ("metrics_from: {json: ../outside.json}", "stages[train].metrics_from", "json: expected a relative path"),
    ("metrics_from: {json: /etc/metrics.json}", "stages[train].metrics_from", "json: expected a relative path"),
    ("metrics_from: {}", "stages[train].metrics_from", "expected stdout"),
    ("metrics_from: {stderr: {x: '(1)'}}", "stages[train].metrics_from.stderr", "unknown key; expected one of: stdout, json"),
])
def test_bad_metrics_from_is_rejected_with_its_key(tmp_path, body, key, fragment):
    assert_problem(reject(tmp_path, one_stage(body)), key, fragment)


def test_env_vars_and_pip_load_and_merge_with_the_experiment_env(tmp_path):
    from scheduler.spec import stage_runtimes

    spec = load(tmp_path, one_stage("env: {vars: {SEED: 3, MODE: fast}, pip: [tabulate==0.9.0]}",
                                    top="env: {vars: {MODE: slow, SHARED: 'yes'}}\n"))
    runtime = stage_runtimes(spec, tmp_path)["train"]
    assert runtime["env"] == {"vars": {"MODE": "fast", "SHARED": "yes", "SEED": "3"}, "pip": ["tabulate==0.9.0"]}


def test_env_requirements_are_read_at_submit(tmp_path):
    from scheduler.spec import stage_runtimes

    (tmp_path / "requirements.txt").write_text("# pinned\ntabulate==0.9.0  # tables\n\nhumanize\n")
    spec = load(tmp_path, one_stage("env: {requirements: requirements.txt}"))
    assert stage_runtimes(spec, tmp_path)["train"]["env"]["pip"] == ["tabulate==0.9.0", "humanize"]


@pytest.mark.parametrize("body, key, fragment", [
    ("env: {vars: {LABQ_JOB_ID: 1}}", "stages[train].env", "LABQ_* variables are labq's own"),
    ("env: {vars: {'1BAD': x}}", "stages[train].env", "expected a variable name"),
    ("env: {pip: [a], requirements: r.txt}", "stages[train].env", "not both"),
    ("env: {requirements: missing.txt}", "stages[train].env.requirements", "no file missing.txt"),
    ("env: {requirements: ../../etc/passwd}", "stages[train].env", "expected a relative path"),
    ("env: {conda: x}", "stages[train].env.conda", "unknown key; expected one of: vars, pip, requirements"),
])
def test_bad_env_is_rejected_with_its_key(tmp_path, body, key, fragment):
    assert_problem(reject(tmp_path, one_stage(body)), key, fragment)
