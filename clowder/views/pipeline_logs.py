"""A pipeline's logs as one stream: every attempt's lines, whole and prefixed with `job#attempt`,
as they are written (new jobs and attempts picked up as they start), for `clowder logs PIPELINE`
and `GET /api/pipelines/{pipeline}/logs`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from clowder import known
from clowder.state import JobStatus, PipelineState
from clowder.tree import Root, is_name
from clowder.views.logs import AttemptLog, LogChunk, LogFollower
from clowder.views.tree import pipeline_state, read_job

NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LogLine:
    job: str
    attempt: int
    text: str  # one whole line, with its newline

    @property
    def label(self) -> str:
        return f"{self.job}#{self.attempt}"


class AttemptTail:
    """One attempt's log being read: its follower, and the start of a line not yet ended."""

    def __init__(self, log: AttemptLog, follow: bool) -> None:
        self.log = log
        self.chunks: Iterator[LogChunk | None] = iter(LogFollower(log, until_over=follow))
        self.partial = ""
        self.done = False

    def lines(self) -> list[LogLine]:
        """The whole lines written so far, without waiting; at the end, an unended last line too
        (a line split across writes or reads comes out once, whole)."""
        texts: list[str] = []
        while not self.done:
            try:
                chunk = next(self.chunks)
            except StopIteration:
                self.done = True
                if self.partial:
                    texts.append(self.partial + "\n")
                    self.partial = ""
                break
            if chunk is None:
                break
            *whole, self.partial = (self.partial + chunk.text).split("\n")
            texts.extend(line + "\n" for line in whole)
        return [LogLine(self.log.job, self.log.attempt, text) for text in texts]


def _first_start(status: JobStatus) -> datetime:
    starts = [a.started_at for a in status.attempts if a.started_at is not None]
    return min(starts) if starts else NEVER


class PipelineLogs:
    """Iterating yields LogLines, and (with `follow`) None whenever there is nothing new yet: the
    caller waits its own way. Without `follow`: each job's latest attempt's log, in the order the
    jobs started. With it: from each job's latest attempt on, every attempt of every job as it is
    written, until the pipeline has ended; `outcome` is then its final state."""

    def __init__(self, root: Root, pipeline: str, follow: bool) -> None:
        self.root = root
        self.paths = known.pipeline(root, pipeline)
        self.follow = follow
        self.tails: dict[str, AttemptTail] = {}
        self.outcome: PipelineState | None = None
        # Wide enough for every job there is at attempt 9: the labels stay aligned from the first line.
        self.width = max((len(name) + 2 for name in self.paths.job_names()), default=0)

    def prefixed(self, line: LogLine) -> str:
        """`job#attempt | text`, the labels aligned (they widen only when a longer one appears)."""
        self.width = max(self.width, len(line.label))
        return f"{line.label.ljust(self.width)} | {line.text}"

    def __iter__(self) -> Iterator[LogLine | None]:
        self._start(self._statuses(), latest=True)
        if not self.follow:
            for tail in self.tails.values():
                yield from tail.lines()
            return
        while True:
            ended = self._ended()  # read before the jobs: a pipeline's end is written after its jobs' ends
            started = self._start(self._statuses(), latest=False)
            lines = [line for tail in self.tails.values() for line in tail.lines()]
            yield from lines
            if lines or started:
                continue
            if ended is not None and all(tail.done for tail in self.tails.values()):
                self.outcome = ended
                return
            yield None

    def _statuses(self) -> list[JobStatus]:
        """The jobs that have run, in the order they first started."""
        names = {n for n in self.paths.job_names() if is_name(n)}
        if self.paths.status_dir.is_dir():  # a job whose spec is gone still has its logs
            names.update(p.stem for p in self.paths.status_dir.glob("*.toml") if is_name(p.stem))
        statuses = [s for s in (read_job(self.paths, n) for n in names) if s.attempt > 0]
        return sorted(statuses, key=lambda s: (_first_start(s), s.job))

    def _start(self, statuses: list[JobStatus], latest: bool) -> bool:
        """Begin reading the attempts that have appeared: a new job's latest attempt when `latest`
        (what was there when the command started), else its first; after an attempt whose log has
        ended, the next one. Whether any began."""
        began = False
        for status in statuses:
            tail = self.tails.get(status.job)
            if tail is None:
                number = status.attempt if latest else 1
            elif tail.done and status.attempt > tail.log.attempt:
                number = tail.log.attempt + 1
            else:
                continue
            self.tails[status.job] = AttemptTail(AttemptLog(self.root, self.paths, status.job, number), self.follow)
            began = True
        return began

    def _ended(self) -> PipelineState | None:
        state = pipeline_state(self.paths)
        return PipelineState(state) if state in {s.value for s in PipelineState if s.terminal} else None
