"""The scheduler's records: what it is shown (a pipeline's view, requests, attempt outcomes),
what it decides (actions, a plan), and a job's step."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from clowder.scheduler.ready import ReadyChange, ReadyQueue
from clowder.spec import JobSpec, Pipeline
from clowder.state import (
    Approval,
    Artifact,
    FailureKind,
    Inputs,
    JobState,
    JobStatus,
    KillReason,
    PipelineStatus,
    Trigger,
    Usage,
)

ACTIVE = frozenset({JobState.RUNNING})
NO_CHANGES = "no changes"


@functools.lru_cache(maxsize=1024)
def prompt_hash(prompt: str) -> str:
    # Cached: every step checks each pipeline's prompt against the hash its status recorded, and a
    # SHA-256 of a long prompt on every step of every pipeline added up.
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


# -- requests (read from requests/ by clowder.requests) ---------------------------------------

@dataclass(frozen=True)
class Cancel:
    id: str  # the file's stem: sortable by creation time
    job: str | None = None  # None: the whole pipeline


@dataclass(frozen=True)
class Retry:
    id: str
    job: str


@dataclass(frozen=True)
class Rerun:
    """`clowder rerun`: a new attempt of a job that ended in any way; with `downstream`, every job
    after it that has ended runs again too (after it, as their `needs` say)."""

    id: str
    job: str
    downstream: bool = False


@dataclass(frozen=True)
class Spawn:
    """A running attempt asks for a fix-up of `job` (clowder spawn)."""

    id: str
    job: str
    spawner: str
    attempt: int
    reason: str = ""
    context: str = ""


@dataclass(frozen=True)
class Approve:
    """A person lets a job waiting at its `when = "manual"` gate start (clowder approve)."""

    id: str
    job: str
    by: str
    at: datetime
    comment: str = ""


@dataclass(frozen=True)
class Reject:
    """A person fails a job waiting at its gate, with the comment as its message (clowder reject)."""

    id: str
    job: str
    by: str
    at: datetime
    comment: str = ""


@dataclass(frozen=True)
class Invalid:
    """A request file that could not be read: reported and removed, never tripped on again."""

    id: str
    error: str


Request = Cancel | Retry | Rerun | Spawn | Approve | Reject | Invalid


@dataclass(frozen=True)
class Outcome:
    """How a running attempt ended, as observed by the driver."""

    exit_code: int | None  # None: vanished without an exit record
    ended_at: datetime
    signal: int | None = None
    problem: str = ""  # why an exit 0 still failed (a missing declared output, ...)
    commit: str | None = None
    base_commit: str | None = None
    artifacts: tuple[Artifact, ...] = ()
    consumed: Mapping[str, str] = field(default_factory=dict)
    usage: Usage | None = None  # what an agent reported spending (its action log)
    failure_kind: FailureKind | None = None  # the last failure the agent reported (its action log)
    failure_text: str = ""
    note: str = ""  # what the attempt's record says of a success ("no changes": a fix-up that changed nothing)
    killed_for: KillReason | None = None  # why Clowder was killing it when it ended, as the executor reported


@dataclass(frozen=True)
class Ending:
    """How an attempt ended: its state (succeeded, failed, lost, cancelled) and why."""

    state: JobState
    reason: str


@dataclass(frozen=True)
class PipelineView:
    """One pipeline as the tree shows it right now."""

    name: str
    pipeline: Pipeline | None  # the last spec that validated (None if it never did)
    problems: tuple[str, ...]  # what is wrong with the spec on disk now
    status: PipelineStatus
    jobs: Mapping[str, JobStatus]
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)  # job -> end of its running attempt
    alive: Mapping[str, bool | None] = field(default_factory=dict)  # job -> process alive (None: unknown)
    requests: tuple[Request, ...] = ()
    # Jobs that may change now (active, ready, just ended). None: look at every job, as after
    # a start, a spec change, a request or a sweep.
    focus: frozenset[str] | None = None
    # Jobs an earlier step found ready that got no slot, in dependency order: the driver's queue,
    # which the step only reads (a tuple in tests). Looked at only while there are free slots, so a
    # thousand ready jobs cost nothing while two run.
    ready: ReadyQueue | tuple[str, ...] = ()
    # The spec is invalid but a file of it changed a moment ago: it is being written. Nothing
    # new starts, and the pipeline's state waits for the file to settle before saying `blocked`.
    settling: bool = False
    # job -> when its running attempt last wrote to its log, for `idle_timeout` (the driver looks
    # only when an idle deadline is due: a job missing here is taken as quiet since it started).
    output_at: Mapping[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    max_parallel: int
    resources: Mapping[str, int] = field(default_factory=dict)
    heartbeat_timeout: float = 30.0
    kill_grace: float = 10.0


# -- actions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SetJob:
    pipeline: str
    status: JobStatus
    event: str = ""  # a line for the decision log, if this change is worth one


@dataclass(frozen=True)
class SetPipeline:
    pipeline: str
    status: PipelineStatus
    event: str = ""


@dataclass(frozen=True)
class Start:
    pipeline: str
    job: str
    attempt: int
    sources: tuple[str, ...] = ()  # a regression attempt starts from these fix-ups


@dataclass(frozen=True)
class Kill:
    pipeline: str
    job: str
    attempt: int
    signal: int
    reason: KillReason


@dataclass(frozen=True)
class DoneRequest:
    pipeline: str
    request: str
    event: str = ""


@dataclass(frozen=True)
class SpawnJob:
    """Write jobs/<name>.toml: a copy of `target`'s spec that fixes what `spawner` found."""

    pipeline: str
    name: str
    target: str
    spawner: str
    attempt: int
    commit: str | None  # the spawner's attempt commit: the fix-up's workspace starts there
    request: str
    reason: str
    context: str


@dataclass(frozen=True)
class Reuse:
    """A `cache = true` job does not run: its new attempt is an earlier attempt's commit, which is
    tagged with the new attempt's number too (downstreams, `job@n` and `clowder diff` find it)."""

    pipeline: str
    job: str
    attempt: int
    commit: str
    reused_from: int


Action = SetJob | SetPipeline | Start | Kill | DoneRequest | SpawnJob | Reuse


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    wake_at: datetime | None = None
    ready: list[ReadyChange] = field(default_factory=list)  # each pipeline's ready jobs not started

    def wake(self, when: datetime | None) -> None:
        if when is not None and (self.wake_at is None or when < self.wake_at):
            self.wake_at = when

    def take(self, step: JobStep) -> None:
        """Add what a job's step asks for."""
        self.actions += step.actions
        self.wake(step.wake)


@dataclass(frozen=True)
class Candidate:
    """A job whose dependencies allow it to start now, waiting for a slot."""

    pipeline: str
    job: JobSpec
    status: JobStatus
    trigger: Trigger
    request: str | None = None
    sources: tuple[str, ...] = ()
    approval: Approval | None = None  # a gated job: the approval that lets it start
    inputs: Inputs | None = None  # what its attempt would be made from (recorded on it)




class JobStep(NamedTuple):
    """What one job's step decided: its new status (with a line for the decision log), whether it
    may start now, the actions it asks for and when to look at it again. A NamedTuple: a full
    pass makes one per job, and a frozen dataclass cost a third of a pass of 1,000 jobs."""

    status: JobStatus
    event: str = ""
    candidate: Candidate | None = None
    actions: tuple[Action, ...] = ()
    wake: datetime | None = None


@dataclass(frozen=True)
class Scope:
    """What a job's step sees of its pipeline and the moment."""

    view: PipelineView
    specs: Mapping[str, JobSpec]
    jobs: Mapping[str, JobStatus]  # as this step has changed them so far
    now: datetime
    limits: Limits
    blocked: str  # why nothing new may start, or ''
