"""The driver's launcher: starts attempts (workspace, prompt, process) off the loop thread, and
records their ends (the attempt's commit and error.json) in the executor's waiter threads. It
reads nothing the loop thread owns: what a launch or an end needs is handed over with it."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from glob import glob
from pathlib import Path

from clowder import diskfull, workspace
from clowder.crash import describe, write_crash_log
from clowder.driver.cache import PipelineCache, before_last, run_of
from clowder.driver.events import AttemptEnded, Event, SourceWarning
from clowder.driver.log import Log
from clowder.errors import ClowderError, DiskFull
from clowder.executor import Executor, Exited, OnExit, Probe, Run, run_file
from clowder.harness import agent as harness_agent
from clowder.metadata import write_metadata
from clowder.scheduler import NO_CHANGES, Outcome, Start, attempt_ending
from clowder.scheduler.gate import trailers
from clowder.scheduler.inputs import trailers as input_trailers
from clowder.spec import Config, JobSpec, Pipeline, Source
from clowder.state import Approval, Inputs, JobState, JobStatus, KillReason, Trigger, utcnow
from clowder.tree import PipelinePaths, Root

Key = tuple[str, str, int]  # (pipeline, job, attempt)


@dataclass(frozen=True)
class _Launched:
    """The specs an attempt was launched with: its end is judged by them, even after an edit."""

    pipeline: Pipeline
    spec: JobSpec
    approval: Approval | None = None  # a gated job's: its commit's trailers say who let it start
    inputs: Inputs | None = None  # what it was made from: its commit's trailers say it too


def _launched(cache: PipelineCache, spec: JobSpec, attempt: int) -> _Launched:
    assert cache.pipeline is not None
    status = cache.jobs.get(spec.name)
    last = status.attempts[-1] if status is not None and status.attempts else None
    ours = last if last is not None and last.number == attempt else None
    return _Launched(cache.pipeline, spec, ours.approval if ours else None, ours.inputs if ours else None)


@dataclass(frozen=True)
class Launch:
    """One attempt to start, with all the loop thread knew for it."""

    spec: JobSpec
    paths: PipelinePaths
    attempt: int
    trigger: Trigger
    upstreams: tuple[workspace.Upstream, ...]
    source: Source | None
    agent: harness_agent.Context | None

    @property
    def key(self) -> Key:
        return (self.paths.name, self.spec.name, self.attempt)


class Launcher:
    def __init__(self, root: Root, config: Config, log: Log, events: queue.SimpleQueue[Event],
                 space: diskfull.Space, make_executor: Callable[[OnExit], Executor]) -> None:
        self.root = root
        self.config = config
        self.log = log
        self.events = events
        self.space = space
        self.executor = make_executor(self.on_exit)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="clowder-launch")
        self._launching: dict[Key, Future[None]] = {}
        # What a waiter thread needs to record an attempt's end, handed over by the loop thread.
        self._launched: dict[Key, _Launched] = {}
        self._lock = threading.Lock()
        # Launches a full disk held back, until space is back.
        self.held: queue.SimpleQueue[Launch] = queue.SimpleQueue()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        self.executor.shutdown()

    # -- starting -----------------------------------------------------------------------------

    def start(self, cache: PipelineCache, action: Start) -> None:
        """Called in the loop thread, which owns the statuses: take what the launch needs now."""
        assert cache.pipeline is not None
        spec = cache.pipeline.jobs[action.job]
        paths = cache.paths
        self.hand_over(cache, action.job, action.attempt)
        # An agent's prompt context is taken here, in the loop thread, which owns the statuses.
        agent = harness_agent.context(cache.pipeline, spec, action.attempt, paths.workspace(spec.name),
                                      dict(cache.jobs)) if spec.agent else None
        launch = Launch(spec, paths, action.attempt, cache.jobs[action.job].attempts[-1].trigger,
                        _upstreams(cache, spec, action.sources), cache.pipeline.spec.source, agent)
        # Launching (the workspace, directories, log file, fork) is slow file-system work: a
        # small pool does it so the loop goes on deciding while processes start.
        self._launching[launch.key] = self._pool.submit(self._launch, launch)

    def kill(self, run: Run, sig: int, reason: KillReason) -> None:
        launching = self._launching.get((run.pipeline, run.job, run.attempt))
        if launching is not None:
            # Killed once started, not while being forked; the loop does not wait for the start.
            launching.add_done_callback(lambda _: self.executor.kill(run, sig, reason))
            return
        self.executor.kill(run, sig, reason)

    def hand_over(self, cache: PipelineCache, job: str, attempt: int) -> None:
        """Note, for the waiter thread that sees the attempt end, the specs it ran with."""
        spec = cache.pipeline.jobs.get(job) if cache.pipeline else None
        if spec is not None and cache.pipeline is not None:
            with self._lock:
                self._launched[(cache.paths.name, job, attempt)] = _launched(cache, spec, attempt)

    def _launch(self, launch: Launch) -> None:
        spec, paths, attempt = launch.spec, launch.paths, launch.attempt
        held: BaseException | None = None
        try:
            self._prepare_and_run(launch)
        except Exception as e:  # whatever stops a start (Popen's ValueError too) fails the attempt now, saying why
            if diskfull.caused_by_full_disk(e, paths.workspaces_dir):
                held = e  # not a failure of the attempt: it starts, as the same attempt, when space is back
            else:
                self.log(f"{paths.name}/{spec.name}: could not start attempt {attempt}: {e}")
                self.end_unstarted(spec, paths, attempt, f"could not start: {e}")
        finally:
            self._launching.pop(launch.key, None)
            if held is not None:  # after the pop: the new launch is registered by the loop
                self._hold(launch, held)

    def _prepare_and_run(self, launch: Launch) -> None:
        spec, paths, attempt = launch.spec, launch.paths, launch.attempt
        prepared = workspace.prepare(workspace.AttemptRef(paths.workspace(spec.name), paths.name, spec.name, attempt),
                                     launch.upstreams, workspace.Start(self.identity(), launch.source, self.root.path,
                                                                       spec.sparse_checkout))
        if prepared.warning:  # said once, here and in the pipeline's status message (_apply)
            self.log(f"{paths.name}: warning: {prepared.warning}")
            self.events.put(SourceWarning(paths.name))
        if prepared.problem:  # a merge conflict: the attempt fails without running
            self.log(f"{paths.name}/{spec.name}: attempt {attempt} cannot start: {prepared.problem}")
            self.end_unstarted(spec, paths, attempt, prepared.problem, prepared.conflicts)
            return
        if spec.regression_context:  # a fix-up reads why it exists here (and in its prompt)
            write_metadata(paths.workspace(spec.name), spec.name, "regression.json", json.dumps(
                {"parent": spec.parent, "regression_of": spec.regression_of, **spec.regression_context},
                indent=2, default=str) + "\n")
        # An agent job's prompt is composed now that its workspace holds its upstreams' outputs.
        harness = harness_agent.start(self.config, launch.agent, self.root.path) if launch.agent else None
        argv = harness.argv if harness else _argv(spec)
        # Only the job's own variables: the executor adds the environment of the machine it runs on.
        env = {**self.identity().env(), **(harness.env if harness else {}), **spec.env,
               "CLOWDER_ROOT": str(self.root.path),
               "CLOWDER_PIPELINE": paths.name, "CLOWDER_JOB": spec.name, "CLOWDER_ATTEMPT": str(attempt)}
        base = run_of(paths, spec.name, attempt)
        run = Run(paths.name, spec.name, attempt, argv, base.cwd, env, base.log_file, base.run_file,
                  dict(spec.resources))
        diskfull.ensure_room(paths.dir)
        handle = self.executor.start(run)
        how = "" if launch.trigger is Trigger.START else f" ({launch.trigger})"
        where = f"pid {handle}" if isinstance(handle, int) else f"task {handle}"
        self.log(f"{paths.name}/{spec.name} started attempt {attempt}{how}, {where}: {_show(argv)}")

    # -- a full disk ----------------------------------------------------------------------

    def _hold(self, launch: Launch, error: BaseException) -> None:
        """An attempt that could not be prepared for lack of space waits for space, still running
        as far as its status says (the status is written once there is room for it)."""
        log = launch.paths.log_file(launch.spec.name, launch.attempt)
        with contextlib.suppress(OSError):  # made before the failed start: without a process it would read as lost
            if log.stat().st_size == 0 and not run_file(log).exists():
                log.unlink()
        self.held.put(launch)  # before `hit`: it is resumed after
        self.space.hit(f"starting {launch.paths.name}/{launch.spec.name} attempt {launch.attempt}", error)

    def resume(self, jobs: Callable[[str], Mapping[str, JobStatus]]) -> None:
        """Space is back: start the attempts a full disk held back that are still due (`jobs`:
        a pipeline's statuses, read in the loop thread that calls this)."""
        while True:
            try:
                launch = self.held.get_nowait()
            except queue.Empty:
                return
            status = jobs(launch.paths.name).get(launch.spec.name)
            if status is None or status.state is not JobState.RUNNING or status.attempt != launch.attempt:
                continue
            if status.killing is not None:  # cancelled while it waited
                self._pool.submit(self.end_unstarted, launch.spec, launch.paths, launch.attempt,
                                  "cancelled before it started", (), status.killing.reason)
            else:
                self._launching[launch.key] = self._pool.submit(self._launch, launch)

    def identity(self) -> workspace.Identity:
        return workspace.Identity(self.config.git_author_name, self.config.git_author_email)

    # -- ending -------------------------------------------------------------------------------

    def on_exit(self, exited: Exited) -> None:
        """Called from a waiter thread when an attempt's process is gone. It reads nothing the
        loop thread owns: what it needs came with the event, or was handed over at the start."""
        pipeline, job, attempt = exited.pipeline, exited.job, exited.attempt
        with self._lock:
            launched = self._launched.pop((pipeline, job, attempt), None)
        try:
            outcome = self.observe_end(self.root.pipeline(pipeline), job, attempt, exited.killed_for, launched)
        except Exception as e:  # the attempt still ends, failed, with why: never left `running`
            path = write_crash_log(self.root.state_dir, e, f"clowder daemon: the end of {pipeline}/{job} #{attempt}")
            outcome = Outcome(None, utcnow(), problem=f"Clowder failed recording how it ended: {describe(e)}"
                              + (f"; traceback in {path}" if path else ""), killed_for=exited.killed_for)
        self.events.put(AttemptEnded(pipeline, job, attempt, outcome))

    def check(self, cache: PipelineCache, job: str, status: JobStatus) -> None:
        """What became of an attempt this daemon did not start (loop thread), as the executor
        finds it. It is over only once nothing of it runs: until then the executor watches it,
        and ends what it left when its wrapper ends."""
        run = run_of(cache.paths, job, status.attempt)
        killed_for = status.killing.reason if status.killing else None
        probe = self.executor.probe(run)
        if probe is Probe.ENDED:
            self.executor.end(run)  # what it left running (`sleep 37 &`) does not outlive it
            spec = cache.pipeline.jobs.get(job) if cache.pipeline else None
            launched = _launched(cache, spec, status.attempt) if cache.pipeline and spec else None
            cache.outcomes[job] = (status.attempt, self.observe_end(cache.paths, job, status.attempt, killed_for,
                                                                    launched))
        elif probe is Probe.LOST:  # it never started: start it again
            cache.set_job(before_last(status))
            self.log(f"{cache.paths.name}/{job}: attempt {status.attempt} was recorded but never started; "
                     "starting it again")
        else:
            if cache.alive.get(job) is not True:  # a sweep finds adopted attempts again: once is enough
                # Its wrapper may have gone (kill -9) while its command runs on: the executor ends
                # what is left before reporting it lost, so no retry ever runs beside it.
                self.hand_over(cache, job, status.attempt)
                pid = self.executor.adopt(run, killed_for)
                self.log(f"{cache.paths.name}/{job}: adopted running attempt {status.attempt}"
                         + (f" (pid {pid})" if pid is not None else " (starting)"))
            cache.alive[job] = True

    def observe_end(self, paths: PipelinePaths, job: str, attempt: int, killed_for: KillReason | None,
                    launched: _Launched | None) -> Outcome:
        """How an attempt ended, from its exit record and its workspace."""
        record = self.executor.exit_record(run_of(paths, job, attempt))
        spec = launched.spec if launched else None
        # An agent's output.json is extracted from its action log first: it may be a declared output.
        collected = _collect(paths.workspace(job), job) if spec is not None and spec.agent else None
        if collected is not None and spec is not None and launched is not None:
            collected = harness_agent.settle(self.config, launched.pipeline, spec, paths.workspace(job),
                                             self.root.path, collected)  # prices, output_schema
        if record is None:
            outcome = Outcome(None, utcnow(), killed_for=killed_for)
        else:
            problem = _missing_outputs(paths.workspace(job), spec) if record.exit_code == 0 and spec else ""
            if collected is not None and record.exit_code == 0 and collected.problem:
                problem = collected.problem  # a malformed action log fails the attempt
            outcome = Outcome(record.exit_code, record.ended_at, record.signal, problem, killed_for=killed_for)
        if collected is not None:
            outcome = replace(outcome, usage=collected.usage, failure_kind=collected.failure_kind,
                              failure_text=collected.failure_text)
        end = attempt_ending(outcome, spec)
        error = None if end.state is JobState.SUCCEEDED else workspace.ErrorContext(
            end.reason, outcome.exit_code, outcome.signal, workspace.log_tail(paths.log_file(job, attempt)))
        # The commit is made here, in the attempt's waiter thread: jobs commit in parallel.
        spec = spec or JobSpec(job)
        more = trailers(launched.approval if launched else None) + input_trailers(launched.inputs if launched else None)
        return self._commit(paths, spec, attempt, outcome,
                            workspace.End(end.state.value, self.identity(), spec.outputs, error, more))

    def end_unstarted(self, spec: JobSpec, paths: PipelinePaths, attempt: int, problem: str,
                      conflicts: tuple[str, ...] = (), killed_for: KillReason | None = None) -> None:
        """An attempt that failed before its process ran still ends with a commit (error.json)."""
        with self._lock:
            self._launched.pop((paths.name, spec.name, attempt), None)
        outcome = Outcome(None, utcnow(), problem=problem, killed_for=killed_for)
        end = attempt_ending(outcome, spec)
        error = workspace.ErrorContext(end.reason, conflicts=conflicts)
        self.events.put(AttemptEnded(paths.name, spec.name, attempt,
                                     self._commit(paths, spec, attempt, outcome,
                                                  workspace.End(end.state.value, self.identity(), spec.outputs,
                                                                error))))

    def _commit(self, paths: PipelinePaths, spec: JobSpec, attempt: int, outcome: Outcome,
                ending: workspace.End) -> Outcome:
        """The outcome with the attempt's commit, base, artifacts and consumption added."""
        while True:
            try:
                ref = workspace.AttemptRef(paths.workspace(spec.name), paths.name, spec.name, attempt)
                done = workspace.finish(ref, ending)
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
        note = NO_CHANGES if spec.regression_of and ending.state == "succeeded" and not done.changed else ""
        return replace(outcome, commit=done.commit, base_commit=done.base_commit, artifacts=done.artifacts,
                       consumed=done.consumed, note=note)


def _upstreams(cache: PipelineCache, spec: JobSpec, sources: tuple[str, ...] = ()) -> tuple[workspace.Upstream, ...]:
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


def _only_consumer(cache: PipelineCache, upstream: str, job: str) -> bool:
    """Whether `job` is the only job of the pipeline whose workspace starts from `upstream`."""
    assert cache.pipeline is not None
    mine = upstream in cache.pipeline.jobs[job].sources if job in cache.pipeline.jobs else False
    return cache.pipeline.consumers.get(upstream, 0) == int(mine)


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


def _show(argv: tuple[str, ...]) -> str:
    """A command for a log line: one line, a long shell script cut to its first line."""
    text = " ".join(argv).strip()
    first = next((line for line in text.splitlines() if line.strip()), "")
    return first if first == text else f"{first.strip()} …"


def _missing_outputs(workspace: Path, spec: JobSpec) -> str:
    missing = [g for g in spec.outputs if not glob(g, root_dir=workspace, recursive=True, include_hidden=True)]
    return f"missing declared output(s): {', '.join(missing)}" if missing else ""


