"""Following another process's scheduling from the status files it writes: the decision lines
`clowder run` prints when a daemon does the work, derived from what changed between two looks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from clowder.errors import ClowderError
from clowder.state import JobState, JobStatus, PipelineState, PipelineStatus, read_job_status, read_pipeline_status
from clowder.tree import PipelinePaths, Root
from clowder.views.cache import FileKey, file_key


@dataclass
class _Seen:
    """What the last look found of one pipeline."""

    paths: PipelinePaths
    status: PipelineStatus | None = None
    stamp: FileKey | None = None
    jobs: dict[str, JobStatus] = field(default_factory=dict)
    stamps: dict[str, FileKey] = field(default_factory=dict)


class Follower:
    """Reads only the status files that changed since the last look and says what happened in
    between, as lines like the scheduler's own. A file is looked at by opening it (an open and an
    fstat per file): the daemon followed may write on another machine, and NFS answers a stat()
    from its attribute cache, where a replaced status file can look unchanged for a minute."""

    def __init__(self, root: Root, names: list[str]) -> None:
        self.seen = {name: _Seen(root.pipeline(name)) for name in names}

    def look(self) -> list[str]:
        lines: list[str] = []
        for name, seen in self.seen.items():
            lines.extend(self._look_pipeline(name, seen))
        return lines

    def ended(self) -> bool:
        """Every pipeline has ended, or is halted (blocked or broken) with nothing of it running:
        nothing more happens there without a human, as when `clowder run` schedules itself."""
        return all(s.status is not None and (s.status.state.terminal or (
            s.status.state.halted and not any(j.state is JobState.RUNNING for j in s.jobs.values())))
            for s in self.seen.values())

    def succeeded(self) -> bool:
        return all(s.status is not None and s.status.state is PipelineState.SUCCEEDED for s in self.seen.values())

    def statuses(self) -> list[tuple[str, PipelineStatus, list[JobStatus]]]:
        """Each pipeline's status and its jobs' (a job with no status file yet: pending)."""
        return [(name, seen.status or PipelineStatus(),
                 [seen.jobs.get(job) or JobStatus(job) for job in sorted(set(seen.paths.job_names()) | set(seen.jobs))])
                for name, seen in self.seen.items()]

    def _look_pipeline(self, name: str, seen: _Seen) -> list[str]:
        old_status = seen.status
        stamp = file_key(seen.paths.status_file)
        if seen.status is None or stamp != seen.stamp:
            try:
                seen.status = read_pipeline_status(seen.paths.status_file)
                seen.stamp = stamp
            except ClowderError:  # being replaced, or broken by hand: the daemon says which
                seen.status = seen.status or PipelineStatus()
        events: list[tuple[float, str]] = []
        for job, job_stamp in _status_stamps(seen.paths).items():
            if seen.stamps.get(job) == job_stamp:
                continue
            try:
                new = read_job_status(seen.paths.job_status_file(job), job)
            except ClowderError:
                continue
            seen.stamps[job] = job_stamp
            events.extend(job_events(seen.jobs.get(job), new, job_stamp.mtime_ns / 1e9))
            seen.jobs[job] = new
        # Several jobs may have moved since the last look: tell it in the order it happened.
        job_lines = [f"{name}/{line}" for _, line in sorted(events, key=lambda e: e[0])]
        state_line = _pipeline_line(old_status, seen.status)
        if not state_line:
            return job_lines
        # A pipeline starts before its jobs and ends after them.
        line = f"{name}: {state_line}"
        return [*job_lines, line] if seen.status.state.terminal else [line, *job_lines]


def job_events(old: JobStatus | None, new: JobStatus, written: float) -> list[tuple[float, str]]:
    """What happened to a job between two readings of its status (`old` None: the first), with
    when (epoch seconds; `written`, the status file's time, where the attempts do not say)."""
    events = []
    # The first reading shows the latest attempt only: its history is not news.
    known = old.attempt if old is not None else max(new.attempt - 1, 0)
    for attempt in new.attempts:
        if attempt.number <= known:
            continue
        how = "" if attempt.trigger == "start" else f" ({attempt.trigger})"
        started = attempt.started_at.timestamp() if attempt.started_at is not None else written
        events.append((started, f"{new.job} started attempt {attempt.number}{how}"))
        if attempt.number < new.attempt and attempt.state.terminal and attempt.ended_at:  # ended between looks
            events.append((attempt.ended_at.timestamp(),
                           f"{new.job} attempt {attempt.number} {attempt.state.value}: {attempt.message}"))
    if old is None or (old.state, old.attempt, old.message) != (new.state, new.attempt, new.message):
        line = _state_line(new)
        last = new.last
        when = last.ended_at.timestamp() if last is not None and last.ended_at is not None else written
        if line:
            events.append((max(when, events[-1][0]) if events else when, f"{new.job} {line}"))
    return events


def _state_line(s: JobStatus) -> str:
    match s.state:
        case JobState.RUNNING:
            return ""  # its `started` line says so
        case JobState.SUCCEEDED:
            return f"succeeded (attempt {s.attempt})"
        case JobState.FAILED:
            return f"failed: {s.message.removeprefix(f'attempt {s.attempt} failed: ')}"
        case JobState.RETRYING:
            return s.message  # `attempt 1 failed: …; retry 1 of 2 in 10s`
        case JobState.WAITING:
            return f"waiting for {', '.join(s.waiting_for)}"
        case JobState.CANCELLED:
            return "cancelled"
        case _:
            return f"{s.state.value}: {s.message}" if s.message else ""


def _pipeline_line(old: PipelineStatus | None, new: PipelineStatus | None) -> str:
    if new is None or (old is not None and (old.state, old.message) == (new.state, new.message)):
        return ""
    if old is None and new.state is PipelineState.PENDING:
        return ""
    return f"pipeline {new.state.value}" + (f": {new.message}" if new.message and new.state.terminal else "")


def _status_stamps(paths: PipelinePaths) -> dict[str, FileKey]:
    out: dict[str, FileKey] = {}
    try:
        with os.scandir(paths.status_dir) as it:  # opening the directory lists it afresh on NFS too
            for e in it:
                if e.name.endswith(".toml") and not e.name.startswith("."):
                    key = file_key(e.path)
                    if key is not None:
                        out[e.name[:-5]] = key
    except FileNotFoundError:
        pass
    return out
