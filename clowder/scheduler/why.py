"""Why a job is where it is, in words: `reconcile` is run over the pipelines as they are, and what
its step did to the job (started it, skipped it, left it waiting, gave it no slot) is read back
and named, with the upstream, condition, pool, limit, budget, backoff or request that decided it.
The decision is the scheduler's own, so `clowder why` cannot disagree with the daemon."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from clowder.scheduler.inputs import outdated
from clowder.scheduler.job import blocked_reason, unfinished_need
from clowder.scheduler.records import Cancel, Limits, PipelineView, Plan, SetJob, Start
from clowder.scheduler.step import reconcile
from clowder.spec import JobSpec, When, format_duration
from clowder.state import Approval, Attempt, JobState, JobStatus, Trigger
from clowder.state import Verdict as Decision


class Verdict(StrEnum):
    STARTS = "starts"  # the step starts it now
    RUNNING = "running"
    WAITS = "waits"
    SKIPPED = "skipped"
    FAILS = "fails"  # fails without running (a spent budget)
    CANCELLED = "cancelled"
    RAN = "ran"  # it ran, and has ended


class Cause(StrEnum):
    """What decided it."""

    TRIGGER = "trigger"  # what started (or starts) its attempt
    NEEDS = "needs"  # an upstream that has not ended
    CONDITION = "condition"  # an upstream that ended the wrong way for `when`
    RESOURCES = "resources"  # a pool's units are in use
    MAX_PARALLEL = "max_parallel"  # no free slot (the root's, or its pipeline's)
    BUDGET = "budget"
    BACKOFF = "backoff"
    REQUEST = "request"  # a cancel, retry or rerun request
    BLOCKED = "blocked"  # its pipeline is blocked (an invalid file, a changed prompt)
    FIXUPS = "fixups"  # the fix-ups it spawned have not ended
    APPROVAL = "approval"  # a `when = "manual"` gate: a person approves or rejects
    REUSED = "reused"  # `cache = true`: an earlier attempt with the same inputs stands for it
    OUTDATED = "outdated"  # it ended, and an input changed since (named in `subject` for an upstream)
    UNKNOWN = "unknown"  # not in the pipeline's spec


@dataclass(frozen=True)
class Why:
    pipeline: str
    job: str
    state: JobState  # as the tree says now
    verdict: Verdict
    cause: Cause
    reason: str  # the decision in words
    subject: str = ""  # the upstream, pool, request or fix-ups that decided it
    at: datetime | None = None  # when the wait ends, if known (a backoff)


@dataclass(frozen=True)
class Decided:
    """What one step decided: every job's status after it, and which jobs it started."""

    plan: Plan
    after: Mapping[str, Mapping[str, JobStatus]]  # pipeline -> job -> status
    started: frozenset[tuple[str, str]]


def decide(views: Sequence[PipelineView], now: datetime, limits: Limits) -> Decided:
    """One step of the scheduler over the views, as the daemon would take it now."""
    plan = reconcile(views, now, limits)
    after: dict[str, dict[str, JobStatus]] = {}
    for view in views:
        specs = view.pipeline.jobs if view.pipeline else {}
        after[view.name] = {**{n: JobStatus(n) for n in specs}, **view.jobs}
    for action in plan.actions:
        if isinstance(action, SetJob):
            after[action.pipeline][action.status.job] = action.status
    started = frozenset((a.pipeline, a.job) for a in plan.actions if isinstance(a, Start))
    return Decided(plan, after, started)


@dataclass(frozen=True)
class _Case:
    """One job as the step left it."""

    view: PipelineView
    spec: JobSpec
    before: JobStatus
    after: JobStatus
    jobs: Mapping[str, JobStatus]  # its pipeline's jobs after the step
    decided: Decided
    limits: Limits
    now: datetime

    def why(self, verdict: Verdict, cause: Cause, reason: str, subject: str = "",
            at: datetime | None = None) -> Why:
        return Why(self.view.name, self.spec.name, self.before.state, verdict, cause, reason, subject, at)


def explain(view: PipelineView, job: str, decided: Decided, limits: Limits, now: datetime) -> Why:
    """Why `job` of the pipeline in `view` is where the step `decided` left it."""
    before = view.jobs.get(job, JobStatus(job))
    spec = view.pipeline.jobs.get(job) if view.pipeline else None
    if spec is None:
        if view.pipeline is None:  # no spec has validated: its pipeline is blocked
            return Why(view.name, job, before.state, Verdict.WAITS, Cause.BLOCKED,
                       f"waits: its pipeline is blocked: {blocked_reason(view)}")
        return Why(view.name, job, before.state, Verdict.WAITS, Cause.UNKNOWN, "it is not a job of the pipeline's spec")
    jobs = decided.after[view.name]
    case = _Case(view, spec, before, jobs.get(job, before), jobs, decided, limits, now)
    if (view.name, job) in decided.started:
        return _starts(case)
    state = case.after.state
    if state is JobState.RUNNING:
        return _running(case)
    if state.terminal:
        return _ended(case)
    if state is JobState.RETRYING:
        return _backoff(case)
    if state is JobState.WAITING:
        return _fixups(case)
    if state is JobState.APPROVAL:
        return _at_gate(case)
    return _waits(case)


def _at_gate(case: _Case) -> Why:
    gates = [need.job for need in case.spec.needs if need.when is When.MANUAL]
    p, j = case.view.name, case.spec.name
    return case.why(Verdict.WAITS, Cause.APPROVAL,
                    f"waits for approval after {', '.join(gates)}: clowder approve {p} {j} (or clowder reject {p} {j})",
                    ", ".join(gates))


# -- it runs, or ran: what started it ---------------------------------------------------------

def _starts(case: _Case) -> Why:
    last = case.after.last
    assert last is not None  # a started job has its attempt
    return case.why(Verdict.STARTS, Cause.TRIGGER, f"starts attempt {last.number}: {_because(case, last)}",
                    last.request or "")


def _running(case: _Case) -> Why:
    last = case.after.last
    if last is None:
        return case.why(Verdict.RUNNING, Cause.TRIGGER, "running")
    since = f" since {last.started_at:%Y-%m-%d %H:%M:%S} UTC" if last.started_at else ""
    return case.why(Verdict.RUNNING, Cause.TRIGGER, f"running attempt {last.number}{since}: {_because(case, last)}",
                    last.request or "")


def _because(case: _Case, attempt: Attempt) -> str:
    """What started an attempt, by its trigger."""
    match attempt.trigger:
        case Trigger.START:
            return _needs_met(case.spec, case.jobs) + _approved(attempt.approval)
        case Trigger.RETRY:
            before = next((a for a in case.after.attempts if a.number == attempt.number - 1), None)
            ended = f" after attempt {before.number} {before.state.value}" if before else ""
            what = f" ({before.message})" if before and before.message else ""
            return f"an automatic retry (retries = {case.spec.retries}){ended}{what}"
        case Trigger.MANUAL:
            # A request's id ends with its action (clowder.requests.drop names it so).
            action = (attempt.request or "").rsplit("-", 1)[-1]
            command = f"`clowder {action}`" if action in ("retry", "rerun") else "a request"
            return f"{command} asked for it (request {attempt.request})"
        case Trigger.REGRESSION:
            return f"its fix-ups ({', '.join(case.after.spawned) or 'none'}) succeeded: it runs again from them"


def _needs_met(spec: JobSpec, jobs: Mapping[str, JobStatus]) -> str:
    if not spec.needs:
        return "its turn came: it needs no other job"
    met = [f"{n.job} {_ended_as(jobs.get(n.job))}" + ("" if n.when is When.SUCCESS else f" (when = {n.when.value})")
           for n in spec.needs]
    return "its needs are met: " + ", ".join(met)


def _approved(approval: Approval | None) -> str:
    """What let a gated job's attempt start, after its needs."""
    return f", and {approval.by} approved it at {_when_why(approval)}" if approval else ""


def _decided(a: Approval) -> str:
    return f"{a.by} at {_when_why(a)}"


def _when_why(a: Approval) -> str:
    return f"{a.at:%Y-%m-%d %H:%M:%S} UTC" + (f": {a.comment}" if a.comment else "")


def _ended_as(status: JobStatus | None) -> str:
    if status is None:
        return "has not run"
    return {JobState.SKIPPED: "was skipped", JobState.CANCELLED: "was cancelled"}.get(status.state,
                                                                                    status.state.value)


def _ended(case: _Case) -> Why:
    status = case.after
    if status.state is JobState.SKIPPED:
        now = "" if case.before.state is JobState.SKIPPED else "skipped now: "
        return case.why(Verdict.SKIPPED, Cause.CONDITION, now + status.message, _named_upstream(case))
    rejected = status.approval
    if status.state is JobState.FAILED and rejected is not None and rejected.verdict is Decision.REJECTED:
        p, j = case.view.name, case.spec.name
        return case.why(Verdict.FAILS, Cause.APPROVAL, f"rejected at its approval gate by {_decided(rejected)}; "
                        f"`clowder retry {p} {j}` makes it wait for approval again", rejected.request)
    if status.message.startswith("budget spent"):  # the words of budget.over_budget, which decided it
        return case.why(Verdict.FAILS, Cause.BUDGET, f"no further attempt may start: {status.message}")
    last = status.last
    if status.state is JobState.CANCELLED and (last is None or last.state is not JobState.CANCELLED):
        return case.why(Verdict.CANCELLED, Cause.REQUEST, f"cancelled by request before it ran: {status.message}")
    if last is None:
        return case.why(Verdict.RAN, Cause.TRIGGER, f"{status.state.value}: {status.message}")
    stale = outdated(case.view.pipeline, case.spec.name, case.jobs) if case.view.pipeline else None
    if last.reused_from is not None:
        ran = f"attempt {last.number} reused attempt {last.reused_from} (same inputs): {_because(case, last)}"
        cause, subject = Cause.REUSED, str(last.reused_from)
    else:
        message = f"; it ended: {status.message}" if status.message else ""
        ran = f"attempt {last.number} ran because {_because(case, last)}{message}"
        cause, subject = Cause.TRIGGER, last.request or ""
    if stale is not None:  # the same decision `clowder status` marks and `clowder run --outdated` re-runs
        return case.why(Verdict.RAN, Cause.OUTDATED, f"{stale.reason}; {ran}", ", ".join(stale.upstreams))
    return case.why(Verdict.RAN, cause, ran, subject)


def _named_upstream(case: _Case) -> str:
    """The upstream a skip message names (`needs dev to succeed; ...`)."""
    return next((n.job for n in case.spec.needs if case.after.message.startswith(f"needs {n.job} ")), "")


# -- it waits ---------------------------------------------------------------------------------

def _backoff(case: _Case) -> Why:
    at = case.after.retry_at
    if case.view.problems or blocked_reason(case.view):
        return _blocked(case)
    left = f" (in {format_duration(max(0.0, (at - case.now).total_seconds()))})" if at else ""
    when = f" until {at:%Y-%m-%d %H:%M:%S} UTC{left}" if at else ""
    return case.why(Verdict.WAITS, Cause.BACKOFF, f"waits for its backoff{when}: {case.after.message}", at=at)


def _fixups(case: _Case) -> Why:
    waiting = ", ".join(f"{j} ({_ended_as(case.jobs.get(j))})" for j in case.after.waiting_for)
    return case.why(Verdict.WAITS, Cause.FIXUPS, f"waits for the fix-ups it spawned: {waiting}",
                    ", ".join(case.after.waiting_for))


def _blocked(case: _Case) -> Why:
    reason = blocked_reason(case.view) or "a spec file is being written"
    return case.why(Verdict.WAITS, Cause.BLOCKED, f"waits: its pipeline is blocked: {reason}")


def _waits(case: _Case) -> Why:
    """A pending or queued job the step did not start."""
    request = _request_for(case)
    if request:
        return request
    need = unfinished_need(case.spec, case.jobs)
    if need is not None:
        up = case.view.jobs.get(need.job)
        state = up.state.value if up is not None else JobState.PENDING.value
        if (case.view.name, need.job) in case.decided.started:
            state = "starts now"
        return case.why(Verdict.WAITS, Cause.NEEDS,
                        f"waits for {need.job} ({state}): it needs it to {_when(need.when)}", need.job)
    if blocked_reason(case.view) or case.view.settling:
        return _blocked(case)
    if case.after.state is JobState.QUEUED:
        pools = ", ".join(p for p in case.spec.resources)
        return case.why(Verdict.WAITS, Cause.RESOURCES, f"waits: {case.after.message}", pools)
    return _no_slot(case)


def _when(when: When) -> str:
    return {When.SUCCESS: "succeed", When.FAILURE: "fail"}.get(when, "end (when = always)")


def _request_for(case: _Case) -> Why | None:
    """A cancel the step has not applied yet (the job ends at once with it)."""
    for req in case.view.requests:
        if isinstance(req, Cancel) and req.job in (None, case.spec.name):
            return case.why(Verdict.CANCELLED, Cause.REQUEST, f"a cancel is requested (request {req.id})", req.id)
    return None


def _no_slot(case: _Case) -> Why:
    """Ready, but the step gave it no slot: the root's max_parallel, or its pipeline's."""
    running = [(p, j) for p, jobs in case.decided.after.items() for j, s in jobs.items() if s.state is JobState.RUNNING]
    share = case.view.pipeline.spec.max_parallel if case.view.pipeline else None
    mine = sum(1 for p, _ in running if p == case.view.name)
    if share is not None and mine >= share and len(running) < case.limits.max_parallel:
        return case.why(Verdict.WAITS, Cause.MAX_PARALLEL,
                        f"ready, waits for a slot: {mine} of its pipeline's max_parallel ({share}) are running",
                        "pipeline")
    return case.why(Verdict.WAITS, Cause.MAX_PARALLEL,
                    f"ready, waits for a slot: {len(running)} of the root's max_parallel "
                    f"({case.limits.max_parallel}) are running", "root")

