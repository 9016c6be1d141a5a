"""aider: `aider --message-file F --yes-always --no-auto-commits --no-stream --no-pretty`.

aider has no machine-readable output (https://aider.chat/docs/scripting.html); with
`--no-pretty` it prints plain text, and its own notices are fixed formats from
aider/coders/base_coder.py: "Applied edit to <path>" for each edited file, and after each
reply a usage report "Tokens: 2.5k sent, 1.2k cache write, 3k cache hit, 120 received. Cost:
$0.0094 message, $0.02 session." (counts of 1,000 or more are rounded to "2.5k" / "12k", so
token counts are approximate; the cost part is missing when the model has no price). The
reply is the text between those notices.
"""

from __future__ import annotations

import re
from typing import Any

from clowder.harness.actions import output_from_text

APPLIED = re.compile(r"^Applied edit to (.+?)\s*$")
TOKENS = re.compile(r"^Tokens: (?P<sent>[0-9.]+k?) sent(?:, (?P<write>[0-9.]+k?) cache write)?"
                    r"(?:, (?P<hit>[0-9.]+k?) cache (?:hit|read))?, (?P<received>[0-9.]+k?) received\.")
COST = re.compile(r"Cost: \$(?P<message>[0-9.]+) message")
# aider's start-up and bookkeeping lines: not part of the reply.
NOTICES = re.compile(r"^(Aider v\d|(Main|Weak|Editor) model: |Model: |Git repo: |Repo-map: |Added .+ to the chat"
                     r"|Use /help|Warning: |Commit [0-9a-f]{7,} |Can't initialize prompt toolkit|Did not apply edit"
                     r"|Failed to apply edit|https://aider\.chat/)")


class Translator:
    raw_name = "raw.txt"
    echo_raw = True

    def __init__(self) -> None:
        self.lines: list[str] = []  # the reply being read
        self.last_reply = ""

    def feed(self, line: str) -> list[dict[str, Any]]:
        applied, tokens = APPLIED.match(line), TOKENS.match(line)
        if applied:
            return [*self._flush(), {"type": "file_changed", "path": applied.group(1), "change": "update"}]
        if tokens:
            usage: dict[str, Any] = {
                "input_tokens": _count(tokens["sent"]) + _count(tokens["hit"]),
                "output_tokens": _count(tokens["received"]),
            }
            cost = COST.search(line)
            if cost:
                usage["cost_usd"] = float(cost["message"])
            return [*self._flush(), {"type": "usage", **usage}]
        if NOTICES.match(line):
            return self._flush()
        self.lines.append(line)
        return []

    def _flush(self) -> list[dict[str, Any]]:
        text = "\n".join(self.lines).strip()
        self.lines = []
        if not text:
            return []
        self.last_reply = text
        return [{"type": "message", "role": "assistant", "text": text}]

    def finish(self, exit_code: int) -> list[dict[str, Any]]:
        events = self._flush()
        if self.last_reply:
            events.append({"type": "result", "output": output_from_text(self.last_reply), "text": self.last_reply})
        return events


def _count(text: str | None) -> int:
    """aider's token count: "116", "2.5k" or "12k"."""
    if not text:
        return 0
    if text.endswith("k"):
        return round(float(text[:-1]) * 1000)
    return int(float(text))
