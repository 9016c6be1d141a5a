"""`cache = true`: a command job ready to start whose inputs are those of an earlier successful
attempt does not run; its new attempt is that attempt's commit, and its downstreams go on."""

from __future__ import annotations

from dataclasses import replace

from clowder.scheduler.inputs import current_inputs, first_reused, reusable
from clowder.scheduler.records import Candidate, JobStep, Reuse, Scope
from clowder.state import Attempt, JobState, Trigger

# A retry follows a failure and a regression attempt starts from fix-ups: only a job's turn or a
# person's request (`clowder rerun`, `clowder run --outdated`) may be answered from the cache.
_CACHED_TRIGGERS = (Trigger.START, Trigger.MANUAL)


def with_inputs(scope: Scope, cand: Candidate) -> Candidate:
    """The candidate with what its attempt would be made from, recorded on the attempt."""
    pipeline = scope.view.pipeline
    return cand if pipeline is None else replace(cand, inputs=current_inputs(pipeline, cand.job, scope.jobs))


def reuse(scope: Scope, cand: Candidate) -> JobStep | None:
    """The job's step when an earlier attempt can stand for the one it would start, else None."""
    if cand.inputs is None or cand.trigger not in _CACHED_TRIGGERS:
        return None
    status = cand.status
    earlier = reusable(cand.job, status, cand.inputs)
    if earlier is None or earlier.commit is None:
        return None
    number = status.attempt + 1
    source = first_reused(status, earlier)
    message = f"reused attempt {source} (same inputs)"
    attempt = Attempt(number=number, state=JobState.SUCCEEDED, started_at=scope.now, ended_at=scope.now,
                      exit_code=0, spec_hash=cand.job.spec_hash, base_commit=earlier.base_commit,
                      commit=earlier.commit, message=message, consumed=earlier.consumed,
                      artifacts=earlier.artifacts, trigger=cand.trigger, request=cand.request,
                      approval=cand.approval, inputs=cand.inputs, reused_from=source)
    new = replace(status, state=JobState.SUCCEEDED, attempt=number, message=message, retry_at=None,
                  attempts=(*status.attempts, attempt), retry_request=None, killing=None, waiting_for=())
    # The tag first: the status that names the attempt is written after it (a crash between the
    # two decides the same again, and tagging again is harmless).
    action = Reuse(scope.view.name, cand.job.name, number, earlier.commit, source)
    return JobStep(new, f"{cand.job.name} {message} (attempt {number})", actions=(action,))
