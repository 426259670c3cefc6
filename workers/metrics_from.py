"""Metrics read from a script that knows nothing of labq (a stage's ``metrics_from``).

``{stdout: {name: regex}}``: every match of ``regex`` in the job's output is one
step of metric ``name`` (the first group, read as a number); the last match is
the final value, as SageMaker's ``metric_definitions`` read a log.
``{json: path}``: a JSON file the script writes in its working directory: an
object of final metrics, or a list of objects, one per step.

Pure functions over text, so the spec check and the worker share them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

# A line longer than this is searched in its first part only: a regex must not
# spend minutes on a progress bar printed without newlines.
MAX_LINE_CHARS = 64 * 1024


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot read a metric, or None."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return f"not a valid regular expression ({exc})"
    if compiled.groups < 1:
        return "expected a regular expression with a group around the number, such as 'loss:\\s*([0-9.eE+-]+)'"
    return None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _matches(line: str, compiled: dict[str, re.Pattern]) -> Iterator[tuple[str, float]]:
    """(metric, value) of each match in one line of output, in order."""
    line = line[:MAX_LINE_CHARS]
    for name, regex in compiled.items():
        for match in regex.finditer(line):
            value = _number(match.group(1))
            if value is not None:
                yield name, value


def steps_from_lines(lines: Iterable[str], patterns: dict[str, str]) -> list[dict[str, Any]]:
    """One record per step: the n-th match of every metric is step n."""
    compiled = {name: re.compile(p) for name, p in patterns.items()}
    series: dict[str, list[float]] = {name: [] for name in compiled}
    for line in lines:
        for name, value in _matches(line, compiled):
            series[name].append(value)
    length = max((len(v) for v in series.values()), default=0)
    steps = []
    for i in range(length):
        record: dict[str, Any] = {"step": i}
        record.update({name: values[i] for name, values in series.items() if i < len(values)})
        steps.append(record)
    return steps


class StdoutSteps:
    """:func:`steps_from_lines` as the output grows: fed the bytes written since
    the last feed, it returns one record per new match (``{"step": n, name:
    value}``, the n-th match of that metric, as the whole read numbers them),
    so early stopping can judge a script's curve while it runs."""

    def __init__(self, patterns: dict[str, str]):
        self._compiled = {name: re.compile(p) for name, p in patterns.items()}
        self._count = {name: 0 for name in self._compiled}
        self._partial = b""
        self.final: dict[str, float] = {}  # each metric's last value so far (final_of of the whole read)

    def feed(self, data: bytes, final: bool = False) -> list[dict[str, Any]]:
        """Records of the complete lines in what was fed so far (all of it, ``final``)."""
        data = self._partial + data
        end = len(data) if final else data.rfind(b"\n") + 1
        self._partial = data[end:]
        records = []
        for raw in data[:end].splitlines():
            for name, value in _matches(raw.decode("utf-8", errors="replace"), self._compiled):
                records.append({"step": self._count[name], name: value})
                self._count[name] += 1
                self.final[name] = value
        return records


def read_stdout(path: Path, patterns: dict[str, str]) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return steps_from_lines(f, patterns)
    except FileNotFoundError:
        return []


def read_json(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    """(final metrics, steps, problem) from a metrics file the script wrote."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, [], f"metrics_from.json: the job did not write {path.name}"
    except (OSError, ValueError) as exc:
        return {}, [], f"metrics_from.json: {path.name} is not valid JSON ({exc.__class__.__name__})"
    if isinstance(data, dict):
        return data, [], None
    if isinstance(data, list) and all(isinstance(x, dict) for x in data):
        steps = [{"step": i, **record} if "step" not in record else dict(record) for i, record in enumerate(data)]
        return final_of(steps), steps, None
    return {}, [], f"metrics_from.json: {path.name} holds {type(data).__name__}; expected an object or a list of objects"


def final_of(steps: list[dict[str, Any]]) -> dict[str, Any]:
    final: dict[str, Any] = {}
    for record in steps:
        final.update({k: v for k, v in record.items() if k not in ("step", "time")})
    return final
