"""The aider adapter against real recordings of aider 0.86.2 (tests/fixtures/agents/aider-*.txt, from
../shared/agent-captures and re-recorded against tests/agents/fake_openai_chat.py): what it reads
as the agent's reply, its usage and cost, and an API failure that aider itself exits 0 after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clowder.harness import agent
from clowder.harness.adapters.aider import Translator
from clowder.harness.config import BUILTIN
from clowder.spec import Config
from clowder.state import Usage
from clowder.tree import Root
from clowder.validate import build_pipeline
from tests.conftest import Invoke, MakePipeline

CAPTURES = Path(__file__).parent / "fixtures" / "agents"
REPLY = ("The bug is in add(): it subtracts. I'll make it add.\n\ncalc.py\n```python\n<<<<<<< SEARCH\n"
         "def add(a, b):\n    return a - b\n=======\ndef add(a, b):\n    return a + b\n>>>>>>> REPLACE\n```")


def translate(capture: str, exit_code: int = 0) -> list[dict[str, Any]]:
    tr = Translator()
    events = []
    for line in (CAPTURES / capture).read_text().splitlines():
        events += tr.feed(line)
    return events + tr.finish(exit_code)


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_start_up_notices_are_not_the_agents_reply() -> None:
    events = translate("aider-ok2.txt")
    assert of_type(events, "message") == [{"type": "message", "role": "assistant", "text": REPLY}]
    assert events[-1] == {"type": "result", "output": {"text": REPLY}, "text": REPLY}


def test_model_warnings_and_the_privacy_notice_are_not_the_agents_reply() -> None:
    events = translate("aider-notices.txt")
    reply = REPLY + '\n\n```json\n{"summary": "add() adds"}\n```'
    assert of_type(events, "message") == [{"type": "message", "role": "assistant", "text": reply}]
    assert events[-1] == {"type": "result", "output": {"summary": "add() adds"}, "text": reply}
    assert of_type(events, "file_changed") == [{"type": "file_changed", "path": "calc.py", "change": "update"}]


def test_a_cost_on_its_own_line_is_read_with_the_cache_tokens() -> None:
    tr = Translator()
    lines = ["Tokens: 35k sent, 1.2k cache write, 30k cache hit, 89 received.",
             "Cost: $0.0123 message, $0.0123 session.", "Applied edit to calc.py"]
    events = [e for line in lines for e in tr.feed(line)] + tr.finish(0)
    # litellm counts the cache writes and hits in prompt_tokens; aider adds the writes to "sent" once more.
    assert of_type(events, "usage") == [{"type": "usage", "input_tokens": 35000 - 1200, "output_tokens": 89,
                                         "cost_usd": 0.0123}]


def test_a_negative_cost_is_not_recorded_but_the_tokens_are() -> None:
    # aider 0.86.2 prints "$-0.03" when the API reports more cache hits than prompt tokens.
    [usage] = of_type(translate("aider-cache.txt"), "usage")
    assert usage == {"type": "usage", "input_tokens": 3700 - 1200, "output_tokens": 89}


def test_a_401_is_a_config_failure_not_the_agents_reply() -> None:
    events = translate("aider-401.txt")
    text = ("litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key provided: "
            "sk-fake. The API provider is not able to authenticate you. Check your API key.")
    assert of_type(events, "message") == [] and of_type(events, "result") == []
    assert of_type(events, "api_error") == [{"type": "api_error", "error": "AuthenticationError", "kind": "config",
                                             "text": text}]
    assert events[-1] == {"type": "failure", "kind": "config", "text": text}


def test_an_unreachable_api_is_a_transient_failure_with_each_retry_logged() -> None:
    events = translate("aider-unreach.txt")
    text = ("litellm.InternalServerError: InternalServerError: OpenAIException - Connection error. "
            "The API provider's servers are down or overloaded.")
    retries = of_type(events, "api_error")
    assert [e.get("retry_in_s") for e in retries] == [0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, None]
    assert all(e["text"] == text and e["kind"] == "transient" for e in retries)
    assert of_type(events, "message") == [] and of_type(events, "result") == []
    assert events[-1] == {"type": "failure", "kind": "transient", "text": text}


@pytest.mark.parametrize(("error", "kind"), [
    ("RateLimitError", "transient"), ("APIConnectionError", "transient"), ("ServiceUnavailableError", "transient"),
    ("Timeout", "transient"), ("InternalServerError", "transient"), ("AuthenticationError", "config"),
    ("NotFoundError", "config"), ("BadRequestError", "agent"), ("ContextWindowExceededError", "agent"),
])
def test_each_litellm_error_has_its_kind(error: str, kind: str) -> None:
    tr = Translator()
    events = tr.feed(f"litellm.{error}: {error}: OpenAIException - boom") + tr.feed("") + tr.finish(0)
    assert events[-1] == {"type": "failure", "kind": kind, "text": f"litellm.{error}: {error}: OpenAIException - boom"}


def test_an_error_the_api_recovered_from_is_no_failure() -> None:
    tr = Translator()
    lines = ["litellm.RateLimitError: RateLimitError: OpenAIException - slow down",
             "The API provider has rate limited you. Try again later or check your quotas.",
             "Retrying in 0.2 seconds...", "Done.", "", "Tokens: 2.5k sent, 89 received."]
    events = [e for line in lines for e in tr.feed(line)] + tr.finish(0)
    assert [e["type"] for e in events] == ["api_error", "message", "usage", "result"]
    assert events[1]["text"] == "Done."


def test_a_denied_shell_command_after_the_reply_is_not_the_result() -> None:
    # --yes-always never runs a shell command the model proposes: aider prints it after its usage report.
    tr = Translator()
    lines = ["Run the tests:", "", "```bash", "python -m pytest -q", "```", "",
             "Tokens: 2.5k sent, 89 received. Cost: $0.0071 message, $0.0071 session.", "", "python -m pytest -q"]
    events = [e for line in lines for e in tr.feed(line)] + tr.finish(0)
    reply = "Run the tests:\n\n```bash\npython -m pytest -q\n```"
    assert events == [
        {"type": "message", "role": "assistant", "text": reply},
        {"type": "usage", "input_tokens": 2500, "output_tokens": 89, "cost_usd": 0.0071},
        {"type": "denied", "tool": "shell", "command": "python -m pytest -q",
         "text": "aider --yes-always does not run the shell commands a model proposes"},
        {"type": "result", "output": {"text": reply}, "text": reply},
    ]


def test_no_reply_at_all_fails_the_attempt() -> None:
    tr = Translator()
    events = tr.feed("Aider v0.86.2") + tr.finish(0)
    assert events == [{"type": "failure", "kind": "agent", "text": "aider printed no reply (no Tokens: line)"}]


def test_an_aider_that_exits_non_zero_is_an_agent_failure() -> None:
    tr = Translator()
    events = tr.feed("aider: error: unrecognized arguments: --bogus") + tr.finish(2)
    assert events[-1] == {"type": "failure", "kind": "agent", "text": "aider exited with code 2"}


def test_the_built_in_aider_command_skips_the_start_up_checks_and_does_not_wrap() -> None:
    aider = BUILTIN["aider"]
    assert aider.command[1:] == ("--message-file", "{prompt_file}", "--yes-always", "--no-auto-commits",
                                 "--no-stream", "--no-pretty", "--no-check-update", "--no-analytics",
                                 "--no-show-release-notes", "--no-gitignore", "--no-show-model-warnings")
    assert aider.env["COLUMNS"] == "1000"  # rich wraps at 80 columns in a pipe, even with --no-pretty


def fake_aider(bin_dir: Path, capture: str, exit_code: int = 0) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "aider"
    script.write_text(f'#!/bin/sh\ncat "{CAPTURES / capture}"\nexit {exit_code}\n')
    script.chmod(0o755)


def run_runner(tmp_path: Path, capture: str, exit_code: int = 0) -> tuple[subprocess.CompletedProcess[str],
                                                                          list[dict[str, Any]], agent.Collected]:
    fake_aider(tmp_path / "bin", capture, exit_code)
    p = build_pipeline("p", {"prompt": "fix add()", "roles": {"dev": {"harness": "aider"}}},
                       {"dev": {"agent": "dev"}}, Config())
    ws = tmp_path / "ws"
    ws.mkdir()
    launch = agent.start(Config(), agent.context(p, p.jobs["dev"], 1, ws, {}), tmp_path)
    env = {**os.environ, **launch.env, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(launch.argv, cwd=ws, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, timeout=60)
    events = [json.loads(line) for line in (ws / ".clowder" / "dev" / "actions.jsonl").read_text().splitlines()]
    return proc, events, agent.collect(ws, "dev")


def test_an_api_failure_fails_the_attempt_although_aider_exits_0(tmp_path: Path) -> None:
    proc, events, got = run_runner(tmp_path, "aider-401.txt")
    assert proc.returncode == 1
    assert "[failure]" in proc.stdout and "litellm.AuthenticationError" in proc.stdout
    assert events[-1]["type"] == "failure" and events[-1]["kind"] == "config"
    assert (got.usage, got.problem, got.output) == (None, "", False)  # no output.json made of the error text
    assert got.failure_kind == "config" and "litellm.AuthenticationError" in got.failure_text


def test_a_successful_run_still_exits_0_with_its_usage(tmp_path: Path) -> None:
    proc, events, got = run_runner(tmp_path, "aider-ok2.txt")
    assert proc.returncode == 0, proc.stdout
    assert got == agent.Collected(Usage(2500, 89, 0.0058), "", True)
    assert not of_type(events, "failure")


def test_the_runner_keeps_a_non_zero_exit_code_of_aider(tmp_path: Path) -> None:
    proc, events, _ = run_runner(tmp_path, "aider-ok2.txt", exit_code=3)
    assert proc.returncode == 3
    assert events[-1]["type"] == "failure" and events[-1]["kind"] == "agent"


def test_the_adapter_module_runs_without_clowders_heavy_imports() -> None:
    code = "import sys, clowder.harness.adapters.aider; print(sorted(m for m in ('click', 'git') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_aiders_git_library_reads_a_workspace_that_starts_from_an_upstream(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    # aider opens the workspace with GitPython's GitDB (aider/repo.py), whose gitdb resolves a relative
    # objects/info/alternates entry against the process's cwd: the upstream's commit was "BadObject".
    make_pipeline("p", {"setup": 'command = "echo x > calc.py"\n', "dev": 'command = "true"\nneeds = ["setup"]\n'})
    assert cli("run", "p").exit_code == 0
    ws = root.pipeline("p").workspace("dev")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import sys, git; r = git.Repo(sys.argv[1], odbt=git.GitDB); "
            "print(sorted(b.path for b in r.head.commit.tree.traverse()))")
    proc = subprocess.run([sys.executable, "-c", code, str(ws)], cwd=elsewhere, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "'calc.py'" in proc.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True, check=True)
    assert status.stderr == ""  # git reads the store once, without complaint


def test_the_file_a_question_was_about_is_not_the_agents_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "Add file to the chat?" goes to aider's chat history only; the file it is about is printed (after a
    # blank line) before the reply. A reply's own edit block names its file too, followed by a fence.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    tr = Translator()
    lines = ["Repo-map: using 4096 tokens, auto refresh", "", "", "calc.py", "The fix:", "", "calc.py",
             "```python", "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE", "```", "", "Tokens: 2.5k sent, 89 received."]
    events = [e for line in lines for e in tr.feed(line)] + tr.finish(0)
    assert events[0]["text"] == "The fix:\n\ncalc.py\n```python\n<<<<<<< SEARCH\n=======\n>>>>>>> REPLACE\n```"


def test_aiders_own_files_are_kept_out_of_the_attempts_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".git" / "info").mkdir(exist_ok=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("# git ls-files --others --exclude-from=.git/info/exclude\n")
    monkeypatch.chdir(tmp_path)
    Translator().prepare()
    Translator().prepare()  # the next attempt: once is enough
    (tmp_path / ".aider.chat.history.md").write_text("chat")
    (tmp_path / ".aider.tags.cache.v4").mkdir()
    (tmp_path / ".aider.tags.cache.v4" / "cache.db").write_text("db")
    (tmp_path / "calc.py").write_text("x")
    untracked = subprocess.run(["git", "status", "--porcelain", "-uall"], capture_output=True, text=True, check=True)
    assert untracked.stdout == "?? calc.py\n"
    exclude = (tmp_path / ".git" / "info" / "exclude").read_text().splitlines()
    assert exclude[0].startswith("# git ls-files") and exclude.count(".aider*") == 1
