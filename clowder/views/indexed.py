"""The read model from the index, for the pipelines it holds fresh (clowder.index.fresh): the
same records the tree gives, so that a reader cannot tell which one answered."""

from __future__ import annotations

import json
from datetime import datetime

from clowder.index.read import DecisionRow, JobStatusRow
from clowder.state import JobState, PipelineState, utcnow
from clowder.tree import Root
from clowder.views.records import (
    ArtifactLine,
    GateDecision,
    JobReport,
    PipelineEntry,
    PipelineReport,
    StatusLine,
    report_state,
    summarize,
)
from clowder.views.tree import mended

BLOCKED = PipelineState.BLOCKED.value  # the one state whose message _head may change (tree.mended)


def _problem_text(stored: str, root: Root) -> str:
    from clowder.snapshot import problem_text

    return problem_text(stored, root.path)


def _ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _head(root: Root, name: str, state: str, message: str, problem: str | None,
          problems: str | None) -> tuple[str, str, tuple[str, ...]]:
    """A pipeline's state, message and problems from its index columns, as the tree gives them."""
    if problem is not None:  # its status file is unreadable
        text = _problem_text(problem, root)
        return "broken", text, (text,)
    shown = tuple(_problem_text(p, root) for p in json.loads(problems)) if problems else ()
    if shown and state == PipelineState.PENDING.value:
        return "invalid", f"{len(shown)} problem(s); run `clowder validate {root.pipeline(name).dir}`", shown
    return state, mended(state, message, bool(shown)), shown


def reports(root: Root, names: list[str]) -> dict[str, PipelineReport]:
    """Reports of those of `names` the index holds fresh."""
    from clowder.index import status_rows

    rows = status_rows(root, names)
    now = utcnow()
    out = {}
    for name, p in rows.pipelines.items():
        state, message, shown = _head(root, name, p.state, p.message, p.problem, p.problems)
        if p.problem is not None:  # its status file is unreadable (not a pipeline the daemon marked broken)
            out[name] = PipelineReport(name, state, message, None, None, problems=shown)
            continue
        jobs = tuple(_job(row, tuple(rows.needs.get((name, row.job), ())), now, root,
                          rows.decisions.get((name, row.job), []))
                     for row in rows.jobs.get(name, ()))
        out[name] = PipelineReport(name, state, message, _ts(p.started_at), _ts(p.ended_at), jobs, shown)
    return out


def _job(row: JobStatusRow, needs: tuple[str, ...], now: datetime, root: Root,
         decided: list[DecisionRow]) -> JobReport:
    if row.state is None:  # a job file the scheduler has not seen yet
        return JobReport(row.job, JobState.PENDING.value, 0, row.stage, needs, None, "")
    if row.problem is not None:
        return JobReport(row.job, JobState.PENDING.value, 0, row.stage, needs, None,
                         f"unreadable status file: {_problem_text(row.problem, root)}")
    duration = row.duration
    if row.open_started:  # attempts still running count until now, as JobStatus durations do
        duration = (duration or 0.0) + sum((now - datetime.fromisoformat(s)).total_seconds()
                                           for s in json.loads(row.open_started))
    terminal = JobState(row.state).terminal
    approvals = tuple(GateDecision(d.verdict, d.by, datetime.fromisoformat(d.at), d.comment, d.attempt)
                      for d in decided)
    return JobReport(row.job, row.state, row.attempt or 0, row.stage, needs, duration, row.message or "",
                     _ts(row.started_at), _ts(row.ended_at) if terminal else None, approvals=approvals)


def entries(root: Root, names: list[str], ended_from_status: bool) -> dict[str, PipelineEntry]:
    """List entries of those of `names` the index holds fresh: one grouped query, no per-job rows
    (`ended_from_status`: see clowder.index.overview_rows)."""
    from clowder.index import overview_rows

    out = {}
    fromiso = datetime.fromisoformat
    for name, o in overview_rows(root, names, ended_from_status).items():
        if o.problem is None and o.problems is None and o.state != BLOCKED:  # most pipelines: _head says as stored
            counts = o.counts  # a dict of its own: overview_rows made it
            out[name] = PipelineEntry(name, report_state(o.state), o.message,
                                      fromiso(o.started_at) if o.started_at else None,
                                      fromiso(o.ended_at) if o.ended_at else None, sum(counts.values()), counts, [])
            continue
        state, message, shown = _head(root, name, o.state, o.message, o.problem, o.problems)
        counts = {} if o.problem is not None else o.counts
        started, ended = (None, None) if o.problem is not None else (_ts(o.started_at), _ts(o.ended_at))
        out[name] = PipelineEntry(name, report_state(state), message, started, ended, sum(counts.values()), counts,
                                  list(shown))
    return out


def status_lines(root: Root, names: list[str]) -> dict[str, StatusLine]:
    """`clowder status`'s lines of those of `names` the index holds fresh (ended pipelines by their
    status files alone): what `entries` gives of them, without the entries."""
    from clowder.index import overview_rows

    out = {}
    new = tuple.__new__  # not StatusLine(...): its generated __new__ is Python, paid once a pipeline
    for name, o in overview_rows(root, names, True).items():
        if o.problem is None and o.problems is None and o.state != BLOCKED:  # as in `entries`
            out[name] = new(StatusLine, (name, report_state(o.state), summarize(o.counts), o.message))
            continue
        state, message, _ = _head(root, name, o.state, o.message, o.problem, o.problems)
        out[name] = StatusLine(name, report_state(state), summarize({} if o.problem is not None else o.counts),
                               message)
    return out


def artifacts(root: Root, pipeline: str, job: str | None, sha: str | None) -> list[ArtifactLine] | None:
    """A pipeline's artifacts, when the index holds it fresh; else None."""
    from clowder.index import artifact_rows

    found = artifact_rows(root, pipeline, job, sha)
    if found is None:
        return None
    return [ArtifactLine(r.job, r.attempt, r.state, r.commit, r.path, r.blob, r.size, r.kind) for r in found]
