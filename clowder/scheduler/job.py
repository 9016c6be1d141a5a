"""One job's step: from its state, its dependencies and what its pipeline asks, its next status
and whether it may start now."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from clowder.scheduler.budget import within_budget
from clowder.scheduler.cache import reuse, with_inputs
from clowder.scheduler.gate import approved, wait_at_gate
from clowder.scheduler.records import Candidate, JobStep, PipelineView, Scope, prompt_hash
from clowder.scheduler.regression import step_waiting
from clowder.scheduler.running import step_running
from clowder.spec import JobSpec, Need, When
from clowder.state import JobState, JobStatus, Trigger


def step_job(scope: Scope, spec: JobSpec | None, status: JobStatus, cancel: bool) -> JobStep:
    state = status.state
    if state is JobState.RUNNING:
        return step_running(scope, spec, status, cancel)
    if state.terminal:
        return JobStep(status)
    if cancel:
        return JobStep(replace(status, state=JobState.CANCELLED, message="cancelled by request", retry_at=None),
                       f"{status.job} cancelled")
    if spec is None:
        return JobStep(status)
    if state is JobState.WAITING:
        return _step_waiting(scope, spec, status)
    if state is JobState.RETRYING:
        return _step_retrying(scope, spec, status)
    return _step_pending(scope, spec, status)  # pending, queued or waiting for approval


def _step_waiting(scope: Scope, spec: JobSpec, status: JobStatus) -> JobStep:
    step = step_waiting(scope, spec, status)
    if step.candidate is None:
        return step
    if scope.blocked:  # its fix-ups are done, but nothing starts in a blocked pipeline
        return JobStep(status)
    return within_budget(scope, spec, status, with_inputs(scope, step.candidate))


def _step_retrying(scope: Scope, spec: JobSpec, status: JobStatus) -> JobStep:
    if status.retry_at is not None and status.retry_at > scope.now and not _clock_went_back(status, scope.now):
        return JobStep(status, wake=status.retry_at)
    if scope.blocked:
        return JobStep(status)
    cand = with_inputs(scope, Candidate(scope.view.name, spec, status, Trigger.RETRY))
    return within_budget(scope, spec, status, cand)


def _step_pending(scope: Scope, spec: JobSpec, status: JobStatus) -> JobStep:
    verdict = _dependencies(spec, scope.jobs, scope.specs)
    if verdict is None:
        if status.state in (JobState.QUEUED, JobState.APPROVAL):  # a live edit added an unfinished dependency
            return JobStep(replace(status, state=JobState.PENDING, message=""))
        return JobStep(status)
    if verdict:
        return JobStep(replace(status, state=JobState.SKIPPED, message=verdict), f"{spec.name} skipped: {verdict}")
    gate = wait_at_gate(scope, spec, status)
    if gate is not None:
        return gate
    if scope.blocked:
        return JobStep(status)
    if status.retry_request is not None:
        cand = Candidate(scope.view.name, spec, status, Trigger.MANUAL, status.retry_request)
    else:
        cand = Candidate(scope.view.name, spec, status, Trigger.START)
    cand = with_inputs(scope, replace(cand, approval=approved(spec, status)))
    reused = reuse(scope, cand)  # `cache = true`: an earlier attempt with these inputs stands for it
    return reused if reused is not None else within_budget(scope, spec, status, cand)


def _clock_went_back(status: JobStatus, now: datetime) -> bool:
    """Whether the wall clock is now before the end of the attempt that failed: it was set back, and
    the backoff measured from that end could last as long as the jump (years). The retry is then
    due at once: early by at most its backoff, never stuck."""
    ended = status.attempts[-1].ended_at if status.attempts else None
    return ended is not None and now < ended


def unfinished_need(spec: JobSpec, jobs: Mapping[str, JobStatus]) -> Need | None:
    """The first need whose job has not ended: the job waits for it (`clowder why` names it)."""
    return next((n for n in spec.needs if (d := jobs.get(n.job)) is None or not d.state.terminal), None)


def _dependencies(spec: JobSpec, jobs: Mapping[str, JobStatus], specs: Mapping[str, JobSpec]) -> str | None:
    """None while a dependency is unfinished; '' if the job may run; else why it is skipped."""
    if unfinished_need(spec, jobs) is not None:
        return None
    for need in spec.needs:
        dep = jobs[need.job]
        dep_spec = specs.get(need.job)
        passed = dep.state is JobState.SUCCEEDED or (
            dep.state is JobState.FAILED and dep_spec is not None and dep_spec.allow_failure)
        if need.when in (When.SUCCESS, When.MANUAL) and not passed:
            return f"needs {need.job} to succeed; it {_ended(dep.state)}"
        if need.when is When.FAILURE and dep.state is not JobState.FAILED:
            return f"needs {need.job} to fail; it {_ended(dep.state)}"
    return ""


def _ended(state: JobState) -> str:
    return {JobState.SUCCEEDED: "succeeded", JobState.FAILED: "failed", JobState.SKIPPED: "was skipped",
            JobState.CANCELLED: "was cancelled"}.get(state, state.value)


def blocked_reason(view: PipelineView) -> str:
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
