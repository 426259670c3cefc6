"""Sweep expansion (grid x random points) and the job plan of an experiment."""

from __future__ import annotations

import itertools
import math
import textwrap

import pytest

import scheduler.sweep as sweep_module
from scheduler.errors import SpecError
from scheduler.spec import ExperimentSpec, Sweep, load_spec
from scheduler.sweep import JobDraft, expand_sweep, plan_jobs


def make_sweep(**fields) -> Sweep:
    return Sweep.model_validate(fields)


def make_spec(*stages: dict) -> ExperimentSpec:
    return ExperimentSpec.model_validate({"experiment": "exp", "stages": list(stages)})


def stage(name: str, after=(), params=None, sweep=None) -> dict:
    body = {"name": name, "command": "python x.py", "after": list(after), "params": dict(params or {})}
    if sweep is not None:
        body["sweep"] = sweep
    return body


# ------------------------------------------------------------------ expand_sweep

def test_no_sweep_is_one_empty_point():
    assert expand_sweep(None) == [{}]


def test_grid_is_the_cartesian_product():
    points = expand_sweep(make_sweep(grid={"a": [1, 2], "b": ["x", "y", None]}))
    assert len(points) == 6
    expected = [{"a": a, "b": b} for a, b in itertools.product([1, 2], ["x", "y", None])]
    assert points == expected  # every combination, each once, in grid order


def test_single_grid_param():
    assert expand_sweep(make_sweep(grid={"lr": [0.1, 0.01]})) == [{"lr": 0.1}, {"lr": 0.01}]


def test_grid_points_are_independent_dicts():
    points = expand_sweep(make_sweep(grid={"a": [1, 2]}))
    points[0]["a"] = 99
    assert expand_sweep(make_sweep(grid={"a": [1, 2]})) == [{"a": 1}, {"a": 2}]
    assert points[1] == {"a": 2}


def test_random_samples_count_and_keys():
    sweep = make_sweep(random={"lr": {"uniform": [0, 1]}, "act": {"choice": ["relu", "tanh"]}}, samples=8, seed=0)
    points = expand_sweep(sweep)
    assert len(points) == 8
    assert all(set(p) == {"lr", "act"} for p in points)


def test_random_is_deterministic_for_a_seed():
    sweep = make_sweep(random={"lr": {"loguniform": [1e-4, 1e-1]}, "n": {"randint": [1, 100]}}, samples=8, seed=0)
    first = expand_sweep(sweep)
    assert expand_sweep(sweep) == first
    same_again = make_sweep(random={"lr": {"loguniform": [1e-4, 1e-1]}, "n": {"randint": [1, 100]}}, samples=8, seed=0)
    assert expand_sweep(same_again) == first


def test_random_differs_with_another_seed():
    random = {"lr": {"uniform": [0, 1]}}
    a = expand_sweep(make_sweep(random=random, samples=8, seed=0))
    b = expand_sweep(make_sweep(random=random, samples=8, seed=1))
    assert a != b


def test_seed_defaults_to_zero():
    random = {"lr": {"uniform": [0, 1]}}
    assert expand_sweep(make_sweep(random=random, samples=5)) == expand_sweep(make_sweep(random=random, samples=5, seed=0))


def test_random_points_are_not_all_the_same():
    points = expand_sweep(make_sweep(random={"lr": {"uniform": [0, 1]}}, samples=8))
    assert len({p["lr"] for p in points}) == 8


def test_uniform_within_bounds():
    points = expand_sweep(make_sweep(random={"d": {"uniform": [0.2, 0.5]}}, samples=200, seed=3))
    assert all(0.2 <= p["d"] <= 0.5 for p in points)


def test_loguniform_within_bounds_and_spread_over_decades():
    points = expand_sweep(make_sweep(random={"lr": {"loguniform": [1e-5, 1e-1]}}, samples=400, seed=0))
    values = [p["lr"] for p in points]
    assert all(1e-5 <= v <= 1e-1 for v in values)
    assert all(isinstance(v, float) for v in values)
    # Log-uniform: each of the four decades gets a fair share (a plain uniform
    # draw would put ~90% in the top decade).
    decades = [min(3, int(math.floor(math.log10(v) + 5))) for v in values]
    for d in range(4):
        assert decades.count(d) > 50, decades.count(d)


def test_randint_within_low_inclusive_high_exclusive():
    values = [p["n"] for p in expand_sweep(make_sweep(random={"n": {"randint": [0, 3]}}, samples=300, seed=0))]
    assert set(values) == {0, 1, 2}
    assert all(isinstance(v, int) for v in values)


def test_randint_single_value_range():
    assert {p["n"] for p in expand_sweep(make_sweep(random={"n": {"randint": [5, 6]}}, samples=20))} == {5}


def test_choice_picks_from_the_list():
    options = ["relu", "tanh", "gelu"]
    values = [p["act"] for p in expand_sweep(make_sweep(random={"act": {"choice": options}}, samples=100, seed=0))]
    assert set(values) <= set(options)
    assert set(values) == set(options)  # 100 draws from 3: all show up


def test_choice_of_structured_values():
    values = [p["layers"] for p in expand_sweep(make_sweep(random={"layers": {"choice": [[64], [64, 32]]}}, samples=20))]
    assert all(v in ([64], [64, 32]) for v in values)


def test_grid_times_random():
    sweep = make_sweep(grid={"a": [1, 2], "b": ["x", "y", "z"]}, random={"lr": {"uniform": [0, 1]}}, samples=4, seed=0)
    points = expand_sweep(sweep)
    assert len(points) == 6 * 4
    assert all(set(p) == {"a", "b", "lr"} for p in points)
    # Every grid point appears exactly `samples` times.
    combos = [(p["a"], p["b"]) for p in points]
    for combo in itertools.product([1, 2], ["x", "y", "z"]):
        assert combos.count(combo) == 4
    # And each draw is fresh, not one draw shared by all grid points.
    assert len({p["lr"] for p in points}) == 24


def test_grid_times_random_deterministic():
    fields = dict(grid={"a": [1, 2]}, random={"lr": {"uniform": [0, 1]}}, samples=3, seed=42)
    assert expand_sweep(make_sweep(**fields)) == expand_sweep(make_sweep(**fields))


# ------------------------------------------------------------------ plan_jobs

def test_plan_single_stage_no_sweep():
    drafts = plan_jobs(make_spec(stage("only", params={"x": 1})))
    assert drafts == [JobDraft(index=0, stage="only", params={"x": 1}, swept={}, depends_on=[])]


def test_plan_prep_then_train_sweep():
    spec = make_spec(
        stage("prep", params={"dataset": "iris"}),
        stage("train", after=["prep"], params={"estimator": "E", "seed": 1},
              sweep={"grid": {"n_estimators": [20, 100], "max_depth": [2, 4, None]}}),
    )
    drafts = plan_jobs(spec)
    assert len(drafts) == 7
    assert [d.index for d in drafts] == list(range(7))

    prep = drafts[0]
    assert prep.stage == "prep"
    assert prep.params == {"dataset": "iris"}
    assert prep.swept == {}
    assert prep.depends_on == []

    train = drafts[1:]
    assert all(d.stage == "train" for d in train)
    assert all(d.depends_on == [0] for d in train)
    points = expand_sweep(spec.stage("train").sweep)
    for draft, point in zip(train, points):
        assert draft.swept == point
        assert draft.params == {"estimator": "E", "seed": 1, **point}
    assert {(d.swept["n_estimators"], d.swept["max_depth"]) for d in train} == set(
        itertools.product([20, 100], [2, 4, None]))


def test_plan_from_a_loaded_quickstart_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent("""
        experiment: quickstart
        stages:
          - name: prep
            run: jobs.prep:tabular
            params: {dataset: iris, seed: 0}
          - name: train
            after: [prep]
            run: jobs.train:sklearn
            params: {estimator: sklearn.ensemble.RandomForestClassifier}
            sweep:
              grid: {n_estimators: [20, 100], max_depth: [2, 4, null]}
    """))
    spec, _ = load_spec(path, [])
    drafts = plan_jobs(spec, source=str(path))
    assert [d.stage for d in drafts] == ["prep"] + ["train"] * 6
    assert drafts[0].swept == {} and drafts[0].params == {"dataset": "iris", "seed": 0}
    assert all(d.depends_on == [0] for d in drafts[1:])
    assert all(d.params["estimator"] == "sklearn.ensemble.RandomForestClassifier" for d in drafts[1:])


def test_plan_puts_upstream_first_even_when_listed_last():
    spec = make_spec(stage("train", after=["prep"], sweep={"grid": {"a": [1, 2]}}), stage("prep"))
    drafts = plan_jobs(spec)
    assert [d.stage for d in drafts] == ["prep", "train", "train"]
    assert all(d.depends_on == [0] for d in drafts[1:])


def test_plan_sweep_point_overrides_stage_param():
    spec = make_spec(stage("train", params={"lr": 0.5, "epochs": 3}, sweep={"grid": {"lr": [0.1, 0.01]}}))
    drafts = plan_jobs(spec)
    assert [d.params for d in drafts] == [{"lr": 0.1, "epochs": 3}, {"lr": 0.01, "epochs": 3}]
    assert [d.swept for d in drafts] == [{"lr": 0.1}, {"lr": 0.01}]


def test_plan_drafts_do_not_share_param_dicts():
    spec = make_spec(stage("train", params={"opts": {"k": 1}}, sweep={"grid": {"a": [1, 2]}}))
    drafts = plan_jobs(spec)
    drafts[0].params["a"] = 99
    drafts[0].swept["a"] = 99
    assert drafts[1].params["a"] == 2 and drafts[1].swept == {"a": 2}
    assert spec.stage("train").params == {"opts": {"k": 1}}


def test_plan_swept_prep_crossed_with_train():
    spec = make_spec(
        stage("prep", params={"dataset": "iris"}, sweep={"grid": {"scale": ["standard", "minmax"]}}),
        stage("train", after=["prep"], sweep={"grid": {"lr": [0.1, 0.2, 0.3]}}),
    )
    drafts = plan_jobs(spec)
    assert len(drafts) == 2 + 6
    preps = [d for d in drafts if d.stage == "prep"]
    trains = [d for d in drafts if d.stage == "train"]
    assert [d.index for d in preps] == [0, 1]
    assert [d.swept for d in preps] == [{"scale": "standard"}, {"scale": "minmax"}]
    assert [d.params for d in preps] == [{"dataset": "iris", "scale": "standard"}, {"dataset": "iris", "scale": "minmax"}]
    assert len(trains) == 6
    # Each train job needs exactly one prep job...
    assert all(len(d.depends_on) == 1 and d.depends_on[0] in (0, 1) for d in trains)
    # ...and every (prep variant, train point) pair is there exactly once.
    pairs = [(d.depends_on[0], d.swept["lr"]) for d in trains]
    assert sorted(pairs) == sorted(itertools.product([0, 1], [0.1, 0.2, 0.3]))
    # The train job's params are its own, not the prep's.
    assert all(d.params == d.swept for d in trains)


def test_plan_three_stage_chain():
    spec = make_spec(
        stage("prep"),
        stage("train", after=["prep"], sweep={"grid": {"lr": [0.1, 0.2]}}),
        stage("evaluate", after=["train"], params={"split": "test"}),
    )
    drafts = plan_jobs(spec)
    assert [d.stage for d in drafts] == ["prep", "train", "train", "evaluate", "evaluate"]
    assert drafts[1].depends_on == [0] and drafts[2].depends_on == [0]
    evals = drafts[3:]
    assert sorted(d.depends_on[0] for d in evals) == [1, 2]
    assert all(len(d.depends_on) == 1 for d in evals)
    assert all(d.swept == {} and d.params == {"split": "test"} for d in evals)
    # Upstream jobs always come before the jobs that need them.
    assert all(dep < d.index for d in drafts for dep in d.depends_on)


def test_plan_stage_with_two_upstream_stages():
    spec = make_spec(
        stage("data"),
        stage("model_a", after=["data"], sweep={"grid": {"a": [1, 2]}}),
        stage("model_b", after=["data"], sweep={"grid": {"b": [1, 2, 3]}}),
        stage("compare", after=["model_a", "model_b"]),
    )
    drafts = plan_jobs(spec)
    compares = [d for d in drafts if d.stage == "compare"]
    assert len(compares) == 2 * 3
    a_jobs = [d.index for d in drafts if d.stage == "model_a"]
    b_jobs = [d.index for d in drafts if d.stage == "model_b"]
    # One upstream job per upstream stage, in `after` order; every pairing once.
    assert sorted(tuple(d.depends_on) for d in compares) == sorted(itertools.product(a_jobs, b_jobs))
    assert all(dep < d.index for d in drafts for dep in d.depends_on)


def test_plan_unswept_stage_has_empty_swept_even_with_params():
    spec = make_spec(stage("prep", params={"dataset": "wine", "seed": 3}),
                     stage("train", after=["prep"], params={"lr": 0.1}))
    drafts = plan_jobs(spec)
    assert [d.swept for d in drafts] == [{}, {}]
    assert drafts[1].params == {"lr": 0.1}


def test_plan_with_random_sweep_matches_expand_sweep():
    sweep = {"random": {"lr": {"loguniform": [1e-4, 1e-1]}}, "samples": 5, "seed": 9}
    spec = make_spec(stage("train", sweep=sweep))
    drafts = plan_jobs(spec)
    assert [d.swept for d in drafts] == expand_sweep(spec.stage("train").sweep)
    assert plan_jobs(spec) == drafts  # deterministic


def test_plan_too_many_jobs_is_a_spec_error(monkeypatch):
    monkeypatch.setattr(sweep_module, "MAX_JOBS_PER_EXPERIMENT", 5)
    spec = make_spec(stage("prep"), stage("train", after=["prep"], sweep={"grid": {"a": [1, 2, 3, 4, 5]}}))
    with pytest.raises(SpecError) as info:
        plan_jobs(spec, source="exp.yaml")
    assert str(info.value) == "exp.yaml: stages[train].sweep: expands to more than 5 jobs; split the experiment"


def test_plan_at_the_job_limit_is_fine(monkeypatch):
    monkeypatch.setattr(sweep_module, "MAX_JOBS_PER_EXPERIMENT", 6)
    spec = make_spec(stage("prep"), stage("train", after=["prep"], sweep={"grid": {"a": [1, 2, 3, 4, 5]}}))
    assert len(plan_jobs(spec)) == 6
