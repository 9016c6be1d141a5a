"""Shared pieces of the command line: the --root and --json options, durations, tables."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from clowder.errors import (
    UsageError,
)
from clowder.tree import ROOT_ENV

if TYPE_CHECKING:
    from rich.console import Console

# Commands import what they use: `clowder status` over a thousand pipelines must not pay for
# jsonschema, rich or git it does not need (see README, "The index at scale").


F = TypeVar("F", bound=Callable[..., Any])


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
    columns = zip(*rows, strict=True) if rows else ([] for _ in headers)
    widths = [max(len(h), max(map(len, column), default=0)) for h, column in zip(headers, columns, strict=True)]
    # One format a line, not a join of ljusts: `clowder status` prints a line per pipeline of the root.
    line = "  ".join(f"{{:<{w}}}" for w in widths).format
    click.echo("\n".join(line(*row).rstrip() for row in (headers, *rows)))
