"""A dry run: the scheduler's own steps taken over the pipelines as they are, each attempt it starts
taken to succeed at the next step, until nothing more would start. What it started, in order and
with why, is what `clowder run` would run; nothing is launched or written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from hashlib import sha1

from clowder.scheduler.records import Limits, Outcome, PipelineView, Reuse, SetPipeline, Start
from clowder.scheduler.why import Decided, Why, decide, explain
from clowder.state import JobState, PipelineStatus


@dataclass(frozen=True)
class Planned:
    step: int  # attempts of the same step would start together
    at: datetime  # when: later than now only after a backoff
    why: Why


@dataclass(frozen=True)
class Simulation:
    starts: tuple[Planned, ...]  # in the order they would start
    not_run: tuple[Why, ...]  # unfinished jobs that would not start, and why
    ends: dict[str, PipelineStatus]  # how each pipeline would end (or stay) if every attempt succeeded
    since: datetime  # when it was taken


def simulate(views: Sequence[PipelineView], now: datetime, limits: Limits) -> Simulation:
    """Step the scheduler until nothing more starts, every attempt succeeding a step after it starts."""
    unfinished = {(v.name, j) for v in views for j in (v.pipeline.jobs if v.pipeline else {})
                  if not v.jobs.get(j) or not v.jobs[j].state.terminal}
    starts: list[Planned] = []
    current, since = list(views), now
    for turn in range(3 * len(unfinished) + 10):  # each job starts once, bar retries and backoffs
        decided = decide(current, now, limits)
        if turn == 0:  # a request (a rerun) may have reopened ended jobs
            unfinished |= {(p, j) for p, jobs in decided.after.items() for j, s in jobs.items() if not s.state.terminal}
        # A `cache = true` job answered from an earlier attempt is listed where it would be reused.
        started = [a for a in decided.plan.actions if isinstance(a, Start | Reuse)]
        by_name = {v.name: v for v in current}
        step = (starts[-1].step if starts else 0) + 1
        starts += [Planned(step, now, explain(by_name[a.pipeline], a.job, decided, limits, now)) for a in started]
        running = any(s.state is JobState.RUNNING for jobs in decided.after.values() for s in jobs.values())
        current = [_advance(v, decided, now) for v in current]
        if not started and not running:
            if decided.plan.wake_at is None or decided.plan.wake_at <= now:
                break
            now = decided.plan.wake_at  # a backoff: the retry comes then
    ran = {(p.why.pipeline, p.why.job) for p in starts}
    last = decide(current, now, limits)
    not_run = tuple(explain(v, j, last, limits, now) for v in current for j in (v.pipeline.order if v.pipeline else ())
                    if (v.name, j) in unfinished and (v.name, j) not in ran)
    return Simulation(tuple(starts), not_run, {v.name: v.status for v in current}, since)


def _advance(view: PipelineView, decided: Decided, now: datetime) -> PipelineView:
    """The pipeline after the step: its statuses as the step set them, its requests consumed, and
    every running attempt ended with exit 0."""
    jobs = dict(decided.after[view.name])
    status = next((a.status for a in decided.plan.actions if isinstance(a, SetPipeline) and a.pipeline == view.name),
                  view.status)
    # Each with a commit of its own: a new commit is what a real attempt makes, so what follows it is
    # never taken as reusable (`cache = true`) on the strength of its upstream's old commit.
    outcomes = {j: Outcome(0, now, commit=_new_commit(view.name, j, s.attempt))
                for j, s in jobs.items() if s.state is JobState.RUNNING}
    return replace(view, jobs=jobs, status=status, outcomes=outcomes, alive={}, requests=(), focus=None, ready=())


def _new_commit(pipeline: str, job: str, attempt: int) -> str:
    """A stand-in for the commit an attempt taken to succeed would make: one no real attempt has."""
    return sha1(f"clowder dry run {pipeline}/{job}#{attempt}".encode()).hexdigest()
