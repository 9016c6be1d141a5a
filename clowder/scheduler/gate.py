"""Approval gates: a job with a `when = "manual"` need waits in state `approval` once its
upstreams allow it to run, until a person approves it (it starts) or rejects it (it fails)."""

from __future__ import annotations

from dataclasses import replace

from clowder.scheduler.records import Approve, JobStep, Reject, Scope
from clowder.spec import JobSpec, When
from clowder.state import Approval, JobState, JobStatus, Verdict

WAITING_MESSAGE = "waiting for approval"


def gated(spec: JobSpec) -> bool:
    return any(need.when is When.MANUAL for need in spec.needs)


def approved(spec: JobSpec, status: JobStatus) -> Approval | None:
    """The approval that lets a gated job start, or None (a job without a gate needs none)."""
    if status.approval is not None and status.approval.verdict is Verdict.APPROVED:
        return status.approval
    return None


def wait_at_gate(scope: Scope, spec: JobSpec, status: JobStatus) -> JobStep | None:
    """A gated job whose upstreams allow it to run waits for a decision; None: it may start."""
    if not gated(spec) or approved(spec, status) is not None:
        return None
    if status.state is JobState.APPROVAL:
        return JobStep(status)
    how = f"clowder approve {scope.view.name} {spec.name} (or clowder reject)"
    return JobStep(replace(status, state=JobState.APPROVAL, message=f"{WAITING_MESSAGE}: {how}"),
                   f"{spec.name} {WAITING_MESSAGE}")


def decide(req: Approve | Reject, jobs: dict[str, JobStatus]) -> str:
    """Apply an approval or a rejection to `jobs` in place; the decision log's line."""
    status = jobs.get(req.job)
    if status is None:
        return f"decision on unknown job {req.job!r} ignored"
    if status.approval is not None and status.approval.request == req.id:
        return ""  # replayed after a crash: already applied
    what = "approval" if isinstance(req, Approve) else "rejection"
    if status.state is not JobState.APPROVAL:
        return f"{what} of {req.job} ignored: it is {status.state.value}, not waiting for approval"
    verdict = Verdict.APPROVED if isinstance(req, Approve) else Verdict.REJECTED
    approval = Approval(verdict, req.by, req.at, req.comment, req.id)
    said = f": {req.comment}" if req.comment else ""
    if verdict is Verdict.APPROVED:
        jobs[req.job] = replace(status, state=JobState.PENDING, message=f"approved by {req.by}{said}",
                                approval=approval)
        return f"{req.job} approved by {req.by}{said}"
    # Failed like any failure: what needs it to succeed is skipped, and `clowder retry` asks again.
    jobs[req.job] = replace(status, state=JobState.FAILED, message=f"rejected by {req.by}{said}", approval=approval)
    return f"{req.job} rejected by {req.by}{said}"


def trailers(approval: Approval | None) -> str:
    """The commit trailers that say who approved the attempt, when and why (one line each)."""
    if approval is None:
        return ""
    by, comment = " ".join(approval.by.split()), " ".join(approval.comment.split())[:1000]
    at = approval.at.isoformat().replace("+00:00", "Z")
    return (f"Clowder-Approved-By: {by}\nClowder-Approved-At: {at}\n"
            + (f"Clowder-Approval-Comment: {comment}\n" if comment else ""))
