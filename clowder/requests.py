"""Requests: cancel, retry and spawn asks dropped as files in a pipeline's requests/ inbox, so
they work whether or not a daemon is running. The scheduler consumes them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli as tomllib  # the standard library's parser, compiled with mypyc: twice as fast
import tomli_w

from clowder.errors import UsageError
from clowder.fsio import atomic_write
from clowder.spec import check_name
from clowder.state import utcnow
from clowder.tree import PipelinePaths, Root

ACTIONS = ("cancel", "retry", "spawn")


@dataclass(frozen=True)
class Request:
    id: str  # the file's stem: sortable by creation time
    action: str
    job: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


def drop(root: Root, paths: PipelinePaths, action: str, job: str | None = None, **data: Any) -> Request:
    """Write a request file atomically and return it."""
    if action not in ACTIONS:
        raise UsageError(f"unknown request action {action!r}")
    if job is not None:
        check_name(job, "job")
    if not paths.spec_file.is_file():
        raise UsageError(f"{paths.dir}: no such pipeline")
    rid = f"{utcnow().strftime('%Y%m%dT%H%M%S%f')}-{os.getpid()}-{action}"
    body: dict[str, Any] = {"action": action, "created_at": utcnow(), **data}
    if job is not None:
        body["job"] = job
    atomic_write(paths.requests_dir / f"{rid}.toml", tomli_w.dumps(body), root.tmp_dir)
    return Request(rid, action, job, data)


def pending(paths: PipelinePaths) -> list[Request]:
    """Requests waiting in the inbox, oldest first. Unreadable files become `invalid` requests
    so the scheduler can report and consume them instead of tripping on them forever."""
    try:
        files = sorted(p for p in paths.requests_dir.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for f in files:
        try:
            data = tomllib.loads(f.read_text())
        except FileNotFoundError:
            continue
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            out.append(Request(f.stem, "invalid", None, {"error": str(e)}))
            continue
        action = data.pop("action", None)
        job = data.pop("job", None)
        if action not in ACTIONS or (job is not None and not isinstance(job, str)):
            out.append(Request(f.stem, "invalid", None, {"error": f"bad action {action!r} or job {job!r}"}))
            continue
        out.append(Request(f.stem, action, job, data))
    return out


def request_file(paths: PipelinePaths, request_id: str) -> Path:
    return paths.requests_dir / f"{request_id}.toml"


def consume(paths: PipelinePaths, request_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (paths.requests_dir / f"{request_id}.toml").unlink()


def wake(root: Root, pipeline: str) -> None:
    """Nudge a daemon that stopped watching a finished pipeline (a request just arrived): it
    watches .clowder/wake/ always."""
    d = root.state_dir / "wake"
    d.mkdir(parents=True, exist_ok=True)
    (d / pipeline).touch()
