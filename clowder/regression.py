"""Regression loops: a running job asks for a fix-up of another job. The scheduler decides
when and names it (clowder.scheduler.regression); this module writes its spec, for the driver."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli as tomllib  # the standard library's parser, compiled with mypyc: twice as fast

from clowder import workspace
from clowder.errors import SpecError
from clowder.fsio import read_input
from clowder.scheduler import SpawnJob
from clowder.scheduler import fixup_name as fixup_name  # named by the scheduler, which decides the spawn
from clowder.template import write_job_spec
from clowder.tree import PipelinePaths, Root

# Keys of the target's spec a fix-up does not inherit: it is unhooked from the graph (it
# starts at once, from the spawner's commit) and gets its own lineage.
_NOT_INHERITED = ("stage", "from", "parent", "regression_of", "regression_context")


def fixup_spec(target_spec: Mapping[str, Any], spawner: str, target: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """The fix-up's job table: the target's own spec, with `needs = []`, its parent and why."""
    table = {k: v for k, v in target_spec.items() if k not in _NOT_INHERITED}
    table["needs"] = []
    table["parent"] = spawner
    table["regression_of"] = target
    table["regression_context"] = dict(context)
    return table


def write_fixup(root: Root, paths: PipelinePaths, name: str, target: str, spawner: str,
                context: Mapping[str, Any]) -> Path:
    """Write jobs/<name>.toml from the target's file as it is on disk now."""
    source = paths.job_file(target)
    try:
        table = tomllib.loads(read_input(source).decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as e:
        raise SpecError.one(source, "<file>", f"cannot copy it for fix-up {name}: {e}") from e
    return write_job_spec(root, paths, name, fixup_spec(table, spawner, target, context))


def write_spawned(root: Root, paths: PipelinePaths, action: SpawnJob) -> Path:
    """Write the fix-up the scheduler decided, with why it exists (its regression context)."""
    context = {"reason": action.reason, "spawner": action.spawner, "spawner_attempt": action.attempt,
               "request": action.request, "context": action.context,
               "log_tail": "\n".join(workspace.log_tail(paths.log_file(action.spawner, action.attempt)))}
    if action.commit:
        context["commit"] = action.commit
    return write_fixup(root, paths, action.name, action.target, action.spawner, context)
