"""The Dask executor: each attempt is one fire-and-forget task on a Dask distributed cluster whose
workers mount the root at the same path. The tree stays the only record: the task claims its
attempt once, runs it under the local executor's wrapper, and the attempt itself keeps a heartbeat
and applies kill files, so it needs neither the daemon nor its worker to end on the record."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as WaitTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clowder.errors import ClowderError
from clowder.executor import (
    Executor,
    Exited,
    ExitRecord,
    Handle,
    LocalExecutor,
    OnExit,
    Probe,
    Run,
    environ,
    read_exit,
    read_pid,
    signal_group,
)
from clowder.fsio import atomic_write
from clowder.processes import END_TIMEOUT, AttemptProcesses
from clowder.spec import Config
from clowder.state import KillReason
from clowder.storage import exists_now, fresh_stat

# argv: sh -c WRAPPER clowder-attempt RUNFILE CGROUP BEATFILE KILLFILE PYTHON ATTEMPT_ID COMMAND...
# The local executor's wrapper (pid line, cgroup, trap, exit line) with the attempt's own loop
# beside it: each second it touches the heartbeat file and applies a new signal named in the kill
# file to its whole group. It lives as long as the wrapper, on the attempt's machine, whatever
# becomes of the Dask worker that started it (a worker killed with SIGKILL leaves its attempts
# running: they still heartbeat, obey kill files and record their end). dash's kill takes no `--`.
# Where the worker is gone, nobody is left on that machine to end what the attempt leaves (a
# child ignoring SIGTERM, one that called setsid), nor to apply KILL beyond the group: so once
# the wrapper has ended with no worker waiting for it (a zombie whose parent is no longer the
# worker, $PPID: an init that does not reap keeps it a zombie), or when told KILL, the loop
# becomes `PYTHON -m clowder.dask_executor ATTEMPT_ID GROUP CGROUP`, which ends all of the
# attempt but itself. A live worker ends the group itself as soon as the wrapper ends, loop
# included.
# The kill file is opened each time, never tested with `[ -s ]`: on NFS a stat() may answer from
# a cached "no such file" for seconds after the daemon's machine created it.
WRAPPER = ('echo $$ > "$1"; run=$1; cg=$2; beat=$3; kf=$4; py=$5; id=$6; shift 6; '
           'if [ -n "$cg" ] && ! { echo $$ > "$cg/cgroup.procs"; } 2>/dev/null; then '
           'echo "clowder: cannot join the attempt\'s cgroup $cg" >&2; echo "exit 125" >> "$run"; exit 125; fi; '
           'w=$$; ( trap : TERM INT HUP; sent=; while kill -0 $w 2>/dev/null; do '
           'st=; read -r st 2>/dev/null < /proc/$w/stat; st=${st##*) }; '
           'case $st in "Z $PPID "*) ;; Z*) break;; esac; : > "$beat"; '
           'if { read sig < "$kf"; } 2>/dev/null && [ "$sig" != "$sent" ]; then sent=$sig; '
           'if [ "$sig" = KILL ]; then break; fi; kill -s "$sig" 0; fi; '
           'sleep 1; done; exec "$py" -m clowder.dask_executor "$id" $w "$cg" ) & '
           'trap : TERM INT HUP; "$@"; echo "exit $?" >> "$run"')
# A task state the scheduler holds for a task that has not run yet, or is running.
_PENDING = frozenset({"released", "waiting", "no-worker", "queued", "processing", "memory", "erred"})
RPC_TIMEOUT = 10.0  # a call to the scheduler or a worker that takes longer is given up (a dead worker: ~30 s)


@dataclass(frozen=True)
class AttemptFiles:
    """The files beside an attempt's run record (logs/<job>/<n>.*) that the Dask executor adds."""

    claim: Path  # made once, exclusively, by whoever runs the attempt (or cancels it first): host, worker
    beat: Path  # touched each second by the attempt's own loop
    kill: Path  # a signal name, written by the daemon, applied by the attempt's own loop

    @classmethod
    def of(cls, run: Run) -> AttemptFiles:
        log = run.log_file
        return cls(log.with_suffix(".claim"), log.with_suffix(".beat"), log.with_suffix(".kill"))


def task_key(run: Run) -> str:
    """clowder/<pipeline>/<job>/<n>/<digest of the root's log path>: two roots sharing a
    scheduler never share a key (Dask runs a key once)."""
    return f"clowder/{run.id}"


# -- on the worker --------------------------------------------------------------------------------

def claim(path: Path, text: str) -> bool:
    """Create the claim file; False if it exists: the attempt ran, runs, or was cancelled."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    # No fsync: the exclusive create is the claim (atomic on local file systems and NFSv3+);
    # the text only says where it runs. An fsync cost up to ~0.2 s on a loaded disk.
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def _worker_address() -> str:
    try:
        from distributed import get_worker
        return str(get_worker().address)
    except (ImportError, ValueError):
        return ""


def run_attempt(run: Run) -> int | None:
    """The task: claim the attempt, run it, wait for it. A second run of the task (Dask re-runs
    tasks in flight on a worker that died) finds the claim and does nothing. Returns the wrapper's
    exit status, None when it did nothing."""
    files = AttemptFiles.of(run)
    if not claim(files.claim, f"{socket.gethostname()}\n{_worker_address()}\n"):
        return None
    processes = run.processes
    argv = ["/bin/sh", "-c", WRAPPER, "clowder-attempt", str(run.run_file), processes.prepare(), str(files.beat),
            str(files.kill), sys.executable, run.id, *run.argv]
    run.cwd.mkdir(parents=True, exist_ok=True)
    with open(run.log_file, "ab") as log:
        proc = subprocess.Popen(argv, cwd=run.cwd, env=environ(run), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    # Waited for without reaping: the wrapper's pid, the group's id, cannot be reused until the
    # group (what the attempt left behind, its loop) has been ended.
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    processes.end(group=proc.pid)
    return proc.wait()


def signal_attempt(run_file: str, attempt_id: str, sig: int) -> None:
    """On the attempt's worker (client.run): signal its group and what left the group."""
    pid = read_pid(Path(run_file))
    if pid is not None:
        signal_group(pid, sig)
    AttemptProcesses.of(attempt_id).signal(sig, pid)


def end_leftovers(attempt_id: str, group: int, cgroup: str) -> None:
    """What the attempt's own loop becomes when no worker is left to end the attempt (see
    WRAPPER): SIGKILL to its group and to every process of it outside the group, but this one.
    `cgroup`: the attempt's ('' without one), which this process is in: given, since found from
    here AttemptProcesses.of would nest it in itself."""
    os.setsid()  # out of the group it kills
    me, processes = os.getpid(), AttemptProcesses(attempt_id, Path(cgroup) if cgroup else None)
    if processes.cgroup is not None:  # out of the cgroup, so that it can go once empty
        with contextlib.suppress(OSError):
            (processes.cgroup.parent / "cgroup.procs").write_text(str(me))
    deadline = time.monotonic() + END_TIMEOUT
    while True:
        signal_group(group, signal.SIGKILL)
        left = [proc for proc in processes.members(group) if proc.pid != me]
        if not left or time.monotonic() > deadline:
            break
        for proc in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.01)
    if processes.cgroup is not None:
        with contextlib.suppress(OSError):
            processes.cgroup.rmdir()


def _task_states(dask_scheduler: Any, keys: list[str]) -> dict[str, str]:
    """On the scheduler (run_on_scheduler): the state of each key it still knows."""
    return {k: dask_scheduler.tasks[k].state for k in keys if k in dask_scheduler.tasks}


# -- in the daemon --------------------------------------------------------------------------------

@dataclass
class _Watched:
    run: Run
    own: bool  # started by this daemon: its command is known, so it can be submitted again


class DaskExecutor:
    """Starts attempts as Dask tasks; learns of their ends from the task's completion and, for
    attempts that outlived their task or an earlier daemon, from their records on shared storage."""

    def __init__(self, on_exit: OnExit, client: Any, heartbeat_timeout: float = 30.0,
                 poll_interval: float = 1.0, connect: Callable[[], Any] | None = None,
                 log: Callable[[str], None] = lambda line: None) -> None:
        from distributed import fire_and_forget
        self._fire_and_forget = fire_and_forget
        self._client = client
        # A new client, when Dask closed this one: it gives up a scheduler down longer than its
        # timeout (10 s), and a closed client never connects again.
        self._connect = connect
        self._log = log
        self._scheduler_lost = False
        self._reconnector = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clowder-dask-connect")
        self._reconnecting: Future[Any] | None = None
        self._on_exit = on_exit
        self._heartbeat_timeout = heartbeat_timeout
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}
        self._kills: dict[str, KillReason] = {}
        # Recording an end may mean git work, and a call to a dead worker blocks ~30 s: never
        # in the loop's thread nor in Dask's.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="clowder-dask")
        self._rpc = ThreadPoolExecutor(max_workers=2, thread_name_prefix="clowder-dask-rpc")
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_watched, daemon=True, name="clowder-dask-poll")
        self._poller.start()

    # -- the protocol -------------------------------------------------------------------------

    def start(self, launch: Run) -> Handle:
        launch.log_file.parent.mkdir(parents=True, exist_ok=True)
        launch.cwd.mkdir(parents=True, exist_ok=True)
        files = AttemptFiles.of(launch)
        for stale in (launch.run_file, files.claim, files.beat, files.kill):  # from a start that never ran
            stale.unlink(missing_ok=True)
        # Made before the task: a restarted daemon that finds it knows the attempt was launched.
        with open(launch.log_file, "ab"):
            pass
        key = task_key(launch)
        with self._lock:
            self._watched[key] = _Watched(launch, own=True)
        self._submit(launch)
        return key

    def _submit(self, launch: Run) -> None:
        try:
            future = self._client.submit(run_attempt, launch, key=task_key(launch), pure=False, retries=0,
                                         resources=dict(launch.resources) or None)
        except Exception as e:  # a client Dask closed (its scheduler is gone): ClosedClientError
            # Not a failure of the attempt: it stays queued, unclaimed, and the poller submits it
            # again once the scheduler is back (_check_queued: a key the scheduler does not know).
            self._log(f"dask: {task_key(launch)} waits for the Dask scheduler: {e}")
            return
        self._fire_and_forget(future)  # it runs even if this daemon dies: a new one finds it by key
        future.add_done_callback(lambda f: self._pool.submit(self._task_done, f))

    def _task_done(self, future: Any) -> None:
        key = future.key
        with self._lock:
            watched = self._watched.get(key)
        if watched is None:
            return
        if future.status == "error" and read_exit(watched.run.run_file) is None:
            self._failed_to_run(watched.run, future.exception())
        if read_exit(watched.run.run_file) is not None or self._ran_it(future):
            # Ended: recorded, or its wrapper gone without a record (killed with SIGKILL), which
            # the worker saw, and after which it ended what was left: lost now, not after the
            # heartbeat timeout.
            self._report(key)
        # Else the task did nothing (the attempt was claimed by an earlier run of it, on a worker
        # that died): the attempt runs on there, and the poller sees its end or its silence.

    def _ran_it(self, future: Any) -> bool:
        """Whether this task ran the attempt to its end (run_attempt returned a status, not None)."""
        if future.status != "finished":
            return False
        try:
            return future.result(timeout=RPC_TIMEOUT) is not None
        except Exception:  # the result went with its worker: the poller decides, from the files
            return False

    def _failed_to_run(self, run: Run, error: object) -> None:
        """The task raised (the worker cannot import Clowder, cannot reach the root): the attempt
        fails with why in its log, once nothing of it started."""
        if read_pid(run.run_file) is not None:
            return
        with open(run.log_file, "a") as log:
            log.write(f"clowder: the Dask task for this attempt failed: {error}\n")
        self._record_end(run, 125)

    def _record_end(self, run: Run, status: int) -> None:
        atomic_write(run.run_file, f"0\nexit {status}\n")

    def probe(self, launch: Run) -> Probe:
        if read_exit(launch.run_file) is not None:
            return Probe.ENDED
        if exists_now(AttemptFiles.of(launch).claim):  # made by another machine: opened, not stat()ed
            return Probe.RUNNING
        states = self._states([task_key(launch)])
        if states is None or task_key(launch) in states:  # queued in the engine (or we cannot tell)
            return Probe.QUEUED
        return Probe.LOST

    def exit_record(self, launch: Run) -> ExitRecord | None:
        return read_exit(launch.run_file)

    def adopt(self, launch: Run, killed_for: KillReason | None = None) -> int | None:
        key = task_key(launch)
        with self._lock:
            if killed_for is not None:
                self._kills[key] = killed_for
            self._watched.setdefault(key, _Watched(launch, own=False))
        return read_pid(launch.run_file)

    def kill(self, launch: Run, sig: int, reason: KillReason) -> None:
        with self._lock:
            self._kills[task_key(launch)] = reason
        self._pool.submit(self._kill, launch, sig)  # never in the loop's thread: a worker may be dead

    def end(self, launch: Run) -> None:
        pass  # the task ends what the attempt left, on its worker

    def shutdown(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)
        self._rpc.shutdown(wait=False, cancel_futures=True)
        self._reconnector.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # fire-and-forget tasks run on without us

    # -- kills --------------------------------------------------------------------------------

    def _kill(self, run: Run, sig: int) -> None:
        files = AttemptFiles.of(run)
        # The attempt's own loop applies it on its worker, whether or not the worker is alive.
        atomic_write(files.kill, f"{signal.Signals(sig).name.removeprefix('SIG')}\n")
        if read_exit(run.run_file) is not None:
            return
        if claim(files.claim, "cancelled before it started\n"):
            # Not started: it never will (its task finds the claim), and it ends as killed.
            self._call(lambda: self._cancel(task_key(run)), None)
            self._record_end(run, 128 + sig)
            self._report(task_key(run))
            return
        worker = _claimed_by(files.claim)
        if worker and worker in self._call(lambda: self._client.scheduler_info()["workers"], {}):
            self._call(lambda: self._client.run(signal_attempt, str(run.run_file), run.id, sig, workers=[worker]),
                       None)

    def _cancel(self, key: str) -> None:
        """Take a task that will never run its attempt out of the engine (and its resources)."""
        from distributed import Future
        Future(key, self._client).cancel()

    def _call(self, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return self._rpc.submit(fn).result(timeout=RPC_TIMEOUT)
        except (WaitTimeout, OSError, RuntimeError):
            return default
        except Exception:  # the scheduler or worker went away mid-call: the kill file still works
            return default

    def _states(self, keys: list[str]) -> dict[str, str] | None:
        """The scheduler's state of these task keys; None when it cannot be asked."""
        states = self._call(lambda: self._client.run_on_scheduler(_task_states, keys=keys), None)
        return {k: v for k, v in states.items() if v in _PENDING} if states is not None else None

    # -- ends -----------------------------------------------------------------------------------

    def _report(self, key: str) -> None:
        with self._lock:
            watched = self._watched.pop(key, None)
            killed_for = self._kills.pop(key, None)
        if watched is not None:  # once per attempt, whoever saw its end first
            run = watched.run
            self._on_exit(Exited(run.pipeline, run.job, run.attempt, killed_for))

    def _poll_watched(self) -> None:
        while not self._stop.wait(self._poll):
            connected = self._keep_connected()
            with self._lock:
                watched = list(self._watched.items())
            unclaimed = []
            for key, w in watched:
                if read_exit(w.run.run_file) is not None:
                    self._pool.submit(self._report, key)
                elif (age := _silence(AttemptFiles.of(w.run))) is None:
                    unclaimed.append(key)
                elif age > self._heartbeat_timeout and w.own and read_pid(w.run.run_file) is None:
                    self._pool.submit(self._again, w.run)  # claimed by a worker that died before starting it
                elif age > self._heartbeat_timeout:  # its machine is gone, or it is stuck: lost
                    self._pool.submit(self._lost, key, w.run)
            if unclaimed and connected:
                self._check_queued(dict(watched), unclaimed)

    def _keep_connected(self) -> bool:
        """Whether the scheduler can be asked now; says once when it is lost and when it is back.
        A client Dask closed is replaced (in the poller's thread: connecting may take seconds)."""
        status = self._client.status
        if status != "running" and not self._scheduler_lost:
            self._scheduler_lost = True
            self._log(f"dask: lost the Dask scheduler ({status}): attempts running go on; "
                      "none starts until it is back")
        if status in ("closing", "closed", "failed") and (client := self._reconnected()) is not None:
            old, self._client = self._client, client
            self._rpc.submit(old.close)
            status = "running"
        if status == "running" and self._scheduler_lost:
            self._scheduler_lost = False
            self._log("dask: the Dask scheduler is back: attempts it does not know are submitted again")
        return status == "running"

    def _reconnected(self) -> Any:
        """A new client once one could be made, else None. It is made in a thread of its own: a
        scheduler that does not answer takes the client's whole timeout to give up, and the
        poller meanwhile goes on reading the attempts' records."""
        if self._reconnecting is not None and self._reconnecting.done():
            reconnecting, self._reconnecting = self._reconnecting, None
            if reconnecting.exception() is None:
                return reconnecting.result()
        if self._reconnecting is None and self._connect is not None:
            self._reconnecting = self._reconnector.submit(self._connect)
        return None

    def _again(self, run: Run) -> None:
        """The same attempt, submitted again: it never started (no pid in its run record long after
        its claim), so nothing of it can run beside the new task."""
        files = AttemptFiles.of(run)
        for path in (files.claim, files.beat):
            path.unlink(missing_ok=True)
        self._submit(run)

    def _lost(self, key: str, run: Run) -> None:
        # Should it still run somewhere unreachable, its own loop ends it when it can.
        atomic_write(AttemptFiles.of(run).kill, "KILL\n")
        self._report(key)

    def _check_queued(self, watched: dict[str, _Watched], keys: list[str]) -> None:
        """Attempts not claimed yet: still queued in the engine, or forgotten by it (a scheduler
        restarted): then submitted again, as the same attempt, or reported lost if not ours."""
        states = self._states(keys)
        if states is None:
            return
        for key in keys:
            if key in states or exists_now(AttemptFiles.of(watched[key].run).claim):
                continue
            if watched[key].own:
                self._call(lambda run=watched[key].run: self._submit(run), None)  # type: ignore[misc]
            else:
                self._pool.submit(self._report, key)


def _claimed_by(path: Path) -> str:
    """The worker address in a claim file ('' when it was claimed by a cancel)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ""
    return lines[1] if len(lines) > 1 else ""


def _silence(files: AttemptFiles) -> float | None:
    """Seconds since the attempt last showed it is alive; None when it has not been claimed.
    The heartbeat is a file time set by the server: opened first, so NFS asks it rather than its
    attribute cache (the two machines' clocks must still agree, within much less than
    heartbeat_timeout)."""
    for path in (files.beat, files.claim):
        try:
            return time.time() - fresh_stat(path).st_mtime
        except FileNotFoundError:
            continue
    return None


def make_executor(config: Config, root: Path,
                  log: Callable[[str], None] = lambda line: None) -> Callable[[OnExit], Executor]:
    """The executor clowder.toml asks for, as the driver makes it (given its exit callback)."""
    if config.executor.kind != "dask":
        return LocalExecutor
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        raise ClowderError(f"{root / 'clowder.toml'}: executor.kind = \"dask\" needs Dask distributed: "
                           "pip install 'clowder[dask]'") from e
    client = _connect(config, root)

    def make(on_exit: OnExit) -> DaskExecutor:
        return DaskExecutor(on_exit, client, config.heartbeat_timeout,
                            connect=lambda: _connect(config, root), log=log)
    return make


def _connect(config: Config, root: Path) -> Any:
    """A client of the scheduler clowder.toml names (its scheduler file read anew: a scheduler
    started again may listen elsewhere)."""
    from distributed import Client
    spec = config.executor
    where = spec.scheduler or str(root / (spec.scheduler_file or ""))
    if spec.scheduler_file and not Path(where).is_file():  # Client would wait for it forever
        raise ClowderError(f"{root / 'clowder.toml'}: executor: cannot reach the Dask scheduler at {where}: "
                           "no such file (start `dask scheduler --scheduler-file` first)")
    try:
        return (Client(spec.scheduler, timeout="10s", set_as_default=False) if spec.scheduler
                else Client(scheduler_file=where, timeout="10s", set_as_default=False))
    except (OSError, ValueError) as e:
        raise ClowderError(f"{root / 'clowder.toml'}: executor: cannot reach the Dask scheduler at {where}: {e}") from e


if __name__ == "__main__":  # the attempt's loop, where its worker is gone (WRAPPER)
    end_leftovers(sys.argv[1], int(sys.argv[2]), sys.argv[3])
