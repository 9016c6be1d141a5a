"""Commands that look at runs: status, logs, diff, artifacts, path."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import click

from clowder.commands.common import json_option, print_table, root_option
from clowder.errors import (
    EXIT_WORK_FAILED,
    UsageError,
)
from clowder.state import JobState
from clowder.tree import Root, find_root

# Commands import what they use: `clowder status` over a thousand pipelines must not pay for
# jsonschema, rich or git it does not need (see README, "The index at scale").


@click.command()
@click.argument("pipeline")
@click.argument("job")
@json_option
@root_option
def why(pipeline: str, job: str, as_json: bool, root_dir: Path | None) -> None:
    """Say why JOB ran, waits or was skipped: the scheduler's own decision about it now, naming the
    upstream, condition, resource pool, max_parallel, budget, backoff or request that decided it."""
    from clowder.views import decisions

    w = decisions.why(find_root(root_dir), pipeline, job)
    if as_json:
        click.echo(json.dumps(decisions.why_json(w), indent=2))
        return
    if w.state is JobState.APPROVAL:  # not "is approval": the reason says it
        click.echo(f"{w.pipeline}/{w.job} {w.reason}")
        return
    click.echo(f"{w.pipeline}/{w.job} is {w.state.value}: {w.reason}")


@click.command()
@click.argument("pipeline", required=False)
@json_option
@root_option
def status(pipeline: str | None, as_json: bool, root_dir: Path | None) -> None:
    """Show every pipeline's state, or PIPELINE's jobs with their states, attempts, durations and
    what their agents spent."""
    from clowder.views import jsonout, reader

    root = find_root(root_dir)
    if pipeline is None and not as_json:
        # A few objects a pipeline, none of them in a cycle, all alive until the table is printed:
        # the cyclic collector would only walk them again and again (10,000 pipelines: ~5% of the time).
        gc.disable()
        try:
            lines = reader.status_lines(root)
            if not lines:
                click.echo("no pipelines yet; create one with `clowder new TEMPLATE --prompt TEXT`")
                return
            print_table(("PIPELINE", "STATE", "JOBS", "MESSAGE"), lines)
        finally:
            gc.enable()
        return
    reports = reader.reports(root, pipeline)
    if as_json:
        click.echo(json.dumps(jsonout.reports_json(reports), indent=2))
        return
    from clowder.spec import format_duration

    r = reports[0]
    click.echo(f"pipeline {r.name}: {r.state}" + (f" — {r.message}" if r.message else ""))
    for problem in r.problems:
        click.echo(f"  {problem}")
    spent = r.usage  # a COST column only where agents reported any
    rows = []
    for j in r.jobs:
        duration = format_duration(j.duration) if j.duration is not None else "-"
        cost = [f"${j.usage.cost_usd:.4f}" if j.usage else "-"] if spent else []
        # Outdated is a mark beside the state (clowder.scheduler.inputs), never a state of its own.
        state, message = (f"{j.state} (outdated)", "; ".join(filter(None, (j.outdated.reason, j.message)))) \
            if j.outdated else (j.state, j.message)
        rows.append((j.name, j.stage or "-", state, str(j.attempt or "-"), duration, *cost, message))
    print_table(("JOB", "STAGE", "STATE", "ATTEMPT", "DURATION", *(["COST"] if spent else []), "MESSAGE"), rows)
    if spent:
        click.echo(f"spent: {jsonout.format_usage(spent)}")


@click.command()
@click.argument("pipeline")
@click.argument("job", required=False)
@click.option("--attempt", "-a", type=click.IntRange(min=1), help="Which attempt of JOB (default: the latest).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing as attempts write: JOB's until it has ended (or the --attempt's until it "
                   "ends), or without JOB every job's until the pipeline has ended. Exit 1 if that did not succeed.")
@root_option
def logs(pipeline: str, job: str | None, attempt: int | None, follow: bool, root_dir: Path | None) -> None:
    """Print what an attempt of JOB wrote to stdout and stderr; without JOB, every job's latest
    attempt's lines, in the order the jobs started, each prefixed with `job#attempt | `."""
    root = find_root(root_dir)
    if job is None:
        if attempt is not None:
            raise UsageError("--attempt needs a JOB")
        ok = _pipeline_logs(root, pipeline, follow)
    else:
        ok = _job_logs(root, pipeline, job, attempt, follow)
    if not ok:
        click.get_current_context().exit(EXIT_WORK_FAILED)


def _job_logs(root: Root, pipeline: str, job: str, attempt: int | None, follow: bool) -> bool:
    from clowder.state import JobState
    from clowder.views.logs import JobLogs

    stream = JobLogs(root, pipeline, job, attempt, follow)
    for chunk in stream:
        click.echo(chunk, nl=False)
    return not follow or stream.outcome is JobState.SUCCEEDED


LABEL_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")


def _pipeline_logs(root: Root, pipeline: str, follow: bool) -> bool:
    import time

    from clowder.state import PipelineState
    from clowder.views.logs import POLL_SECONDS
    from clowder.views.pipeline_logs import PipelineLogs

    stream = PipelineLogs(root, pipeline, follow)
    colour = sys.stdout.isatty()
    colours: dict[str, str] = {}
    for line in stream:
        if line is None:
            time.sleep(POLL_SECONDS)
            continue
        text = stream.prefixed(line)
        if colour:  # only the label: the job's own text is printed as it wrote it
            label, rest = text.split(" | ", 1)
            fg = colours.setdefault(line.job, LABEL_COLOURS[len(colours) % len(LABEL_COLOURS)])
            text = click.style(label, fg=fg) + " | " + rest
        click.echo(text, nl=False)
    return not follow or stream.outcome is PipelineState.SUCCEEDED


# -- inspecting workspaces (git) ------------------------------------------------------------------
# The imports are local so that these commands stay an append-only block of this file.

class _PathsAfterDashes(click.Command):
    """Keeps what follows `--` apart (click would drop the `--` and mix paths with the jobs)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            args, ctx.meta["clowder.paths"] = args[:i], args[i + 1:]
        return super().parse_args(ctx, args)


@click.command(cls=_PathsAfterDashes, context_settings={"ignore_unknown_options": True})
@click.argument("pipeline")
@click.argument("a")
@click.argument("rest", nargs=-1, type=click.UNPROCESSED, metavar="[B] [GIT_DIFF_OPTIONS]... [-- PATH...]")
@root_option
def diff(pipeline: str, a: str, rest: tuple[str, ...], root_dir: Path | None) -> None:
    """Show `git diff` from A to B, or what A changed when B is left out.

    A and B are jobs (`dev`, `dev.r1`: the job's final commit) or attempts (`test@2`). Alone, a
    job is diffed against what it started from, an attempt against its base (usually the
    attempt before it). Options (`--stat`, `--name-only`, `-U5`, ...) go to git diff; write
    them as one word (`--diff-filter=M`). Paths go after `--`: `clowder diff p dev test -- src/`."""
    from clowder import workspace

    root = find_root(root_dir)
    files = click.get_current_context().meta.get("clowder.paths", [])
    proc = workspace.diff(root.pipeline(pipeline), a, rest, files)
    click.echo(proc.stdout, nl=False)
    click.get_current_context().exit(proc.returncode)


@click.command()
@click.argument("pipeline")
@click.argument("job", required=False)
@click.option("--sha", help="Only artifacts whose git blob id starts with this.")
@json_option
@root_option
def artifacts(pipeline: str, job: str | None, sha: str | None, as_json: bool, root_dir: Path | None) -> None:
    """List the artifacts of PIPELINE's attempts (or JOB's): each file an attempt's commit
    changed or declared as an output, with its git blob id, size and kind."""
    from clowder.views import jsonout, reader

    root = find_root(root_dir)
    rows = reader.artifacts(root, pipeline, job, sha)
    if as_json:
        click.echo(json.dumps(jsonout.artifacts_json(rows), indent=2))
        return
    if not rows:
        click.echo("no artifacts" + (f" with blob {sha}" if sha else ""))
        return
    print_table(("JOB", "ATTEMPT", "KIND", "SIZE", "BLOB", "PATH"),
                [(r.job, str(r.attempt), r.kind, str(r.size), r.blob[:12], r.path) for r in rows])


@click.command()
@click.argument("pipeline")
@click.argument("job")
@root_option
def path(pipeline: str, job: str, root_dir: Path | None) -> None:
    """Print the path of JOB's workspace (a git repository): `cd "$(clowder path p dev)"`."""
    from clowder import workspace

    root = find_root(root_dir)
    click.echo(str(workspace.workspace_path(root.pipeline(pipeline), job)))


# -- monitoring (clowder serve) -------------------------------------------------------------------
# The web extra is optional: fastapi and uvicorn are imported only when `serve` runs.


COMMANDS = (status, why, logs, diff, artifacts, path,)
