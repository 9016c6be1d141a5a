"""OpenAI Codex CLI: `codex exec --json`.

The stream is JSON Lines (https://github.com/openai/codex/blob/main/docs/exec.md, "JSON output
mode"; the types are codex-rs/exec/src/exec_events.rs): `thread.started`, `turn.started`,
`turn.completed` with `usage` ({"input_tokens", "cached_input_tokens", "output_tokens"}; cached
tokens are part of the input), `turn.failed` with `error.message`, `error`, and
`item.started` / `item.updated` / `item.completed` carrying an `item` of type `agent_message`
({"text"}), `reasoning`, `command_execution` ({"command", "aggregated_output", "exit_code",
"status"}), `file_change` ({"changes": [{"path", "kind": add|delete|update}], "status"}),
`mcp_tool_call`, `web_search`, `todo_list` or `error`. Codex reports no cost, only tokens.

What the real program (0.171.0, recorded in the conformance suite) does beyond the docs:
- A top-level `error` is not the end: "Reconnecting... 1/5 (...)" is a retry that may well
  succeed, and before a `turn.failed` Codex repeats its text as an `error`. Only `turn.failed`
  fails the turn; its text is logged once.
- An `item.completed` of type `error` is a warning ("Model metadata ... not found").
- An unreachable API is retried "waiting for network" forever: only a timeout ends it.
- Commands are reported as `/bin/bash -lc "<the command the model ran>"`.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from clowder.harness.actions import output_from_text, tail

RETRY_PREFIX = "Reconnecting..."
SHELLS = ("bash", "sh", "zsh", "dash")
# The kinds of failure (see the failure event): a wrong key or model is the configuration's, a rate
# limit, a server error or a lost connection passes, anything else is the agent's.
_CONFIG = re.compile(r"\b(401|403|404)\b|unauthorized|forbidden|api key|model_not_found", re.IGNORECASE)
_TRANSIENT = re.compile(r"\b(429|5\d\d)\b|too many requests|rate limit|stream disconnected|error sending request"
                        r"|connection (failed|refused|reset)|timed? ?out|network|exceeded retry limit|overloaded"
                        r"|high demand|temporar(y|ily)",
                        re.IGNORECASE)


def failure_kind(text: str) -> str:
    """`config`, `transient` or `agent`, from the text Codex gives a failed turn."""
    if _CONFIG.search(text):
        return "config"
    if _TRANSIENT.search(text):
        return "transient"
    return "agent"


def inner_command(command: str) -> str:
    """`/bin/bash -lc "pytest -q"` -> `pytest -q`: the command the model asked for, not Codex's
    wrapping of it; anything else unchanged."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return command
    if len(argv) == 3 and argv[0].rsplit("/", 1)[-1] in SHELLS and argv[1] in ("-c", "-lc"):
        return argv[2]
    return command


class Translator:
    raw_name = "raw.jsonl"
    echo_raw = False

    def __init__(self) -> None:
        self.last_text: str | None = None  # the final agent_message is the answer
        self.completed = False  # a turn.completed came: the run has an answer
        self.failed = False  # a turn.failed came
        self.pending_error: str | None = None  # an `error` that is no retry: turn.failed repeats it
        self.last_retry: str | None = None  # the last "Reconnecting..." since the model last answered

    @property
    def answered(self) -> bool:
        """The turn completed: anything Codex does after that is lingering (the runner's grace)."""
        return self.completed

    def feed(self, line: str) -> list[dict[str, Any]]:
        try:
            event = json.loads(line)
        except ValueError:
            return []
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        if kind == "item.completed" and isinstance(event.get("item"), dict):
            self.last_retry = None
            return self._item(event["item"])
        if kind == "turn.completed":
            self.completed, self.last_retry = True, None
            return self._pending() + self._usage(event.get("usage"))
        if kind == "error":
            return self._error(str(event.get("message", "error")))
        if kind == "turn.failed":
            error = event.get("error")
            text = str(error.get("message", "turn failed")) if isinstance(error, dict) else "turn failed"
            return self._fail(text)
        return []

    def _usage(self, usage: object) -> list[dict[str, Any]]:
        if not isinstance(usage, dict):
            return []
        keys = ("input_tokens", "output_tokens", "cached_input_tokens")
        return [{"type": "usage", **{k: usage[k] for k in keys if isinstance(usage.get(k), int)}}]

    def _error(self, text: str) -> list[dict[str, Any]]:
        if text.startswith(RETRY_PREFIX):
            self.last_retry = text
            return [{"type": "message", "role": "retry", "text": text}]
        self.pending_error = text  # logged with the turn.failed that follows, or at the end
        return []

    def _pending(self, unless: str | None = None) -> list[dict[str, Any]]:
        """The held-back error as a message, unless it is `unless` (the failure that repeats it)."""
        text, self.pending_error = self.pending_error, None
        return [] if text is None or text == unless else [{"type": "message", "role": "error", "text": text}]

    def _fail(self, text: str) -> list[dict[str, Any]]:
        self.failed = True
        return [*self._pending(unless=text), {"type": "message", "role": "error", "text": text},
                {"type": "failure", "kind": failure_kind(text), "text": text}]

    def _item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        kind = item.get("type")
        if kind == "agent_message" and isinstance(item.get("text"), str):
            self.last_text = item["text"]
            return [{"type": "message", "role": "assistant", "text": item["text"]}]
        if kind == "command_execution" and isinstance(item.get("command"), str):
            code = item.get("exit_code")
            return [{"type": "command", "command": inner_command(item["command"]),
                     "exit_code": code if isinstance(code, int) else None,
                     "output": tail(str(item.get("aggregated_output") or ""))}]
        if kind == "file_change" and isinstance(item.get("changes"), list):
            return [{"type": "file_changed", "path": c["path"], "change": str(c.get("kind", "update"))}
                    for c in item["changes"] if isinstance(c, dict) and isinstance(c.get("path"), str)]
        if kind == "error" and isinstance(item.get("message"), str):
            return [{"type": "message", "role": "warning", "text": item["message"]}]
        return []

    def finish(self, exit_code: int) -> list[dict[str, Any]]:
        if self.failed:
            return []
        if self.completed and self.last_text is not None:
            return [{"type": "result", "output": output_from_text(self.last_text), "text": self.last_text}]
        if self.pending_error is not None:  # an error and no turn.failed: it ended the run all the same
            text, self.pending_error = self.pending_error, None
            return self._fail(text)
        if self.last_retry is not None and exit_code != 0:  # killed while reconnecting (e.g. no network)
            return self._fail(f"ended while retrying: {self.last_retry}")
        return []
