"""Pipelines and jobs a user names (on the command line, in a URL): the one place that decides
whether they exist, and says which do when they do not. Cheap to import: every command uses it."""

from __future__ import annotations

import difflib
import os

from clowder.errors import UsageError
from clowder.tree import PipelinePaths, Root, check_name

JOBS_SHOWN = 12  # in a did-you-mean: enough to spot a typo, short enough for one line


class NotFound(UsageError):
    """A pipeline, job, attempt or log that does not exist (exit 2; HTTP 404)."""


class UnknownPipeline(NotFound):
    def __init__(self, paths: PipelinePaths) -> None:
        close = difflib.get_close_matches(paths.name, _siblings(paths), n=1)
        super().__init__(f"{paths.dir}: no such pipeline" + (f"; did you mean {close[0]}?" if close else ""))


def _siblings(paths: PipelinePaths) -> list[str]:
    """The pipelines beside `paths`, which are what a mistyped name was meant to be."""
    try:
        with os.scandir(paths.dir.parent) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


class UnknownJob(NotFound):
    """A name (`dev`, or `dev@2` in `clowder diff`) that is no job of the pipeline."""

    def __init__(self, paths: PipelinePaths, text: str) -> None:
        jobs = paths.job_names()
        close = difflib.get_close_matches(text.split("@", 1)[0], jobs, n=1)
        shown = ", ".join(jobs[:JOBS_SHOWN]) + (f", … ({len(jobs)} in all)" if len(jobs) > JOBS_SHOWN else "")
        super().__init__(f"{text!r}: not a job of {paths.name}" + (f"; did you mean {close[0]}?" if close else "")
                         + f" ({'jobs: ' + shown if jobs else 'it has no jobs'})")
        self.close = close


def pipeline(root: Root, name: str, with_spec: bool = True) -> PipelinePaths:
    """The pipeline named `name`, if there is one (see `existing`)."""
    return existing(root.pipeline(name), with_spec)  # root.pipeline checks the name before it is a path


def existing(paths: PipelinePaths, with_spec: bool = True) -> PipelinePaths:
    """`paths`, if its directory is there and (with `with_spec`) its pipeline.toml too, in
    whatever shape: a broken one is reported by whoever reads it. Without `with_spec`, a directory
    that lacks its pipeline.toml is a pipeline to show as invalid (as `clowder status` does)."""
    if not paths.dir.is_dir():
        raise UnknownPipeline(paths)
    if with_spec and not os.path.lexists(paths.spec_file):
        raise NotFound(f"{paths.spec_file}: missing: every pipeline directory needs a pipeline.toml")
    return paths


def job(paths: PipelinePaths, name: str, with_spec: bool = False) -> str:
    """`name`, if it is a job of the pipeline: it has a spec file, or (unless `with_spec`) it ran
    and has a status file although its spec is gone."""
    check_name(name, "job")
    if paths.job_file(name).is_file() or (not with_spec and paths.job_status_file(name).is_file()):
        return name
    raise UnknownJob(paths, name)
