"""Right-sizing advice: requests against recorded usage, as plain numbers."""

from __future__ import annotations

from scheduler.advice import advise

GiB = 2**30
MiB = 2**20


def gpu_usage(peak: int, total: int = 16 * GiB) -> dict:
    return {"gpu_usage": {"peak_memory": peak, "memory_total": total}}


def test_half_a_gpu_that_peaked_at_an_eighth_would_pack_twice_as_many():
    assert advise({"gpu": 0.5}, gpu_usage(int(0.12 * 16 * GiB))) == [
        "asked 0.5 gpu, peak 0.12 of the card's memory: 0.25 would pack twice as many"]


def test_a_share_that_fits_gets_no_advice():
    assert advise({"gpu": 0.25}, gpu_usage(3 * GiB)) == []


def test_a_job_over_its_share_is_told_to_ask_more():
    assert advise({"gpu": 0.25}, gpu_usage(5 * GiB)) == [
        "asked 0.25 gpu, peak 0.31 of the card's memory: ask 0.5 (it ran over its share)"]


def test_a_whole_card_barely_used():
    assert advise({"gpu": 1}, gpu_usage(1 * GiB)) == [
        "asked 1 gpu, peak 0.06 of the card's memory: 0.125 would pack 8x as many"]


def test_gpu_memory_request():
    assert advise({"gpu_memory": 8 * GiB}, gpu_usage(1 * GiB, total=32 * GiB)) == [
        "asked 8.0GiB gpu_memory, peak 1.0GiB: 2.0GiB would pack 4x as many"]


def test_memory_request_far_above_the_peak_above_the_workers_baseline():
    usage = {"peak_rss": 700 * MiB, "rss_baseline": 200 * MiB}
    assert advise({"memory": 4 * GiB}, usage) == ["asked 4.0GiB memory, peak 500.0MiB: 1.0GiB would pack 4x as many"]


def test_cpu_mostly_idle_and_cpu_oversubscribed():
    idle = {"cpu_time": 8.0, "started_at": 0.0, "ended_at": 20.0}
    assert advise({"cpu": 4}, idle) == ["asked 4 cpu, used 0.40 cores on average: 0.5 would pack 8x as many"]
    busy = {"cpu_time": 40.0, "started_at": 0.0, "ended_at": 20.0}
    assert advise({"cpu": 0.5}, busy) == [
        "asked 0.5 cpu, used 2.0 cores on average: it competes with its neighbours; ask 2"]


def test_nothing_recorded_no_advice():
    assert advise({"cpu": 4, "gpu": 0.5, "memory": GiB}, {}) == []
    assert advise({"cpu": 4}, {"cpu_time": 0.1, "started_at": 0.0, "ended_at": 1.0}) == []  # too short to judge
