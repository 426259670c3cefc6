"""Model-based search whose state is the database (scheduler.search): the
asking on plain data, the spec's rules, and the loop continuing a search from
the store, through a restart, without repeating a trial."""

from __future__ import annotations

import math
import textwrap

import pytest

from scheduler import search
from scheduler.config import Settings
from scheduler.errors import SpecError
from scheduler.fake_backend import FakeBackend, make_nodes
from scheduler.loop import Scheduler
from scheduler.spec import Sweep, load_spec
from scheduler.states import AttemptState, JobState
from scheduler.store import Store

from test_store import NOW

SPACE = {"x": {"uniform": [-5.0, 10.0]}, "y": {"uniform": [0.0, 15.0]}}


def branin(x: float, y: float) -> float:
    """The Branin function: minimum 0.397887 at three points."""
    return ((y - 5.1 / (4 * math.pi**2) * x**2 + 5 / math.pi * x - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10)


def run_study(algo: str, seed: int, trials: int, parallel: int = 1) -> float:
    """Ask and tell through scheduler.search alone, as the loop does, parallel trials at a time."""
    config = {"algo": algo, "seed": seed, "mode": "min", "space": SPACE}
    history: list[search.Trial] = []
    while len(history) < trials:
        for point in search.suggest(config, history, min(parallel, trials - len(history))):
            history.append(search.Trial(point, "complete", branin(**point)))
    return min(t.value for t in history)


def test_tpe_finds_a_better_point_than_random_in_the_same_number_of_trials():
    seeds = range(3)
    tpe = [run_study("tpe", s, 40) for s in seeds]
    rand = [run_study("random", s, 40) for s in seeds]
    assert sum(tpe) / 3 < sum(rand) / 3, (tpe, rand)
    assert min(tpe) < 1.0


def test_the_same_history_asks_for_the_same_point_and_a_longer_one_for_a_new_one():
    config = {"algo": "tpe", "seed": 7, "mode": "min", "space": SPACE}
    history = [search.Trial(p, "complete", branin(**p)) for p in search.suggest(config, [], 12)]
    first = search.suggest(config, history, 1)
    assert search.suggest(config, history, 1) == first  # a scheduler killed before storing it asks again
    running = history + [search.Trial(first[0], "running")]
    assert search.suggest(config, running, 1) != first  # stored: the next is another


def test_trials_in_flight_and_failed_ones_are_in_the_study():
    config = {"algo": "random", "seed": 1, "mode": "max", "space": {"k": {"choice": ["a", "b", "c"]},
                                                                     "n": {"randint": [1, 4]}}}
    history = [search.Trial({"k": "a", "n": 1}, "running"), search.Trial({"k": "b", "n": 3}, "failed"),
               search.Trial({"k": "c", "n": 2}, "complete", None)]  # succeeded without the metric
    (point,) = search.suggest(config, history, 1)
    assert point["k"] in ("a", "b", "c") and point["n"] in (1, 2, 3)
    assert [search.trial_state(s) for s in ("succeeded", "pending", "blocked", "running", "failed", "cancelled",
                                            "pruned")] == \
        ["complete", "running", "running", "running", "failed", "failed", "pruned"]
    history.append(search.Trial({"k": "c", "n": 3}, "pruned", 0.2))
    assert search.suggest(config, history, 1)


def test_the_spec_takes_a_search_and_says_what_is_wrong_with_one(tmp_path):
    sweep = Sweep.model_validate({"search": {"algo": "tpe", "samples": 10, "parallel": 3}, "space": SPACE})
    assert len(search.first_trials(sweep)) == 3
    for bad, message in [
        ({"search": {"samples": 5}}, "search and space go together"),
        ({"search": {"samples": 5}, "space": SPACE, "grid": {"a": [1]}}, "not with grid"),
        ({"search": {"samples": 5, "algo": "hill"}, "space": SPACE}, "tpe"),
    ]:
        with pytest.raises(ValueError, match=message):
            Sweep.model_validate(bad)
    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent("""
        experiment: s
        stages:
          - {name: t, command: "echo {x}", sweep: {search: {samples: 4}, space: {x: {uniform: [0, 1]}}}}
          - {name: after, command: "true", after: [t]}
    """))
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    text = str(err.value)
    assert "stages[t].sweep.search: a search needs the experiment's metric and mode" in text
    assert "a search stage must be the last: after" in text


SEARCH = """
experiment: tune
metric: score
mode: max
stages:
  - name: prep
    command: "true"
  - name: fit
    command: "echo {x}"
    after: [prep]
    params: {fixed: 1}
    sweep: {search: {algo: tpe, samples: 7, parallel: 2, seed: 3}, space: {x: {uniform: [0, 1]}}}
"""


def _finish(backend: FakeBackend, sched: Scheduler, score=lambda params: params.get("x", 0.0)) -> int:
    done = 0
    for run in list(sched.running.values()):
        metrics = {"score": score(run.job.params)} if run.job.stage == "fit" else {}
        backend.end(run.handle, AttemptState.SUCCEEDED, {"outcome": "succeeded", "metrics": metrics,
                                                          "artifacts": [], "exit_code": 0})
        done += 1
    return done


def test_the_loop_asks_for_trials_as_they_end_until_samples_and_a_restart_repeats_none(tmp_path):
    home = tmp_path / "home"
    spec = tmp_path / "tune.yaml"
    spec.write_text(SEARCH)
    store, backend = Store(home), FakeBackend(make_nodes(1, cpu=8, gpu=0))
    sched = Scheduler(store, backend, Settings(home=str(home), scheduler={"pack_seconds": 0}))
    spec_obj, raw = load_spec(spec)
    from scheduler.sweep import plan_jobs, searches_of

    drafts = plan_jobs(spec_obj, str(spec))
    assert [d.stage for d in drafts] == ["prep", "fit", "fit"]
    experiment_id, ids = store.submit(name="tune", user="u", queue="default", priority=0, spec_path=str(spec),
                                      spec=raw, package=None, metric="score", mode="max", drafts=drafts,
                                      stages={s.name: s for s in spec_obj.stages}, now=NOW,
                                      searches=searches_of(spec_obj))
    now = NOW
    for step in range(12):  # prep, then trials two at a time, each asked only as one ends
        sched.tick(now)
        if step == 2:
            # Two trials running, four asked: the scheduler dies (nothing of it is
            # used again); a new one adopts what runs and carries the search on
            assert len(store.jobs_of_experiment(experiment_id)) == 1 + 4 and len(sched.running) == 2
            sched = Scheduler(store, backend, Settings(home=str(home), scheduler={"pack_seconds": 0}))
            sched.reconcile(now)
        _finish(backend, sched)
        now += 10
        sched._dirty = True
    fits = [j for j in store.jobs_of_experiment(experiment_id) if j.stage == "fit"]
    assert len(fits) == 7 and all(j.state is JobState.SUCCEEDED for j in fits)
    assert len({j.params["x"] for j in fits}) == 7  # no trial repeated
    assert all(j.params["fixed"] == 1 for j in fits), [j.params for j in fits]
    assert all(store.job(j.id).depends_on == [ids[0]] for j in fits), [store.job(j.id).depends_on for j in fits]
    assert not store.open_searches()
    # `labq sweep extend tune --samples 2`: two more, learnt from the seven
    from scheduler import api

    api.extend_search(store, "tune", 2, Settings(home=str(home)), user="u")
    for _ in range(4):
        sched.tick(now)
        _finish(backend, sched)
        now += 10
        sched._dirty = True
    assert len([j for j in store.jobs_of_experiment(experiment_id) if j.stage == "fit"]) == 9
    store.close()


def test_a_budget_stops_the_search_asking_and_status_says_what_is_spent(tmp_path):
    from scheduler import api, render
    from scheduler.sweep import plan_jobs, searches_of

    home = tmp_path / "home"
    spec = tmp_path / "tune.yaml"
    # Each trial holds 1 cpu for 60 s: a budget of 0.1 cpu-hours (360 s) buys six
    spec.write_text(SEARCH.replace("search: {algo: tpe, samples: 7, parallel: 2, seed: 3}",
                                   "search: {algo: random, samples: 50, parallel: 2, budget: {cpu_hours: 0.1}}"))
    store, backend = Store(home), FakeBackend(make_nodes(1, cpu=8, gpu=0))
    settings = Settings(home=str(home), scheduler={"pack_seconds": 0})
    sched = Scheduler(store, backend, settings)
    spec_obj, raw = load_spec(spec)
    experiment_id, _ = store.submit(name="tune", user="u", queue="default", priority=0, spec_path=str(spec),
                                    spec=raw, package=None, metric="score", mode="max",
                                    drafts=plan_jobs(spec_obj, str(spec)), stages={s.name: s for s in spec_obj.stages},
                                    now=NOW, searches=searches_of(spec_obj))
    now = NOW
    for _ in range(12):
        sched.tick(now)
        now += 60
        _finish(backend, sched)
        sched._dirty = True
    fits = [j for j in store.jobs_of_experiment(experiment_id) if j.stage == "fit"]
    assert 6 <= len(fits) <= 7 and all(j.state.is_terminal() for j in fits)  # the pair in flight at 360 s ends
    assert not store.open_searches()  # closed: `labq run` stops waiting
    found = api.status(store, "tune", api.EstimateSettings(3600.0), now=now)
    (line,) = render.search_lines(found.searches)
    assert line.startswith(f"search fit (random): {len(fits)} of ") and "budget cpu_hours" in line
    assert "no more trials" in line, line
    store.close()


def test_a_multi_objective_search_asks_for_a_front_and_results_mark_it(tmp_path):
    from scheduler import api, render
    from scheduler.sweep import plan_jobs, searches_of

    home = tmp_path / "home"
    spec = tmp_path / "mo.yaml"
    spec.write_text(SEARCH.replace("metric: score\nmode: max\n", "").replace(
        "search: {algo: tpe, samples: 7, parallel: 2, seed: 3}",
        "search: {algo: tpe, samples: 8, parallel: 2, seed: 3, objectives: {score: max, cost: min}}"))
    spec_obj, raw = load_spec(spec)
    store, backend = Store(home), FakeBackend(make_nodes(1, cpu=8, gpu=0))
    sched = Scheduler(store, backend, Settings(home=str(home), scheduler={"pack_seconds": 0}))
    experiment_id, _ = store.submit(name="mo", user="u", queue="default", priority=0, spec_path=str(spec), spec=raw,
                                    package=None, metric=None, mode=None, drafts=plan_jobs(spec_obj, str(spec)),
                                    stages={s.name: s for s in spec_obj.stages}, now=NOW,
                                    searches=searches_of(spec_obj))
    now = NOW

    def end_all() -> None:  # score rises with x; cost is least at x = 0.5: a front above 0.5
        for run in list(sched.running.values()):
            x = run.job.params.get("x", 0.0)
            metrics = {"score": x, "cost": (x - 0.5) ** 2} if run.job.stage == "fit" else {}
            backend.end(run.handle, AttemptState.SUCCEEDED, {"outcome": "succeeded", "metrics": metrics,
                                                              "artifacts": [], "exit_code": 0})

    for _ in range(8):
        sched.tick(now)
        end_all()
        now += 10
        sched._dirty = True
    fits = [j for j in store.jobs_of_experiment(experiment_id) if j.stage == "fit"]
    assert len(fits) == 8 and all(j.state is JobState.SUCCEEDED for j in fits)
    res = api.results(store, "mo")
    xs = {j.id: j.params["x"] for j in fits}
    beaten = {j for j, x in xs.items()
              if any(y >= x and (y - 0.5) ** 2 <= (x - 0.5) ** 2 and y != x for y in xs.values())}
    assert {r["job_id"] for r in res.rows if r.get("pareto")} == set(xs) - beaten
    assert beaten and set(xs) - beaten  # some on the front, some off it
    with render.console.capture() as captured:
        render.console.print(render.results_table(res))
    assert captured.get().count("◆") == len(xs) - len(beaten)
    store.close()
