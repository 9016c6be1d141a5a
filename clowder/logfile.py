"""An attempt's log, `logs/<job>/<n>.log`, opened for reading the one safe way: `clowder logs`
and `clowder serve` both go through here."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from clowder.known import NotFound
from clowder.tree import PipelinePaths, Root


def open_log(root: Root, paths: PipelinePaths, job: str, attempt: int) -> BinaryIO | None:
    """The attempt's log opened for reading, or None if it is not there (yet). Only the regular
    file at logs/JOB/N.log of the pipeline is read: a symlink anywhere on the way out of the
    pipeline (to /etc/passwd, say) is refused, and a FIFO is never opened for a blocking read."""
    file = paths.log_file(job, attempt)
    try:
        real = file.resolve(strict=True)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise NotFound(f"{file}: cannot read the log: {e}") from e
    if real != paths.dir.resolve() / "logs" / job / file.name or not real.is_relative_to(root.path.resolve()):
        raise NotFound(f"{file}: the log resolves outside its pipeline ({real}); not read")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise NotFound(f"{file}: cannot read the log: {e.strerror}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotFound(f"{file}: not a regular file; not read")
    return os.fdopen(fd, "rb")
