"""Early stopping rules (scheduler.early_stop) on plain data: ASHA keeps about
1/eta of the jobs at each rung of a synthetic curve family and never stops the
best; hyperband's brackets and the median rule; curves from metrics records."""

from __future__ import annotations

import math
import random

from scheduler.early_stop import Point, Rule, judge, points, promotions, rung_of, to_stop


def family(n: int, seed: int = 0) -> list[float]:
    """Each job's final quality; its curve approaches it as 1 - e^(-step/8), a little noisy."""
    rng = random.Random(seed)
    return [rng.uniform(0.5, 1.0) for _ in range(n)]


def replay(rule: Rule, quality: list[float], parallel: int = 4, seed: int = 1) -> tuple[dict[int, float], set[int]]:
    """Run the jobs ``parallel`` at a time, one step per time unit, stopping what
    the rule says after each step; returns {job: last step reached} and the stopped."""
    rng = random.Random(seed)
    curves: dict[int, list[Point]] = {}
    reached: dict[int, float] = {}
    stopped: set[int] = set()
    waiting = list(range(len(quality)))
    running: list[int] = []
    t = 0.0
    while waiting or running:
        while waiting and len(running) < parallel:
            job = waiting.pop(0)
            running.append(job)
            curves[job] = []
        t += 1
        for job in running:
            step = len(curves[job]) + 1
            value = quality[job] * (1 - math.exp(-step / 8)) + rng.gauss(0, 0.003)
            curves[job].append(Point(step, value, t + job * 1e-6))
            reached[job] = step
        for job in to_stop(rule, curves, running):
            stopped.add(job)
            running.remove(job)
        for job in [j for j in running if reached[j] >= rule.max_t]:
            running.remove(job)
    return reached, stopped


def test_asha_keeps_about_one_in_eta_at_each_rung_and_never_the_best():
    rule = Rule("asha", "acc", "max", grace=1, eta=3, max_t=81)
    assert rule.rungs() == [1, 3, 9, 27]
    shares = []
    for seed in range(3):
        quality = family(81, seed)
        reached, stopped = replay(rule, quality, seed=seed)
        shares.append([sum(1 for s in reached.values() if s > rung) / len(quality) for rung in rule.rungs()])
        best = max(range(len(quality)), key=quality.__getitem__)
        assert best not in stopped and reached[best] == 81
        finished = [j for j, s in reached.items() if s >= 81]
        assert sum(quality[j] for j in finished) / len(finished) > sum(quality) / len(quality) + 0.1
    mean = [sum(s[k] for s in shares) / len(shares) for k in range(4)]
    # 1/3 of the jobs pass the first rung, 1/9 the second; deeper rungs hold few
    # jobs, and the first to reach one passes it for want of rivals, so a few more
    assert 0.8 / 3 <= mean[0] <= 1.25 / 3 and 0.8 / 9 <= mean[1] <= 1.6 / 9, mean
    assert mean[0] > mean[1] >= mean[2] >= mean[3] and mean[3] < 0.12, mean


def test_min_mode_stops_the_high_ones():
    rule = Rule("asha", "loss", "min", grace=2, eta=2, max_t=8)
    curves = {1: [Point(2, 0.5, 1.0)], 2: [Point(2, 0.9, 2.0)], 3: [Point(2, 0.1, 3.0)]}
    assert set(to_stop(rule, curves, [2, 3])) == {2}
    assert "asha: loss 0.9 at rung 1/2 (step 2)" in to_stop(rule, curves, [2])[2]


def test_the_first_to_reach_a_rung_goes_on_and_a_later_one_is_judged_against_it():
    rule = Rule("asha", "acc", "max", grace=1, eta=3, max_t=9)
    early = {1: [Point(1, 0.2, 1.0)]}
    assert to_stop(rule, early, [1]) == {}
    both = {1: [Point(1, 0.9, 1.0)], 2: [Point(1, 0.2, 2.0)]}
    assert set(to_stop(rule, both, [1, 2])) == {2}  # 1 was there first and stays


def test_hyperband_spreads_jobs_over_brackets_with_later_first_rungs():
    rule = Rule("hyperband", "acc", "max", grace=1, eta=3, max_t=27)
    assert rule.brackets == 3 and rule.rungs(0) == [1, 3, 9] and rule.rungs(2) == [9]
    # Jobs 0 and 3 share bracket 0; job 1 is alone in bracket 1: nobody to lose to
    curves = {0: [Point(1, 0.9, 1.0)], 1: [Point(1, 0.1, 2.0), Point(3, 0.1, 3.0)], 2: [],
              3: [Point(1, 0.1, 4.0)]}
    assert set(to_stop(rule, curves, [1, 3])) == {3}
    assert rung_of(rule, curves[1], position=1) == "rung 1/2"


def test_the_median_rule_needs_three_others_and_compares_running_means():
    rule = Rule("median", "acc", "max", grace=2)
    others = {k: [Point(1, 0.5, 0), Point(2, 0.7, 0), Point(3, 0.8, 0)] for k in (1, 2, 3)}
    bad = [Point(1, 0.1, 0), Point(2, 0.2, 0)]
    good = [Point(1, 0.6, 0), Point(2, 0.9, 0)]
    assert set(to_stop(rule, {**others, 9: bad}, [9])) == {9}
    assert to_stop(rule, {**others, 9: good}, [9]) == {}
    assert to_stop(rule, {1: others[1], 9: bad}, [9]) == {}  # one other job is not enough


def test_curves_come_from_metrics_records_with_or_without_steps():
    records = [{"time": 1, "step": 5, "acc": 0.5}, {"time": 2, "acc": "n/a"}, {"time": 3, "acc": float("nan")},
               {"time": 4, "acc": 0.7}, {"time": 5, "step": True, "acc": 0.8}]
    assert points(records, "acc") == [Point(5, 0.5, 1), Point(4, 0.7, 4), Point(5, 0.8, 5)]


# --- pause mode: ASHA by promotion ------------------------------------------------


def replay_paused(rule: Rule, quality: list[float], parallel: int = 4, seed: int = 1):
    """Pause-mode replay: a paused job frees its slot; promoted jobs resume where
    they paused (before new jobs start, as the queue orders them: older first).
    Returns ({job: last step}, {job: final state}, [(job, rung, rank, n) at each promotion])."""
    rng = random.Random(seed)
    curves: dict[int, list[Point]] = {}
    reached: dict[int, float] = {}
    state: dict[int, str] = {}
    resumed_at: dict[int, float] = {}
    promoted_log = []
    waiting = list(range(len(quality)))
    running: list[int] = []
    t = 0.0
    while True:
        while waiting and len(running) < parallel:
            job = waiting.pop(0)
            running.append(job)
            curves.setdefault(job, [])
            state[job] = "running"
        t += 1
        for job in running:
            step = (curves[job][-1].step if curves[job] else 0) + 1
            value = quality[job] * (1 - math.exp(-step / 8)) + rng.gauss(0, 0.003)
            curves[job].append(Point(step, value, t + job * 1e-6))
            reached[job] = step
        verdicts = judge(rule, curves, running, resumed_at)
        assert not verdicts.stop
        for job in verdicts.pause:
            running.remove(job)
            state[job] = "paused"
            resumed_at[job] = reached[job]
        for job in [j for j in running if reached[j] >= rule.max_t]:
            running.remove(job)
            state[job] = "succeeded"
        paused = [j for j, s in state.items() if s == "paused"]
        idle = not waiting and not running
        promote, give_up = promotions(rule, curves, paused, idle)
        for job in promote:
            state[job] = "pending"
            waiting.insert(0, job)
            promoted_log.append(job)
        for job in give_up:
            state[job] = "pruned"
        if idle and not promote and not give_up and not paused:
            return reached, state, promoted_log


def test_pause_mode_promotes_the_top_of_each_rung_and_finishes_the_best():
    rule = Rule("asha", "acc", "max", grace=1, eta=3, max_t=27, pause=True)
    for seed in range(3):
        quality = family(27, seed)
        reached, state, promoted = replay_paused(rule, quality, seed=seed)
        best = max(range(len(quality)), key=quality.__getitem__)
        assert state[best] == "succeeded" and reached[best] == 27
        assert set(state.values()) <= {"succeeded", "pruned"}  # nothing left paused
        # A paused job never ran past its rung: every job stopped at a rung or ran to the end
        assert all(reached[j] in (1, 3, 9, 27) for j in state), sorted(set(reached.values()))
        # About 1/eta go on from each rung (ASHA's floor(n/eta), plus the end game's last promotions)
        past_first = sum(1 for s in reached.values() if s > 1)
        assert 27 // 3 <= past_first <= 27 // 3 + 2, past_first
        # floor(3/3) of rung 9's jobs finish; asynchronous promotion (a job promoted
        # early may later fall out of its rung's top) can finish a few more
        assert 1 <= sum(1 for s in state.values() if s == "succeeded") <= 27 // 9


def test_a_job_at_a_rung_goes_on_only_when_already_in_the_top_floor_n_over_eta():
    rule = Rule("asha", "acc", "max", grace=1, eta=2, max_t=4, pause=True)
    first = {1: [Point(1, 0.9, 1.0)]}
    assert set(judge(rule, first, [1]).pause) == {1}  # alone: floor(1/2) = 0 go on
    two = {1: [Point(1, 0.1, 1.0)], 2: [Point(1, 0.9, 2.0)]}
    verdicts = judge(rule, two, [2])
    assert verdicts.pause == {} and verdicts.cleared == {2: 1.0}  # the better of two: top 1 of floor(2/2)
    worse_later = {1: [Point(1, 0.9, 1.0)], 2: [Point(1, 0.1, 2.0)]}
    assert "not (yet) in the top 1/2 of the 2 job(s)" in judge(rule, worse_later, [2]).pause[2]
    # Judged against those there before it: a better job arriving later does not pause it after the fact
    assert judge(rule, {**two, 3: [Point(1, 0.95, 3.0)]}, [2]).pause == {}
    # Resumed past rung 1 (its earlier attempt reported step 1): judged again only at rung 2
    assert judge(rule, {1: [Point(1, 0.1, 1.0)]}, [1], settled={1: 1.0}).cleared == {1: 1.0}


def test_promotion_waits_for_rivals_then_the_idle_stage_finishes_its_best_and_gives_up_the_rest():
    rule = Rule("asha", "acc", "max", grace=1, eta=3, max_t=9, pause=True)
    curves = {1: [Point(1, 0.5, 1.0)], 2: [Point(1, 0.7, 2.0)]}
    assert promotions(rule, curves, [1, 2], idle=False) == ({}, {})  # floor(2/3) = 0: wait for a third
    curves[3] = [Point(1, 0.6, 3.0)]
    promote, give_up = promotions(rule, curves, [1, 2, 3], idle=False)
    assert set(promote) == {2} and not give_up and "top 1 of the 3 job(s)" in promote[2]
    # Job 2 reached rung 2 alone and paused; nothing else is left to run
    curves[2] += [Point(2, 0.8, 4.0), Point(3, 0.85, 5.0)]
    promote, give_up = promotions(rule, curves, [1, 2, 3], idle=True)
    assert set(promote) == {2} and "nothing else of the stage is left" in promote[2]
    # Job 2 finished: the rest stayed below the top 1/3 of rung 1
    promote, give_up = promotions(rule, curves, [1, 3], idle=True)
    assert promote == {} and set(give_up) == {1, 3} and "never promoted" in give_up[1]


def test_every_bracket_s_rungs_are_where_report_waits():
    assert Rule("hyperband", "acc", "max", grace=1, eta=3, max_t=27).all_rungs() == [1, 3, 9]
    assert Rule("asha", "acc", "max", grace=2, eta=2, max_t=16).all_rungs() == [2, 4, 8]
    assert Rule("median", "acc", "max", grace=2).all_rungs() == []


def test_a_rung_is_judged_once_so_a_record_read_late_does_not_stop_a_job_that_went_on():
    """Job 2 was cleared at rung 1 (nobody there before it, as read then).  An
    earlier, better record of job 1 read late must not stop or pause it after
    the fact: its rung was settled; it is judged again at rung 2."""
    for pause in (False, True):
        rule = Rule("asha", "acc", "max", grace=1, eta=2, max_t=4, pause=pause)
        late = {1: [Point(1, 0.9, 1.0)], 2: [Point(1, 0.1, 2.0), Point(1.5, 0.15, 3.0)]}
        fresh = judge(rule, late, [2])
        assert 2 in (fresh.stop | fresh.pause)  # unsettled, it would lose at rung 1
        settled = judge(rule, late, [2], settled={2: 1.0})
        assert settled.stop == settled.pause == {} and settled.cleared == {2: 1.5}
