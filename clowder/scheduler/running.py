"""A running attempt's step: its end recorded, its process found lost, or a kill begun (cancel,
`timeout`, `idle_timeout`) and carried on (SIGKILL after the grace)."""

from __future__ import annotations

import signal
from dataclasses import replace
from datetime import datetime, timedelta

from clowder.scheduler.ending import attempt_ending, fail_or_retry, finish, killed_why
from clowder.scheduler.records import JobStep, Kill, Outcome, Scope, Spawn
from clowder.scheduler.regression import spawn
from clowder.spec import JobSpec, format_duration
from clowder.state import Attempt, JobState, JobStatus, Killing, KillReason


def step_running(scope: Scope, spec: JobSpec | None, status: JobStatus, cancel: bool) -> JobStep:
    last = status.last
    if last is None or last.number != status.attempt:  # a hand-edited status: start over
        return JobStep(replace(status, state=JobState.PENDING, message="status had no running attempt"))
    outcome = scope.view.outcomes.get(status.job)
    if outcome is not None:
        return _ended(scope, spec, status, last, outcome)
    started = last.started_at or scope.now
    alive = scope.view.alive.get(status.job)
    lost_at = started + timedelta(seconds=scope.limits.heartbeat_timeout)
    if alive is False or (alive is None and lost_at <= scope.now):
        lost = attempt_ending(Outcome(None, scope.now), spec)
        attempt = replace(last, state=lost.state, ended_at=scope.now, message=lost.reason)
        return fail_or_retry(spec, replace(status, killing=None), attempt, scope.now)
    wake = lost_at if alive is None else None
    if status.killing is None:
        step = _start_kill(scope, spec, status, last, started, cancel)
    else:
        step = _carry_on_kill(scope, status, last, status.killing)
    return step._replace(wake=min((t for t in (wake, step.wake) if t is not None), default=None))


def _ended(scope: Scope, spec: JobSpec | None, status: JobStatus, last: Attempt, outcome: Outcome) -> JobStep:
    spawns = [r for r in scope.view.requests if isinstance(r, Spawn) and r.spawner == status.job
              and r.attempt == last.number]
    if spawns and outcome.exit_code is not None and outcome.killed_for is not KillReason.CANCEL:
        return spawn(scope, spec, status, outcome, spawns)
    return finish(spec, status, last, outcome, scope.now)


def _start_kill(scope: Scope, spec: JobSpec | None, status: JobStatus, last: Attempt, started: datetime,
                cancel: bool) -> JobStep:
    """SIGTERM for a cancel or an overdue attempt; else when its next deadline is."""
    if cancel:
        killing = Killing(KillReason.CANCEL, scope.now)
        event = f"{status.job} cancelling attempt {last.number} (SIGTERM)"
    elif spec is not None:
        due = overdue(spec, started, scope.view.output_at.get(status.job), scope.now)
        if not isinstance(due, KillReason):
            return JobStep(status, wake=due)
        killing, event = Killing(due, scope.now), f"{status.job} {killed_why(due, spec)} (SIGTERM)"
    else:
        return JobStep(status)
    kill = Kill(scope.view.name, status.job, last.number, signal.SIGTERM, killing.reason)
    return JobStep(replace(status, killing=killing), event, actions=(kill,))


def _carry_on_kill(scope: Scope, status: JobStatus, last: Attempt, killing: Killing) -> JobStep:
    """SIGKILL once the grace after SIGTERM is over."""
    if killing.sigkill:
        return JobStep(status)
    hard = killing.at + timedelta(seconds=scope.limits.kill_grace)
    if hard > scope.now:
        return JobStep(status, wake=hard)
    kill = Kill(scope.view.name, status.job, last.number, signal.SIGKILL, killing.reason)
    return JobStep(replace(status, killing=replace(killing, sigkill=True)),
                   f"{status.job} still running after {format_duration(scope.limits.kill_grace)}: SIGKILL",
                   actions=(kill,))


def overdue(spec: JobSpec, started: datetime, output_at: datetime | None,
            now: datetime) -> KillReason | datetime | None:
    """Why a running attempt must be killed now (`timeout`, `idle`); else its next deadline, if any."""
    deadlines: list[datetime] = []
    if spec.timeout is not None:
        deadline = started + timedelta(seconds=spec.timeout)
        if deadline <= now:
            return KillReason.TIMEOUT
        deadlines.append(deadline)
    if spec.idle_timeout is not None:
        quiet_since = max(started, output_at) if output_at is not None else started
        deadline = quiet_since + timedelta(seconds=spec.idle_timeout)
        if deadline <= now:
            return KillReason.IDLE
        deadlines.append(deadline)
    return min(deadlines, default=None)
