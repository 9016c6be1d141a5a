"""The driver's cache of a pipeline: its specs and statuses as last read, kept in step with what
the driver writes (it is their only writer), and what reading them again after a restart finds."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from clowder import workspace
from clowder.errors import ClowderError
from clowder.executor import ExitRecord, Run, run_file
from clowder.scheduler import Outcome, PipelineView, ReadyQueue, Request, prompt_hash
from clowder.spec import Pipeline, format_duration, is_name
from clowder.stamp import Stamp
from clowder.state import (
    Attempt,
    JobState,
    JobStatus,
    PipelineState,
    PipelineStatus,
    Trigger,
    read_job_status,
    read_pipeline_status,
    utcnow,
)
from clowder.storage import fresh_stat
from clowder.tree import PipelinePaths


def with_source_warning(paths: PipelinePaths, status: PipelineStatus) -> PipelineStatus:
    """The status as written: its message says what the user should know about the source the
    pipeline started from (uncommitted changes left out). The scheduler's own status, kept in
    the cache, stays without it, so the two never differ in a way that asks for a rewrite."""
    record = workspace.read_record(paths.workspaces_dir)
    if record is None or not record.warning:
        return status
    message = "; ".join(x for x in (status.message, f"warning: {record.warning}") if x)
    return replace(status, message=message)


@dataclass
class PipelineCache:
    """The driver's cache of one pipeline. Statuses are read once and then kept in step with
    what this driver writes: it is their only writer."""

    paths: PipelinePaths
    stamp: Stamp = ()
    pipeline: Pipeline | None = None
    problems: tuple[str, ...] = ()
    status: PipelineStatus = field(default_factory=PipelineStatus)
    jobs: dict[str, JobStatus] = field(default_factory=dict)
    requests: tuple[Request, ...] = ()
    outcomes: dict[str, tuple[int, Outcome]] = field(default_factory=dict)
    alive: dict[str, bool | None] = field(default_factory=dict)
    loaded: bool = False
    full: bool = True  # the next reconcile looks at every job
    active: set[str] = field(default_factory=set)  # jobs running, retrying, waiting or queued
    ready: ReadyQueue = field(default_factory=ReadyQueue)  # jobs that could start but got no slot
    settle_until: datetime | None = None  # its invalid spec is being written: read it again then
    broken: str = ""  # why Clowder failed on it: left alone until its files change or the sweep
    output_at: dict[str, datetime] = field(default_factory=dict)  # job -> its log's last write, when looked at
    # A broken pipeline read anew: what this driver last decided of each job. Its own decisions
    # outrank the files, whose writes may be what failed (the job then ran and ended unrecorded).
    decided: dict[str, JobStatus] = field(default_factory=dict)
    _hashed: tuple[str | None, str] = (None, "")  # the prompt last hashed, and its hash

    def view(self) -> PipelineView:
        outcomes = {job: o for job, (n, o) in self.outcomes.items()
                    if job in self.jobs and self.jobs[job].state is JobState.RUNNING and self.jobs[job].attempt == n}
        focus = None if self.full else frozenset(self.active | set(outcomes))
        # The cache's own maps, not copies: the step only reads them, and copying every job's
        # status on every tick made a tick's cost grow with the pipeline, not with what changed.
        return PipelineView(self.paths.name, self.pipeline, self.problems, self.status, self.jobs,
                            outcomes, self.alive, self.requests, focus, self.ready,
                            settling=self.settle_until is not None, output_at=self.output_at)

    def look_for_output(self, now: datetime) -> None:
        """Note when each running attempt whose idle deadline is due last wrote to its log. Only
        those are looked at: a stat of every running job's log on every tick would cost a root
        running many jobs dearly, and the scheduler wakes the loop at each idle deadline."""
        for job in self.active:
            status = self.jobs.get(job)
            spec = self.pipeline.jobs.get(job) if self.pipeline else None
            last = status.last if status is not None and status.state is JobState.RUNNING else None
            if spec is None or spec.idle_timeout is None or last is None or last.started_at is None:
                continue
            seen = self.output_at.get(job)
            quiet_since = max(last.started_at, seen) if seen is not None else last.started_at
            if quiet_since + timedelta(seconds=spec.idle_timeout) > now:
                continue
            with contextlib.suppress(OSError):  # no log yet: quiet since it started
                # Opened, not stat()ed: an attempt on another machine writes it, and NFS may answer a
                # stat() from an attribute cache up to a minute old (a busy log taken for idle).
                mtime = fresh_stat(self.paths.log_file(job, last.number)).st_mtime
                written = datetime.fromtimestamp(mtime, UTC)
                # Never earlier than what was seen: after a step of the clock, what was seen moved with
                # it (driver/clock) and the log's time, written before the step, did not.
                self.output_at[job] = max(written, seen) if seen is not None else written

    def read_statuses(self, say: Callable[[str], None]) -> None:
        """First sight of the pipeline (or a restart): its status files as they are on disk. One
        that is not a valid status file is said and started afresh (its attempts' own records
        rebuild what they can)."""
        self.loaded = True
        paths = self.paths
        try:
            self.status = read_pipeline_status(paths.status_file)
        except ClowderError as e:
            say(f"{paths.name}: {e}; starting its status afresh")
        if not paths.status_dir.is_dir():
            return
        for f in sorted(paths.status_dir.glob("*.toml")):
            if not is_name(f.stem):
                continue
            try:
                self.jobs[f.stem] = read_job_status(f, f.stem)
            except ClowderError as e:
                say(f"{paths.name}/{f.stem}: {e}; starting its status afresh")
            except Exception as e:
                e.add_note(str(f))  # the pipeline is marked broken, naming this file
                raise

    def take_spec(self, pipeline: Pipeline | None, problems: tuple[str, ...], settle: float,
                  say: Callable[[str], None]) -> None:
        """The spec as just read: the last one that validated is kept; an invalid one that is
        being written (changed within `settle`) is read again once it has settled."""
        self.problems = problems
        if pipeline is not None:
            self.pipeline = pipeline
        settling = self.settle_until is not None
        self.settle_until = settle_until(self.paths, self.stamp, settle) if problems else None
        if problems and self.settle_until is None:
            say(f"{self.paths.name}: invalid spec: {problems[0]}")
        elif problems and not settling:
            say(f"{self.paths.name}: spec invalid while being written ({problems[0]}); "
                f"reading it again once it is unchanged for {format_duration(settle)}")

    def set_job(self, status: JobStatus) -> None:
        self.jobs[status.job] = status
        if status.state.terminal or status.state is JobState.PENDING:
            self.active.discard(status.job)
        else:
            self.active.add(status.job)

    def finished(self) -> bool:
        return self.status.state.terminal and not any(j.state is JobState.RUNNING for j in self.jobs.values())

    def settled(self) -> bool:
        """Finished for good: not stopped by a spec problem or a changed prompt, which an edit
        can mend (the pipeline then resumes), so such a pipeline stays watched."""
        if not self.finished() or self.problems:
            return False
        if self.pipeline is None or not self.status.prompt_hash:
            return True
        if self._hashed[0] is not self.pipeline.spec.prompt:  # a SHA-256 per tick showed in the profile
            self._hashed = (self.pipeline.spec.prompt, prompt_hash(self.pipeline.spec.prompt))
        return self.status.prompt_hash == self._hashed[1]

    def quiet(self) -> bool:
        """Nothing for a tick to look at until its files change: it ended for good (or is
        broken), with no request, attempt end or spec being written still to take in."""
        if self.settle_until is not None:
            return False
        if self.broken:  # left alone until its files change or the sweep
            return True
        return not (self.requests or self.outcomes or self.full) and self.settled()

    def stopped(self) -> bool:
        """Nothing more happens here without a human: it has ended, or it is blocked by a file
        that stayed invalid and none of its attempts still runs (`clowder run` is done with it)."""
        if self.broken:
            return True
        if self.settle_until is not None:
            return False
        halted = self.status.state is PipelineState.BLOCKED
        return (self.status.state.terminal or halted) and not any(
            j.state is JobState.RUNNING for j in self.jobs.values())


def before_last(status: JobStatus) -> JobStatus:
    """The job as it was before its last attempt was recorded, so that the scheduler starts that
    attempt again: the same number, and the same trigger (a retry still counts as one)."""
    last = status.last
    if last is None:  # a hand-edited status: the scheduler starts the job over
        return status
    before = replace(status, attempt=status.attempt - 1, attempts=status.attempts[:-1], message="", retry_at=None,
                     killing=None)
    if last.trigger is Trigger.RETRY:
        return replace(before, state=JobState.RETRYING)
    if last.trigger is Trigger.REGRESSION:
        return replace(before, state=JobState.WAITING, waiting_for=status.spawned)
    if last.trigger is Trigger.MANUAL and last.request:
        return replace(before, state=JobState.PENDING, retry_request=last.request)
    return replace(before, state=JobState.PENDING)


def run_of(paths: PipelinePaths, job: str, attempt: int) -> Run:
    """The attempt as the executor knows it, enough to find it again (no command)."""
    log = paths.log_file(job, attempt)
    return Run(paths.name, job, attempt, (), paths.workspace(job), {}, log, run_file(log))


def catch_up(cache: PipelineCache, exit_record: Callable[[Run], ExitRecord | None], say: Callable[[str], None]) -> None:
    """Attempts launched after the last status write that reached the disk (the daemon
    died first) still left their log files: put them back into the job's status."""
    logs = cache.paths.logs_dir
    if not logs.is_dir():
        return
    for d in sorted(logs.iterdir()):
        if not is_name(d.name):
            continue
        numbers = sorted(int(f.stem) for f in d.glob("*.log") if f.stem.isdigit())
        status = cache.jobs.get(d.name, JobStatus(d.name))
        missing = [n for n in numbers if n > status.attempt]
        if not missing:
            continue
        attempts = list(status.attempts)
        for n in missing:
            log = d / f"{n}.log"
            started = datetime.fromtimestamp(log.stat().st_mtime, UTC)
            trigger = Trigger.START if n == 1 else Trigger.RETRY
            if n == missing[-1]:
                attempts.append(Attempt(n, JobState.RUNNING, started, trigger=trigger))
                continue
            record = exit_record(run_of(cache.paths, d.name, n))
            state = JobState.LOST if record is None else (
                JobState.SUCCEEDED if record.exit_code == 0 else JobState.FAILED)
            attempts.append(Attempt(n, state, started, record.ended_at if record else started,
                                    exit_code=record.exit_code if record else None, trigger=trigger))
        cache.jobs[d.name] = replace(status, state=JobState.RUNNING, attempt=missing[-1],
                                     attempts=tuple(attempts), retry_at=None)
        say(f"{cache.paths.name}/{d.name}: found attempt {missing[-1]} launched before the last "
                 "daemon stopped")



def settle_until(paths: PipelinePaths, stamp: Stamp, window: float) -> datetime | None:
    """When to read an invalid spec again, if one of its files changed within `settle` (an
    editor or a shell may be writing it in place); None when it has been quiet that long."""
    newest = max((mtime for _, mtime, _ in stamp), default=0)
    # A file renamed away (an editor's backup) or removed shows in its directory's mtime.
    dirs = [paths.jobs_dir] + ([] if paths.spec_file.exists() else [paths.dir])
    for d in dirs:
        try:
            newest = max(newest, d.stat().st_mtime_ns)
        except OSError:
            continue
    changed = datetime.fromtimestamp(newest / 1e9, UTC)
    age = (utcnow() - changed).total_seconds()
    # A time in the future (a clock set back, `touch -d`) is trusted for one window at most.
    return changed + timedelta(seconds=window) if abs(age) < window else None

