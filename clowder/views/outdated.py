"""The `outdated` mark of a pipeline's jobs, as every face shows it: the scheduler's own decision
(clowder.scheduler.inputs) over the pipeline's specs and status files as they are now. A mark
beside the state: nothing is changed or started for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from clowder import known
from clowder.scheduler.dry_run import Simulation, simulate
from clowder.scheduler.inputs import Outdated, outdated_jobs, rerun_roots
from clowder.scheduler.records import PipelineView, Rerun
from clowder.state import JobStatus, utcnow
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


@dataclass(frozen=True)
class RerunPlan:
    """What `clowder run --outdated` asks for in one pipeline: a re-run, with its downstream, of
    each outdated job no other outdated job is upstream of."""

    pipeline: str
    roots: tuple[Outdated, ...]
    outdated: tuple[Outdated, ...]  # every outdated job, the roots' downstreams among them


def plans(root: Root, names: list[str]) -> list[RerunPlan]:
    """The named pipelines' re-runs of outdated jobs (those with none are left out)."""
    out = []
    for name in names:
        paths = known.pipeline(root, name)
        found = find(root, paths)
        pipeline, _ = tree.load_specs(root, paths)
        if found and pipeline is not None:
            out.append(RerunPlan(name, tuple(found[j] for j in rerun_roots(pipeline, found)), tuple(found.values())))
    return out


def simulated(views: list[PipelineView], found: list[RerunPlan]) -> list[PipelineView]:
    """The views with the re-run requests `clowder run --outdated` would drop, for its dry run."""
    asked = {p.pipeline: tuple(Rerun(f"outdated-{o.job}-rerun", o.job, downstream=True) for o in p.roots)
             for p in found}
    return [replace(v, requests=(*v.requests, *asked.get(v.name, ()))) for v in views]


def plan_lines(found: list[RerunPlan]) -> list[str]:
    """The outdated jobs, each with why, and what re-runs: `clowder run --outdated [--dry-run]`."""
    lines = []
    for p in found:
        lines += [f"{p.pipeline}/{o.job} is {o.reason}" for o in p.outdated]
    return lines


def dry_run(root: Root, found: list[RerunPlan], max_parallel: int | None = None) -> Simulation:
    """What `clowder run --outdated` would run, in order and why, with nothing written."""
    from clowder.views import decisions

    seen = simulated([decisions.view_of(root, known.pipeline(root, p.pipeline)) for p in found], found)
    return simulate(seen, utcnow(), decisions.limits(root, max_parallel))
