"""A cache of what files say, for readers that look again and again (the server, `clowder logs -f`):
a value is kept while the files it was computed from keep their inode, mtime and size, as
opening them shows (clowder.storage: on NFS a stat() may answer from its cache for a record
another machine has replaced)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from clowder.storage import fresh_stat

# Directory and file mtimes tick coarsely (a few ms on ext4): a file rewritten in the same tick
# as the last look keeps its mtime. What changed this recently is read again each time, until
# it settles (git's "racy" index entries have the same cure).
RACY_SECONDS = 1.0
_CACHE_LIMIT = 20_000


class FileKey(NamedTuple):
    """What says a file changed: a status file is replaced whole (a new inode) when written."""

    inode: int
    mtime_ns: int
    size: int


_cache: dict[tuple[str, str], tuple[tuple[FileKey | None, ...], Any]] = {}
T = TypeVar("T")


def file_key(path: Path | str) -> FileKey | None:
    try:
        st = fresh_stat(path)
    except OSError:
        return None
    return FileKey(st.st_ino, st.st_mtime_ns, st.st_size)


def racy(keys: Iterable[FileKey | None], now_ns: int) -> bool:
    return any(k is not None and now_ns - k.mtime_ns < RACY_SECONDS * 1e9 for k in keys)


def cached(kind: str, name: str, files: Iterable[Path], compute: Callable[[], T]) -> T:
    """`compute()`, or its value from the last call while `files` are unchanged. Every page
    refetches a pipeline on every state change; parsing and checking its files each time would
    cost ~0.5 ms per job."""
    keys = tuple(file_key(f) for f in files)
    hit = _cache.get((kind, name))
    if hit is not None and hit[0] == keys and not racy(keys, time.time_ns()):
        return cast(T, hit[1])
    value = compute()
    if len(_cache) > _CACHE_LIMIT:
        _cache.clear()
    _cache[(kind, name)] = (keys, value)
    return value
