"""Commands that run pipelines and steer them: run, watch, cancel, retry, spawn, approve, reject."""

from __future__ import annotations

from pathlib import Path

import click

from clowder.commands.common import F, console, parse_duration_option, root_option
from clowder.errors import (
    EXIT_BAD_INPUT,
    EXIT_CRASH,
    EXIT_OK,
    EXIT_WORK_FAILED,
    ClowderError,
)
from clowder.tree import Root, find_root, is_name

# Commands import what they use: `clowder status` over a thousand pipelines must not pay for
# jsonschema, rich or git it does not need (see README, "The index at scale").


def _driver_options(f: F) -> F:
    f = click.option("--max-parallel", type=click.IntRange(min=1),
                     help="Attempts running at once under the root (default: clowder.toml's max_parallel).")(f)
    f = click.option("--poll/--no-poll", default=None,
                     help="Look for changed files every poll_interval instead of waiting for file events "
                          "(network file systems; the default with a Dask executor: inotify never sees what its "
                          "workers write).")(f)
    f = click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also append the decision log to this file.")(f)
    return f


@click.command()
@click.argument("pipelines", nargs=-1)
@_driver_options
@click.option("--dry-run", is_flag=True,
              help="Say what would run, in what order and why (each attempt taken to succeed); change nothing.")
@click.option("--outdated", is_flag=True,
              help="Re-run the outdated jobs of PIPELINES (default: every pipeline) and every job after them.")
@root_option
def run(pipelines: tuple[str, ...], max_parallel: int | None, poll: bool | None, log_file: Path | None, dry_run: bool,
        outdated: bool, root_dir: Path | None) -> None:
    """Run PIPELINES (default: every unfinished pipeline) to the end in the foreground.

    Exits 0 if all succeeded, 1 if not, 2 if a pipeline is blocked by a spec file that stays
    invalid (fix it and run again), 3 if Clowder failed on one (see its crash log). Logs each
    decision to stderr. If `clowder watch` is already serving the root, follows the pipelines
    it runs instead of scheduling them."""
    from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
    root = find_root(root_dir)
    if outdated:
        pipelines = _rerun_outdated(root, list(pipelines), dry_run, max_parallel)
        if dry_run or not pipelines:
            return
    elif dry_run:
        _dry_run(root, list(pipelines) or runner.unfinished(root), max_parallel)
        return
    ok = runner.run(root, list(pipelines) or None, max_parallel=max_parallel, poll=poll, log_file=log_file,
                    out=console())
    click.get_current_context().exit(EXIT_OK if ok else _run_failed(root, pipelines))


def _dry_run(root: Root, pipelines: list[str], max_parallel: int | None) -> None:
    from clowder.views import decisions

    if not pipelines:
        click.echo("nothing to run: every pipeline has ended")
        return
    click.echo("\n".join(decisions.dry_run_lines(decisions.dry_run(root, pipelines, max_parallel))))


def _rerun_outdated(root: Root, names: list[str], dry_run: bool, max_parallel: int | None) -> tuple[str, ...]:
    """Ask for a re-run of each outdated job (with its downstream) of the named pipelines, or with
    `dry_run` say what would run; the pipelines to run."""
    from clowder import runner
    from clowder.views import decisions, outdated

    found = outdated.plans(root, names or [n for n in root.pipeline_names() if is_name(n)])
    if not found:
        click.echo("nothing is outdated")
        return ()
    for line in outdated.plan_lines(found):
        click.echo(line)
    if dry_run:
        click.echo("\n".join(decisions.dry_run_lines(outdated.dry_run(root, found, max_parallel))))
        return ()
    for p in found:
        for o in p.roots:
            runner.request(root, p.pipeline, "rerun", o.job, downstream=True)
            click.echo(f"re-run requested for {p.pipeline}/{o.job} and what follows it")
    return tuple(p.pipeline for p in found)


def _run_failed(root: Root, pipelines: tuple[str, ...]) -> int:
    """The exit code of a run that did not succeed: 3 if Clowder failed on a pipeline (broken),
    2 if one is blocked by a bad file (each is named, with the file and the key), else 1."""
    from clowder.state import PipelineState, read_pipeline_status
    from clowder.tree import is_name

    halted: dict[PipelineState, list[str]] = {PipelineState.BROKEN: [], PipelineState.BLOCKED: []}
    for name in pipelines or tuple(n for n in root.pipeline_names() if is_name(n)):
        try:
            status = read_pipeline_status(root.pipeline(name).status_file)
        except ClowderError:
            continue
        if status.state in halted:
            halted[status.state].append(name)
            click.echo(f"error: {name} is {status.state.value}: {status.message}", err=True)
    if halted[PipelineState.BROKEN]:
        return EXIT_CRASH
    return EXIT_BAD_INPUT if halted[PipelineState.BLOCKED] else EXIT_WORK_FAILED


@click.command()
@_driver_options
@click.option("--sweep", default=None, metavar="DURATION",
              help="How often to re-read the whole tree to repair missed file events "
                   "[default: sweep_interval in clowder.toml, 30s].")
@root_option
def watch(max_parallel: int | None, poll: bool | None, log_file: Path | None, sweep: str | None,
          root_dir: Path | None) -> None:
    """Serve every pipeline under the root until SIGTERM or Ctrl-C.

    One daemon per root. On a signal it stops launching and exits; running jobs go on and the
    next daemon adopts them."""
    from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
    root = find_root(root_dir)
    runner.watch(root, max_parallel=max_parallel, poll=poll, log_file=log_file,
                 sweep=parse_duration_option(sweep) if sweep is not None else None)  # None: clowder.toml's


@click.command()
@click.argument("pipeline")
@click.argument("job", required=False)
@root_option
def cancel(pipeline: str, job: str | None, root_dir: Path | None) -> None:
    """Cancel JOB of PIPELINE, or the whole pipeline: running attempts get SIGTERM (SIGKILL
    after clowder.toml's kill_grace), and what can no longer run is skipped or cancelled."""
    from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
    root = find_root(root_dir)
    runner.request(root, pipeline, "cancel", job)
    click.echo(f"cancel requested for {pipeline}" + (f"/{job}" if job else ""))


@click.command()
@click.argument("pipeline")
@click.argument("job")
@root_option
def retry(pipeline: str, job: str, root_dir: Path | None) -> None:
    """Run a failed or cancelled JOB again (a new attempt), and re-run what it gated."""
    from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
    root = find_root(root_dir)
    runner.request(root, pipeline, "retry", job)
    click.echo(f"retry requested for {pipeline}/{job}")


def _decision(action: str, done: str, what: str) -> click.Command:
    @click.command(action, help=what)
    @click.argument("pipeline")
    @click.argument("job")
    @click.option("--comment", "-m", default="", help="Why: recorded with the decision (and in the commit's trailers).")
    @root_option
    def command(pipeline: str, job: str, comment: str, root_dir: Path | None) -> None:
        from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
        root = find_root(root_dir)
        r = runner.decide(root, pipeline, job, action, comment)
        by = getattr(r, "by", "")
        click.echo(f"{pipeline}/{job} {done}" + (f" by {by}" if by else "") + (f": {comment}" if comment else ""))
    return command


approve = _decision("approve", "approved", "Let JOB, waiting at its `when = \"manual\"` gate, start (a job not waiting "
                    "for approval is refused).")
reject = _decision("reject", "rejected", "Fail JOB, waiting at its `when = \"manual\"` gate, with the comment as its "
                   "message: what needs it to succeed is skipped.")


@click.command()
@click.argument("pipeline")
@click.argument("job")
@click.option("--downstream", is_flag=True,
              help="Run every job after JOB again too, once JOB has run (as their needs say).")
@root_option
def rerun(pipeline: str, job: str, downstream: bool, root_dir: Path | None) -> None:
    """Run JOB again, whatever way it ended (a new attempt, trigger `manual`); its earlier
    attempts stay, for `clowder diff PIPELINE JOB@1 JOB@2`. A job that has not ended is refused."""
    from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
    root = find_root(root_dir)
    runner.request(root, pipeline, "rerun", job, **({"downstream": True} if downstream else {}))
    click.echo(f"re-run requested for {pipeline}/{job}" + (" and what follows it" if downstream else ""))


@click.command()
@click.argument("job")
@click.option("--reason", "-r", required=True, help="What is wrong: the fix-up job gets it as context.")
@click.option("--context-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file (test output, a report) whose text the fix-up job gets as context.")
@root_option
def spawn(job: str, reason: str, context_file: Path | None, root_dir: Path | None) -> None:
    """From inside a running job, ask for a fix-up job: a copy of JOB that starts from this
    attempt's commit. When this attempt ends, this job waits for the fix-up, then runs again."""
    from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
    root = find_root(root_dir)
    pipeline, _ = runner.spawn(root, job, reason, context_file)
    click.echo(f"fix-up of {job} requested in {pipeline}; it starts when this attempt ends")


COMMANDS = (run, watch, cancel, retry, rerun, spawn, approve, reject,)
