"""A step of the system clock, seen by the daemon: the times of what is in flight move with it.

Status files hold wall-clock times, and every deadline is one: an attempt's `timeout` and idle
deadline, a kill's grace, a retry's backoff. When the clock is stepped while the daemon runs (NTP
correcting a clock that was wrong, a virtual machine restored, a hand-set date), a running attempt
started "400 days ago" by the new clock was killed as overdue at the next look, and after a step
back its deadline lay 400 days ahead. The daemon compares the wall clock with a clock that is never
stepped (CLOCK_BOOTTIME, which counts a suspend as time passing, as the wall clock does) and, when
they part, re-expresses the in-flight times in the new clock: a running attempt's start and kill,
a retry's time. What ended keeps its times: they were true when written."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta

from clowder.state import JobState, JobStatus, utcnow

# Both clocks advance alike however loaded the machine is; NTP's slewing moves the wall clock by at
# most 0.5 ms a second. More than this between two looks is a step.
STEP = 2.0

_STEADY = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def steady() -> float:
    """Seconds on a clock that is never stepped (it counts a suspend, as the wall clock does)."""
    return time.clock_gettime(_STEADY)


class StepWatch:
    """Says by how much the wall clock was stepped since the last look, if it was."""

    def __init__(self) -> None:
        self._last: tuple[datetime, float] | None = None

    def step(self) -> timedelta | None:
        wall, steady_now = utcnow(), steady()
        last, self._last = self._last, (wall, steady_now)
        if last is None:
            return None
        moved = (wall - last[0]).total_seconds() - (steady_now - last[1])
        return timedelta(seconds=moved) if abs(moved) > STEP else None


def moved(status: JobStatus, by: timedelta) -> JobStatus:
    """The job's in-flight times re-expressed in a clock stepped `by`; the same object when it has none."""
    last = status.attempts[-1] if status.attempts else None
    if status.state is JobState.RUNNING and last is not None and last.started_at is not None:
        killing = replace(status.killing, at=status.killing.at + by) if status.killing is not None else None
        started: datetime = last.started_at + by
        return replace(status, attempts=(*status.attempts[:-1], replace(last, started_at=started)), killing=killing)
    if status.state is JobState.RETRYING and status.retry_at is not None:
        return replace(status, retry_at=status.retry_at + by)
    return status


def show(by: timedelta) -> str:
    """+400d 0h 0m 3s: how far the clock was stepped."""
    seconds = abs(by.total_seconds())
    days, rest = divmod(round(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    sign = "+" if by.total_seconds() >= 0 else "-"
    return f"{sign}{days}d {hours}h {minutes}m {secs}s" if days else f"{sign}{hours}h {minutes}m {secs}s"
