"""Regression loops, the scheduler's side: a spawner's attempt that asked for fix-ups waits for
them (or has its asks refused), and runs again from their work once they all succeeded. The
fix-ups' job files are written by the driver (clowder.regression)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from clowder.scheduler.budget import over_budget
from clowder.scheduler.ending import attempt_ending, finish
from clowder.scheduler.records import (
    NO_CHANGES,
    Action,
    Candidate,
    DoneRequest,
    JobStep,
    Outcome,
    Scope,
    Spawn,
    SpawnJob,
)
from clowder.spec import JobSpec
from clowder.state import JobState, JobStatus, Trigger


def fixup_name(target: str, known: set[str]) -> str:
    """`dev.r1`, `dev.r2`, ...: the first name of that shape not taken."""
    k = 1
    while f"{target}.r{k}" in known:
        k += 1
    return f"{target}.r{k}"


def waiter(spec: JobSpec | None, jobs: Mapping[str, JobStatus]) -> str | None:
    """The spawner waiting for this fix-up job, if any."""
    parent = jobs.get(spec.parent) if spec is not None and spec.parent else None
    if parent is None or parent.state is not JobState.WAITING or spec is None or spec.name not in parent.waiting_for:
        return None
    return parent.job


def _spawn_refusal(scope: Scope, spec: JobSpec | None, status: JobStatus, outcome: Outcome, target: str,
                   spawned_now: int) -> str:
    """Why a fix-up of `target` may not be spawned now, or ''."""
    pipeline = scope.view.pipeline
    if target not in scope.specs:
        return f"unknown job {target!r}"
    budget = over_budget(spec, pipeline.spec.max_cost_usd if pipeline else None, status, scope.view.jobs,
                         outcome.usage.cost_usd if outcome.usage else 0.0) if spec else ""
    if budget:
        return budget
    allowed = (spec.max_regressions if spec else 0) - len(status.spawned)
    if spawned_now >= allowed:
        return (f"{status.job} has spawned {len(status.spawned)} fix-up(s), its max_regressions "
                f"({spec.max_regressions if spec else 0}) is reached")
    return ""


def spawn(scope: Scope, spec: JobSpec | None, status: JobStatus, outcome: Outcome,
          requests: Sequence[Spawn]) -> JobStep:
    """The spawner's attempt ended with fix-ups asked for: write them and wait for them, or
    refuse what its `max_regressions` does not allow (the attempt then ends as usual)."""
    last = status.attempts[-1]
    pipeline = scope.view.name
    known = set(scope.specs) | set(scope.view.jobs)
    names: list[str] = []
    new_names: list[str] = []
    refused: list[str] = []
    actions: list[Action] = []
    for req in requests:
        done = next((n for n, j in scope.specs.items() if j.regression_context
                     and j.regression_context.get("request") == req.id), None)
        if done is not None:  # written before a crash: reuse it
            names.append(done)
        elif refusal := _spawn_refusal(scope, spec, status, outcome, req.job, len(new_names)):
            refused.append(refusal)
        else:
            name = fixup_name(req.job, known)
            known.add(name)
            names.append(name)
            new_names.append(name)
            actions.append(SpawnJob(pipeline, name, req.job, status.job, last.number, outcome.commit, req.id,
                                    req.reason, req.context))
        actions.append(DoneRequest(pipeline, req.id))
    refusal = "spawn refused: " + "; ".join(refused) if refused else ""
    if not names:
        step = finish(spec, status, last, outcome, scope.now)
        new = replace(step.status, spawn_refused=refusal,
                      message=f"{step.status.message} ({refusal})" if step.status.message else refusal)
        return JobStep(new, f"{step.event}; {refusal}", actions=(*actions, *step.actions))
    ended = replace(last, state=attempt_ending(outcome, spec).state, ended_at=outcome.ended_at,
                    exit_code=outcome.exit_code, signal=outcome.signal, commit=outcome.commit or last.commit,
                    base_commit=outcome.base_commit or last.base_commit, artifacts=outcome.artifacts or last.artifacts,
                    consumed=outcome.consumed or last.consumed, message=f"spawned {', '.join(names)}",
                    usage=outcome.usage or last.usage)
    message = f"waiting for fix-up {', '.join(names)}" + (f" ({refusal})" if refusal else "")
    new = replace(status, killing=None, state=JobState.WAITING, attempts=(*status.attempts[:-1], ended),
                  waiting_for=tuple(names), spawned=(*status.spawned, *new_names), message=message)
    return JobStep(new, f"{status.job} {message}", actions=tuple(actions))


def step_waiting(scope: Scope, spec: JobSpec, status: JobStatus) -> JobStep:
    """A job that spawned fix-ups waits for them; once all succeeded it may run again."""
    waited = [scope.jobs.get(j) for j in status.waiting_for]
    if any(w is None or not w.state.terminal for w in waited):
        return JobStep(status)
    failed = [w.job for w in waited if w is not None and w.state is not JobState.SUCCEEDED]
    if failed:
        message = f"fix-up {', '.join(failed)} did not succeed"
        return JobStep(replace(status, state=JobState.FAILED, message=message), f"{spec.name} failed: {message}")
    status = _note_unchanged(status, [w for w in waited if w is not None])
    return JobStep(status, candidate=Candidate(scope.view.name, spec, status, Trigger.REGRESSION,
                                               sources=status.waiting_for))


def _note_unchanged(status: JobStatus, fixups: Sequence[JobStatus]) -> JobStatus:
    """The spawner's attempt that waited says which of its fix-ups changed nothing, so the
    spawn it paid for with its max_regressions is seen as such."""
    unchanged = [f.job for f in fixups if f.last is not None and f.last.message == NO_CHANGES]
    last = status.last
    note = f"{', '.join(unchanged)}: {NO_CHANGES}"
    if not unchanged or last is None or note in last.message:
        return status
    attempt = replace(last, message=f"{last.message}; {note}" if last.message else note)
    return replace(status, attempts=(*status.attempts[:-1], attempt))
