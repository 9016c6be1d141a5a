"""Monitoring views of the tree: what `clowder serve` shows (pipelines, a pipeline's graph and
attempts, a job's spec, status, artifacts and lineage), and a cheap scan for state changes.
Read-only, and free of web imports so that it works (and is tested) without the web extra."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

from clowder import known, report, requests, workspace
from clowder.errors import ClowderError, UsageError
from clowder.executor import read_exit, run_file
from clowder.export import command_line
from clowder.graph import topo_order
from clowder.schema import load_toml
from clowder.spec import NAME_PATTERN, Pipeline, is_name
from clowder.state import JobState, JobStatus, read_pipeline_status
from clowder.tree import PipelinePaths, Root
from clowder.validate import check_config, check_pipeline

# What `clowder status` can say of a pipeline: its states (`blocked` by a spec file, `broken`:
# Clowder failed on a file), or `invalid` / `broken` files.
ReportState = Literal["pending", "running", "blocked", "succeeded", "failed", "cancelled", "invalid", "broken"]
REPORT_STATES: tuple[str, ...] = get_args(ReportState)


NotFound = known.NotFound  # a pipeline, job, attempt or log that does not exist (HTTP 404)


@dataclass(frozen=True)
class ArtifactView:
    path: str
    blob: str
    size: int
    kind: str


@dataclass(frozen=True)
class AttemptView:
    number: int
    state: str
    trigger: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    message: str = ""
    base_commit: str | None = None
    commit: str | None = None
    consumed: dict[str, str] = field(default_factory=dict)
    artifacts: list[ArtifactView] = field(default_factory=list)


@dataclass(frozen=True)
class PipelineSummary:
    name: str
    state: ReportState
    message: str
    started_at: datetime | None
    ended_at: datetime | None
    jobs: int
    counts: dict[str, int]
    problems: list[str]


@dataclass(frozen=True)
class Edge:
    source: str  # upstream
    target: str  # the job that needs it
    when: str


@dataclass(frozen=True)
class JobSummary:
    name: str
    state: str
    attempt: int
    stage: str | None
    needs: list[str]
    level: int  # longest path from a job that needs nothing: the DAG's column
    duration: float | None
    message: str
    started_at: datetime | None
    ended_at: datetime | None
    regression_of: str | None  # a fix-up: the job it is a copy of
    parent: str | None  # a fix-up: the job that spawned it, and runs again from its commit
    attempts: list[AttemptView]
    actions: list[str]  # what may be asked of it now: `cancel`, `retry`


@dataclass(frozen=True)
class PipelineDetail:
    name: str
    state: ReportState
    message: str
    started_at: datetime | None
    ended_at: datetime | None
    problems: list[str]
    prompt: str | None
    jobs: list[JobSummary]
    edges: list[Edge]
    actions: list[str]  # `cancel` while it has not ended


@dataclass(frozen=True)
class Consumer:
    job: str
    attempt: int
    commit: str  # this job's commit that the consumer started from


@dataclass(frozen=True)
class Regression:
    of: str | None  # the job this one is a fix-up of
    parent: str | None  # the job that spawned it
    context: dict[str, Any]


@dataclass(frozen=True)
class JobDetail:
    pipeline: str
    name: str
    state: str
    attempt: int
    message: str
    spec: dict[str, Any]  # jobs/<job>.toml as written
    spec_problems: list[str]
    needs: list[Edge]
    dependents: list[str]
    attempts: list[AttemptView]
    consumers: list[Consumer]
    regression: Regression | None
    spawned: list[str]
    waiting_for: list[str]
    retry_at: datetime | None
    actions: list[str]  # what may be asked of it now: `cancel`, `retry`
    export_command: str = ""  # for a succeeded job: the `clowder export` line that brings its work back


# -- a cache of what files say --------------------------------------------------------------------

# Directory and file mtimes tick coarsely (a few ms on ext4): a file rewritten in the same tick
# as the last look keeps its mtime. What changed this recently is read again each time, until
# it settles (git's "racy" index entries have the same cure).
RACY_SECONDS = 1.0
_CACHE_LIMIT = 20_000
_cache: dict[tuple[str, str], tuple[tuple[tuple[int, int, int] | None, ...], Any]] = {}
T = TypeVar("T")


def _key(path: Path | str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _racy(keys: Iterable[tuple[int, int, int] | None], now_ns: int) -> bool:
    return any(k is not None and now_ns - k[1] < RACY_SECONDS * 1e9 for k in keys)


def _cached(kind: str, name: str, files: Iterable[Path], compute: Callable[[], T]) -> T:
    """`compute()`, or its value from the last call while `files` are unchanged. Every page
    refetches a pipeline on every state change; parsing and checking its files each time would
    cost ~0.5 ms per job."""
    keys = tuple(_key(f) for f in files)
    hit = _cache.get((kind, name))
    if hit is not None and hit[0] == keys and not _racy(keys, time.time_ns()):
        return cast(T, hit[1])
    value = compute()
    if len(_cache) > _CACHE_LIMIT:
        _cache.clear()
    _cache[(kind, name)] = (keys, value)
    return value


def read_status(paths: PipelinePaths, job: str) -> JobStatus:
    """The job's status, or a `pending` one; a status file broken by hand is reported in the
    message rather than raised, as `clowder status` does."""
    path = paths.job_status_file(job)
    return _cached("status", str(path), [path], lambda: report.job_status(path, job))


def _attempts(status: JobStatus) -> list[AttemptView]:
    return [
        AttemptView(
            number=a.number, state=a.state.value, trigger=a.trigger, started_at=a.started_at, ended_at=a.ended_at,
            duration=a.duration, exit_code=a.exit_code, signal=a.signal, message=a.message,
            base_commit=a.base_commit, commit=a.commit, consumed=dict(a.consumed),
            artifacts=[ArtifactView(x.path, x.blob, x.size, x.kind) for x in a.artifacts],
        )
        for a in status.attempts
    ]


def _summary(r: report.PipelineReport) -> PipelineSummary:
    return PipelineSummary(r.name, _report_state(r.state), r.message, r.started_at, r.ended_at, len(r.jobs),
                           dict(r.counts()), list(r.problems))


def _report_state(state: str) -> ReportState:
    return cast(ReportState, state) if state in REPORT_STATES else "broken"


def pipelines(root: Root, state: str | None = None) -> list[PipelineSummary]:
    """Every pipeline as `clowder status` shows it; with `state`, only those in it."""
    if state is not None and state not in REPORT_STATES:
        raise UsageError(f"unknown state {state!r}: one of {', '.join(REPORT_STATES)}")
    out = [_summary(r) for r in report.collect(root)]
    return [p for p in out if state is None or p.state == state]


def _levels(deps: Mapping[str, list[str]]) -> dict[str, int]:
    level: dict[str, int] = {}
    for name in topo_order(deps):
        level[name] = 1 + max((level[d] for d in deps[name] if d in level), default=-1)
    return level


def _load(root: Root, paths: PipelinePaths) -> Pipeline | None:
    """The pipeline's specs as records, or None while they have problems."""
    files = [root.config_file, paths.spec_file, *(paths.jobs_dir / f"{n}.toml" for n in paths.job_names())]
    return _cached("spec", str(paths.dir), files, lambda: check_pipeline(paths, check_config(root.config_file)[0])[0])


def pipeline_detail(root: Root, name: str) -> PipelineDetail:
    """A pipeline's jobs with their states and attempts, the edges between them and each
    job's level in the graph (for drawing it)."""
    paths = known.pipeline(root, name)
    # The report is what `clowder status` shows (states, `invalid`/`broken` files), from the
    # index where it is fresh; the specs (for the edges' conditions) and statuses (for the
    # attempts) come from the cache above.
    head = report.collect(root, name)[0]
    pipeline = _load(root, paths)
    deps = {j.name: list(j.needs) for j in head.jobs}
    levels = _levels(deps)
    retries = requests.retries_waiting(paths)
    jobs = []
    for j in head.jobs:
        spec = pipeline.jobs.get(j.name) if pipeline else None
        status = read_status(paths, j.name)
        jobs.append(JobSummary(
            name=j.name, state=j.state, attempt=j.attempt, stage=j.stage, needs=list(j.needs),
            level=levels.get(j.name, 0), duration=j.duration, message=j.message, started_at=j.started_at,
            ended_at=j.ended_at, regression_of=spec.regression_of if spec else None,
            parent=spec.parent if spec else None,
            attempts=_attempts(status), actions=requests.job_actions(status.state, j.name in retries),
        ))
    edges = [Edge(n.job, job.name, n.when.value) for job in (pipeline.jobs.values() if pipeline else ())
             for n in job.needs]
    return PipelineDetail(
        name=head.name, state=_report_state(head.state), message=head.message, started_at=head.started_at,
        ended_at=head.ended_at, problems=list(head.problems), prompt=pipeline.spec.prompt if pipeline else None,
        jobs=jobs, edges=sorted(edges, key=lambda e: (e.target, e.source)),
        actions=requests.pipeline_actions_now(paths, retries),
    )


def _consumers(paths: PipelinePaths, job: str, commits: set[str], jobs: list[str]) -> list[Consumer]:
    out = []
    for other in jobs:
        if other == job:
            continue
        for a in read_status(paths, other).attempts:
            commit = a.consumed.get(job)
            if commit and commit in commits:
                out.append(Consumer(other, a.number, commit))
    return out


def job_detail(root: Root, pipeline: str, job: str) -> JobDetail:
    """One job: its spec as written, its status with every attempt's artifacts and the upstream
    commits it consumed, which jobs consumed its commits, and its regression lineage."""
    paths = known.pipeline(root, pipeline)
    known.job(paths, job)
    raw, problems = load_toml(paths.job_file(job)) if paths.job_file(job).is_file() else (None, [])
    loaded = _load(root, paths)
    spec = loaded.jobs.get(job) if loaded else None
    status = read_status(paths, job)
    names = sorted(set(paths.job_names()) | {p.stem for p in paths.status_dir.glob("*.toml")})
    commits = {a.commit for a in status.attempts if a.commit}
    regression = None
    if spec is not None and (spec.regression_of or spec.parent):
        regression = Regression(spec.regression_of, spec.parent, dict(spec.regression_context or {}))
    return JobDetail(
        pipeline=pipeline, name=job, state=status.state.value, attempt=status.attempt, message=status.message,
        spec=raw or {}, spec_problems=[str(p) for p in problems],
        needs=[Edge(n.job, job, n.when.value) for n in spec.needs] if spec else [],
        dependents=list(loaded.dependents.get(job, ())) if loaded else [],
        attempts=_attempts(status), consumers=_consumers(paths, job, commits, names), regression=regression,
        spawned=list(status.spawned), waiting_for=list(status.waiting_for), retry_at=status.retry_at,
        actions=requests.job_actions(status.state, job in requests.retries_waiting(paths)),
        export_command=command_line(pipeline, job) if status.state is JobState.SUCCEEDED else "",
    )


# -- diffs ----------------------------------------------------------------------------------------

POINT_PATTERN = NAME_PATTERN[:-1] + r"(@[0-9]{1,6})?$"  # `dev` (its final commit) or `test@2`
DIFF_LIMIT = 2_000_000  # characters: a page cannot show more anyway


def diff_text(root: Root, pipeline: str, a: str, b: str | None) -> str:
    """`clowder diff PIPELINE A [B]`: git diff from A to B, or what A changed from its base."""
    paths = known.pipeline(root, pipeline)
    for point in (a, b):
        if point is not None:
            known.job(paths, point.split("@", 1)[0])
    # Resolved first: workspace.diff would take an unknown B for a path to limit the diff to.
    try:
        for point in (a, b):
            if point is not None:
                workspace.resolve(paths, point)
    except UsageError as e:
        raise NotFound(str(e)) from e
    text = workspace.diff(paths, a, [b] if b else []).stdout
    if len(text) > DIFF_LIMIT:
        rerun = " ".join(["clowder diff", pipeline, a, *([b] if b else [])])
        return text[:DIFF_LIMIT] + f"\n… cut at {DIFF_LIMIT:,} characters: run `{rerun}`\n"
    return text


# -- logs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LogRef:
    paths: PipelinePaths
    job: str
    attempt: int
    file: Path

    def over(self) -> bool:
        """Whether the attempt has ended, so the log will not grow any more."""
        if read_exit(run_file(self.file)) is not None:
            return True
        status = read_status(self.paths, self.job)
        return not (status.attempt == self.attempt and status.state is JobState.RUNNING)


def log_ref(root: Root, pipeline: str, job: str, attempt: int | None) -> LogRef:
    """Where an attempt's log is (default: the latest attempt). The file may not exist yet
    for an attempt that is just starting."""
    paths = known.pipeline(root, pipeline)
    known.job(paths, job)
    status = read_status(paths, job)
    number = attempt or status.attempt
    if not number:
        raise NotFound(f"{pipeline}/{job} has not run yet (it is {status.state.value})")
    ref = LogRef(paths, job, number, paths.log_file(job, number))
    if not ref.file.is_file() and (number > status.attempt or ref.over()):
        raise NotFound(f"no log for attempt {number} of {pipeline}/{job}")
    return ref


# -- changes --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    pipeline: str
    job: str | None  # None: the pipeline's own state (or the pipeline appeared or went)
    state: str
    attempt: int = 0


class Scanner:
    """Finds the status files that changed since the last scan. Each scan costs two stats per
    pipeline; status files are read only where their directory changed."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self._dirs: dict[str, tuple[tuple[int, int, int] | None, ...]] = {}
        self._files: dict[str, tuple[int, int, int] | None] = {}
        self._started = False

    def scan(self) -> list[Change]:
        """Changes since the previous scan; the first scan only takes the baseline."""
        names = [n for n in self.root.pipeline_names() if is_name(n)]
        changes: list[Change] = []
        now_ns = time.time_ns()
        for name in names:
            changes += self._scan_pipeline(name, now_ns)
        for gone in set(self._dirs) - set(names):
            del self._dirs[gone]
            prefix = str(self.root.pipeline(gone).dir) + os.sep
            for f in [f for f in self._files if f.startswith(prefix)]:
                del self._files[f]
            changes.append(Change(gone, None, "removed"))
        first, self._started = not self._started, True
        return [] if first else changes

    @property
    def started(self) -> bool:
        return self._started

    def _scan_pipeline(self, name: str, now_ns: int) -> list[Change]:
        paths = self.root.pipeline(name)
        dirs = (_key(paths.dir), _key(paths.status_dir))
        old = self._dirs.get(name)
        if old == dirs and not _racy(dirs, now_ns):
            return []
        self._dirs[name] = dirs
        changes = []
        try:
            entries = [e.name for e in os.scandir(paths.status_dir) if e.name.endswith(".toml")]
        except OSError:
            entries = []
        for entry in sorted(entries):
            job = entry[: -len(".toml")]
            if is_name(job) and self._changed(paths.status_dir / entry):
                status = read_status(paths, job)
                changes.append(Change(name, job, status.state.value, status.attempt))
        # After its jobs: a client that sees the pipeline end has seen how its jobs ended.
        if self._changed(paths.status_file) or old is None:
            changes.append(Change(name, None, _pipeline_state(paths)))
        return changes

    def _changed(self, path: Path) -> bool:
        key = _key(path)
        if self._files.get(str(path), ()) == key:
            return False
        self._files[str(path)] = key
        return True


def _pipeline_state(paths: PipelinePaths) -> str:
    try:
        return read_pipeline_status(paths.status_file).state.value
    except ClowderError:
        return "broken"
