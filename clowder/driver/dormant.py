"""Pipelines a daemon need not read: finished for good, as the index holds them and their files
still are. A root of 10,000 finished pipelines took `clowder watch` ~60 s to start, reading every
status and spec file and reconciling each pipeline once, to find nothing to do. Such a pipeline
is left unread until one of its files changes: a request, or anything the sweep's check sees."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence

from clowder import requests
from clowder.index import ended_fresh
from clowder.scheduler import prompt_hash
from clowder.tree import PipelinePaths, Root


def dormant(root: Root, names: Sequence[str], check_prompt: bool = True) -> set[str]:
    """Those of `names` that have ended (no job running, specs valid) as rows the index holds fresh,
    spec files included, with no request waiting, and (`check_prompt`) whose prompt is the one
    their status records: what `PipelineCache.quiet()` would say once read. The sweep leaves the
    prompt out: a pipeline.toml changed since the first check changes its spec files' stamp."""
    try:
        found = ended_fresh(root, names)
    except Exception:  # whatever stops the check (a directory that cannot be read): read them all, as before
        return set()
    return {name for name, recorded in found.items()
            if _no_requests(root.pipeline(name)) and (not check_prompt or _same_prompt(root.pipeline(name), recorded))}


def _no_requests(paths: PipelinePaths) -> bool:
    try:
        return not requests.pending(paths)
    except Exception:  # read it: reading reports the problem, for this pipeline alone
        return False


def _same_prompt(paths: PipelinePaths, recorded: str | None) -> bool:
    """Whether pipeline.toml's prompt is the one the status records (a reindex records an edited
    prompt's spec as fresh; the daemon must read such a pipeline to block it)."""
    if not recorded:
        return True
    try:
        prompt = tomllib.loads(paths.spec_file.read_text()).get("prompt")
    except (OSError, ValueError):
        return False
    return isinstance(prompt, str) and prompt_hash(prompt) == recorded
