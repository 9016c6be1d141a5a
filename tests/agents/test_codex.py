"""The real Codex CLI (pinned in .ci/agent-versions) run through Clowder as the built-in `codex`
harness, against a fake Responses API on 127.0.0.1 (tests/agents/fake_openai_responses.py).

Codex reads its provider from $CODEX_HOME/config.toml: each test gets its own, pointing at its
fake server with short retries. Max turns and budgets have no Codex scenario: `codex exec` has
no turn limit, and it reports tokens but no cost (a price table is issue 13 item 5)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clowder.state import JobState, JobStatus, Usage, read_job_status
from clowder.tree import Root
from tests.agents.conftest import require_cli
from tests.agents.fake_openai_responses import DROPPED, FakeResponses, Reply, answer, closed_port, http_error, run
from tests.conftest import Invoke, MakePipeline

KEY_VAR = "CLOWDER_TEST_FAKE_OPENAI_KEY"
WRITE = "printf 'def add(a, b):\\n    return a + b\\n' > calc.py"
CHECK = "python3 -c 'import calc; print(calc.add(2, 2))'"
SUMMARY = {"summary": "calc.py with add()", "tests": "add(2, 2) == 4"}


def codex_home(tmp_path: Path, base_url: str) -> Path:
    """A CODEX_HOME whose config.toml sends Codex to `base_url`: no update check, no analytics,
    one retry of a request and of a stream, and /tmp outside the sandbox (so a write there is denied)."""
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(f"""\
model = "gpt-fake"
model_provider = "fake"
check_for_update_on_startup = false

[model_providers.fake]
name = "fake Responses API"
base_url = "{base_url}"
env_key = "{KEY_VAR}"
wire_api = "responses"
request_max_retries = 1
stream_max_retries = 1

[analytics]
enabled = false

[sandbox_workspace_write]
exclude_slash_tmp = true
exclude_tmpdir_env_var = true
""")
    return home


@pytest.fixture
def codex_job(root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Callable[..., JobStatus]:
    """Run pipeline p's one agent job `dev` with the built-in codex harness against `base_url`;
    its status once `clowder run` has ended."""
    exe = require_cli("codex")
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(KEY_VAR, "sk-fake")
    root.config_file.write_text('default_harness = "codex"\n')

    def go(base_url: str, job: str = 'agent = "developer"\ntimeout = "60s"\n', exit_code: int = 0) -> JobStatus:
        monkeypatch.setenv("CODEX_HOME", str(codex_home(tmp_path, base_url)))
        make_pipeline("p", {"dev": job}, spec='prompt = "Write calc.py with add(a, b) and check it."\n')
        result = cli("run", "p")
        assert result.exit_code == exit_code, result.output
        return read_job_status(root.pipeline("p").job_status_file("dev"), "dev")

    return go


def actions(root: Root) -> list[dict[str, Any]]:
    path = root.pipeline("p").workspace("dev") / ".clowder" / "dev" / "actions.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    for e in events:
        e.pop("ts")
    return events


def output_file(root: Root) -> Path:
    return root.pipeline("p").workspace("dev") / ".clowder" / "dev" / "output.json"


def test_codex_edits_a_file_runs_a_command_and_answers_in_json(root: Root, codex_job: Callable[..., JobStatus]) -> None:
    script = [run(WRITE, "call_1", (1000, 0, 20)), run(CHECK, "call_2", (1100, 900, 20)),
              answer(json.dumps(SUMMARY), (1200, 1000, 30))]
    with FakeResponses(script) as api:
        status = codex_job(api.base_url)
    assert status.state is JobState.SUCCEEDED, status.message
    assert (root.pipeline("p").workspace("dev") / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    events = actions(root)
    commands = [(e["command"], e["exit_code"]) for e in events if e["type"] == "command"]
    assert commands == [(WRITE, 0), (CHECK, 0)]
    assert [e for e in events if e["type"] == "command"][1]["output"].endswith("4\n")
    assert {"type": "message", "role": "assistant", "text": json.dumps(SUMMARY)} in events
    assert events[-1] == {"type": "result", "output": SUMMARY, "text": json.dumps(SUMMARY)}
    assert not [e for e in events if e["type"] == "failure" or e.get("role") == "error"]
    assert json.loads(output_file(root).read_text()) == SUMMARY
    assert status.attempts[0].usage == Usage(3300, 70, 0.0)  # Codex reports tokens, no cost
    assert [r.headers.get("authorization") for r in api.requests] == ["Bearer sk-fake"] * 3
    results = [i for i in api.requests[2].body["input"] if i.get("type") == "function_call_output"]
    assert [r["call_id"] for r in results] == ["call_1", "call_2"] and "4\n" in results[1]["output"]


def test_a_stream_dropped_mid_turn_is_retried_and_the_result_kept(root: Root,
                                                                  codex_job: Callable[..., JobStatus]) -> None:
    with FakeResponses([run(CHECK.replace("calc", "math"), "call_1"), DROPPED, answer(json.dumps(SUMMARY))]) as api:
        status = codex_job(api.base_url)
    assert status.state is JobState.SUCCEEDED, status.message
    events = actions(root)
    retries = [e["text"] for e in events if e.get("role") == "retry"]
    assert len(retries) == 1 and retries[0].startswith("Reconnecting... 1/1 (stream disconnected before completion")
    assert events[-1]["type"] == "result" and json.loads(output_file(root).read_text()) == SUMMARY
    assert len(api.requests) == 3


def failed_turn(root: Root, status: JobStatus) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The action log's error messages and its one failure event, after checking the attempt failed
    with Codex's exit code, its status says the failure's kind and text, and it left no output."""
    assert status.state is JobState.FAILED
    assert not output_file(root).exists()
    events = actions(root)
    [failure] = [e for e in events if e["type"] == "failure"]
    assert not [e for e in events if e["type"] == "result"]
    assert status.message == f"attempt 1 failed ({failure['kind']}: {failure['text']})"
    assert status.attempts[0].exit_code == 1 and status.attempts[0].failure_kind == failure["kind"]
    return [e for e in events if e.get("role") == "error"], failure


def test_a_wrong_key_fails_the_attempt_as_a_config_failure(root: Root, codex_job: Callable[..., JobStatus]) -> None:
    with FakeResponses([http_error(401, "Incorrect API key provided: sk-fake.")] * 3) as api:
        errors, failure = failed_turn(root, codex_job(api.base_url, exit_code=1))
    text = f"unexpected status 401 Unauthorized: Incorrect API key provided: sk-fake., url: {api.base_url}/responses"
    assert errors == [{"type": "message", "role": "error", "text": text}]  # once, not twice
    assert failure == {"type": "failure", "kind": "config", "text": text}


@pytest.mark.parametrize(("reply", "text"), [
    (http_error(429, "Rate limit reached"), "exceeded retry limit, last status: 429 Too Many Requests"),
    (http_error(500, "boom"), "We\u2019re currently experiencing high demand, which may cause temporary errors."),
    (http_error(503, "overloaded"), "unexpected status 503 Service Unavailable: overloaded, url: {url}/responses"),
])
def test_rate_limits_and_server_errors_are_transient_failures(root: Root, codex_job: Callable[..., JobStatus],
                                                              reply: Reply, text: str) -> None:
    with FakeResponses([reply] * 4) as api:  # retry_on = []: one attempt, as Codex ends it
        errors, failure = failed_turn(root, codex_job(api.base_url, job='agent = "developer"\nretry_on = []\n',
                                                      exit_code=1))
    text = text.format(url=api.base_url)
    assert errors == [{"type": "message", "role": "error", "text": text}]
    assert failure == {"type": "failure", "kind": "transient", "text": text}


def test_a_rate_limited_turn_is_retried_by_clowder_and_its_answer_kept(root: Root,
                                                                       codex_job: Callable[..., JobStatus]) -> None:
    limited = http_error(429, "Rate limit reached")
    with FakeResponses([limited, answer(json.dumps(SUMMARY))]) as api:  # Codex asks once on a 429
        status = codex_job(api.base_url, job='agent = "developer"\nbackoff = { initial = "100ms" }\n')
    assert status.state is JobState.SUCCEEDED, status.message
    first, second = status.attempts
    assert (first.state, first.failure_kind, first.message) == (
        JobState.FAILED, "transient", "exceeded retry limit, last status: 429 Too Many Requests")
    assert (second.trigger, second.state) == ("retry", JobState.SUCCEEDED)
    assert json.loads(output_file(root).read_text()) == SUMMARY
    assert len(api.requests) == 2


def test_an_unreachable_api_is_retried_until_the_idle_timeout_ends_it(root: Root,
                                                                      codex_job: Callable[..., JobStatus]) -> None:
    # Codex 0.171 waits "for network" forever, printing the same retry line: no progress, so the
    # attempt's log stays quiet and its idle_timeout ends it (a transient failure: retried by default).
    status = codex_job(f"http://127.0.0.1:{closed_port()}/v1", exit_code=1,
                       job='agent = "developer"\ntimeout = "60s"\nidle_timeout = "3s"\nretry_on = []\n')
    assert status.state is JobState.FAILED
    assert status.message == "attempt 1 failed (transient: idle: no output for 3.0s)"
    events = actions(root)
    assert {e["text"] for e in events if e.get("role") == "retry"} == {
        "Reconnecting... waiting for network (Connection failed: error sending request)"}
    assert events[-1] == {"type": "failure", "kind": "transient", "text": "ended while retrying: Reconnecting... "
                          "waiting for network (Connection failed: error sending request)"}
    assert not output_file(root).exists()


def test_a_write_outside_the_workspace_is_denied_by_the_sandbox(root: Root, tmp_path: Path,
                                                               codex_job: Callable[..., JobStatus]) -> None:
    outside = tmp_path / "outside.txt"
    with FakeResponses([run(f"echo leaked > {outside}", "call_1"), answer('{"summary": "could not write"}')]) as api:
        status = codex_job(api.base_url)
    assert not outside.exists()
    [denied] = [i for i in api.requests[1].body["input"] if i.get("type") == "function_call_output"]
    assert "Read-only file system" in denied["output"] and "Process exited with code 1" in denied["output"]
    # Codex 0.171 leaves a command the sandbox denied out of its JSON stream: the log shows only the answer.
    assert status.state is JobState.SUCCEEDED
    assert json.loads(output_file(root).read_text()) == {"summary": "could not write"}
    assert not [e for e in actions(root) if e["type"] == "command"]
