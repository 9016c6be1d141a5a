"""Whether the index's rows of a pipeline still match its files (see clowder.stamp)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Container, Iterable

from clowder import stamp
from clowder.index.db import placeholders
from clowder.tree import Root


def live_daemon(root: Root) -> int | None:
    """The pid of the daemon that holds the root's lock, if it is alive."""
    try:
        pid = int(root.lock_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def fresh(conn: sqlite3.Connection, root: Root, names: Iterable[str], ended: Container[str] = ()) -> set[str]:
    """The pipelines among `names` whose rows match their files.

    A pipeline's rows are stale when its spec files (pipeline.toml, jobs/*.toml) changed since
    they were read (any file's mtime or size, a file added or removed), or when its status
    files did (see clowder.stamp) — unless a daemon keeps them live: it writes the rows as it
    decides each change, before the status file lands, so its rows are never older than the
    files. Rows a daemon kept live that died (kill -9) are stale until a daemon or `clowder
    reindex` reads the pipeline again. Pipelines in `ended` are fresh if their status files
    are: the caller needs nothing of them that the content of spec files could change.
    Cost: three stats per pipeline, and one per spec file of those not in `ended`."""
    wanted = set(names)
    if not wanted:
        return set()
    out: set[str] = set()
    daemon = -1
    pipelines = str(root.pipelines_dir)
    now = time.time_ns()  # once, before any stat: see stamp.status_signature
    try:
        dir_fd = os.open(pipelines, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return out  # no pipelines/ to read: nothing is as the index holds it
    status_signature = stamp.status_signature
    try:
        for name, status_sig, spec_sig, pid in _rows(conn, wanted):
            if not spec_sig or name not in wanted:
                continue
            if status_sig is None:
                if daemon == -1:
                    daemon = live_daemon(root) or 0
                if pid is None or pid != daemon:
                    continue
            # stamp.is_current, inlined: this line runs once a pipeline of the root for `clowder status`.
            elif not status_sig or status_sig != status_signature(name, dir_fd, now):
                continue
            if name in ended or stamp.is_current(spec_sig, stamp.spec_signature(f"{pipelines}/{name}")):
                out.add(name)
    finally:
        os.close(dir_fd)
    return out


def _rows(conn: sqlite3.Connection, wanted: set[str]) -> sqlite3.Cursor:
    """The freshness rows of `wanted`: a few by key (a daemon asking about a pipeline that just
    appeared read all 10,000 of a root's), many by reading the table once."""
    select = "SELECT pipeline, status_sig, spec_sig, pid FROM freshness"
    if len(wanted) > 100:
        return conn.execute(select)
    return conn.execute(f"{select} WHERE pipeline IN ({placeholders(len(wanted))})", sorted(wanted))
