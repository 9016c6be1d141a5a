"""Reports: what `clowder status` shows, read from the tree."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from clowder import known
from clowder.errors import SpecError
from clowder.state import (
    JobState,
    JobStatus,
    PipelineState,
    Usage,
    read_job_status,
    read_pipeline_status,
    total_usage,
    utcnow,
)
from clowder.tree import PipelinePaths, Root, is_name

JOB_STATES = tuple(s.value for s in JobState)
BLOCKED_BY_SPEC = "invalid spec: "  # how scheduler._blocked_reason words a pipeline blocked by a spec file


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
    usage: Usage | None = None  # what its agent reported spending, summed over its attempts


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

    @property
    def usage(self) -> Usage | None:
        spent = [j.usage for j in self.jobs if j.usage is not None]
        return sum(spent[1:], spent[0]) if spent else None


def _duration(status: JobStatus) -> float | None:
    spans = [a.duration for a in status.attempts if a.duration is not None]
    return sum(spans) if spans else None


def job_status(path: Path, name: str) -> JobStatus:
    """The job's status, or a `pending` one; a status file broken by hand shows as a message."""
    try:
        return read_job_status(path, name)
    except SpecError as e:
        return JobStatus(name, message=f"unreadable status file: {e.problems[0]}")


def pipeline_report(root: Root, paths: PipelinePaths) -> PipelineReport:
    from clowder.graph import pipeline_deps, topo_order
    from clowder.validate import check_config, check_pipeline

    config, _ = check_config(root.config_file)
    pipeline, problems = check_pipeline(paths, config)
    try:
        pstatus = read_pipeline_status(paths.status_file)
    except SpecError as e:
        broken = str(e.problems[0])
        return PipelineReport(paths.name, "broken", broken, None, None, problems=(broken,))
    names = topo_order(pipeline_deps(pipeline)) if pipeline else paths.job_names()
    jobs = []
    for name in names:
        status = job_status(paths.status_dir / f"{name}.toml", name)
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
    message = _mended(state, message, bool(problems))
    return PipelineReport(paths.name, state, message, pstatus.started_at, pstatus.ended_at,
                          tuple(jobs), tuple(str(p) for p in problems))


def collect(root: Root, pipeline: str | None = None, use_index: bool = True) -> list[PipelineReport]:
    """Reports of every pipeline (or of one): from the index where it is fresh, from the tree
    where it is missing or stale (see clowder.index.fresh)."""
    if pipeline is not None:
        known.pipeline(root, pipeline, with_spec=False)  # a missing pipeline.toml is a problem to show
        names = [pipeline]
    else:
        # A directory with an invalid name cannot be addressed; `clowder validate` reports it.
        names = [name for name in root.pipeline_names() if is_name(name)]
    indexed = from_index(root, names) if use_index else {}
    reports = [indexed.get(name) or pipeline_report(root, root.pipeline(name)) for name in names]
    if pipeline is not None:  # one pipeline's view shows what its agents spent
        reports = [with_spending(r, spending(root.pipeline(pipeline))) for r in reports]
    return reports


def spending(paths: PipelinePaths) -> dict[str, Usage]:
    """What each job of the pipeline reported spending (agents' tokens and cost), summed over
    its attempts. Read from the status files: one pipeline's are few."""
    out = {}
    for f in sorted(paths.status_dir.glob("*.toml")):
        if is_name(f.stem) and (usage := total_usage(job_status(f, f.stem).attempts)) is not None:
            out[f.stem] = usage
    return out


def with_spending(report: PipelineReport, spent: dict[str, Usage]) -> PipelineReport:
    return replace(report, jobs=tuple(replace(j, usage=spent.get(j.name)) for j in report.jobs))


def format_usage(usage: Usage) -> str:
    return f"${usage.cost_usd:.4f} ({usage.input_tokens:,} tokens in, {usage.output_tokens:,} out)"


def from_index(root: Root, names: list[str]) -> dict[str, PipelineReport]:
    """Reports of those of `names` the index holds fresh; the same reports the tree gives."""
    from clowder.index import status_rows
    from clowder.snapshot import parse_ts

    rows = status_rows(root, names)
    now = utcnow()
    out = {}
    for name, (state, message, started, ended, problem, problems) in rows.pipelines.items():
        state, message, shown = _head(root, name, state, message, problem, problems)
        if problem is not None:  # its status file is unreadable (not a pipeline the daemon marked broken)
            out[name] = PipelineReport(name, state, message, None, None, problems=shown)
            continue
        jobs = tuple(_job_from_row(row, tuple(rows.needs.get((name, row[0]), ())), now, root)
                     for row in rows.jobs.get(name, ()))
        out[name] = PipelineReport(name, state, message, parse_ts(started), parse_ts(ended), jobs, shown)
    return out


def _head(root: Root, name: str, state: str, message: str, problem: str | None,
          problems: str | None) -> tuple[str, str, tuple[str, ...]]:
    """A pipeline's state, message and problems from its index columns, as the tree gives them."""
    from clowder.snapshot import problem_text

    if problem is not None:  # its status file is unreadable
        text = problem_text(problem, root.path)
        return "broken", text, (text,)
    shown = tuple(problem_text(p, root.path) for p in json.loads(problems)) if problems else ()
    if shown and state == PipelineState.PENDING.value:
        return "invalid", f"{len(shown)} problem(s); run `clowder validate {root.pipeline(name).dir}`", shown
    return state, _mended(state, message, bool(shown)), shown


def _mended(state: str, message: str, invalid: bool) -> str:
    """A pipeline blocked by a spec file that has been fixed since: the state stays until a
    daemon or `clowder run` reads it again, so say so."""
    if state == PipelineState.BLOCKED.value and message.startswith(BLOCKED_BY_SPEC) and not invalid:
        return f"{message} (fixed since: it resumes when `clowder watch` or `clowder run` reads it)"
    return message


def overview(root: Root) -> list[tuple[str, str, str, str]]:
    """`clowder status` over every pipeline: (name, state, job counts, message) of each, from
    the index where it is fresh (one grouped query, no per-job rows), else from the tree."""
    from clowder.index import overview_rows

    names = [name for name in root.pipeline_names() if is_name(name)]
    indexed = overview_rows(root, names)
    out = []
    for name in names:
        if name in indexed:
            (state, message, problem, problems), counts = indexed[name]
            state, message, _ = _head(root, name, state, message, problem, problems)
            out.append((name, state, "no jobs" if problem is not None else summarize(counts), message))
        else:
            r = pipeline_report(root, root.pipeline(name))
            out.append((name, r.state, summary(r), r.message))
    return out


def _job_from_row(row: tuple[Any, ...], needs: tuple[str, ...], now: datetime, root: Root) -> JobReport:
    from clowder.snapshot import parse_ts, problem_text

    name, stage, state, attempt, message, problem, started, ended, duration, open_started = row
    if state is None:  # a job file the scheduler has not seen yet
        return JobReport(name, JobState.PENDING.value, 0, stage, needs, None, "")
    if problem is not None:
        return JobReport(name, JobState.PENDING.value, 0, stage, needs, None,
                         f"unreadable status file: {problem_text(problem, root.path)}")
    if open_started:  # attempts still running count until now, as JobStatus durations do
        duration = (duration or 0.0) + sum((now - datetime.fromisoformat(s)).total_seconds()
                                           for s in json.loads(open_started))
    terminal = JobState(state).terminal
    return JobReport(name, state, attempt, stage, needs, duration, message, parse_ts(started),
                     parse_ts(ended) if terminal else None)


def to_json(reports: list[PipelineReport]) -> list[dict[str, Any]]:
    def ts(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    def usage(u: Usage | None) -> dict[str, Any]:  # present where an agent reported some
        return {"usage": asdict(u)} if u is not None else {}

    return [
        {
            "name": r.name,
            "state": r.state,
            "message": r.message,
            "started_at": ts(r.started_at),
            "ended_at": ts(r.ended_at),
            "problems": list(r.problems),
            **usage(r.usage),
            "jobs": [
                {
                    "name": j.name, "state": j.state, "attempt": j.attempt, "stage": j.stage,
                    "needs": list(j.needs), "duration": j.duration, "message": j.message,
                    "started_at": ts(j.started_at), "ended_at": ts(j.ended_at), **usage(j.usage),
                }
                for j in r.jobs
            ],
        }
        for r in reports
    ]


def summary(report: PipelineReport) -> str:
    return summarize(report.counts())


def summarize(counts: Mapping[str, int]) -> str:
    """Job counts in the order of the states' life: "2 running, 3 succeeded"."""
    return ", ".join(f"{counts[s]} {s}" for s in JOB_STATES if counts.get(s)) or "no jobs"
