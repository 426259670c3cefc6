"""Parsing and formatting of the human units a spec uses (memory sizes, durations)."""

from __future__ import annotations

import math

import pytest

from scheduler.units import format_bytes, format_seconds, parse_duration, parse_memory

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


# ------------------------------------------------------------------ parse_memory

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1GiB", GiB),
        ("512MiB", 512 * MiB),
        ("256MiB", 256 * MiB),
        ("2G", 2 * 1000**3),
        ("2GB", 2 * 1000**3),
        ("1k", 1000),
        ("1Ki", KiB),
        ("1KiB", KiB),
        ("1TiB", TiB),
        ("1tb", 1000**4),
        ("0.5KiB", 512),
        ("1.5GiB", int(1.5 * GiB)),
        (".5MiB", MiB // 2),
        ("100", 100),
        ("100B", 100),
        ("  4 GiB  ", 4 * GiB),  # whitespace around and between
        ("4gib", 4 * GiB),  # units are case-insensitive
        ("0", 0),
        (0, 0),
        (1024, 1024),
        (1e9, 1_000_000_000),
        (2.7, 2),  # plain numbers are bytes, truncated
    ],
)
def test_parse_memory_good(value, expected):
    result = parse_memory(value)
    assert result == expected
    assert isinstance(result, int)


@pytest.mark.parametrize(
    "value",
    ["12 parsecs", "lots", "", "GiB", "-1GiB", "1e9", "1.2.3GiB", "1 G i B", "1GiBs", None, -1, -0.5],
)
def test_parse_memory_bad(value):
    with pytest.raises(ValueError, match="expected a"):
        parse_memory(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_memory_rejects_booleans(value):
    with pytest.raises(ValueError, match="expected a size"):
        parse_memory(value)


def test_parse_memory_error_names_the_value():
    with pytest.raises(ValueError, match=r"512MiB or 2GiB, got '12 parsecs'"):
        parse_memory("12 parsecs")


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_parse_memory_infinite_is_a_value_error(value):
    # int(inf) would raise OverflowError, which spec validation would not catch.
    with pytest.raises(ValueError, match="expected a non-negative size such as 512MiB or 2GiB"):
        parse_memory(value)


def test_parse_memory_nan_says_what_is_expected():
    with pytest.raises(ValueError, match="expected a"):
        parse_memory(math.nan)


# ------------------------------------------------------------------ parse_duration

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", 90.0),
        ("10m", 600.0),
        ("5m", 300.0),
        ("10min", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        (".5m", 30.0),
        ("45", 45.0),
        (" 10 m ", 600.0),
        ("10M", 600.0),  # lower-cased before matching: minutes, not months
        ("2H", 7200.0),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_good(value, expected):
    result = parse_duration(value)
    assert result == expected
    assert isinstance(result, float)


@pytest.mark.parametrize("value", ["soon", "", "10 minutes", "2hr", "1w", "10ms", "-5s", "s", "1:30:00", None])
def test_parse_duration_bad_format(value):
    with pytest.raises(ValueError, match=r"expected a duration such as 90s, 10m or 2h"):
        parse_duration(value)


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, "0s", "0", "0m"])
def test_parse_duration_must_be_positive(value):
    with pytest.raises(ValueError, match="expected a positive duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_booleans(value):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_parse_duration_rejects_non_finite(value):
    # nan <= 0 is False: without an explicit check nan would pass as a duration.
    with pytest.raises(ValueError, match="expected a positive duration"):
        parse_duration(value)


# ------------------------------------------------------------------ format_bytes

@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (None, "-"),
        (0, "0B"),
        (1, "1B"),
        (1023, "1023B"),
        (1024, "1.0KiB"),
        (1536, "1.5KiB"),
        (MiB, "1.0MiB"),
        (256 * MiB, "256.0MiB"),
        (GiB, "1.0GiB"),
        (int(2.5 * GiB), "2.5GiB"),
        (TiB, "1.0TiB"),
        (1024 * TiB, "1024.0TiB"),  # TiB is the largest unit
        (-2048, "-2.0KiB"),
    ],
)
def test_format_bytes(n, expected):
    assert format_bytes(n) == expected


def test_format_bytes_round_trips_parse_memory():
    assert format_bytes(parse_memory("1GiB")) == "1.0GiB"
    assert format_bytes(parse_memory("512MiB")) == "512.0MiB"


# ------------------------------------------------------------------ format_seconds

@pytest.mark.parametrize(
    ("s", "expected"),
    [
        (None, "-"),
        (0, "0.0s"),
        (5, "5.0s"),
        (12.34, "12.3s"),
        (59.9, "59.9s"),
        (60, "1m00s"),
        (90, "1m30s"),
        (600, "10m00s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (3661, "1h01m"),
        (7200, "2h00m"),
        (86400 * 2, "48h00m"),  # no day unit: hours keep counting
    ],
)
def test_format_seconds(s, expected):
    assert format_seconds(s) == expected


def test_format_seconds_round_trips_parse_duration():
    assert format_seconds(parse_duration("90s")) == "1m30s"
    assert format_seconds(parse_duration("10m")) == "10m00s"
    assert format_seconds(parse_duration("2h")) == "2h00m"
