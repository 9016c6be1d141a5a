"""How an attempt ended: the one decision (`attempt_ending`) that its commit trailer, its
error.json and its status all say, and what the job does next (retry by its policy, or fail)."""

from __future__ import annotations

import signal
from dataclasses import replace
from datetime import datetime, timedelta

from clowder.scheduler.records import Ending, JobStep, Outcome
from clowder.spec import JobSpec, format_duration
from clowder.state import Attempt, FailureKind, JobState, JobStatus, KillReason, Trigger


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


def killed_why(reason: KillReason | None, spec: JobSpec | None) -> str:
    """Why an attempt Clowder killed for `reason` ended, or '' if it was not killed for a limit."""
    if reason is KillReason.TIMEOUT and spec is not None and spec.timeout is not None:
        return f"timed out after {format_duration(spec.timeout)}"
    if reason is KillReason.IDLE and spec is not None and spec.idle_timeout is not None:
        return f"idle: no output for {format_duration(spec.idle_timeout)}"
    return ""


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"


def ended_attempt(last: Attempt, outcome: Outcome) -> Attempt:
    """The running attempt with what its end brought (exit, commit, artifacts, usage)."""
    return replace(last, ended_at=outcome.ended_at, exit_code=outcome.exit_code, signal=outcome.signal,
                   usage=outcome.usage or last.usage, failure_kind=outcome.failure_kind,
                   commit=outcome.commit or last.commit, base_commit=outcome.base_commit or last.base_commit,
                   artifacts=outcome.artifacts or last.artifacts, consumed=outcome.consumed or last.consumed)


def finish(spec: JobSpec | None, status: JobStatus, last: Attempt, outcome: Outcome, now: datetime) -> JobStep:
    """Record how the running attempt ended."""
    status = replace(status, killing=None)
    ended = ended_attempt(last, outcome)
    end = attempt_ending(outcome, spec)
    if end.state is JobState.CANCELLED:
        attempt = replace(ended, state=JobState.CANCELLED, message=end.reason)
        return JobStep(replace(status, state=JobState.CANCELLED, attempts=(*status.attempts[:-1], attempt),
                               message=end.reason), f"{status.job} cancelled")
    if end.state is JobState.SUCCEEDED:
        attempt = replace(ended, state=JobState.SUCCEEDED, failure_kind=None, message=outcome.note or ended.message)
        note = f": {outcome.note}" if outcome.note else ""
        return JobStep(replace(status, state=JobState.SUCCEEDED, attempts=(*status.attempts[:-1], attempt),
                               message=outcome.note), f"{status.job} succeeded (attempt {last.number}){note}")
    return fail_or_retry(spec, status, replace(ended, state=end.state, message=end.reason), now)


def _auto_retries_used(status: JobStatus) -> int:
    used = 0
    for attempt in reversed(status.attempts):
        if attempt.trigger is not Trigger.RETRY:
            break
        used += 1
    return used


# Kinds the status message names: the others (the agent's or the command's own failure) are the usual case.
_NAMED_KINDS = (FailureKind.TRANSIENT, FailureKind.CONFIG)


def fail_or_retry(spec: JobSpec | None, status: JobStatus, attempt: Attempt, now: datetime) -> JobStep:
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
        return JobStep(new, f"{status.job} {message}")
    message = f"attempt {attempt.number} {attempt.state.value}{what}"
    if spec is not None and used < spec.retries and kind not in spec.retry_on:
        message += f"; not retried: retry_on has no {kind.value}"
    return JobStep(replace(status, state=JobState.FAILED, attempts=attempts, message=message, retry_at=None),
                   f"{status.job} failed{what}")
