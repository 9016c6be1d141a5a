"""aider: `aider --message-file F --yes-always --no-auto-commits --no-stream --no-pretty ...`.

aider has no machine-readable output (https://aider.chat/docs/scripting.html); with
`--no-pretty` it prints plain text, and its own notices are fixed formats from aider 0.86
(aider/coders/base_coder.py, aider/main.py, aider/models.py): "Applied edit to <path>" for each
edited file, and after each reply a usage report "Tokens: 2.5k sent, 1.2k cache write, 3k cache
hit, 120 received. Cost: $0.0094 message, $0.02 session." (counts of 1,000 or more are rounded
to "2.5k" / "12k", so token counts are approximate; "sent" counts the cache writes twice; the
cost part is missing when the model has no price, and on a line of its own when there are both
cache writes and hits). The reply is the
text before a usage report; what aider prints after one is its own (a shell command it did not
run, a test's output).

An API failure is printed as `litellm.<Error>: ...` (then a hint, then "Retrying in N
seconds..." when aider retries) and aider EXITS 0 after giving up: an error with no usage
report after it is a failure of the attempt (the runner exits 1 on a `failure` event).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clowder.fsio import atomic_write
from clowder.harness.actions import output_from_text

APPLIED = re.compile(r"^Applied edit to (.+?)\s*$")
TOKENS = re.compile(r"^Tokens: (?P<sent>[0-9.]+k?) sent(?:, (?P<write>[0-9.]+k?) cache write)?"
                    r"(?:, (?P<hit>[0-9.]+k?) cache (?:hit|read))?, (?P<received>[0-9.]+k?) received\.")
COST = re.compile(r"(?:^|\s)Cost: \$(?P<message>-?[0-9.]+) message")
COST_LINE = re.compile(r"^Cost: \$")
API_ERROR = re.compile(r"^litellm\.(?P<name>\w+): ")
RETRYING = re.compile(r"^Retrying in (?P<delay>[0-9.]+) seconds\.\.\.\s*$")
# aider's start-up and bookkeeping lines: not part of the reply.
NOTICES = re.compile(r"^(Aider v\d|(Main|Weak|Editor) model: |Model: |Git repo: |Repo-map: |Added .+ to the chat"
                     r"|Use /help|Warning: |Warning for |Commit [0-9a-f]{7,} |Can't initialize prompt toolkit"
                     r"|Did not apply edit|Failed to apply edit|https://aider\.chat/|HTTPSConnectionPool\("
                     r"|You can skip this check with --|Added \S+ to \.gitignore|Did you mean one of these\?"
                     r"|Update git (name|email) with: |Aider respects your privacy|For more info: https://)")
# Notices followed by a list of "- item" lines (model names, environment variables).
LISTS = re.compile(r"^(Did you mean one of these\?|Warning: .+ expects these environment variables)")
# litellm's exception names (aider/exceptions.py lists them all) by what retrying can do about them.
TRANSIENT = frozenset({"RateLimitError", "APIConnectionError", "ServiceUnavailableError", "Timeout",
                       "InternalServerError", "BadGatewayError", "APIError"})
CONFIG = frozenset({"AuthenticationError", "NotFoundError", "PermissionDeniedError"})
EXCLUDE = ".aider*"  # aider's files in the repository: chat and input history, the repo map's tags cache
NOT_RUN = "aider --yes-always does not run the shell commands a model proposes"


def failure_kind(error: str) -> str:
    """`transient` (retrying may help), `config` (the key or the model is wrong) or `agent`."""
    return "transient" if error in TRANSIENT else "config" if error in CONFIG else "agent"


@dataclass
class ApiError:
    name: str
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.lines).split())  # rich wraps long lines when COLUMNS is narrow

    def event(self, retry_in: float | None = None) -> dict[str, Any]:
        event: dict[str, Any] = {"type": "api_error", "error": self.name, "kind": failure_kind(self.name),
                                 "text": self.text}
        if retry_in is not None:
            event["retry_in_s"] = retry_in
        return event


class Translator:
    raw_name = "raw.txt"
    echo_raw = True

    def __init__(self) -> None:
        self.lines: list[str] = []  # text since the last usage report
        self.reply = ""  # the last reply: the text before a usage report
        self.answered = False  # a usage report was printed: the model answered at least once
        self.usage: dict[str, Any] | None = None  # a usage report whose cost may follow on the next line
        self.reading: ApiError | None = None  # the API error whose lines are being read
        self.unanswered: ApiError | None = None  # the last API error, until a usage report follows it
        self.in_list = False  # reading the "- item" lines after a notice

    def feed(self, line: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self.usage is not None:
            cost = COST.search(line) if COST_LINE.match(line) else None
            events += self._usage_done(cost)
            if cost:
                return events
        if self.reading is not None:
            ended, more = self._read_error(line)
            events += more
            if not ended:
                return events
        return events + self._line(line)

    def _line(self, line: str) -> list[dict[str, Any]]:
        if self.in_list and line.startswith("- "):
            return []
        self.in_list = bool(LISTS.match(line))
        error, tokens, applied = API_ERROR.match(line), TOKENS.match(line), APPLIED.match(line)
        if error:
            self.reading = self.unanswered = ApiError(error["name"], [line])
            return []
        if tokens:
            return self._reply(tokens, COST.search(line))
        if applied:
            return [{"type": "file_changed", "path": applied.group(1), "change": "update"}]
        if not NOTICES.match(line):
            self.lines.append(line)
        return []

    def _read_error(self, line: str) -> tuple[bool, list[dict[str, Any]]]:
        """Whether the error's lines ended before `line` (which is then read as any other), and
        the error's event once they have: its lines end with a blank line, a retry or another error."""
        assert self.reading is not None
        retry = RETRYING.match(line)
        if retry:
            return False, self._error_done(float(retry["delay"]))
        if not line.strip():
            return False, self._error_done()
        if API_ERROR.match(line):
            return True, self._error_done()
        self.reading.lines.append(line)
        return False, []

    def _error_done(self, retry_in: float | None = None) -> list[dict[str, Any]]:
        assert self.reading is not None
        event = self.reading.event(retry_in)
        self.reading = None
        return [event]

    def prepare(self) -> None:
        """Keep aider's own files (.aider.chat.history.md, .aider.tags.cache.v4/, ...) out of the
        attempt's commit: --no-gitignore stops aider from editing the project's .gitignore, so they
        go in the workspace repository's .git/info/exclude. Runs in the workspace, before aider."""
        exclude = Path(".git") / "info" / "exclude"
        if not exclude.parent.parent.is_dir():
            return
        text = exclude.read_text() if exclude.is_file() else ""
        if EXCLUDE not in text.splitlines():
            exclude.parent.mkdir(exist_ok=True)
            atomic_write(exclude, text + ("" if text.endswith("\n") or not text else "\n") + EXCLUDE + "\n")

    def _reply(self, tokens: re.Match[str], cost: re.Match[str] | None) -> list[dict[str, Any]]:
        text = "\n".join(_without_subjects(self.lines)).strip()
        self.lines, self.answered, self.unanswered = [], True, None
        events: list[dict[str, Any]] = []
        if text:
            self.reply = text
            events.append({"type": "message", "role": "assistant", "text": text})
        # litellm's prompt_tokens already hold the cache writes and hits, and aider adds the writes
        # once more to its "sent" (base_coder.calculate_and_show_tokens_and_cost): take them off.
        sent = max(0, _count(tokens["sent"]) - _count(tokens["write"]))
        self.usage = {"input_tokens": sent, "output_tokens": _count(tokens["received"])}
        if cost or tokens["write"] is None or tokens["hit"] is None:  # no cost line of its own to wait for
            events += self._usage_done(cost)
        return events

    def _usage_done(self, cost: re.Match[str] | None) -> list[dict[str, Any]]:
        assert self.usage is not None
        usage, self.usage = self.usage, None
        # aider prints a negative cost when the API reports more cache hits than prompt tokens: no cost.
        if cost and float(cost["message"]) >= 0:
            usage["cost_usd"] = float(cost["message"])
        return [{"type": "usage", **usage}]

    def finish(self, exit_code: int) -> list[dict[str, Any]]:
        events = self._error_done() if self.reading is not None else []
        if self.usage is not None:
            events += self._usage_done(None)
        events += self._after_reply()
        failure = self._failure(exit_code)
        if failure:
            events.append(failure)
        elif self.reply:
            events.append({"type": "result", "output": output(self.reply), "text": self.reply})
        return events

    def _after_reply(self) -> list[dict[str, Any]]:
        """What aider printed after its last usage report: the shell commands of the reply it did
        not run, or its own output."""
        text = "\n".join(line.rstrip() for line in _without_subjects(self.lines)).strip()
        self.lines = []
        if not text or not self.answered:
            return []
        proposed = {line.strip() for _, block in fenced(self.reply) for line in block.splitlines()}
        commands = [line.strip() for line in text.splitlines() if line.strip()]
        if all(c in proposed for c in commands):
            return [{"type": "denied", "tool": "shell", "command": c, "text": NOT_RUN} for c in commands]
        return [{"type": "message", "role": "aider", "text": text}]

    def _failure(self, exit_code: int) -> dict[str, Any] | None:
        if self.unanswered is not None:
            return {"type": "failure", "kind": failure_kind(self.unanswered.name), "text": self.unanswered.text}
        if exit_code > 0:
            return {"type": "failure", "kind": "agent", "text": f"aider exited with code {exit_code}"}
        if exit_code == 0 and not self.answered:
            return {"type": "failure", "kind": "agent", "text": "aider printed no reply (no Tokens: line)"}
        return None  # killed by a signal: Clowder knows why


def _without_subjects(lines: list[str]) -> list[str]:
    """The lines without the files aider asked about ("Add file to the chat?", "Create new file?"):
    it prints the question to its chat history only, and the file on a line of its own after a
    blank one. A reply names a file that way too, but right before the fence of its edit."""
    def subject(i: int) -> bool:
        line = lines[i]
        after_blank = i == 0 or not lines[i - 1].strip()
        fence_next = i + 1 < len(lines) and lines[i + 1].startswith("```")
        return bool(line) and line == line.strip() and after_blank and not fence_next and os.path.isfile(line)

    return [line for i, line in enumerate(lines) if not subject(i)]


def fenced(reply: str) -> list[tuple[str, str]]:
    """The reply's fenced blocks (info string, text), read line by line: a reply holds ```python
    SEARCH/REPLACE blocks, which one regex over the whole text pairs up wrongly."""
    blocks: list[tuple[str, str]] = []
    fence: tuple[str, list[str]] | None = None
    for line in reply.splitlines():
        if fence is None and line.startswith("```"):
            fence = (line[3:].strip(), [])
        elif fence is not None and line.strip() == "```":
            blocks.append((fence[0], "\n".join(fence[1])))
            fence = None
        elif fence is not None:
            fence[1].append(line)
    return blocks


def output(reply: str) -> Any:
    """The structured output of aider's reply: its last ```json block that parses, else what
    output_from_text finds."""
    for info, text in reversed(fenced(reply)):
        if info in ("json", ""):
            try:
                return json.loads(text)
            except ValueError:
                continue
    return output_from_text(reply)


def _count(text: str | None) -> int:
    """aider's token count: "116", "2.5k" or "12k"."""
    if not text:
        return 0
    if text.endswith("k"):
        return round(float(text[:-1]) * 1000)
    return int(float(text))
