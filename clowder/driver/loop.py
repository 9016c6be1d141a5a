"""The driver's loop: feeds `reconcile` from the tree, applies its actions (status writes,
process starts and kills), and sleeps until a file event, a process exit or a deadline."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import assert_never

from clowder import diskfull, regression
from clowder import requests as req_mod
from clowder.crash import describe, write_crash_log
from clowder.dask_executor import make_executor as executor_for
from clowder.driver.cache import PipelineCache, catch_up, run_of, with_source_warning
from clowder.driver.clock import StepWatch, moved, steady
from clowder.driver.clock import show as show_step
from clowder.driver.dormant import dormant
from clowder.driver.events import (
    AttemptEnded,
    Event,
    FilesChanged,
    Rescan,
    SourceWarning,
    SpaceBack,
    Stop,
    Wake,
    WriteFailed,
)
from clowder.driver.isolation import job_of, note_spec_file, reconcile_isolated
from clowder.driver.launcher import Launcher
from clowder.driver.log import Log, claim_lock_file, lock_owner, stderr_log
from clowder.errors import ClowderError, LockHeld
from clowder.executor import Executor, OnExit
from clowder.fsio import Writer, atomic_write, try_lock
from clowder.index.recorder import Recorder
from clowder.notify.notifier import Notifier
from clowder.scheduler import (
    Action,
    DoneRequest,
    Kill,
    Limits,
    Plan,
    Reuse,
    SetJob,
    SetPipeline,
    SpawnJob,
    Start,
)
from clowder.spec import Config, is_name
from clowder.stamp import spec_stamp
from clowder.state import (
    JobState,
    JobStatus,
    PipelineState,
    job_status_to_toml,
    pipeline_status_to_toml,
    utcnow,
)
from clowder.tree import Root
from clowder.validate import check_pipeline, load_config
from clowder.watcher import Watcher
from clowder.workspace.reuse import record_reuse


class Driver:
    """Runs the scheduler over a root: `serve()` until stopped (the daemon), or until the
    selected pipelines end (`clowder run`)."""

    def __init__(
        self,
        root: Root,
        *,
        config: Config | None = None,
        max_parallel: int | None = None,
        only: Iterable[str] | None = None,
        log: Log | None = None,
        poll: bool | None = None,
        make_executor: Callable[[OnExit], Executor] | None = None,
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
        # File events never see what other machines write (a `clowder spawn` run by an attempt on
        # a Dask worker): with a Dask executor the daemon polls unless told not to.
        self.poll = poll if poll is not None else self.config.executor.kind == "dask"
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.pipelines: dict[str, PipelineCache] = {}
        self.dirty: set[str] = set()
        self._unrecorded: set[str] = set()  # handed over to a new index, their specs not read again yet
        # The pipelines a tick looks at: all but those that ended for good (or are broken) with
        # nothing pending. A root of 1,000 finished pipelines made every tick check each of them
        # (2.4-3x slower runs); one leaves `quiet` only when it is read again (its files changed).
        self.live: set[str] = set()
        # Finished pipelines are left unread until their files change (clowder.driver.dormant):
        # by the daemon, which serves whatever comes; `clowder run` reads what it was given.
        self.leave_finished = False
        self.stopping = threading.Event()
        self._clock = StepWatch()
        self.watcher: Watcher | None = None
        self._own: set[tuple[str, str, int]] = set()
        self._write_failures: queue.SimpleQueue[tuple[Path, OSError]] = queue.SimpleQueue()
        self._crashes: dict[str, tuple[str, str]] = {}  # pipeline -> (what failed, its status message)
        self.writer: Writer | None = None
        self.on_tick: Callable[[Driver], None] | None = None
        # The index; inactive until serve(). Its thread wakes the loop when the file was swapped.
        self.recorder = Recorder(root, self.log, wake=lambda: self.events.put(Wake()))
        # A full disk pauses launching; what it held back waits here until space is back.
        self.space = diskfull.Space(root.tmp_dir, self.log, on_space=self._space_back, stopping=self.stopping)
        self._held: queue.SimpleQueue[SpawnJob] = queue.SimpleQueue()  # fix-ups a full disk held back
        self.notifier = Notifier(root, self.config.notify, self.log)  # [[notify]]: told each status written
        # Starts attempts and records their ends (the executor's waiter threads).
        self.launcher = Launcher(root, self.config, self.log, self.events, self.space,
                                 make_executor or executor_for(self.config, root.path, self.log))

    # -- events ---------------------------------------------------------------------------

    def _notify(self, kind: str, pipeline: str) -> None:
        """Called from the watcher's threads: `kind` is spec, request or pipelines."""
        self.events.put(Rescan() if kind == "pipelines" else FilesChanged(pipeline))

    def stop(self) -> None:
        self.stopping.set()
        self.events.put(Stop())

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
                               f"(pid {lock_owner(self.root)}); stop it first or let it run the pipelines")
            claim_lock_file(self.root, self.log)
            if announce:
                self.log(announce)
            return self._serve_locked(until_done, sweep if sweep is not None else self.config.sweep_interval)

    def _serve_locked(self, until_done: bool, sweep: float) -> bool:
        self.root.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.space.give_up, self.space.on_give_up = until_done, self.stop  # `clowder run` stops on a full disk
        self.leave_finished = not until_done
        self.writer = Writer(self.root.tmp_dir, on_full=self.space.wait_for_space, on_error=self._write_failed)
        self.watcher = Watcher(self.root, self._notify, poll=self.poll, interval=self.config.poll_interval)
        self.watcher.start()
        if self.poll:
            self.log(f"watching the tree by {self.watcher.how} (poll_interval in clowder.toml)")
        self.recorder.start()
        self.notifier.start()
        try:
            self._rescan()
            # The sweep is timed on a clock that is never stepped: a step back must not stop it.
            next_sweep = steady() + sweep
            while not self.stopping.is_set():
                stepped = self._clock.step()
                if stepped is not None:
                    self._clock_stepped(stepped)
                wake_at = self.tick()
                if until_done and self._selected_done():
                    break
                if steady() >= next_sweep:
                    self._sweep()
                    next_sweep = steady() + sweep
                    continue
                until_sweep = next_sweep - steady()
                self._wait(min(until_sweep, (wake_at - utcnow()).total_seconds()) if wake_at else until_sweep)
        finally:
            self._hand_over_now()
            self.watcher.stop()
            self.launcher.shutdown()
            self.writer.close()
            if self.writer.dropped:
                self.log(f"{self.writer.dropped} status write(s) not made for lack of space; the next start "
                         "re-derives them from the attempts' own records")
            self.recorder.close()  # after the writer: it stamps the status files as they are on disk
            self.notifier.stop()  # sends what is queued, for a while at most
        if self.space.error is not None:
            raise self.space.error
        return self._selected_succeeded()

    def _clock_stepped(self, by: timedelta) -> None:
        """The system clock was stepped: what is in flight keeps its deadlines (clowder.driver.clock)."""
        self.log(f"the system clock was stepped by {show_step(by)}: the start times and deadlines of running "
                 "and retrying jobs move with it")
        for cache in self.pipelines.values():
            cache.output_at = {job: at + by for job, at in cache.output_at.items()}
            if cache.settle_until is not None:
                cache.settle_until += by
            for status in list(cache.jobs.values()):
                new = moved(status, by)
                if new is not status:
                    self._set_job(SetJob(cache.paths.name, new))  # its state is the same: nothing to notify

    def _wait(self, timeout: float) -> None:
        try:
            event = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return
        self._handle(event)
        self.drain()  # whatever else arrived: one reconcile for a burst of events

    def drain(self) -> None:
        """Take in the events that have arrived (attempt ends, file changes), as the loop does
        before each tick. With `discover()` and `tick(now)`, a test drives the driver by hand."""
        while True:
            try:
                self._handle(self.events.get_nowait())
            except queue.Empty:
                return

    def discover(self) -> None:
        """Find the root's pipelines, as serve() does first."""
        self.root.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._rescan()

    def _write_failed(self, path: Path, error: OSError) -> None:
        """Called from the writer's thread: a file of the tree could not be written (not for lack
        of space). Its pipeline is marked broken in the loop's thread."""
        self._write_failures.put((path, error))
        self.events.put(WriteFailed())

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

    def _handle(self, event: Event) -> None:
        match event:
            case Stop():
                self.stopping.set()
            case WriteFailed():
                self._handle_write_failures()
            case SpaceBack():
                self._resume()
            case Rescan():
                self._rescan()
            case Wake():
                pass  # the loop ticks after any event
            case SourceWarning(pipeline=pipeline):  # a warning about the pipeline's source: its status says it now
                cache = self.pipelines.get(pipeline)
                if cache is not None and cache.loaded:
                    self._apply(SetPipeline(pipeline, cache.status), utcnow())
            case AttemptEnded(pipeline=pipeline, job=job, attempt=attempt, outcome=outcome):
                cache = self.pipelines.get(pipeline)
                if cache is not None:  # no re-read of the specs: only the job's state changed
                    cache.outcomes[job] = (attempt, outcome)
                    self.live.add(pipeline)
                    if self.poll:
                        self._requests_now(cache)
            case FilesChanged(pipeline=pipeline):
                self._files_changed(pipeline)
            case _:
                assert_never(event)

    def _files_changed(self, pipeline: str) -> None:
        if not self._selected(pipeline):
            return
        if pipeline not in self.pipelines and is_name(pipeline) and (self.root.pipelines_dir / pipeline).is_dir():
            self.pipelines[pipeline] = PipelineCache(self.root.pipeline(pipeline))
        if pipeline in self.pipelines:
            self.dirty.add(pipeline)

    def _requests_now(self, cache: PipelineCache) -> None:
        """Read the requests again as an attempt ends: polled, a `clowder spawn` the attempt made
        just before its end may not have been seen yet, and the end is where it is applied."""
        try:
            cache.requests = tuple(req_mod.pending(cache.paths))
        except OSError:
            pass  # the sweep reads them again

    def tick(self, now: datetime | None = None) -> datetime | None:
        """Refresh what changed, reconcile, apply. Returns when to look again at the latest."""
        now = now or utcnow()
        # Less those a rescan removed; not intersection_update(self.pipelines), which walks every
        # pipeline of the root each tick (~0.3 ms at 10,000 finished ones).
        self.live.difference_update([n for n in self.live if n not in self.pipelines])
        for name in self.live:
            settle_until = self.pipelines[name].settle_until
            if settle_until is not None and settle_until <= now:
                self.dirty.add(name)  # its invalid spec has had time to settle: read it again
        for name in sorted(self.dirty):
            self._unrecorded.discard(name)
            if name in self.pipelines:
                self.live.add(name)
                try:
                    self._read(self.pipelines[name])
                except Exception as e:  # one pipeline's files must not stop the others
                    self._break(self.pipelines[name], "reading its files", e)
        self.dirty.clear()
        # A settled pipeline is looked at again only when something was re-read (a spec edit may
        # mend it, a request may retry it).
        live = [self.pipelines[n] for n in sorted(self.live)]
        active = [c for c in live if not c.broken and (not c.settled() or c.requests or c.outcomes or c.full)]
        for cache in active:
            cache.look_for_output(now)
        plan = self._reconcile(active, now)
        active = [c for c in active if not c.broken]
        for cache in active:
            cache.full = False
            if self._crashes:
                self._crashes.pop(cache.paths.name, None)  # scheduled again: a new crash is news
        for change in plan.ready:  # what changed in each ready queue, not the whole queue again
            self.pipelines[change.pipeline].ready.apply(change)
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
        self.live.difference_update(c.paths.name for c in live if c.quiet())
        settling = (self.pipelines[n].settle_until for n in self.live)
        return min((t for t in (plan.wake_at, *settling) if t is not None), default=None)

    def _watch(self, cache: PipelineCache) -> None:
        if cache.settled() and self.watcher and not cache.requests:
            self.watcher.unwatch(cache.paths.name)
        elif self.watcher and not cache.settled() and cache.paths.name not in self.watcher.watched():
            self.watcher.watch(cache.paths.name)

    # -- one broken pipeline never stops the others -----------------------------------------

    def _reconcile(self, active: list[PipelineCache], now: datetime) -> Plan:
        """reconcile() over the active pipelines; the pipelines it raises on are marked broken."""
        limits = replace(self.limits, max_parallel=0) if self.space.full else self.limits  # a full disk: none start
        return reconcile_isolated({c.paths.name: (c.view(), c.paths) for c in active}, now, limits,
                                  lambda name, what, e: self._break(self.pipelines[name], what, e))

    def _apply_isolated(self, action: Action, now: datetime) -> None:
        cache = self.pipelines.get(action.pipeline)
        if cache is None or cache.broken:  # an earlier action of its pipeline failed this step
            return
        try:
            self._apply(action, now)
        except Exception as e:
            if isinstance(action, Start):  # not launched: a fresh read starts it again
                self._own.discard((action.pipeline, action.job, action.attempt))
            job = job_of(action)
            if job is not None:
                e.add_note(f"job {job}: {cache.paths.job_file(job)}, {cache.paths.job_status_file(job)}")
            self._break(cache, f"applying {type(action).__name__}", e)

    def _break(self, cache: PipelineCache, what: str, error: Exception) -> None:
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

    def _read(self, cache: PipelineCache) -> None:
        """Refresh a pipeline; a broken one is read anew from the tree, once this daemon's
        writes have reached it (attempts it launched or saw end are kept)."""
        if cache.broken:
            if self.writer is not None:
                self.writer.flush()
            cache = PipelineCache(cache.paths, outcomes=cache.outcomes, alive=cache.alive, decided=dict(cache.jobs))
            self.pipelines[cache.paths.name] = cache
        self._refresh(cache)

    def _record_all(self) -> None:
        for name, cache in self.pipelines.items():
            if cache.loaded:
                self.recorder.loaded(cache.paths, cache.jobs, cache.status)
                cache.stamp = ()  # re-read the spec, which records it
                self.dirty.add(name)
                self._unrecorded.add(name)
        # Pipelines left unread: the new file must hold them too (a reindex's does; a file made
        # anew after a failure does not, and those are read now to be recorded).
        unread = [n for n, c in self.pipelines.items() if not c.loaded and n not in self.dirty]
        asleep = dormant(self.root, unread, check_prompt=False) if unread else set()
        self.dirty.update(n for n in unread if n not in asleep)
        self.recorder.flush()
        self.events.put(Wake())  # tick again soon: the specs are read there

    def _hand_over_now(self) -> None:
        """As the loop stops: an index that came back (a disk writable again) or was swapped just
        now has not had every pipeline handed over by a tick yet; do it here, or the file would
        lack what this daemon ran (a root made read-only ran its pipeline in the 40 ms between)."""
        handover = self.recorder.flush()
        self.recorder.sync()
        if self.recorder.flush() or handover:
            self._record_all()
        for name in sorted(self._unrecorded):
            if name in self.pipelines:
                try:
                    self._read(self.pipelines[name])
                except Exception as e:
                    self.log(f"{name}: cannot read its files for the index: {e}")
        self._unrecorded.clear()

    # -- reading the tree -----------------------------------------------------------------

    def _selected(self, name: str) -> bool:
        return self.only is None or name in self.only

    def _rescan(self) -> None:
        names = [n for n in self.root.pipeline_names() if is_name(n) and self._selected(n)]
        new = [n for n in names if n not in self.pipelines]
        asleep = dormant(self.root, new) if self.leave_finished and new else set()
        for name in new:
            self.pipelines[name] = PipelineCache(self.root.pipeline(name))
            if name not in asleep:
                self.dirty.add(name)
        listed = set(names)  # a list's `in` made a sweep of 10,000 pipelines quadratic
        for name in list(self.pipelines):
            if name not in listed and not any(j.state is JobState.RUNNING for j in self.pipelines[name].jobs.values()):
                del self.pipelines[name]
                self.recorder.forget(name)
                if self.watcher:
                    self.watcher.unwatch(name)

    def _sweep(self) -> None:
        """Repair missed events: re-read every pipeline's specs, requests and processes."""
        claim_lock_file(self.root, self.log)  # deleted or overwritten by hand: say again who serves the root
        self._rescan()
        unread = [n for n, c in self.pipelines.items() if not c.loaded and n not in self.dirty]
        asleep = dormant(self.root, unread, check_prompt=False) if unread else set()
        for name, cache in self.pipelines.items():
            if name in asleep:  # still as it was: reading it would find nothing to do
                continue
            self.dirty.add(name)
            cache.full = cache.full or not cache.quiet()  # an ended one is reconciled if a file changed
            for job, status in list(cache.jobs.items()) if not cache.broken else ():
                if status.state is JobState.RUNNING and (name, job, status.attempt) not in self._own:
                    try:
                        self._check_process(cache, job, status)
                    except Exception as e:
                        e.add_note(f"job {job}: {cache.paths.log_file(job, status.attempt)}")
                        self._break(cache, "checking its processes", e)
                        break

    def _refresh(self, cache: PipelineCache) -> None:
        paths = cache.paths
        if not paths.dir.is_dir():
            return
        quiet = cache.loaded and cache.quiet()  # ended for good, nothing pending: as of the last tick
        if not cache.loaded:
            self._load(cache)
        # A finished pipeline is not watched (watchdog runs a thread per watch): a request wakes
        # it through .clowder/wake, and `tick` watches it again if it runs again.
        if self.watcher and paths.name not in self.watcher.watched() and not cache.settled():
            self.watcher.watch(paths.name)
        stamp = spec_stamp(str(paths.dir))
        changed = stamp != cache.stamp or cache.settle_until is not None
        if changed:
            cache.stamp = stamp
            try:
                pipeline, problems = check_pipeline(paths, self.config)
            except Exception as e:
                note_spec_file(e, paths)
                raise
            self.recorder.spec(paths, pipeline, problems, stamp)
            cache.take_spec(pipeline, tuple(str(p) for p in problems), self.config.settle, self.log)
        req_mod.woken(self.root, paths.name)  # before the requests are read: see there
        cache.requests = tuple(req_mod.pending(paths))
        # An ended pipeline whose specs and requests are as they were has nothing to reconcile: the
        # sweep reads every pipeline every 30 s, and 10,000 full reconciles would stall the loop.
        cache.full = not (quiet and not changed and not cache.requests)

    def _load(self, cache: PipelineCache) -> None:
        """First sight of a pipeline (or a restart): read its statuses and find out what became
        of attempts that were running when the last daemon stopped."""
        paths = cache.paths
        cache.read_statuses(self.log)
        self.recorder.loaded(paths, cache.jobs)  # as read, before catching up with what is not on disk
        catch_up(cache, self.launcher.executor.exit_record, self.log)
        self._keep_decided(cache)
        for status in cache.jobs.values():
            cache.set_job(status)
        for job, status in list(cache.jobs.items()):
            # This daemon's own attempts (a broken pipeline read again) end through their waiters.
            if status.state is JobState.RUNNING and (paths.name, job, status.attempt) not in self._own:
                self._check_process(cache, job, status)

    def _keep_decided(self, cache: PipelineCache) -> None:
        """A broken pipeline read anew keeps what this driver decided of its jobs where the files
        say less (a status write that failed, a launch still in flight), and writes it again."""
        for job, status in cache.decided.items():
            on_disk = cache.jobs.get(job)
            if status.attempt > 0 and (on_disk is None or (on_disk.attempt <= status.attempt and on_disk != status)):
                cache.jobs[job] = status
                self._write(cache.paths.job_status_file(job), partial(job_status_to_toml, status))
                self.recorder.job(cache.paths.name, status)
        cache.decided = {}

    def _check_process(self, cache: PipelineCache, job: str, status: JobStatus) -> None:
        if (cache.paths.name, job, status.attempt) not in self._own:  # ours: the executor reports its end
            self.launcher.check(cache, job, status)

    # -- applying actions -----------------------------------------------------------------

    def _apply(self, action: Action, now: datetime) -> None:
        match action:
            case SetJob():
                self._set_job(action)
            case SetPipeline():
                cache = self.pipelines[action.pipeline]
                self.notifier.pipeline(action.pipeline, cache.pipeline, cache.status, action.status,
                                       cache.jobs.values())
                cache.status = action.status
                status = with_source_warning(cache.paths, action.status)
                self._write(cache.paths.status_file, pipeline_status_to_toml(status))
                self.recorder.pipeline_status(action.pipeline, status)
                if action.event:
                    self.log(f"{action.pipeline}: {action.event}")
            case Start():
                cache = self.pipelines[action.pipeline]
                self._own.add((action.pipeline, action.job, action.attempt))
                cache.alive[action.job] = True
                self.launcher.start(cache, action)
            case Kill():
                run = run_of(self.root.pipeline(action.pipeline), action.job, action.attempt)
                self.launcher.kill(run, action.signal, action.reason)
            case SpawnJob():
                self._spawn(action)
            case DoneRequest():
                self._done_request(action)
            case Reuse():  # `cache = true`: before the status that names the attempt (scheduler/cache)
                paths = self.pipelines[action.pipeline].paths
                record_reuse(paths.workspace(action.job), paths.log_file(action.job, action.attempt), action.attempt,
                             action.commit, action.reused_from)
            case _:
                assert_never(action)

    def _set_job(self, action: SetJob) -> None:
        cache = self.pipelines[action.pipeline]
        self.notifier.job(action.pipeline, cache.pipeline, cache.status, cache.jobs.get(action.status.job),
                          action.status)
        cache.set_job(action.status)
        self._write(cache.paths.job_status_file(action.status.job), partial(job_status_to_toml, action.status))
        self.recorder.job(action.pipeline, action.status)
        if action.event:
            self.log(f"{action.pipeline}/{action.event}")

    def _done_request(self, action: DoneRequest) -> None:
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
        try:
            regression.write_spawned(self.root, paths, action)
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

    def _space_back(self) -> None:
        """Called from the space prober: wake the loop, and let the index be made again at once."""
        self.recorder.retry_now()
        self.events.put(SpaceBack())

    def _resume(self) -> None:
        """Space is back: write the fix-ups' specs, start the attempts a full disk held back."""
        while True:
            try:
                self._spawn(self._held.get_nowait())
            except queue.Empty:
                break
        self.launcher.resume(lambda name: self.pipelines[name].jobs if name in self.pipelines else {})

    # -- results --------------------------------------------------------------------------

    def _selected_done(self) -> bool:
        chosen = [c for n, c in self.pipelines.items() if self._selected(n)]
        return all(c.stopped() and not c.requests for c in chosen) and not self.dirty

    def _selected_succeeded(self) -> bool:
        return all(c.status.state is PipelineState.SUCCEEDED for n, c in self.pipelines.items() if self._selected(n))
