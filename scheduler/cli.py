"""The `labq` command line: a thin layer over scheduler.api.

Exit codes: 0 ok; 1 the jobs waited on did not all succeed; 2 bad input (spec,
arguments, unknown id) with one line per problem; 3 labq itself could not work
(state database unusable, scheduler could not start).  Verbs that only read or
write the queue never import Ray, torch or pandas.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click

from scheduler import DEFAULT_HOME, DEFAULT_USAGE_HALF_LIFE, __version__
from scheduler.errors import LabqError, SchedulerStartError, UserError, one_line, state_database_error

EXIT_OK = 0
EXIT_JOBS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_LABQ_ERROR = 3
RESULTS_TABLE_ROWS = 50
QUEUE_TABLE_ROWS = 50


def _settings(ctx: click.Context):
    from scheduler.config import load_settings

    return load_settings(ctx.obj.get("cluster"))


def _has_cluster_file(ctx: click.Context) -> bool:
    return bool(ctx.obj.get("cluster") or os.environ.get("LABQ_CLUSTER"))


def _estimate_settings(ctx: click.Context):
    """The settings a start estimate replays the queue with: the cluster file's,
    or, without one, the defaults, built without loading pydantic."""
    from scheduler.api import EstimateSettings

    if _has_cluster_file(ctx):
        settings = _settings(ctx)
        return EstimateSettings(settings.scheduler.usage_half_life, settings.queue_configs(),
                                settings.scheduler.stretch)
    return EstimateSettings(DEFAULT_USAGE_HALF_LIFE)  # the default queue alone


def _store(ctx: click.Context):
    from scheduler.store import Store

    if not _has_cluster_file(ctx):
        # Without a cluster file only LABQ_HOME says where state lives: skip
        # loading the settings (pydantic alone is ~100 ms of a 0.5 s budget).
        return Store(Path(os.environ.get("LABQ_HOME") or DEFAULT_HOME).expanduser())
    return Store(_settings(ctx).home_path)


def _print_json(data: Any) -> None:
    # Indented for a person at a terminal; compact when piped, where json's C
    # encoder (unused with indent) makes big listings several times faster.
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(data, indent=indent, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cluster", envvar="LABQ_CLUSTER", type=click.Path(dir_okay=False),
              help="cluster.yaml whose metadata.labq holds labq's settings [env LABQ_CLUSTER].")
@click.option("--server", envvar="LABQ_SERVER", metavar="URL",
              help="Use the labq server at URL (`labq login URL` first) instead of this machine's "
                   "queue [env LABQ_SERVER].")
@click.version_option(__version__, prog_name="labq")
@click.pass_context
def cli(ctx: click.Context, cluster: str | None, server: str | None) -> None:
    """labq: a queue for ML experiments on Ray.

    State lives in $LABQ_HOME (default ~/.labq), or on the server --server names.
    """
    ctx.obj = {"cluster": cluster, "server": server or None}


def _remote(ctx: click.Context):
    """The labq server this call goes to (--server / LABQ_SERVER), or None: this machine."""
    url = ctx.obj.get("server")
    if not url:
        return None
    from scheduler.remote import Remote

    return Remote(url)


def _local_only(ctx: click.Context, what: str) -> None:
    if ctx.obj.get("server"):
        raise UserError(f"{what} works on the machine that runs the scheduler, not over --server "
                        f"({ctx.obj['server']}); run it there, or unset LABQ_SERVER")


# ---------------------------------------------------------------- submit / run

def _ensure_scheduler(ctx: click.Context, cpus: float | None, gpus: int | None) -> bool:
    """Start a local scheduler in the background unless one serves this home."""
    from scheduler import daemon

    settings = _settings(ctx)
    if daemon.is_running(settings.home_path):
        if cpus is not None or gpus is not None:
            click.echo("warning: a scheduler is already running, so --cpus/--gpus do not apply; "
                       "`labq scheduler stop` first to change its Ray's size", err=True)
        return False
    daemon.start(settings, cluster=ctx.obj.get("cluster"), address=None, cpus=cpus, gpus=gpus,
                 idle_timeout=settings.scheduler.idle_timeout, wait=False,
                 checked=bool(ctx.obj.get("database_checked")))
    return True


_set_option = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                           help="Override a spec value, e.g. --set stages.train.resources.cpu=1 (repeatable).")
class _FiniteFloat(click.FloatRange):
    """FloatRange that also refuses nan and inf."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


_cpus_option = click.option("--cpus", type=_FiniteFloat(min=0, min_open=True, max=1e6),
                            help="CPUs of the local Ray, if labq starts one.")
_gpus_option = click.option("--gpus", type=click.IntRange(min=0, max=10_000),
                            help="GPUs of the local Ray, if labq starts one (logical when the machine has fewer).")


def _submit(ctx: click.Context, spec: str, overrides: tuple[str, ...], will_start: bool = False):
    from scheduler.api import check_before_start, submit

    settings = _settings(ctx)
    # The scheduler this submit starts checks the whole database first: do it
    # before writing, so a damaged queue refuses the submit, not the start.
    if will_start and check_before_start(settings.home_path):
        ctx.obj["database_checked"] = True  # the scheduler started next need not read it all again
    return submit(spec, list(overrides), settings)


def _start_after_submit(ctx: click.Context, submitted, cpus: float | None, gpus: int | None) -> bool:
    """Start a scheduler for jobs already committed; if that fails, say that the
    jobs are queued (a retried submit would queue them twice)."""
    try:
        return _ensure_scheduler(ctx, cpus, gpus)
    except (LabqError, OSError) as exc:
        raise SchedulerStartError(
            f"experiment {submitted.experiment} is queued ({len(submitted.job_ids)} jobs, ids "
            f"{submitted.job_ids[0]}-{submitted.job_ids[-1]}; do not submit it again), but no scheduler could be "
            f"started: {exc}. Fix that, then `labq scheduler start`") from None


def _wait_and_report(ctx: click.Context, submitted, show_results: bool) -> int:
    from scheduler import api, render

    remote = _remote(ctx)
    store = _store(ctx) if remote is None else None
    with render.Progress(submitted.experiment, len(submitted.job_ids)) as progress:
        if remote is None:
            jobs = api.wait(store, submitted.experiment_id, on_update=progress.update)
        else:
            jobs = remote.wait(submitted.experiment_id, on_update=progress.update)
    if show_results:
        res = (api.results(store, str(submitted.experiment_id), limit=RESULTS_TABLE_ROWS) if remote is None
               else remote.results(str(submitted.experiment_id), limit=RESULTS_TABLE_ROWS))
        render.console.print(render.results_table(res))
        _print_more(res, f"labq results {submitted.experiment} --limit N, --csv or --json")
    counts = api.active_state_counts(jobs)
    render.console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())), highlight=False)
    if not api.succeeded_all(jobs):
        render.console.print(f"not every job succeeded: labq status <id> shows why; "
                             f"labq results {submitted.experiment} lists them", highlight=False)
        return EXIT_JOBS_FAILED
    return EXIT_OK


@cli.command()
@click.argument("spec", type=click.Path())
@_set_option
@_cpus_option
@_gpus_option
@click.pass_context
def run(ctx: click.Context, spec: str, overrides: tuple[str, ...], cpus: float | None, gpus: int | None) -> None:
    """Submit SPEC, run it to completion with live progress, print the results.

    Starts a local scheduler (and local Ray) when none is running.
    """
    from scheduler import render

    remote = _remote(ctx)
    if remote is not None:
        if cpus is not None or gpus is not None:
            raise UserError("--cpus and --gpus are for a local scheduler; a labq server starts its own")
        submitted, started = remote.submit(spec, list(overrides))
    else:
        submitted = _submit(ctx, spec, overrides, will_start=True)
    render.console.print(f"experiment {submitted.experiment}: {len(submitted.job_ids)} jobs "
                         f"({', '.join(f'{s} {n}' for s, n in submitted.stages.items())}), ids "
                         f"{submitted.job_ids[0]}-{submitted.job_ids[-1]}", highlight=False)
    if remote is None:
        started = _start_after_submit(ctx, submitted, cpus, gpus)
    if started:
        render.console.print(f"started a {'' if remote is None else 'remote '}scheduler (Ray takes a few seconds "
                             "to come up)", highlight=False)
    ctx.exit(_wait_and_report(ctx, submitted, show_results=True))


@cli.command()
@click.argument("spec", type=click.Path())
@_set_option
@click.option("--wait", "wait_", is_flag=True, help="Block until every job ends; exit 1 unless all succeeded.")
@click.option("--json", "as_json", is_flag=True, help="Print the ids as JSON.")
@click.option("--no-start", is_flag=True, help="Only queue the jobs; do not start a scheduler.")
@_cpus_option
@_gpus_option
@click.pass_context
def submit(ctx: click.Context, spec: str, overrides: tuple[str, ...], wait_: bool, as_json: bool, no_start: bool,
           cpus: float | None, gpus: int | None) -> None:
    """Validate SPEC, expand its sweeps and queue every job; print the ids.

    Starts a local scheduler in the background when none is running."""
    remote = _remote(ctx)
    if remote is not None:
        if no_start or cpus is not None or gpus is not None:
            raise UserError("--no-start, --cpus and --gpus are for a local scheduler; a labq server starts its own")
        submitted, started = remote.submit(spec, list(overrides))
    else:
        submitted = _submit(ctx, spec, overrides, will_start=not no_start)
        started = False if no_start else _start_after_submit(ctx, submitted, cpus, gpus)
    if as_json:
        out = {**submitted.to_json(), "scheduler_started": started}
        if wait_:  # JSON only: wait quietly, then report the final states
            from scheduler import api

            jobs = (api.wait(_store(ctx), submitted.experiment_id) if remote is None
                    else remote.wait(submitted.experiment_id))
            out["states"] = {str(j.id): j.state.value for j in jobs}
            _print_json(out)
            ctx.exit(EXIT_OK if api.succeeded_all(jobs) else EXIT_JOBS_FAILED)
        _print_json(out)
    else:
        click.echo(f"submitted experiment {submitted.experiment} (id {submitted.experiment_id}): "
                   f"{len(submitted.job_ids)} jobs, ids {submitted.job_ids[0]}-{submitted.job_ids[-1]}")
        if started:
            click.echo("started a local scheduler" if remote is None else "the server started its scheduler")
        click.echo(f"next: labq queue | labq results {submitted.experiment}")
    if wait_:
        ctx.exit(_wait_and_report(ctx, submitted, show_results=True))


# ---------------------------------------------------------------- reading

def _warn(starts) -> None:
    if starts.warning:
        click.echo(f"warning: {starts.warning}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One object per job.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000_000), default=None,
              help=f"Rows to show, running first [table: {QUEUE_TABLE_ROWS}; --json: all].")
@click.pass_context
def queue(ctx: click.Context, as_json: bool, limit: int | None) -> None:
    """Running, pending and blocked jobs, and why each pending job waits."""
    from scheduler import api

    if limit is None and not as_json:
        limit = QUEUE_TABLE_ROWS  # a screenful; rich takes ~1 ms a row to lay out
    remote = _remote(ctx)
    view = (api.queue(_store(ctx), _estimate_settings(ctx), limit=limit, summary=not as_json) if remote is None
            else remote.queue(limit, summary=not as_json))
    _warn(view.starts)
    if as_json:
        _print_json(view.to_json())
        return
    from scheduler import render

    render.console.print(render.queue_table(view.jobs, view.now, view.total, view.unplaced, view.starts.at,
                                            outlook=view.starts.outlook))
    if view.total > len(view.jobs):
        render.console.print(f"... {view.total - len(view.jobs)} more (--limit)", highlight=False)
    if view.total and not view.scheduler.running:
        render.console.print("no scheduler is running: `labq scheduler start` to run these jobs", highlight=False)


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, ref: str, as_json: bool) -> None:
    """One job (by id) or one experiment (by name): attempts, events, result."""
    from scheduler import api, render

    remote = _remote(ctx)
    found = api.status(_store(ctx), ref, _estimate_settings(ctx)) if remote is None else remote.status(ref)
    _warn(found.starts)
    if as_json:
        _print_json(found.to_json())
        return
    if isinstance(found, api.JobStatus):
        render.console.print(render.status_view(found.job, found.attempts, found.events, found.advice,
                                                found.estimated_start, found.now,
                                                found.starts.outlook.get(found.job.id)))
        return
    exp, jobs = found.experiment, found.jobs
    render.console.print(f"experiment {exp.name} (id {exp.id}) by {exp.user}, queue {exp.queue}, "
                         f"priority {exp.priority}, submitted {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(exp.submitted_at))}",
                         highlight=False)
    render.console.print("  ".join(f"{k}: {v}" for k, v in sorted(found.counts.items())), highlight=False)
    for line in render.search_lines(found.searches):
        render.console.print(line, highlight=False)
    render.console.print(render.queue_table(jobs, found.now, len(jobs), starts=found.starts.at,
                                            outlook=found.starts.outlook,
                                            title=f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}, "
                                                  f"{sum(not j.state.is_terminal() for j in jobs)} active"))


@cli.command()
@click.argument("ids", nargs=-1)
@click.option("--experiment", help="Cancel every active job of the experiment(s) of this name.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cancel(ctx: click.Context, ids: tuple[str, ...], experiment: str | None, as_json: bool) -> None:
    """Cancel pending or running jobs (by id) or a whole --experiment."""
    from scheduler import api

    if not ids and not experiment:
        raise UserError("labq cancel: give job ids or --experiment NAME")
    remote = _remote(ctx)
    done = (api.cancel(_store(ctx), list(ids), experiment, _settings(ctx)) if remote is None
            else remote.cancel(list(ids), experiment))
    if as_json:
        _print_json(done)
        return
    click.echo(f"cancelled {len(done['cancelled'])}, stopping {len(done['stopping'])} running, "
               f"{len(done['already_ended'])} had already ended")


@cli.group()
def sweep() -> None:
    """Model-based searches (a stage with sweep.search)."""


@sweep.command("extend")
@click.argument("experiment")
@click.option("--samples", type=click.IntRange(min=1, max=100_000), required=True,
              help="How many more trials each of its searches may ask for.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sweep_extend(ctx: click.Context, experiment: str, samples: int, as_json: bool) -> None:
    """Continue EXPERIMENT's search for SAMPLES more trials, from what it has learnt."""
    from scheduler import api

    remote = _remote(ctx)
    if remote is not None:
        done, started = remote.extend_search(experiment, samples), False
    else:
        done = api.extend_search(_store(ctx), experiment, samples, _settings(ctx))
        try:
            started = _ensure_scheduler(ctx, None, None)
        except (LabqError, OSError) as exc:
            raise SchedulerStartError(f"{done['experiment']}'s search is extended, but no scheduler could be "
                                      f"started: {exc}. Fix that, then `labq scheduler start`") from None
    if as_json:
        _print_json({**done, "scheduler_started": started})
        return
    click.echo(f"{done['experiment']}: {', '.join(done['stages'])} may ask for {samples} more trial(s)"
               + ("; started a local scheduler" if started else ""))


@cli.command()
@click.argument("job_id", type=click.IntRange(min=1, max=2**62))
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the job ends.")
@click.option("--attempt", type=click.IntRange(min=1, max=10_000), help="Attempt number (default: the latest).")
@click.option("--stderr/--stdout", "show_stderr", default=None, help="Only one stream (default: both).")
@click.pass_context
def logs(ctx: click.Context, job_id: int, follow: bool, attempt: int | None, show_stderr: bool | None) -> None:
    """stdout/stderr of a job's attempt; -f follows it live."""
    from scheduler import api

    streams = ("stdout", "stderr") if show_stderr is None else ("stderr",) if show_stderr else ("stdout",)
    remote = _remote(ctx)
    if remote is not None:
        _remote_logs(remote, job_id, follow, attempt, streams)
        return
    store = _store(ctx)
    while follow and not api.log_ready(store, job_id):
        time.sleep(0.5)
    offsets = None  # each read goes on from where the last ended, on the attempt the first chose
    while True:
        got = api.read_logs(store, job_id, attempt, streams, offsets)
        for name, chunk in got.chunks:
            out = sys.stderr.buffer if name == "stderr" and len(streams) > 1 else sys.stdout.buffer
            out.write(chunk)
            out.flush()
        if not follow or got.done:
            return
        attempt, offsets = got.attempt, got.offsets
        time.sleep(0.3)


def _remote_logs(remote, job_id: int, follow: bool, attempt: int | None, streams: tuple[str, ...]) -> None:
    """`labq logs` through a server: one read, or -f as a stream until the attempt is done."""
    def write(name: str, data: bytes) -> None:
        out = sys.stderr.buffer if name == "stderr" and len(streams) > 1 else sys.stdout.buffer
        out.write(data)
        out.flush()

    if not follow:
        offsets = None
        while True:  # the server sends a long log in steps
            got = remote.read_logs(job_id, attempt, streams, offsets)
            for name, chunk in got.chunks:
                write(name, chunk)
            if not got.chunks:
                return
            attempt, offsets = got.attempt, got.offsets
    for name, text in remote.follow_logs(job_id, attempt, streams):
        write(name, text.encode())


@cli.command()
@click.argument("job_id", type=click.IntRange(min=1, max=2**62))
@click.option("--attempt", type=click.IntRange(min=1, max=10_000), help="Attempt number (default: the latest).")
@click.option("--get", "get_path", metavar="PATH", help="Write this file (an output or artifact) to stdout or -o.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="With --get: write it here.")
@click.option("--json", "as_json", is_flag=True, help="List the files as JSON.")
@click.pass_context
def artifacts(ctx: click.Context, job_id: int, attempt: int | None, get_path: str | None, output: str | None,
              as_json: bool) -> None:
    """The files a job's attempt left: its outputs (what it created or changed in
    its working directory) and the artifacts it saved; --get fetches one."""
    from scheduler import api, render

    remote = _remote(ctx)
    files = api.attempt_files(_store(ctx), job_id, attempt) if remote is None else remote.attempt_files(job_id, attempt)
    chosen = files.attempt
    if get_path is None:
        if output:
            raise UserError("labq artifacts: -o needs --get PATH (the file to write)")
        if as_json:
            _print_json(files.to_json())
            return
        if chosen.ended_at is None:
            render.console.print(f"attempt {chosen.number} is still running: its files are listed when it ends "
                                 f"(working directory {Path(chosen.run_dir) / 'workdir'})", highlight=False)
            return
        if not chosen.outputs and not chosen.artifacts:
            render.console.print(f"attempt {chosen.number} of job {job_id} left no outputs or artifacts",
                                 highlight=False)
            return
        render.console.print(render.files_table(chosen, title=f"job {job_id}, attempt {chosen.number}",
                                                limit=10_000_000))
        return
    if remote is not None:
        _remote_download(remote, job_id, get_path, chosen.number, output)
        return
    source = api.attempt_file(chosen, get_path)
    if output:
        try:
            shutil.copyfile(source, output)
        except OSError as exc:
            raise UserError(f"-o {output}: cannot write it: {exc.strerror or exc}") from None
        click.echo(f"wrote {output} ({source.stat().st_size} bytes)", err=True)
        return
    with open(source, "rb") as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
    sys.stdout.buffer.flush()


def _remote_download(remote, job_id: int, path: str, attempt: int, output: str | None) -> None:
    if not output:
        remote.download(job_id, path, attempt, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    try:
        with open(output, "wb") as f:
            size = remote.download(job_id, path, attempt, f)
    except OSError as exc:
        raise UserError(f"-o {output}: cannot write it: {exc.strerror or exc}") from None
    click.echo(f"wrote {output} ({size} bytes)", err=True)


@cli.command()
@click.argument("experiment")
@click.option("--json", "as_json", is_flag=True, help="One object per job: params, metrics, timing.")
@click.option("--csv", "as_csv", is_flag=True, help="Flat CSV: params.*, metrics.* columns.")
@click.option("--sort", help="Metric or param to sort by (default: the main metric, best first).")
@click.option("--asc/--desc", "ascending", default=None, help="Sort direction (default: best first).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG: main metric against each swept param.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000_000), default=None,
              help=f"Rows to show, best first [table: {RESULTS_TABLE_ROWS}; --json/--csv: all].")
@click.pass_context
def results(ctx: click.Context, experiment: str, as_json: bool, as_csv: bool, sort: str | None,
            ascending: bool | None, plot: str | None, limit: int | None) -> None:
    """One row per job of EXPERIMENT: params and metrics, best first."""
    from scheduler import api

    if limit is None and not (as_json or as_csv):
        limit = RESULTS_TABLE_ROWS  # a terminal cannot show 100k rows; rich would take minutes to lay them out
    remote = _remote(ctx)
    store = _store(ctx) if remote is None else None

    def read(limit: int | None):
        if remote is not None:
            return remote.results(experiment, sort=sort, ascending=ascending, limit=limit)
        return api.results(store, experiment, sort=sort, ascending=ascending, limit=limit)

    res = read(limit)
    if plot:
        plotted = res if len(res.rows) == res.total else read(None)
        from scheduler.plots import plot_results

        curves = (api.step_curves(plotted.rows, plotted.metric) if remote is None
                  else remote.step_curves(experiment, plotted.metric))
        try:
            plot_results(plotted, curves, plot)
        except OSError as exc:
            raise UserError(f"--plot {plot}: cannot write it: {exc.strerror or exc}") from None
    if as_json:
        _print_json(res.to_json())
    elif as_csv:
        flat = [api.flatten(r) for r in res.rows]
        columns = list(dict.fromkeys(k for row in flat for k in row))
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
    else:
        from scheduler import render

        render.console.print(render.results_table(res))
        _print_more(res, "--limit N, or --csv / --json for all")
        if plot:
            render.console.print(f"wrote {plot}", highlight=False)


def _print_more(res, hint: str) -> None:
    """Under a results table: the common right-sizing advice, and how many rows it left out."""
    from scheduler import render

    for line in res.advice:
        render.console.print(f"right-sizing: {line}", highlight=False)
    if res.total > len(res.rows):
        render.console.print(f"... {res.total - len(res.rows)} more ({hint})", highlight=False)


@cli.command()
@click.option("--since", default="7d", show_default=True, help="Period to report: a duration back from now (12h, 7d).")
@click.option("--by", type=click.Choice(["user", "queue", "both"]), default="both", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One object per group.")
@click.pass_context
def usage(ctx: click.Context, since: str, by: str, as_json: bool) -> None:
    """Resource-hours, jobs and waiting per user and queue (like SLURM's sreport),
    and the decayed usage fair share ranks by."""
    from scheduler import api

    remote = _remote(ctx)
    if remote is None:
        report = api.usage(_store(ctx), since, by, _settings(ctx).scheduler.usage_half_life)
    else:
        report = remote.usage(since, by)
    half_life = report.half_life
    if as_json:
        _print_json(report.to_json())
        return
    from scheduler import render

    render.console.print(render.usage_table(report.rows, report.groups, since, half_life))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes(ctx: click.Context, as_json: bool) -> None:
    """Capacity, allocation and GPUs per node, as the scheduler last saw them."""
    from scheduler import api

    remote = _remote(ctx)
    view = api.nodes(_store(ctx)) if remote is None else remote.nodes()
    if as_json:
        _print_json(view.to_json())
        return
    from scheduler import render

    st = view.scheduler
    if not st.running:
        render.console.print("no scheduler is running; showing what the last one saw", highlight=False)
    elif st.ray == "down":
        render.console.print("Ray is DOWN: the scheduler keeps the queue and resumes when Ray is back", highlight=False)
    render.console.print(render.nodes_table(view.nodes, time.time()))


@cli.command()
@click.argument("trace", type=click.Path())
@click.option("--nodes", "nodes_csv", type=click.Path(dir_okay=False), help="NODES.csv: node_id, cpu, gpu[, memory].")
@click.option("--cluster", "cluster_yaml", type=click.Path(dir_okay=False),
              help="A Ray cluster.yaml: node types x max_workers, queues from metadata.labq.")
@click.option("--gpus", type=click.IntRange(min=0, max=1_000_000), help="One node with this many GPUs ...")
@click.option("--cpus", type=_FiniteFloat(min=0, min_open=True, max=1e9), help="... and this many CPUs.")
@click.option("--policy", "policies", multiple=True, metavar="NAME",
              help="fifo, priority, fair or labq (repeatable; default: all four).")
@click.option("--json", "as_json", is_flag=True, help="One object per policy.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG of GPU and CPU allocation over time.")
@click.option("--restart-cost", type=_FiniteFloat(min=0, max=1e9), default=0.0, show_default=True, metavar="SECONDS",
              help="What a preempted job loses on top of its progress since its checkpoint (restart, reload).")
@click.option("--stretch", type=_FiniteFloat(min=0, max=1e4), metavar="X",
              help="labq: a job is due after waiting X times its predicted run time (default: scheduler.stretch).")
@click.option("--reserve-after", metavar="DURATION",
              help="labq: a due job that waited this long reserves room from predicted ends "
                   "(default: scheduler.reserve_after).")
@click.option("--tiers", metavar="T1,T2,...",
              help="labq: least-attained-service tiers for every queue (e.g. 1h,8h): GPU time thresholds; "
                   "jobs of higher tiers are preempted for lower ones (those with checkpoints=1 in the trace).")
@click.option("--preempt-longer", type=_FiniteFloat(min=1, max=1e6), metavar="X",
              help="labq: every queue runs the shortest expected first, preempting jobs expected to run X times "
                   "longer (X doubles per preemption; those with checkpoints=1 in the trace).")
@click.option("--max-preemptions", type=click.IntRange(min=0, max=1000), metavar="N",
              help="With --tiers or --preempt-longer: a job is preempted at most N times (default 2).")
@click.pass_context
def simulate(ctx: click.Context, trace: str, nodes_csv: str | None, cluster_yaml: str | None, gpus: int | None,
             cpus: float | None, policies: tuple[str, ...], as_json: bool, plot: str | None,
             restart_cost: float, stretch: float | None, reserve_after: str | None, tiers: str | None,
             preempt_longer: float | None, max_preemptions: int | None) -> None:
    """Replay TRACE.csv through the real policy in virtual time.

    Prints avg JCT, avg and p95 wait, makespan and utilisation per policy.
    """
    from scheduler import policy, simulator

    unknown = [p for p in policies if p not in policy.POLICIES]
    if unknown:
        raise UserError(f"--policy {unknown[0]}: unknown policy; choose from {', '.join(policy.POLICIES)}")
    one_node = gpus is not None or cpus is not None
    if sum([nodes_csv is not None, cluster_yaml is not None, one_node]) != 1:
        raise UserError("labq simulate: give the cluster as one of --nodes NODES.csv, --cluster cluster.yaml, "
                        "or --gpus N --cpus N")
    jobs = simulator.load_trace(trace)
    settings = _settings(ctx)
    queues = settings.queue_configs()
    if nodes_csv:
        nodes = simulator.load_nodes(nodes_csv)
    elif cluster_yaml:
        from scheduler.config import load_settings

        nodes, queues = simulator.cluster_from_yaml(cluster_yaml)
        settings = load_settings(cluster_yaml)
    else:
        nodes = [simulator.node("node-0", cpus if cpus is not None else float(max(1, 4 * (gpus or 0))), gpus or 0)]
    if tiers is not None or preempt_longer is not None:
        queues = simulator.with_preemption(queues, jobs, None if tiers is None else _durations_list("--tiers", tiers),
                                           preempt_longer, max_preemptions)
    elif max_preemptions is not None:
        raise UserError("--max-preemptions: only with --tiers or --preempt-longer")
    results = simulator.compare(jobs, nodes, policies or policy.POLICIES, queues, settings.scheduler.usage_half_life,
                                restart_cost, stretch if stretch is not None else settings.scheduler.stretch,
                                reserve_after=_duration_option("--reserve-after", reserve_after, zero=True)
                                if reserve_after is not None else settings.scheduler.reserve_after)
    if plot:
        try:
            simulator.plot_utilisation(results, plot)
        except OSError as exc:
            raise UserError(f"--plot {plot}: cannot write it: {exc.strerror or exc}") from None
    if as_json:
        _print_json([r.to_json() for r in results])
        return
    from scheduler import render

    render.console.print(simulator.results_table(results, simulator.lower_bound(jobs, nodes)))


def _duration_option(option: str, text: str, zero: bool = False,
                     wanted: str = "a duration such as 30m") -> float:
    """``30m`` as seconds: positive (or 0, with ``zero``)."""
    from scheduler.units import parse_duration

    try:
        value = parse_duration(text.strip())
    except (ValueError, TypeError):
        value = None
    if value is None or not (value > 0 or (zero and value == 0)):
        raise UserError(f"{option}: expected {wanted}, got {text.strip()!r}")
    return value


def _durations_list(option: str, text: str) -> tuple[float, ...]:
    """``1h,8h`` as seconds, each positive, no repeats."""
    values = [_duration_option(option, part, wanted="positive durations separated by commas (such as 1h,8h)")
              for part in text.split(",")]
    if len(set(values)) != len(values):
        raise UserError(f"{option}: each threshold once, got {text!r}")
    return tuple(sorted(values))


# ---------------------------------------------------------------- the daemon

@cli.group()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Start, stop or inspect the long-running scheduler."""
    _local_only(ctx, f"labq scheduler {ctx.invoked_subcommand or ''}".strip())


@scheduler.command("start")
@click.option("--address", help="Ray address to connect to (default: RAY_ADDRESS, cluster.yaml, else start local Ray).")
@_cpus_option
@_gpus_option
@click.option("--idle-timeout", type=_FiniteFloat(min=0), default=0, show_default=True,
              help="Exit after this many idle seconds (0: never).")
@click.pass_context
def scheduler_start(ctx: click.Context, address: str | None, cpus: float | None, gpus: int | None,
                    idle_timeout: float) -> None:
    """Start the scheduler in the background and wait until it is connected to Ray."""
    from scheduler import daemon

    settings = _settings(ctx)
    pid = daemon.start(settings, cluster=ctx.obj.get("cluster"), address=address, cpus=cpus, gpus=gpus,
                       idle_timeout=idle_timeout, wait=True)
    if pid is None:
        st = daemon.status(settings.home_path)
        click.echo(f"a scheduler is already running (pid {st.pid}) for {settings.home_path}")
    else:
        click.echo(f"scheduler started (pid {pid}); log: {daemon.log_path(settings.home_path)}")


@scheduler.command("stop")
@click.option("--drain", is_flag=True, help="Start nothing new, wait for the running jobs to end, then stop.")
@click.option("--cancel-running", is_flag=True, help="End the running jobs too and requeue them.")
@click.pass_context
def scheduler_stop(ctx: click.Context, drain: bool, cancel_running: bool) -> None:
    """Stop the scheduler.  Running jobs go on and the next `labq scheduler
    start` takes them over, unless --drain or --cancel-running says otherwise."""
    from scheduler import daemon

    if drain and cancel_running:
        raise click.UsageError("--drain and --cancel-running exclude each other")
    mode = daemon.STOP_DRAIN if drain else daemon.STOP_CANCEL if cancel_running else daemon.STOP_LEAVE
    home = _settings(ctx).home_path
    if drain and daemon.is_running(home):
        click.echo("draining: nothing new starts; waiting for the running jobs to end (Ctrl-C stops waiting, "
                   "not the drain)")
    stopped = daemon.stop(home, timeout=None if drain else 30.0, mode=mode)
    if stopped is None:
        click.echo("no scheduler was running")
        return
    left = stopped.left_running
    tail = ("; it did not stop in time and was killed: the next start adopts what still runs" if stopped.killed
            else f"; {left} running jobs go on, and the next `labq scheduler start` takes them over" if left else "")
    click.echo(f"scheduler stopped (pid {stopped.pid}){tail}")


@scheduler.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def scheduler_status(ctx: click.Context, as_json: bool) -> None:
    """Whether a scheduler runs for this LABQ_HOME, and whether it sees Ray."""
    from scheduler import api

    st = api.scheduler_status(_settings(ctx).home_path)
    if as_json:
        _print_json(st.to_json())
    elif not st.running:
        click.echo(f"scheduler: not running (home {st.home})")
    else:
        age = f", heartbeat {st.heartbeat_age:.1f}s ago" if st.heartbeat_age is not None else ""
        click.echo(f"scheduler: running (pid {st.pid}), ray: {st.ray} ({st.address}){age}, home {st.home}")
    ctx.exit(EXIT_OK if st.running else EXIT_JOBS_FAILED)


# ---------------------------------------------------------------- the HTTP server

@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond loopback (0.0.0.0), give TLS or put a proxy in front.")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8470, show_default=True)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate: serve HTTPS (with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key of --tls-cert.")
@click.option("--proxy", "behind_proxy", is_flag=True,
              help="Behind a TLS proxy on this machine: trust its X-Forwarded-Proto/For headers.")
@click.pass_context
def server(ctx: click.Context, host: str, port: int, tls_cert: str | None, tls_key: str | None,
           behind_proxy: bool) -> None:
    """Serve labq's HTTP API and dashboard for this LABQ_HOME (on the head).

    Every request needs a token (`labq token create NAME`); the server runs no
    job itself: a submit starts the scheduler when none runs."""
    _local_only(ctx, "labq server")
    from scheduler.server.serve import serve

    serve(_settings(ctx), ctx.obj.get("cluster"), host, port, tls_cert, tls_key, behind_proxy)


@cli.group()
@click.pass_context
def token(ctx: click.Context) -> None:
    """API tokens of `labq server`: each one is a labq user."""
    _local_only(ctx, "labq token")


@token.command("create")
@click.argument("name")
@click.pass_context
def token_create(ctx: click.Context, name: str) -> None:
    """Make a token for user NAME and print it (only its hash is kept)."""
    from scheduler.server.tokens import TokenBook

    book = TokenBook(_settings(ctx).home_path)
    secret = book.create(name)
    click.echo(secret)
    click.echo(f"token for {name}: shown once, keep it secret; on a laptop: labq login URL", err=True)


@token.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """The tokens: user, id, when made (never the token)."""
    from scheduler.server.tokens import TokenBook

    entries = TokenBook(_settings(ctx).home_path).entries()
    if as_json:
        _print_json([{"user": e.user, "id": e.token_id, "created_at": e.created_at} for e in entries])
        return
    for e in entries:
        click.echo(f"{e.user}\t{e.token_id}\t{time.strftime('%Y-%m-%d %H:%M', time.localtime(e.created_at))}")


@token.command("revoke")
@click.argument("name")
@click.option("--id", "token_id", help="Only this token of NAME's (from `labq token list`).")
@click.pass_context
def token_revoke(ctx: click.Context, name: str, token_id: str | None) -> None:
    """Revoke NAME's tokens (a running server stops taking them at once)."""
    from scheduler.server.tokens import TokenBook

    removed = TokenBook(_settings(ctx).home_path).revoke(name, token_id)
    if not removed:
        raise UserError(f"labq token revoke {name}: no such token" + (f" {token_id}" if token_id else ""))
    click.echo(f"revoked {removed} token{'s' if removed != 1 else ''} of {name}")


@cli.command()
@click.argument("url")
@click.option("--token", "token_text", help="The token (default: asked for, not echoed; or LABQ_TOKEN).")
def login(url: str, token_text: str | None) -> None:
    """Save a token for the labq server at URL, after checking it there."""
    from scheduler.remote import Remote, normal_url, save_token

    url = normal_url(url)
    token_text = token_text or os.environ.get("LABQ_TOKEN") or click.prompt("token", hide_input=True)
    who = Remote(url, token_text.strip()).whoami()
    path = save_token(url, token_text.strip())
    click.echo(f"logged in to {url} as {who['user']}{' (admin)' if who.get('admin') else ''}; token saved in {path}")
    click.echo(f"next: export LABQ_SERVER={url}  (or labq --server {url} ...)")


@cli.command()
@click.argument("url")
def logout(url: str) -> None:
    """Forget the token saved for URL."""
    from scheduler.remote import forget_token

    click.echo("logged out" if forget_token(url) else f"no token was saved for {url}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: turns labq's errors into one line and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="labq", standalone_mode=False)
        return code if isinstance(code, int) else EXIT_OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_JOBS_FAILED
    except click.exceptions.NoArgsIsHelpError as exc:  # `labq`, `labq scheduler`: help, not an error
        click.echo(exc.ctx.get_help() if exc.ctx else "")
        return EXIT_OK
    except click.UsageError as exc:
        hint = f" ({exc.ctx.command_path} --help)" if exc.ctx else ""
        click.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
        return EXIT_BAD_INPUT
    except UserError as exc:
        lines = exc.lines() if hasattr(exc, "lines") else [one_line(str(exc))]
        for line in lines:
            click.echo(f"error: {line}", err=True)
        return EXIT_BAD_INPUT
    except LabqError as exc:
        click.echo(f"error: {one_line(str(exc))}", err=True)
        return EXIT_LABQ_ERROR
    except sqlite3.DatabaseError as exc:  # met in the middle of a verb: a damaged page, a full or failing disk
        click.echo(f"error: {one_line(state_database_error(exc))}", err=True)
        return EXIT_LABQ_ERROR
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # the machine, not the input: a permission, a full disk, a missing directory
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {one_line(where + (exc.strerror or str(exc)))}; nothing more was done", err=True)
        return EXIT_LABQ_ERROR


if __name__ == "__main__":
    sys.exit(main())
