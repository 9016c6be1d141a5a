"""OpenAI Codex CLI: `codex exec --json`.

The stream is JSON Lines (https://github.com/openai/codex/blob/main/docs/exec.md, "JSON output
mode"; the types are codex-rs/exec/src/exec_events.rs): `thread.started`, `turn.started`,
`turn.completed` with `usage` ({"input_tokens", "cached_input_tokens", "output_tokens"}; cached
tokens are part of the input), `turn.failed` with `error.message`, `error`, and
`item.started` / `item.updated` / `item.completed` carrying an `item` of type `agent_message`
({"text"}), `reasoning`, `command_execution` ({"command", "aggregated_output", "exit_code",
"status"}), `file_change` ({"changes": [{"path", "kind": add|delete|update}], "status"}),
`mcp_tool_call`, `web_search`, `todo_list` or `error`. Codex reports no cost, only tokens.
"""

from __future__ import annotations

import json
from typing import Any

from clowder.harness.actions import output_from_text, tail


class Translator:
    raw_name = "raw.jsonl"
    echo_raw = False

    def __init__(self) -> None:
        self.last_text: str | None = None  # the final agent_message is the answer
        self.failed = False

    def feed(self, line: str) -> list[dict[str, Any]]:
        try:
            event = json.loads(line)
        except ValueError:
            return []
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        if kind == "item.completed" and isinstance(event.get("item"), dict):
            return self._item(event["item"])
        if kind == "turn.completed" and isinstance(event.get("usage"), dict):
            usage = event["usage"]
            return [{"type": "usage", **{k: usage[k] for k in ("input_tokens", "output_tokens")
                                         if isinstance(usage.get(k), int)}}]
        if kind in ("turn.failed", "error"):
            self.failed = True
            error = event["error"] if isinstance(event.get("error"), dict) else event
            return [{"type": "message", "role": "error", "text": str(error.get("message", kind))}]
        return []

    def _item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        kind = item.get("type")
        if kind == "agent_message" and isinstance(item.get("text"), str):
            self.last_text = item["text"]
            return [{"type": "message", "role": "assistant", "text": item["text"]}]
        if kind == "command_execution" and isinstance(item.get("command"), str):
            code = item.get("exit_code")
            return [{"type": "command", "command": item["command"],
                     "exit_code": code if isinstance(code, int) else None,
                     "output": tail(str(item.get("aggregated_output") or ""))}]
        if kind == "file_change" and isinstance(item.get("changes"), list):
            return [{"type": "file_changed", "path": c["path"], "change": str(c.get("kind", "update"))}
                    for c in item["changes"] if isinstance(c, dict) and isinstance(c.get("path"), str)]
        if kind == "error" and isinstance(item.get("message"), str):
            return [{"type": "message", "role": "error", "text": item["message"]}]
        return []

    def finish(self, exit_code: int) -> list[dict[str, Any]]:
        if self.last_text is None or self.failed:
            return []
        return [{"type": "result", "output": output_from_text(self.last_text), "text": self.last_text}]
