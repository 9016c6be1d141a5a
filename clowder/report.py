"""Reports: what `clowder status` shows, read from the tree."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from clowder.errors import Problem, UsageError
from clowder.graph import pipeline_deps, topo_order
from clowder.spec import is_name
from clowder.state import (
    JobState,
    JobStatus,
    PipelineState,
    PipelineStatus,
    job_status_from_dict,
    pipeline_status_from_dict,
)
from clowder.tree import PipelinePaths, Root
from clowder.validate import check_config, check_pipeline, load_status_file


@dataclass(frozen=True)
class JobReport:
    name: str
    state: str
    attempt: int
    stage: str | None
    needs: tuple[str, ...]
    duration: float | None
    message: str
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class PipelineReport:
    name: str
    state: str
    message: str
    started_at: datetime | None
    ended_at: datetime | None
    jobs: tuple[JobReport, ...] = ()
    problems: tuple[str, ...] = field(default_factory=tuple)

    def counts(self) -> Counter[str]:
        return Counter(j.state for j in self.jobs)


def _duration(status: JobStatus) -> float | None:
    spans = [a.duration for a in status.attempts if a.duration is not None]
    return sum(spans) if spans else None


def _job_status(path: Path, name: str) -> JobStatus:
    # Parsed and checked once: `status` reads every status file of the tree when there is no index.
    data, problems = load_status_file(path)
    if problems:
        return JobStatus(name, message=f"unreadable status file: {problems[0]}")
    try:
        return job_status_from_dict(name, data) if data is not None else JobStatus(name)
    except (KeyError, ValueError, TypeError):
        return JobStatus(name, message="unreadable status file")


def pipeline_report(root: Root, paths: PipelinePaths) -> PipelineReport:
    config, _ = check_config(root.config_file)
    pipeline, problems = check_pipeline(paths, config)
    data, broken = load_status_file(paths.status_file)
    try:
        pstatus = pipeline_status_from_dict(data) if data is not None else PipelineStatus()
    except (KeyError, ValueError, TypeError) as e:
        broken = [Problem(paths.status_file, "state", f"unreadable status file: {e}")]
    if broken:
        return PipelineReport(paths.name, "broken", str(broken[0]), None, None, problems=(str(broken[0]),))
    names = topo_order(pipeline_deps(pipeline)) if pipeline else paths.job_names()
    jobs = []
    for name in names:
        status = _job_status(paths.status_dir / f"{name}.toml", name)
        spec = pipeline.jobs.get(name) if pipeline else None
        first = status.attempts[0] if status.attempts else None
        last = status.last
        jobs.append(JobReport(
            name=name,
            state=status.state.value,
            attempt=status.attempt,
            stage=spec.stage if spec else None,
            needs=tuple(n.job for n in spec.needs) if spec else (),
            duration=_duration(status),
            message=status.message,
            started_at=first.started_at if first else None,
            ended_at=last.ended_at if last and status.state.terminal else None,
        ))
    state = pstatus.state.value
    message = pstatus.message
    if problems and pstatus.state is PipelineState.PENDING:
        state, message = "invalid", f"{len(problems)} problem(s); run `clowder validate {paths.dir}`"
    return PipelineReport(paths.name, state, message, pstatus.started_at, pstatus.ended_at,
                          tuple(jobs), tuple(str(p) for p in problems))


def collect(root: Root, pipeline: str | None = None) -> list[PipelineReport]:
    if pipeline is not None:
        paths = root.pipeline(pipeline)
        if not paths.dir.is_dir():
            raise UsageError(f"{paths.dir}: no such pipeline")
        return [pipeline_report(root, paths)]
    # A directory with an invalid name cannot be addressed; `clowder validate` reports it.
    return [pipeline_report(root, root.pipeline(name)) for name in root.pipeline_names() if is_name(name)]


def to_json(reports: list[PipelineReport]) -> list[dict[str, Any]]:
    def ts(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    return [
        {
            "name": r.name,
            "state": r.state,
            "message": r.message,
            "started_at": ts(r.started_at),
            "ended_at": ts(r.ended_at),
            "problems": list(r.problems),
            "jobs": [
                {
                    "name": j.name, "state": j.state, "attempt": j.attempt, "stage": j.stage,
                    "needs": list(j.needs), "duration": j.duration, "message": j.message,
                    "started_at": ts(j.started_at), "ended_at": ts(j.ended_at),
                }
                for j in r.jobs
            ],
        }
        for r in reports
    ]


def summary(report: PipelineReport) -> str:
    counts = report.counts()
    order = [s.value for s in JobState]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s]) or "no jobs"
