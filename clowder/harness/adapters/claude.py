"""Claude Code: `claude -p --output-format stream-json --verbose`.

The stream is one JSON message per line (https://docs.anthropic.com/en/docs/claude-code/headless,
"Streaming JSON output"): a `system` message of subtype `init`, then `assistant` messages whose
`message.content` holds `text` and `tool_use` blocks ({"id", "name", "input"}), `user` messages
carrying `tool_result` blocks ({"tool_use_id", "content", "is_error"}), and a final `result`
message with `subtype`, `is_error`, `result` (the final text), `total_cost_usd` and `usage`
({"input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"}).
The message types are those of the Agent SDK (https://docs.anthropic.com/en/docs/claude-code/sdk).

What Claude Code 2.1 really prints (recorded in tests/fixtures/claude/) differs in ways this
module handles: an `error_*` result has no `result` but `errors[]`; a failed API call is a
synthetic assistant message with an `error` field, then a result with `is_error` and the same
text; `system` messages of subtype `api_retry` come while it retries; `usage` may be all zeros
while `total_cost_usd` is not; a tool denied by its permissions is a `tool_result` with
`is_error` and, at the end, a `permission_denials` entry.
"""

from __future__ import annotations

import json
from typing import Any

from clowder.harness.actions import output_from_text, tail

# Tools that write the file named by their input's `file_path` (NotebookEdit: `notebook_path`),
# and the change each means when the tool's result does not say (Write says "create" or "update").
FILE_TOOLS = {"Write": "update", "Edit": "update", "MultiEdit": "update", "NotebookEdit": "update"}
RESULT_CHANGES = {"create": "add", "update": "update"}
INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
MODEL_USAGE_KEYS = {"inputTokens": "input_tokens", "cacheCreationInputTokens": "cache_creation_input_tokens",
                    "cacheReadInputTokens": "cache_read_input_tokens", "outputTokens": "output_tokens"}

# Failure kinds (issue 13 item 3): `transient` is worth retrying as it is, `config` needs a person
# (a key, a plan), `agent` is the agent's own failure (turns, budget, a wrong answer).
# Claude Code's `error` of its synthetic assistant messages: those it makes for API failures.
CONFIG_ERRORS = {"authentication_failed", "oauth_org_not_allowed", "billing_error"}
TRANSIENT_ERRORS = {"rate_limit", "server_error"}
CONFIG_STATUSES = {401, 403}
TRANSIENT_STATUSES = {408, 409, 429}  # and every 5xx
SIGNALLED = 128  # an exit code from here up: ended by a signal (Claude Code exits 143 on SIGTERM)


class Translator:
    raw_name = "raw.jsonl"
    echo_raw = False

    def __init__(self) -> None:
        self.commands: dict[str, str] = {}  # Bash tool_use id -> command, until its result arrives
        self.writes: dict[str, dict[str, Any]] = {}  # file tool_use id -> its file_changed, until its result
        self.turn_usage: dict[str, dict[str, Any]] = {}  # assistant message id -> its latest usage
        self.api_error = ""  # the `error` of the last synthetic error message: why the API call failed
        self.errors_logged: set[str] = set()  # error texts already in the log, so a result does not repeat them
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
            return self._assistant(body, msg.get("error"))
        if kind == "user":
            return self._tool_results(body, msg.get("tool_use_result"))
        if kind == "system" and msg.get("subtype") == "api_retry":
            return [_retry(msg)]
        if kind == "result":
            return self._result(msg)
        return []

    def _assistant(self, body: dict[str, Any], error: object) -> list[dict[str, Any]]:
        if isinstance(body.get("usage"), dict) and body.get("id"):
            # One line per content block, each with the message's usage so far: keep the last.
            self.turn_usage[str(body["id"])] = body["usage"]
        if isinstance(error, str) and error:  # not the model's words: Claude Code's report of a failed call
            self.api_error = error
            text = "\n".join(b["text"] for b in _blocks(body) if isinstance(b.get("text"), str)) or error
            return self._error(text, error=error)
        events: list[dict[str, Any]] = []
        for block in _blocks(body):
            if block.get("type") == "text" and block.get("text"):
                events.append({"type": "message", "role": "assistant", "text": block["text"]})
            elif block.get("type") == "tool_use":
                self._tool_use(block)
        return events

    def _tool_use(self, block: dict[str, Any]) -> None:
        """Remember what a tool call would do; it is logged once its result says it ran."""
        name, args, key = block.get("name"), _dict(block.get("input")), str(block.get("id"))
        if name == "Bash" and isinstance(args.get("command"), str):
            self.commands[key] = args["command"]
        elif name in FILE_TOOLS:
            path = args.get("file_path") or args.get("notebook_path")
            if isinstance(path, str):
                self.writes[key] = {"type": "file_changed", "path": path, "change": FILE_TOOLS[name], "tool": name}

    def _tool_results(self, body: dict[str, Any], outcome: object) -> list[dict[str, Any]]:
        events = []
        for block in _blocks(body):
            if block.get("type") != "tool_result":
                continue
            key, failed = str(block.get("tool_use_id")), bool(block.get("is_error"))
            command = self.commands.pop(key, None)
            if command is not None:
                events.append({"type": "command", "command": command, "output": tail(_text(block.get("content"))),
                               "is_error": failed})
            write = self.writes.pop(key, None)
            if write is not None and not failed:  # a denied or failed write changed nothing
                change = RESULT_CHANGES.get(str(_dict(outcome).get("type")), write["change"])
                events.append({**write, "change": change})
        return events

    def _result(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        self.result_seen = True
        events: list[dict[str, Any]] = []
        usage = self._result_usage(msg)
        if usage:
            events.append({"type": "usage", **usage})
        events += [_denial(d) for d in msg.get("permission_denials") or [] if isinstance(d, dict)]
        text = _result_text(msg)
        if msg.get("is_error") or msg.get("subtype", "success") != "success":
            text = text or str(msg.get("subtype"))
            if text not in self.errors_logged:
                events += self._error(text)
            events.append({"type": "failure", "kind": self._kind(msg, text), "text": text})
        else:
            events.append({"type": "result", "output": output_from_text(text), "text": text})
        return events

    def _error(self, text: str, **extra: Any) -> list[dict[str, Any]]:
        self.errors_logged.add(text)
        return [{"type": "message", "role": "error", "text": text, **extra}]

    def _kind(self, msg: dict[str, Any], text: str) -> str:
        """transient, config or agent: from the HTTP status of the failed call, else the error
        Claude Code named in its synthetic message, else it is the agent's failure."""
        status = msg.get("api_error_status")
        if isinstance(status, int) and not isinstance(status, bool):
            if status in CONFIG_STATUSES:
                return "config"
            if status in TRANSIENT_STATUSES or status >= 500:
                return "transient"
        if self.api_error in CONFIG_ERRORS:
            return "config"
        if self.api_error in TRANSIENT_ERRORS:
            return "transient"
        # An API call that failed for a reason Claude Code could not name (a cut or empty stream).
        if self.api_error == "unknown" and text.startswith("API Error"):
            return "transient"
        return "agent"

    def _result_usage(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The result's tokens and cost. Some results (error_max_budget_usd, a reply that came
        through the non-streaming fallback) have all-zero `usage` beside a real cost: then the
        tokens come from `modelUsage`, which the cost was computed from, else from the turns."""
        usage: dict[str, Any] = dict(_usage(_dict(msg.get("usage"))))
        cost = msg.get("total_cost_usd")
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            if cost > 0 and not any(usage.values()):
                usage = _model_usage(_dict(msg.get("modelUsage"))) or self._turn_totals() or usage
            usage["cost_usd"] = float(cost)
        return usage

    def _turn_totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for usage in self.turn_usage.values():
            for key, value in _usage(usage).items():
                totals[key] = totals.get(key, 0) + value
        return totals if any(totals.values()) else {}

    def finish(self, exit_code: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [{"type": "command", "command": c, "output": ""} for c in self.commands.values()]
        self.commands.clear()
        if not self.result_seen:  # killed before its result: count the tokens its turns reported
            totals = self._turn_totals()
            if totals:
                events.append({"type": "usage", **totals})
        if not self.result_seen and 0 < exit_code < SIGNALLED:
            # It gave up before starting (an unknown flag, a broken install): its stderr says why.
            events.append({"type": "failure", "kind": "config",
                           "text": f"claude exited with code {exit_code} before its result (its stderr is in the log)"})
        return events


def _retry(msg: dict[str, Any]) -> dict[str, Any]:
    """An `api_retry` system message as an action-log event, logged when it comes: a retrying
    agent shows why it is silent."""
    status, error = msg.get("error_status"), msg.get("error")
    attempt, most, delay = msg.get("attempt"), msg.get("max_retries"), msg.get("retry_delay_ms")
    seconds = f" in {delay / 1000:.1f} s" if isinstance(delay, int | float) else ""
    why = " ".join(str(x) for x in (status, error) if x is not None) or "unknown"
    return {"type": "api_retry", "text": f"API call failed ({why}): retry {attempt} of {most}{seconds}",
            "attempt": attempt, "max_retries": most, "error_status": status, "error": error}


def _denial(denial: dict[str, Any]) -> dict[str, Any]:
    """A `permission_denials` entry of the result, shown as a message: what the agent was not allowed to do."""
    tool, args = str(denial.get("tool_name")), _dict(denial.get("tool_input"))
    what = args.get("file_path") or args.get("notebook_path") or args.get("command") or ""
    return {"type": "message", "role": "permission_denied", "text": f"{tool} denied: {what}".rstrip(": "),
            "tool": tool, "input": args}


def _result_text(msg: dict[str, Any]) -> str:
    """The result's text: `result`, else (an error_* result has none) its `errors[]`."""
    result = msg.get("result")
    if isinstance(result, str) and result:
        return result
    errors = msg.get("errors")
    if isinstance(errors, list):
        return "\n".join(str(e) for e in errors if e)
    return ""


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


def _model_usage(models: dict[str, Any]) -> dict[str, int]:
    """`modelUsage` ({model: {"inputTokens", ...}}) summed over the models, in the API's names."""
    summed: dict[str, int] = {}
    for per_model in models.values():
        for key, name in MODEL_USAGE_KEYS.items():
            value = _dict(per_model).get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                summed[name] = summed.get(name, 0) + value
    usage = _usage(summed)
    return usage if any(usage.values()) else {}


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
