"""Crash logs: the traceback of an error Clowder did not expect, kept in a file to report,
while the user (or the daemon's log) gets one line naming it."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

CRASH_DIR = "crash"  # under <root>/.clowder/


def crash_dir(state_dir: Path | None) -> Path:
    """<root>/.clowder/crash, or a directory in the temp dir when there is no root."""
    if state_dir is not None and state_dir.is_dir():
        return state_dir / CRASH_DIR
    return Path(tempfile.gettempdir()) / f"clowder-crash-{os.getuid()}"


def write_crash_log(state_dir: Path | None, error: BaseException, context: str) -> Path | None:
    """Write the traceback of `error` with what Clowder was doing; its path, or None if even
    that failed (a full disk): the caller still reports the error in one line."""
    now = datetime.now(UTC)
    text = "".join([
        f"time: {now.isoformat(timespec='milliseconds')}\n",
        f"context: {context}\n",
        f"command: {' '.join(sys.argv)}\n",
        f"clowder: {_version()}  python: {platform.python_version()}  platform: {platform.platform()}\n\n",
        *traceback.format_exception(error),
    ])
    for where in dict.fromkeys((crash_dir(state_dir), crash_dir(None))):
        path = where / f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{os.getpid()}.log"
        try:
            where.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError:
            continue
        return path
    return None


def describe(error: BaseException) -> str:
    """`TypeError: can't compare ...`, with where it happened when the code said (notes)."""
    notes = getattr(error, "__notes__", None) or []
    if isinstance(error, OSError) and error.filename and error.strerror:  # the file says more than the class
        text = f"{error.filename}: {error.strerror}"
    else:
        text = f"{type(error).__name__}: {' '.join(str(error).split())}".rstrip(": ")  # one line
    return f"{text} ({'; '.join(notes)})" if notes else text


def _version() -> str:
    try:
        return metadata.version("clowder")
    except metadata.PackageNotFoundError:
        return "unknown"
