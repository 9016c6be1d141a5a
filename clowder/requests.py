"""Requests: cancel, retry, rerun, spawn, approve and reject asks dropped as files in a pipeline's requests/ inbox, so
they work whether or not a daemon is running. The scheduler consumes them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli as tomllib  # the standard library's parser, compiled with mypyc: twice as fast
import tomli_w

from clowder import known
from clowder.errors import ClowderError, UsageError
from clowder.fsio import MAX_SPEC_BYTES, atomic_write, read_input
from clowder.scheduler import Cancel, Invalid, Request, Retry, Spawn
from clowder.scheduler.records import Approve, Reject, Rerun
from clowder.spec import check_name
from clowder.state import JobState, PipelineState, read_job_status, read_pipeline_status, utcnow
from clowder.tree import PipelinePaths, Root

ACTIONS = ("cancel", "retry", "rerun", "spawn", "approve", "reject")
DECISIONS = ("approve", "reject")  # on a job waiting at its `when = "manual"` gate
# A spawn's context is copied into its fix-up's job file, which must stay readable (MAX_SPEC_BYTES).
MAX_REQUEST_BYTES = MAX_SPEC_BYTES // 4


class Refused(UsageError):
    """A cancel, retry, approval or rejection that cannot apply to the job or pipeline as it now is: refused at once
    (exit 2, HTTP 409) rather than dropped for the daemon to ignore."""


RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED})


def job_actions(state: JobState, retry_waiting: bool = False) -> list[str]:
    """What may be asked of a job in this state: a retry only of a failed or cancelled job (and not
    twice), a cancel only of one that has not ended or that a waiting retry will run again."""
    actions = ["cancel"] if not state.terminal or retry_waiting else []
    actions += list(DECISIONS) if state is JobState.APPROVAL else []
    actions += ["retry"] if state in RETRYABLE and not retry_waiting else []
    return actions + (["rerun"] if state.terminal and not retry_waiting else [])


def pipeline_actions(state: PipelineState, retry_waiting: bool = False) -> list[str]:
    return ["cancel"] if not state.terminal or retry_waiting else []


def refusal(paths: PipelinePaths, action: str, job: str | None) -> str:
    """Why `action` cannot apply to the job (or the whole pipeline) now, or ''. Decided from the
    status files and the retries already waiting; the scheduler checks again when it applies the
    request, since the state may change in between."""
    # The inbox before the status: the daemon removes a request only once the status that records
    # it is written, so one that is gone from the inbox is seen in the status read after.
    retries = retries_waiting(paths)
    deciding = job is not None and action in DECISIONS and any(
        isinstance(r, Approve | Reject) and r.job == job for r in pending(paths))
    if job is None:
        state = read_pipeline_status(paths.status_file).state
        if action not in pipeline_actions(state, bool(retries)):
            return f"{paths.name} {_has(state)}; only a pipeline that has not ended can be cancelled"
        return ""
    status = read_job_status(paths.job_status_file(job), job)
    if action in DECISIONS:
        return _decision_refusal(paths, action, job, status.state, deciding)
    if action in job_actions(status.state, job in retries) or action not in ("cancel", "retry", "rerun"):
        return ""
    if action == "rerun":
        return _rerun_refusal(paths, job, status.state, job in retries)
    if action == "retry" and job in retries:
        return f"a retry of {paths.name}/{job} is already requested"
    if action == "retry":
        return f"{paths.name}/{job} {_has(status.state)}; only a failed or cancelled job can be retried"
    return f"{paths.name}/{job} {_has(status.state)}; only a job that has not ended can be cancelled"


def _decision_refusal(paths: PipelinePaths, action: str, job: str, state: JobState, deciding: bool) -> str:
    if deciding:
        return f"a decision on {paths.name}/{job} is already requested"
    if state is not JobState.APPROVAL:
        done = "approved" if action == "approve" else "rejected"
        return f"{paths.name}/{job} {_has(state)}; only a job waiting for approval can be {done}"
    return ""


def _rerun_refusal(paths: PipelinePaths, job: str, state: JobState, waiting: bool) -> str:
    if waiting:
        return f"a retry or re-run of {paths.name}/{job} is already requested"
    return f"{paths.name}/{job} {_has(state)}; only a job that has ended can be re-run"


def retries_waiting(paths: PipelinePaths) -> set[str]:
    """The jobs a retry or rerun request waits for: they will run again."""
    return {r.job for r in pending(paths) if isinstance(r, Retry | Rerun)}


def pipeline_actions_now(paths: PipelinePaths, retries: set[str]) -> list[str]:
    """What may be asked of the pipeline now; none while its status file cannot be read."""
    try:
        return pipeline_actions(read_pipeline_status(paths.status_file).state, bool(retries))
    except ClowderError:
        return []


def _has(state: JobState | PipelineState) -> str:
    if state is JobState.APPROVAL:
        return "is waiting for approval"
    if state in (JobState.SKIPPED, JobState.CANCELLED, PipelineState.CANCELLED):
        return f"was {state.value}"
    return f"has {state.value}" if state.terminal else f"is {state.value}"


def check(paths: PipelinePaths, action: str, job: str | None) -> None:
    reason = refusal(paths, action, job)
    if reason:
        raise Refused(reason)


def drop(root: Root, paths: PipelinePaths, action: str, job: str | None = None, **data: Any) -> Request:
    """Write a request file atomically and return it."""
    if action not in ACTIONS:
        raise UsageError(f"unknown request action {action!r}")
    if job is not None:
        check_name(job, "job")
    known.existing(paths)
    rid = f"{utcnow().strftime('%Y%m%dT%H%M%S%f')}-{os.getpid()}-{action}"
    body: dict[str, Any] = {"action": action, "created_at": utcnow(), **data}
    if job is not None:
        body["job"] = job
    text = tomli_w.dumps(body)
    if len(text.encode()) > MAX_REQUEST_BYTES:  # the daemon would refuse to read it
        raise UsageError(f"the {action} request would be {len(text.encode())} bytes, more than the "
                         f"{MAX_REQUEST_BYTES} a request may hold: give a shorter context")
    atomic_write(paths.requests_dir / f"{rid}.toml", text, root.tmp_dir)
    return _record(rid, action, job, body)


def pending(paths: PipelinePaths) -> list[Request]:
    """Requests waiting in the inbox, oldest first. Unreadable files (a FIFO, a device, one too
    large, a link out of the root, bad TOML) become `invalid` requests so the scheduler can report
    and consume them instead of tripping on them forever. A directory is not a request: it is
    neither read nor removed."""
    try:
        files = sorted(p for p in paths.requests_dir.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    out: list[Request] = []
    for f in files:
        try:
            data = tomllib.loads(read_input(f).decode())
        except (FileNotFoundError, IsADirectoryError):
            continue
        except OSError as e:
            out.append(Invalid(f.stem, f"{f}: <file>: cannot read: {e.strerror}"))
            continue
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            out.append(Invalid(f.stem, str(e)))
            continue
        except RecursionError:
            out.append(Invalid(f.stem, f"{f}: <toml>: nested too deeply"))
            continue
        out.append(_record(f.stem, data.pop("action", None), data.pop("job", None), data))
    return out


def _record(rid: str, action: object, job: object, data: Mapping[str, Any]) -> Request:
    """The typed request a file's table asks for, or why it cannot be one."""
    if action not in ACTIONS or (job is not None and not isinstance(job, str)):
        return Invalid(rid, f"bad action {action!r} or job {job!r}")
    if action == "cancel":
        return Cancel(rid, job if isinstance(job, str) else None)
    if not isinstance(job, str):
        return Invalid(rid, f"a {action} request names no job")
    if action == "retry":
        return Retry(rid, job)
    if action in DECISIONS:
        return _decision(rid, action, job, data)
    if action == "rerun":
        return Rerun(rid, job, data.get("downstream") is True)
    spawner, attempt = data.get("spawner"), data.get("attempt")
    if not isinstance(spawner, str) or not isinstance(attempt, int) or isinstance(attempt, bool):
        return Invalid(rid, f"a spawn request needs its spawner and attempt, got {spawner!r} and {attempt!r}")
    return Spawn(rid, job, spawner, attempt, str(data.get("reason", "")), str(data.get("context", "")))


def _decision(rid: str, action: str, job: str, data: Mapping[str, Any]) -> Request:
    by, at, comment = data.get("by"), data.get("created_at"), data.get("comment", "")
    if not isinstance(by, str) or not isinstance(comment, str) or not isinstance(at, datetime) or at.tzinfo is None:
        return Invalid(rid, f"an {action} request needs by, comment and created_at (with a UTC offset), "
                            f"got {by!r}, {comment!r} and {at!r}")
    return (Approve if action == "approve" else Reject)(rid, job, by, at, comment)


def decide(root: Root, paths: PipelinePaths, action: str, job: str, by: str, comment: str) -> Request:
    """Approve or reject a job waiting at its gate: checked now (a job not waiting is refused),
    dropped as a request file, and the daemon woken."""
    check(paths, action, job)
    r = drop(root, paths, action, job, by=by, comment=comment)
    wake(root, paths.name)
    return r


def request_file(paths: PipelinePaths, request_id: str) -> Path:
    return paths.requests_dir / f"{request_id}.toml"


def wake(root: Root, pipeline: str) -> None:
    """Nudge a daemon that stopped watching a finished pipeline (a request just arrived): it
    watches .clowder/wake/ always. Made after the request, so a daemon that takes the file and
    then reads the requests (`woken`) never misses one."""
    d = root.state_dir / "wake"
    d.mkdir(parents=True, exist_ok=True)
    (d / pipeline).touch()


def woken(root: Root, pipeline: str) -> None:
    """The daemon takes a pipeline's wake file before reading its requests: a poller opens every
    file there at each look, and a root's would pile up (one per pipeline that ever had a request).
    A request dropped meanwhile makes the file anew, after the request file, so it is seen."""
    with contextlib.suppress(FileNotFoundError):
        (root.state_dir / "wake" / pipeline).unlink()
