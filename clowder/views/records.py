"""The read model's records: what every face (the CLI's tables and `--json`, the API's models, the
web page) shows of a root. One family, built by clowder.views.reader from the index or the tree."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple, cast, get_args

from clowder.state import JobState, Usage

# What `clowder status` can say of a pipeline: its states (`blocked` by a spec file, `broken`:
# Clowder failed on a file), or `invalid` / `broken` files.
ReportState = Literal["pending", "running", "blocked", "succeeded", "failed", "cancelled", "invalid", "broken"]
REPORT_STATES: tuple[str, ...] = get_args(ReportState)
JOB_STATES = tuple(s.value for s in JobState)
_REPORT_STATES = frozenset(REPORT_STATES)  # a hash, not a scan of the tuple: once a pipeline of a list


def report_state(state: str) -> ReportState:
    """A state as a list shows it: one it does not know is `broken`."""
    return cast(ReportState, state) if state in _REPORT_STATES else "broken"


_ORDER = {s: i for i, s in enumerate(JOB_STATES)}


def summarize(counts: dict[str, int] | Counter[str]) -> str:
    """Job counts in the order of the states' life: "2 running, 3 succeeded". (The states a
    pipeline has, sorted, not every state looked up: `clowder status` summarizes each pipeline.)"""
    if len(counts) == 1:  # most pipelines: every job in one state (a finished pipeline's: succeeded)
        for s, n in counts.items():
            return f"{n} {s}" if n and s in _ORDER else "no jobs"
    shown = sorted((_ORDER[s], s) for s, n in counts.items() if n and s in _ORDER)
    return ", ".join(f"{counts[s]} {s}" for _, s in shown) or "no jobs"


@dataclass(frozen=True, init=False)
class PipelineEntry:
    """One pipeline in a list: `clowder status` without a pipeline, `GET /api/pipelines`."""

    name: str
    state: ReportState
    message: str
    started_at: datetime | None
    ended_at: datetime | None
    jobs: int
    counts: dict[str, int]  # jobs in each state
    problems: list[str]

    def __init__(self, name: str, state: ReportState, message: str, started_at: datetime | None,
                 ended_at: datetime | None, jobs: int, counts: dict[str, int], problems: list[str]) -> None:
        # The fields at once, not one frozen-dataclass setattr each: `clowder status` makes one
        # entry per pipeline of the root (10,000: 0.9 -> 0.5 us each). Still frozen afterwards.
        self.__dict__.update(name=name, state=state, message=message, started_at=started_at, ended_at=ended_at,
                             jobs=jobs, counts=counts, problems=problems)

    @property
    def summary(self) -> str:
        return summarize(self.counts)


class StatusLine(NamedTuple):
    """A pipeline's line in `clowder status`'s table: what it shows of its PipelineEntry, made
    without one (the table has a line per pipeline of the root: fewer objects each)."""

    name: str
    state: ReportState
    jobs: str  # PipelineEntry.summary
    message: str


def status_line(entry: PipelineEntry) -> StatusLine:
    return StatusLine(entry.name, entry.state, entry.summary, entry.message)


@dataclass(frozen=True)
class GateDecision:
    """A decision on a job's approval gate, in `clowder status --json`: what, who, when, why, and
    the first attempt it let start (None: a rejection, or not started yet)."""

    verdict: str
    by: str
    at: datetime
    comment: str
    attempt: int | None


@dataclass(frozen=True)
class OutdatedView:
    """A job whose last attempt was made from other inputs than it would be now: which ones."""

    reason: str  # "outdated: spec changed since attempt 2", as `clowder why` says it
    attempt: int  # the attempt made from the older inputs
    changed: list[str]  # spec, role, env, source, upstream
    upstreams: list[str] = field(default_factory=list)  # the upstreams with a new final commit


@dataclass(frozen=True)
class JobReport:
    """One job as `clowder status PIPELINE` (and its `--json`) shows it."""

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
    approvals: tuple[GateDecision, ...] = ()  # the decisions on its approval gate, oldest first
    outdated: OutdatedView | None = None  # ended, and its inputs changed since (one pipeline's report)


@dataclass(frozen=True)
class PipelineReport:
    """One pipeline with its jobs, as `clowder status PIPELINE` (and `--json`) shows it."""

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


@dataclass(frozen=True)
class ArtifactView:
    """One artifact of an attempt, within the attempt."""

    path: str
    blob: str
    size: int
    kind: str


@dataclass(frozen=True)
class ArtifactLine:
    """One artifact of one attempt in a listing: `clowder artifacts`."""

    job: str
    attempt: int
    state: str
    commit: str
    path: str
    blob: str
    size: int
    kind: str


@dataclass(frozen=True)
class ApprovalView:
    """A decision on a job's `when = "manual"` gate: approved or rejected, by whom, when, why."""

    verdict: str
    by: str
    at: datetime
    comment: str = ""


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
    approval: ApprovalView | None = None  # who let this attempt of a gated job start
    inputs: InputsView | None = None  # what it was made from
    reused_from: int | None = None  # `cache = true`: it did not run; it is this attempt's commit


@dataclass(frozen=True)
class InputsView:
    """What an attempt was made from: hashes of its spec, role, source and env, and its upstreams' commits."""

    spec: str
    role: str
    source: str
    env: str
    upstreams: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Edge:
    source: str  # upstream
    target: str  # the job that needs it
    when: str


@dataclass(frozen=True)
class JobNode:
    """One job in a pipeline's detail: its line of `clowder status`, its place in the graph and
    its attempts."""

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
    outdated: OutdatedView | None = None  # ended, and its inputs changed since


@dataclass(frozen=True)
class PipelineDetail:
    name: str
    state: ReportState
    message: str
    started_at: datetime | None
    ended_at: datetime | None
    problems: list[str]
    prompt: str | None
    jobs: list[JobNode]
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
    approval: ApprovalView | None = None  # the last decision on its `when = "manual"` gate
    outdated: OutdatedView | None = None  # ended, and its inputs changed since


@dataclass(frozen=True)
class Change:
    """A state change the server streams: a job's, or the pipeline's own (`job` None; `removed`
    when its directory went)."""

    pipeline: str
    job: str | None
    state: str
    attempt: int = 0
