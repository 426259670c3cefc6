"""Predicted durations and the order they give (scheduler.policy.durations),
on plain data: what is predicted from which runs, shortest predicted first with
aging, and a reservation from predicted ends for a job that is due."""

from __future__ import annotations

import pytest

from scheduler import policy
from scheduler.policy import Demand, DurationBook, Node, RunningJob, decide

GiB = 2**30


def node(node_id="n1", cpu=8.0, gpus=(), memory=64 * GiB) -> Node:
    return Node(node_id=node_id, cpu_total=cpu, cpu_free=cpu, memory_total=memory, memory_free=memory,
                gpu_free=list(gpus))


def runs(book: DurationBook, user: str, d: Demand, *seconds: float) -> None:
    for s in seconds:
        book.add(user, d.shape(), d.group, s)


# ---------------------------------------------------------------- predictions

def test_the_most_specific_key_with_enough_runs_answers():
    book = DurationBook()
    train = Demand(1, cpu=2, user="ana", group="sweep/train")
    prep = Demand(2, cpu=2, user="ana", group="sweep/prep")
    runs(book, "ana", train, 100, 110, 120)
    runs(book, "ana", prep, 5, 6)  # too few of its own: its user and shape answer
    assert book.predict(train) == 110
    assert "experiment stage, user and shape" in book.basis(train)
    assert book.predict(prep) == pytest.approx(sorted([100, 110, 120, 5, 6])[2])
    assert "user and shape" in book.basis(prep)
    stranger = Demand(3, cpu=1, user="ben")
    assert book.predict(stranger) == 100  # only everything seen: the median of all five
    assert book.basis(stranger).endswith("all jobs")


def test_nothing_run_yet_predicts_the_time_limit_or_nothing():
    book = DurationBook()
    assert book.predict(Demand(1)) is None and book.basis(Demand(1)) == "no runs yet"
    assert book.predict(Demand(1, time_limit=60)) == 60


def test_a_prediction_never_exceeds_the_time_limit_and_the_median_shrugs_off_outliers():
    book = DurationBook()
    d = Demand(1, user="u", group="e/s")
    runs(book, "u", d, 300, 310, 320, 86_400)
    assert book.predict(d) == 315
    assert book.predict(Demand(2, user="u", group="e/s", time_limit=200)) == 200


def test_only_the_latest_runs_count():
    book = DurationBook()
    d = Demand(1, user="u", group="e/s")
    runs(book, "u", d, *[1000.0] * 60)
    runs(book, "u", d, *[10.0] * 50)  # the stage got faster: the old runs fall out
    assert book.predict(d) == 10


# ---------------------------------------------------------------- order

def test_a_shorter_predicted_job_passes_a_longer_one_submitted_just_before():
    book = DurationBook(stretch=4)
    long_job = Demand(1, cpu=4, user="u", group="e/long", seq=1, submitted_at=0)
    short_job = Demand(2, cpu=4, user="u", group="e/short", seq=2, submitted_at=10)
    runs(book, "u", long_job, 3600, 3600, 3600)
    runs(book, "u", short_job, 60, 60, 60)
    decision = decide([long_job, short_job], [node(cpu=4)], now=20, durations=book)
    assert [p.job_id for p in decision.placements] == [2]
    # Without predictions: submission order
    assert [p.job_id for p in decide([long_job, short_job], [node(cpu=4)], now=20).placements] == [1]


def test_an_old_job_ages_past_shorter_ones_once_it_has_waited_its_stretch():
    book = DurationBook(stretch=2)
    old = Demand(1, cpu=4, user="u", group="e/long", seq=1, submitted_at=0)
    runs(book, "u", old, 1000, 1000, 1000)
    # Due at 0 + 2 x 1000: a 60 s job (due at its submission + 120) submitted
    # before 1880 passes it, one submitted after does not.
    for submitted, first in ((1000, 2), (1879, 2), (1881, 1), (5000, 1)):
        new = Demand(2, cpu=4, user="u", group="e/short", seq=2, submitted_at=submitted)
        runs(book, "u", new, 60, 60, 60)
        decision = decide([old, new], [node(cpu=4)], now=submitted + 1, durations=book)
        assert [p.job_id for p in decision.placements] == [first], submitted


def test_no_job_yields_for_more_than_a_week():
    from scheduler.policy.durations import MAX_YIELD

    book = DurationBook(stretch=100)
    month_long = Demand(1, cpu=4, user="u", group="e/long", seq=1, submitted_at=0)
    runs(book, "u", month_long, *[30 * 86400.0] * 3)
    assert book.due_at(month_long) == MAX_YIELD == 7 * 86400
    short = Demand(2, cpu=4, user="u", group="e/short", seq=2, submitted_at=MAX_YIELD + 1)
    runs(book, "u", short, 1, 1, 1)
    assert [p.job_id for p in decide([month_long, short], [node(cpu=4)], now=MAX_YIELD + 2,
                                     durations=book).placements] == [1]


def test_priority_still_comes_before_predictions_and_other_policies_ignore_them():
    book = DurationBook()
    urgent_long = Demand(1, cpu=4, user="u", group="e/long", seq=1, priority=5)
    short = Demand(2, cpu=4, user="u", group="e/short", seq=2)
    runs(book, "u", urgent_long, 9000, 9000, 9000)
    runs(book, "u", short, 5, 5, 5)
    assert [p.job_id for p in decide([urgent_long, short], [node(cpu=4)], durations=book).placements] == [1]
    low = Demand(1, cpu=4, user="u", group="e/long", seq=1)
    for name in ("fifo", "priority", "fair"):
        placed = decide([low, short], [node(cpu=4)], durations=book, policy=name).placements
        assert [p.job_id for p in placed] == [1], name


def test_waiting_reasons_count_jobs_ahead_in_the_predicted_order():
    book = DurationBook(stretch=4)
    jobs = [Demand(1, cpu=4, user="u", group="e/long", seq=1), Demand(2, cpu=4, user="u", group="e/mid", seq=2),
            Demand(3, cpu=4, user="u", group="e/short", seq=3)]
    for d, s in zip(jobs, (5000, 500, 50)):
        runs(book, "u", d, s, s, s)
    busy = node(cpu=4)
    busy.cpu_free = 0
    waiting = decide(jobs, [busy], durations=book).waiting
    assert "ahead" not in waiting[3] and "1 job ahead" in waiting[2] and "2 jobs ahead" in waiting[1]


# ---------------------------------------------------------------- reservations for due jobs

def _two_gpu_cluster_with_runners(predicted: float | None) -> tuple[list[Node], list[RunningJob]]:
    """Two nodes of 2 GPUs; one GPU busy on each, ending (by prediction) at 100 and 5000."""
    nodes = [node("a", cpu=16, gpus=[0.0, 1.0]), node("b", cpu=16, gpus=[0.0, 1.0])]
    running = [RunningJob(10, "u", cpu=1, gpu=1, node_id="a", gpu_indices=(0,), started_at=0,
                          predicted=None if predicted is None else predicted),
               RunningJob(11, "u", cpu=1, gpu=1, node_id="b", gpu_indices=(0,), started_at=0,
                          predicted=None if predicted is None else 50 * predicted)]
    for n in nodes:
        n.cpu_free -= 1
    return nodes, running


def test_a_due_multi_gpu_job_gets_a_reservation_from_predicted_ends():
    book = DurationBook(stretch=1, reserve_after=0)
    big = Demand(1, cpu=2, gpu=2, user="u", group="e/big", seq=1, submitted_at=0)
    small = Demand(2, cpu=1, gpu=1, user="u", group="e/small", seq=2, submitted_at=0)
    runs(book, "u", big, 600, 600, 600)
    runs(book, "u", small, 1000, 1000, 1000)  # would run past the big job's reserved start
    nodes, running = _two_gpu_cluster_with_runners(predicted=100)
    # Not due yet (waited 50 of its 600 s): the small job takes a free GPU
    early = decide([big, small], nodes, running=running, now=50, durations=book)
    assert [p.job_id for p in early.placements] == [2]
    # Due: node a is reserved for it from job 10's predicted end; the small job goes to b
    due = decide([big, small], nodes, running=running, now=700, durations=book)
    assert [(p.job_id, p.node_id) for p in due.placements] == [(2, "b")]
    # A second small job has nowhere but the reserved node: it waits, naming the reservation
    other = Demand(3, cpu=1, gpu=1, user="u", group="e/small", seq=3, submitted_at=0)
    due = decide([big, small, other], nodes, running=running, now=700, durations=book)
    assert [p.job_id for p in due.placements] == [2]
    assert "would delay job 1, which has node a reserved" in due.waiting[3]


def test_reservations_from_predictions_are_off_unless_asked_and_wait_reserve_after():
    big = Demand(1, cpu=2, gpu=2, user="u", group="e/big", seq=1, submitted_at=0)
    small = Demand(2, cpu=1, gpu=1, user="u", group="e/small", seq=2, submitted_at=0)
    other = Demand(3, cpu=1, gpu=1, user="u", group="e/small", seq=3, submitted_at=0)
    for book in (DurationBook(stretch=1), DurationBook(stretch=1, reserve_after=3600)):
        runs(book, "u", big, 600, 600, 600)
        runs(book, "u", small, 1000, 1000, 1000)
        nodes, running = _two_gpu_cluster_with_runners(predicted=100)
        placed = decide([big, small, other], nodes, running=running, now=700, durations=book).placements
        assert sorted(p.job_id for p in placed) == [2, 3]  # nothing held back for job 1
    assert book.owed_reservation(big, 3600) and not book.owed_reservation(big, 3599)


def test_without_predicted_ends_a_due_job_reserves_nothing():
    book = DurationBook(stretch=1, reserve_after=0)
    big = Demand(1, cpu=2, gpu=2, user="u", group="e/big", seq=1, submitted_at=0)
    small = [Demand(k, cpu=1, gpu=1, user="u", group="e/small", seq=k, submitted_at=0) for k in (2, 3)]
    runs(book, "u", big, 600, 600, 600)
    nodes, running = _two_gpu_cluster_with_runners(predicted=None)
    placed = decide([big, *small], nodes, running=running, now=700, durations=book).placements
    assert sorted(p.job_id for p in placed) == [2, 3]  # as before predictions: nothing known ends


def test_a_short_job_predicted_to_end_before_the_reservation_still_backfills_there():
    book = DurationBook(stretch=1, reserve_after=0)
    big = Demand(1, cpu=2, gpu=2, user="u", group="e/big", seq=1, submitted_at=0)
    quick = [Demand(k, cpu=1, gpu=1, user="u", group="e/quick", seq=k, submitted_at=0) for k in (2, 3)]
    runs(book, "u", big, 600, 600, 600)
    runs(book, "u", quick[0], 10, 10, 10)
    nodes, running = _two_gpu_cluster_with_runners(predicted=1000)  # job 10 predicted to end at 1000
    placed = decide([big, *quick], nodes, running=running, now=700, durations=book).placements
    assert sorted(p.job_id for p in placed) == [2, 3]  # both done (by prediction) before 1000


def test_the_stretch_must_not_be_negative():
    with pytest.raises(ValueError):
        DurationBook(stretch=-1)
    assert policy.DEFAULT_STRETCH > 0
