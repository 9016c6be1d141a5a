"""Atomic writes and advisory locks: the only way Clowder changes a file in the tree."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_counter = itertools.count()


def atomic_write(path: Path, data: str | bytes, tmp_dir: Path | None = None) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half.

    The temp file goes to `tmp_dir` when given: it must be on the same file system. Writing
    it outside the watched directory keeps watchdog from pairing the rename's two halves,
    which delays about 1 event in 5,000 by 0.5 s (measured, DESIGN §5).
    """
    raw = data.encode() if isinstance(data, str) else data
    directory = tmp_dir if tmp_dir is not None else path.parent
    # pid + thread + counter is unique among writers; cheaper than mkstemp's random names.
    tmp = f"{directory}/.{path.name}.{os.getpid()}.{threading.get_ident()}.{next(_counter)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:
        # Directories are created on demand: a mkdir per write costs a syscall on the hot path.
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Writer:
    """A background thread that applies writes and deletes in order, so the scheduler's loop
    never waits on fsync. A file queued again before it was written is written once, with the
    newest content, at its first place in the queue: later operations still see it done.
    Content may be given as a function, called in the writer's thread (serializing is work
    the loop need not do either)."""

    def __init__(self, tmp_dir: Path) -> None:
        self._tmp_dir = tmp_dir
        self._cond = threading.Condition()
        self._queue: list[Path] = []
        self._pending: dict[Path, str | Callable[[], str] | None] = {}  # None: delete
        self._busy = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="clowder-writer")
        self._stopped = False
        self._thread.start()

    def write(self, path: Path, data: str | Callable[[], str]) -> None:
        self._put(path, data)

    def delete(self, path: Path) -> None:
        self._put(path, None)

    def _put(self, path: Path, data: str | Callable[[], str] | None) -> None:
        with self._cond:
            if self._error is not None:
                raise self._error
            if path not in self._pending:
                self._queue.append(path)
            self._pending[path] = data
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if not self._queue and self._stopped:
                    return
                path = self._queue.pop(0)
                data = self._pending.pop(path)
                self._busy = True
            try:
                if data is None:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                else:
                    atomic_write(path, data if isinstance(data, str) else data(), self._tmp_dir)
            except BaseException as e:  # surfaced to the next caller
                with self._cond:
                    self._error = e
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self) -> None:
        """Wait until everything queued so far is on disk."""
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()


def write_new(path: Path, data: str, tmp_dir: Path | None = None) -> None:
    """Create `path` atomically; raise FileExistsError instead of replacing an existing file."""
    raw = data.encode()
    directory = tmp_dir if tmp_dir is not None else path.parent
    directory.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the target exists, which rename() would silently replace.
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on `path` if nobody else does; yield whether we got it.

    `path` may be a directory (locked as itself: deleting or replacing a file in it cannot undo
    the lock) or a file, created if missing."""
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
