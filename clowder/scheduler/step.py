"""The step over a root: each pipeline's requests and jobs in dependency order, then the slots."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from clowder.scheduler.inbox import Cancels, cancels, take_requests
from clowder.scheduler.job import blocked_reason, step_job
from clowder.scheduler.pipeline_state import pipeline_status
from clowder.scheduler.ready import ReadyQueue
from clowder.scheduler.records import ACTIVE, Candidate, DoneRequest, Limits, PipelineView, Plan, Scope, SetJob
from clowder.scheduler.regression import waiter
from clowder.scheduler.slots import Found, Stream, allocate, weight
from clowder.spec import JobSpec
from clowder.state import JobState, JobStatus


def reconcile(views: Sequence[PipelineView], now: datetime, limits: Limits) -> Plan:
    """Everything to do now across the root, and when to look again at the latest."""
    plan = Plan()
    found = Found()
    passes = [_Pass.of(view, now, limits, plan) for view in views]
    for one in passes:
        one.run(found)
    allocate(found, now, limits, plan)
    for one, stream in zip(passes, found.streams, strict=True):
        one.finish(stream.started)
    return plan


@dataclass
class _Pass:
    """One pipeline's step. A full pass visits every job; otherwise only the focus (jobs that are
    active, ready, or just ended) and, as jobs change, their dependents: a chain of a thousand
    jobs then costs a few steps per event instead of a thousand."""

    scope: Scope
    view: PipelineView
    jobs: MutableMapping[str, JobStatus]  # the scope's, changed as the pass goes
    plan: Plan
    position: Mapping[str, int]  # job -> its place in the dependency order
    cancelling: Cancels = field(default_factory=lambda: Cancels(False, frozenset()))
    seen: set[str] = field(default_factory=set)
    heap: list[tuple[int, str]] = field(default_factory=list)
    changed: dict[str, str] = field(default_factory=dict)  # job -> the event its change logs
    fresh: dict[str, tuple[int, Candidate]] = field(default_factory=dict)  # job -> (position, candidate)

    @classmethod
    def of(cls, view: PipelineView, now: datetime, limits: Limits, plan: Plan) -> _Pass:
        specs: Mapping[str, JobSpec] = view.pipeline.jobs if view.pipeline else {}
        jobs: MutableMapping[str, JobStatus]
        if view.focus is None or view.requests:  # every job is looked at, or retries change any
            jobs = dict(view.jobs)
            for name in specs if view.focus is None else ():
                if name not in jobs:
                    jobs[name] = JobStatus(name)
        else:
            jobs = Overlay(view.jobs)
        position = view.pipeline.position if view.pipeline else {}
        return cls(Scope(view, specs, jobs, now, limits, blocked_reason(view)), view, jobs, plan, position)

    def run(self, found: Found) -> None:
        self.cancelling = cancels(self.view.requests, self.jobs)
        done: list[DoneRequest] = []
        if self.view.requests:
            assert isinstance(self.jobs, dict)  # `of` copies the statuses when there are requests
            done = take_requests(self.view.name, self.view.requests, self.jobs, self.scope.specs, self.cancelling)
        full = self.view.focus is None
        todo = list(self.jobs) if full else [n for n in (self.view.focus or ()) if n in self.jobs]
        for name in todo:
            self._push(name)
        while self.heap:
            _, name = heapq.heappop(self.heap)
            if name not in self.seen:
                self._visit(name, found)
        # A job seen for the first time that has done nothing has not changed: no status file
        # says it is pending (a missing one reads so), which saves a file write per job.
        for name, event in self.changed.items():
            self.plan.actions.append(SetJob(self.view.name, self.jobs[name], event))
        # A request file goes only after the statuses that record what it did: between the two, a
        # second `clowder retry` or `approve` would find neither and be accepted.
        self.plan.actions += done
        # A blocked pipeline's backlog is dropped: the spec read that unblocks it looks at every job.
        found.streams.append(Stream(self.view.name, self._weight(), self._share(), self.fresh,
                                    None if full or self.scope.blocked else self._queue(), self.seen, self._check))

    def finish(self, started: Mapping[str, JobStatus]) -> None:
        """The pipeline's own status, once the slots are given: a pipeline whose first attempt
        started in this step is running now (it said `pending` until its next event)."""
        if self.view.focus is None or self.changed or self.view.requests or started:
            self.jobs.update(started)
            change = pipeline_status(self.scope)
            if change is not None:
                self.plan.actions.append(change)

    def _queue(self) -> ReadyQueue:
        ready = self.view.ready
        return ready if isinstance(ready, ReadyQueue) else ReadyQueue.of(ready, self.position)

    def _weight(self) -> float:
        return weight(self.view.pipeline.spec.priority) if self.view.pipeline else 1.0

    def _share(self) -> int | None:
        return self.view.pipeline.spec.max_parallel if self.view.pipeline else None

    def _push(self, name: str) -> None:
        heapq.heappush(self.heap, (self.position.get(name, len(self.position)), name))

    def _visit(self, name: str, found: Found) -> None:
        self.seen.add(name)
        spec = self.scope.specs.get(name)
        status = self.jobs.get(name)
        if status is None:  # a job without a status file is pending
            status = self.jobs[name] = JobStatus(name)
        cancel = self.cancelling.all or name in self.cancelling.jobs
        step = step_job(self.scope, spec, status, cancel)
        if step.actions or step.wake:  # most steps ask for neither: a full pass takes one per job
            self.plan.take(step)
        new = self.jobs[name] = step.status
        was = self.view.jobs.get(name)
        if new != (was if was is not None else JobStatus(name)):
            self.changed[name] = step.event or self.changed.get(name, "")
            self._look_again_after(name, spec, new)
        if new.state is JobState.RETRYING and new.retry_at is not None:
            self.plan.wake(new.retry_at)
        if step.candidate is not None:
            self.fresh[name] = (self.position.get(name, len(self.position)), step.candidate)
        else:
            self.fresh.pop(name, None)  # looked at again (a spawner): the last answer holds
        if new.state in ACTIVE:
            found.running.append((self.view.name, spec))

    def _look_again_after(self, name: str, spec: JobSpec | None, new: JobStatus) -> None:
        """A job changed: its dependents may change too."""
        for dep in self.view.pipeline.dependents.get(name, ()) if self.view.pipeline else ():
            if dep not in self.seen:
                self._push(dep)
        spawner = waiter(spec, self.jobs)
        if spawner is not None and new.state.terminal:
            # A spawner waits for its fix-ups without `needs`: the job order may have visited
            # it already in this step, so look at it again now that a fix-up has ended.
            self.seen.discard(spawner)
            self._push(spawner)

    def _check(self, name: str) -> Candidate | None:
        """A job found ready by an earlier step, looked at again now that a slot could take it."""
        if name not in self.scope.specs:
            return None
        status = self.jobs.get(name)
        if status is None:
            status = self.jobs[name] = JobStatus(name)
        step = step_job(self.scope, self.scope.specs.get(name), status, False)
        self.plan.take(step)
        return step.candidate if step.status == status else None


class Overlay(MutableMapping[str, JobStatus]):
    """The view's statuses with this step's changes on top: a step that looks at a few jobs of a
    big pipeline copies none of the others (a copy per step of 5,000 statuses made the step's
    cost grow with the pipeline). The view's own map is never written."""

    def __init__(self, base: Mapping[str, JobStatus]) -> None:
        self.base = base
        self.own: dict[str, JobStatus] = {}

    def __getitem__(self, key: str) -> JobStatus:
        own = self.own.get(key)
        return own if own is not None else self.base[key]

    def get(self, key: str, default: JobStatus | None = None) -> JobStatus | None:  # type: ignore[override]
        own = self.own.get(key)  # the step's hot path: the mixin's get() goes through a KeyError
        return own if own is not None else self.base.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.own or key in self.base

    def __setitem__(self, key: str, value: JobStatus) -> None:
        self.own[key] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("a step never forgets a job's status")

    def __iter__(self) -> Iterator[str]:
        yield from self.own
        yield from (k for k in self.base if k not in self.own)

    def __len__(self) -> int:
        return len(self.own) + sum(1 for k in self.base if k not in self.own)
