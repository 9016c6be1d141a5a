"""The command line: the `clowder` group and its one error handler (ClowderError to a message
and an exit code, anything else to a crash log); the commands live in clowder.commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from clowder.commands import admin, authoring, inspecting, running
from clowder.errors import (
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    ClowderError,
    SpecError,
)
from clowder.tree import find_root


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


@click.group(cls=ClowderGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clowder")
def main() -> None:
    """Clowder runs pipelines of jobs (AI coding agents or any command) whose workspaces are
    git repositories. The file tree is the database: pipelines are directories of TOML files."""


for _module in (authoring, running, inspecting, admin):
    for _command in _module.COMMANDS:
        main.add_command(_command)
