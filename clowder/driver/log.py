"""The driver's decision log: one timestamped line per decision, to stderr and a file."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from clowder.state import utcnow

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
