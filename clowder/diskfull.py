"""A full disk (ENOSPC, EDQUOT): telling it from other failures, waiting until space returns,
and saying so once per episode."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from clowder.errors import DiskFull, WorkspaceError
from clowder.fsio import SPACE_ERRNOS

PROBE_BYTES = 256 * 1024  # free space that counts as "space is back": a status file, a small commit
MIN_ROOM = 64 * 1024  # free space below which no attempt is started
MAX_INTERVAL = 5.0  # seconds between probes, at most
_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL, without importing sqlite3 into every command
# git reports a full disk in its own words, and often without them ("unable to write new index
# file"): those are found by probing the disk after git failed.
_SAID = ("no space left on device", "disk quota exceeded", "database or disk is full", "read-only file system")


def says_full(e: BaseException) -> bool:
    """Whether the error itself says the disk is full."""
    if isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in SPACE_ERRNOS):
        return True
    if getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    return any(s in str(e).lower() for s in _SAID)


def no_space(directory: Path) -> bool:
    """Whether the file system of `directory` cannot take PROBE_BYTES more right now (written
    and synced, then removed: free-block counts lie about quotas and reserved blocks)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".space-probe-", dir=directory)
    except OSError as e:
        return e.errno in SPACE_ERRNOS
    try:
        view = memoryview(bytes(PROBE_BYTES))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return False
    except OSError as e:
        return e.errno in SPACE_ERRNOS
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


def ensure_room(directory: Path) -> None:
    """Raise ENOSPC when the file system of `directory` is (almost) full. An attempt started
    then could not record its own pid and exit (its wrapper's two writes) and would read as
    lost: it is held back instead. One statvfs: cheap enough for every launch."""
    st = os.statvfs(directory)
    if st.f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(directory))
    if st.f_bavail * st.f_frsize < MIN_ROOM:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))


def caused_by_full_disk(e: BaseException, directory: Path) -> bool:
    """Whether a failure to write under `directory` came from a full disk: the error says so,
    or a git command failed and the disk is full now."""
    return says_full(e) or (_is_git_failure(e) and no_space(directory))


def _is_git_failure(e: BaseException) -> bool:
    return isinstance(e, WorkspaceError)


def fault(e: BaseException) -> str:
    """What is wrong with the disk, in the words a user searches for."""
    if (isinstance(e, OSError) and e.errno == errno.EROFS) or "read-only file system" in str(e).lower():
        return "read-only file system"
    return "no space left on device"


def _what(e: BaseException) -> str:
    name = getattr(e, "filename", None)
    return f"could not write {name}" if name else "could not write what it needs"


@contextlib.contextmanager
def reported(command: str, where: Path) -> Iterator[None]:
    """A command that cannot do its work on a full disk stops with one line saying so."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if not says_full(e):
            raise
        fix = "make it writable" if fault(e) == "read-only file system" else "free some space"
        raise DiskFull(f"{fault(e)} under {where}: clowder {command} {_what(e)}; {fix} and run it again") from e


class Space:
    """Whether the disk the daemon writes to is full. Whoever hits a full disk calls `hit` (or
    `wait_for_space`): the first says so in the log and starts a thread that probes until space
    returns, then says so and calls `on_space`. With `give_up` (`clowder run`), a full disk
    instead ends the run: `error` is set and `on_give_up` called."""

    def __init__(self, probe_dir: Path, log: Callable[[str], None], *, on_space: Callable[[], None] | None = None,
                 stopping: threading.Event | None = None, interval: float = 0.2) -> None:
        self._dir = probe_dir
        self._log = log
        self._on_space = on_space
        self._stopping = stopping or threading.Event()
        self._interval = interval
        # Reentrant: a signal handler may stop the daemon while its thread holds the lock.
        self._cond = threading.Condition(threading.RLock())
        self._full = False
        self._fault = ""
        self._since = 0.0
        self._prober: threading.Thread | None = None
        self.give_up = False
        self.on_give_up: Callable[[], None] | None = None
        self.error: DiskFull | None = None

    @property
    def full(self) -> bool:
        return self._full

    def hit(self, where: str | Path, e: BaseException) -> None:
        """Something could not be written for lack of space."""
        with self._cond:
            if self.give_up:
                if self.error is None:
                    self.error = DiskFull(f"{fault(e)} ({where}): stopped; free some space or make it writable, "
                                          "and run the command again (running attempts go on; their ends are "
                                          "recorded then)")
                    self._log(f"{fault(e)}: {where}: {_reason(e)}; stopping")
                    if self.on_give_up is not None:
                        self.on_give_up()
                return
            if self._full:
                return
            self._full, self._since, self._fault = True, time.monotonic(), fault(e)
            self._log(f"{self._fault}: {where}: {_reason(e)}; launching paused, and what could not "
                      "be written is retried until the disk takes writes again")
            if self._prober is None:
                self._prober = threading.Thread(target=self._probe, daemon=True, name="clowder-space")
                self._prober.start()

    def wait_for_space(self, where: str | Path, e: BaseException) -> bool:
        """`hit`, then block until space is back (True) or the daemon stops or gives up (False)."""
        self.hit(where, e)
        with self._cond:
            while self._full and not self._stopping.is_set() and not self.give_up:
                self._cond.wait(0.1)  # a timeout, not a notify, sees `stopping`: set from a signal handler
            return not self._full and not self.give_up

    def close(self) -> None:
        """Stop probing and waiting (sets the `stopping` event)."""
        self._stopping.set()

    def _probe(self) -> None:
        delay = self._interval
        while not self._stopping.wait(delay):
            if no_space(self._dir):
                delay = min(delay * 2, MAX_INTERVAL)
                continue
            with self._cond:
                self._full, self._prober = False, None
                self._cond.notify_all()
                waited = time.monotonic() - self._since
            back = "space is back" if self._fault == "no space left on device" else "the disk is writable again"
            self._log(f"{back}: resuming after {waited:.1f} s")
            if self._on_space is not None:
                self._on_space()
            return
        with self._cond:
            self._prober = None


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).splitlines()[-1] if str(e) else type(e).__name__
