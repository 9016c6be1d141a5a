"""Attempts' logs as the read model sees them: which log a user means, whether it can still grow,
and the one follower that reads it as it is written, for `clowder logs -f` and `clowder serve`."""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from clowder import known
from clowder.executor import read_exit, run_file
from clowder.known import NotFound
from clowder.logfile import open_log
from clowder.state import JobState, JobStatus, read_job_status
from clowder.tree import PipelinePaths, Root
from clowder.views.tree import read_job

POLL_SECONDS = 0.1  # how often a follower looks for new bytes and for the attempt's end
CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class AttemptLog:
    """The log of one attempt: `logs/<job>/<attempt>.log` (which may not exist yet)."""

    root: Root
    paths: PipelinePaths
    job: str
    attempt: int

    @property
    def file(self) -> Path:
        return self.paths.log_file(self.job, self.attempt)

    def over(self) -> bool:
        """Whether the attempt has ended, so the log will not grow any more: its own exit record
        says so, or its job has moved on."""
        if read_exit(run_file(self.file)) is not None:
            return True
        status = read_job(self.paths, self.job)
        return not (status.attempt == self.attempt and status.state is JobState.RUNNING)

    def open(self) -> BinaryIO | None:
        """The log opened the one safe way (clowder.logfile), or None if it is not there (yet)."""
        return open_log(self.root, self.paths, self.job, self.attempt)

    def missing(self) -> NotFound:
        return NotFound(f"no log for attempt {self.attempt} of {self.paths.name}/{self.job}")


def locate(root: Root, pipeline: str, job: str, attempt: int | None) -> AttemptLog:
    """The log of an attempt of an existing job (default: its latest attempt). The file may not
    exist yet for an attempt that is just starting; one that never will is NotFound."""
    paths = known.pipeline(root, pipeline)
    known.job(paths, job)
    status = read_job_status(paths.job_status_file(job), job)  # a broken one is named, not taken for pending
    number = attempt or status.attempt
    if not number:
        raise NotFound(f"{pipeline}/{job} has not run yet (it is {status.state.value})")
    log = AttemptLog(root, paths, job, number)
    # A FIFO or a link is there to be refused by name when it is opened, not reported missing.
    if not os.path.lexists(log.file) and (number > status.attempt or log.over()):
        raise log.missing()
    return log


@dataclass(frozen=True)
class LogChunk:
    text: str
    offset: int  # the byte of the log reached after this text


class LogFollower:
    """Reads a log from a byte offset as it grows, until its attempt has ended (or, without
    `until_over`, to its current end). Iterating yields LogChunks, and None whenever there is
    nothing new yet: the caller waits POLL_SECONDS its own way (a sleep, or an await).

    Following, it opens the log again each time it has read to the end: on NFS a reader that
    keeps a file open never sees what another machine appends (the client revalidates its cache
    only when the file is opened: close-to-open consistency), and a log replaced whole (a copy
    synced from another machine) is another file. A log only grows, so a replaced one is read on
    from the same byte; one found shorter was truncated or started over, and is read from its start."""

    def __init__(self, log: AttemptLog, offset: int = 0, f: BinaryIO | None = None, until_over: bool = True) -> None:
        self.log = log
        self.offset = offset
        self.f = f  # the log, if the caller opened it already
        self.until_over = until_over
        self.opened = f is not None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __iter__(self) -> Iterator[LogChunk | None]:
        while self.f is None:
            self.f = self.log.open()
            if self.f is not None:
                break
            if not self.until_over or self.log.over():
                return
            yield None
        self.opened = True
        try:
            self.f.seek(self.offset)
            while True:
                data = self.f.read(CHUNK_BYTES)
                if data:
                    self.offset += len(data)
                    yield LogChunk(self._decoder.decode(data), self.offset)
                    continue
                ended = not self.until_over or self.log.over()
                # Ended and read to the end, as a new open shows it: whatever it wrote before its
                # exit record is in.
                if self.until_over and self._reopen():
                    continue
                if ended:
                    text = self._decoder.decode(b"", final=True)
                    if text:
                        yield LogChunk(text, self.offset)
                    return
                yield None
        finally:
            self.f.close()

    def _reopen(self) -> bool:
        """Open the log again where it was read to; whether it holds bytes not read yet."""
        f = self.log.open()
        if f is None:  # gone for now: what was read stands
            return False
        assert self.f is not None
        self.f.close()
        self.f = f
        size = os.fstat(f.fileno()).st_size
        if size < self.offset:  # truncated, or started over: from its start, as `tail -F` does
            self.offset = 0
            self._decoder.reset()
        f.seek(self.offset)
        return size > self.offset


def text_chunks(root: Root, pipeline: str, job: str, attempt: int | None, follow: bool) -> Iterator[str]:
    """`clowder logs [-f]`: the log's text, and with `follow`, what it writes until it ends."""
    yield from JobLogs(root, pipeline, job, attempt, follow)


class JobLogs:
    """`clowder logs PIPELINE JOB [-f]`: an attempt's text (default: the latest), and with `follow`,
    what it writes until it ends; followed without an attempt named, on into the job's next
    attempts (retries, the run after a regression fix-up), each after a line naming it, until the
    job has ended. `outcome` is then how the followed attempt or job ended."""

    def __init__(self, root: Root, pipeline: str, job: str, attempt: int | None, follow: bool) -> None:
        self.log = locate(root, pipeline, job, attempt)
        self.pinned = attempt is not None
        self.follow = follow
        self.outcome: JobState | None = None

    def __iter__(self) -> Iterator[str]:
        log = self.log
        unended = yield from _attempt_text(log, self.follow, must_exist=True)
        # The log ends with the attempt's exit record; how it ended is known once the scheduler has
        # recorded it, which may be a moment later.
        while self.follow:
            status = read_job(log.paths, log.job)
            if self.pinned and _ended_as(status, log.attempt) is not JobState.RUNNING:
                self.outcome = _ended_as(status, log.attempt)
                return
            if not self.pinned and status.state.terminal and status.attempt <= log.attempt:
                self.outcome = status.state
                return
            if self.pinned or status.attempt <= log.attempt:
                time.sleep(POLL_SECONDS)
                continue
            log = AttemptLog(log.root, log.paths, log.job, log.attempt + 1)
            yield ("\n" if unended else "") + separator(status, log.attempt)
            unended = yield from _attempt_text(log, follow=True, must_exist=False)


def separator(status: JobStatus, attempt: int) -> str:
    """The line before a followed job's next attempt, naming it and why it runs."""
    why = next((a.trigger for a in status.attempts if a.number == attempt), "")
    return f"--- {status.job} attempt {attempt}" + (f" ({why})" if why else "") + " ---\n"


def _ended_as(status: JobStatus, attempt: int) -> JobState:
    """How attempt `attempt` ended, as its own record says (else as its job did)."""
    return next((a.state for a in status.attempts if a.number == attempt), status.state)


def _attempt_text(log: AttemptLog, follow: bool, must_exist: bool) -> Generator[str, None, bool]:
    """One attempt's text; returns whether it left its last line unended."""
    follower = LogFollower(log, f=log.open(), until_over=follow)
    if must_exist and not follow and follower.f is None:
        raise log.missing()
    last = ""
    for chunk in follower:
        if chunk is None:
            time.sleep(POLL_SECONDS)
        elif chunk.text:
            last = chunk.text
            yield chunk.text
    if must_exist and not follower.opened:
        raise log.missing()
    return bool(last) and not last.endswith("\n")
