"""The Codex adapter against real recordings of `codex exec --json` 0.171.0 (tests/fixtures/codex-*.jsonl,
from ../shared/agent-captures): each replayed through the adapter runner, as a job runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clowder.harness.adapters.codex import Translator, failure_kind, inner_command
from clowder.harness.config import BUILTIN

FIXTURES = Path(__file__).parent / "fixtures"
WARNING = ("Model metadata for `gpt-fake` not found. Defaulting to fallback metadata; this can degrade performance "
           "and cause issues.")
COMMAND = "printf 'def add(a, b):\\n    return a + b\\n' > calc.py && python3 -c 'import calc; print(calc.add(2,2))'"
RESULT = {"type": "result", "output": {"summary": "calc.py with add()"}, "text": '{"summary": "calc.py with add()"}'}


def replay(tmp_path: Path, fixture: str, exit_code: int = 0) -> tuple[int, list[dict[str, Any]], str]:
    """Run the adapter on a CLI that prints `fixture` and exits `exit_code`; its exit code, the
    action log (without times) and what the attempt's log shows."""
    meta = tmp_path / ".clowder" / "dev"
    meta.mkdir(parents=True)
    (meta / "prompt.md").write_text("do it\n")
    env = {**os.environ, "CLOWDER_ACTIONS_FILE": str(meta / "actions.jsonl"),
           "CLOWDER_PROMPT_FILE": str(meta / "prompt.md")}
    proc = subprocess.run([sys.executable, "-m", "clowder.harness.adapters", "codex", "--", "sh", "-c",
                           f'cat "$0"; exit {exit_code}', str(FIXTURES / fixture)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    events = [json.loads(line) for line in (meta / "actions.jsonl").read_text().splitlines()]
    for e in events:
        e.pop("ts")
    return proc.returncode, events, proc.stdout


def test_the_builtin_codex_harness_uses_the_sandbox_flag_not_the_removed_full_auto() -> None:
    # codex exec 0.171.0 exits 2 on --full-auto ("unexpected argument"); see codex-exec-help.txt.
    assert BUILTIN["codex"].command == ("codex", "exec", "--json", "--sandbox", "workspace-write", "-")


def test_a_run_that_answered_logs_its_command_unwrapped_the_usage_and_the_result(tmp_path: Path) -> None:
    code, events, shown = replay(tmp_path, "codex-ok.jsonl")
    assert code == 0
    assert events == [
        {"type": "message", "role": "warning", "text": WARNING},
        {"type": "command", "command": COMMAND, "exit_code": 0, "output": "4\n"},
        {"type": "message", "role": "assistant", "text": '{"summary": "calc.py with add()"}'},
        {"type": "usage", "input_tokens": 10000, "output_tokens": 100, "cached_input_tokens": 8192},
        RESULT,
    ]
    assert f"[command] {COMMAND} (exit 0)" in shown.splitlines()


def test_a_dropped_stream_that_reconnected_keeps_its_result(tmp_path: Path) -> None:
    code, events, _ = replay(tmp_path, "codex-drop.jsonl")
    assert code == 0
    retry = ("Reconnecting... 1/5 (stream disconnected before completion: stream closed before "
             "response.completed)")
    assert {"type": "message", "role": "retry", "text": retry} in events
    assert events[-1] == RESULT
    assert not [e for e in events if e["type"] == "failure" or e.get("role") == "error"]


def test_a_wrong_key_is_a_config_failure_whose_text_is_logged_once(tmp_path: Path) -> None:
    code, events, _ = replay(tmp_path, "codex-401.jsonl", exit_code=1)
    text = ("unexpected status 401 Unauthorized: Incorrect API key provided: sk-fake., url: "
            "http://127.0.0.1:18767/v1/responses")
    assert code == 1
    assert [e for e in events if e.get("role") == "error"] == [{"type": "message", "role": "error", "text": text}]
    assert events[-1] == {"type": "failure", "kind": "config", "text": text}
    assert not [e for e in events if e["type"] == "result"]


def test_a_rate_limit_is_a_transient_failure(tmp_path: Path) -> None:
    code, events, _ = replay(tmp_path, "codex-429.jsonl", exit_code=1)
    text = "exceeded retry limit, last status: 429 Too Many Requests"
    assert code == 1
    assert events[1:] == [{"type": "message", "role": "error", "text": text},
                          {"type": "failure", "kind": "transient", "text": text}]


def test_a_run_killed_while_waiting_for_the_network_is_a_transient_failure(tmp_path: Path) -> None:
    code, events, _ = replay(tmp_path, "codex-unreach.jsonl", exit_code=143)
    assert code == 143
    assert sum(e.get("role") == "retry" for e in events) == 9
    assert events[-1] == {"type": "failure", "kind": "transient", "text": "ended while retrying: Reconnecting... "
                          "waiting for network (Connection failed: error sending request)"}
    assert not [e for e in events if e["type"] == "result"]


@pytest.mark.parametrize(("text", "kind"), [
    ("unexpected status 401 Unauthorized: Incorrect API key provided", "config"),
    ("unexpected status 403 Forbidden", "config"),
    ("exceeded retry limit, last status: 429 Too Many Requests", "transient"),
    ("unexpected status 503 Service Unavailable: overloaded", "transient"),
    ("We\u2019re currently experiencing high demand, which may cause temporary errors.", "transient"),  # a 500
    ("stream disconnected before completion: error sending request", "transient"),
    ("Your input exceeds the context window of this model", "agent"),
])
def test_failures_are_classified_by_what_codex_says(text: str, kind: str) -> None:
    assert failure_kind(text) == kind


@pytest.mark.parametrize(("command", "inner"), [
    ("/bin/bash -lc 'python -m pytest -q'", "python -m pytest -q"),
    ('/bin/bash -lc "printf \'a\\\\n\' > x"', "printf 'a\\n' > x"),
    ("bash -c ls", "ls"),
    ("/usr/bin/python3 -c 'print(1)'", "/usr/bin/python3 -c 'print(1)'"),
    ("/bin/bash -lc 'unbalanced", "/bin/bash -lc 'unbalanced"),
])
def test_commands_are_shown_without_codexs_shell_wrapping(command: str, inner: str) -> None:
    assert inner_command(command) == inner


def test_an_error_that_did_not_end_the_turn_is_logged_and_the_result_kept() -> None:
    tr = Translator()
    lines = ['{"type":"turn.started"}', '{"type":"error","message":"mcp server crashed"}',
             '{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"done"}}',
             '{"type":"turn.completed","usage":{"input_tokens":10,"output_tokens":2}}']
    events = [e for line in lines for e in tr.feed(line)] + tr.finish(0)
    assert events == [{"type": "message", "role": "assistant", "text": "done"},
                      {"type": "message", "role": "error", "text": "mcp server crashed"},
                      {"type": "usage", "input_tokens": 10, "output_tokens": 2},
                      {"type": "result", "output": {"text": "done"}, "text": "done"}]


def test_an_error_without_turn_failed_fails_the_run_once() -> None:
    tr = Translator()
    events = tr.feed('{"type":"error","message":"unexpected status 500"}') + tr.finish(1)
    assert events == [{"type": "message", "role": "error", "text": "unexpected status 500"},
                      {"type": "failure", "kind": "transient", "text": "unexpected status 500"}]
