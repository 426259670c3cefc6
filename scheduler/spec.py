"""The experiment spec: YAML in, a validated :class:`ExperimentSpec` out.

Validation is strict and happens before anything is stored: unknown keys, wrong
types, impossible resources, cycles in ``after``, callables that do not import and
command placeholders with no param behind them are all reported at once, each as
``file: key: what was expected``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import string
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from jobs.source import has_dynamic_names, top_level_names
from scheduler.errors import SpecError
from scheduler.sweep_points import expand_sweep, sweep_size
from scheduler.units import parse_duration, parse_memory

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_JOBS_PER_EXPERIMENT = 100_000
RAY_BUILTIN_RESOURCES = {"cpu", "gpu", "memory", "object_store_memory"}
MAX_FORMAT_WIDTH = 1000
MAX_SPEC_BYTES = 10 * 2**20
MAX_SPEC_VALUES = 1_000_000  # values in the spec once YAML aliases are expanded  # {x:>999999999} would build a gigabyte command line


def _memory(value: Any) -> Any:
    return None if value is None else parse_memory(value)


def _duration(value: Any) -> Any:
    return None if value is None else parse_duration(value)


Memory = Annotated[int | None, BeforeValidator(_memory)]
Duration = Annotated[float | None, BeforeValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class Resources(_Strict):
    """What one job of a stage asks for.  ``gpu`` up to 1 is a share of one GPU;
    above 1 it must be a whole number of GPUs on one node.  ``gpu_memory`` asks
    for a share of one GPU by its memory instead (the scheduler turns it into a
    fraction of the card it picks)."""

    cpu: float = Field(1.0, ge=0, le=1e6, allow_inf_nan=False)
    gpu: float = Field(0.0, ge=0, le=1e4, allow_inf_nan=False)
    memory: Memory = None  # bytes
    custom: dict[str, Annotated[float, Field(allow_inf_nan=False, le=1e9)]] = Field(default_factory=dict)
    gpu_memory: Memory = None  # bytes on one GPU

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> "Resources":
        if self.cpu <= 0:
            raise ValueError("cpu: expected a share of CPUs above 0 (such as 0.1); a job at cpu 0 is counted against "
                             "no node, so any number of them would run at once")
        for name in self.custom:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_.:-]*$", name) or name.lower() in RAY_BUILTIN_RESOURCES:
                raise ValueError(f"custom.{name}: expected the name of a custom resource a node offers (letters, "
                                 f"digits, '_', '.', ':', '-'; not {', '.join(sorted(RAY_BUILTIN_RESOURCES))}: use "
                                 "cpu, gpu and memory for those)")
        if self.gpu > 1 and not float(self.gpu).is_integer():
            raise ValueError(f"gpu: expected a share of one GPU (0 < gpu <= 1) or a whole number of GPUs, got {self.gpu:g}")
        for name, amount in self.custom.items():
            if amount < 0:
                raise ValueError(f"custom.{name}: expected a non-negative amount, got {amount:g}")
        if self.gpu_memory is not None:
            if self.gpu:
                raise ValueError("gpu_memory: expected either gpu (a share or a number of GPUs) or gpu_memory "
                                 "(memory on one GPU, such as 6GiB), not both")
            if self.gpu_memory <= 0:
                raise ValueError("gpu_memory: expected a positive size such as 6GiB")
        return self

    @property
    def fractional_gpu(self) -> bool:
        """A share of one GPU (by fraction or by memory), not whole GPUs."""
        return self.gpu_memory is not None or 0 < self.gpu < 1


class RetryOnOom(_Strict):
    """How to retry a job that ran out of GPU memory: with its GPU share (or
    gpu_memory) multiplied by ``gpu_scale``, up to a whole GPU."""

    gpu_scale: float = Field(gt=1, le=1e3, allow_inf_nan=False)


class Distribution(_Strict):
    """One random-search distribution: exactly one key set."""

    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[Annotated[float, Field(allow_inf_nan=False)], Annotated[float, Field(allow_inf_nan=False)]] | None = None
    loguniform: tuple[Annotated[float, Field(allow_inf_nan=False)], Annotated[float, Field(allow_inf_nan=False)]] | None = None
    randint: tuple[int, int] | None = None  # upper bound exclusive, as in Ray Tune

    @model_validator(mode="after")
    def _exactly_one(self) -> "Distribution":
        given = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("expected exactly one of choice, uniform, loguniform, randint")
        for key in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, key)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{key}: expected [low, high] with low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: expected positive bounds")
        return self


class Budget(_Strict):
    """What a search may spend before it asks for no more trials: CPU or GPU
    hours its trials held, or wall time since the experiment was submitted."""

    cpu_hours: float | None = Field(None, gt=0, le=1e9, allow_inf_nan=False)
    gpu_hours: float | None = Field(None, gt=0, le=1e9, allow_inf_nan=False)
    wall: Duration = None

    @model_validator(mode="after")
    def _one(self) -> "Budget":
        if sum(v is not None for v in (self.cpu_hours, self.gpu_hours, self.wall)) != 1:
            raise ValueError("expected exactly one of cpu_hours, gpu_hours, wall")
        return self


class Search(_Strict):
    """A model-based search (scheduler.search): trials are jobs, each asked of
    the ``algo`` with the results of the trials before it."""

    algo: Literal["tpe", "gp", "cmaes", "random"] = "tpe"
    samples: int = Field(ge=1, le=MAX_JOBS_PER_EXPERIMENT)  # trials in all
    parallel: int = Field(4, ge=1, le=1000)  # trials queued or running at once
    seed: int = Field(0, ge=0, le=2**31 - 1)
    budget: Budget | None = None
    # Several metrics at once: {metric: max | min}; the search looks for their
    # Pareto front, which `labq results` marks (else: the experiment's metric).
    objectives: dict[Annotated[str, Field(pattern=METRIC_NAME_PATTERN)], Literal["max", "min"]] | None = Field(
        None, min_length=2, max_length=8)


class Sweep(_Strict):
    grid: dict[str, list[Any]] | None = None
    random: dict[str, Distribution] | None = None
    samples: int | None = Field(None, ge=1, le=MAX_JOBS_PER_EXPERIMENT)
    seed: int = 0
    search: Search | None = None
    space: dict[str, Distribution] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "Sweep":
        if self.search is not None or self.space is not None:
            if self.search is None or self.space is None:
                raise ValueError("search and space go together: how to search, and over what")
            if self.grid is not None or self.random is not None or self.samples is not None:
                raise ValueError("search: not with grid, random or samples (search.samples counts its trials)")
            return self
        if self.grid is None and self.random is None:
            raise ValueError("expected grid and/or random")
        if self.random is not None and self.samples is None:
            raise ValueError("samples: required with random (how many points to draw)")
        if self.random is None and self.samples is not None:
            raise ValueError("samples: only meaningful with random")
        for name, values in (self.grid or {}).items():
            if not values:
                raise ValueError(f"grid.{name}: expected a non-empty list of values")
        both = set(self.grid or {}) & set(self.random or {})
        if both:
            raise ValueError(f"params swept by both grid and random: {', '.join(sorted(both))}")
        return self


METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
ENV_VAR_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_REQUIREMENTS_BYTES = 1 << 20


def _relative_path(value: str, key: str) -> str:
    """A path inside the job's working directory (or the spec's directory)."""
    parts = Path(value).parts
    if not value or Path(value).is_absolute() or ".." in parts or "\0" in value:
        raise ValueError(f"{key}: expected a relative path inside the project without '..', got {value!r}")
    return value


class MetricsFrom(_Strict):
    """Metrics of a script that does not report them itself (workers.metrics_from)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    stdout: dict[str, str] | None = None  # metric name -> regex whose first group is the number
    json_path: str | None = Field(None, alias="json")  # a JSON file the script writes in its cwd

    @model_validator(mode="after")
    def _valid(self) -> "MetricsFrom":
        from workers.metrics_from import regex_problem

        if not self.stdout and self.json_path is None:
            raise ValueError("expected stdout: {metric: regex} and/or json: path/to/metrics.json")
        for name, pattern in (self.stdout or {}).items():
            if not re.match(METRIC_NAME_PATTERN, name):
                raise ValueError(f"stdout.{name}: expected a metric name of letters, digits, '_', '.', '-'")
            problem = regex_problem(pattern)
            if problem:
                raise ValueError(f"stdout.{name}: {problem}")
        if self.json_path is not None:
            _relative_path(self.json_path, "json")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"stdout": dict(self.stdout or {}), "json": self.json_path}


def _env_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value) if isinstance(value, (int, float)) else value


class Env(_Strict):
    """What a stage needs beyond labq's own environment: variables (set by labq
    in the job's process) and Python packages (installed by Ray's runtime
    environments, once per distinct set, cached per node)."""

    vars: dict[str, Annotated[str, BeforeValidator(_env_value)]] = Field(default_factory=dict)
    pip: list[Annotated[str, Field(min_length=1, max_length=1000)]] | None = Field(None, max_length=1000)
    requirements: str | None = None  # a requirements.txt beside the spec

    @model_validator(mode="after")
    def _valid(self) -> "Env":
        for name, value in self.vars.items():
            if not ENV_VAR_PATTERN.match(name):
                raise ValueError(f"vars.{name}: expected a variable name of letters, digits and '_'")
            if name.startswith("LABQ_"):
                raise ValueError(f"vars.{name}: LABQ_* variables are labq's own (the job's id, run dir...)")
            if "\0" in value:
                raise ValueError(f"vars.{name}: a value cannot hold a NUL character")
        if self.pip is not None and self.requirements is not None:
            raise ValueError("expected pip (a list of packages) or requirements (a file), not both")
        if self.requirements is not None:
            _relative_path(self.requirements, "requirements")
        return self


class EarlyStop(_Strict):
    """Stop a stage's losing jobs early from the per-step metrics they report
    (scheduler.early_stop); they end pruned."""

    method: Literal["asha", "hyperband", "median"] = "asha"
    metric: str | None = Field(None, pattern=METRIC_NAME_PATTERN)  # default: the experiment's
    mode: Literal["max", "min"] | None = None  # default: the experiment's
    grace: int = Field(1, ge=1, le=10**9)  # steps before any stop
    eta: int = Field(3, ge=2, le=100)  # 1/eta of the jobs pass each rung
    max_t: int = Field(100, ge=1, le=10**9)  # the steps a job runs at most
    # Pause at each rung and promote the best later, resuming from their
    # checkpoints (ASHA by promotion), instead of stopping the losers for good.
    pause: bool = False

    @model_validator(mode="after")
    def _grace_below_max(self) -> "EarlyStop":
        if self.grace >= self.max_t and self.method != "median":
            raise ValueError(f"grace ({self.grace}) must be below max_t ({self.max_t}): no rung would be left")
        if self.pause and self.method == "median":
            raise ValueError("pause: expected asha or hyperband (the median rule has no rungs to pause at)")
        return self


class Stage(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    run: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    command: str | None = Field(None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    after: list[str] = Field(default_factory=list)
    sweep: Sweep | None = None
    resources: Resources = Field(default_factory=Resources)
    retries: int = Field(0, ge=0, le=100)
    timeout: Duration = None  # seconds
    retry_on_oom: RetryOnOom | None = None
    metrics_from: MetricsFrom | None = None
    env: Env | None = None
    early_stop: EarlyStop | None = None
    # The job resumes from ctx.previous_run_dir's checkpoint when run again: a
    # queue with least-attained-service tiers may preempt it (policy.tiers).
    checkpoints: bool = False

    @model_validator(mode="after")
    def _run_or_command(self) -> "Stage":
        if (self.run is None) == (self.command is None):
            raise ValueError("expected exactly one of run (module:function) or command")
        if self.retry_on_oom is not None and not self.resources.fractional_gpu:
            raise ValueError("retry_on_oom: expected a stage with a share of one GPU to scale "
                             "(resources.gpu below 1, or resources.gpu_memory)")
        return self


class ExperimentSpec(_Strict):
    experiment: str = Field(pattern=NAME_PATTERN, max_length=100)
    description: str | None = None
    queue: str = Field("default", pattern=NAME_PATTERN)
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    # The metric results are sorted by, and whether bigger is better.
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    env: Env | None = None  # for every stage; a stage's own env adds to it
    stages: list[Stage] = Field(min_length=1)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def stage_order(self) -> list[Stage]:
        """Stages in dependency order (validated acyclic)."""
        order, seen = [], set()
        by_name = {s.name: s for s in self.stages}

        def visit(stage: Stage) -> None:
            if stage.name in seen:
                return
            seen.add(stage.name)
            for up in stage.after:
                visit(by_name[up])
            order.append(stage)

        for stage in self.stages:
            visit(stage)
        return order


# ---------------------------------------------------------------- loading

def load_spec(path: str | Path, overrides: list[str] = ()) -> tuple[ExperimentSpec, dict[str, Any]]:
    """Read, override, validate.  Returns the spec and the raw document (after
    overrides) so it can be stored verbatim.  Raises SpecError listing every problem."""
    path = Path(path)
    source = str(path)
    try:
        if not path.is_file():  # a FIFO or a device would hang or never end
            raise SpecError(source, [("", "no such file" if not path.exists() else "cannot read: not a regular file")])
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(source, [("", f"larger than {MAX_SPEC_BYTES // 2**20} MiB; a spec describes jobs, "
                                          "it does not hold data (put data in a file beside it)")])
        text = data.decode("utf-8")
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(source, [("", f"cannot read: {exc.__class__.__name__}")]) from None
    try:
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(source, [(where, f"invalid YAML: {problem}")]) from None
    if not isinstance(raw, dict):
        raise SpecError(source, [("", "expected a mapping with keys experiment and stages")])
    size = _expanded_size(raw)
    if size is None:  # YAML anchors can build a value that contains itself
        raise SpecError(source, [("", "a value refers to itself (a YAML anchor used inside itself)")])
    if size > MAX_SPEC_VALUES:  # aliases of aliases: a few lines that expand to gigabytes
        raise SpecError(source, [("", f"expands to more than {MAX_SPEC_VALUES:,} values (YAML aliases repeated "
                                      "inside each other?); write the sweep as a sweep instead")])
    for item in overrides:
        apply_override(raw, item, source)
    spec = validate(raw, source, base_dir=path.resolve().parent)
    return spec, raw


def _expanded_size(root: Any) -> int | None:
    """How many values ``root`` holds once every YAML alias is expanded (a
    shared node counts each time it appears), without expanding anything;
    None when a value contains itself."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: Any) -> int | None:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            return None
        on_path.add(key)
        total = 1
        for child in (list(node.keys()) + list(node.values())) if isinstance(node, dict) else node:
            n = size(child)
            if n is None:
                return None
            total = min(total + n, MAX_SPEC_VALUES + 1)
        on_path.discard(key)
        sizes[key] = total
        return total

    try:
        return size(root)
    except RecursionError:  # nested too deep to be a spec
        return MAX_SPEC_VALUES + 1


def validate(raw: dict[str, Any], source: str, base_dir: Path) -> ExperimentSpec:
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err, raw) for err in exc.errors()]
        raise SpecError(source, problems + _problems_of_valid_stages(raw, base_dir)) from None
    problems = _semantic_problems(spec, base_dir)
    if problems:
        raise SpecError(source, problems)
    return spec


def _key_path(loc: tuple[Any, ...], raw: Any) -> str:
    """('stages', 1, 'resources', 'gpu') -> 'stages[train].resources.gpu'.
    Walks the raw document alongside, so pydantic's type markers in ``loc`` (such
    as 'int' for a union member) are dropped only where the document has no such key."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = str(item)
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict) and isinstance(node[item].get("name"), str):
                label = node[item]["name"]
            parts.append(f"[{label}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        elif isinstance(node, dict) and item in node:
            parts.append(("." if parts else "") + str(item))
            node = node[item]
        elif _is_type_marker(item):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
            node = None
    return "".join(parts)


def _is_type_marker(item: Any) -> bool:
    """Pydantic names union members and validators in error locations:
    'int', 'list[any]', 'function-after[...]', 'tuple[float, float]'..."""
    return isinstance(item, str) and (item in ("str", "int", "float", "bool", "none") or "[" in item
                                      or item.startswith("function-"))


def _describe(err: dict[str, Any], raw: Any) -> tuple[str, str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    got = err.get("input")
    key = _key_path(loc, raw)
    if kind == "extra_forbidden":
        parent = _model_for(_real_keys(loc[:-1], raw))
        valid = f"; expected one of: {', '.join(parent.model_fields)}" if parent else ""
        return key, "unknown key" + valid
    if kind == "missing":
        return key, "required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        if loc and loc[-1] == "run":
            message = "expected module:function (e.g. jobs.train:sklearn)"
        else:
            message = "expected a name of letters, digits, '_', '.', '-'"
    if kind != "value_error" and got is not None and not isinstance(got, (dict, list)):
        message += f", got {got!r}"
    return key, message


def _real_keys(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    """``loc`` without pydantic's type markers (checked against the document)."""
    kept: list[Any] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            kept.append(item)
            node = node[item] if isinstance(node, list) and item < len(node) else None
        elif isinstance(node, dict) and item in node:
            kept.append(item)
            node = node[item]
        elif not _is_type_marker(item):
            kept.append(item)
            node = None
    return tuple(kept)


def _model_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose fields are valid at ``loc`` (None inside free-form maps)."""
    model: Any = ExperimentSpec
    for item in loc:
        if isinstance(item, int):
            continue
        if model is ExperimentSpec and item == "stages":
            model = Stage
        elif model is Stage and item == "resources":
            model = Resources
        elif model is Stage and item == "sweep":
            model = Sweep
        elif model is Stage and item == "retry_on_oom":
            model = RetryOnOom
        elif model is Stage and item == "metrics_from":
            model = MetricsFrom
        elif model in (Stage, ExperimentSpec) and item == "env":
            model = Env
        elif model is Sweep and item == "random":
            model = "random params"
        elif model == "random params":
            model = Distribution  # the key was a param name; its value is a distribution
        else:
            model = None
    return model if isinstance(model, type) else None


def _semantic_problems(spec: ExperimentSpec, base_dir: Path) -> list[tuple[str, str]]:
    return (_check_graph(spec) + _check_targets(spec, base_dir) + _check_placeholders(spec)
            + _check_requirements(spec, base_dir) + _check_searches(spec) + _check_early_stops(spec))


def _check_early_stops(spec: ExperimentSpec) -> list[tuple[str, str]]:
    return [(f"stages[{s.name}].early_stop", "needs a metric and a mode: its own, or the experiment's")
            for s in spec.stages if s.early_stop is not None
            and ((s.early_stop.metric or spec.metric) is None or (s.early_stop.mode or spec.mode) is None)]


def _check_searches(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """A search learns from its own trials' results: it needs the experiment's
    metric and mode, no stage after it (new trials would have none), and one
    upstream job (each trial follows the same ones)."""
    problems = []
    for stage in spec.stages:
        if stage.sweep is None or stage.sweep.search is None:
            continue
        key = f"stages[{stage.name}].sweep.search"
        if (spec.metric is None or spec.mode is None) and not stage.sweep.search.objectives:
            problems.append((key, "a search needs the experiment's metric and mode (what to optimise), "
                                  "or objectives"))
        after = [s.name for s in spec.stages if stage.name in s.after]
        if after:
            problems.append((key, f"a search stage must be the last: {', '.join(after)} come(s) after it"))
        swept_upstream = [up for up in stage.after if spec.stage(up).sweep is not None]
        if swept_upstream:
            problems.append((key, f"its upstream stages must not sweep ({', '.join(swept_upstream)} does)"))
    return problems


def _envs(spec: ExperimentSpec) -> list[tuple[str, Env]]:
    return ([("env", spec.env)] if spec.env else []) + [(f"stages[{s.name}].env", s.env) for s in spec.stages if s.env]


def _check_requirements(spec: ExperimentSpec, base_dir: Path) -> list[tuple[str, str]]:
    problems = []
    for key, env in _envs(spec):
        if env.requirements is not None:
            _, problem = read_requirements(base_dir, env.requirements)
            if problem:
                problems.append((f"{key}.requirements", problem))
    return problems


def read_requirements(base_dir: Path, name: str) -> tuple[list[str], str | None]:
    """The requirement lines of a requirements file inside the spec's directory."""
    path = (base_dir / name).resolve()
    if base_dir.resolve() not in path.parents:
        return [], f"expected a file inside the spec's directory {base_dir}, got {name!r}"
    try:
        if not path.is_file():
            return [], f"no file {name} beside the spec"
        if path.stat().st_size > MAX_REQUIREMENTS_BYTES:
            return [], f"{name} is larger than {MAX_REQUIREMENTS_BYTES // 1024} KiB"
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"cannot read {name}: {exc.__class__.__name__}"
    lines = [line.split(" #")[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        return [], f"{name} lists no packages"
    return lines, None


def stage_runtimes(spec: ExperimentSpec, base_dir: Path) -> dict[str, dict[str, Any]]:
    """What each stage's workers need beyond the job row, resolved at submit
    (the requirements file is read now, so editing it later changes nothing):
    {stage: {"metrics_from": {...} | None, "env": {"vars": {...}, "pip": [...] | None}}}."""
    runtimes: dict[str, dict[str, Any]] = {}
    for stage in spec.stages:
        envs = [e for e in (spec.env, stage.env) if e is not None]
        variables: dict[str, str] = {}
        pip: list[str] | None = None
        for env in envs:
            variables.update(env.vars)
            if env.requirements is not None:
                pip = read_requirements(base_dir, env.requirements)[0]
            elif env.pip is not None:
                pip = list(env.pip)
        runtime: dict[str, Any] = {}
        if stage.metrics_from is not None:
            runtime["metrics_from"] = stage.metrics_from.to_json()
        if variables or pip:
            runtime["env"] = {"vars": variables, "pip": pip or None}
        if stage.early_stop is not None:
            rule = stage.early_stop
            runtime["early_stop"] = {"method": rule.method, "metric": rule.metric or spec.metric,
                                     "mode": rule.mode or spec.mode, "grace": rule.grace, "eta": rule.eta,
                                     "max_t": rule.max_t, "pause": rule.pause}
        if stage.checkpoints:
            runtime["checkpoints"] = True
        if runtime:
            runtimes[stage.name] = runtime
    return runtimes


def _problems_of_valid_stages(raw: dict[str, Any], base_dir: Path) -> list[tuple[str, str]]:
    """When the schema check failed, still report what can be checked, so every
    problem shows at once: the graph when every stage is well-formed, and the
    targets and placeholders of the stages that are."""
    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, list):
        return []
    stages = []
    for item in raw_stages:
        try:
            stages.append(Stage.model_validate(item))
        except ValidationError:
            continue
    partial = ExperimentSpec.model_construct(experiment="-", stages=stages)
    problems = _check_targets(partial, base_dir) + _check_placeholders(partial)
    if len(stages) == len(raw_stages):
        problems = _check_graph(partial) + problems
    return problems


def _check_graph(spec: ExperimentSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    names = [s.name for s in spec.stages]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append((f"stages[{name}].name", "stage names must be unique"))
    known = set(names)
    for stage in spec.stages:
        for up in stage.after:
            if up not in known:
                problems.append((f"stages[{stage.name}].after", f"no stage named {up!r}; stages: {', '.join(names)}"))
            elif up == stage.name:
                problems.append((f"stages[{stage.name}].after", "a stage cannot depend on itself"))
    if problems:
        return problems
    # Cycle detection: depth-first with colours.
    by_name = {s.name: s for s in spec.stages}
    colour: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> list[str] | None:
        colour[name] = 1
        for up in by_name[name].after:
            if colour.get(up) == 1:
                return trail + [name, up]
            if colour.get(up) is None:
                found = visit(up, trail + [name])
                if found:
                    return found
        colour[name] = 2
        return None

    for name in names:
        if colour.get(name) is None:
            cycle = visit(name, [])
            if cycle:
                start = cycle.index(cycle[-1])
                return [(f"stages[{name}].after", "dependency cycle: " + " -> ".join(cycle[start:]))]
    return []


def _check_targets(spec: ExperimentSpec, base_dir: Path) -> list[tuple[str, str]]:
    """Every ``run: module:function`` must resolve, with the spec's directory on the
    path as it will be in the workers.  The check reads the module's source
    instead of importing it so the CLI does not pay for torch or sklearn."""
    problems = []
    for stage in spec.stages:
        if stage.run is None:
            continue
        problem = check_callable(stage.run, base_dir)
        if problem:
            problems.append((f"stages[{stage.name}].run", problem))
            continue
        problems.extend((f"stages[{stage.name}].params", p) for p in _job_param_problems(stage, base_dir))
    return problems


def _with_path(base_dir: Path):
    class _Ctx:
        def __enter__(self):
            sys.path.insert(0, str(base_dir))

        def __exit__(self, *exc):
            try:
                sys.path.remove(str(base_dir))
            except ValueError:
                pass
    return _Ctx()


def check_callable(target: str, base_dir: Path) -> str | None:
    module_name, _, func = target.partition(":")
    with _with_path(base_dir):
        try:
            found = importlib.util.find_spec(module_name)  # imports parent packages
        except (Exception, SystemExit) as exc:  # a user's package __init__ may raise anything
            found, error = None, f"{exc.__class__.__name__}: {exc}"
        else:
            error = ""
        if found is None:
            return f"module {module_name!r} not found (looked in {base_dir} and the installed packages){': ' + error if error else ''}"
        origin = found.origin
        if origin and origin.endswith(".py"):
            try:
                tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
            except SyntaxError as exc:
                return f"module {module_name!r} has a syntax error at line {exc.lineno}: {exc.msg}"
            if func in top_level_names(tree):
                return None
            if not has_dynamic_names(tree):
                return f"module {module_name!r} has no function {func!r}"
        # Not plain source, or names made at import time: import it for real.
        try:
            module = importlib.import_module(module_name)
        except (Exception, SystemExit) as exc:  # the user's module may raise anything at import
            return f"importing {module_name!r} failed: {exc.__class__.__name__}: {exc}"
        found_func = getattr(module, func, None)
        if not callable(found_func):
            return f"module {module_name!r} has no callable {func!r}"
        if inspect.isbuiltin(found_func) or inspect.isclass(found_func):
            return (f"{target} is a {'class' if inspect.isclass(found_func) else 'built-in function'}, not a job; "
                    "expected a Python function that takes the job's context (def main(ctx): ...)")
    return None


def _job_param_problems(stage: Stage, base_dir: Path) -> list[str]:
    """Jobs that know their params export ``check_params(params) -> [problem]``;
    ask them about every point of the sweep so a typo fails at submit time."""
    module_name = stage.run.partition(":")[0]
    with _with_path(base_dir):
        try:
            found = importlib.util.find_spec(module_name)
        except (Exception, SystemExit):
            return []  # reported by check_callable
        if found is None or not found.origin or not found.origin.endswith(".py"):
            return []
        tree = ast.parse(Path(found.origin).read_text(encoding="utf-8"))
        if "check_params" not in top_level_names(tree):
            return []
        try:
            checker = getattr(importlib.import_module(module_name), "check_params")
        except (Exception, SystemExit) as exc:  # the user's module may raise anything at import
            return [f"importing {module_name!r} to check params failed: {exc.__class__.__name__}: {exc}"]
    import inspect

    # A checker may take base_dir= (relative paths in params, such as a CSV beside
    # the spec, resolve against the spec's directory, as they will in the workers)
    # and function= (which of the module's jobs the stage runs).
    try:
        accepted = inspect.signature(checker).parameters
    except (TypeError, ValueError):
        accepted = {}
    extra: dict[str, Any] = {}
    if "base_dir" in accepted:
        extra["base_dir"] = base_dir
    if "function" in accepted:
        extra["function"] = stage.run.partition(":")[2]
    problems: list[str] = []
    for point in _check_points(stage):
        try:
            found = list(checker({**stage.params, **point}, **extra))
        except (Exception, SystemExit) as exc:  # a buggy checker is still a problem to report, not a traceback
            found = [f"{module_name}.check_params raised {exc.__class__.__name__}: {exc}"]
        for problem in found:
            if problem not in problems:
                problems.append(problem)
    return problems


def _check_points(stage: Stage) -> list[dict[str, Any]]:
    """Points of the sweep to show check_params: every value of every swept param
    at least once (grid values, and up to 100 random draws per param), not the
    whole product, which may be huge."""
    if sweep_size(stage.sweep) <= 200:
        return expand_sweep(stage.sweep)
    points: list[dict[str, Any]] = []
    for name, values in (stage.sweep.grid or {}).items():
        points += [{name: v} for v in values[:100]]
    if stage.sweep.random:
        small = stage.sweep.model_copy(update={"samples": 100, "grid": None})
        points += expand_sweep(small)
    return points


def _check_placeholders(spec: ExperimentSpec) -> list[tuple[str, str]]:
    problems = []
    for stage in spec.stages:
        if stage.command is None:
            continue
        available = set(stage.params) | set((stage.sweep.grid or {}) if stage.sweep else {}) | set(
            (stage.sweep.random or {}) if stage.sweep else {}) | set((stage.sweep.space or {}) if stage.sweep else {})
        try:
            parsed = [(f, spec) for _, f, spec, _ in string.Formatter().parse(stage.command) if f is not None]
        except ValueError as exc:
            problems.append((f"stages[{stage.name}].command", f"bad placeholder: {exc}"))
            continue
        fields = {f for f, _ in parsed}
        for field, format_spec in parsed:
            if "{" in (format_spec or "") or any(int(n) > MAX_FORMAT_WIDTH for n in re.findall(r"\d+", format_spec or "")):
                problems.append((f"stages[{stage.name}].command",
                                 f"placeholder {{{field}:{format_spec}}}: expected a format spec with widths up to "
                                 f"{MAX_FORMAT_WIDTH} and no nested placeholders"))
        for field in sorted(fields):
            base = re.split(r"[.\[]", field, maxsplit=1)[0]
            if not base.isidentifier():
                problems.append((f"stages[{stage.name}].command", f"placeholder {{{field}}}: expected {{param_name}}"))
            elif base not in available:
                problems.append((f"stages[{stage.name}].command",
                                 f"placeholder {{{field}}} has no param; params: {', '.join(sorted(available)) or 'none'}"))
    return problems


# ---------------------------------------------------------------- --set

def apply_override(raw: dict[str, Any], assignment: str, source: str) -> None:
    """Apply ``a.b.c=value`` to the raw document.  A list of stages is indexed by
    stage name (``stages.train.params.lr=0.1``) or position; the value is parsed as
    YAML so numbers, lists and null come out typed."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise SpecError(source, [(f"--set {assignment}", "expected KEY.PATH=VALUE")])
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = _list_item(node, part, here, source)
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise SpecError(source, [(f"--set {here}", "is not a mapping or list")])
    last = parts[-1]
    if isinstance(node, list):
        index = _list_index(node, last, key, source)
        node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError(source, [(f"--set {key}", "parent is not a mapping or list")])


def _list_index(items: list[Any], part: str, here: str, source: str) -> int:
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    if part.isascii() and part.isdigit() and int(part) < len(items):
        return int(part)
    names = [str(i.get("name")) for i in items if isinstance(i, dict) and "name" in i]
    raise SpecError(source, [(f"--set {here}", f"no item named {part!r}; have: {', '.join(names) or len(items)}")])


def _list_item(items: list[Any], part: str, here: str, source: str) -> Any:
    return items[_list_index(items, part, here, source)]

