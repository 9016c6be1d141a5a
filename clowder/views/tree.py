"""The read model from the tree: status files through the one status parser (clowder.state),
specs through the one spec checker, remembered while their files are unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clowder.errors import ClowderError, SpecError
from clowder.state import (
    JobStatus,
    PipelineState,
    PipelineStatus,
    Usage,
    decisions,
    read_job_status,
    read_pipeline_status,
)
from clowder.tree import PipelinePaths, Root, is_name
from clowder.views.cache import cached
from clowder.views.records import GateDecision, JobReport, PipelineReport

if TYPE_CHECKING:  # specs are checked only where a page or the tree needs them
    from clowder.errors import Problem
    from clowder.spec import Pipeline

BLOCKED_BY_SPEC = "invalid spec: "  # how scheduler._blocked_reason words a pipeline blocked by a spec file

# -- status files ---------------------------------------------------------------------------------

def job_status(path: Path, name: str) -> JobStatus:
    """The job's status, or a `pending` one; a status file broken by hand shows as a message."""
    try:
        return read_job_status(path, name)
    except SpecError as e:
        return JobStatus(name, message=f"unreadable status file: {e.problems[0]}")


def read_job(paths: PipelinePaths, job: str) -> JobStatus:
    """`job_status`, remembered while the file is unchanged."""
    path = paths.job_status_file(job)
    return cached("status", str(path), [path], lambda: job_status(path, job))


def pipeline_state(paths: PipelinePaths) -> str:
    """The pipeline's state, or `broken` when status.toml cannot be read."""
    try:
        return read_pipeline_status(paths.status_file).state.value
    except ClowderError:
        return "broken"


def spending(paths: PipelinePaths) -> dict[str, Usage]:
    """What each job of the pipeline reported spending (agents' tokens and cost), summed over
    its attempts. Read from the status files: one pipeline's are few."""
    from clowder.state import total_usage

    out = {}
    for f in sorted(paths.status_dir.glob("*.toml")):
        if is_name(f.stem) and (usage := total_usage(read_job(paths, f.stem).attempts)) is not None:
            out[f.stem] = usage
    return out


# -- specs ----------------------------------------------------------------------------------------

def load_specs(root: Root, paths: PipelinePaths) -> tuple[Pipeline | None, list[Problem]]:
    """The pipeline's specs as records (None while they have problems) and the problems,
    remembered while clowder.toml and the spec files are unchanged."""
    from clowder.validate import check_config, check_pipeline

    files = [root.config_file, paths.spec_file, *(paths.jobs_dir / f"{n}.toml" for n in paths.job_names())]
    return cached("spec", str(paths.dir), files,
                  lambda: check_pipeline(paths, check_config(root.config_file)[0]))


# -- a pipeline's report --------------------------------------------------------------------------

def _duration(status: JobStatus) -> float | None:
    spans = [a.duration for a in status.attempts if a.duration is not None]
    return sum(spans) if spans else None


def job_report(status: JobStatus, stage: str | None, needs: tuple[str, ...]) -> JobReport:
    first = status.attempts[0] if status.attempts else None
    last = status.last
    return JobReport(
        name=status.job, state=status.state.value, attempt=status.attempt, stage=stage, needs=needs,
        duration=_duration(status), message=status.message,
        started_at=first.started_at if first else None,
        ended_at=last.ended_at if last and status.state.terminal else None,
        approvals=tuple(GateDecision(d.approval.verdict.value, d.approval.by, d.approval.at, d.approval.comment,
                                     d.attempt) for d in decisions(status)),
    )


def pipeline_report(root: Root, paths: PipelinePaths) -> PipelineReport:
    """What `clowder status` shows of a pipeline, from its files."""
    from clowder.graph import pipeline_deps, topo_order

    pipeline, problems = load_specs(root, paths)
    try:
        pstatus = read_pipeline_status(paths.status_file)
    except SpecError as e:
        broken = str(e.problems[0])
        return PipelineReport(paths.name, "broken", broken, None, None, problems=(broken,))
    names = topo_order(pipeline_deps(pipeline)) if pipeline else paths.job_names()
    jobs = []
    for name in names:
        spec = pipeline.jobs.get(name) if pipeline else None
        jobs.append(job_report(read_job(paths, name), spec.stage if spec else None,
                               tuple(n.job for n in spec.needs) if spec else ()))
    state, message = head(paths, pstatus, len(problems))
    return PipelineReport(paths.name, state, message, pstatus.started_at, pstatus.ended_at,
                          tuple(jobs), tuple(str(p) for p in problems))


def head(paths: PipelinePaths, pstatus: PipelineStatus, problems: int) -> tuple[str, str]:
    """The state and message `clowder status` shows: `invalid` for a pending pipeline whose specs
    have problems."""
    if problems and pstatus.state is PipelineState.PENDING:
        return "invalid", f"{problems} problem(s); run `clowder validate {paths.dir}`"
    return pstatus.state.value, mended(pstatus.state.value, pstatus.message, bool(problems))


def mended(state: str, message: str, invalid: bool) -> str:
    """A pipeline blocked by a spec file that has been fixed since: the state stays until a
    daemon or `clowder run` reads it again, so say so."""
    if state == PipelineState.BLOCKED.value and message.startswith(BLOCKED_BY_SPEC) and not invalid:
        return f"{message} (fixed since: it resumes when `clowder watch` or `clowder run` reads it)"
    return message
