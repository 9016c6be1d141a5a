"""The command line: thin click commands over the core; one handler maps errors to exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from clowder.errors import (
    EXIT_BAD_INPUT,
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_WORK_FAILED,
    ClowderError,
    SpecError,
    UsageError,
)
from clowder.tree import ROOT_ENV, Root, find_root

if TYPE_CHECKING:
    from rich.console import Console

# Commands import what they use: `clowder status` over a thousand pipelines must not pay for
# jsonschema, rich or git it does not need (see README, "The index at scale").

F = TypeVar("F", bound=Callable[..., Any])


class ClowderGroup(click.Group):
    """Runs a command and turns ClowderError into its one-line message and exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpecError as e:
            for problem in e.problems:
                click.echo(str(problem), err=True)
            ctx.exit(e.exit_code)
        except ClowderError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # click's own ways out (an exit code, a usage error): click prints and exits
        except Exception as e:
            # A bug: one line and a crash log to report, never a bare traceback, never exit 1
            # (which says the work failed).
            from clowder.crash import describe, write_crash_log

            path = write_crash_log(_state_dir(ctx), e, f"clowder {ctx.invoked_subcommand or ''}".strip())
            where = f"the traceback is in {path}" if path else "no crash log could be written"
            click.echo(f"error: Clowder failed unexpectedly: {describe(e)}; {where} (please report it)", err=True)
            ctx.exit(EXIT_CRASH)


def _state_dir(ctx: click.Context) -> Path | None:
    """The root's .clowder/ for a crash log, if the command found a root."""
    try:
        return find_root(ctx.meta.get("clowder.root_dir")).state_dir
    except Exception:  # the crash may be in finding the root itself
        return None


def _remember_root(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    ctx.meta["clowder.root_dir"] = value  # shared by the whole command: the error handler reads it
    return value


def root_option(f: F) -> F:
    return click.option(
        "--root", "root_dir", type=click.Path(file_okay=False, path_type=Path), envvar=ROOT_ENV,
        callback=_remember_root,
        help=f"The Clowder root (default: ${ROOT_ENV}, else the nearest directory upward holding clowder.toml).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def parse_duration_option(text: str) -> float:
    from clowder.spec import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise UsageError(str(e)) from e


def console() -> Console:
    from rich.console import Console

    # Off a terminal rich would wrap at 80 columns; scripts and logs want whole lines.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table without borders: rich's on a terminal; off one, plain columns two spaces apart,
    one line per row and nothing else, for scripts (and quick: no rich to import)."""
    if sys.stdout.isatty():
        from rich.table import Table

        table = Table(*headers, box=None, pad_edge=False)
        for row in rows:
            table.add_row(*row)
        console().print(table)
        return
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in (headers, *rows))
    click.echo("\n".join(lines))


@click.group(cls=ClowderGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clowder")
def main() -> None:
    """Clowder runs pipelines of jobs (AI coding agents or any command) whose workspaces are
    git repositories. The file tree is the database: pipelines are directories of TOML files."""


@main.command()
@click.argument("directory", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a Clowder root in DIRECTORY (default: here): clowder.toml with defaults,
    templates/ and pipelines/. Refuses to overwrite an existing root."""
    from clowder.template import init_root

    root = init_root(directory)
    click.echo(f"created Clowder root at {root.path}")
    click.echo("next: add a template under templates/, then `clowder new TEMPLATE --prompt TEXT`")


@main.command()
@click.argument("template")
@click.option("--prompt", "-p", required=True, help="The pipeline's prompt, stored verbatim and never changed.")
@click.option("--name", "-n", help="Pipeline name (default: a unique slug of the prompt).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a template variable (repeatable).")
@click.option("--source", help="Git repository (path or URL) the first jobs start from.")
@click.option("--ref", help="Branch, tag or commit of --source (default: its HEAD).")
@root_option
def new(template: str, prompt: str, name: str | None, sets: tuple[str, ...], source: str | None,
        ref: str | None, root_dir: Path | None) -> None:
    """Create a pipeline from TEMPLATE (templates/TEMPLATE.toml) under pipelines/.

    Prints the new pipeline's name. Never overwrites an existing pipeline."""
    from clowder.spec import parse_assignment
    from clowder.template import new_pipeline

    root = find_root(root_dir)
    values = dict(parse_assignment(s) for s in sets)
    src = {"repo": source, **({"ref": ref} if ref else {})} if source else None
    paths = new_pipeline(root, template, prompt, name, values, src)
    click.echo(f"created {paths.dir.relative_to(root.path)}/ from template {template}", err=True)
    click.echo(paths.name)


@main.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@root_option
def validate(path: Path | None, root_dir: Path | None) -> None:
    """Check a root, pipeline directory, template or spec file (default: the whole root).

    Prints every problem as `FILE: key.path: message`; exits 2 if there is any."""
    from clowder.validate import validate_path

    root: Root | None
    if path is None:
        root = find_root(root_dir)
        path = root.path
    else:
        try:
            root = find_root(root_dir, cwd=path.resolve() if path.is_dir() else path.resolve().parent)
        except ClowderError:
            root = None
    what, problems = validate_path(path, root)
    for problem in problems:
        click.echo(str(problem))
    if problems:
        click.echo(f"{what}: {len(problems)} problem(s)", err=True)
        click.get_current_context().exit(EXIT_BAD_INPUT)
    click.echo(f"{what}: ok")


@main.command()
@click.argument("pipeline")
@click.option("--format", "fmt", type=click.Choice(["dot", "mermaid"]), default="dot", show_default=True,
              help="Graphviz dot or a Mermaid flowchart.")
@root_option
def graph(pipeline: str, fmt: str, root_dir: Path | None) -> None:
    """Print PIPELINE's job graph with each job's state. Dashed edges are `failure`/`always`."""
    from clowder import drawing, known
    from clowder.validate import load_config, load_pipeline
    from clowder.views import tree

    root = find_root(root_dir)
    paths = known.pipeline(root, pipeline, with_spec=False)  # a missing pipeline.toml is a problem to show
    loaded = load_pipeline(paths, load_config(root))
    states = {j.name: j.state for j in tree.pipeline_report(root, paths).jobs}
    render = drawing.to_dot if fmt == "dot" else drawing.to_mermaid
    click.echo(render(loaded, states), nl=False)


@main.command()
@click.argument("pipeline", required=False)
@json_option
@root_option
def status(pipeline: str | None, as_json: bool, root_dir: Path | None) -> None:
    """Show every pipeline's state, or PIPELINE's jobs with their states, attempts, durations and
    what their agents spent."""
    from clowder.views import jsonout, reader

    root = find_root(root_dir)
    if pipeline is None and not as_json:
        entries = reader.entries(root, ended_from_status=True)
        if not entries:
            click.echo("no pipelines yet; create one with `clowder new TEMPLATE --prompt TEXT`")
            return
        print_table(("PIPELINE", "STATE", "JOBS", "MESSAGE"),
                    [(e.name, e.state, e.summary, e.message) for e in entries])
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
        rows.append((j.name, j.stage or "-", j.state, str(j.attempt or "-"), duration, *cost, j.message))
    print_table(("JOB", "STAGE", "STATE", "ATTEMPT", "DURATION", *(["COST"] if spent else []), "MESSAGE"), rows)
    if spent:
        click.echo(f"spent: {jsonout.format_usage(spent)}")


def _driver_options(f: F) -> F:
    f = click.option("--max-parallel", type=click.IntRange(min=1),
                     help="Attempts running at once under the root (default: clowder.toml's max_parallel).")(f)
    f = click.option("--poll", is_flag=True,
                     help="Use watchdog's polling observer (for network file systems where inotify does not work).")(f)
    f = click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also append the decision log to this file.")(f)
    return f


@main.command()
@click.argument("pipelines", nargs=-1)
@_driver_options
@root_option
def run(pipelines: tuple[str, ...], max_parallel: int | None, poll: bool, log_file: Path | None,
        root_dir: Path | None) -> None:
    """Run PIPELINES (default: every unfinished pipeline) to the end in the foreground.

    Exits 0 if all succeeded, 1 if not, 2 if a pipeline is blocked by a spec file that stays
    invalid (fix it and run again), 3 if Clowder failed on one (see its crash log). Logs each
    decision to stderr. If `clowder watch` is already serving the root, follows the pipelines
    it runs instead of scheduling them."""
    from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
    root = find_root(root_dir)
    ok = runner.run(root, list(pipelines) or None, max_parallel=max_parallel, poll=poll, log_file=log_file,
                    out=console())
    click.get_current_context().exit(EXIT_OK if ok else _run_failed(root, pipelines))


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


@main.command()
@_driver_options
@click.option("--sweep", default="30s", show_default=True,
              help="How often to re-read the whole tree to repair missed file events.")
@root_option
def watch(max_parallel: int | None, poll: bool, log_file: Path | None, sweep: str, root_dir: Path | None) -> None:
    """Serve every pipeline under the root until SIGTERM or Ctrl-C.

    One daemon per root. On a signal it stops launching and exits; running jobs go on and the
    next daemon adopts them."""
    from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
    root = find_root(root_dir)
    runner.watch(root, max_parallel=max_parallel, poll=poll, log_file=log_file, sweep=parse_duration_option(sweep))


@main.command()
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


@main.command()
@click.argument("pipeline")
@click.argument("job")
@root_option
def retry(pipeline: str, job: str, root_dir: Path | None) -> None:
    """Run a failed or cancelled JOB again (a new attempt), and re-run what it gated."""
    from clowder import runner  # the scheduler, watchdog, git: only for the commands that run
    root = find_root(root_dir)
    runner.request(root, pipeline, "retry", job)
    click.echo(f"retry requested for {pipeline}/{job}")


@main.command()
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


@main.command()
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


@main.command(cls=_PathsAfterDashes, context_settings={"ignore_unknown_options": True})
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


@main.command()
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


@main.command()
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

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address lets others read the logs.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@root_option
def serve(host: str, port: int, root_dir: Path | None) -> None:
    """Serve a web page and a JSON API of the root's pipelines, with live states and logs.

    It only reads the tree; cancel and retry drop request files, as the CLI does, and need
    the token it prints (kept in .clowder/serve.token). Stop it with Ctrl-C."""
    try:
        from clowder import server
    except ImportError as e:
        if e.name not in ("fastapi", "uvicorn", "starlette", "pydantic"):
            raise
        raise UsageError(f"clowder serve needs the web extra ({e.name} is missing): pip install 'clowder[web]'") from e
    root = find_root(root_dir)
    server.serve(root, host, port, echo=click.echo)


# -- the index (.clowder/index.sqlite) ------------------------------------------------------------
# The imports are local so that these commands stay an append-only block of this file.

@main.command()
@root_option
def reindex(root_dir: Path | None) -> None:
    """Rebuild the index (.clowder/index.sqlite) from the tree alone, into a new file swapped in
    atomically. Safe while `clowder watch` runs: the daemon notices and records its pipelines again."""
    from clowder import diskfull
    from clowder.index.reindex import rebuild

    root = find_root(root_dir)
    with diskfull.reported("reindex", root.path):
        counts = rebuild(root)
    click.echo(f"indexed {counts}")


@main.command()
@root_option
def fsck(root_dir: Path | None) -> None:
    """Compare the index with a fresh reading of the tree, and every artifact and attempt commit
    the status files record with the git objects in the workspaces.

    Prints each difference (missing, extra, changed) and exits 1 if there is any, 0 if none.
    `clowder reindex` repairs the index; a missing object is gone from its workspace."""
    from clowder import diskfull
    from clowder import fsck as fsck_mod

    root = find_root(root_dir)
    with diskfull.reported("fsck", root.path):  # it builds a fresh index to compare with
        found = fsck_mod.fsck(root)
    for difference in found:
        click.echo(str(difference))
    if found:
        click.echo(f"{len(found)} difference(s)", err=True)
        click.get_current_context().exit(EXIT_WORK_FAILED)
    click.echo("the index and the workspaces match the tree")


@main.command()
@click.argument("sql")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind :NAME in SQL to VALUE (repeatable).")
@click.option("--json", "fmt", flag_value="json", help="Print a JSON array of objects instead of a table.")
@click.option("--csv", "fmt", flag_value="csv", help="Print CSV with a header row instead of a table.")
@root_option
def query(sql: str, params: tuple[str, ...], fmt: str | None, root_dir: Path | None) -> None:
    """Run one read-only SQL statement (SELECT or WITH) against the index and print its rows.

    The tables and ready-made queries are in the README, under "Querying the index". A
    statement that would change anything is refused (exit 2)."""
    import csv

    from clowder import index

    root = find_root(root_dir)
    from clowder.spec import parse_assignment

    result = index.query(root, sql, dict(parse_assignment(p) for p in params))
    rows = [[v.hex() if isinstance(v, bytes) else v for v in row] for row in result.rows]
    if fmt == "json":
        click.echo(json.dumps([dict(zip(result.columns, row, strict=True)) for row in rows], indent=2))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(rows)
    else:
        print_table(result.columns, [["" if v is None else str(v) for v in row] for row in rows])


# -- bringing the work back (clowder export) ------------------------------------------------------

@main.command()
@click.argument("pipeline")
@click.argument("job", required=False)
@click.option("--branch", help="Write the work as this branch of the repository (never a checked-out one).")
@click.option("--patch", "patch", metavar="FILE", help="Write a patch series for `git am` to FILE ('-': stdout).")
@click.option("--squash", is_flag=True, help="One commit for all the work, instead of one per attempt.")
@click.option("--repo", type=click.Path(path_type=Path),
              help="The repository to write the branch to (default: the pipeline's source).")
@click.option("--force", is_flag=True, help="Replace an existing branch; export a job that has not succeeded.")
@root_option
def export(pipeline: str, job: str | None, branch: str | None, patch: str | None, squash: bool,
           repo: Path | None, force: bool, root_dir: Path | None) -> None:
    """Bring JOB's work (default: the pipeline's last succeeded job) back to your repository: a
    branch on top of the commit the pipeline started from, one commit per attempt that changed
    files, without .clowder/ and the files pipeline.toml's `export.exclude` names. It writes
    objects and the branch only: your checkout, index and HEAD are never touched."""
    from clowder import export as export_mod

    root = find_root(root_dir)
    request = export_mod.ExportRequest(pipeline, job, branch, patch, squash, repo, force)
    done = export_mod.export(root, request)
    if patch is not None:
        export_mod.write_patch(patch, done.patch)
        if patch != "-":
            click.echo(f"wrote {len(done.commits)} patch(es) of {pipeline}/{done.job} to {patch} (apply with git am)")
        return
    base = done.base[:12] if done.base else "no parent (an orphan branch)"
    click.echo(f"exported {pipeline}/{done.job} to branch {branch} of {done.target}: "
               f"{len(done.commits)} commit(s) on {base}")
    click.echo(f"  git -C {done.target} log --stat {branch}")


# -- agent CLIs (clowder doctor) ----------------------------------------------------------------

@main.command()
@root_option
def doctor(root_dir: Path | None) -> None:
    """Check the agent CLIs of the harnesses this root uses (default_harness, and the roles' and
    jobs' `harness`): found on PATH, their version and whether Clowder is tested with it, every
    flag Clowder passes listed in their --help, their API key variable set.

    Exits 1 if something would make an agent job fail, 0 otherwise (an untested version alone
    is reported, not failed)."""
    from clowder.harness import doctor as doctor_mod
    from clowder.validate import load_config

    root = find_root(root_dir)
    checks = doctor_mod.doctor(root, load_config(root))
    print_table(doctor_mod.HEADERS, [c.row() for c in checks])
    failing = [c.harness for c in checks if c.failing]
    if failing:
        click.echo(f"would fail: {', '.join(failing)}", err=True)
        click.get_current_context().exit(EXIT_WORK_FAILED)
