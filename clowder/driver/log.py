"""What the driver tells: its decision log (one timestamped line per decision, to stderr and a
file), and in .clowder/watch.lock, which process serves the root."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from clowder.fsio import atomic_write
from clowder.state import utcnow
from clowder.tree import Root

Log = Callable[[str], None]


def stderr_log(stream: TextIO | None = None, log_file: Path | None = None) -> Log:
    """Timestamped decision lines to stderr and, if given, appended to a file."""
    out = stream or sys.stderr
    handle = log_file.open("a", buffering=1) if log_file else None
    lock = threading.Lock()

    def log(line: str) -> None:
        text = f"{utcnow().isoformat(timespec='milliseconds').replace('+00:00', 'Z')} {line}"
        with lock:
            print(text, file=out, flush=True)
            if handle:
                try:
                    print(text, file=handle)
                except OSError:  # a full disk: the line is on stderr; the daemon goes on
                    pass

    return log


def claim_lock_file(root: Root, log: Log) -> None:
    """Say in .clowder/watch.lock that this process serves the root (messages, the index)."""
    mine = f"{os.getpid()}\n"
    try:
        if root.lock_file.read_text() == mine:
            return
    except OSError:
        pass
    try:
        atomic_write(root.lock_file, mine, root.tmp_dir)
    except OSError as e:  # only information: the lock itself is held
        log(f"cannot write {root.lock_file}: {e}")


def lock_owner(root: Root) -> str:
    try:
        return root.lock_file.read_text().strip() or "unknown"
    except OSError:
        return "unknown"
