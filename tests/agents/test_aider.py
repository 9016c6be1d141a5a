"""aider (pinned in .ci/agent-versions) run through Clowder against a fake chat-completions API on
127.0.0.1: a real root, a pipeline whose agent job uses the built-in `aider` harness, `clowder run`,
and what the job's status, action log, output.json and error say. aider has no turn limit and no
budget flag of its own (Clowder's max_cost_usd stops it between attempts), and it runs no shell
command a model proposes under --yes-always (the "denied tool" case)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clowder.state import JobState, JobStatus, Usage, read_job_status
from clowder.tree import Root
from tests.agents.conftest import require_cli
from tests.agents.fake_openai_chat import Drop, FakeChat, HttpError, Reply, Step, closed_port, serve
from tests.conftest import Invoke, MakePipeline

EDIT = ("The bug is in add(): it subtracts. I'll make it add.\n\ncalc.py\n```python\n<<<<<<< SEARCH\n"
        "def add(a, b):\n    return a - b\n=======\ndef add(a, b):\n    return a + b\n>>>>>>> REPLACE\n```\n\n"
        '```json\n{"summary": "add() adds", "files": ["calc.py"]}\n```\n')
PIPELINE = 'prompt = "Fix add() in calc.py."\n[roles.dev]\nharness = "aider"\n'
SETUP = "command = '''printf 'def add(a, b):\\n    return a - b\\n' > calc.py'''\n"
# gpt-4o's price in the litellm table aider 0.86.2 bundles: $2.50 / $10 per million tokens in / out.
COST = 0.0071  # 2,500 tokens in and 89 out, as aider rounds it
KILL_AFTER = "20s"  # the job timeout that ends an aider still retrying (it gives up only after ~64 s)


@pytest.fixture
def aider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinned aider on PATH as `aider` (the built-in harness's command), with a fake key and model."""
    bin_dir = tmp_path / "agent-bin"
    bin_dir.mkdir()
    (bin_dir / "aider").symlink_to(require_cli("aider"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    monkeypatch.setenv("AIDER_MODEL", "openai/gpt-4o")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm's own price table: no download


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[FakeChat]:
    steps: list[Step] = request.param
    with serve(steps) as fake:
        monkeypatch.setenv("AIDER_OPENAI_API_BASE", fake.base_url)
        yield fake


def scenario(*steps: Step) -> Any:
    return pytest.mark.parametrize("api", [list(steps)], indirect=True)


def run_dev(root: Root, make_pipeline: MakePipeline, cli: Invoke, dev: str = "") -> JobStatus:
    make_pipeline("p", {"setup": SETUP, "dev": f'agent = "dev"\nneeds = ["setup"]\n{dev}'}, spec=PIPELINE)
    result = cli("run", "p")
    assert result.exit_code in (0, 1), result.output
    return read_job_status(root.pipeline("p").job_status_file("dev"), "dev")


def actions(root: Root) -> list[dict[str, Any]]:
    log = root.pipeline("p").workspace("dev") / ".clowder" / "dev" / "actions.jsonl"
    return [{k: v for k, v in json.loads(line).items() if k != "ts"} for line in log.read_text().splitlines()]


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def meta(root: Root) -> Path:
    return root.pipeline("p").workspace("dev") / ".clowder" / "dev"


@pytest.mark.usefixtures("aider")
@scenario(Reply(EDIT))
def test_aider_edits_a_file_and_answers_with_json(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                  api: FakeChat) -> None:
    status = run_dev(root, make_pipeline, cli)
    assert (status.state, status.message) == (JobState.SUCCEEDED, "")
    ws = root.pipeline("p").workspace("dev")
    assert (ws / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    events = actions(root)
    assert [e["type"] for e in events] == ["message", "usage", "file_changed", "result"]
    assert events[0]["text"].startswith("The bug is in add()") and "[message]" not in events[0]["text"]
    assert events[1] == {"type": "usage", "input_tokens": 2500, "output_tokens": 89, "cost_usd": COST}
    assert events[2] == {"type": "file_changed", "path": "calc.py", "change": "update"}
    output = {"summary": "add() adds", "files": ["calc.py"]}
    assert events[3]["output"] == output
    assert json.loads((meta(root) / "output.json").read_text()) == output
    assert status.attempts[-1].usage == Usage(2500, 89, COST)
    [request] = api.requests
    assert request["model"] == "gpt-4o" and "Fix add() in calc.py." in json.dumps(request["messages"])
    shown = subprocess.run(["git", "show", "--stat", "--format=", "HEAD"], cwd=ws, capture_output=True, text=True,
                           check=True).stdout
    assert "calc.py" in shown and ".gitignore" not in shown  # --no-gitignore: the project's .gitignore is left alone


@pytest.mark.usefixtures("aider")
@scenario(HttpError(401, "Incorrect API key provided: sk-fake.", code="invalid_api_key"))
def test_a_wrong_key_fails_the_job_as_a_config_failure(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                        api: FakeChat) -> None:
    status = run_dev(root, make_pipeline, cli)
    events = actions(root)
    text = ("litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key provided: "
            "sk-fake. The API provider is not able to authenticate you. Check your API key.")
    assert (status.state, status.message) == (JobState.FAILED, f"attempt 1 failed (config: {text})")
    assert events == [{"type": "api_error", "error": "AuthenticationError", "kind": "config", "text": text},
                      {"type": "failure", "kind": "config", "text": text}]
    assert not (meta(root) / "output.json").exists()  # the error is no output
    assert status.attempts[-1].usage is None
    error = json.loads((meta(root) / "error.json").read_text())
    assert f"clowder adapter: aider failed (config): {text}" in "\n".join(error["log_tail"])


@pytest.mark.usefixtures("aider")
@scenario(HttpError(429, "Rate limit reached for gpt-4o.", type="requests", code="rate_limit_exceeded"), Reply(EDIT))
def test_a_rate_limit_that_clears_is_retried_and_the_job_succeeds(root: Root, make_pipeline: MakePipeline,
                                                                  cli: Invoke, api: FakeChat) -> None:
    status = run_dev(root, make_pipeline, cli)
    assert status.state is JobState.SUCCEEDED
    assert len(api.requests) == 2
    assert not of_type(actions(root), "failure")
    assert status.attempts[-1].usage == Usage(2500, 89, COST)


@pytest.mark.usefixtures("aider")
@scenario(Drop(), Reply(EDIT))
def test_a_dropped_connection_that_recovers_keeps_the_result(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                             api: FakeChat) -> None:
    status = run_dev(root, make_pipeline, cli)
    assert status.state is JobState.SUCCEEDED
    assert len(api.requests) == 2
    assert json.loads((meta(root) / "output.json").read_text())["summary"] == "add() adds"
    assert not of_type(actions(root), "failure")


@pytest.mark.usefixtures("aider")
def test_an_unreachable_api_is_a_transient_failure_and_never_a_success(root: Root, make_pipeline: MakePipeline,
                                                                        cli: Invoke,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDER_OPENAI_API_BASE", f"http://127.0.0.1:{closed_port()}/v1")
    # retry_on = []: one attempt (a transient failure is otherwise retried 3 times)
    status = run_dev(root, make_pipeline, cli, dev=f'timeout = "{KILL_AFTER}"\nretry_on = []\n')
    assert (status.state, status.message) == (JobState.FAILED, "attempt 1 failed (transient: timed out after 20.0s)")
    events = actions(root)
    errors = of_type(events, "api_error")
    assert errors and all(e["kind"] == "transient" for e in errors)
    assert errors[0]["retry_in_s"] == 0.2  # aider's retries are logged as they come
    assert events[-1]["type"] == "failure" and events[-1]["kind"] == "transient"
    assert "Connection error" in events[-1]["text"]
    assert not of_type(events, "result") and not (meta(root) / "output.json").exists()


DENIED = "I'll check it:\n\n```bash\ntouch hacked.txt\n```\n\n```json\n{\"summary\": \"checked\"}\n```\n"


@pytest.mark.usefixtures("aider")
@scenario(Reply(DENIED))
def test_a_shell_command_the_model_proposes_is_not_run_and_is_logged(root: Root, make_pipeline: MakePipeline,
                                                                     cli: Invoke, api: FakeChat) -> None:
    status = run_dev(root, make_pipeline, cli)
    assert status.state is JobState.SUCCEEDED
    assert not (root.pipeline("p").workspace("dev") / "hacked.txt").exists()
    events = actions(root)
    assert of_type(events, "denied") == [{"type": "denied", "tool": "shell", "command": "touch hacked.txt",
                                          "text": "aider --yes-always does not run the shell commands a model "
                                                  "proposes"}]
    assert events[-1]["output"] == {"summary": "checked"}


@pytest.mark.usefixtures("aider")
@scenario(Reply(EDIT))
def test_a_spent_budget_stops_the_retries(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                          api: FakeChat) -> None:
    status = run_dev(root, make_pipeline, cli, dev='outputs = ["report.txt"]\nretries = 2\nmax_cost_usd = 0.005\n')
    assert status.state is JobState.FAILED
    assert [a.usage for a in status.attempts] == [Usage(2500, 89, COST)]
    assert status.message == (f"budget spent: dev has cost ${COST:.4f} of its max_cost_usd $0.01; no further "
                              "attempts or fix-ups (raise max_cost_usd to go on)")
    assert len(api.requests) == 1


@pytest.mark.usefixtures("aider")
@scenario(Reply(EDIT, prompt_tokens=40000, cache_write=1200, cache_hit=30000))
def test_cache_tokens_and_a_cost_on_its_own_line_are_recorded(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                              api: FakeChat) -> None:
    status = run_dev(root, make_pipeline, cli)
    assert status.state is JobState.SUCCEEDED
    raw = (meta(root) / "raw.txt").read_text()
    assert "Tokens: 41k sent, 1.2k cache write, 30k cache hit, 89 received.\nCost: $" in raw
    [usage] = of_type(actions(root), "usage")
    assert usage["input_tokens"] == 41000 - 1200 and usage["cost_usd"] > 0
    assert status.attempts[-1].usage == Usage(39800, 89, usage["cost_usd"])
