"""Requests in a pipeline's inbox, as the scheduler applies them: cancels (per job, in the
step), retries (at once) and spawns (when the spawner's attempt ends)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import assert_never

from clowder.scheduler.gate import decide
from clowder.scheduler.records import Approve, Cancel, DoneRequest, Invalid, Reject, Request, Rerun, Retry, Spawn
from clowder.spec import JobSpec
from clowder.state import JobState, JobStatus


@dataclass(frozen=True)
class Cancels:
    """What the cancel requests ask for: the whole pipeline, or these jobs."""

    all: bool
    jobs: frozenset[str]

    def __contains__(self, job: str) -> bool:
        return self.all or job in self.jobs


def cancels(requests: Sequence[Request], jobs: Mapping[str, JobStatus]) -> Cancels:
    every, named = False, set()
    for req in requests:
        if isinstance(req, Cancel) and req.job is None:
            every = True
        elif isinstance(req, Cancel) and req.job is not None:
            named.add(req.job)
            waiting = jobs.get(req.job)
            if waiting is not None and waiting.state is JobState.WAITING:
                named.update(waiting.waiting_for)  # its fix-ups exist only for it
    return Cancels(every, frozenset(named))


def take_requests(pipeline: str, requests: Sequence[Request], jobs: dict[str, JobStatus],
                  specs: Mapping[str, JobSpec], cancelling: Cancels) -> list[DoneRequest]:
    """Apply the retries to `jobs` in place; every request but a spawn still waiting is done."""
    done = []
    for req in requests:
        if isinstance(req, Spawn):
            event = _check_spawn(req, jobs)
            if event is None:
                continue  # handled when the spawner's attempt ends
        else:
            event = _apply_request(req, jobs, specs, cancelling.all)
        done.append(DoneRequest(pipeline, req.id, event))
    return done


def _apply_request(req: Cancel | Retry | Rerun | Approve | Reject | Invalid, jobs: dict[str, JobStatus],
                   specs: Mapping[str, JobSpec], cancel_all: bool) -> str:
    """Apply a retry request to `jobs` in place; cancels are applied per job in `_step_job`."""
    match req:
        case Invalid():
            return f"ignored unreadable request {req.id}: {req.error}"
        case Cancel():
            return f"cancel requested for {req.job or 'the whole pipeline'}"
        case Retry():
            return _apply_retry(req, jobs, specs, cancel_all)
        case Approve() | Reject():
            return decide(req, jobs)
        case Rerun():
            return _apply_rerun(req, jobs, specs, cancel_all)
        case _:
            assert_never(req)


def _apply_retry(req: Retry, jobs: dict[str, JobStatus], specs: Mapping[str, JobSpec], cancel_all: bool) -> str:
    status = jobs.get(req.job)
    if status is None or req.job not in specs:
        return f"retry of unknown job {req.job!r} ignored"
    if any(a.request == req.id for a in status.attempts) or status.retry_request == req.id:
        return ""  # replayed after a crash: already applied
    if status.state not in (JobState.FAILED, JobState.CANCELLED):
        return f"retry of {req.job} ignored: it is {status.state.value} (only failed or cancelled jobs can be retried)"
    if cancel_all:
        return f"retry of {req.job} ignored: the pipeline is being cancelled"
    jobs[req.job] = replace(status, state=JobState.PENDING, message="retry requested", retry_request=req.id)
    for name in _descendants(req.job, specs):
        d = jobs.get(name)
        if d is not None and d.state in (JobState.SKIPPED, JobState.CANCELLED):
            jobs[name] = replace(d, state=JobState.PENDING, message="")
    return f"retry of {req.job} requested"


def _apply_rerun(req: Rerun, jobs: dict[str, JobStatus], specs: Mapping[str, JobSpec], cancel_all: bool) -> str:
    """A re-run starts a new attempt of a job in any ended state (trigger `manual`, through the
    same `retry_request` a retry uses, so a restarted daemon starts it again). With `downstream`,
    the jobs after it that ended go back to pending: they run again once it has ended, as their
    `needs` say (skipped if it fails where they need it to succeed), a gated one once approved
    again. The job itself keeps its approval: what it was approved on has not changed."""
    status = jobs.get(req.job)
    if status is None or req.job not in specs:
        return f"re-run of unknown job {req.job!r} ignored"
    if any(a.request == req.id for a in status.attempts) or status.retry_request == req.id:
        return ""  # replayed after a crash: already applied
    if not status.state.terminal:
        return f"re-run of {req.job} ignored: it is {status.state.value} (only a job that has ended can be re-run)"
    if cancel_all:
        return f"re-run of {req.job} ignored: the pipeline is being cancelled"
    jobs[req.job] = replace(_new_run(status), message="re-run requested", retry_request=req.id)
    again = [n for n in _descendants(req.job, specs) if req.downstream and n in jobs and jobs[n].state.terminal]
    for name in again:
        # A gate after the job waits for a new decision: what it was approved on is made again
        # (the approval stays on the attempt it let start).
        jobs[name] = replace(_new_run(jobs[name]), message=f"re-run after {req.job}", retry_at=None, approval=None)
    return f"re-run of {req.job} requested" + (f", then {', '.join(sorted(again))}" if again else "")


def _new_run(status: JobStatus) -> JobStatus:
    """A job about to be re-run: a new run whose fix-ups are its own, counted anew against its
    max_regressions. Those of the runs before stay in history: their jobs, and the attempts that
    spawned them ("spawned dev.r1")."""
    return replace(status, state=JobState.PENDING, spawned=(), waiting_for=(), spawn_refused="")


def _check_spawn(req: Spawn, jobs: Mapping[str, JobStatus]) -> str | None:
    """None while the spawn request waits for its spawner's attempt to end; else why it is
    dropped unused."""
    status = jobs.get(req.spawner)
    if status is None:
        return f"spawn request {req.id} ignored: unknown spawner {req.spawner!r}"
    if status.state is JobState.RUNNING and status.attempt == req.attempt:
        return None
    return f"spawn request from {req.spawner} attempt {req.attempt} ignored: that attempt is not running"


def _descendants(job: str, specs: Mapping[str, JobSpec]) -> list[str]:
    out: list[str] = []
    frontier = [job]
    while frontier:
        cur = frontier.pop()
        for name, spec in specs.items():
            if name not in out and any(n.job == cur for n in spec.needs):
                out.append(name)
                frontier.append(name)
    return out

