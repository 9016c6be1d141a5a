"""Live streams of `clowder serve`: Server-Sent Events framing, and the one change scanner that
every subscriber of the events stream shares (it runs only while someone listens)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import BinaryIO

from clowder.errors import ClowderError
from clowder.known import NotFound
from clowder.tree import Root
from clowder.views import records
from clowder.views.changes import Scanner
from clowder.views.logs import AttemptLog, LogFollower
from clowder.views.pipeline_logs import PipelineLogs

logger = logging.getLogger("uvicorn.error")
POLL_SECONDS = 0.2  # how often streams look for new log bytes and state changes
KEEPALIVE_SECONDS = 15.0


def sse(event: str, data: object, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class Hub:
    """One scanner for all subscribers of the events stream: it runs only while someone listens."""

    def __init__(self, root: Root) -> None:
        self.scanner = Scanner(root)
        self.queues: set[asyncio.Queue[records.Change | None]] = set()
        self.lock = asyncio.Lock()  # one scan at a time: a scan updates what the next compares to

    async def scan(self) -> list[records.Change]:
        async with self.lock:
            return await asyncio.to_thread(self.scanner.scan)

    async def run(self) -> None:
        while True:
            if self.queues:
                try:
                    changes = await self.scan()
                except OSError as e:  # e.g. pipelines/ moved away: say so and keep watching
                    logger.warning("clowder serve: scanning %s failed: %s", self.scanner.root.path, e)
                    changes = []
                for q in list(self.queues):
                    for change in changes:
                        self._put(q, change)
            await asyncio.sleep(POLL_SECONDS)

    @staticmethod
    def _put(q: asyncio.Queue[records.Change | None], change: records.Change) -> None:
        try:
            q.put_nowait(change)
        except asyncio.QueueFull:  # a client that does not read: tell it to refetch everything
            while not q.empty():
                q.get_nowait()
            q.put_nowait(None)

    async def stream(self, pipeline: str | None) -> AsyncIterator[str]:
        q: asyncio.Queue[records.Change | None] = asyncio.Queue(maxsize=1000)
        self.queues.add(q)
        try:
            if not self.scanner.started:  # the baseline, so that nothing after `hello` goes unseen
                await self.scan()
            yield "retry: 1000\n\n" + sse("hello", {"pipeline": pipeline})
            while True:
                try:
                    change = await asyncio.wait_for(q.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if change is None:
                    yield sse("resync", {})
                elif pipeline is None or change.pipeline == pipeline:
                    yield sse("job" if change.job else "pipeline", asdict(change))
        finally:
            self.queues.discard(q)


async def follow_log(log: AttemptLog, offset: int, f: BinaryIO | None) -> AsyncIterator[str]:
    """The log from byte `offset` as `log` events (each with the offset it reaches, which is
    also its event id, so a reconnecting EventSource resumes there), then one `end` event.
    `f`: the log, if it was there when the request came. Read by the follower `clowder logs -f`
    uses (clowder.views.logs), waiting between looks without holding the event loop."""
    yield "retry: 1000\n\n"
    follower = LogFollower(log, offset, f)
    try:
        for chunk in follower:
            if chunk is None:
                await asyncio.sleep(POLL_SECONDS)
            else:
                yield sse("log", {"text": chunk.text, "offset": chunk.offset}, str(chunk.offset))
    except NotFound as e:  # the headers are sent: say why in the stream
        yield sse("end", {"attempt": log.attempt, "offset": follower.offset, "error": str(e)})
        return
    end_id = str(follower.offset) if follower.opened else None
    yield sse("end", {"attempt": log.attempt, "offset": follower.offset}, end_id)


async def follow_pipeline_logs(stream: PipelineLogs) -> AsyncIterator[str]:
    """Every job's lines as `log` events ({job, attempt, text}: the line prefixed as `clowder logs
    PIPELINE -f` prints it) as they are written, then one `end` event with the pipeline's state."""
    yield "retry: 1000\n\n"
    try:
        for line in stream:
            if line is None:
                await asyncio.sleep(POLL_SECONDS)
            else:
                yield sse("log", {"job": line.job, "attempt": line.attempt, "text": stream.prefixed(line)})
    except ClowderError as e:  # the headers are sent: say why in the stream
        yield sse("end", {"state": None, "error": str(e)})
        return
    yield sse("end", {"state": stream.outcome})
