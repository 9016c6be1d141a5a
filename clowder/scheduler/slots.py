"""Slots: which ready jobs start now, within `max_parallel`, each pipeline's share and the
resource pools; the others stay ready (or `queued`, waiting for a pool)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from clowder.scheduler.records import Candidate, Limits, PipelineView, Plan, SetJob, Start
from clowder.spec import JobSpec
from clowder.state import Attempt, JobState


@dataclass
class Ready:
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


@dataclass
class Found:
    """What the pipelines' steps found: jobs that may start now, jobs ready from earlier steps (looked
    at only while slots are free) and the attempts running."""

    candidates: list[Candidate] = field(default_factory=list)
    later: list[Ready] = field(default_factory=list)
    running: list[tuple[str, JobSpec | None]] = field(default_factory=list)  # (pipeline, spec)


def allocate(found: Found, views: Sequence[PipelineView], now: datetime, limits: Limits, plan: Plan) -> None:
    """Start candidates while slots and resources last; mark the rest `queued` with why."""
    candidates, later, running = found.candidates, found.later, found.running
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
                          trigger=cand.trigger, request=cand.request, approval=cand.approval)
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

