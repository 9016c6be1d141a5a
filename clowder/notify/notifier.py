"""The daemon's notifier: the driver tells it each status it writes; it derives the events, records
each in the outbox before the status is written, and a worker thread sends them, off the
scheduling loop. A failure is logged and recorded; it never touches a pipeline."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace

from clowder.notify.events import Event, job_events, pipeline_events
from clowder.notify.outbox import Delivery, Outbox, Record, Send
from clowder.notify.send import Senders, Sent, post
from clowder.spec import NotifyTarget, Pipeline
from clowder.state import JobStatus, PipelineStatus, utcnow
from clowder.tree import CONFIG_FILE, Root
from clowder.validate import notify_problems

Log = Callable[[str], None]
# A daemon stopping sends what is queued (`clowder run` ends right after the pipeline's own
# event) for this long at most; what is left is sent by the next one.
DRAIN_SECONDS = 30.0


class Notifier:
    def __init__(self, root: Root, targets: tuple[NotifyTarget, ...], log: Log) -> None:
        self.root = root
        self.targets = targets  # clowder.toml's: every pipeline's events
        self.log = log
        self.outbox = Outbox(root.state_dir / "notify", root.tmp_dir)
        digest = hashlib.sha256(str(root.path).encode()).hexdigest()[:16]
        self.senders = Senders(f"_notify/{digest}")  # `_`: no attempt's id starts so
        self._queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._abort = threading.Event()
        self._specs: dict[str, Pipeline | None] = {}  # the spec whose [[notify]] problems were logged
        self._said: set[str] = set()

    # -- the driver's hooks (its loop thread) -----------------------------------------------

    def job(self, name: str, pipeline: Pipeline | None, status: PipelineStatus, old: JobStatus | None,
            new: JobStatus) -> None:
        """A job's status is about to be written."""
        self._observe(name, pipeline, lambda: job_events(name, status, old, new, utcnow()))

    def pipeline(self, name: str, pipeline: Pipeline | None, old: PipelineStatus, new: PipelineStatus,
                 jobs: Iterable[JobStatus]) -> None:
        """A pipeline's status is about to be written (`jobs`: its jobs' statuses)."""
        self._observe(name, pipeline, lambda: pipeline_events(name, old, new, jobs, utcnow()))

    def _observe(self, name: str, pipeline: Pipeline | None, derive: Callable[[], list[Event]]) -> None:
        try:
            events = derive()
            if not events:
                return
            self._say_problems(name, pipeline)
            for event in events:
                self._record(event, pipeline)
        except Exception as e:  # a notification never stops the pipeline it is about
            self.log(f"{name}: notification not recorded: {e}")

    def _record(self, event: Event, pipeline: Pipeline | None) -> None:
        sends = [Send(t, CONFIG_FILE) for t in self.targets if event.kind in t.on]
        if pipeline is not None:
            source = f"pipelines/{event.pipeline}/pipeline.toml"
            sends += [Send(t, source) for t in pipeline.spec.notify if event.kind in t.on]
        if not sends or self.outbox.has(event):  # nobody asked, or told already (a restart derived it again)
            return
        record = Record(event, tuple(sends))
        try:
            # Synchronously, before the status write is queued: an event whose status reached the
            # disk is in the outbox, and one whose status did not is derived again at the restart.
            self.outbox.save(record)
        except OSError as e:
            self.log(f"{event.pipeline}: cannot record notification {event.id}: {e}; sending it all the same")
        self._queue.put(record)

    def _say_problems(self, name: str, pipeline: Pipeline | None) -> None:
        """Log a pipeline's broken [[notify]] tables once per version of its spec: they are left out."""
        if name in self._specs and self._specs[name] is pipeline:
            return
        self._specs[name] = pipeline
        self._say(notify_problems(self.root.pipeline(name).spec_file))

    def _say(self, problems: Iterable[object]) -> None:
        for problem in problems:
            line = f"notify table left out: {problem}"
            if line not in self._said:
                self._said.add(line)
                self.log(line)

    # -- the worker -------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._say(notify_problems(self.root.config_file))
            if self.outbox.dir.is_dir():  # else no notification was ever made here: nothing to resume
                self._resume()
        except Exception as e:  # the daemon serves all the same; pending notifications wait for the next start
            self.log(f"notifications not resumed: {e}")
        self._thread = threading.Thread(target=self._run, daemon=True, name="clowder-notify")
        self._thread.start()

    def _resume(self) -> None:
        """After a stop, even a kill -9: end what a sender left running, queue what is pending."""
        left = self.senders.end_leftovers()
        if left:
            self.log(f"killed {left} notify process(es) an earlier daemon left running")
        records, bad = self.outbox.pending(utcnow())
        for path, why in bad:
            self.log(f"cannot read notification record {path}: {why}")
        for record in records:
            self._queue.put(record)

    def stop(self) -> None:
        """Send what is queued (for DRAIN_SECONDS at most), then end the worker; what is left
        stays pending in the outbox for the next daemon."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(DRAIN_SECONDS)
        if self._thread.is_alive():
            self._abort.set()
            self.senders.kill()
            self._thread.join()
            self.log("notifications left unsent by a daemon stopping are sent by the next one")
        self._thread = None

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            try:
                self._deliver(record)
            except Exception as e:  # the worker goes on with the next event
                self.log(f"{record.event.pipeline}: notification {record.event.id} failed: {e}")

    def _deliver(self, record: Record) -> None:
        event = record.event
        for i, send in enumerate(record.sends):
            if send.state is not Delivery.PENDING:
                continue
            if self._abort.is_set():
                return
            result = self._send(send.target, event)
            if self._abort.is_set():  # killed because the daemon is stopping: the next one sends it
                self.log(f"{event.pipeline}: notification {event.kind.value} to {send.name} left to the next daemon")
                return
            record = record.with_send(i, replace(send, state=Delivery.SENT if result.ok else Delivery.FAILED,
                                                 reason=result.reason, at=utcnow()))
            try:
                self.outbox.save(record)
            except OSError as e:
                self.log(f"{event.pipeline}: cannot record that notification {event.id} was made: {e}")
            if result.ok:
                self.log(f"{event.pipeline}: notified {event.kind.value} to {send.name}")
            else:
                self.log(f"{event.pipeline}: notification {event.kind.value} to {send.name} failed: {result.reason}")

    def _send(self, target: NotifyTarget, event: Event) -> Sent:
        root = str(self.root.path)
        body = json.dumps(event.payload(root)).encode()
        if target.webhook:
            return post(target.webhook, body, target.timeout)
        env = {**os.environ, **event.env(root)}
        return self.senders.run(target.command, body, env, self.root.path, target.timeout)
