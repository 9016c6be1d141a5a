"""A snapshot of the tree as the rows of the index (DESIGN §6): what the index must hold for
one pipeline. Pure reading, no SQLite. `clowder reindex` and `clowder fsck` read the tree
through `read_pipeline`; the daemon turns the records it already holds into the same rows
through the same functions, which is why the kept index and a rebuilt one can be equal."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clowder import stamp
from clowder.errors import Problem, SpecError
from clowder.index.rows import (
    ApprovalRow,
    ArtifactRow,
    AttemptRow,
    ConsumedRow,
    EdgeRow,
    JobRow,
    JobSpecRow,
    ModelOutputRow,
    PipelineSpecCols,
    PipelineStatusCols,
)
from clowder.metadata import MODEL_OUTPUT as MODEL_OUTPUT
from clowder.state import (
    JobStatus,
    PipelineStatus,
    decisions,
    inputs_to_dict,
    read_job_status,
    read_pipeline_status,
)
from clowder.tree import PipelinePaths, Root, is_name

if TYPE_CHECKING:
    from clowder.spec import Config, Pipeline

MAX_OUTPUT_BYTES = 1 << 20  # model outputs are small JSON documents; a bigger one is noted, not stored


@dataclass
class PipelineRows:
    """Everything the index holds for one pipeline, as rows of its tables (see clowder.index)."""

    name: str
    status: PipelineStatusCols
    spec: PipelineSpecCols
    job_specs: list[JobSpecRow] = field(default_factory=list)
    edges: list[EdgeRow] = field(default_factory=list)
    jobs: list[JobRow] = field(default_factory=list)
    attempts: list[AttemptRow] = field(default_factory=list)
    artifacts: list[ArtifactRow] = field(default_factory=list)
    consumed: list[ConsumedRow] = field(default_factory=list)
    approvals: list[ApprovalRow] = field(default_factory=list)
    outputs: list[ModelOutputRow] = field(default_factory=list)
    status_sig: str = ""
    spec_sig: str = ""


@dataclass
class JobRows:
    """Everything the index holds for one job, from its status file."""

    job: JobRow
    attempts: list[AttemptRow]
    artifacts: list[ArtifactRow]
    consumed: list[ConsumedRow]
    approvals: list[ApprovalRow] = field(default_factory=list)


# -- values -------------------------------------------------------------------------------------

def ts(value: object) -> str | None:
    """A time as fixed-width UTC text (2026-01-01T10:00:03.000000Z): it sorts as it compares,
    and SQLite's date functions read it. A time without an offset is taken as UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    return str(value)


def parse_ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _json(value: Any) -> str | None:
    """JSON text for a list or table column; None for an empty one."""
    if not value:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=ts)


def problem_json(problem: Problem, root: Path) -> str:
    """A problem with its path relative to the root, so a moved root still reads right."""
    path = Path(problem.path)
    rel = path.relative_to(root).as_posix() if path.is_absolute() and path.is_relative_to(root) else str(path)
    return json.dumps([rel, problem.key, problem.message])


def problem_text(stored: str, root: Path) -> str:
    rel, key, message = json.loads(stored)
    return str(Problem(root / rel, key, message))


def _span(started: object, ended: object) -> float | None:
    if not isinstance(started, datetime) or not isinstance(ended, datetime):
        return None
    if (started.tzinfo is None) != (ended.tzinfo is None):
        return None
    return (ended - started).total_seconds()


def stems(directory: Path) -> list[str]:
    """The names of the *.toml files in `directory`, without the suffix, sorted."""
    try:
        with os.scandir(directory) as it:
            return sorted(e.name[:-5] for e in it if e.name.endswith(".toml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


# -- status rows ---------------------------------------------------------------------------------

def pipeline_status_row(status: PipelineStatus | None, problem: str | None) -> PipelineStatusCols:
    """The pipeline's status columns; `problem` says why status.toml could not be read, and the
    state is then `broken`."""
    if status is None:
        return PipelineStatusCols("broken", "", None, None, None, problem)
    return PipelineStatusCols(status.state.value, status.message, ts(status.started_at), ts(status.ended_at),
                              status.prompt_hash or None, None)


def job_rows(pipeline: str, status: JobStatus, problem: str | None = None) -> JobRows:
    attempts: list[AttemptRow] = []
    artifacts: list[ArtifactRow] = []
    consumed: list[ConsumedRow] = []
    for a in status.attempts:
        u = a.usage
        attempts.append(AttemptRow(pipeline, status.job, a.number, a.state.value, ts(a.started_at), ts(a.ended_at),
                                   _span(a.started_at, a.ended_at), a.exit_code, a.signal, a.pid, a.spec_hash or None,
                                   a.base_commit, a.commit, a.message, a.trigger, a.request,
                                   u.input_tokens if u else None, u.output_tokens if u else None,
                                   u.cost_usd if u else None, _json(inputs_to_dict(a.inputs)), a.reused_from))
        artifacts += [ArtifactRow(pipeline, status.job, a.number, x.path, x.blob, x.size, x.kind) for x in a.artifacts]
        consumed += [ConsumedRow(pipeline, status.job, a.number, up, commit)
                     for up, commit in sorted(a.consumed.items())]
    # The job's times from its attempts' rows, each time formatted once: 15 -> 12.5 µs a job.
    closed = [r.duration for r in attempts if r.duration is not None]
    open_starts = [r.started_at for r in attempts if r.started_at is not None and r.ended_at is None]
    job = JobRow(pipeline, status.job, status.state.value, status.attempt, status.message, ts(status.retry_at),
                 _json(list(status.waiting_for)), _json(list(status.spawned)), _json(dict(status.extra)), problem,
                 attempts[0].started_at if attempts else None, attempts[-1].ended_at if attempts else None,
                 sum(closed) if closed else None, _json(open_starts))
    approvals = [ApprovalRow(pipeline, status.job, d.key, d.approval.verdict.value, d.approval.by,
                             ts(d.approval.at) or "", d.approval.comment, d.attempt) for d in decisions(status)]
    return JobRows(job, attempts, artifacts, consumed, approvals)


# -- spec rows -----------------------------------------------------------------------------------

def spec_rows(paths: PipelinePaths, pipeline: Pipeline | None, problems: list[Problem],
              root: Path) -> tuple[PipelineSpecCols, list[JobSpecRow], list[EdgeRow]]:
    """The pipeline's spec columns (template, stages, valid, problems), its jobs' spec rows and
    its dependency edges. An invalid pipeline lists its job files' names and nothing more, as
    `clowder status` does."""
    from clowder.graph import pipeline_deps, topo_order

    name = paths.name
    stored = [problem_json(p, root) for p in problems]
    if pipeline is None:
        return (PipelineSpecCols(None, None, 0, _json(stored)),
                [JobSpecRow._make((name, job, i, *([None] * 12))) for i, job in enumerate(paths.job_names())], [])
    head = PipelineSpecCols(pipeline.spec.template, _json(list(pipeline.spec.stages)), 1, _json(stored))
    jobs: list[JobSpecRow] = []
    edges: list[EdgeRow] = []
    for i, job in enumerate(topo_order(pipeline_deps(pipeline))):
        spec = pipeline.jobs[job]
        command = list(spec.command) if isinstance(spec.command, tuple) else spec.command
        jobs.append(JobSpecRow(name, job, i, spec.stage, "agent" if spec.agent else "command",
                               json.dumps(command) if command is not None else None, spec.agent,
                               _json(list(spec.sources)), _json(list(spec.outputs)), spec.retries,
                               int(spec.allow_failure), spec.timeout, spec.parent, spec.regression_of,
                               spec.spec_hash or None))
        edges += [EdgeRow(name, job, n.job, n.when.value, k) for k, n in enumerate(spec.needs)]
    return head, jobs, edges


# -- reading a pipeline --------------------------------------------------------------------------

def read_pipeline(root: Root, name: str, config: Config | None) -> PipelineRows:
    """Everything the index holds for pipeline `name`, read from the tree alone."""
    paths = root.pipeline(name)
    # Signed before reading: a file that changes while it is read makes the index stale, never
    # wrongly fresh.
    spec_sig, status_sig = stamp.spec_signature(str(paths.dir)), stamp.status_signature(str(paths.dir))
    from clowder.validate import check_pipeline

    pipeline, problems = check_pipeline(paths, config)
    head, job_specs, edges = spec_rows(paths, pipeline, problems, root.path)
    pstatus, pproblem = pipeline_status_or_problem(paths.status_file, root.path)
    rows = PipelineRows(name, pipeline_status_row(pstatus, pproblem), head, job_specs, edges,
                        status_sig=status_sig, spec_sig=spec_sig)
    status_dir = paths.status_dir
    for job in stems(status_dir):
        if is_name(job):
            status, problem = job_status_or_problem(status_dir / f"{job}.toml", job, root.path)
            add_job(rows, status, problem)
    rows.outputs = model_outputs(paths, rows.artifacts)
    return rows


def add_job(rows: PipelineRows, status: JobStatus, problem: str | None = None) -> None:
    j = job_rows(rows.name, status, problem)
    rows.jobs.append(j.job)
    rows.attempts += j.attempts
    rows.artifacts += j.artifacts
    rows.consumed += j.consumed
    rows.approvals += j.approvals


def pipeline_status_or_problem(path: Path, root: Path) -> tuple[PipelineStatus | None, str | None]:
    """status.toml through the one status parser, or None and why it cannot be read."""
    try:
        return read_pipeline_status(path), None
    except SpecError as e:
        return None, problem_json(e.problems[0], root)


def job_status_or_problem(path: Path, job: str, root: Path) -> tuple[JobStatus, str | None]:
    """A job's status file through the one status parser; if it cannot be read, a fresh status
    and why (as clowder.views.tree.job_status shows it)."""
    try:
        return read_job_status(path, job), None
    except SpecError as e:
        return JobStatus(job), problem_json(e.problems[0], root)


# -- model outputs: the content of small JSON artifacts ------------------------------------------

def model_outputs(paths: PipelinePaths, artifacts: Iterable[ArtifactRow],
                  known: Mapping[str, Any] | None = None) -> list[ModelOutputRow]:
    """(blob, content, error) for each model_output artifact whose blob is not in `known`.
    Content is JSON text, so SQLite's JSON functions can search it; when the blob cannot be
    read or is not JSON, content is NULL and error says why."""
    out: dict[str, ModelOutputRow] = {}
    repos: dict[str, Path | None] = {}
    present: set[str] | None = None
    for a in artifacts:
        if a.kind != MODEL_OUTPUT or a.blob in out or (known is not None and a.blob in known):
            continue
        if present is None:
            present = _workspaces(paths)
        if a.job not in repos:
            repos[a.job] = _repository(paths, a.job, present)
        ws = repos[a.job]
        out[a.blob] = (_model_output(ws, a.path, a.blob, a.size) if ws is not None
                       else ModelOutputRow(a.blob, None, "no workspace repository"))
    return [out[b] for b in sorted(out)]


def _workspaces(paths: PipelinePaths) -> set[str]:
    """The names in workspaces/: one listing instead of a path and a stat per job, most of
    reading model outputs when jobs have no workspace."""
    try:
        return set(os.listdir(paths.workspaces_dir))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _repository(paths: PipelinePaths, job: str, present: set[str]) -> Path | None:
    """The job's workspace if it is a git repository."""
    if job not in present:
        return None
    ws = paths.workspace(job)
    return ws if (ws / ".git").exists() else None


def _model_output(ws: Path, path: str, blob: str, size: int) -> ModelOutputRow:
    # Imported here: clowder.workspace costs ~50 ms, which `clowder reindex` paid before it forked
    # its readers; a reader pays it only if a pipeline has a workspace.
    from clowder.workspace.objects import read_blob

    if size > MAX_OUTPUT_BYTES:
        return ModelOutputRow(blob, None, f"larger than {MAX_OUTPUT_BYTES} bytes")
    data = read_blob(ws, blob, path)
    if data is None:
        return ModelOutputRow(blob, None, "blob not found in the workspace")
    try:
        text = data.decode()
        json.loads(text)
    except ValueError as e:
        return ModelOutputRow(blob, None, f"not JSON: {e}")
    return ModelOutputRow(blob, text, None)


def check_objects(ws: Path, wanted: Mapping[str, tuple[str, int | None]]) -> dict[str, str]:
    """clowder.workspace.objects.check_objects, for fsck (imported when used, as above)."""
    from clowder.workspace.objects import check_objects as check

    return check(ws, wanted)
