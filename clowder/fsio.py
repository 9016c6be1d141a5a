"""Atomic writes and advisory locks: the only way Clowder changes a file in the tree."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_counter = itertools.count()
# A full disk, or one turned read-only (remounted, or by the kernel after an error): wait until it
# takes writes again, not an error.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


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
    the loop need not do either).

    A write that fails for lack of space (ENOSPC, EDQUOT) is not an error of the writer's: it
    calls `on_full(path, error)`, which waits until space is back (True: the write is tried
    again, first in the queue, so nothing is lost or reordered) or gives up (False: the write
    is dropped and counted in `dropped`). Without `on_full`, it is an error like any other.

    Any other OSError is the file's, not the writer's (a directory where the file belongs, a
    permission taken away by hand): with `on_error(path, error)` the write is dropped and
    reported there, and the other files are written on. Without it, the error is raised to the
    next caller, as any error that is not an OSError always is."""

    def __init__(self, tmp_dir: Path, on_full: Callable[[Path, OSError], bool] | None = None,
                 on_error: Callable[[Path, OSError], None] | None = None) -> None:
        self._tmp_dir = tmp_dir
        self._on_full = on_full
        self._on_error = on_error
        self.dropped = 0
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
            except OSError as e:
                self._failed(path, data, e)
            except BaseException as e:  # surfaced to the next caller
                with self._cond:
                    self._error = e
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _failed(self, path: Path, data: str | Callable[[], str] | None, e: OSError) -> None:
        if e.errno not in SPACE_ERRNOS and self._on_error is not None:
            self.dropped += 1
            self._on_error(path, e)
            return
        if e.errno not in SPACE_ERRNOS or self._on_full is None:
            with self._cond:
                self._error = e  # surfaced to the next caller
            return
        if not self._on_full(path, e):
            self.dropped += 1
            return
        with self._cond:  # again, first; with newer content if some was queued meanwhile
            if path in self._pending:
                self._queue.remove(path)
            else:
                self._pending[path] = data
            self._queue.insert(0, path)

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


MAX_SPEC_BYTES = 1024 * 1024  # hand-written files and requests: far above any real one
MAX_STATUS_BYTES = 64 * 1024 * 1024  # status files grow with attempts and artifacts


class Unreadable(OSError):
    """A file Clowder will not read: not a regular file, too large, or a link out of the root.
    An OSError, so that every reader's handling of unreadable files applies; `strerror` says why."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(errno.EINVAL, why, str(path))


def read_input(path: Path, limit: int = MAX_SPEC_BYTES) -> bytes:
    """The bytes of a file a user or a tool put in the tree, read so that nothing in it can hang
    or exhaust Clowder: only a regular file is read (a FIFO, a device or a directory is refused,
    and opening never blocks), at most `limit` bytes, and a symbolic link only if it resolves
    inside the root. Raises FileNotFoundError when there is no file, IsADirectoryError for a
    directory, Unreadable otherwise."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        fd = os.open(_inside_root(path), flags)  # a symbolic link: read what it points to, if allowed
    try:
        return _read_regular(fd, path, limit)
    finally:
        os.close(fd)


def _read_regular(fd: int, path: Path, limit: int) -> bytes:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory, not a file", str(path))
    if not stat.S_ISREG(st.st_mode):
        raise Unreadable(path, f"not a regular file ({_kind(st.st_mode)})")
    if st.st_size > limit:
        raise Unreadable(path, f"larger than {_size(limit)} ({st.st_size} bytes)")
    chunks, total = [], 0
    while chunk := os.read(fd, min(limit + 1 - total, 1 << 20) or 1):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:  # it grew while being read (or its size lied, as in /proc)
            raise Unreadable(path, f"larger than {_size(limit)}")
    return b"".join(chunks)


def _inside_root(link: Path) -> Path:
    """Where a symbolic link resolves, if that is inside the Clowder root holding it (the nearest
    directory upward with clowder.toml; without one, the link's own directory)."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError) as e:  # a loop of links
        raise Unreadable(link, f"a symbolic link that cannot be resolved: {e}") from e
    home = link.parent.resolve()
    top = next((d for d in (home, *home.parents) if (d / "clowder.toml").is_file()), home)
    if not target.is_relative_to(top):
        raise Unreadable(link, f"a symbolic link to {target}, outside the root")
    return target


def _kind(mode: int) -> str:
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device"}
    return kinds.get(stat.S_IFMT(mode), "a special file")


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"
