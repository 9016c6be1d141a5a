"""The action log, `.clowder/<job>/actions.jsonl`: what an agent did, one JSON object per line.

Every line is an object with a `type` and, optionally, `ts` (an ISO 8601 time):

    {"type": "message", "text": "...", "role": "assistant"}          what the agent said
    {"type": "command", "command": "pytest -q", "exit_code": 1,      a command it ran
     "output": "last lines of its output"}
    {"type": "file_changed", "path": "calc.py", "change": "update"}  a file it wrote (add | update | delete)
    {"type": "usage", "input_tokens": 1200, "output_tokens": 300,    tokens and money spent since the
     "cost_usd": 0.0123}                                              last usage line (all fields optional)
    {"type": "result", "output": {...}, "text": "..."}               its final structured output (any JSON)
    {"type": "failure", "kind": "transient", "text": "429 ..."}      why it failed: `transient` (rate limit,
                                                                     server error, lost connection), `config`
                                                                     (a wrong key) or `agent` (anything else)

Usage lines are increments: an attempt's usage is their sum. The last `result` wins, and the last
`failure` says what kind of failure a failed attempt was (for the job's `retry_on`). Lines of
other types are allowed and ignored, so a harness may log more; a line that is not a JSON
object, or a known type with fields of the wrong type, makes the log malformed and fails the
attempt. Blank lines are skipped.

A usage line may also say its `model` (a string) and the parts of its input tokens that were
`cached_input_tokens` or `cache_write_input_tokens`: tokens reported without `cost_usd` are
priced at clowder.toml's `[prices."<model>"]` (clowder/harness/prices.py).

This module is imported by the agent processes too: it must stay cheap (json only).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

TYPES = ("message", "command", "file_changed", "usage", "result", "failure")
FAILURE_KINDS = ("transient", "config", "agent")
CHANGES = ("add", "update", "delete")
OUTPUT_TAIL = 4000  # characters of a command's output kept in its `command` line
# A fenced block: its opening fence at the start of a line with an info string, up to the next
# closing fence. Blocks are taken in order, so a ```python block is never paired with the fence
# that opens the ```json one after it.
_FENCED = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)\n[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ActionLog:
    """Appends events to an action log, one flushed line each, so a reader (or a crash) never
    sees a half-written event."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")

    def emit(self, event: dict[str, Any]) -> dict[str, Any]:
        line = {"type": event["type"], "ts": now(), **{k: v for k, v in event.items() if k != "type"}}
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()
        return line

    def close(self) -> None:
        self._file.close()


def tail(text: str, limit: int = OUTPUT_TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def output_from_text(text: str) -> Any:
    """An agent's structured output from its final message: the whole text if it is a JSON
    object or array, else the last fenced ```json block that parses, else {"text": text}."""
    stripped = text.strip()
    blocks = [body.strip() for info, body in _FENCED.findall(text) if info.lower() in ("json", "")]
    candidates = [stripped, *reversed(blocks)]
    for candidate in candidates:
        if candidate[:1] in ("{", "["):
            try:
                return json.loads(candidate)
            except ValueError:
                continue
    return {"text": text}


def describe(event: dict[str, Any]) -> str:
    """One human line for an event, as the attempt's log shows it."""
    kind = event.get("type")
    if kind == "message":
        return f"[message] {_one_line(str(event.get('text', '')))}"
    if kind == "command":
        code = event.get("exit_code")
        return f"[command] {_command_text(event.get('command'))}" + (f" (exit {code})" if code is not None else "")
    if kind == "file_changed":
        return f"[file] {event.get('change', 'update')} {event.get('path')}"
    if kind == "usage":
        parts = [f"{event[k]} {k.split('_')[0]}" for k in ("input_tokens", "output_tokens") if k in event]
        if "cost_usd" in event:
            parts.append(f"${event['cost_usd']}")
        return "[usage] " + ", ".join(parts)
    if kind == "result":
        return f"[result] {_one_line(json.dumps(event.get('output'), ensure_ascii=False))}"
    if kind == "failure":
        return f"[failure] {event.get('kind')}: {_one_line(str(event.get('text', '')))}"
    # Any other kind (an adapter's `api_retry`, say) is shown with its text where it has one.
    text = _one_line(str(event.get("text", "")))
    return f"[{kind}] {text}" if text else f"[{kind}]"


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _command_text(command: object) -> str:
    if isinstance(command, list):
        return " ".join(str(c) for c in command)
    return str(command)


# -- reading a log (Clowder's side) -------------------------------------------------------------

@dataclass
class Summary:
    """What an action log adds up to."""

    events: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    usage_lines: int = 0
    has_result: bool = False
    output: Any = None
    failure_kind: str = ""  # the last `failure` event's kind and text
    failure_text: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str:
        if not self.problems:
            return ""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return self.problems[0] + more


def read_log(path: Path) -> Summary:
    """Sum up an action log; every malformed line is a problem (the valid ones still count)."""
    summary = Summary()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return summary
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        problem = _add_line(summary, raw)
        if problem:
            summary.problems.append(f"{path.name} line {number}: {problem}")
    return summary


def _add_line(summary: Summary, raw: bytes) -> str:
    try:
        event = json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        return f"not JSON ({e})"
    if not isinstance(event, dict):
        return f"expected a JSON object, got {type(event).__name__}"
    kind = event.get("type")
    if not isinstance(kind, str):
        return 'no "type" string'
    problem = _check(kind, event)
    if problem:
        return f"{kind}: {problem}"
    summary.events += 1
    if kind == "usage":
        summary.usage_lines += 1
        summary.input_tokens += event.get("input_tokens", 0)
        summary.output_tokens += event.get("output_tokens", 0)
        summary.cost_usd += event.get("cost_usd", 0)
    elif kind == "result":
        summary.has_result = True
        summary.output = event["output"]
    elif kind == "failure":
        summary.failure_kind, summary.failure_text = event["kind"], event.get("text", "")
    return ""


def _check(kind: str, event: dict[str, Any]) -> str:
    if kind == "message" and not isinstance(event.get("text"), str):
        return '"text" must be a string'
    if kind == "command":
        command = event.get("command")
        argv = isinstance(command, list) and all(isinstance(c, str) for c in command)
        if not isinstance(command, str) and not argv:
            return '"command" must be a string or a list of strings'
        if event.get("exit_code") is not None and not _is_int(event["exit_code"]):
            return '"exit_code" must be an integer'
    if kind == "file_changed" and not isinstance(event.get("path"), str):
        return '"path" must be a string'
    if kind == "usage":
        for key in ("input_tokens", "output_tokens"):
            if key in event and not (_is_int(event[key]) and event[key] >= 0):
                return f'"{key}" must be a non-negative integer'
        if "model" in event and not isinstance(event["model"], str):
            return '"model" must be a string'
        cost = event.get("cost_usd", 0)
        if not (isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost) and cost >= 0):
            return '"cost_usd" must be a non-negative number'
    if kind == "result" and "output" not in event:
        return 'no "output"'
    if kind == "failure" and event.get("kind") not in FAILURE_KINDS:
        return f'"kind" must be one of {", ".join(FAILURE_KINDS)}'
    if kind == "failure" and not isinstance(event.get("text", ""), str):
        return '"text" must be a string'
    return ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
