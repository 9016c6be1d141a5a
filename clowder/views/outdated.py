"""The `outdated` mark of a pipeline's jobs, as every face shows it: the scheduler's own decision
(clowder.scheduler.inputs) over the pipeline's specs and status files as they are now. A mark
beside the state: nothing is changed or started for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from clowder.scheduler.inputs import Outdated, outdated_jobs
from clowder.state import JobStatus
from clowder.tree import PipelinePaths, Root, is_name
from clowder.views import tree
from clowder.views.records import OutdatedView, PipelineReport


def statuses(paths: PipelinePaths) -> dict[str, JobStatus]:
    if not paths.status_dir.is_dir():
        return {}
    return {f.stem: tree.read_job(paths, f.stem) for f in sorted(paths.status_dir.glob("*.toml")) if is_name(f.stem)}


def find(root: Root, paths: PipelinePaths) -> dict[str, Outdated]:
    """The pipeline's outdated jobs in dependency order; none while its specs have problems."""
    pipeline, problems = tree.load_specs(root, paths)
    if pipeline is None or problems:
        return {}
    return outdated_jobs(pipeline, statuses(paths))


def view(o: Outdated | None) -> OutdatedView | None:
    if o is None:
        return None
    return OutdatedView(o.reason, o.attempt, [c.kind.value for c in o.changed], list(o.upstreams))


def marks(root: Root, paths: PipelinePaths) -> dict[str, OutdatedView]:
    return {job: v for job, o in find(root, paths).items() if (v := view(o)) is not None}


def with_marks(report: PipelineReport, found: Mapping[str, OutdatedView]) -> PipelineReport:
    return replace(report, jobs=tuple(replace(j, outdated=found.get(j.name)) for j in report.jobs))
