"""Tables and progress for people (rich); ``--json`` output lives in the CLI.

rich turns colour and animation off by itself when stdout is not a terminal.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from scheduler.records import Job
from scheduler.units import format_bytes, format_seconds

console = Console()
if not console.is_terminal:  # piped or in CI: do not squeeze tables into 80 columns
    console = Console(width=max(console.width, 200))

_STATE_STYLE = {"running": "cyan", "pending": "yellow", "blocked": "dim", "succeeded": "green", "failed": "red",
                "timed_out": "red", "cancelled": "magenta", "unschedulable": "red", "upstream_failed": "red",
                "pruned": "yellow", "paused": "blue"}


def _state(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def _param(value: Any) -> str:
    """A param value as the user wrote it: None is a meaningful choice (max_depth)."""
    return "None" if value is None else _fmt(value)


def _res(job: Job) -> tuple[str, str]:
    return f"{job.cpu:g}", (f"{job.gpu:g}" if job.gpu else "-")


def start_text(at: float | None, now: float) -> str:
    """An estimated start (scheduler.estimate) as a rough delay: "<1m", "~3m",
    "~1h10m", "~2d3h"; "-" when there is no estimate."""
    if at is None:
        return "-"
    minutes = round(max(0.0, at - now) / 60)
    if minutes < 1:
        return "<1m"
    if minutes < 60:
        return f"~{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"~{hours}h{minutes}m" if minutes else f"~{hours}h"
    days, hours = divmod(hours, 24)
    return f"~{days}d{hours}h" if hours else f"~{days}d"


def queue_table(jobs: list[Job], now: float, total_active: int, unplaced_reason: str = "",
                starts: dict[int, float | None] | None = None, title: str | None = None,
                outlook: dict[int, Any] | None = None) -> Table:
    """``unplaced_reason`` explains pending jobs no scheduler has looked at yet
    (none running, or Ray still starting); ``starts`` are pending jobs' estimated
    starts (scheduler.estimate), shown as a delay from ``now``; ``outlook`` each
    active job's predicted duration, tier and, running, time left (records.Outlook)."""
    title = (f"{total_active} active job{'s' if total_active != 1 else ''}" if title is None else title)
    table = Table(title=title, title_justify="left")
    for col in ("id", "experiment", "stage", "state", "queue", "prio", "cpu", "gpu", "node", "waited/ran", "starts",
                "expect", "why"):
        table.add_column(col, overflow="fold" if col == "why" else "ellipsis", no_wrap=col != "why")
    for job in jobs:
        cpu, gpu = _res(job)
        if job.state.value == "running":
            timing = f"ran {format_seconds(now - job.started_at)}" if job.started_at else "-"
        elif job.state.is_terminal():  # over: its times no longer grow
            timing = (f"ran {format_seconds(job.ended_at - job.started_at)}" if job.started_at and job.ended_at
                      else "-")
        else:
            timing = f"waited {format_seconds(now - job.submitted_at)}"
        node = (job.node_id or "")[:8] if job.state.value == "running" else ""
        if job.gpu_ids and job.state.value == "running":
            node += f" gpu{','.join(job.gpu_ids)}"
        why = job.reason or (unplaced_reason if job.state.value == "pending" else "")
        if job.cancel_requested:
            why = "cancelling"
        start = start_text((starts or {}).get(job.id), now) if job.state.value == "pending" else ""
        expect = outlook_text((outlook or {}).get(job.id)) if not job.state.is_terminal() else ""
        table.add_row(str(job.id), job.experiment, job.stage, _state(job.state.value), job.queue, str(job.priority),
                      cpu, gpu, node, timing, start, expect, why)
    return table


def search_lines(searches: list[dict[str, Any]]) -> list[str]:
    """`labq status EXP`'s line per search: trials asked, and the budget spent and left."""
    lines = []
    for s in searches:
        line = (f"search {s['stage']} ({s['algo']}): {s['asked']} of {s['samples']} trials asked, "
                f"{s['parallel']} at a time")
        if s.get("budget"):
            from scheduler.search import budget_text

            b = s["budget"]
            line += f"; budget {budget_text(b['kind'], b['spent'], b['limit'])}"
        lines.append(line)
    return lines


def outlook_text(outlook: Any, long: bool = False) -> str:
    """A job's predicted duration, tier and, running, time left: "~12m t1/3",
    "~12m t1/3, 5m left" in a table; with ``long``, where the prediction comes from too."""
    if outlook is None:
        return ""
    text = "?" if outlook.predicted is None else f"~{format_seconds(outlook.predicted)}"
    if long:
        text = (f"runs {text} ({outlook.basis})" if outlook.predicted is not None
                else f"run time unknown ({outlook.basis})")
    if outlook.tier is not None:
        text += f" tier {outlook.tier} of {outlook.tiers - 1}" if long else f" t{outlook.tier}/{outlook.tiers - 1}"
    if outlook.remaining is not None:
        text += f"; about {format_seconds(outlook.remaining)} left" if long else \
            f", {format_seconds(outlook.remaining)} left"
    return text


def results_table(res: Any, limit: int | None = None, total: int | None = None) -> Table:
    metric_label = f"{res.metric} ({res.mode})" if res.metric else "no metrics"
    count = res.total if total is None else total
    table = Table(title=f"{res.experiment}: {count} jobs, sorted by {metric_label}", title_justify="left")
    table.add_column("", no_wrap=True, min_width=1)
    for col in ("id", "stage", "state"):
        table.add_column(col, no_wrap=True, min_width=len(col) if col != "state" else 9)
    for p in res.varying_params:
        table.add_column(p, no_wrap=True, min_width=min(len(p), 12))
    # The main metric always; others while the terminal has room for them.
    width = 4 + 6 + 8 + 12 + sum(min(len(p), 12) + 3 for p in res.varying_params) + 8
    shown_metrics = []
    for m in res.metric_names[:5]:
        need = max(len(m), 7) + 3
        if shown_metrics and width + need > console.width:
            break
        shown_metrics.append(m)
        width += need
    for m in shown_metrics:
        table.add_column(m, justify="right", no_wrap=True, style="bold" if m == res.metric else "")
    table.add_column("time", justify="right", no_wrap=True)
    for row in res.rows[:limit]:
        # ★ the best by the main metric; ◆ on a multi-objective search's Pareto front
        cells = [("★" if row.get("best") else "") + ("◆" if row.get("pareto") else ""), str(row["job_id"]),
                 row["stage"], _state(row["state"])]
        cells += [_param(row["params"][p]) if p in row["params"] else "" for p in res.varying_params]
        cells += [_fmt(row["metrics"].get(m)) for m in shown_metrics]
        cells.append(format_seconds(row["duration"]))
        table.add_row(*cells)
    return table


def _gpu_mem(usage: dict[str, Any]) -> str:
    gpu = usage.get("gpu_usage") or {}
    if not gpu.get("peak_memory"):
        return "-"
    total = gpu.get("memory_total")
    return format_bytes(gpu["peak_memory"]) + (f" of {format_bytes(total)}" if total else "")


def _start_detail(start: float | None, now: float) -> str:
    if start is None:
        return "- (no estimate: it waits for a job whose run time is unknown, or too many jobs are ahead)"
    return (f"{start_text(start, now)} (around {time.strftime('%H:%M', time.localtime(start))}; estimated from "
            f"past runs of each stage, else time limits)")


def _attempts_line(job: Job, attempts: list[Any]) -> str:
    """Attempts made against those allowed; requeues that were not the job's
    fault (a lost node, a preemption, a scheduler restart) do not count."""
    charged = job.attempts - job.free_retries
    free = job.attempts - charged
    return (f"{charged} of {job.retries + 1} attempt(s) allowed used"
            + (f", plus {free} requeue(s) not charged (lost node, preemption, restart)" if free > 0 else ""))


def status_view(job: Job, attempts: list[Any], events: list[Any], advice: list[str] = (),
                start: float | None = None, now: float | None = None, outlook: Any = None) -> Group:
    """``start``: a pending job's estimated start (scheduler.estimate), if any;
    ``outlook``: an active job's predicted duration, tier and, running, time left (records.Outlook)."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    cpu, gpu = _res(job)
    rows = [
        ("job", f"{job.id}  ({job.experiment} / {job.stage})"),
        ("state", _state(job.state.value)),
        ("why", job.reason or "-"),
        *([("starts", _start_detail(start, time.time() if now is None else now))] if job.state.value == "pending" else []),
        *([("expect", outlook_text(outlook, long=True))] if outlook is not None and not job.state.is_terminal() else []),
        ("run", f"{job.target_kind}: {job.target}"),
        ("params", ", ".join(f"{k}={_param(v)}" for k, v in job.params.items()) or "-"),
        ("resources", f"cpu {cpu}, gpu {gpu}, memory {format_bytes(job.memory) if job.memory else '-'}"
         + (f", gpu_memory {format_bytes(job.gpu_memory)}" if job.gpu_memory else "")
         + (f", {job.custom}" if job.custom else "")),
        ("retries", _attempts_line(job, attempts)
         + (f", timeout {format_seconds(job.timeout)}" if job.timeout else "")),
        ("depends on", ", ".join(map(str, job.depends_on)) or "-"),
    ]
    rows += [("advice", line) for line in advice]
    for k, v in rows:
        head.add_row(k, v)
    att = Table(title="attempts", title_justify="left")
    for col in ("#", "state", "node", "gpu", "ran", "peak rss", "gpu mem", "exit", "error / metrics", "run dir"):
        att.add_column(col, overflow="fold")
    for a in attempts:
        began = a.started_at or a.dispatched_at  # a worker that died before reporting: since its dispatch
        ran = format_seconds(a.ended_at - began) if began and a.ended_at else "-"
        if a.ended_at and not a.started_at and a.dispatched_at:
            ran = "~" + ran
        detail = (a.error.strip().splitlines()[-1] if a.error else
                  ", ".join(f"{k}={_fmt(v)}" for k, v in list(a.metrics.items())[:6]))
        gpus = ",".join(a.gpu_ids) or "-"
        if a.gpu_share and a.gpu_ids and a.gpu_share < 1:
            gpus += f" ({a.gpu_share:g})"
        att.add_row(str(a.number), _state(a.state.value), (a.node_id or "-")[:8], gpus, ran,
                    format_bytes(a.peak_rss), _gpu_mem(a.usage), _fmt(a.exit_code), detail, a.run_dir)
    ev = Table(title="events", title_justify="left")
    ev.add_column("time")
    ev.add_column("event", overflow="fold")
    for e in events[-20:]:
        ev.add_row(time.strftime("%H:%M:%S", time.localtime(e.ts)), e.message)
    parts: list[Any] = [head, att]
    last = attempts[-1] if attempts else None
    if last is not None and (last.outputs or last.artifacts):
        parts.append(files_table(last, title=f"files of attempt {last.number} (labq artifacts {job.id} --get PATH)"))
    return Group(*parts, ev)


def files_table(attempt: Any, title: str, limit: int = 50) -> Table:
    """An attempt's outputs (what it wrote in its working directory) and the
    artifacts it saved through labq's API."""
    table = Table(title=title, title_justify="left")
    for col in ("kind", "path", "size", "note"):
        table.add_column(col, overflow="fold")
    rows = ([("output", o["path"], format_bytes(o["bytes"]),
              "" if o.get("kept", True) else "not kept: over the outputs limit (metadata.labq.outputs_limit)")
             for o in attempt.outputs]
            + [("artifact", a, "", "") for a in attempt.artifacts])
    for row in rows[:limit]:
        table.add_row(*row)
    if len(rows) > limit:
        table.add_row("", f"... {len(rows) - limit} more (labq artifacts {attempt.job_id})", "", "")
    return table


class Progress:
    """Live view for `labq run` / `submit --wait`: counts by state and the running
    jobs.  Without a terminal, one line per job that finishes instead."""

    def __init__(self, experiment: str, total: int):
        self.experiment = experiment
        self.total = total
        self.started = time.time()
        self._seen_terminal: set[int] = set()
        self._live: Live | None = None

    def __enter__(self) -> "Progress":
        if console.is_terminal:
            self._live = Live(console=console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live:
            self._live.__exit__(*exc)

    def update(self, jobs: list[Job]) -> None:
        self.total = max(self.total, len(jobs))  # a search adds its trials as it goes
        if self._live:
            self._live.update(self._render(jobs))
            return
        for job in jobs:
            if job.state.is_terminal() and job.id not in self._seen_terminal:
                self._seen_terminal.add(job.id)
                done = len(self._seen_terminal)
                extra = f" ({job.reason})" if job.reason and job.state.value != "succeeded" else ""
                console.print(f"[{done}/{self.total}] job {job.id} {job.stage} {job.state.value}{extra}",
                              highlight=False)

    def _render(self, jobs: list[Job]) -> Group:
        counts: dict[str, int] = {}
        for j in jobs:
            counts[j.state.value] = counts.get(j.state.value, 0) + 1
        done = sum(1 for j in jobs if j.state.is_terminal())
        width = 30
        filled = int(width * done / max(self.total, 1))
        bar = Text("█" * filled + "░" * (width - filled), style="green")
        line = Text.assemble(f"{self.experiment} ", bar, f" {done}/{self.total}  ",
                             "  ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                             f"  {format_seconds(time.time() - self.started)}")
        running = [j for j in jobs if j.state.value == "running"]
        table = Table(box=None, show_header=True, pad_edge=False)
        for col in ("id", "stage", "params", "cpu", "gpu", "ran"):
            table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=60 if col == "params" else None)
        now = time.time()
        for j in running[:12]:
            cpu, gpu = _res(j)
            table.add_row(str(j.id), j.stage, ", ".join(f"{k}={_param(v)}" for k, v in j.swept.items()) or "-", cpu, gpu,
                          format_seconds(now - j.started_at) if j.started_at else "-")
        return Group(line, table) if running else Group(line)


def nodes_table(nodes: list[Any], now: float) -> Table:
    table = Table(title=f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}", title_justify="left")
    for col in ("node", "address", "state", "cpu used/total", "gpu used/total", "memory used/total", "jobs", "gpus",
                "seen"):
        table.add_column(col, no_wrap=True)
    for n in nodes:
        gpus = "  ".join(
            f"{g['index']}:{g['allocated']:g}" + (f" ({g['draining']:g} draining)" if g.get("draining") else "") + (f" {g['model']} {g.get('memory_used', 0) / 2**30:.1f}/"
                                                  f"{g.get('memory_total', 0) / 2**30:.0f}GiB" if g.get("model") else "")
            for g in n.gpus) or "-"
        table.add_row(n.node_id[:8], n.address, _state("alive" if n.alive else "dead"),
                      f"{n.allocated.get('CPU', 0):g}/{n.total.get('CPU', 0):g}",
                      f"{n.allocated.get('GPU', 0):g}/{n.total.get('GPU', 0):g}",
                      f"{format_bytes(n.allocated.get('memory', 0))}/{format_bytes(n.total.get('memory', 0))}",
                      str(n.running_jobs), gpus, f"{format_seconds(now - n.updated_at)} ago")
    return table


def _hours(h: float) -> str:
    """Two decimals, but a few seconds of use still shows as more than 0.00."""
    return f"{h:.2f}" if h >= 0.1 or h == 0 else f"{h:.2g}"


def usage_table(rows: list[dict[str, Any]], groups: tuple[str, ...], since: str, half_life: float) -> Table:
    table = Table(title=f"usage over the last {since} (decayed: half-life {format_seconds(half_life)})",
                  title_justify="left")
    for col in groups:
        table.add_column(col, no_wrap=True)
    for col in ("jobs", "attempts", "cpu-hours", "gpu-hours", "avg wait", "decayed cpu-h", "decayed gpu-h"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(*[str(r[g]) for g in groups], str(r["jobs"]), str(r["attempts"]), _hours(r["cpu_hours"]),
                      _hours(r["gpu_hours"]), format_seconds(r["avg_wait_s"]), _hours(r["decayed_cpu_hours"]),
                      _hours(r["decayed_gpu_hours"]))
    if not rows:
        table.caption = "no job held resources in this period"
    return table
