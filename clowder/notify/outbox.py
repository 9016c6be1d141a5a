"""The outbox, <root>/.clowder/notify/: a record per event, written before anything is sent and
updated as each of its deliveries is made, so a daemon that stops (even with kill -9) neither
loses a notification nor sends one twice: the next one sends what is still pending."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from clowder.fsio import atomic_write
from clowder.notify.events import Event
from clowder.spec import NotifyEvent, NotifyTarget
from clowder.state import Approval, Verdict

KEEP = timedelta(days=30)  # a record all of whose deliveries were made is deleted this long after its event


class Delivery(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class Send:
    """One delivery of an event: to whom (the target as it was when the event happened), and how it went."""

    target: NotifyTarget
    source: str  # the file of its [[notify]] table, as the log says it: clowder.toml, pipelines/p/pipeline.toml
    state: Delivery = Delivery.PENDING
    reason: str = ""  # why it failed
    at: datetime | None = None  # when it was made

    @property
    def name(self) -> str:
        return f"{self.source} {self.target.name}"


@dataclass(frozen=True)
class Record:
    event: Event
    sends: tuple[Send, ...]

    @property
    def pending(self) -> bool:
        return any(s.state is Delivery.PENDING for s in self.sends)

    def with_send(self, i: int, send: Send) -> Record:
        return replace(self, sends=(*self.sends[:i], send, *self.sends[i + 1:]))


class Outbox:
    def __init__(self, directory: Path, tmp_dir: Path) -> None:
        self.dir = directory
        self._tmp_dir = tmp_dir

    def path(self, event: Event) -> Path:
        return self.dir / f"{event.id}.json"

    def has(self, event: Event) -> bool:
        return self.path(event).exists()

    def save(self, record: Record) -> None:
        atomic_write(self.path(record.event), json.dumps(_record_to_dict(record), indent=2) + "\n", self._tmp_dir)

    def pending(self, now: datetime) -> tuple[list[Record], list[tuple[Path, str]]]:
        """Every record with a delivery still to make, oldest event first; and the files that
        could not be read (with why). Records done for KEEP are deleted: no restart derives
        an event that old again, and the daemon reads the outbox at each start."""
        records, bad = [], []
        for path in sorted(self.dir.glob("*/*/*.json")):
            try:
                record = _record_from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                bad.append((path, str(e)))
                continue
            if record.pending:
                records.append(record)
            elif now - record.event.at > KEEP:
                _remove(path)
        return sorted(records, key=lambda r: r.event.at), bad


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
        path.parent.rmdir()  # the pipeline run's last record: fails (and is let be) while others are left
        path.parent.parent.rmdir()


def _record_to_dict(record: Record) -> dict[str, Any]:
    e = record.event
    return {
        "event": {"id": e.id, "event": e.kind.value, "pipeline": e.pipeline, "run": e.run, "at": e.at.isoformat(),
                  "job": e.job, "attempt": e.attempt, "state": e.state, "message": e.message, "fixup": e.fixup,
                  "decided": e.decided, "rejection": _approval_to_dict(e.rejection)},
        "sends": [{"source": s.source, "state": s.state.value, "reason": s.reason,
                   "at": s.at.isoformat() if s.at else None, "target": _target_to_dict(s.target)}
                  for s in record.sends],
    }


def _approval_to_dict(a: Approval | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"verdict": a.verdict.value, "by": a.by, "at": a.at.isoformat(), "comment": a.comment, "request": a.request}


def _approval_from_dict(a: dict[str, Any] | None) -> Approval | None:
    if a is None:
        return None
    return Approval(Verdict(a["verdict"]), str(a["by"]), datetime.fromisoformat(a["at"]), str(a["comment"]),
                    str(a["request"]))


def _target_to_dict(t: NotifyTarget) -> dict[str, Any]:
    return {"on": [e.value for e in t.on], "command": list(t.command), "webhook": t.webhook, "timeout": t.timeout,
            "index": t.index}


def _record_from_dict(d: dict[str, Any]) -> Record:
    e = d["event"]
    event = Event(NotifyEvent(e["event"]), str(e["pipeline"]), str(e["run"]), datetime.fromisoformat(e["at"]),
                  str(e["job"]), int(e["attempt"]), str(e["state"]), str(e["message"]), str(e["fixup"]),
                  str(e.get("decided", "")), _approval_from_dict(e.get("rejection")))
    sends = tuple(Send(_target_from_dict(s["target"]), str(s["source"]), Delivery(s["state"]), str(s["reason"]),
                       datetime.fromisoformat(s["at"]) if s["at"] else None) for s in d["sends"])
    return Record(event, sends)


def _target_from_dict(t: dict[str, Any]) -> NotifyTarget:
    return NotifyTarget(tuple(NotifyEvent(e) for e in t["on"]), tuple(str(c) for c in t["command"]),
                        str(t["webhook"]), float(t["timeout"]), int(t["index"]))
