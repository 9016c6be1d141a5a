"""Claude Code: `claude -p --output-format stream-json --verbose`.

The stream is one JSON message per line (https://docs.anthropic.com/en/docs/claude-code/headless,
"Streaming JSON output"): a `system` message of subtype `init`, then `assistant` messages whose
`message.content` holds `text` and `tool_use` blocks ({"id", "name", "input"}), `user` messages
carrying `tool_result` blocks ({"tool_use_id", "content", "is_error"}), and a final `result`
message with `subtype`, `is_error`, `result` (the final text), `total_cost_usd` and `usage`
({"input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"}).
The message types are those of the Agent SDK (https://docs.anthropic.com/en/docs/claude-code/sdk).
"""

from __future__ import annotations

import json
from typing import Any

from clowder.harness.actions import output_from_text, tail

# Tools that write the file named by their input's `file_path` (NotebookEdit: `notebook_path`).
FILE_TOOLS = {"Write": "update", "Edit": "update", "MultiEdit": "update", "NotebookEdit": "update"}
INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class Translator:
    raw_name = "raw.jsonl"
    echo_raw = False

    def __init__(self) -> None:
        self.commands: dict[str, str] = {}  # Bash tool_use id -> command, until its result arrives
        self.turn_usage: dict[str, dict[str, Any]] = {}  # assistant message id -> its usage
        self.result_seen = False

    def feed(self, line: str) -> list[dict[str, Any]]:
        try:
            msg = json.loads(line)
        except ValueError:
            return []
        if not isinstance(msg, dict):
            return []
        kind = msg.get("type")
        body = _dict(msg.get("message"))
        if kind == "assistant":
            return self._assistant(body)
        if kind == "user":
            return self._tool_results(body)
        if kind == "result":
            return self._result(msg)
        return []

    def _assistant(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(body.get("usage"), dict) and body.get("id"):
            self.turn_usage[str(body["id"])] = body["usage"]
        events: list[dict[str, Any]] = []
        for block in _blocks(body):
            if block.get("type") == "text" and block.get("text"):
                events.append({"type": "message", "role": "assistant", "text": block["text"]})
            elif block.get("type") == "tool_use":
                events += self._tool_use(block)
        return events

    def _tool_use(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        name, args = block.get("name"), _dict(block.get("input"))
        if name == "Bash" and isinstance(args.get("command"), str):
            self.commands[str(block.get("id"))] = args["command"]
        elif name in FILE_TOOLS:
            path = args.get("file_path") or args.get("notebook_path")
            if isinstance(path, str):
                return [{"type": "file_changed", "path": path, "change": FILE_TOOLS[name], "tool": name}]
        return []

    def _tool_results(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        for block in _blocks(body):
            if block.get("type") != "tool_result":
                continue
            command = self.commands.pop(str(block.get("tool_use_id")), None)
            if command is not None:
                events.append({"type": "command", "command": command, "output": tail(_text(block.get("content"))),
                               "is_error": bool(block.get("is_error"))})
        return events

    def _result(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        self.result_seen = True
        events: list[dict[str, Any]] = []
        usage: dict[str, Any] = dict(_usage(_dict(msg.get("usage"))))
        cost = msg.get("total_cost_usd")
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            usage["cost_usd"] = float(cost)
        if usage:
            events.append({"type": "usage", **usage})
        result = msg.get("result")
        text = result if isinstance(result, str) else ""
        if msg.get("is_error") or msg.get("subtype", "success") != "success":
            events.append({"type": "message", "role": "error", "text": text or str(msg.get("subtype"))})
        else:
            events.append({"type": "result", "output": output_from_text(text), "text": text})
        return events

    def finish(self, exit_code: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [{"type": "command", "command": c, "output": ""} for c in self.commands.values()]
        self.commands.clear()
        if not self.result_seen:  # killed before its result: count the tokens its turns reported
            totals: dict[str, int] = {}
            for usage in self.turn_usage.values():
                for key, value in _usage(usage).items():
                    totals[key] = totals.get(key, 0) + value
            if totals:
                events.append({"type": "usage", **totals})
        return events


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    content = body.get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    """Claude's usage as action-log fields: every kind of input token (cache writes and reads
    are billed input too) and the output tokens."""
    out: dict[str, int] = {}
    inputs = [usage[k] for k in INPUT_KEYS if isinstance(usage.get(k), int)]
    if inputs:
        out["input_tokens"] = sum(inputs)
    if isinstance(usage.get("output_tokens"), int):
        out["output_tokens"] = usage["output_tokens"]
    return out
