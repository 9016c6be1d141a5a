"""Observed state: job and pipeline states and the status files the scheduler writes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from clowder.errors import Problem, SpecError

# The records here are the pure scheduler's vocabulary: importing this module must load nothing
# that does I/O (a test checks it), so the TOML writer and the file reader are imported where used.


class JobState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    APPROVAL = "approval"  # a `when = "manual"` gate: waiting for `clowder approve` or `clowder reject`
    LOST = "lost"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED, JobState.CANCELLED}
)


class PipelineState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    BLOCKED = "blocked"  # a spec file is invalid (or the prompt changed): nothing new starts until it is mended
    BROKEN = "broken"  # Clowder failed on one of its files: left alone until they change
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (PipelineState.SUCCEEDED, PipelineState.FAILED, PipelineState.CANCELLED)

    @property
    def halted(self) -> bool:
        """Stopped until someone mends a file; it then goes on by itself."""
        return self in (PipelineState.BLOCKED, PipelineState.BROKEN)


class KillReason(StrEnum):
    """Why Clowder killed a running attempt: a cancel request, its `timeout`, its `idle_timeout`."""

    CANCEL = "cancel"
    TIMEOUT = "timeout"
    IDLE = "idle"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Artifact:
    path: str
    blob: str
    size: int
    kind: str = "file"  # file | model_output | error_context


@dataclass(frozen=True)
class Usage:
    """Tokens and money an agent reported spending (summed from its action log)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cost_usd + other.cost_usd)


def total_usage(attempts: Iterable[Attempt]) -> Usage | None:
    """The summed usage of the attempts that reported any, or None if none did."""
    reported = [a.usage for a in attempts if a.usage is not None]
    return sum(reported[1:], reported[0]) if reported else None


class Trigger(StrEnum):
    """What started an attempt: the job's turn came, an automatic retry, `clowder retry`, or the
    end of the fix-ups it spawned."""

    START = "start"
    RETRY = "retry"
    MANUAL = "manual"
    REGRESSION = "regression"


@dataclass(frozen=True)
class Killing:
    """A kill in progress, kept in the status so that a restarted daemon still knows it: SIGTERM
    was sent at `at` for `reason`; SIGKILL follows after the grace (`sigkill`: it was sent)."""

    reason: KillReason
    at: datetime
    sigkill: bool = False


class FailureKind(StrEnum):
    """Why an attempt failed, for `retry_on`: the API was briefly unavailable (`transient`), the
    agent's configuration is wrong (`config`: a bad key), the agent failed at its work (`agent`), or
    a command job's process failed (`command`)."""

    TRANSIENT = "transient"
    CONFIG = "config"
    AGENT = "agent"
    COMMAND = "command"


class Verdict(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Approval:
    """A person's decision on a job waiting at a `when = "manual"` gate: who (the user, or "web" for
    the API's token), when, why, and the request that carried it (a replayed request is a no-op)."""

    verdict: Verdict
    by: str
    at: datetime
    comment: str = ""
    request: str = ""


@dataclass(frozen=True)
class Inputs:
    """What an attempt was made from, recorded when it starts: its spec's hash, its role's
    instructions (an agent job), each upstream's final commit, the pipeline's source (a job that
    starts from it: its repo and ref, pinned to one commit per pipeline) and its `env`. A job whose
    current inputs differ from its last attempt's is outdated; `cache = true` reuses an attempt
    whose inputs are the same (clowder.scheduler.inputs)."""

    spec: str
    role: str = ""  # hash of the role's instructions; '' for a command job
    upstreams: Mapping[str, str] = field(default_factory=dict)  # upstream job -> its final commit
    source: str = ""  # hash of pipeline.toml's `source` for a job that starts from it, else ''
    env: str = ""  # hash of the job's `env`


@dataclass(frozen=True)
class Attempt:
    number: int
    state: JobState
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    spec_hash: str = ""
    base_commit: str | None = None
    commit: str | None = None
    message: str = ""
    consumed: Mapping[str, str] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    trigger: Trigger = Trigger.START
    request: str | None = None  # id of the request that caused it, so a replayed request is a no-op
    usage: Usage | None = None  # what an agent reported spending in this attempt
    failure_kind: FailureKind | None = None  # a failed agent attempt's kind (a command job's is `command`)
    approval: Approval | None = None  # the approval that let this attempt start (a gated job)
    inputs: Inputs | None = None  # what it was made from (None: recorded before inputs were)
    reused_from: int | None = None  # `cache = true`: it did not run; it is this earlier attempt's commit

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or utcnow()
        return (end - self.started_at).total_seconds()


@dataclass(frozen=True)
class JobStatus:
    job: str
    state: JobState = JobState.PENDING
    attempt: int = 0
    message: str = ""
    attempts: tuple[Attempt, ...] = ()
    retry_at: datetime | None = None  # when a `retrying` job goes back to `queued`
    waiting_for: tuple[str, ...] = ()  # fix-up jobs a `waiting` job waits on
    spawned: tuple[str, ...] = ()  # every fix-up job this job has spawned
    killing: Killing | None = None  # a kill of the running attempt is under way
    retry_request: str | None = None  # the `clowder retry` request this pending job will run for
    spawn_refused: str = ""  # why the last attempt's spawn requests were refused
    approval: Approval | None = None  # the last decision on its `when = "manual"` gate
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys written by later versions, kept as read

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


@dataclass(frozen=True)
class Decision:
    """A decision on a job's gate as its status records it, and the first attempt it let start
    (None: a rejection, or an approval whose attempt has not started)."""

    approval: Approval
    attempt: int | None

    @property
    def key(self) -> str:
        """What tells it from the job's other decisions: its request, or (a status written by hand
        or by an older Clowder, without one) its time."""
        return _decision_key(self.approval)


def _decision_key(approval: Approval) -> str:
    return approval.request or approval.at.isoformat()


def decisions(status: JobStatus) -> list[Decision]:
    """The decisions a job's status records, oldest first: those its attempts carry (a retry of an
    approved attempt carries the same one) and its last one. What the index's `approvals` table
    and `clowder status --json` show; a decision that a later one replaced before any attempt
    started (a rejection, then a retry) is not kept in the status, so not there either."""
    found: dict[str, Decision] = {}
    for a in status.attempts:
        if a.approval is not None:
            found.setdefault(_decision_key(a.approval), Decision(a.approval, a.number))
    last = status.approval
    if last is not None:
        found.setdefault(_decision_key(last), Decision(last, None))
    return sorted(found.values(), key=lambda d: d.approval.at)


@dataclass(frozen=True)
class PipelineStatus:
    state: PipelineState = PipelineState.PENDING
    started_at: datetime | None = None
    ended_at: datetime | None = None
    message: str = ""
    prompt_hash: str = ""


def _clean(d: Mapping[str, Any]) -> dict[str, Any]:
    """TOML has no null: drop None values and empty optional tables/arrays."""
    return {k: v for k, v in d.items() if v is not None and v != {} and v != ()}


def _attempt_to_dict(a: Attempt) -> dict[str, Any]:
    return _clean({
        "number": a.number,
        "state": a.state.value,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
        "exit_code": a.exit_code,
        "signal": a.signal,
        "pid": a.pid,
        "spec_hash": a.spec_hash or None,
        "base_commit": a.base_commit,
        "commit": a.commit,
        "message": a.message or None,
        "trigger": a.trigger,
        "request": a.request,
        "consumed": dict(a.consumed) or None,
        "artifacts": [
            {"path": x.path, "blob": x.blob, "size": x.size, "kind": x.kind} for x in a.artifacts
        ] or None,
        "usage": _usage_to_dict(a.usage),
        "failure_kind": a.failure_kind.value if a.failure_kind else None,
        "approval": approval_to_dict(a.approval),
        "inputs": inputs_to_dict(a.inputs),
        "reused_from": a.reused_from,
    })


def inputs_to_dict(i: Inputs | None) -> dict[str, Any] | None:
    if i is None:
        return None
    return _clean({"spec": i.spec, "role": i.role or None, "upstreams": dict(i.upstreams) or None,
                   "source": i.source or None, "env": i.env or None})


def _inputs_from_dict(d: Mapping[str, Any] | None) -> Inputs | None:
    if d is None:
        return None
    return Inputs(str(d["spec"]), str(d.get("role", "")), {str(k): str(v) for k, v in d.get("upstreams", {}).items()},
                  str(d.get("source", "")), str(d.get("env", "")))


def approval_to_dict(a: Approval | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return _clean({"verdict": a.verdict.value, "by": a.by, "at": a.at, "comment": a.comment or None,
                   "request": a.request or None})


def _approval_from_dict(d: Mapping[str, Any] | None) -> Approval | None:
    if d is None:
        return None
    return Approval(Verdict(d["verdict"]), str(d["by"]), d["at"], str(d.get("comment", "")), str(d.get("request", "")))


def _usage_to_dict(u: Usage | None) -> dict[str, Any] | None:
    if u is None:
        return None
    return {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens, "cost_usd": u.cost_usd}


def _usage_from_dict(d: Mapping[str, Any] | None) -> Usage | None:
    if d is None:
        return None
    return Usage(int(d.get("input_tokens", 0)), int(d.get("output_tokens", 0)), float(d.get("cost_usd", 0.0)))


def _attempt_from_dict(d: Mapping[str, Any]) -> Attempt:
    return Attempt(
        number=int(d["number"]),
        state=JobState(d["state"]),
        started_at=d.get("started_at"),
        ended_at=d.get("ended_at"),
        exit_code=d.get("exit_code"),
        signal=d.get("signal"),
        pid=d.get("pid"),
        spec_hash=d.get("spec_hash", ""),
        base_commit=d.get("base_commit"),
        commit=d.get("commit"),
        message=d.get("message", ""),
        consumed=dict(d.get("consumed", {})),
        artifacts=tuple(
            Artifact(x["path"], x["blob"], int(x["size"]), x.get("kind", "file"))
            for x in d.get("artifacts", [])
        ),
        trigger=Trigger(d.get("trigger", "start")),
        request=d.get("request"),
        usage=_usage_from_dict(d.get("usage")),
        failure_kind=FailureKind(d["failure_kind"]) if "failure_kind" in d else None,
        approval=_approval_from_dict(d.get("approval")),
        inputs=_inputs_from_dict(d.get("inputs")),
        reused_from=d.get("reused_from"),
    )


STATUS_SCHEMA_HEADER = "#:schema ../../../.clowder/schemas/status.schema.json\n"
PIPELINE_STATUS_SCHEMA_HEADER = "#:schema ../../.clowder/schemas/status.schema.json\n"
_JOB_KEYS = {"state", "attempt", "message", "attempts", "retry_at", "waiting_for", "spawned",
             "job", "schema_version", "killing", "retry_request", "spawn_refused", "approval"}


def job_status_to_toml(s: JobStatus) -> str:
    import tomli_w
    data = _clean({
        "schema_version": 1,
        "job": s.job,
        "state": s.state.value,
        "attempt": s.attempt,
        "message": s.message,
        "retry_at": s.retry_at,
        "waiting_for": list(s.waiting_for) or None,
        "spawned": list(s.spawned) or None,
        **dict(s.extra),
        "killing": _killing_to_dict(s.killing),
        "retry_request": s.retry_request,
        "spawn_refused": s.spawn_refused or None,
        "approval": approval_to_dict(s.approval),
        "attempts": [_attempt_to_dict(a) for a in s.attempts] or None,
    })
    return STATUS_SCHEMA_HEADER + tomli_w.dumps(data)


def job_status_from_dict(job: str, d: Mapping[str, Any]) -> JobStatus:
    return JobStatus(
        job=job,
        state=JobState(d.get("state", "pending")),
        attempt=int(d.get("attempt", 0)),
        message=d.get("message", ""),
        attempts=tuple(_attempt_from_dict(a) for a in d.get("attempts", [])),
        retry_at=d.get("retry_at"),
        waiting_for=tuple(d.get("waiting_for", [])),
        spawned=tuple(d.get("spawned", [])),
        killing=_killing_from_dict(d.get("killing")),
        retry_request=d.get("retry_request"),
        spawn_refused=d.get("spawn_refused", ""),
        approval=_approval_from_dict(d.get("approval")),
        extra={k: v for k, v in d.items() if k not in _JOB_KEYS},
    )


def _killing_to_dict(k: Killing | None) -> dict[str, Any] | None:
    if k is None:
        return None
    return {"reason": k.reason.value, "at": k.at, **({"sigkill": True} if k.sigkill else {})}


def _killing_from_dict(d: Mapping[str, Any] | None) -> Killing | None:
    if d is None:
        return None
    return Killing(KillReason(d["reason"]), d["at"], bool(d.get("sigkill", False)))


def pipeline_status_to_toml(s: PipelineStatus) -> str:
    import tomli_w
    data = _clean({
        "schema_version": 1,
        "state": s.state.value,
        "started_at": s.started_at,
        "ended_at": s.ended_at,
        "message": s.message,
        "prompt_hash": s.prompt_hash or None,
    })
    return PIPELINE_STATUS_SCHEMA_HEADER + tomli_w.dumps(data)


def pipeline_status_from_dict(d: Mapping[str, Any]) -> PipelineStatus:
    return PipelineStatus(
        state=PipelineState(d.get("state", "pending")),
        started_at=d.get("started_at"),
        ended_at=d.get("ended_at"),
        message=d.get("message", ""),
        prompt_hash=d.get("prompt_hash", ""),
    )


# -- the one reader of status files ------------------------------------------------------------
# The daemon, the CLI, the index and the server all read status files through these functions,
# so a file edited by hand is judged the same everywhere (a second reader that skipped a check is
# how a local time once crashed the daemon).

_TIMES = ("started_at", "ended_at", "retry_at")


def check_status_file(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """A status file's data if it is clean, and its problems. Status files are machine-written,
    but humans can edit them, and readers must not trip over what they wrote. A file that does
    not exist has no data and no problems."""
    from clowder import schema  # jsonschema: imported only by what reads status files
    from clowder.fsio import MAX_STATUS_BYTES

    data, problems = schema.load_toml(path, missing_ok=True, limit=MAX_STATUS_BYTES)
    if data is None:
        return None, problems
    problems = schema.check("status", data, path)
    attempts = data.get("attempts")
    tables: list[tuple[tuple[str | int, ...], Any, tuple[str, ...]]] = [
        ((), data, _TIMES), (("killing",), data.get("killing"), ("at",)),
        (("approval",), data.get("approval"), ("at",))]
    if isinstance(attempts, list):
        tables += [(("attempts", i), a, _TIMES) for i, a in enumerate(attempts)]
        tables += [(("attempts", i, "approval"), a.get("approval"), ("at",))
                   for i, a in enumerate(attempts) if isinstance(a, dict)]
    for prefix, table, times in tables:
        for key in times:
            value = table.get(key) if isinstance(table, dict) else None
            # Durations subtract these from the aware `now`: a local date-time cannot be used.
            if value is not None and not (isinstance(value, datetime) and value.tzinfo is not None):
                problems.append(Problem(path, schema.key_path([*prefix, key]),
                                        f"expected a date-time with a UTC offset, got {schema.show(value)}"))
    return (None if problems else data), problems


def read_job_status(path: Path, job: str) -> JobStatus:
    """The job's status file, or a fresh `pending` status when there is none yet. Raises
    SpecError naming the file and the key when the file is not a valid status file."""
    data, problems = check_status_file(path)
    if problems:
        raise SpecError(problems)
    if data is None:
        return JobStatus(job)
    try:
        return job_status_from_dict(job, data)
    except (KeyError, ValueError, TypeError, AttributeError) as e:  # the schema should have said
        raise SpecError.one(path, "<file>", f"unreadable status file: {e}") from e


def read_pipeline_status(path: Path) -> PipelineStatus:
    """status.toml, or a fresh `pending` status when there is none yet; raises SpecError."""
    data, problems = check_status_file(path)
    if problems:
        raise SpecError(problems)
    if data is None:
        return PipelineStatus()
    try:
        return pipeline_status_from_dict(data)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise SpecError.one(path, "<file>", f"unreadable status file: {e}") from e
