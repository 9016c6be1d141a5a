"""Budgets: a job or a pipeline whose `max_cost_usd` is spent starts no further attempts or fix-ups."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from clowder.scheduler.records import Candidate, JobStep, Scope
from clowder.spec import JobSpec
from clowder.state import JobState, JobStatus, total_usage


def within_budget(scope: Scope, spec: JobSpec, status: JobStatus, cand: Candidate) -> JobStep:
    """The candidate, unless a budget is spent: then the job fails instead of starting."""
    pipeline = scope.view.pipeline
    reason = over_budget(spec, pipeline.spec.max_cost_usd if pipeline else None, status, scope.jobs)
    if not reason:
        return JobStep(status, candidate=cand)
    return JobStep(replace(status, state=JobState.FAILED, message=reason, retry_at=None),
                   f"{spec.name} failed: {reason}")


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
