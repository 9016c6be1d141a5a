"""One broken pipeline never stops the others: when the step raises, find the pipelines it
raises on (and the job files it fails on, for the crash log) and schedule the others."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import assert_never

from clowder import schema
from clowder.scheduler import (
    Action,
    DoneRequest,
    Kill,
    Limits,
    PipelineView,
    Plan,
    Reuse,
    SetJob,
    SetPipeline,
    SpawnJob,
    Start,
    reconcile,
)
from clowder.spec import is_name
from clowder.tree import PipelinePaths

Broken = Callable[[str, str, Exception], None]  # (pipeline, what Clowder was doing, the error)


def reconcile_isolated(views: Mapping[str, tuple[PipelineView, PipelinePaths]], now: datetime, limits: Limits,
                       broken: Broken) -> Plan:
    """reconcile() over the views; if it raises, the pipelines it raises on are reported
    `broken` and the others are scheduled without them."""
    try:
        return reconcile([v for v, _ in views.values()], now, limits)
    except Exception:
        pass  # find which pipeline it fails on: rare, so each is tried alone
    kept: list[PipelineView] = []
    for view, paths in views.values():
        try:
            reconcile([view], now, limits)
        except Exception as e:
            broken(view.name, "scheduling it", _located(e, view, paths, now, limits))
        else:
            kept.append(view)
    try:
        return reconcile(kept, now, limits)
    except Exception:
        pass  # it fails only with others: add them one at a time
    together: list[PipelineView] = []
    for view in kept:
        try:
            reconcile([*together, view], now, limits)
        except Exception as e:
            broken(view.name, "scheduling it with the others", e)
        else:
            together.append(view)
    return reconcile(together, now, limits)


def _located(error: Exception, view: PipelineView, paths: PipelinePaths, now: datetime, limits: Limits) -> Exception:
    """The error with a note naming the job whose files the step fails on, found by stepping
    one job at a time (dependents first: a job's change also steps its dependents)."""
    try:
        reconcile([replace(view, focus=frozenset(), ready=())], now, limits)
    except Exception:
        error.add_note(f"{paths.status_file} or {paths.requests_dir}")
        return error
    order = list(reversed(view.pipeline.order)) if view.pipeline else []
    for job in order + sorted(set(view.jobs) - set(order)):
        try:
            reconcile([replace(view, focus=frozenset({job}), ready=())], now, limits)
        except Exception:
            error.add_note(f"job {job}: {paths.job_status_file(job)}, {paths.job_file(job)}")
            break
    return error


def note_spec_file(error: Exception, paths: PipelinePaths) -> None:
    """Add a note naming the spec file that reading fails on, if one alone does."""
    for path in (paths.spec_file, *(paths.job_file(name) for name in paths.job_names() if is_name(name))):
        try:
            schema.load_toml(path)
        except Exception:
            error.add_note(str(path))
            return


def job_of(action: Action) -> str | None:
    match action:
        case SetJob(status=status):
            return status.job
        case Start(job=job) | Kill(job=job) | Reuse(job=job):
            return job
        case SpawnJob(spawner=spawner):
            return spawner
        case SetPipeline() | DoneRequest():
            return None
        case _:
            assert_never(action)
