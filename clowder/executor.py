"""Executors run attempts. The local one starts each attempt as its own process group under a
tiny /bin/sh wrapper that records the exit on disk, so an attempt's end is never lost even
when no daemon is alive to see it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import selectors
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from clowder.fsio import read_input
from clowder.processes import AttemptProcesses
from clowder.state import KillReason
from clowder.workspace.repo import job_environ

# argv: sh -c WRAPPER clowder-attempt RUNFILE CGROUP COMMAND...
# The run file is the attempt's own record: the wrapper's pid on its first line, then, once the
# command has ended, "exit <status>" (one file: each file created costs on the per-job path).
# The wrapper joins the attempt's cgroup (CGROUP, '' where there is none) before it starts
# anything, so nothing the attempt starts is outside it; if it cannot, the attempt fails (125)
# rather than run where its children could not all be found again.
# The trap keeps the wrapper alive through a SIGTERM sent to the group, so it can still record
# how the command ended (POSIX sh runs the trap only after the foreground command finishes).
# The writes are builtin `echo`s, so no extra process; the exit line is read only after the
# wrapper has exited, so a reader never sees it half written. A run file without an exit line
# means the attempt has not ended, or ended without a record (lost).
WRAPPER = ('echo $$ > "$1"; run=$1; cg=$2; shift 2; '
           'if [ -n "$cg" ] && ! { echo $$ > "$cg/cgroup.procs"; } 2>/dev/null; then '
           'echo "clowder: cannot join the attempt\'s cgroup $cg" >&2; echo "exit 125" >> "$run"; exit 125; fi; '
           'trap : TERM INT HUP; "$@"; echo "exit $?" >> "$run"')
RUN_SUFFIX = ".run"


def run_file(log_file: Path) -> Path:
    """logs/<job>/<n>.run, beside the attempt's log."""
    return log_file.with_suffix(RUN_SUFFIX)


@dataclass(frozen=True)
class Run:
    """One attempt to run: everything needed to start it, and to find it again (a restart)."""

    pipeline: str
    job: str
    attempt: int
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]  # the job's own variables: the executor adds its machine's environment below them
    log_file: Path
    run_file: Path
    resources: Mapping[str, int] = field(default_factory=dict)  # the job's `resources`: units of named pools

    @functools.cached_property  # asked for at each step of the attempt: a digest each time showed in the profile
    def id(self) -> str:
        """The attempt's identity among every root's, carried by all its processes. Made from
        what a restarted daemon knows too: the log file's path names the root."""
        digest = hashlib.sha256(str(self.log_file).encode()).hexdigest()[:16]
        return f"{self.pipeline}/{self.job}/{self.attempt}/{digest}"

    @property  # not cached: a Run goes to Dask workers, whose cgroups are their own
    def processes(self) -> AttemptProcesses:
        return AttemptProcesses.of(self.id)


@dataclass(frozen=True)
class ExitRecord:
    exit_code: int | None  # None: the process vanished without a record (lost)
    ended_at: datetime

    @property
    def signal(self) -> int | None:
        # sh reports a command killed by signal N as status 128+N.
        if self.exit_code is not None and 128 < self.exit_code < 128 + 65:
            return self.exit_code - 128
        return None


RUN_LIMIT = 4096  # a pid line and an exit line


def _read_run(run: Path) -> str | None:
    """The run file's text; None when there is none. Something else in its place (a FIFO, a
    link out of the root, a huge file) is never read and holds no record: reading it could hang."""
    try:
        return read_input(run, RUN_LIMIT).decode(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return ""


def read_exit(run: Path) -> ExitRecord | None:
    """The recorded end of an attempt, or None if it has not ended (or not recorded it)."""
    text = _read_run(run)
    if not text:
        return None
    try:
        mtime = run.stat().st_mtime
    except FileNotFoundError:
        return None
    for line in text.splitlines()[1:]:
        code = line.removeprefix("exit ").strip()
        if line.startswith("exit ") and code.lstrip("-").isdigit():
            return ExitRecord(int(code), datetime.fromtimestamp(mtime, UTC))
    return None


def read_pid(run: Path) -> int | None:
    text = _read_run(run)
    if text is None:
        return None
    first = text.partition("\n")[0].strip()
    return int(first) if first.isdigit() else None


def pid_runs(pid: int, run: Path) -> bool:
    """Whether `pid` is alive and still our wrapper for this attempt (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if str(run).encode() not in cmdline:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def signal_group(pid: int, sig: int) -> bool:
    """Send `sig` to the attempt's whole process group (its pid leads the group)."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@dataclass(frozen=True)
class Exited:
    """An attempt's processes are gone: what the executor tells whoever waits for it. Why it was
    killed travels with it, so the end is judged from what the executor saw, in one place."""

    pipeline: str
    job: str
    attempt: int
    killed_for: KillReason | None = None


OnExit = Callable[[Exited], None]


class Probe(StrEnum):
    """What became of an attempt, as its executor sees it (after a restart, or on a sweep)."""

    ENDED = "ended"  # its end is recorded: exit_record() says how
    RUNNING = "running"  # it runs (or its leftovers do): adopt() it, and its end is reported
    QUEUED = "queued"  # it has not started yet, but is on its way: adopt() it too
    LOST = "lost"  # nothing of it runs and it never started: start it again


# What start() returns: a pid for the local executor, a task key for a remote one. Only logged.
Handle = int | str


def environ(launch: Run) -> dict[str, str]:
    """The environment an attempt runs with: the machine's where it runs (never the daemon's,
    which may be another machine's), the job's own variables over it, and the attempt's marker."""
    env = {**job_environ(os.environ), **launch.env}
    return {**env, **launch.processes.env(env)}


class Executor(Protocol):
    """Starts attempts and says when they end. The scheduler never assumes an attempt is its
    own child: it may have been started by an earlier daemon, or run on another machine."""

    def start(self, launch: Run) -> Handle: ...

    def probe(self, launch: Run) -> Probe: ...

    def exit_record(self, launch: Run) -> ExitRecord | None: ...

    def adopt(self, launch: Run, killed_for: KillReason | None = None) -> int | None: ...

    def kill(self, launch: Run, sig: int, reason: KillReason) -> None: ...

    def end(self, launch: Run) -> None: ...

    def shutdown(self) -> None: ...


class _Reaper:
    """One thread that waits for every child at once through pidfds (a thread per child costs
    more than the child itself on this path), reaps it, and hands its end to a small pool."""

    def __init__(self, on_exit: Callable[[Run], None]) -> None:
        self._on_exit = on_exit
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._incoming: list[tuple[int, subprocess.Popen[bytes], Run]] = []
        # Ending an attempt may mean git work: let a few run side by side.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="clowder-end")
        self._stopped = False
        threading.Thread(target=self._run, daemon=True, name="clowder-reaper").start()

    def add(self, proc: subprocess.Popen[bytes], launch: Run) -> None:
        fd = os.pidfd_open(proc.pid)
        with self._lock:
            self._incoming.append((fd, proc, launch))
        os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while not self._stopped:
            for key, _ in self._selector.select():
                if key.data is None:
                    os.read(self._wake_r, 4096)
                    with self._lock:
                        incoming, self._incoming = self._incoming, []
                    for fd, proc, launch in incoming:
                        self._selector.register(fd, selectors.EVENT_READ, (proc, launch))
                    continue
                proc, launch = key.data
                self._selector.unregister(key.fd)
                os.close(key.fd)
                self._pool.submit(self._ended, proc, launch)

    def _ended(self, proc: subprocess.Popen[bytes], launch: Run) -> None:
        # The wrapper is a zombie until reaped, so its pid, the group's id, cannot be reused yet:
        # the group is killed first, with everything else of the attempt.
        launch.processes.end(group=proc.pid)
        proc.wait()  # reaps the wrapper: no zombies
        self._on_exit(launch)

    def stop(self) -> None:
        self._stopped = True
        os.write(self._wake_w, b"x")
        self._pool.shutdown(wait=True)


class LocalExecutor:
    """Runs attempts as process groups on this machine. `on_exit(Exited)` is called from a worker
    thread once an attempt has ended and its exit record (if any) is on disk."""

    def __init__(self, on_exit: OnExit, poll_interval: float = 0.2) -> None:
        self._on_exit = on_exit
        self._poll = poll_interval
        self._adopted: dict[tuple[str, str, int], tuple[int | None, Run]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._reaper = _Reaper(self._exited)
        self._made: set[Path] = set()
        self._kills: dict[str, KillReason] = {}  # launch id -> why it is being killed

    def _mkdir(self, d: Path) -> None:
        if d not in self._made:
            d.mkdir(parents=True, exist_ok=True)
            self._made.add(d)

    def start(self, launch: Run) -> int:
        self._mkdir(launch.log_file.parent)
        self._mkdir(launch.cwd)
        processes = launch.processes
        argv = ["/bin/sh", "-c", WRAPPER, "clowder-attempt", str(launch.run_file), processes.prepare(),
                *launch.argv]
        # Only this attempt's wrapper writes its run file, and it starts now: anything in its
        # place (an attempt that never started, a FIFO left by hand) goes, or the wrapper could block.
        launch.run_file.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(launch.log_file).st_mode):
                launch.log_file.unlink()  # a FIFO: opening it to write would block until someone reads
        # The log file is created before the process: a restarted daemon that finds it knows
        # the attempt was launched, even if the status file does not say so yet.
        with open(launch.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv, cwd=launch.cwd, env=environ(launch), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        self._reaper.add(proc, launch)
        return proc.pid

    def _exited(self, launch: Run) -> None:
        with self._lock:
            killed_for = self._kills.pop(launch.id, None)
        self._on_exit(Exited(launch.pipeline, launch.job, launch.attempt, killed_for))

    def probe(self, launch: Run) -> Probe:
        if read_exit(launch.run_file) is not None:
            return Probe.ENDED
        if read_pid(launch.run_file) is not None:
            return Probe.RUNNING
        # No pid: the wrapper is starting (something with the attempt's marker runs), or the
        # last daemon died before it ran (its log file, made before the process, may exist).
        return Probe.QUEUED if self.running(launch) else Probe.LOST

    def exit_record(self, launch: Run) -> ExitRecord | None:
        return read_exit(launch.run_file)

    def adopt(self, launch: Run, killed_for: KillReason | None = None) -> int | None:
        """Watch an attempt started by an earlier daemon (not our child: poll its pid). Without a
        pid yet, its wrapper may still be starting: it has ended when nothing of it runs.
        `killed_for`: the earlier daemon was killing it, for that reason. Returns the pid watched."""
        pid = read_pid(launch.run_file)
        with self._lock:
            if killed_for is not None:
                self._kills[launch.id] = killed_for
            self._adopted[(launch.pipeline, launch.job, launch.attempt)] = (pid, launch)
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll_adopted, daemon=True, name="adopted")
                self._poller.start()
        return pid

    def _poll_adopted(self) -> None:
        while not self._stop.wait(self._poll):
            with self._lock:
                watched = list(self._adopted.items())
            ended = []
            for key, (pid, launch) in watched:
                if pid is None and (pid := read_pid(launch.run_file)) is not None:
                    with self._lock:
                        self._adopted[key] = (pid, launch)
                if pid_runs(pid, launch.run_file) if pid is not None else launch.processes.running():
                    continue
                with self._lock:
                    del self._adopted[key]
                ended.append(launch)
            for launch in ended:
                self.end(launch)
                self._exited(launch)

    def kill(self, launch: Run, sig: int, reason: KillReason) -> None:
        # Noted before the signal: the end it causes is reported with its reason.
        with self._lock:
            self._kills[launch.id] = reason
        pid = read_pid(launch.run_file)
        if pid is not None and pid_runs(pid, launch.run_file):
            signal_group(pid, sig)
        elif pid is not None and sig == signal.SIGKILL:
            # The wrapper is gone but its group may not be (a child that ignored SIGTERM).
            signal_group(pid, sig)
        # Children that left the group (setsid, a daemon's double fork) are told too.
        launch.processes.signal(sig, pid)

    def alive(self, launch: Run) -> bool:
        pid = read_pid(launch.run_file)
        return pid is not None and pid_runs(pid, launch.run_file)

    def running(self, launch: Run) -> bool:
        """Whether anything of the attempt runs: its wrapper or anything it started."""
        return self.alive(launch) or launch.processes.running()

    def end(self, launch: Run) -> None:
        """Kill whatever of an attempt whose wrapper has ended still runs, and wait for it."""
        launch.processes.end()

    def shutdown(self) -> None:
        self._stop.set()
        self._reaper.stop()
