"""Slots: which ready jobs start now, within `max_parallel`, each pipeline's share and the
resource pools, served fairly across pipelines; the others stay ready (or `queued`, waiting for a pool)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from clowder.scheduler.ready import ReadyChange, ReadyQueue
from clowder.scheduler.records import Candidate, Limits, Plan, SetJob, Start
from clowder.scheduler.running import overdue
from clowder.spec import JobSpec
from clowder.state import Attempt, JobState, JobStatus

# `priority` tilts a pipeline's fair share: each step up doubles its weight (see `weight`).
MIN_PRIORITY, MAX_PRIORITY = -10, 10


def weight(priority: int) -> float:
    """A pipeline's weight in the fair share. Weighted fair share rather than strict priority
    classes: a strict class lets a big high-priority pipeline starve every other one, which is
    what fair scheduling is for; a weight never starves anyone, and at the bounds (2**20 to 1)
    it is strict in all but name."""
    return 2.0 ** max(MIN_PRIORITY, min(MAX_PRIORITY, priority))


@dataclass
class Stream:
    """One pipeline's ready jobs in dependency order: those its step found, merged with its ready
    queue from earlier steps, whose jobs are each checked again only when a slot could take them
    (a thousand ready jobs cost nothing while two run)."""

    pipeline: str
    weight: float
    share: int | None  # the pipeline's own max_parallel
    fresh: Mapping[str, tuple[int, Candidate]]  # job -> (position, candidate): found ready by this step
    queue: ReadyQueue | None  # None: a full pass, which found every ready job itself
    seen: set[str]  # jobs this step looked at: their answer is in `fresh`, not in the queue
    check: Callable[[str], Candidate | None]
    started: dict[str, JobStatus] = field(default_factory=dict)  # job -> its status, now running
    dropped: list[str] = field(default_factory=list)  # queued jobs found no longer ready
    _iter: Iterator[Candidate] | None = None

    def next(self) -> Candidate | None:
        if self._iter is None:
            self._iter = self._candidates()
        return next(self._iter, None)

    def _candidates(self) -> Iterator[Candidate]:
        fresh = sorted((pos, name, True) for name, (pos, _) in self.fresh.items())
        queued = ((pos, name, False) for pos, name in (self.queue.entries() if self.queue is not None else ()))
        for _, name, found_now in heapq.merge(fresh, queued):
            if found_now:
                yield self.fresh[name][1]
            elif name not in self.seen:  # a job this step looked at is answered by `fresh`
                cand = self.check(name)
                if cand is None:
                    self.dropped.append(name)
                else:
                    yield cand

    def change(self) -> ReadyChange:
        """What this step does to the pipeline's ready queue: the work is proportional to what
        the step looked at, never to the queue's length."""
        add = tuple((name, pos) for name, (pos, _) in self.fresh.items()
                    if name not in self.started and (self.queue is None or name not in self.queue))
        if self.queue is None:
            return ReadyChange(self.pipeline, True, (), add)
        queue = self.queue
        gone = {n for n in self.seen if n in queue and (n not in self.fresh or n in self.started)}
        gone.update(n for n in self.started if n in queue)
        gone.update(self.dropped)
        return ReadyChange(self.pipeline, False, tuple(sorted(gone)), add)


@dataclass
class Found:
    """What the pipelines' steps found: each one's ready jobs, and the attempts running."""

    streams: list[Stream] = field(default_factory=list)
    running: list[tuple[str, JobSpec | None]] = field(default_factory=list)  # (pipeline, spec)


@dataclass
class _Slots:
    limits: Limits
    total: int = 0
    per_pipeline: dict[str, int] = field(default_factory=dict)
    in_use: dict[str, int] = field(default_factory=dict)

    def take(self, pipeline: str, spec: JobSpec | None) -> None:
        self.total += 1
        self.per_pipeline[pipeline] = self.per_pipeline.get(pipeline, 0) + 1
        for pool, units in (spec.resources if spec else {}).items():
            self.in_use[pool] = self.in_use.get(pool, 0) + units

    def short(self, cand: Candidate) -> list[str]:
        return [p for p, units in cand.job.resources.items()
                if self.in_use.get(p, 0) + units > self.limits.resources.get(p, 0)]

    def load(self, stream: Stream) -> float:
        return self.per_pipeline.get(stream.pipeline, 0) / stream.weight

    def full(self, stream: Stream) -> bool:
        return stream.share is not None and self.per_pipeline.get(stream.pipeline, 0) >= stream.share


def allocate(found: Found, now: datetime, limits: Limits, plan: Plan) -> None:
    """Start ready jobs while slots and resources last, each free slot going to the pipeline with
    the fewest attempts running for its weight (ties: the heavier, then by name); mark the ones a pool holds back
    `queued` with why. Served in name order, a pipeline with a thousand ready jobs made another
    wait until that backlog was nearly gone."""
    slots = _Slots(limits)
    for pipeline, spec in found.running:
        slots.take(pipeline, spec)
    heap = [(slots.load(s), -s.weight, s.pipeline, i) for i, s in enumerate(found.streams)]
    heapq.heapify(heap)
    while heap and slots.total < limits.max_parallel:
        i = heapq.heappop(heap)[-1]
        stream = found.streams[i]
        if slots.full(stream):
            continue  # its own max_parallel: its ready jobs stay ready
        cand = _next_fitting(stream, slots, plan)
        if cand is None:
            continue
        slots.take(cand.pipeline, cand.job)
        stream.started[cand.job.name] = _start(cand, now, plan)
        heapq.heappush(heap, (slots.load(stream), -stream.weight, stream.pipeline, i))
    plan.ready += [s.change() for s in found.streams]


def _next_fitting(stream: Stream, slots: _Slots, plan: Plan) -> Candidate | None:
    """The pipeline's next ready job the resource pools can take; those they cannot are `queued`.
    A job waiting only for a free slot stays as it is: writing `queued` for each of a thousand
    ready jobs would cost more than running them. Waiting for a pool is rarer and worth showing."""
    while (cand := stream.next()) is not None:
        short = slots.short(cand)
        if not short:
            return cand
        reason = "waiting for resources: " + ", ".join(
            f"{p} ({slots.in_use.get(p, 0)} of {slots.limits.resources.get(p, 0)} in use)" for p in short)
        if cand.status.state is not JobState.QUEUED or cand.status.message != reason:
            plan.actions.append(SetJob(cand.pipeline, replace(cand.status, state=JobState.QUEUED, message=reason)))
    return None


def _start(cand: Candidate, now: datetime, plan: Plan) -> JobStatus:
    number = cand.status.attempt + 1
    attempt = Attempt(number=number, state=JobState.RUNNING, started_at=now, spec_hash=cand.job.spec_hash,
                      trigger=cand.trigger, request=cand.request, approval=cand.approval, inputs=cand.inputs)
    status = replace(cand.status, state=JobState.RUNNING, attempt=number, message="", retry_at=None,
                     attempts=(*cand.status.attempts, attempt), retry_request=None, killing=None, waiting_for=())
    plan.actions.append(SetJob(cand.pipeline, status))
    plan.actions.append(Start(cand.pipeline, cand.job.name, number, cand.sources))
    # Its timeout or idle deadline: nothing else may wake the loop before it (a polling daemon
    # sees no log or status writes).
    deadline = overdue(cand.job, now, None, now)
    plan.wake(deadline if isinstance(deadline, datetime) else None)
    return status
