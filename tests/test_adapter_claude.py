"""The Claude Code adapter against real recordings of Claude Code 2.1.197 (tests/fixtures/claude/,
made as /work/shared/agent-captures' README says): what each stream becomes in the action log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clowder.harness.actions import describe
from clowder.harness.adapters.claude import Translator

CAPTURES = Path(__file__).parent / "fixtures" / "claude"


def lines(name: str) -> list[str]:
    return (CAPTURES / f"{name}.jsonl").read_text().splitlines()


def translate(name: str, exit_code: int = 0, upto: int | None = None) -> list[dict[str, Any]]:
    tr = Translator()
    events = [e for line in lines(name)[:upto] for e in tr.feed(line)]
    return events + tr.finish(exit_code)


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_a_successful_run_logs_a_new_file_as_added_its_command_usage_and_result() -> None:
    events = translate("claude-ok")
    assert of_type(events, "file_changed") == [
        {"type": "file_changed", "path": "/home/dev/ws2/calc.py", "change": "add", "tool": "Write"}]
    command = "python3 -c 'import calc; print(calc.add(2, 2))'"
    assert of_type(events, "command") == [{"type": "command", "command": command, "output": "4", "is_error": False}]
    assert of_type(events, "usage") == [{"type": "usage", "input_tokens": 30 + 900 + 12000, "output_tokens": 60,
                                         "cost_usd": 0.013275}]
    assert events[-1] == {"type": "result", "output": {"summary": "calc.py with add()"}, "text": events[-1]["text"]}
    assert of_type(events, "failure") == []


def test_a_write_over_an_existing_file_and_an_edit_are_updates() -> None:
    tr = Translator()
    tr.feed(json.dumps({"type": "assistant", "message": {"id": "m1", "content": [
        {"type": "tool_use", "id": "t1", "name": "Write", "input": {"file_path": "/w/a.py", "content": "x"}},
        {"type": "tool_use", "id": "t2", "name": "Edit", "input": {"file_path": "/w/b.py"}}]}}))
    first = tr.feed(json.dumps({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t1"}]},
                                "tool_use_result": {"type": "update", "filePath": "/w/a.py"}}))
    second = tr.feed(json.dumps({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t2"}]},
                                 "tool_use_result": {"filePath": "/w/b.py", "oldString": "a", "newString": "b"}}))
    assert [(e["path"], e["change"]) for e in first + second] == [("/w/a.py", "update"), ("/w/b.py", "update")]


def test_max_turns_says_why_from_errors_and_is_the_agents_failure() -> None:
    events = translate("claude-maxturns", exit_code=1)
    assert events[-2:] == [
        {"type": "message", "role": "error", "text": "Reached maximum number of turns (1)"},
        {"type": "failure", "kind": "agent", "text": "Reached maximum number of turns (1)"}]
    assert of_type(events, "usage") == [{"type": "usage", "input_tokens": 4310, "output_tokens": 20,
                                         "cost_usd": 0.004425}]


def test_a_spent_budget_takes_its_tokens_from_model_usage_when_usage_is_all_zeros() -> None:
    events = translate("claude-budget", exit_code=1)
    assert of_type(events, "usage") == [{"type": "usage", "input_tokens": 4310, "output_tokens": 20,
                                         "cost_usd": 0.004425}]
    assert events[-1] == {"type": "failure", "kind": "agent", "text": "Reached maximum budget ($0.001)"}
    assert of_type(events, "file_changed") == []  # the Write never ran


def test_zero_usage_with_a_cost_and_no_model_usage_counts_the_turns() -> None:
    tr = Translator()
    tr.feed(json.dumps({"type": "assistant", "message": {"id": "m1", "content": [{"type": "text", "text": "hi"}],
                                                         "usage": {"input_tokens": 10, "output_tokens": 20}}}))
    events = tr.feed(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "hi",
                                 "total_cost_usd": 0.5, "usage": {"input_tokens": 0, "output_tokens": 0},
                                 "modelUsage": {}}))
    assert events[0] == {"type": "usage", "input_tokens": 10, "output_tokens": 20, "cost_usd": 0.5}


def test_a_denied_write_is_no_file_change_and_the_denials_are_shown() -> None:
    events = translate("claude-denied")
    assert of_type(events, "file_changed") == []
    denied = [e for e in events if e.get("role") == "permission_denied"]
    assert [e["text"] for e in denied] == ["Write denied: /home/dev/ws2/calc.py",
                                          "Bash denied: python3 -c 'import calc; print(calc.add(2, 2))'"]
    assert denied[0]["tool"] == "Write" and denied[0]["input"]["content"] == "def add(a, b):\n    return a + b\n"
    assert of_type(events, "command")[0]["is_error"] is True
    assert events[-1]["type"] == "result"


def test_an_authentication_failure_is_logged_once_and_is_a_config_failure() -> None:
    events = translate("claude-noauth", exit_code=1)
    text = "Not logged in · Please run /login"
    assert [e for e in events if text in json.dumps(e, ensure_ascii=False) and e["type"] == "message"] == [
        {"type": "message", "role": "error", "text": text, "error": "authentication_failed"}]
    assert events[-1] == {"type": "failure", "kind": "config", "text": text}
    assert not [e for e in events if e.get("role") == "assistant"]


def test_api_retries_are_logged_as_they_come_and_an_unreachable_api_is_transient() -> None:
    tr = Translator()
    per_line = [tr.feed(line) for line in lines("claude-unreach")]
    retries = [events for events in per_line if events and events[0]["type"] == "api_retry"]
    assert len(retries) == 10 and all(len(events) == 1 for events in retries)
    assert retries[0][0] == {"type": "api_retry", "text": "API call failed (unknown): retry 1 of 10 in 0.5 s",
                             "attempt": 1, "max_retries": 10, "error_status": None, "error": "unknown"}
    events = [e for events in per_line for e in events]
    text = "API Error: Unable to connect to API (ConnectionRefused)"
    assert [e["text"] for e in of_type(events, "message")] == [text]
    assert events[-1] == {"type": "failure", "kind": "transient", "text": text}
    # The attempt's log shows why it waits, not a bare "[api_retry]".
    assert describe(retries[0][0]) == "[api_retry] API call failed (unknown): retry 1 of 10 in 0.5 s"


def test_http_statuses_and_api_errors_say_the_kind_of_failure() -> None:
    def kind(status: int | None, error: str, text: str = "API Error: x") -> str:
        tr = Translator()
        tr.feed(json.dumps({"type": "assistant", "error": error, "message": {
            "id": "m", "content": [{"type": "text", "text": text}]}}))
        events = tr.feed(json.dumps({"type": "result", "subtype": "success", "is_error": True, "result": text,
                                     "api_error_status": status}))
        return str(events[-1]["kind"])

    assert [kind(429, "rate_limit"), kind(500, "server_error"), kind(529, "unknown"), kind(None, "server_error"),
            kind(None, "unknown", "API Error: API returned an empty or malformed response (HTTP 200)")] == [
        "transient"] * 5
    assert [kind(401, "authentication_failed"), kind(403, "unknown"), kind(None, "billing_error")] == ["config"] * 3
    assert [kind(400, "invalid_request"), kind(None, "unknown", "something else")] == ["agent"] * 2


def test_a_run_killed_before_its_result_counts_each_messages_last_usage_once() -> None:
    events = translate("claude-ok", exit_code=137, upto=7)  # everything but the result
    # three messages (one of them printed as two lines), each 10 + 300 + 4000 in and 1 out so far
    assert of_type(events, "usage") == [{"type": "usage", "input_tokens": 3 * 4310, "output_tokens": 3}]
    assert of_type(events, "failure") == []


def test_an_exit_before_any_result_is_a_config_failure_but_a_kill_is_not() -> None:
    assert Translator().finish(1) == [{"type": "failure", "kind": "config", "text": (
        "claude exited with code 1 before its result (its stderr is in the log)")}]
    assert Translator().finish(143) == [] and Translator().finish(-9) == []
    assert of_type(translate("claude-maxturns", exit_code=1), "failure")[0]["kind"] == "agent"  # one failure
