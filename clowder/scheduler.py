"""The scheduler's pure step: given what the tree says (specs, statuses, requests, observed
process ends) and the time, decide what to start, kill, skip, retry and record.

`reconcile` does no I/O; the driver (clowder.driver) feeds it and applies its actions.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import assert_never

from clowder.regression import fixup_name
from clowder.spec import JobSpec, Pipeline, When, format_duration
from clowder.state import (
    Artifact,
    Attempt,
    FailureKind,
    JobState,
    JobStatus,
    Killing,
    KillReason,
    PipelineState,
    PipelineStatus,
    Trigger,
    Usage,
    total_usage,
)

ACTIVE = frozenset({JobState.RUNNING})


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
class Spawn:
    """A running attempt asks for a fix-up of `job` (clowder spawn)."""

    id: str
    job: str
    spawner: str
    attempt: int
    reason: str = ""
    context: str = ""


@dataclass(frozen=True)
class Invalid:
    """A request file that could not be read: reported and removed, never tripped on again."""

    id: str
    error: str


Request = Cancel | Retry | Spawn | Invalid


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


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


def attempt_ending(outcome: Outcome, spec: JobSpec | None) -> Ending:
    """The one decision of how an attempt ended, from what the executor observed: its commit
    trailer, its error.json and its status all say this."""
    if outcome.exit_code == 0 and not outcome.problem:
        return Ending(JobState.SUCCEEDED, "")
    if outcome.killed_for is KillReason.CANCEL:
        return Ending(JobState.CANCELLED, "cancelled by request")
    # No exit record is `lost`, unless the attempt failed before its process ran (a merge conflict).
    state = JobState.LOST if outcome.exit_code is None and not outcome.problem else JobState.FAILED
    return Ending(state, _why(outcome, spec))


def _why(outcome: Outcome, spec: JobSpec | None) -> str:
    if killed_why(outcome.killed_for, spec):  # killed for a limit: the missing record is a consequence
        return killed_why(outcome.killed_for, spec)
    if outcome.problem:
        return outcome.problem
    if outcome.failure_text:
        return outcome.failure_text
    if outcome.exit_code is None:
        return "the process vanished without an exit record"
    if outcome.signal is not None:
        return f"killed by signal {outcome.signal} ({_signal_name(outcome.signal)})"
    return f"exit code {outcome.exit_code}"


NO_CHANGES = "no changes"


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
    # Jobs an earlier step found ready that got no slot, in order. Looked at only while there
    # are free slots, so a thousand ready jobs cost nothing while two run.
    ready: tuple[str, ...] = ()
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


Action = SetJob | SetPipeline | Start | Kill | DoneRequest | SpawnJob


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    wake_at: datetime | None = None
    ready: list[tuple[str, str]] = field(default_factory=list)  # (pipeline, job) ready but not started

    def wake(self, when: datetime) -> None:
        if self.wake_at is None or when < self.wake_at:
            self.wake_at = when


@dataclass(frozen=True)
class Candidate:
    """A job whose dependencies allow it to start now, waiting for a slot."""

    pipeline: str
    job: JobSpec
    status: JobStatus
    trigger: Trigger
    request: str | None = None
    sources: tuple[str, ...] = ()


# -- the step -------------------------------------------------------------------------------

def reconcile(views: Sequence[PipelineView], now: datetime, limits: Limits) -> Plan:
    """Everything to do now across the root, and when to look again at the latest."""
    plan = Plan()
    candidates: list[Candidate] = []
    running: list[tuple[str, JobSpec | None]] = []
    later: list[_Ready] = []
    for view in views:
        cands, run, ready = _plan_pipeline(view, now, limits, plan)
        candidates += cands
        running += run
        later.append(ready)
    _allocate(candidates, later, running, views, now, limits, plan)
    return plan


@dataclass
class _Ready:
    """A pipeline's known-ready jobs, each checked again only when a slot could take it."""

    pipeline: str
    names: list[str]
    check: Callable[[str], Candidate | None]
    index: int = 0

    def __iter__(self) -> Iterator[Candidate]:
        while self.index < len(self.names):
            name = self.names[self.index]
            self.index += 1
            cand = self.check(name)
            if cand is not None:
                yield cand

    def unchecked(self) -> list[str]:
        return self.names[self.index:]


def _plan_pipeline(
    view: PipelineView, now: datetime, limits: Limits, plan: Plan
) -> tuple[list[Candidate], list[tuple[str, JobSpec | None]], _Ready]:
    pipeline = view.pipeline
    specs: Mapping[str, JobSpec] = pipeline.jobs if pipeline else {}
    jobs: dict[str, JobStatus] = dict(view.jobs)
    full = view.focus is None
    if full:
        for name in specs:
            if name not in jobs:
                jobs[name] = JobStatus(name)
    before = dict(view.jobs)

    blocked = _blocked_reason(view)
    cancel_all, cancel_jobs = False, set()
    for req in view.requests:
        if isinstance(req, Cancel) and req.job is None:
            cancel_all = True
        elif isinstance(req, Cancel) and req.job is not None:
            cancel_jobs.add(req.job)
            waiting = jobs.get(req.job)
            if waiting is not None and waiting.state is JobState.WAITING:
                cancel_jobs.update(waiting.waiting_for)  # its fix-ups exist only for it
    for req in view.requests:
        if isinstance(req, Spawn):
            event = _check_spawn(req, jobs)
            if event is None:
                continue  # handled when the spawner's attempt ends
        else:
            event = _apply_request(req, jobs, specs, cancel_all)
        plan.actions.append(DoneRequest(view.name, req.id, event))

    # Visit jobs in dependency order. A full pass visits all; otherwise only the focus (jobs
    # that are active, ready, or just ended) and, as jobs change, their dependents: a chain
    # of a thousand jobs then costs a few steps per event instead of a thousand.
    position = pipeline.position if pipeline else {}
    extra = len(position)
    todo = list(jobs) if full else [n for n in (view.focus or ()) if n in jobs]
    heap = [(position.get(n, extra), n) for n in todo]
    heapq.heapify(heap)
    seen: set[str] = set()
    candidates: list[Candidate] = []
    running: list[tuple[str, JobSpec | None]] = []
    changed: dict[str, str] = {}
    while heap:
        _, name = heapq.heappop(heap)
        if name in seen:
            continue
        seen.add(name)
        spec = specs.get(name)
        status = jobs.get(name)
        if status is None:  # a job without a status file is pending
            status = jobs[name] = JobStatus(name)
        was = before.get(name)
        cancel = cancel_all or name in cancel_jobs
        new, event, cand = _step_job(view, spec, status, jobs, specs, now, limits, cancel, blocked, plan)
        jobs[name] = new
        if new != (was if was is not None else JobStatus(name)):
            changed[name] = event or changed.get(name, "")
            for dep in pipeline.dependents.get(name, ()) if pipeline else ():
                if dep not in seen:
                    heapq.heappush(heap, (position.get(dep, extra), dep))
            waiter = _waiter(spec, jobs)
            if waiter is not None and new.state.terminal:
                # A spawner waits for its fix-ups without `needs`: the job order may have visited
                # it already in this step, so look at it again now that a fix-up has ended.
                seen.discard(waiter)
                heapq.heappush(heap, (position.get(waiter, extra), waiter))
        if new.state is JobState.RETRYING and new.retry_at is not None:
            plan.wake(new.retry_at)
        if cand is not None:
            candidates.append(cand)
        if new.state in ACTIVE:
            running.append((view.name, spec))
    # A job seen for the first time that has done nothing has not changed: no status file
    # says it is pending (a missing one reads so), which saves a file write per job.
    for name, event in changed.items():
        plan.actions.append(SetJob(view.name, jobs[name], event))
    if full or changed or view.requests:
        _plan_pipeline_status(view, jobs, specs, blocked, now, plan)

    def check(name: str) -> Candidate | None:
        if name not in specs:
            return None
        if name not in jobs:
            jobs[name] = JobStatus(name)
        new, _, cand = _step_job(view, specs.get(name), jobs[name], jobs, specs, now, limits, False, blocked, plan)
        return cand if new == jobs[name] else None

    # A blocked pipeline's backlog is dropped: the spec read that unblocks it looks at every job.
    later = [] if full or blocked else [n for n in view.ready if n not in seen]
    return candidates, running, _Ready(view.name, later, check)


def _waiter(spec: JobSpec | None, jobs: Mapping[str, JobStatus]) -> str | None:
    """The spawner waiting for this fix-up job, if any."""
    parent = jobs.get(spec.parent) if spec is not None and spec.parent else None
    if parent is None or parent.state is not JobState.WAITING or spec is None or spec.name not in parent.waiting_for:
        return None
    return parent.job


def _blocked_reason(view: PipelineView) -> str:
    """Why no new job of this pipeline may start, or ''."""
    if view.problems:
        more = f" (and {len(view.problems) - 1} more; run `clowder validate`)" if len(view.problems) > 1 else ""
        return f"invalid spec: {view.problems[0]}{more}"
    if view.pipeline is None:
        return "no valid spec"
    recorded = view.status.prompt_hash
    if recorded and recorded != prompt_hash(view.pipeline.spec.prompt):
        return ("pipeline.toml: prompt: changed after the pipeline was created; the prompt is immutable, "
                "so scheduling stopped (restore the original prompt to resume)")
    return ""


def _apply_request(req: Cancel | Retry | Invalid, jobs: dict[str, JobStatus], specs: Mapping[str, JobSpec],
                   cancel_all: bool) -> str:
    """Apply a retry request to `jobs` in place; cancels are applied per job in `_step_job`."""
    match req:
        case Invalid():
            return f"ignored unreadable request {req.id}: {req.error}"
        case Cancel():
            return f"cancel requested for {req.job or 'the whole pipeline'}"
        case Retry():
            return _apply_retry(req, jobs, specs, cancel_all)
        case _:
            assert_never(req)


def _apply_retry(req: Retry, jobs: dict[str, JobStatus], specs: Mapping[str, JobSpec], cancel_all: bool) -> str:
    status = jobs.get(req.job)
    if status is None or req.job not in specs:
        return f"retry of unknown job {req.job!r} ignored"
    if any(a.request == req.id for a in status.attempts) or status.retry_request == req.id:
        return ""  # replayed after a crash: already applied
    if status.state not in (JobState.FAILED, JobState.CANCELLED):
        return f"retry of {req.job} ignored: it is {status.state.value} (only failed or cancelled jobs can be retried)"
    if cancel_all:
        return f"retry of {req.job} ignored: the pipeline is being cancelled"
    jobs[req.job] = replace(status, state=JobState.PENDING, message="retry requested", retry_request=req.id)
    for name in _descendants(req.job, specs):
        d = jobs.get(name)
        if d is not None and d.state in (JobState.SKIPPED, JobState.CANCELLED):
            jobs[name] = replace(d, state=JobState.PENDING, message="")
    return f"retry of {req.job} requested"


def _check_spawn(req: Spawn, jobs: Mapping[str, JobStatus]) -> str | None:
    """None while the spawn request waits for its spawner's attempt to end; else why it is
    dropped unused."""
    status = jobs.get(req.spawner)
    if status is None:
        return f"spawn request {req.id} ignored: unknown spawner {req.spawner!r}"
    if status.state is JobState.RUNNING and status.attempt == req.attempt:
        return None
    return f"spawn request from {req.spawner} attempt {req.attempt} ignored: that attempt is not running"


def _descendants(job: str, specs: Mapping[str, JobSpec]) -> list[str]:
    out: list[str] = []
    frontier = [job]
    while frontier:
        cur = frontier.pop()
        for name, spec in specs.items():
            if name not in out and any(n.job == cur for n in spec.needs):
                out.append(name)
                frontier.append(name)
    return out


def _step_job(
    view: PipelineView, spec: JobSpec | None, status: JobStatus, jobs: Mapping[str, JobStatus],
    specs: Mapping[str, JobSpec], now: datetime, limits: Limits, cancel: bool, blocked: str, plan: Plan,
) -> tuple[JobStatus, str, Candidate | None]:
    pipeline = view.name
    state = status.state
    if state is JobState.RUNNING:
        return _step_running(view, spec, status, now, limits, cancel, plan)
    if state.terminal:
        return status, "", None
    if cancel:
        return replace(status, state=JobState.CANCELLED, message="cancelled by request", retry_at=None), \
            f"{status.job} cancelled", None
    if spec is None:
        return status, "", None
    if state is JobState.WAITING:
        new, event, cand = _step_waiting(pipeline, spec, status, jobs)
        if cand is None:
            return new, event, cand
        if blocked:  # its fix-ups are done, but nothing starts in a blocked pipeline
            return status, "", None
        return _within_budget(view, spec, status, jobs, cand)
    if state is JobState.RETRYING:
        if status.retry_at is not None and status.retry_at > now and not _clock_went_back(status, now):
            plan.wake(status.retry_at)
            return status, "", None
        if blocked:
            return status, "", None
        return _within_budget(view, spec, status, jobs, Candidate(pipeline, spec, status, Trigger.RETRY))
    # pending or queued
    verdict = _dependencies(spec, jobs, specs)
    if verdict is None:
        if state is JobState.QUEUED:  # a live edit added an unfinished dependency
            return replace(status, state=JobState.PENDING, message=""), "", None
        return status, "", None
    if verdict:
        return replace(status, state=JobState.SKIPPED, message=verdict), f"{spec.name} skipped: {verdict}", None
    if blocked:
        return status, "", None
    if status.retry_request is not None:
        cand = Candidate(pipeline, spec, status, Trigger.MANUAL, status.retry_request)
        return _within_budget(view, spec, status, jobs, cand)
    return _within_budget(view, spec, status, jobs, Candidate(pipeline, spec, status, Trigger.START))


def _clock_went_back(status: JobStatus, now: datetime) -> bool:
    """Whether the wall clock is now before the end of the attempt that failed: it was set back, and
    the backoff measured from that end could last as long as the jump (years). The retry is then
    due at once: early by at most its backoff, never stuck."""
    ended = status.attempts[-1].ended_at if status.attempts else None
    return ended is not None and now < ended

def _within_budget(view: PipelineView, spec: JobSpec, status: JobStatus, jobs: Mapping[str, JobStatus],
                   cand: Candidate) -> tuple[JobStatus, str, Candidate | None]:
    """The candidate, unless a budget is spent: then the job fails instead of starting."""
    reason = over_budget(spec, view.pipeline.spec.max_cost_usd if view.pipeline else None, status, jobs)
    if not reason:
        return status, "", cand
    return replace(status, state=JobState.FAILED, message=reason, retry_at=None), f"{spec.name} failed: {reason}", None


def _spent(statuses: Iterable[JobStatus]) -> float:
    return sum(u.cost_usd for s in statuses if (u := total_usage(s.attempts)) is not None)


def over_budget(spec: JobSpec, pipeline_max: float | None, status: JobStatus, jobs: Mapping[str, JobStatus],
                extra: float = 0.0) -> str:
    """Why no further attempt or fix-up of this job may start, or '': the job's own
    `max_cost_usd` or its pipeline's is spent (`extra`: cost not yet in the statuses). Summing a
    pipeline is linear in its jobs, and done only for pipelines that set a budget."""
    if spec.max_cost_usd is not None:
        spent = _spent([status]) + extra
        if spent > 0 and spent >= spec.max_cost_usd:
            return (f"budget spent: {spec.name} has cost ${spent:.4f} of its max_cost_usd ${spec.max_cost_usd:.2f}; "
                    "no further attempts or fix-ups (raise max_cost_usd to go on)")
    if pipeline_max is not None:
        spent = _spent(jobs.values()) + extra
        if spent > 0 and spent >= pipeline_max:
            return (f"budget spent: the pipeline has cost ${spent:.4f} of its max_cost_usd ${pipeline_max:.2f}; "
                    "no further attempts or fix-ups (raise max_cost_usd in pipeline.toml to go on)")
    return ""


def _dependencies(spec: JobSpec, jobs: Mapping[str, JobStatus], specs: Mapping[str, JobSpec]) -> str | None:
    """None while a dependency is unfinished; '' if the job may run; else why it is skipped."""
    for need in spec.needs:
        dep = jobs.get(need.job)
        if dep is None or not dep.state.terminal:
            return None
    for need in spec.needs:
        dep = jobs[need.job]
        dep_spec = specs.get(need.job)
        passed = dep.state is JobState.SUCCEEDED or (
            dep.state is JobState.FAILED and dep_spec is not None and dep_spec.allow_failure)
        if need.when is When.SUCCESS and not passed:
            return f"needs {need.job} to succeed; it {_ended(dep.state)}"
        if need.when is When.FAILURE and dep.state is not JobState.FAILED:
            return f"needs {need.job} to fail; it {_ended(dep.state)}"
    return ""


def _ended(state: JobState) -> str:
    return {JobState.SUCCEEDED: "succeeded", JobState.FAILED: "failed", JobState.SKIPPED: "was skipped",
            JobState.CANCELLED: "was cancelled"}.get(state, state.value)


def _step_waiting(pipeline: str, spec: JobSpec, status: JobStatus,
                  jobs: Mapping[str, JobStatus]) -> tuple[JobStatus, str, Candidate | None]:
    """A job that spawned fix-ups waits for them; the regression loop fills this in."""
    waited = [jobs.get(j) for j in status.waiting_for]
    if any(w is None or not w.state.terminal for w in waited):
        return status, "", None
    failed = [w.job for w in waited if w is not None and w.state is not JobState.SUCCEEDED]
    if failed:
        message = f"fix-up {', '.join(failed)} did not succeed"
        return replace(status, state=JobState.FAILED, message=message), f"{spec.name} failed: {message}", None
    status = _note_unchanged(status, [w for w in waited if w is not None])
    return status, "", Candidate(pipeline, spec, status, Trigger.REGRESSION, sources=status.waiting_for)


def _note_unchanged(status: JobStatus, fixups: Sequence[JobStatus]) -> JobStatus:
    """The spawner's attempt that waited says which of its fix-ups changed nothing, so the
    spawn it paid for with its max_regressions is seen as such."""
    unchanged = [f.job for f in fixups if f.last is not None and f.last.message == NO_CHANGES]
    last = status.last
    note = f"{', '.join(unchanged)}: {NO_CHANGES}"
    if not unchanged or last is None or note in last.message:
        return status
    attempt = replace(last, message=f"{last.message}; {note}" if last.message else note)
    return replace(status, attempts=(*status.attempts[:-1], attempt))


def _step_running(
    view: PipelineView, spec: JobSpec | None, status: JobStatus, now: datetime, limits: Limits, cancel: bool,
    plan: Plan,
) -> tuple[JobStatus, str, Candidate | None]:
    last = status.last
    if last is None or last.number != status.attempt:  # a hand-edited status: start over
        return replace(status, state=JobState.PENDING, message="status had no running attempt"), "", None
    killing = status.killing
    outcome = view.outcomes.get(status.job)
    if outcome is not None:
        spawns = [r for r in view.requests if isinstance(r, Spawn) and r.spawner == status.job
                  and r.attempt == last.number]
        if spawns and outcome.exit_code is not None and outcome.killed_for is not KillReason.CANCEL:
            return _spawn(view, spec, status, last, outcome, spawns, now, plan)
        new, event = _finish(spec, status, last, outcome, now)
        return new, event, None
    started = last.started_at or now
    alive = view.alive.get(status.job)
    lost_at = started + timedelta(seconds=limits.heartbeat_timeout)
    if alive is False or (alive is None and lost_at <= now):
        lost = attempt_ending(Outcome(None, now), spec)
        attempt = replace(last, state=lost.state, ended_at=now, message=lost.reason)
        new, event = fail_or_retry(spec, replace(status, killing=None), attempt, now)
        return new, event, None
    if alive is None:
        plan.wake(lost_at)
    event = ""
    if killing is None and cancel:
        killing = Killing(KillReason.CANCEL, now)
        event = f"{status.job} cancelling attempt {last.number} (SIGTERM)"
    elif killing is None and spec is not None:
        reason = _overdue(spec, started, view.output_at.get(status.job), now, plan)
        if reason is not None:
            killing = Killing(reason, now)
            event = f"{status.job} {killed_why(reason, spec)} (SIGTERM)"
    if event and killing is not None:
        plan.actions.append(Kill(view.name, status.job, last.number, signal.SIGTERM, killing.reason))
        return replace(status, killing=killing), event, None
    if killing is not None and not killing.sigkill:
        hard = killing.at + timedelta(seconds=limits.kill_grace)
        if hard <= now:
            plan.actions.append(Kill(view.name, status.job, last.number, signal.SIGKILL, killing.reason))
            return replace(status, killing=replace(killing, sigkill=True)), \
                f"{status.job} still running after {format_duration(limits.kill_grace)}: SIGKILL", None
        plan.wake(hard)
    return status, "", None


def _overdue(spec: JobSpec, started: datetime, output_at: datetime | None, now: datetime,
             plan: Plan) -> KillReason | None:
    """Why a running attempt must be killed now (`timeout`, `idle`), or '' after asking to be
    woken at its next deadline."""
    if spec.timeout is not None:
        deadline = started + timedelta(seconds=spec.timeout)
        if deadline <= now:
            return KillReason.TIMEOUT
        plan.wake(deadline)
    if spec.idle_timeout is not None:
        quiet_since = max(started, output_at) if output_at is not None else started
        deadline = quiet_since + timedelta(seconds=spec.idle_timeout)
        if deadline <= now:
            return KillReason.IDLE
        plan.wake(deadline)
    return None


def killed_why(reason: KillReason | None, spec: JobSpec | None) -> str:
    """Why an attempt Clowder killed for `reason` ended, or '' if it was not killed for a limit."""
    if reason is KillReason.TIMEOUT and spec is not None and spec.timeout is not None:
        return f"timed out after {format_duration(spec.timeout)}"
    if reason is KillReason.IDLE and spec is not None and spec.idle_timeout is not None:
        return f"idle: no output for {format_duration(spec.idle_timeout)}"
    return ""


def _spawn(
    view: PipelineView, spec: JobSpec | None, status: JobStatus, last: Attempt, outcome: Outcome,
    requests: list[Spawn], now: datetime, plan: Plan,
) -> tuple[JobStatus, str, Candidate | None]:
    """The spawner's attempt ended with fix-ups asked for: write them and wait for them, or
    refuse what its `max_regressions` does not allow (the attempt then ends as usual)."""
    specs = view.pipeline.jobs if view.pipeline else {}
    allowed = (spec.max_regressions if spec else 0) - len(status.spawned)
    known = set(specs) | set(view.jobs)
    names: list[str] = []
    new_names: list[str] = []
    refused: list[str] = []
    budget = over_budget(spec, view.pipeline.spec.max_cost_usd if view.pipeline else None, status, view.jobs,
                         outcome.usage.cost_usd if outcome.usage else 0.0) if spec else ""
    for req in requests:
        target = req.job
        done = next((n for n, j in specs.items() if j.regression_context
                     and j.regression_context.get("request") == req.id), None)
        if done is not None:  # written before a crash: reuse it
            names.append(done)
            plan.actions.append(DoneRequest(view.name, req.id))
            continue
        if target not in specs:
            refused.append(f"unknown job {target!r}")
        elif budget:
            refused.append(budget)
        elif len(new_names) >= allowed:
            refused.append(f"{status.job} has spawned {len(status.spawned)} fix-up(s), its max_regressions "
                           f"({spec.max_regressions if spec else 0}) is reached")
        else:
            name = fixup_name(target, known)
            known.add(name)
            names.append(name)
            new_names.append(name)
            plan.actions.append(SpawnJob(view.name, name, target, status.job, last.number, outcome.commit, req.id,
                                         req.reason, req.context))
        plan.actions.append(DoneRequest(view.name, req.id))
    refusal = "spawn refused: " + "; ".join(refused) if refused else ""
    if not names:
        new, event = _finish(spec, status, last, outcome, now)
        new = replace(new, message=f"{new.message} ({refusal})" if new.message else refusal,
                      spawn_refused=refusal)
        return new, f"{event}; {refusal}", None
    ok = outcome.exit_code == 0 and not outcome.problem
    ended = replace(last, state=JobState.SUCCEEDED if ok else JobState.FAILED, ended_at=outcome.ended_at,
                    exit_code=outcome.exit_code, signal=outcome.signal, commit=outcome.commit or last.commit,
                    base_commit=outcome.base_commit or last.base_commit, artifacts=outcome.artifacts or last.artifacts,
                    consumed=outcome.consumed or last.consumed, message=f"spawned {', '.join(names)}",
                    usage=outcome.usage or last.usage)
    message = f"waiting for fix-up {', '.join(names)}" + (f" ({refusal})" if refusal else "")
    new = replace(status, killing=None, state=JobState.WAITING, attempts=(*status.attempts[:-1], ended),
                  waiting_for=tuple(names), spawned=(*status.spawned, *new_names), message=message)
    return new, f"{status.job} {message}", None


def _finish(spec: JobSpec | None, status: JobStatus, last: Attempt, outcome: Outcome,
            now: datetime) -> tuple[JobStatus, str]:
    """Record how the running attempt ended."""
    status = replace(status, killing=None)
    ended = replace(last, ended_at=outcome.ended_at, exit_code=outcome.exit_code, signal=outcome.signal,
                    usage=outcome.usage or last.usage, failure_kind=outcome.failure_kind,
                    commit=outcome.commit or last.commit, base_commit=outcome.base_commit or last.base_commit,
                    artifacts=outcome.artifacts or last.artifacts, consumed=outcome.consumed or last.consumed)
    end = attempt_ending(outcome, spec)
    if end.state is JobState.CANCELLED:
        attempt = replace(ended, state=JobState.CANCELLED, message=end.reason)
        return replace(status, state=JobState.CANCELLED, attempts=(*status.attempts[:-1], attempt),
                       message=end.reason), f"{status.job} cancelled"
    if end.state is JobState.SUCCEEDED:
        attempt = replace(ended, state=JobState.SUCCEEDED, failure_kind=None, message=outcome.note or ended.message)
        return replace(status, state=JobState.SUCCEEDED, attempts=(*status.attempts[:-1], attempt),
                       message=outcome.note), \
            f"{status.job} succeeded (attempt {last.number})" + (f": {outcome.note}" if outcome.note else "")
    return fail_or_retry(spec, status, replace(ended, state=end.state, message=end.reason), now)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"


def _auto_retries_used(status: JobStatus) -> int:
    used = 0
    for attempt in reversed(status.attempts):
        if attempt.trigger is not Trigger.RETRY:
            break
        used += 1
    return used


# Kinds the status message names: the others (the agent's or the command's own failure) are the usual case.
_NAMED_KINDS = (FailureKind.TRANSIENT, FailureKind.CONFIG)


def fail_or_retry(spec: JobSpec | None, status: JobStatus, attempt: Attempt, now: datetime) -> tuple[JobStatus, str]:
    """The job after a failed or lost attempt: `retrying` while its policy allows a failure of
    this kind (`retries`, `retry_on`), else `failed`."""
    if spec is not None and spec.agent and attempt.failure_kind is None:
        attempt = replace(attempt, failure_kind=FailureKind.AGENT)  # it reported no kind: the agent's own
    kind = attempt.failure_kind or FailureKind.COMMAND
    attempts = (*status.attempts[:-1], attempt)
    used = _auto_retries_used(status)
    allowed = spec.retries_for(kind) if spec is not None else 0
    what = f" ({kind.value}: {attempt.message})" if kind in _NAMED_KINDS else f": {attempt.message}"
    # `used` counts the retries that led to the attempt that just failed, so the next
    # retry is number used+1 of the `allowed`.
    if spec is not None and used < allowed:
        delay = spec.backoff.delay(used + 1)
        message = (f"attempt {attempt.number} {attempt.state.value}{what}; "
                   f"retry {used + 1} of {allowed} in {format_duration(delay)}")
        new = replace(status, state=JobState.RETRYING, attempts=attempts, message=message,
                      retry_at=now + timedelta(seconds=delay))
        return new, f"{status.job} {message}"
    message = f"attempt {attempt.number} {attempt.state.value}{what}"
    if spec is not None and used < spec.retries and kind not in spec.retry_on:
        message += f"; not retried: retry_on has no {kind.value}"
    return replace(status, state=JobState.FAILED, attempts=attempts, message=message, retry_at=None), \
        f"{status.job} failed{what}"


def _plan_pipeline_status(
    view: PipelineView, jobs: Mapping[str, JobStatus], specs: Mapping[str, JobSpec], blocked: str,
    now: datetime, plan: Plan,
) -> None:
    old = view.status
    names = list(reversed(view.pipeline.order)) if view.pipeline else list(specs)
    # Most of a big pipeline is pending or done: look from the end, where unfinished jobs are.
    all_done = bool(names) and all(jobs[n].state.terminal for n in names if n in jobs) and all(n in jobs for n in names)
    running = any(j.state in ACTIVE for j in jobs.values()) if all_done or blocked else True
    started = old.started_at is not None or any(j.attempts or j.state.terminal for j in jobs.values())
    if blocked and view.settling:
        return  # a spec file is being written: its state is known once it settles
    if blocked:
        state, message = PipelineState.BLOCKED, blocked
    elif all_done:
        failed = [n for n in names[::-1] if jobs[n].state is JobState.FAILED and not specs[n].allow_failure]
        if failed:
            state, message = PipelineState.FAILED, f"failed: {', '.join(failed)}"
        elif any(jobs[n].state is JobState.CANCELLED for n in names):
            state, message = PipelineState.CANCELLED, "cancelled"
        else:
            state, message = PipelineState.SUCCEEDED, ""
    elif started:
        state, message = PipelineState.RUNNING, ""
    else:
        state, message = PipelineState.PENDING, ""
    finished = state.terminal and not running
    new = PipelineStatus(
        state=state,
        started_at=old.started_at or (now if started else None),
        ended_at=(old.ended_at or now) if finished else None,
        message=message,
        prompt_hash=old.prompt_hash or (prompt_hash(view.pipeline.spec.prompt) if view.pipeline else ""),
    )
    if new != old:
        event = f"pipeline {state.value}" + (f": {message}" if message else "") if new.state != old.state else ""
        plan.actions.append(SetPipeline(view.name, new, event))


def _allocate(
    candidates: list[Candidate], later: list[_Ready], running: list[tuple[str, JobSpec | None]],
    views: Sequence[PipelineView], now: datetime, limits: Limits, plan: Plan,
) -> None:
    """Start candidates while slots and resources last; mark the rest `queued` with why."""
    in_use: dict[str, int] = {}
    per_pipeline: dict[str, int] = {}
    for pipeline, spec in running:
        per_pipeline[pipeline] = per_pipeline.get(pipeline, 0) + 1
        for pool, units in (spec.resources if spec else {}).items():
            in_use[pool] = in_use.get(pool, 0) + units
    shares = {v.name: v.pipeline.spec.max_parallel for v in views if v.pipeline and v.pipeline.spec.max_parallel}
    total = len(running)
    started: set[tuple[str, str]] = set()
    seen: list[Candidate] = []
    for cand in itertools.chain(candidates, *later):
        seen.append(cand)
        # A job waiting only for a free slot stays as it is: writing `queued` for each of a
        # thousand ready jobs would cost more than running them. Waiting for a resource pool
        # is rarer and worth showing.
        if total >= limits.max_parallel:
            break
        share = shares.get(cand.pipeline)
        if share is not None and per_pipeline.get(cand.pipeline, 0) >= share:
            continue
        short = [p for p, units in cand.job.resources.items() if in_use.get(p, 0) + units > limits.resources.get(p, 0)]
        if short:
            reason = "waiting for resources: " + ", ".join(
                f"{p} ({in_use.get(p, 0)} of {limits.resources.get(p, 0)} in use)" for p in short)
            if cand.status.state is not JobState.QUEUED or cand.status.message != reason:
                plan.actions.append(SetJob(cand.pipeline, replace(cand.status, state=JobState.QUEUED, message=reason)))
            continue
        total += 1
        per_pipeline[cand.pipeline] = per_pipeline.get(cand.pipeline, 0) + 1
        for pool, units in cand.job.resources.items():
            in_use[pool] = in_use.get(pool, 0) + units
        number = cand.status.attempt + 1
        attempt = Attempt(number=number, state=JobState.RUNNING, started_at=now, spec_hash=cand.job.spec_hash,
                          trigger=cand.trigger, request=cand.request)
        status = replace(cand.status, state=JobState.RUNNING, attempt=number, message="", retry_at=None,
                         attempts=(*cand.status.attempts, attempt), retry_request=None, killing=None, waiting_for=())
        plan.actions.append(SetJob(cand.pipeline, status))
        plan.actions.append(Start(cand.pipeline, cand.job.name, number, cand.sources))
        started.add((cand.pipeline, cand.job.name))
    # Every candidate not started stays ready: those looked at (eager ones included, even past
    # the point where slots ran out) and those never looked at.
    looked = {(c.pipeline, c.job.name) for c in seen}
    plan.ready = [(c.pipeline, c.job.name) for c in (*seen, *(c for c in candidates if (c.pipeline, c.job.name)
                                                             not in looked))
                  if (c.pipeline, c.job.name) not in started]
    plan.ready += [(r.pipeline, name) for r in later for name in r.unchecked()]

