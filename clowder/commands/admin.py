"""Commands around the tree: serve, reindex, fsck, query, export, doctor."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from clowder.commands.common import print_table, root_option
from clowder.errors import (
    EXIT_WORK_FAILED,
    UsageError,
)
from clowder.tree import find_root

# Commands import what they use: `clowder status` over a thousand pipelines must not pay for
# jsonschema, rich or git it does not need (see README, "The index at scale").


@click.command()
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

@click.command()
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


@click.command()
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


@click.command()
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

@click.command()
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

@click.command()
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


COMMANDS = (serve, reindex, fsck, query, export, doctor,)
