"""What `clowder run`, `watch`, `cancel`, `retry` and `spawn` do, behind the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from clowder import known
from clowder import requests as req_mod
from clowder.errors import UsageError
from clowder.follow import Follower
from clowder.fsio import read_input, try_lock
from clowder.spec import format_duration
from clowder.state import JobStatus, PipelineState, PipelineStatus, read_pipeline_status
from clowder.tree import Root

if TYPE_CHECKING:
    from clowder.driver import Driver


def unfinished(root: Root) -> list[str]:
    """The pipelines `clowder run` runs by default: those that have not ended, or that a request
    will wake."""
    return _unfinished(root)


def _unfinished(root: Root) -> list[str]:
    out = []
    for name in root.pipeline_names():
        try:
            paths = root.pipeline(name)
        except UsageError:
            continue
        try:
            state = read_pipeline_status(paths.status_file).state
        except Exception:
            state = PipelineState.PENDING
        if not state.terminal or any(paths.requests_dir.glob("*.toml")):
            out.append(name)
    return out


def _daemon_running(root: Root) -> bool:
    with try_lock(root.path) as got:  # the lock a daemon holds (Driver.serve): the root directory
        return not got


def run(root: Root, pipelines: list[str] | None, max_parallel: int | None = None, poll: bool | None = None,
        log_file: Path | None = None, out: Console | None = None) -> bool:
    """Run pipelines to the end in the foreground; True if all succeeded. If a daemon serves the
    root, follow its decisions instead, and run them here if it goes away."""
    names = pipelines if pipelines is not None else _unfinished(root)
    for name in names:
        known.pipeline(root, name)
    if not names:
        (out or Console(stderr=True)).print("nothing to run: every pipeline has ended", style=None)
        return True
    from clowder.driver import Driver, stderr_log  # watchdog, git: only for what schedules
    from clowder.errors import LockHeld

    log = stderr_log(log_file=log_file)
    console = out or Console()
    while True:
        if _daemon_running(root):
            log("a clowder daemon is serving this root; following its decisions")
            followed = _follow(root, names, log, console)
            if followed is not None:
                ok = followed
                break
            log("the clowder daemon is gone; running the pipelines here")
        driver = Driver(root, max_parallel=max_parallel, only=names, log=log, poll=poll)
        try:
            ok = _schedule(driver, console)
        except LockHeld:  # a daemon started between the look and the lock: follow it instead
            continue
        break
    for name in names:
        status = read_pipeline_status(root.pipeline(name).status_file)
        log(f"{name}: {status.state.value}" + (f" — {status.message}" if status.message else ""))
    return ok


def _schedule(driver: Driver, console: Console) -> bool:
    with _signals_stop(driver):
        if console.is_terminal:
            with Live(_progress(driver), console=console, refresh_per_second=4, transient=False) as live:
                driver.on_tick = lambda d: live.update(_progress(d))
                return driver.serve(until_done=True)
        return driver.serve(until_done=True)


FOLLOW_POLL = 0.2  # seconds between looks at the status files (and at the daemon's lock)


def _follow(root: Root, names: list[str], log: Callable[[str], None], console: Console) -> bool | None:
    """Show a daemon's decisions on `names` as it records them, until they have all ended (True
    if all succeeded) or the daemon is gone (None: the caller takes over)."""
    follower = Follower(root, names)
    live = Live(_table([]), console=console, refresh_per_second=4, transient=False) \
        if console.is_terminal else contextlib.nullcontext()
    with live:
        while True:
            for line in follower.look():
                log(line)
            if isinstance(live, Live):
                live.update(_followed(follower))
            if follower.ended():
                return follower.succeeded()
            if not _daemon_running(root):
                # It may have recorded the last decisions just before it went.
                for line in follower.look():
                    log(line)
                if isinstance(live, Live):
                    live.update(_followed(follower))
                return follower.succeeded() if follower.ended() else None
            time.sleep(FOLLOW_POLL)


def _progress(driver: Driver) -> Table:
    rows: list[tuple[str, ...]] = []
    for name, cache in sorted(driver.pipelines.items()):
        if driver.only is not None and name not in driver.only:
            continue
        rows.append(_pipeline_row(name, cache.status))
        rows.extend(_job_row(status) for status in cache.jobs.values())
    return _table(rows)


def _followed(follower: Follower) -> Table:
    rows: list[tuple[str, ...]] = []
    for name, status, jobs in follower.statuses():
        rows.append(_pipeline_row(name, status))
        rows.extend(_job_row(job) for job in jobs)
    return _table(rows)


def _table(rows: Iterable[tuple[str, ...]]) -> Table:
    """The progress table `clowder run` draws on a terminal, scheduling or following a daemon."""
    table = Table("PIPELINE", "JOB", "STATE", "ATTEMPT", "DURATION", "MESSAGE", box=None)
    for row in rows:
        table.add_row(*row)
    return table


def _pipeline_row(name: str, status: PipelineStatus) -> tuple[str, ...]:
    return (name, "", status.state.value, "", "", status.message)


def _job_row(status: JobStatus) -> tuple[str, ...]:
    duration = status.last.duration if status.last else None
    return ("", status.job, status.state.value, str(status.attempt or "-"),
            format_duration(duration) if duration is not None else "-", status.message)


class _signals_stop:
    """SIGTERM (and SIGINT for the daemon) stop launching and end the loop cleanly."""

    def __init__(self, driver: Driver, sigint: bool = False) -> None:
        self.driver = driver
        self.signals = [signal.SIGTERM] + ([signal.SIGINT] if sigint else [])
        self.old: dict[int, object] = {}

    def __enter__(self) -> None:
        for sig in self.signals:
            self.old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.driver.log(f"received {signal.Signals(signum).name}: no new attempts; running jobs go on and the "
                        "next daemon adopts them")
        self.driver.stop()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def watch(root: Root, max_parallel: int | None = None, poll: bool | None = None, log_file: Path | None = None,
          sweep: float | None = None) -> None:
    from clowder.driver import Driver, stderr_log

    log = stderr_log(log_file=log_file)
    driver = Driver(root, max_parallel=max_parallel, log=log, poll=poll)
    with _signals_stop(driver, sigint=True):
        driver.serve(until_done=False, sweep=sweep,
                     announce=f"clowder watch serving {root.path} (max_parallel {driver.limits.max_parallel})")
    log("clowder watch stopped")


def request(root: Root, pipeline: str, action: str, job: str | None, **data: Any) -> req_mod.Request:
    paths = known.pipeline(root, pipeline)
    if job is not None:
        known.job(paths, job, with_spec=True)
    req_mod.check(paths, action, job)
    r = req_mod.drop(root, paths, action, job, **data)
    req_mod.wake(root, pipeline)
    return r


def decide(root: Root, pipeline: str, job: str, action: str, comment: str) -> req_mod.Request:
    """`clowder approve` / `reject`: the decision is the user's who runs it ($USER, else the account)."""
    import getpass

    paths = known.pipeline(root, pipeline)
    known.job(paths, job, with_spec=True)
    try:
        by = getpass.getuser()
    except (KeyError, OSError):  # no $USER and no passwd entry (a bare container)
        by = f"uid {os.getuid()}"
    return req_mod.decide(root, paths, action, job, by, comment)


def spawn(root: Root, job: str, reason: str, context_file: Path | None) -> tuple[str, req_mod.Request]:
    """Ask for a fix-up of JOB from inside a running job (found through CLOWDER_* variables)."""
    pipeline, spawner, attempt = (os.environ.get(v) for v in ("CLOWDER_PIPELINE", "CLOWDER_JOB", "CLOWDER_ATTEMPT"))
    if not pipeline or not spawner or not attempt or not attempt.isdigit():
        raise UsageError("clowder spawn runs inside a job: CLOWDER_PIPELINE, CLOWDER_JOB and CLOWDER_ATTEMPT "
                         "are not set (use `clowder retry` from outside)")
    paths = known.pipeline(root, pipeline)
    known.job(paths, job, with_spec=True)
    if not reason.strip():
        raise UsageError("--reason must not be empty")
    context = ""
    if context_file is not None:
        try:  # a small regular file: a FIFO would block, /dev/zero fill the memory
            context = read_input(context_file, req_mod.MAX_REQUEST_BYTES).decode(errors="replace")
        except OSError as e:
            raise UsageError(f"{context_file}: cannot read the context file: {e.strerror}") from e
    r = req_mod.drop(root, paths, "spawn", job, spawner=spawner, attempt=int(attempt), reason=reason,
                     context=context)
    req_mod.wake(root, pipeline)
    return pipeline, r
