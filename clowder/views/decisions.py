"""The scheduler's decisions over the tree as it is, for `clowder why` and `clowder run --dry-run`:
the pipelines read as the daemon reads them, given to the pure scheduler, and nothing written
(no lock, no status, no request consumed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from clowder import known, requests
from clowder.errors import ClowderError
from clowder.scheduler import Limits, PipelineView
from clowder.scheduler.dry_run import Simulation, simulate
from clowder.scheduler.why import Why, decide, explain
from clowder.state import JobState, JobStatus, PipelineStatus, read_job_status, read_pipeline_status, utcnow
from clowder.tree import PipelinePaths, Root, is_name
from clowder.views.tree import load_specs


def limits(root: Root, max_parallel: int | None = None) -> Limits:
    from clowder.validate import load_config

    config = load_config(root)
    return Limits(max_parallel=max_parallel or config.max_parallel, resources=config.resources,
                  heartbeat_timeout=config.heartbeat_timeout, kill_grace=config.kill_grace)


def view_of(root: Root, paths: PipelinePaths) -> PipelineView:
    """One pipeline as the daemon would see it on reading it: its specs, statuses and requests.
    A running attempt is taken as alive: whether its process still runs is the daemon's to find."""
    pipeline, problems = load_specs(root, paths)
    jobs = _statuses(paths)
    alive: dict[str, bool | None] = {j: True for j, s in jobs.items() if s.state is JobState.RUNNING}
    return PipelineView(paths.name, pipeline, tuple(str(p) for p in problems), _pipeline_status(paths), jobs,
                        alive=alive, requests=tuple(requests.pending(paths)))


# A status file that cannot be read is started afresh, as the daemon does (it says so in its log).

def _pipeline_status(paths: PipelinePaths) -> PipelineStatus:
    try:
        return read_pipeline_status(paths.status_file)
    except ClowderError:
        return PipelineStatus()


def _statuses(paths: PipelinePaths) -> dict[str, JobStatus]:
    if not paths.status_dir.is_dir():
        return {}
    out = {}
    for f in sorted(paths.status_dir.glob("*.toml")):
        with contextlib.suppress(ClowderError):
            if is_name(f.stem):
                out[f.stem] = read_job_status(f, f.stem)
    return out


def views(root: Root, named: Iterable[str]) -> list[PipelineView]:
    """The named pipelines, and every other one that may hold a slot (has not ended): slots and
    pools are shared by the whole root."""
    named = list(dict.fromkeys(named))
    others = [n for n in root.pipeline_names() if is_name(n) and n not in named and _unfinished(root, n)]
    # Another pipeline's missing pipeline.toml is its own problem (it is blocked), not this command's.
    return [view_of(root, known.pipeline(root, n)) for n in named] + [view_of(root, root.pipeline(n)) for n in others]


def _unfinished(root: Root, name: str) -> bool:
    try:
        return not read_pipeline_status(root.pipeline(name).status_file).state.terminal
    except ClowderError:  # an unreadable status: the daemon would start it afresh, so it may hold slots
        return True


def why(root: Root, pipeline: str, job: str, now: datetime | None = None) -> Why:
    """Why JOB of PIPELINE is where it is: the decision the scheduler takes about it now."""
    paths = known.pipeline(root, pipeline)
    known.job(paths, job)
    now = now or utcnow()
    seen = views(root, [pipeline])
    lim = limits(root)
    return explain(seen[0], job, decide(seen, now, lim), lim, now)


def why_json(w: Why) -> dict[str, Any]:
    return {"pipeline": w.pipeline, "job": w.job, "state": w.state.value, "verdict": w.verdict.value,
            "cause": w.cause.value, "reason": w.reason, "subject": w.subject or None,
            "at": w.at.isoformat() if w.at else None}


def dry_run(root: Root, names: Iterable[str], max_parallel: int | None = None,
            now: datetime | None = None) -> Simulation:
    """What `clowder run NAMES` would run, in order and why, each attempt taken to succeed."""
    seen = [view_of(root, known.pipeline(root, n)) for n in dict.fromkeys(names)]
    return simulate(seen, now or utcnow(), limits(root, max_parallel))


def dry_run_lines(sim: Simulation) -> list[str]:
    """The dry run as `clowder run --dry-run` prints it."""
    lines = ["dry run: nothing is started or written; each attempt is taken to succeed"]
    for p in sim.starts:
        later = f" (at {p.at:%Y-%m-%d %H:%M:%S} UTC)" if p.at > sim.since else ""  # after a backoff
        lines.append(f"{p.step:>3}. {p.why.pipeline}/{p.why.job}{later}: {p.why.reason}")
    lines += [f"not run: {w.pipeline}/{w.job} ({w.state.value}): {w.reason}" for w in sim.not_run]
    for name, status in sim.ends.items():
        verb = "would end" if status.state.terminal else "would stay"
        lines.append(f"{name} {verb} {status.state.value}" + (f": {status.message}" if status.message else ""))
    return lines
