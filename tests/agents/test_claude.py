"""Claude Code, the real CLI pinned in .ci/agent-versions, run through Clowder against a fake
Messages API on 127.0.0.1: each scenario is a real root, a pipeline with one agent job whose
harness is Claude Code, and `clowder run`; each asserts what a user would look at (the job's
state and message, the action log, output.json, the usage and cost in its status, the log)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from clowder.harness.config import BUILTIN
from clowder.state import JobState, JobStatus, Usage, read_job_status
from clowder.tree import Root
from tests.agents.conftest import require_cli
from tests.agents.fake_anthropic import Drop, Hang, HttpError, Step, ToolUse, closed_port, reply, serve
from tests.conftest import Invoke, MakePipeline

FLAGS = BUILTIN["claude"].command[1:]  # the built-in harness's flags, as a user gets them
DENIED_FLAGS = ("-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "default",
                "--allowedTools", "Read")
ANSWER = 'Done.\n\n```json\n{"summary": "calc.py with add()"}\n```'
# One API call as the fake bills it: 10 input, 300 cache-write and 4000 cache-read tokens, 20 out.
CALL = Usage(4310, 20, 0.004425)
QUICK_RETRIES = "1"  # CLAUDE_CODE_MAX_RETRIES: one retry, ~0.5 s, instead of ten over ~3 minutes


def calls(n: int, output_tokens: int = 20) -> Usage:
    return Usage(n * CALL.input_tokens, n * output_tokens, round(n * CALL.cost_usd, 6))


class Scenario:
    """A root whose default harness is the real Claude Code, talking to `url`."""

    def __init__(self, root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
        self.root, self.make_pipeline, self.cli = root, make_pipeline, cli
        self.exe = require_cli("claude")

    @property
    def workspace(self) -> Path:
        return self.root.pipeline("p").workspace("dev").resolve()

    def run(self, url: str, flags: tuple[str, ...] = FLAGS, timeout: str = "60s", retries: str = QUICK_RETRIES) -> int:
        env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-fake", "DISABLE_AUTOUPDATER": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
               "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_MAX_RETRIES": retries}
        self.root.config_file.write_text(
            'kill_grace = "2s"\ndefault_harness = "claude"\n[harnesses.claude]\n'
            f"command = {json.dumps([str(self.exe), *flags])}\nadapter = \"claude\"\n"
            f"env = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in env.items())} }}\n")
        # retry_on = []: one attempt, as Claude Code ends it (Clowder's own retrying is tested apart)
        self.make_pipeline("p", {"dev": f'agent = "developer"\ntimeout = "{timeout}"\nretry_on = []\n'},
                           spec='prompt = "Write calc.py with add(a, b)."\n')
        return self.cli("run", "p").exit_code

    def status(self) -> JobStatus:
        return read_job_status(self.root.pipeline("p").job_status_file("dev"), "dev")

    def actions(self) -> list[dict[str, Any]]:
        text = (self.workspace / ".clowder" / "dev" / "actions.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "ts"} for e in self.actions() if e["type"] == kind]

    def output(self) -> Any:
        return json.loads((self.workspace / ".clowder" / "dev" / "output.json").read_text())

    def log(self) -> str:
        return self.root.pipeline("p").log_file("dev", 1).read_text()

    def write(self, name: str, content: str) -> ToolUse:
        return ToolUse("Write", {"file_path": str(self.workspace / name), "content": content})


@pytest.fixture
def scenario(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> Scenario:
    return Scenario(root, make_pipeline, cli)


def failed_with(s: Scenario, kind: str, text: str) -> None:
    status = s.status()
    message = f"attempt 1 failed: {text}" if kind == "agent" else f"attempt 1 failed ({kind}: {text})"
    assert status.state is JobState.FAILED and status.message == message
    assert s.of_type("failure") == [{"type": "failure", "kind": kind, "text": text}]
    assert [e["text"] for e in s.of_type("message") if e["role"] == "error"] == [text]  # once
    assert s.log().count(f"[message] {' '.join(text.split())}") == 1


def test_an_edit_a_command_and_a_json_answer(scenario: Scenario) -> None:
    s = scenario
    script: list[Step] = [
        reply("I'll write calc.py.", s.write("calc.py", "def add(a, b):\n    return a - b\n")),
        reply(ToolUse("Bash", {"command": "python3 -c 'import calc; print(calc.add(2, 2))'", "description": "check"})),
        reply(ToolUse("Edit", {"file_path": str(s.workspace / "calc.py"), "old_string": "a - b",
                               "new_string": "a + b"})),
        reply(ANSWER)]
    with serve(script) as server:
        assert s.run(server.url) == 0
    status = s.status()
    assert status.state is JobState.SUCCEEDED and status.attempts[0].usage == calls(4)
    assert (s.workspace / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert s.of_type("file_changed") == [
        {"type": "file_changed", "path": "calc.py", "change": "add", "tool": "Write"},
        {"type": "file_changed", "path": "calc.py", "change": "update", "tool": "Edit"}]
    assert s.of_type("command") == [{"type": "command", "command": "python3 -c 'import calc; print(calc.add(2, 2))'",
                                     "output": "0", "is_error": False}]
    assert s.of_type("usage") == [{"type": "usage", **_usage_fields(calls(4), 80)}]
    assert s.output() == {"summary": "calc.py with add()"}
    assert s.of_type("failure") == []
    prompt = json.dumps(server.requests[0]["messages"][0])
    assert "Write calc.py with add(a, b)." in prompt  # the prompt reached the model through stdin


def _usage_fields(usage: Usage, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens, "output_tokens": output_tokens, "cost_usd": usage.cost_usd}


def test_a_wrong_key_is_a_config_failure_said_once(scenario: Scenario) -> None:
    with serve([], rest=HttpError(401, "authentication_error", "invalid x-api-key")) as server:
        assert scenario.run(server.url) == 1
    failed_with(scenario, "config", "Invalid API key · Fix external API key")
    assert scenario.status().attempts[0].usage == Usage(0, 0, 0.0)


def test_a_rate_limit_that_passes_is_retried_by_claude_and_logged(scenario: Scenario) -> None:
    limited = HttpError(429, "rate_limit_error", "rate limited", (("retry-after", "0"),))
    with serve([limited, reply(ANSWER)]) as server:
        assert scenario.run(server.url) == 0
    [retry] = scenario.of_type("api_retry")
    assert retry["error_status"] == 429 and retry["error"] == "rate_limit" and retry["attempt"] == 1
    assert scenario.status().state is JobState.SUCCEEDED and scenario.output() == {"summary": "calc.py with add()"}
    assert scenario.status().attempts[0].usage == calls(1)


@pytest.mark.parametrize(("error", "text"), [
    (HttpError(429, "rate_limit_error", "rate limited", (("retry-after", "0"),)),
     "API Error: Request rejected (429) · rate limited"),
    (HttpError(529, "overloaded_error", "Overloaded"), "API Error: 529 Overloaded."),
], ids=["429", "529"])
def test_rate_limits_and_overload_that_last_are_transient_failures(scenario: Scenario, error: HttpError,
                                                                   text: str) -> None:
    with serve([], rest=error) as server:
        assert scenario.run(server.url) == 1
    [failure] = scenario.of_type("failure")
    assert failure["kind"] == "transient" and failure["text"].startswith(text)
    assert len(scenario.of_type("api_retry")) == int(QUICK_RETRIES)
    assert scenario.status().state is JobState.FAILED


def test_a_dropped_stream_recovers_and_its_cost_keeps_its_tokens(scenario: Scenario) -> None:
    # Claude Code answers a cut stream with a non-streaming request; its result then reports
    # all-zero usage beside the cost: the tokens come from the turns.
    with serve([Drop(reply("Let me", ToolUse("Bash", {"command": "true"})), after=3), reply(ANSWER)]) as server:
        assert scenario.run(server.url) == 0
    assert [r.get("stream") for r in server.requests] == [True, None]
    assert scenario.status().state is JobState.SUCCEEDED and scenario.output() == {"summary": "calc.py with add()"}
    assert scenario.status().attempts[0].usage == calls(1)
    assert scenario.of_type("command") == []  # the cut message's tool call never ran


def test_an_unreachable_api_is_a_transient_failure(scenario: Scenario) -> None:
    assert scenario.run(f"http://127.0.0.1:{closed_port()}") == 1
    failed_with(scenario, "transient", "API Error: Unable to connect to API (ConnectionRefused)")
    assert [e["error"] for e in scenario.of_type("api_retry")] == ["unknown"]


def test_retries_against_an_unreachable_api_are_logged_as_they_come(scenario: Scenario) -> None:
    # Claude's own ten retries take ~3 minutes: the job's timeout ends it, and the retries it
    # made by then are already in the action log, each when it happened.
    assert scenario.run(f"http://127.0.0.1:{closed_port()}", timeout="8s", retries="10") == 1
    assert scenario.status().message == "attempt 1 failed: timed out after 8.0s"
    retries = [e for e in scenario.actions() if e["type"] == "api_retry"]
    assert [e["attempt"] for e in retries] == list(range(1, len(retries) + 1)) and len(retries) >= 2
    times = [datetime.fromisoformat(e["ts"]) for e in retries]
    assert (times[1] - times[0]).total_seconds() >= 0.3  # logged one by one, not all at the end
    assert scenario.of_type("failure") == []  # Clowder ended it: its kind is Clowder's to say


def test_max_turns_is_the_agents_failure_with_claudes_reason(scenario: Scenario) -> None:
    s = scenario
    with serve([reply("I'll write calc.py.", s.write("calc.py", "x = 1\n")), reply(ANSWER)]) as server:
        assert s.run(server.url, (*FLAGS, "--max-turns", "1")) == 1
    failed_with(s, "agent", "Reached maximum number of turns (1)")
    assert s.of_type("file_changed") == [{"type": "file_changed", "path": "calc.py", "change": "add", "tool": "Write"}]
    assert s.status().attempts[0].usage == calls(1)
    assert not (s.workspace / ".clowder" / "dev" / "output.json").exists()


def test_a_spent_budget_is_the_agents_failure_and_keeps_its_tokens(scenario: Scenario) -> None:
    s = scenario
    with serve([reply("I'll write calc.py.", s.write("calc.py", "x = 1\n")), reply(ANSWER)]) as server:
        assert s.run(server.url, (*FLAGS, "--max-budget-usd", "0.001")) == 1
    failed_with(s, "agent", "Reached maximum budget ($0.001)")
    assert s.status().attempts[0].usage == calls(1)  # Claude reports zero tokens beside the cost
    assert s.of_type("file_changed") == [] and not (s.workspace / "calc.py").exists()


def test_a_denied_write_changes_nothing_and_the_denials_are_shown(scenario: Scenario) -> None:
    s = scenario
    script: list[Step] = [reply("I'll write calc.py.", s.write("calc.py", "x = 1\n")),
                          reply(ToolUse("Bash", {"command": "python3 -c 'open(\"x\", \"w\")'", "description": "x"})),
                          reply(ANSWER)]
    with serve(script) as server:
        assert s.run(server.url, DENIED_FLAGS) == 0
    assert s.of_type("file_changed") == [] and not (s.workspace / "calc.py").exists()
    denied = [e["text"] for e in s.of_type("message") if e["role"] == "permission_denied"]
    assert denied == [f"Write denied: {s.workspace / 'calc.py'}", "Bash denied: python3 -c 'open(\"x\", \"w\")'"]
    assert f"Write denied: {s.workspace / 'calc.py'}" in s.log()
    assert s.status().state is JobState.SUCCEEDED  # its exit code says so; the denials are for a person to read


def test_a_killed_run_counts_the_usage_of_the_messages_it_got(scenario: Scenario) -> None:
    s = scenario
    script: list[Step] = [reply("I'll write calc.py.", s.write("calc.py", "x = 1\n"))]
    with serve(script, rest=Hang(reply("never finished"))) as server:
        assert s.run(server.url, timeout="6s") == 1
        assert len(server.requests) == 2
    assert s.status().message == "attempt 1 failed: timed out after 6.0s"
    # No result: each message's last reported usage, once (the stream reports 1 output token at its start).
    assert s.status().attempts[0].usage == Usage(CALL.input_tokens, 1, 0.0)
    assert s.of_type("file_changed") == [{"type": "file_changed", "path": "calc.py", "change": "add", "tool": "Write"}]


def test_a_flag_claude_does_not_know_is_a_config_failure_with_its_error(scenario: Scenario) -> None:
    with serve([]) as server:
        assert scenario.run(server.url, (*FLAGS, "--no-such-flag")) == 1
        assert server.requests == []
    assert scenario.of_type("failure") == [{"type": "failure", "kind": "config", "text": (
        "claude exited with code 1 before its result (its stderr is in the log)")}]
    assert "error: unknown option '--no-such-flag'" in scenario.log()
