"""The scheduler's driver: feeds `reconcile` from the tree, applies its actions (status writes,
process starts and kills), and sleeps until a file event, a process exit or a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from glob import glob
from pathlib import Path
from typing import TextIO, assert_never

from clowder import diskfull, regression, schema, workspace
from clowder import requests as req_mod
from clowder.artifacts import write_metadata
from clowder.crash import describe, write_crash_log
from clowder.errors import ClowderError, DiskFull, LockHeld
from clowder.executor import Executor, Launch, LocalExecutor, read_exit, read_pid, run_file
from clowder.fsio import Writer, atomic_write, try_lock
from clowder.harness import agent as harness_agent
from clowder.recorder import Recorder
from clowder.scheduler import (
    NO_CHANGES,
    Action,
    DoneRequest,
    Kill,
    Limits,
    Outcome,
    PipelineView,
    Plan,
    SetJob,
    SetPipeline,
    SpawnJob,
    Start,
    killed_why,
    prompt_hash,
    reconcile,
)
from clowder.spec import Config, JobSpec, Pipeline, Source, format_duration, is_name
from clowder.stamp import Stamp, spec_stamp
from clowder.state import (
    Attempt,
    JobState,
    JobStatus,
    PipelineState,
    PipelineStatus,
    job_status_to_toml,
    pipeline_status_to_toml,
    read_job_status,
    read_pipeline_status,
    utcnow,
)
from clowder.tree import PipelinePaths, Root
from clowder.validate import check_pipeline, load_config
from clowder.watcher import Watcher

Log = Callable[[str], None]


def _with_source_warning(paths: PipelinePaths, status: PipelineStatus) -> PipelineStatus:
    """The status as written: its message says what the user should know about the source the
    pipeline started from (uncommitted changes left out). The scheduler's own status, kept in
    the cache, stays without it, so the two never differ in a way that asks for a rewrite."""
    record = workspace.read_record(paths.workspaces_dir)
    if record is None or not record.warning:
        return status
    message = "; ".join(x for x in (status.message, f"warning: {record.warning}") if x)
    return replace(status, message=message)


def stderr_log(stream: TextIO | None = None, log_file: Path | None = None) -> Log:
    """Timestamped decision lines to stderr and, if given, appended to a file."""
    out = stream or sys.stderr
    handle = log_file.open("a", buffering=1) if log_file else None
    lock = threading.Lock()

    def log(line: str) -> None:
        text = f"{utcnow().isoformat(timespec='milliseconds').replace('+00:00', 'Z')} {line}"
        with lock:
            print(text, file=out, flush=True)
            if handle:
                try:
                    print(text, file=handle)
                except OSError:  # a full disk: the line is on stderr; the daemon goes on
                    pass

    return log


@dataclass
class _Pipeline:
    """The driver's cache of one pipeline. Statuses are read once and then kept in step with
    what this driver writes: it is their only writer."""

    paths: PipelinePaths
    stamp: Stamp = ()
    pipeline: Pipeline | None = None
    problems: tuple[str, ...] = ()
    status: PipelineStatus = field(default_factory=PipelineStatus)
    jobs: dict[str, JobStatus] = field(default_factory=dict)
    requests: tuple[req_mod.Request, ...] = ()
    outcomes: dict[str, tuple[int, Outcome]] = field(default_factory=dict)
    alive: dict[str, bool | None] = field(default_factory=dict)
    loaded: bool = False
    full: bool = True  # the next reconcile looks at every job
    active: set[str] = field(default_factory=set)  # jobs running, retrying, waiting or queued
    ready: list[str] = field(default_factory=list)  # jobs that could start but got no slot, in order
    settle_until: datetime | None = None  # its invalid spec is being written: read it again then
    broken: str = ""  # why Clowder failed on it: left alone until its files change or the sweep
    output_at: dict[str, datetime] = field(default_factory=dict)  # job -> its log's last write, when looked at

    def view(self) -> PipelineView:
        outcomes = {job: o for job, (n, o) in self.outcomes.items()
                    if job in self.jobs and self.jobs[job].state is JobState.RUNNING and self.jobs[job].attempt == n}
        focus = None if self.full else frozenset(self.active | set(outcomes))
        return PipelineView(self.paths.name, self.pipeline, self.problems, self.status, dict(self.jobs),
                            outcomes, dict(self.alive), self.requests, focus, tuple(self.ready),
                            settling=self.settle_until is not None, output_at=dict(self.output_at))

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
                mtime = self.paths.log_file(job, last.number).stat().st_mtime
                self.output_at[job] = datetime.fromtimestamp(mtime, UTC)

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
        changed_prompt = (self.pipeline is not None and bool(self.status.prompt_hash)
                          and self.status.prompt_hash != prompt_hash(self.pipeline.spec.prompt))
        return self.finished() and not self.problems and not changed_prompt

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


class Driver:
    """Runs the scheduler over a root: `serve()` until stopped (the daemon), or until the
    selected pipelines end (`clowder run`)."""

    def __init__(
        self,
        root: Root,
        config: Config | None = None,
        max_parallel: int | None = None,
        only: Iterable[str] | None = None,
        log: Log | None = None,
        poll: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self.root = root
        self.config = config or load_config(root)
        self.limits = Limits(
            max_parallel=max_parallel or self.config.max_parallel,
            resources=self.config.resources,
            heartbeat_timeout=self.config.heartbeat_timeout,
            kill_grace=self.config.kill_grace,
        )
        self.only = set(only) if only is not None else None
        self.log = log or stderr_log()
        self.poll = poll
        self.events: queue.SimpleQueue[tuple[str, str, str, int, Outcome | None]] = queue.SimpleQueue()
        self.executor: Executor = executor or LocalExecutor(self._on_exit)
        self.pipelines: dict[str, _Pipeline] = {}
        self.dirty: set[str] = set()
        self.stopping = threading.Event()
        self.watcher: Watcher | None = None
        self._own: set[tuple[str, str, int]] = set()
        self._write_failures: queue.SimpleQueue[tuple[Path, OSError]] = queue.SimpleQueue()
        self._crashes: dict[str, tuple[str, str]] = {}  # pipeline -> (what failed, its status message)
        self.writer: Writer | None = None
        self._launcher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="clowder-launch")
        self._launching: dict[tuple[str, str, int], Future[None]] = {}
        self.on_tick: Callable[[Driver], None] | None = None
        # The index; inactive until serve(). Its thread wakes the loop when the file was swapped.
        self.recorder = Recorder(root, self.log, wake=lambda: self.events.put(("wake", "", "", 0, None)))
        # A full disk pauses launching; what it held back waits here until space is back.
        self.space = diskfull.Space(root.tmp_dir, self.log, on_space=self._space_back, stopping=self.stopping)
        self._held: queue.SimpleQueue[_Held | SpawnJob] = queue.SimpleQueue()

    # -- events ---------------------------------------------------------------------------

    def _notify(self, kind: str, pipeline: str) -> None:
        self.events.put((kind, pipeline, "", 0, None))

    def _on_exit(self, pipeline: str, job: str, attempt: int) -> None:
        """Called from a waiter thread when an attempt's process is gone."""
        try:
            outcome = self._observe_end(pipeline, job, attempt)
        except Exception as e:  # the attempt still ends, failed, with why: never left `running`
            path = write_crash_log(self.root.state_dir, e, f"clowder daemon: the end of {pipeline}/{job} #{attempt}")
            outcome = Outcome(None, utcnow(), problem=f"Clowder failed recording how it ended: {describe(e)}"
                              + (f"; traceback in {path}" if path else ""))
        self.events.put(("exit", pipeline, job, attempt, outcome))

    def stop(self) -> None:
        self.stopping.set()
        self.events.put(("stop", "", "", 0, None))

    # -- the loop -------------------------------------------------------------------------

    def serve(self, until_done: bool = False, sweep: float | None = None, announce: str = "") -> bool:
        """Schedule until stopped, or (until_done) until every selected pipeline has ended.
        Returns True if all selected pipelines succeeded. `announce` is logged once the lock is
        held: a daemon that does not get it never said it served."""
        # The lock is on the root directory itself: a lock on .clowder/watch.lock was undone by
        # deleting the file (a second daemon then ran attempts twice). The file only says who holds it.
        with try_lock(self.root.path) as got:
            if not got:
                raise LockHeld(f"{self.root.lock_file}: another clowder daemon is serving this root "
                               f"(pid {self._lock_owner()}); stop it first or let it run the pipelines")
            self._claim_lock_file()
            if announce:
                self.log(announce)
            return self._serve_locked(until_done, sweep if sweep is not None else self.config.sweep_interval)

    def _claim_lock_file(self) -> None:
        """Say in .clowder/watch.lock that this process serves the root (messages, the index)."""
        mine = f"{os.getpid()}\n"
        try:
            if self.root.lock_file.read_text() == mine:
                return
        except OSError:
            pass
        try:
            atomic_write(self.root.lock_file, mine, self.root.tmp_dir)
        except OSError as e:  # only information: the lock itself is held
            self.log(f"cannot write {self.root.lock_file}: {e}")

    def _lock_owner(self) -> str:
        try:
            return self.root.lock_file.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def _serve_locked(self, until_done: bool, sweep: float) -> bool:
        self.root.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.space.give_up, self.space.on_give_up = until_done, self.stop  # `clowder run` stops on a full disk
        self.writer = Writer(self.root.tmp_dir, on_full=self.space.wait_for_space, on_error=self._write_failed)
        self.watcher = Watcher(self.root, self._notify, poll=self.poll)
        self.watcher.start()
        self.recorder.start()
        try:
            self._rescan()
            next_sweep = utcnow() + timedelta(seconds=sweep)
            while not self.stopping.is_set():
                wake_at = self.tick()
                if until_done and self._selected_done():
                    break
                now = utcnow()
                if now >= next_sweep:
                    self._sweep()
                    next_sweep = now + timedelta(seconds=sweep)
                    continue
                deadline = min(x for x in (wake_at, next_sweep) if x is not None)
                self._wait((deadline - now).total_seconds())
        finally:
            self.watcher.stop()
            self._launcher.shutdown(wait=True)
            self.executor.shutdown()
            self.writer.close()
            if self.writer.dropped:
                self.log(f"{self.writer.dropped} status write(s) not made for lack of space; the next start "
                         "re-derives them from the attempts' own records")
            self.recorder.close()  # after the writer: it stamps the status files as they are on disk
        if self.space.error is not None:
            raise self.space.error
        return self._selected_succeeded()

    def _wait(self, timeout: float) -> None:
        try:
            event = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return
        self._handle(event)
        while True:  # drain whatever else arrived: one reconcile for a burst of events
            try:
                self._handle(self.events.get_nowait())
            except queue.Empty:
                return

    def _write_failed(self, path: Path, error: OSError) -> None:
        """Called from the writer's thread: a file of the tree could not be written (not for lack
        of space). Its pipeline is marked broken in the loop's thread."""
        self._write_failures.put((path, error))
        self.events.put(("write-failed", "", "", 0, None))

    def _handle_write_failures(self) -> None:
        while True:
            try:
                path, error = self._write_failures.get_nowait()
            except queue.Empty:
                return
            try:
                name = path.relative_to(self.root.pipelines_dir).parts[0]
            except (ValueError, IndexError):
                name = ""
            cache = self.pipelines.get(name)
            if cache is None:
                self.log(f"cannot write {path}: {error.strerror or error}")
                continue
            # The error names the temp file os.replace moved from; the user knows the target.
            self._break(cache, "writing its status", OSError(error.errno, error.strerror, str(path)))

    def _handle(self, event: tuple[str, str, str, int, Outcome | None]) -> None:
        kind, pipeline, job, attempt, outcome = event
        if kind == "stop":
            self.stopping.set()
        elif kind == "write-failed":
            self._handle_write_failures()
        elif kind == "space":
            self._resume()
        elif kind == "pipelines":
            self._rescan()
        elif kind == "source":  # a warning about the pipeline's source: its status says it now
            cache = self.pipelines.get(pipeline)
            if cache is not None and cache.loaded:
                self._apply(SetPipeline(pipeline, cache.status), utcnow())
        elif kind == "exit" and outcome is not None:
            cache = self.pipelines.get(pipeline)
            if cache is not None:  # no re-read of the specs: only the job's state changed
                cache.outcomes[job] = (attempt, outcome)
        elif kind in ("spec", "request") and self._selected(pipeline):
            if pipeline not in self.pipelines and is_name(pipeline) and (self.root.pipelines_dir / pipeline).is_dir():
                self.pipelines[pipeline] = _Pipeline(self.root.pipeline(pipeline))
            if pipeline in self.pipelines:
                self.dirty.add(pipeline)

    def tick(self, now: datetime | None = None) -> datetime | None:
        """Refresh what changed, reconcile, apply. Returns when to look again at the latest."""
        now = now or utcnow()
        for name, cache in self.pipelines.items():
            if cache.settle_until is not None and cache.settle_until <= now:
                self.dirty.add(name)  # its invalid spec has had time to settle: read it again
        for name in sorted(self.dirty):
            if name in self.pipelines:
                try:
                    self._read(self.pipelines[name])
                except Exception as e:  # one pipeline's files must not stop the others
                    self._break(self.pipelines[name], "reading its files", e)
        self.dirty.clear()
        # A settled pipeline is looked at again only when something was re-read (a spec edit may
        # mend it, a request may retry it).
        active = [c for c in self.pipelines.values()
                  if not c.broken and (not c.settled() or c.requests or c.outcomes or c.full)]
        for cache in active:
            cache.look_for_output(now)
        plan = self._reconcile(active, now)
        active = [c for c in active if not c.broken]
        for cache in active:
            cache.full = False
            cache.ready = []
            if self._crashes:
                self._crashes.pop(cache.paths.name, None)  # scheduled again: a new crash is news
        for pipeline, job in plan.ready:
            self.pipelines[pipeline].ready.append(job)
        for action in plan.actions:
            self._apply_isolated(action, now)
        for cache in active:
            cache.outcomes = {j: o for j, o in cache.outcomes.items()
                              if cache.jobs.get(j) and cache.jobs[j].state is JobState.RUNNING}
            try:
                self._watch(cache)
            except Exception as e:
                self._break(cache, "watching its directories", e)
        if self.recorder.flush():  # the index was swapped or recreated: hand everything over again
            self._record_all()
        if self.on_tick:
            self.on_tick(self)
        return min((t for t in (plan.wake_at, *(c.settle_until for c in self.pipelines.values())) if t is not None),
                   default=None)

    def _watch(self, cache: _Pipeline) -> None:
        if cache.settled() and self.watcher and not cache.requests:
            self.watcher.unwatch(cache.paths.name)
        elif self.watcher and not cache.settled() and cache.paths.name not in self.watcher.watched():
            self.watcher.watch(cache.paths.name)

    # -- one broken pipeline never stops the others -----------------------------------------

    def _reconcile(self, active: list[_Pipeline], now: datetime) -> Plan:
        """reconcile() over the active pipelines; if it raises, the pipelines it raises on are
        marked broken and the others are scheduled without them."""
        views = [c.view() for c in active]
        limits = replace(self.limits, max_parallel=0) if self.space.full else self.limits  # a full disk: none start
        try:
            return reconcile(views, now, limits)
        except Exception:
            pass  # find which pipeline it fails on: rare, so each is tried alone
        kept: list[PipelineView] = []
        for view in views:
            try:
                reconcile([view], now, limits)
            except Exception as e:
                cache = self.pipelines[view.name]
                self._break(cache, "scheduling it", _located(e, view, cache.paths, now, limits))
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
                self._break(self.pipelines[view.name], "scheduling it with the others", e)
            else:
                together.append(view)
        return reconcile(together, now, limits)

    def _apply_isolated(self, action: Action, now: datetime) -> None:
        cache = self.pipelines.get(action.pipeline)
        if cache is None or cache.broken:  # an earlier action of its pipeline failed this step
            return
        try:
            self._apply(action, now)
        except Exception as e:
            if isinstance(action, Start):  # not launched: a fresh read starts it again
                self._own.discard((action.pipeline, action.job, action.attempt))
            job = _job_of(action)
            if job is not None:
                e.add_note(f"job {job}: {cache.paths.job_file(job)}, {cache.paths.job_status_file(job)}")
            self._break(cache, f"applying {type(action).__name__}", e)

    def _break(self, cache: _Pipeline, what: str, error: Exception) -> None:
        """Mark the pipeline broken: it is left out of scheduling until its files change (or the
        sweep), its status says why, and the traceback goes to a crash log (once per cause)."""
        name = cache.paths.name
        cause = f"{what}: {describe(error)}"
        if name not in self._crashes or self._crashes[name][0] != cause:
            path = write_crash_log(self.root.state_dir, error, f"clowder daemon, pipeline {name}: {what}")
            message = (f"Clowder failed {cause}; " + (f"traceback in {path}; " if path else "")
                       + "it is tried again when its files change")
            self._crashes[name] = (cause, message)
            self.log(f"{name}: broken: {message}")
        cache.broken = self._crashes[name][1]
        status = replace(cache.status, state=PipelineState.BROKEN, message=cache.broken, ended_at=None)
        if status == cache.status:
            return
        cache.status = status
        try:
            self._write(cache.paths.status_file, pipeline_status_to_toml(status))
            self.recorder.pipeline_status(name, status)
        except Exception as e:
            self.log(f"{name}: cannot record that it is broken: {describe(e)}")

    def _read(self, cache: _Pipeline) -> None:
        """Refresh a pipeline; a broken one is read anew from the tree, once this daemon's
        writes have reached it (attempts it launched or saw end are kept)."""
        if cache.broken:
            if self.writer is not None:
                self.writer.flush()
            cache = _Pipeline(cache.paths, outcomes=cache.outcomes, alive=cache.alive)
            self.pipelines[cache.paths.name] = cache
        self._refresh(cache)

    def _record_all(self) -> None:
        for name, cache in self.pipelines.items():
            if cache.loaded:
                self.recorder.loaded(cache.paths, cache.jobs, cache.status)
                cache.stamp = ()  # re-read the spec, which records it
                self.dirty.add(name)
        self.recorder.flush()
        self.events.put(("wake", "", "", 0, None))  # tick again soon: the specs are read there

    # -- reading the tree -----------------------------------------------------------------

    def _selected(self, name: str) -> bool:
        return self.only is None or name in self.only

    def _rescan(self) -> None:
        names = [n for n in self.root.pipeline_names() if is_name(n) and self._selected(n)]
        for name in names:
            if name not in self.pipelines:
                self.pipelines[name] = _Pipeline(self.root.pipeline(name))
                self.dirty.add(name)
        for name in list(self.pipelines):
            if name not in names and not any(j.state is JobState.RUNNING for j in self.pipelines[name].jobs.values()):
                del self.pipelines[name]
                self.recorder.forget(name)
                if self.watcher:
                    self.watcher.unwatch(name)

    def _sweep(self) -> None:
        """Repair missed events: re-read every pipeline's specs, requests and processes."""
        self._claim_lock_file()  # deleted or overwritten by hand: say again who serves the root
        self._rescan()
        for name, cache in self.pipelines.items():
            self.dirty.add(name)
            cache.full = True
            for job, status in list(cache.jobs.items()) if not cache.broken else ():
                if status.state is JobState.RUNNING and (name, job, status.attempt) not in self._own:
                    try:
                        self._check_process(cache, job, status)
                    except Exception as e:
                        e.add_note(f"job {job}: {cache.paths.log_file(job, status.attempt)}")
                        self._break(cache, "checking its processes", e)
                        break

    def _refresh(self, cache: _Pipeline) -> None:
        paths = cache.paths
        if not paths.dir.is_dir():
            return
        if not cache.loaded:
            self._load(cache)
        # A finished pipeline is not watched (watchdog runs a thread per watch): a request wakes
        # it through .clowder/wake, and `tick` watches it again if it runs again.
        if self.watcher and paths.name not in self.watcher.watched() and not cache.settled():
            self.watcher.watch(paths.name)
        cache.full = True
        stamp = spec_stamp(str(paths.dir))
        if stamp != cache.stamp or cache.settle_until is not None:
            cache.stamp = stamp
            try:
                pipeline, problems = check_pipeline(paths, self.config)
            except Exception as e:
                _note_spec_file(e, paths)
                raise
            self.recorder.spec(paths, pipeline, problems, stamp)
            cache.problems = tuple(str(p) for p in problems)
            if pipeline is not None:
                cache.pipeline = pipeline
            settling = cache.settle_until is not None
            cache.settle_until = self._settle_until(paths, stamp) if problems else None
            if problems and cache.settle_until is None:
                self.log(f"{paths.name}: invalid spec: {cache.problems[0]}")
            elif problems and not settling:
                self.log(f"{paths.name}: spec invalid while being written ({cache.problems[0]}); "
                         f"reading it again once it is unchanged for {format_duration(self.config.settle)}")
        cache.requests = tuple(req_mod.pending(paths))

    def _settle_until(self, paths: PipelinePaths, stamp: Stamp) -> datetime | None:
        """When to read an invalid spec again, if one of its files changed within `settle` (an
        editor or a shell may be writing it in place); None when it has been quiet that long."""
        window = self.config.settle
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

    def _load(self, cache: _Pipeline) -> None:
        """First sight of a pipeline (or a restart): read its statuses and find out what became
        of attempts that were running when the last daemon stopped."""
        cache.loaded = True
        paths = cache.paths
        try:
            cache.status = read_pipeline_status(paths.status_file)
        except ClowderError as e:
            self.log(f"{paths.name}: {e}; starting its status afresh")
        if paths.status_dir.is_dir():
            for f in sorted(paths.status_dir.glob("*.toml")):
                if not is_name(f.stem):
                    continue
                try:
                    cache.jobs[f.stem] = read_job_status(f, f.stem)
                except ClowderError as e:
                    self.log(f"{paths.name}/{f.stem}: {e}; starting its status afresh")
                except Exception as e:
                    e.add_note(str(f))  # the pipeline is marked broken, naming this file
                    raise
        self.recorder.loaded(paths, cache.jobs)  # as read, before catching up with what is not on disk
        self._catch_up(cache)
        for status in cache.jobs.values():
            cache.set_job(status)
        for job, status in list(cache.jobs.items()):
            # This daemon's own attempts (a broken pipeline read again) end through their waiters.
            if status.state is JobState.RUNNING and (paths.name, job, status.attempt) not in self._own:
                self._check_process(cache, job, status)

    def _catch_up(self, cache: _Pipeline) -> None:
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
                trigger = "start" if n == 1 else "retry"
                if n == missing[-1]:
                    attempts.append(Attempt(n, JobState.RUNNING, started, trigger=trigger))
                    continue
                record = read_exit(run_file(log))
                state = JobState.LOST if record is None else (
                    JobState.SUCCEEDED if record.exit_code == 0 else JobState.FAILED)
                attempts.append(Attempt(n, state, started, record.ended_at if record else started,
                                        exit_code=record.exit_code if record else None, trigger=trigger))
            cache.jobs[d.name] = replace(status, state=JobState.RUNNING, attempt=missing[-1],
                                         attempts=tuple(attempts), retry_at=None)
            self.log(f"{cache.paths.name}/{d.name}: found attempt {missing[-1]} launched before the last "
                     "daemon stopped")

    def _check_process(self, cache: _Pipeline, job: str, status: JobStatus) -> None:
        """What became of an attempt this daemon did not start. It is over only once nothing of
        it runs: until then the executor watches it, and ends what it left when its wrapper ends."""
        launch = self._launch_paths(cache.paths, job, status.attempt)
        key = (cache.paths.name, job, status.attempt)
        if key in self._own:  # ours: the executor reports its end
            return
        if read_exit(launch.run_file) is not None:
            self.executor.end(launch)  # what it left running (`sleep 37 &`) does not outlive it
            cache.outcomes[job] = (status.attempt, self._observe_end(cache.paths.name, job, status.attempt))
            return
        pid = read_pid(launch.run_file)
        if pid is None and not self.executor.running(launch):
            # No pid and no process with its marker: the last daemon died before the wrapper ran
            # (its log file, made before the process, may exist). It never started: start it again.
            cache.jobs[job] = _before(status)
            cache.set_job(cache.jobs[job])
            self.log(f"{cache.paths.name}/{job}: attempt {status.attempt} was recorded but never started; "
                     "starting it again")
            return
        if cache.alive.get(job) is not True:  # a sweep finds adopted attempts again: once is enough
            # Its wrapper may have gone (kill -9) while its command runs on: the executor ends
            # what is left before reporting it lost, so no retry ever runs beside it.
            self.executor.adopt(launch, pid)
            self.log(f"{cache.paths.name}/{job}: adopted running attempt {status.attempt}"
                     + (f" (pid {pid})" if pid is not None else " (starting)"))
        cache.alive[job] = True

    def _observe_end(self, pipeline: str, job: str, attempt: int) -> Outcome:
        """How an attempt ended, from its exit record and its workspace. Runs in a waiter thread."""
        paths = self.root.pipeline(pipeline)
        record = read_exit(self._launch_paths(paths, job, attempt).run_file)
        cache = self.pipelines.get(pipeline)
        spec = cache.pipeline.jobs.get(job) if cache and cache.pipeline else None
        # An agent's output.json is extracted from its action log first: it may be a declared output.
        collected = _collect(paths.workspace(job), job) if spec is not None and spec.agent else None
        if collected is not None and spec is not None and cache is not None and cache.pipeline is not None:
            collected = harness_agent.settle(self.config, cache.pipeline, spec, paths.workspace(job),
                                             self.root.path, collected)  # prices, output_schema
        if record is None:
            outcome = Outcome(None, utcnow())
        else:
            problem = _missing_outputs(paths.workspace(job), spec) if record.exit_code == 0 and spec else ""
            if collected is not None and record.exit_code == 0 and collected.problem:
                problem = collected.problem  # a malformed action log fails the attempt
            outcome = Outcome(record.exit_code, record.ended_at, record.signal, problem)
        if collected is not None:
            outcome = replace(outcome, usage=collected.usage, failure_kind=collected.failure_kind,
                              failure_text=collected.failure_text)
        status = cache.jobs.get(job) if cache else None
        killing = status.extra.get("killing") if status else None
        killed_for = killing.get("reason") if isinstance(killing, dict) else None
        state, reason = _attempt_end(outcome, killed_for, spec)
        error = None if state == "succeeded" else workspace.ErrorContext(
            reason, outcome.exit_code, outcome.signal, workspace.log_tail(paths.log_file(job, attempt)))
        # The commit is made here, in the attempt's waiter thread: jobs commit in parallel.
        return self._commit_attempt(paths, spec or JobSpec(job), attempt, outcome, state, error)

    def _commit_attempt(self, paths: PipelinePaths, spec: JobSpec, attempt: int, outcome: Outcome, state: str,
                        error: workspace.ErrorContext | None) -> Outcome:
        """The outcome with the attempt's commit, base, artifacts and consumption added."""
        while True:
            try:
                done = workspace.finish(paths.workspace(spec.name), paths.name, spec.name, attempt, state,
                                        identity=self._identity(), outputs=spec.outputs, error=error)
                break
            except (OSError, ClowderError) as e:
                # On a full disk the commit waits for space and is made then (finish may be
                # called again): the attempt's work is kept, not failed for want of a commit.
                where = f"committing {paths.name}/{spec.name} attempt {attempt}"
                if diskfull.caused_by_full_disk(e, paths.workspaces_dir):
                    if self.space.wait_for_space(where, e):
                        continue
                    # Stopping (or `clowder run` giving up): the attempt is not recorded as failed;
                    # the next start finds its exit record and commits it then.
                    raise DiskFull(f"no space left on device ({where}): left to the next start") from e
                self.log(f"{paths.name}/{spec.name}: could not commit attempt {attempt}: {e}")
                return replace(outcome, problem=outcome.problem or f"could not commit the workspace: {e}")
        # A fix-up that changed nothing still succeeds, but it used up one of max_regressions: say so.
        note = NO_CHANGES if spec.regression_of and state == "succeeded" and not done.changed else ""
        return replace(outcome, commit=done.commit, base_commit=done.base_commit, artifacts=done.artifacts,
                       consumed=done.consumed, note=note)

    # -- applying actions -----------------------------------------------------------------

    def _apply(self, action: object, now: datetime) -> None:
        if isinstance(action, SetJob):
            cache = self.pipelines[action.pipeline]
            cache.set_job(action.status)
            self._write(cache.paths.job_status_file(action.status.job), partial(job_status_to_toml, action.status))
            self.recorder.job(action.pipeline, action.status)
            if action.event:
                self.log(f"{action.pipeline}/{action.event}")
        elif isinstance(action, SetPipeline):
            cache = self.pipelines[action.pipeline]
            cache.status = action.status
            status = _with_source_warning(cache.paths, action.status)
            self._write(cache.paths.status_file, pipeline_status_to_toml(status))
            self.recorder.pipeline_status(action.pipeline, status)
            if action.event:
                self.log(f"{action.pipeline}: {action.event}")
        elif isinstance(action, Start):
            self._start(action, now)
        elif isinstance(action, Kill):
            launching = self._launching.get((action.pipeline, action.job, action.attempt))
            if launching is not None:
                launching.result()  # kill what was started, not a process still being forked
            paths = self.root.pipeline(action.pipeline)
            self.executor.kill(self._launch_paths(paths, action.job, action.attempt), action.signal)
        elif isinstance(action, SpawnJob):
            self._spawn(action)
        elif isinstance(action, DoneRequest):
            cache = self.pipelines[action.pipeline]
            # Through the writer, after the status writes that record what the request did.
            path = req_mod.request_file(cache.paths, action.request)
            if self.writer is not None:
                self.writer.delete(path)
            else:
                path.unlink(missing_ok=True)
            cache.requests = tuple(r for r in cache.requests if r.id != action.request)
            if action.event:
                self.log(f"{action.pipeline}: {action.event}")

    def _spawn(self, action: SpawnJob) -> None:
        paths = self.pipelines[action.pipeline].paths
        context = {"reason": action.reason, "spawner": action.spawner, "spawner_attempt": action.attempt,
                   "request": action.request, "context": action.context,
                   "log_tail": "\n".join(workspace.log_tail(paths.log_file(action.spawner, action.attempt)))}
        if action.commit:
            context["commit"] = action.commit
        try:
            regression.write_fixup(self.root, paths, action.name, action.target, action.spawner, context)
        except OSError as e:
            if not diskfull.says_full(e):
                raise
            self._held.put(action)  # written when space is back
            self.space.hit(f"writing {paths.job_file(action.name)}", e)
            return
        except ClowderError as e:
            self.log(f"{action.pipeline}/{action.spawner}: cannot spawn {action.name}: {e}")
            return
        self.log(f"{action.pipeline}/{action.spawner} spawned {action.name} (a fix-up of {action.target}): "
                 f"{action.reason}")
        self.dirty.add(action.pipeline)

    def _write(self, path: Path, text: str | Callable[[], str]) -> None:
        # Status writes go through a background writer so the loop never waits on fsync. A
        # crash may lose the newest ones; a restart re-derives them from the attempts' own
        # records (log, pid and exit files), which the processes write themselves.
        if self.writer is not None:
            self.writer.write(path, text)
        else:
            atomic_write(path, text if isinstance(text, str) else text(), self.root.tmp_dir)

    def _launch_paths(self, paths: PipelinePaths, job: str, attempt: int) -> Launch:
        log = paths.log_file(job, attempt)
        return Launch(paths.name, job, attempt, (), paths.workspace(job), {}, log, run_file(log))

    def _start(self, action: Start, now: datetime) -> None:
        cache = self.pipelines[action.pipeline]
        assert cache.pipeline is not None
        spec = cache.pipeline.jobs[action.job]
        paths = cache.paths
        key = (paths.name, action.job, action.attempt)
        self._own.add(key)
        cache.alive[action.job] = True
        trigger = cache.jobs[action.job].attempts[-1].trigger
        upstreams = self._upstreams(cache, spec, action.sources)
        # An agent's prompt context is taken here, in the loop thread, which owns the statuses.
        agent = harness_agent.context(cache.pipeline, spec, action.attempt, paths.workspace(spec.name),
                                      dict(cache.jobs)) if spec.agent else None
        # Launching (the workspace, directories, log file, fork) is slow file-system work: a
        # small pool does it so the loop goes on deciding while processes start.
        self._launching[key] = self._launcher.submit(self._launch, spec, paths, action.attempt, trigger, upstreams,
                                                     cache.pipeline.spec.source, agent)

    def _launch(self, spec: JobSpec, paths: PipelinePaths, attempt: int, trigger: str,
                upstreams: tuple[workspace.Upstream, ...], source: Source | None,
                agent: harness_agent.Context | None = None) -> None:
        held: BaseException | None = None
        try:
            prepared = workspace.prepare(paths.workspace(spec.name), paths.name, spec.name, attempt, upstreams,
                                         identity=self._identity(), source=source, root=self.root.path)
            if prepared.warning:  # said once, here and in the pipeline's status message (_apply)
                self.log(f"{paths.name}: warning: {prepared.warning}")
                self.events.put(("source", paths.name, "", 0, None))
            if prepared.problem:  # a merge conflict: the attempt fails without running
                self.log(f"{paths.name}/{spec.name}: attempt {attempt} cannot start: {prepared.problem}")
                self._end_unstarted(spec, paths, attempt, prepared.problem, prepared.conflicts)
                return
            if spec.regression_context:  # a fix-up reads why it exists here (and in its prompt)
                write_metadata(paths.workspace(spec.name), spec.name, "regression.json", json.dumps(
                    {"parent": spec.parent, "regression_of": spec.regression_of, **spec.regression_context},
                    indent=2, default=str) + "\n")
            # An agent job's prompt is composed now that its workspace holds its upstreams' outputs.
            harness = harness_agent.start(self.config, agent, self.root.path) if agent else None
            argv = harness.argv if harness else _argv(spec)
            env = {**os.environ, **self._identity().env(), **(harness.env if harness else {}), **spec.env,
                   "CLOWDER_ROOT": str(self.root.path),
                   "CLOWDER_PIPELINE": paths.name, "CLOWDER_JOB": spec.name, "CLOWDER_ATTEMPT": str(attempt)}
            base = self._launch_paths(paths, spec.name, attempt)
            launch = Launch(paths.name, spec.name, attempt, argv, base.cwd, env, base.log_file, base.run_file)
            diskfull.ensure_room(paths.dir)
            pid = self.executor.start(launch)
            how = "" if trigger == "start" else f" ({trigger})"
            self.log(f"{paths.name}/{spec.name} started attempt {attempt}{how}, pid {pid}: {_show(argv)}")
        except Exception as e:  # whatever stops a start (Popen's ValueError too) fails the attempt now, saying why
            if diskfull.caused_by_full_disk(e, paths.workspaces_dir):
                held = e  # not a failure of the attempt: it starts, as the same attempt, when space is back
            else:
                self.log(f"{paths.name}/{spec.name}: could not start attempt {attempt}: {e}")
                self._end_unstarted(spec, paths, attempt, f"could not start: {e}")
        finally:
            self._launching.pop((paths.name, spec.name, attempt), None)
            if held is not None:  # after the pop: the new launch is registered by the loop
                self._hold(spec, paths, attempt, partial(self._launch, spec, paths, attempt, trigger, upstreams,
                                                         source, agent), held)

    # -- a full disk ----------------------------------------------------------------------

    def _hold(self, spec: JobSpec, paths: PipelinePaths, attempt: int, launch: Callable[[], None],
              error: BaseException) -> None:
        """An attempt that could not be prepared for lack of space waits for space, still running
        as far as its status says (the status is written once there is room for it)."""
        log = paths.log_file(spec.name, attempt)
        with contextlib.suppress(OSError):  # made before the failed start: without a process it would read as lost
            if log.stat().st_size == 0 and not run_file(log).exists():
                log.unlink()
        self._held.put(_Held(paths.name, spec, paths, attempt, launch))  # before `hit`: it is resumed after
        self.space.hit(f"starting {paths.name}/{spec.name} attempt {attempt}", error)

    def _space_back(self) -> None:
        """Called from the space prober: wake the loop, and let the index be made again at once."""
        self.recorder.retry_now()
        self.events.put(("space", "", "", 0, None))

    def _resume(self) -> None:
        """Space is back: start the attempts a full disk held back, write the fix-ups' specs."""
        while True:
            try:
                item = self._held.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, SpawnJob):
                self._spawn(item)
                continue
            cache = self.pipelines.get(item.pipeline)
            status = cache.jobs.get(item.spec.name) if cache else None
            if status is None or status.state is not JobState.RUNNING or status.attempt != item.attempt:
                continue
            key = (item.pipeline, item.spec.name, item.attempt)
            if status.extra.get("killing"):  # cancelled while it waited
                self._launcher.submit(self._end_unstarted, item.spec, item.paths, item.attempt,
                                      "cancelled before it started")
            else:
                self._launching[key] = self._launcher.submit(item.launch)

    def _identity(self) -> workspace.Identity:
        return workspace.Identity(self.config.git_author_name, self.config.git_author_email)

    def _upstreams(self, cache: _Pipeline, spec: JobSpec, sources: tuple[str, ...] = ()) -> tuple[
            workspace.Upstream, ...]:
        """The jobs this one starts from that ran, each at its final commit: its upstreams; for a
        regression attempt, the fix-ups it waited for; for a fix-up, its spawner's attempt."""
        context = spec.regression_context or {}
        commit = context.get("commit")
        if not sources and spec.parent and isinstance(commit, str):
            return (workspace.Upstream(spec.parent, cache.paths.workspace(spec.parent), commit),)
        out: list[workspace.Upstream] = []
        for name in sources or spec.sources:
            status = cache.jobs.get(name)
            commit = next((a.commit for a in reversed(status.attempts) if a.commit), None) if status else None
            if commit is not None:
                # The first upstream's files may move here when no other job starts from it.
                hand_on = not out and not sources and _only_consumer(cache, name, spec.name)
                out.append(workspace.Upstream(name, cache.paths.workspace(name), commit, hand_on))
        return tuple(out)

    def _end_unstarted(self, spec: JobSpec, paths: PipelinePaths, attempt: int, problem: str,
                       conflicts: tuple[str, ...] = ()) -> None:
        """An attempt that failed before its process ran still ends with a commit (error.json)."""
        error = workspace.ErrorContext(problem, conflicts=conflicts)
        outcome = Outcome(None, utcnow(), problem=problem)
        self.events.put(("exit", paths.name, spec.name, attempt,
                         self._commit_attempt(paths, spec, attempt, outcome, "failed", error)))

    # -- results --------------------------------------------------------------------------

    def _selected_done(self) -> bool:
        chosen = [c for n, c in self.pipelines.items() if self._selected(n)]
        return all(c.stopped() and not c.requests for c in chosen) and not self.dirty

    def _selected_succeeded(self) -> bool:
        return all(c.status.state is PipelineState.SUCCEEDED for n, c in self.pipelines.items() if self._selected(n))


def _only_consumer(cache: _Pipeline, upstream: str, job: str) -> bool:
    """Whether `job` is the only job of the pipeline whose workspace starts from `upstream`."""
    assert cache.pipeline is not None
    return all(spec.name == job or upstream not in spec.sources for spec in cache.pipeline.jobs.values())


def _before(status: JobStatus) -> JobStatus:
    """The job as it was before its last attempt was recorded, so that the scheduler starts that
    attempt again: the same number, and the same trigger (a retry still counts as one)."""
    last = status.last
    if last is None:  # a hand-edited status: the scheduler starts the job over
        return status
    before = replace(status, attempt=status.attempt - 1, attempts=status.attempts[:-1], message="", retry_at=None,
                     extra={k: v for k, v in status.extra.items() if k != "killing"})
    if last.trigger == "retry":
        return replace(before, state=JobState.RETRYING)
    if last.trigger == "regression":
        return replace(before, state=JobState.WAITING, waiting_for=status.spawned)
    if last.trigger == "manual" and last.request:
        return replace(before, state=JobState.PENDING, extra={**before.extra, "retry_request": last.request})
    return replace(before, state=JobState.PENDING)


@dataclass(frozen=True)
class _Held:
    """An attempt whose start a full disk held back."""

    pipeline: str
    spec: JobSpec
    paths: PipelinePaths
    attempt: int
    launch: Callable[[], None]


def _collect(ws: Path, job: str) -> harness_agent.Collected:
    try:
        return harness_agent.collect(ws, job)
    except OSError as e:
        return harness_agent.Collected(problem=f"cannot read the action log: {e}")


def _argv(spec: JobSpec) -> tuple[str, ...]:
    if isinstance(spec.command, str):
        return ("/bin/sh", "-c", spec.command)
    if spec.command:
        return spec.command
    raise ClowderError(f"job {spec.name}: agent jobs need a harness (agent = {spec.agent!r})")


def _attempt_end(outcome: Outcome, killed_for: str | None, spec: JobSpec | None) -> tuple[str, str]:
    """The attempt's state for its commit trailer, and why it ended so (as `_finish` records it)."""
    if outcome.exit_code == 0 and not outcome.problem:
        return "succeeded", ""
    if killed_for == "cancel":
        return "cancelled", "cancelled by request"
    if outcome.exit_code is None and not outcome.problem:
        return "lost", "the process vanished without an exit record"
    if killed_why(killed_for, spec):
        return "failed", killed_why(killed_for, spec)
    if outcome.problem:
        return "failed", outcome.problem
    if outcome.failure_text:
        return "failed", outcome.failure_text
    if outcome.signal is not None:
        name = signal.Signals(outcome.signal).name if outcome.signal in signal.valid_signals() else "unknown"
        return "failed", f"killed by signal {outcome.signal} ({name})"
    return "failed", f"exit code {outcome.exit_code}"


def _show(argv: tuple[str, ...]) -> str:
    """A command for a log line: one line, a long shell script cut to its first line."""
    text = " ".join(argv).strip()
    first = next((line for line in text.splitlines() if line.strip()), "")
    return first if first == text else f"{first.strip()} …"


def _missing_outputs(workspace: Path, spec: JobSpec) -> str:
    missing = [g for g in spec.outputs if not glob(g, root_dir=workspace, recursive=True, include_hidden=True)]
    return f"missing declared output(s): {', '.join(missing)}" if missing else ""


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


def _note_spec_file(error: Exception, paths: PipelinePaths) -> None:
    """Add a note naming the spec file that reading fails on, if one alone does."""
    for path in (paths.spec_file, *(paths.job_file(name) for name in paths.job_names() if is_name(name))):
        try:
            schema.load_toml(path)
        except Exception:
            error.add_note(str(path))
            return


def _job_of(action: Action) -> str | None:
    match action:
        case SetJob(status=status):
            return status.job
        case Start(job=job) | Kill(job=job):
            return job
        case SpawnJob(spawner=spawner):
            return spawner
        case SetPipeline() | DoneRequest():
            return None
        case _:
            assert_never(action)
