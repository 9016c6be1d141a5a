"""Stamps: has a pipeline's group of files changed since it was read? (DESIGN §6)

The index records, per pipeline, a signature of its spec files and one of its status files
as they were when their rows were read; `clowder status` trusts rows whose signatures still
match. Checking must cost little more than a `stat` per pipeline, so:

- **spec files** (pipeline.toml, jobs/*.toml) are edited by hand, often in place, which
  changes the file but not its directory: their stamp is each file's name, mtime and size;
- **status files** (status.toml, status/*.toml) have one writer, the scheduler, which always
  writes by rename, and a rename changes the directory's mtime: their stamp is the mtimes of
  the two directories that hold them, and of jobs/, whose mtime changes when a job file is
  added, removed or renamed.

What a pipeline's row in `clowder status` shows (its state, message and how many jobs are in
each state) depends on its spec files' content only while it has not ended: once it has, the
status stamp alone says whether that row is current, which costs three `stat`s per pipeline.

A directory's mtime has the file system clock's granularity, so a rename within the same
tick as the mtime read leaves it unchanged. A stamp taken while its newest mtime is that
recent is "racy" (as git calls its index entries): its signature is empty, which never
counts as fresh, and the pipeline is read from the tree until it is stamped again later.
"""

from __future__ import annotations

import hashlib
import os
import time

Stamp = tuple[tuple[str, int, int], ...]  # (file name, mtime_ns, size) of each file of a group

RACY_NS = 50_000_000  # newer than this and a later change might carry the same mtime
COARSE_RACY_NS = 2_500_000_000  # for file systems with (at best) millisecond timestamps


def spec_stamp(pipeline_dir: str) -> Stamp:
    """(name, mtime_ns, size) of pipeline.toml and of each jobs/*.toml, in that order: the
    driver re-reads a pipeline's spec exactly when this changes. Plain strings, no pathlib:
    `clowder status` stamps every pipeline of the root."""
    out = []
    st = _stat(pipeline_dir + "/pipeline.toml")
    if st is not None:
        out.append(("pipeline.toml", st.st_mtime_ns, st.st_size))
    try:
        with os.scandir(pipeline_dir + "/jobs") as it:
            entries = [e for e in it if e.name.endswith(".toml")]
    except (FileNotFoundError, NotADirectoryError):
        return tuple(out)
    entries.sort(key=_name)
    for entry in entries:
        st = _stat(entry.path)
        if st is not None:
            out.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _stat(path: str) -> os.stat_result | None:
    """What a spec file's stamp is made of; None if there is none. A link that cannot be followed
    (a loop, no permission) is stamped by the link itself: reading it reports the problem."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        try:
            return os.lstat(path)
        except OSError:
            return None


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def signature(stamp: Stamp) -> str:
    return hashlib.blake2b(repr(stamp).encode(), digest_size=12).hexdigest()


def spec_signature(pipeline_dir: str) -> str:
    return signature(spec_stamp(pipeline_dir))


def status_signature(pipeline_dir: str, dir_fd: int | None = None, now_ns: int | None = None) -> str:
    """The signature of the status files and of the set of job files: the mtimes of the
    pipeline directory (status.toml, pipeline.toml replaced), of status/ and of jobs/ (a job
    file added, removed or renamed); empty when racy (see the module's docstring).

    For a caller stamping every pipeline of a root (`clowder status`): `dir_fd`, an open
    directory `pipeline_dir` is relative to (a path of 2 parts for the kernel to walk, not ~8:
    10-15% of the stats' time at 10,000 pipelines), and `now_ns`, the time taken once before
    the stats (an earlier time only makes more stamps racy)."""
    stat = os.stat
    try:  # the three at once: the common case, and `clowder status` stamps every pipeline of a root
        top = stat(pipeline_dir, dir_fd=dir_fd).st_mtime_ns
        status = stat(pipeline_dir + "/status", dir_fd=dir_fd).st_mtime_ns
        jobs = stat(pipeline_dir + "/jobs", dir_fd=dir_fd).st_mtime_ns
    except OSError:
        mtimes = _mtimes(pipeline_dir, dir_fd)
        if mtimes is None:
            return ""
        top, status, jobs = mtimes
    newest = max(top, status, jobs)
    window = COARSE_RACY_NS if newest % 1_000_000 == 0 else RACY_NS
    if (time.time_ns() if now_ns is None else now_ns) - newest < window:
        return ""
    return "%x.%x.%x" % (top, status, jobs)  # noqa: UP031 - half an f-string's time, once a pipeline of a root


def _mtimes(pipeline_dir: str, dir_fd: int | None) -> tuple[int, int, int] | None:
    """The three mtimes, a missing directory's as 0; None if one cannot be read (no stamp)."""
    mtimes = []
    for where in (pipeline_dir, pipeline_dir + "/status", pipeline_dir + "/jobs"):
        try:
            mtimes.append(os.stat(where, dir_fd=dir_fd).st_mtime_ns)
        except (FileNotFoundError, NotADirectoryError):
            mtimes.append(0)
        except OSError:
            return None
    return mtimes[0], mtimes[1], mtimes[2]


def is_current(recorded: str | None, current: str) -> bool:
    """Whether a recorded signature still holds; an empty one (racy) never does."""
    return bool(recorded) and recorded == current
