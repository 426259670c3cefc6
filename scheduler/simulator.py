"""`labq simulate`: replay a job trace through the real policy in virtual time.

The same :func:`scheduler.policy.decide` the live loop calls decides here, on the
same records; only time is virtual (no Ray, no sleeping).  A job's ``duration``
plays its real run time and is never shown to the policy, which sees what the
live scheduler sees: resources, priority, user, queue, submission time and the
user's ``time_limit`` (a job is stopped at its limit, live and here).

Events are processed in time order; at each distinct time, finished jobs free
their resources, arrivals join the pending index, usage decays and accrues, and
the policy decides.  Preempted jobs are requeued with their original submission
order and resume from their checkpoint (the work done so far is kept).
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from scheduler import policy
from scheduler.errors import UserError, one_line
from scheduler.units import parse_duration, parse_memory
from scheduler.virtual_cluster import VirtualCluster

MiB = 2**20
DEFAULT_HALF_LIFE = policy.DEFAULT_HALF_LIFE
DEFAULT_STRETCH = policy.DEFAULT_STRETCH
MIX_HALF_LIFE = 86400.0  # how fast the shapes seen arrive fade from the mix placement is judged against
TRACE_COLUMNS = ("job_id", "submit_time", "duration", "cpu", "gpu")
NODE_COLUMNS = ("node_id", "cpu", "gpu")
_TIMELINE_POINTS = 2000


class TraceError(UserError):
    """A trace, nodes or cluster file the simulator cannot use: names file, line, column."""


@dataclass(frozen=True)
class TraceJob:
    """One row of a trace.  ``duration`` None: the job never ends."""

    job_id: str
    submit_time: float
    duration: float | None
    cpu: float = 1.0
    gpu: float = 0.0
    memory: int = 0  # bytes
    user: str = ""
    queue: str = "default"
    priority: int = 0
    time_limit: float | None = None
    group: str = ""  # what it is one of (an experiment's stage): runs alike are predicted from each other
    checkpoints: bool = True  # resumes from a checkpoint when preempted (tiers preempt only these)


# ---------------------------------------------------------------- reading input

def _number(text: str, what: str, minimum: float = 0.0) -> float:
    value = float(text)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(what)
    return value


def _memory_mib(text: str) -> int:
    """A plain number is MiB (as in the trace format); ``16GiB`` has its unit."""
    text = text.strip()
    try:
        return int(_number(text, "") * MiB)
    except ValueError:
        return parse_memory(text)


def _gpu(text: str) -> float:
    value = _number(text, "")
    if value > 1 and not value.is_integer():
        raise ValueError
    return value


def _optional(parse, text: str | None):
    return None if text is None or not text.strip() else parse(text.strip())


_TRACE_FIELDS = {  # column -> (parser, what is expected)
    "submit_time": (lambda t: _number(t, ""), "a number of seconds >= 0"),
    "duration": (lambda t: _optional(lambda x: _number(x, ""), t), "seconds >= 0, or empty for a job that never ends"),
    "cpu": (lambda t: _number(t, ""), "a number of cpus >= 0"),
    "gpu": (_gpu, "a share of one GPU (0..1) or a whole number of GPUs"),
    "memory": (lambda t: _optional(_memory_mib, t) or 0, "MiB, or a size such as 16GiB"),
    "priority": (lambda t: int(t) if t and t.strip() else 0, "an integer"),
    "time_limit": (lambda t: _optional(parse_duration, t), "a positive duration such as 3600, 90m or 2h"),
    "checkpoints": (lambda t: _flag(t, default=True), "1 or 0 (true or false): whether it resumes from a checkpoint"),
}


def _flag(text: str | None, default: bool) -> bool:
    value = (text or "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(value)


def _open_csv(path: str | Path, required: tuple[str, ...]) -> tuple[list[tuple[int, dict]], str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise TraceError(f"{path}: line 1: missing column {missing[0]!r} (expected columns "
                                 f"{', '.join(required)}, then optional ones)")
            return [(reader.line_num, row) for row in reader], str(path)
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError, csv.Error) as exc:
        raise TraceError(f"{path}: cannot read it as CSV: {one_line(exc)}") from None


def load_trace(path: str | Path) -> list[TraceJob]:
    """The trace's jobs in file order; a bad row raises TraceError naming its line."""
    rows, name = _open_csv(path, TRACE_COLUMNS)
    jobs: list[TraceJob] = []
    seen: set[str] = set()
    for line, row in rows:
        job_id = (row.get("job_id") or "").strip()
        if not job_id or job_id in seen:
            raise TraceError(f"{name}: line {line}: column 'job_id': expected a unique id, got {job_id!r}")
        seen.add(job_id)
        values: dict[str, Any] = {}
        for column, (parse, expected) in _TRACE_FIELDS.items():
            text = row.get(column)
            if column in TRACE_COLUMNS and column != "duration" and not (text or "").strip():
                raise TraceError(f"{name}: line {line}: column {column!r}: expected {expected}, got nothing")
            try:
                values[column] = parse(text)
            except (ValueError, TypeError):
                raise TraceError(f"{name}: line {line}: column {column!r}: expected {expected}, "
                                 f"got {one_line(text)!r}") from None
        jobs.append(TraceJob(job_id=job_id, user=(row.get("user") or "").strip(),
                             queue=(row.get("queue") or "").strip() or "default",
                             group=(row.get("group") or "").strip(), **values))
    if not jobs:
        raise TraceError(f"{name}: no jobs in the trace")
    return jobs


def load_nodes(path: str | Path) -> list[policy.Node]:
    """NODES.csv: node_id, cpu, gpu (count), optional memory (MiB or a size) and
    gpu_memory (per GPU, MiB or a size); gpu_model and other columns are ignored."""
    rows, name = _open_csv(path, NODE_COLUMNS)
    nodes = []
    for line, row in rows:
        node_id = (row.get("node_id") or "").strip()
        try:
            cpu = _number(row.get("cpu") or "", "")
        except ValueError:
            raise TraceError(f"{name}: line {line}: column 'cpu': expected a number >= 0, got {row.get('cpu')!r}") from None
        try:
            gpus = int(row.get("gpu") or "")
            if gpus < 0:
                raise ValueError
        except ValueError:
            raise TraceError(f"{name}: line {line}: column 'gpu': expected a whole number of GPUs, "
                             f"got {row.get('gpu')!r}") from None
        sizes = {}
        for column in ("memory", "gpu_memory"):
            try:
                sizes[column] = _optional(_memory_mib, row.get(column)) or 0
            except ValueError:
                raise TraceError(f"{name}: line {line}: column {column!r}: expected MiB, or a size such as 80GiB, "
                                 f"got {row.get(column)!r}") from None
        nodes.append(node(node_id or f"node-{len(nodes)}", cpu, gpus, sizes["memory"], sizes["gpu_memory"]))
    if not nodes:
        raise TraceError(f"{name}: no nodes in the file")
    return nodes


def node(node_id: str, cpu: float, gpus: int, memory: int = 0, gpu_memory: int = 0) -> policy.Node:
    """An empty node of that size."""
    return policy.Node(node_id=node_id, cpu_total=cpu, cpu_free=cpu, memory_total=memory, memory_free=memory,
                       gpu_free=[1.0] * gpus, gpu_memory=[gpu_memory] * gpus if gpu_memory else [])


def cluster_from_yaml(path: str | Path) -> tuple[list[policy.Node], list[policy.QueueConfig]]:
    """Nodes and queues of a Ray cluster.yaml.  Each of ``available_node_types``
    counts ``max_workers`` times (the head type once more): a backlog is what
    drives the autoscaler to its maximum, so that is the cluster the queue gets;
    the top-level ``max_workers`` caps the workers.  Queues from metadata.labq."""
    import yaml

    from scheduler.config import load_settings

    queues = load_settings(path).queue_configs()  # a bad metadata.labq is a ConfigError naming the key
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    types = doc.get("available_node_types") if isinstance(doc, dict) else None
    if not isinstance(types, dict) or not types:
        raise TraceError(f"{path}: available_node_types: expected node types with resources (CPU, GPU) to size "
                         f"the simulated cluster; or give --nodes NODES.csv or --gpus/--cpus")
    head = doc.get("head_node_type")
    budget = doc.get("max_workers")
    nodes: list[policy.Node] = []
    for type_name, spec in types.items():
        resources = (spec or {}).get("resources") or {}
        try:
            cpu, gpus = float(resources.get("CPU", 0)), int(resources.get("GPU", 0))
            memory = int(resources.get("memory", 0))
            count = int(spec.get("max_workers", spec.get("min_workers", 0)) or 0)
        except (TypeError, ValueError, AttributeError):
            raise TraceError(f"{path}: available_node_types.{type_name}: expected numeric resources "
                             f"and max_workers") from None
        if isinstance(budget, int):
            count = min(count, max(0, budget - sum(1 for n in nodes if not n.node_id.endswith("-head"))))
        for i in range(count):
            nodes.append(node(f"{type_name}-{i}", cpu, gpus, memory))
        if type_name == head:
            nodes.append(node(f"{type_name}-head", cpu, gpus, memory))
    if not nodes or not any(n.cpu_total or n.gpu_total for n in nodes):
        raise TraceError(f"{path}: available_node_types: no node type declares resources (CPU, GPU)")
    return nodes, queues


# ---------------------------------------------------------------- results

@dataclass
class SimResult:
    """What one policy did with the trace.  Times in seconds, shares 0..1."""

    policy: str
    jobs: int
    finished: int
    unplaced: int
    avg_jct: float | None
    avg_wait: float | None
    p95_wait: float | None
    makespan: float
    gpu_util: float | None
    cpu_util: float | None
    gpu_alloc_final: float | None
    per_user: dict[str, dict[str, Any]]
    preempted: int = 0
    timed_out: int = 0
    decisions: int = 0
    wall_s: float = 0.0
    timeline: list[tuple[float, float, float]] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "timeline"}
        for k, v in data.items():
            if isinstance(v, float):
                data[k] = round(v, 6)
        return data


def lower_bound(trace: list[TraceJob], nodes: list[policy.Node]) -> dict[str, float]:
    """No schedule finishes the finite jobs sooner than the total GPU (or CPU)
    work spread over the whole cluster, nor than the longest job after its arrival."""
    finite = [j for j in trace if j.duration is not None]
    if not finite:
        return {"makespan": 0.0, "gpu_work_bound": 0.0, "cpu_work_bound": 0.0, "longest_job": 0.0}
    start = min(j.submit_time for j in finite)
    capacity = policy.Capacity.of(nodes)
    gpu_work = sum(j.gpu * j.duration for j in finite)
    cpu_work = sum(j.cpu * j.duration for j in finite)
    bounds = {"gpu_work_bound": gpu_work / capacity.gpu if capacity.gpu else 0.0,
              "cpu_work_bound": cpu_work / capacity.cpu if capacity.cpu else 0.0,
              "longest_job": max(j.submit_time - start + j.duration for j in finite)}
    return {"makespan": max(bounds.values()), **bounds}


# ---------------------------------------------------------------- the replay

class _Replay:
    """A trace fed to a :class:`VirtualCluster` in order of submission, with the
    share of GPUs and CPUs held after each step."""

    def __init__(self, trace: list[TraceJob], nodes: list[policy.Node], policy_name: str,
                 queues: list[policy.QueueConfig] | None, half_life: float, restart_cost: float = 0.0,
                 stretch: float | None = policy.DEFAULT_STRETCH, fragmentation: bool = True,
                 reserve_after: float | None = None):
        self.trace = trace
        self.policy = policy_name
        shapes = [node(n.node_id, n.cpu_total, n.gpu_total, n.memory_total, max(n.gpu_memory or [0])) for n in nodes]
        # labq learns run times as the replay's jobs end, as the live loop does
        # from the store: the policy never sees a duration before a job ends.
        durations = (policy.DurationBook(stretch, reserve_after) if stretch is not None and policy_name == "labq"
                     else None)
        # labq places to keep the cluster unfragmented for the shapes it has seen arrive.
        mixes = policy.MixBook(MIX_HALF_LIFE) if policy_name == "labq" and fragmentation else None
        self.cluster = VirtualCluster(shapes, shapes, policy_name=policy_name, queues=queues, half_life=half_life,
                                      restart_cost=restart_cost, durations=durations, learn=True, mix_book=mixes)
        self.with_memory = any(n.memory_total for n in nodes)  # else memory is not simulated
        self.timeline: list[tuple[float, float, float]] = []

    @property
    def first_start(self) -> dict[int, float]:
        return self.cluster.first_start

    @property
    def finish(self) -> dict[int, float]:
        return self.cluster.finish

    def demand(self, index: int) -> policy.Demand:
        job = self.trace[index]
        return policy.Demand(job_id=index, cpu=job.cpu, gpu=job.gpu, memory=job.memory if self.with_memory else 0,
                             priority=job.priority, seq=index, user=job.user, queue=job.queue,
                             time_limit=job.time_limit, submitted_at=job.submit_time, group=job.group,
                             checkpoints=job.checkpoints)

    def run(self) -> float | None:
        cluster = self.cluster
        order = sorted(range(len(self.trace)), key=lambda i: (self.trace[i].submit_time, i))
        next_arrival = 0
        alloc_final = None
        while next_arrival < len(order) or cluster.ends:
            t = min(self.trace[order[next_arrival]].submit_time if next_arrival < len(order) else math.inf,
                    cluster.next_end())
            cluster.advance(t)
            cluster.end_due(t)
            while next_arrival < len(order) and self.trace[order[next_arrival]].submit_time <= t:
                index = order[next_arrival]
                cluster.arrive(self.demand(index), self.trace[index].duration)
                next_arrival += 1
            cluster.decide(t)
            if next_arrival == len(order) and alloc_final is None:
                alloc_final = cluster.alloc[0] / cluster.capacity.gpu if cluster.capacity.gpu else None
            self.timeline.append((t, self._share(0), self._share(1)))
        return alloc_final

    def _share(self, k: int) -> float:
        total = self.cluster.capacity.gpu if k == 0 else self.cluster.capacity.cpu
        return self.cluster.alloc[k] / total if total else 0.0


def simulate(trace: list[TraceJob], nodes: list[policy.Node], policy: str = policy.DEFAULT_POLICY,
             queues: list[policy.QueueConfig] | None = None, half_life: float = DEFAULT_HALF_LIFE,
             restart_cost: float = 0.0, stretch: float | None = DEFAULT_STRETCH,
             fragmentation: bool = True, reserve_after: float | None = None) -> SimResult:
    """Replay ``trace`` on ``nodes`` (their totals; free capacity is ignored) under ``policy``;
    a preempted job resumes from its checkpoint ``restart_cost`` seconds behind.
    ``stretch``: how far ``labq`` lets shorter predicted jobs pass a longer one
    (policy.durations); None orders by priority and submission only.
    ``fragmentation``: ``labq`` places by the fragmentation it adds for the
    shapes seen so far (policy.fragmentation); False: best fit.
    ``reserve_after``: a due job that has waited this long gets a reservation
    from running jobs' predicted ends (policy.durations); None: never."""
    started = time.perf_counter()
    replay = _Replay(trace, nodes, policy, queues, half_life, restart_cost, stretch, fragmentation, reserve_after)
    alloc_final = replay.run()
    return _result(replay, alloc_final, time.perf_counter() - started)


def compare(trace: list[TraceJob], nodes: list[policy.Node], policies: Iterable[str] = policy.POLICIES,
            queues: list[policy.QueueConfig] | None = None, half_life: float = DEFAULT_HALF_LIFE,
            restart_cost: float = 0.0, stretch: float | None = DEFAULT_STRETCH,
            fragmentation: bool = True, reserve_after: float | None = None) -> list[SimResult]:
    return [simulate(trace, nodes, name, queues, half_life, restart_cost, stretch, fragmentation, reserve_after)
            for name in policies]


def with_preemption(queues: list[policy.QueueConfig], trace: list[TraceJob], tiers: tuple[float, ...] | None = None,
                    preempt_longer: float | None = None,
                    max_preemptions: int | None = None) -> list[policy.QueueConfig]:
    """Every queue of ``queues`` and of the trace, with least-attained-service
    ``tiers`` and/or ``preempt_longer`` (and ``max_preemptions``), each when
    given: `labq simulate --tiers / --preempt-longer`."""
    import dataclasses

    named = {q.name: q for q in queues}
    for job in trace:
        named.setdefault(job.queue, policy.QueueConfig(job.queue))
    extra: dict = {} if max_preemptions is None else {"max_preemptions": max_preemptions}
    if tiers is not None:
        extra["tiers"] = tuple(sorted(tiers))
    if preempt_longer is not None:
        extra["preempt_longer"] = preempt_longer
    return [dataclasses.replace(q, **extra) for q in named.values()]


def _result(replay: _Replay, alloc_final: float | None, wall_s: float) -> SimResult:
    trace = replay.trace
    waits = sorted(replay.first_start[j] - trace[j].submit_time for j in replay.first_start)
    jcts = [replay.finish[j] - trace[j].submit_time for j in replay.finish]
    start = min(j.submit_time for j in trace)
    end = max(replay.finish.values(), default=start)
    makespan = end - start
    cluster = replay.cluster
    capacity = cluster.capacity
    util = [cluster.busy[0] / (capacity.gpu * makespan) if capacity.gpu and makespan else None,
            cluster.busy[1] / (capacity.cpu * makespan) if capacity.cpu and makespan else None]
    return SimResult(
        policy=replay.policy, jobs=len(trace), finished=len(replay.finish),
        unplaced=len(trace) - len(replay.first_start), avg_jct=_mean(jcts), avg_wait=_mean(waits),
        p95_wait=_percentile(waits, 95), makespan=makespan, gpu_util=util[0], cpu_util=util[1],
        gpu_alloc_final=alloc_final, per_user=_per_user(replay), preempted=cluster.preempted,
        timed_out=cluster.timed_out, decisions=cluster.decisions, wall_s=wall_s,
        timeline=_thin(replay.timeline, _TIMELINE_POINTS))


def _per_user(replay: _Replay) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(replay.trace):
        groups.setdefault(job.user, []).append(i)
    out = {}
    for user, jobs in sorted(groups.items()):
        waits = [replay.first_start[j] - replay.trace[j].submit_time for j in jobs if j in replay.first_start]
        jcts = [replay.finish[j] - replay.trace[j].submit_time for j in jobs if j in replay.finish]
        out[user] = {"jobs": len(jobs), "finished": len(jcts), "avg_wait": _mean(waits), "avg_jct": _mean(jcts),
                     "gpu_seconds": sum(replay.trace[j].gpu * (replay.trace[j].duration or 0.0) for j in jobs)}
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _percentile(sorted_xs: list[float], p: float) -> float | None:
    """Nearest rank."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, math.ceil(p / 100 * len(sorted_xs)) - 1))
    return sorted_xs[k]


def _thin(points: list, most: int) -> list:
    step = max(1, len(points) // most)
    return points[::step]


# ---------------------------------------------------------------- showing results

def results_table(results: list[SimResult], bound: dict[str, float] | None = None):
    """A rich Table: one row per policy."""
    from rich.table import Table

    from scheduler.units import format_seconds

    table = Table(title="labq simulate" + (f" (makespan lower bound {format_seconds(bound['makespan'])})"
                                            if bound else ""))
    for column in ("policy", "jobs", "finished", "unplaced", "avg JCT", "avg wait", "p95 wait", "makespan",
                   "GPU util", "CPU util", "GPU alloc at last arrival", "preempted"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for r in results:
        table.add_row(r.policy, str(r.jobs), str(r.finished), str(r.unplaced), format_seconds(r.avg_jct),
                      format_seconds(r.avg_wait), format_seconds(r.p95_wait), format_seconds(r.makespan),
                      _pct(r.gpu_util), _pct(r.cpu_util), _pct(r.gpu_alloc_final), str(r.preempted))
    return table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def plot_utilisation(results: list[SimResult], out: str | Path) -> None:
    """GPU and CPU allocation over virtual time, one line per policy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for r in results:
        if not r.timeline:
            continue
        t0 = r.timeline[0][0]
        hours = [(t - t0) / 3600 for t, _, _ in r.timeline]
        axes[0].step(hours, [g for _, g, _ in r.timeline], where="post", label=r.policy, linewidth=1)
        axes[1].step(hours, [c for _, _, c in r.timeline], where="post", label=r.policy, linewidth=1)
    axes[0].set_ylabel("GPU allocated")
    axes[1].set_ylabel("CPU allocated")
    axes[1].set_xlabel("hours since the first arrival")
    for ax in axes:
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("labq simulate: allocation over time")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
