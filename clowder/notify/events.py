"""The events worth telling someone, derived from two readings of a status: a pure function of
the old and the new, like clowder.follow's job_events. An event's id names the transition (the
pipeline's run, the job, the attempt, the event), so deriving it again after a restart is a no-op."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from clowder.spec import NotifyEvent
from clowder.state import Approval, JobState, JobStatus, PipelineState, PipelineStatus, Verdict

_PIPELINE_EVENTS = {
    PipelineState.SUCCEEDED: NotifyEvent.PIPELINE_SUCCEEDED,
    PipelineState.FAILED: NotifyEvent.PIPELINE_FAILED,
    PipelineState.BLOCKED: NotifyEvent.PIPELINE_BLOCKED,
}
BUDGET_SPENT = "budget spent"  # how the scheduler's messages say a budget stopped a job (scheduler.over_budget)
PIPELINE = "_pipeline"  # a pipeline's own events, in the outbox where a job's name goes (no job name starts with _)


@dataclass(frozen=True)
class Event:
    kind: NotifyEvent
    pipeline: str
    run: str  # when the pipeline started ("" before it did): a pipeline made again under the same name is new
    at: datetime
    job: str = ""  # "" for the pipeline's own events
    attempt: int = 0  # the job's attempt; for the pipeline's events, how many attempts its jobs have made
    state: str = ""  # the job's or the pipeline's state
    message: str = ""
    fixup: str = ""  # the job a fixup_spawned event is about
    # The request(s) of the gate decisions the event follows: waiting again after a rejection and a
    # retry, a job rejected again, a pipeline failing again after one: news each time.
    decided: str = ""
    rejection: Approval | None = None  # job_failed: the job was rejected at its gate, not run

    @property
    def id(self) -> str:
        """`<pipeline>/<run>/<job>@<attempt>.<event>[.<detail>]`: a relative path, each part a
        valid name or a stamp, so it is also where the event's record lives in the outbox."""
        detail = self.fixup
        if self.kind is NotifyEvent.PIPELINE_BLOCKED:  # blocked again for another reason: news
            detail = hashlib.sha256(self.message.encode()).hexdigest()[:8]
        if self.decided and not detail:
            detail = hashlib.sha256(self.decided.encode()).hexdigest()[:8]
        name = f"{self.job or PIPELINE}@{self.attempt}.{self.kind.value}" + (f".{detail}" if detail else "")
        return f"{self.pipeline}/{self.run or 'unstarted'}/{name}"

    @property
    def text(self) -> str:
        """One line for a person (Slack shows a webhook's `text`)."""
        where = f"{self.pipeline}/{self.job}" if self.job else f"pipeline {self.pipeline}"
        match self.kind:
            case NotifyEvent.JOB_FAILED if self.rejection is not None:
                comment = self.rejection.comment
                return f"Clowder: {where} was rejected by {self.rejection.by}" + (f": {comment}" if comment else "")
            case NotifyEvent.JOB_FAILED:
                what = f"failed (attempt {self.attempt})"
            case NotifyEvent.FIXUP_SPAWNED:
                what = f"spawned the fix-up {self.fixup}"
            case NotifyEvent.BUDGET_SPENT:
                what = "stopped"
            case NotifyEvent.WAITING_FOR_APPROVAL:
                what = "is waiting for approval"
            case _:
                what = self.state
        # The message often repeats what was just said: `failed: a`, `attempt 2 failed: exit code 1`.
        message = self.message.removeprefix(f"{self.state}: ").removeprefix(f"attempt {self.attempt} failed: ")
        message = message.removeprefix("waiting for approval: ")
        return f"Clowder: {where} {what}" + (f": {message}" if message else "")

    def payload(self, root: str) -> dict[str, Any]:
        """The event as JSON: a command's stdin and a webhook's body."""
        data: dict[str, Any] = {
            "text": self.text, "id": self.id, "event": self.kind.value, "root": root, "pipeline": self.pipeline,
            "job": self.job, "attempt": self.attempt, "state": self.state, "message": self.message,
            "time": self.at.isoformat().replace("+00:00", "Z"), "run": self.run,
        }
        if self.fixup:
            data["fixup"] = self.fixup
        if self.rejection is not None:
            r = self.rejection
            data["approval"] = {"verdict": r.verdict.value, "by": r.by, "at": r.at.isoformat().replace("+00:00", "Z"),
                                "comment": r.comment}
        return data

    def env(self, root: str) -> dict[str, str]:
        """The CLOWDER_* variables a notify command runs with (no NUL: no environment holds one)."""
        values = {"EVENT": self.kind.value, "EVENT_ID": self.id, "ROOT": root, "PIPELINE": self.pipeline,
                  "JOB": self.job, "ATTEMPT": str(self.attempt), "STATE": self.state, "MESSAGE": self.message,
                  "FIXUP": self.fixup}
        return {f"CLOWDER_{k}": v.replace("\0", "") for k, v in values.items()}


def run_of(status: PipelineStatus) -> str:
    started = status.started_at
    return started.strftime("%Y%m%dT%H%M%S.%fZ") if started is not None else ""


def pipeline_events(name: str, old: PipelineStatus, new: PipelineStatus, jobs: Iterable[JobStatus],
                    at: datetime) -> list[Event]:
    """The pipeline's event, if its state changed to one worth telling."""
    kind = _PIPELINE_EVENTS.get(new.state)
    if kind is None or old.state is new.state:
        return []
    jobs = list(jobs)
    attempts = sum(j.attempt for j in jobs)  # grows with each run: a pipeline retried and failed again is news
    decided = " ".join(sorted(j.approval.request for j in jobs if j.approval is not None))  # so does a decision
    return [Event(kind, name, run_of(new), at, attempt=attempts, state=new.state.value, message=new.message,
                  decided=decided)]


def job_events(name: str, status: PipelineStatus, old: JobStatus | None, new: JobStatus, at: datetime) -> list[Event]:
    """What happened to a job between two of its statuses (`old` None: it had none)."""
    old = old or JobStatus(new.job)
    run = run_of(status)

    def event(kind: NotifyEvent, message: str = new.message, fixup: str = "") -> Event:
        return Event(kind, name, run, at, new.job, new.attempt, new.state.value, message, fixup)

    events = []
    rejection = _rejection(new)
    if new.state is JobState.FAILED and (old.state is not JobState.FAILED or old.attempt != new.attempt
                                         or rejection != _rejection(old)):
        events.append(replace(event(NotifyEvent.JOB_FAILED), rejection=rejection,
                              decided=rejection.request if rejection else ""))
    budget = _budget_stop(new)
    if budget and (budget != _budget_stop(old) or old.attempt != new.attempt):
        events.append(event(NotifyEvent.BUDGET_SPENT, budget))
    events += [event(NotifyEvent.FIXUP_SPAWNED, fixup=fixup) for fixup in new.spawned if fixup not in old.spawned]
    if new.state is JobState.APPROVAL and old.state is not JobState.APPROVAL:
        decided = new.approval.request if new.approval is not None else ""
        events.append(Event(NotifyEvent.WAITING_FOR_APPROVAL, name, run, at, new.job, new.attempt, new.state.value,
                            new.message, decided=decided))
    return events


def _rejection(status: JobStatus) -> Approval | None:
    """The rejection at its gate that failed the job, or None."""
    # A rejected job makes no attempt until it is retried, and then it waits for a new decision.
    a = status.approval
    return a if status.state is JobState.FAILED and a is not None and a.verdict is Verdict.REJECTED else None


def _budget_stop(status: JobStatus) -> str:
    """Why a budget stopped the job (it failed instead of starting, or its fix-ups were refused), or ''."""
    if status.state is JobState.FAILED and status.message.startswith(BUDGET_SPENT):
        return status.message
    refused = status.extra.get("spawn_refused")
    if isinstance(refused, str) and BUDGET_SPENT in refused:
        return refused
    return ""
