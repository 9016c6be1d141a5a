"""The agent harness: prompts composed from context, the action log and its output, the
scripted agent, and the adapters for real agent CLIs replayed through fake executables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clowder.errors import ClowderError
from clowder.harness import agent, prompt
from clowder.harness.actions import output_from_text, read_log
from clowder.harness.config import BUILTIN, argv, harness_name, resolve
from clowder.spec import Config, Harness, JobSpec, Pipeline
from clowder.state import (
    Attempt,
    JobState,
    JobStatus,
    PipelineState,
    Usage,
    job_status_to_toml,
    read_job_status,
    read_pipeline_status,
)
from clowder.tree import Root
from clowder.validate import build_pipeline
from clowder.views import jsonout, reader
from tests.conftest import EXAMPLES, Invoke, MakePipeline, wait_for
from tests.test_driver import daemon

FIXTURES = Path(__file__).parent / "fixtures"
PROMPT = "Write calc.py with add(a, b).\n\nKeep it *small* — and {braces} stay as they are."
ROLES = {
    "planner": {"instructions": "Write a plan."},
    "developer": {"instructions": "Implement the plan.", "harness": "claude"},
    "tester": {"instructions": "Run the tests."},
}


def agent_pipeline(max_cost: float | None = None, **extra_jobs: dict[str, Any]) -> Pipeline:
    spec: dict[str, Any] = {"prompt": PROMPT, "roles": ROLES, "stages": ["plan", "dev", "test"]}
    if max_cost is not None:
        spec["max_cost_usd"] = max_cost
    jobs: dict[str, dict[str, Any]] = {
        "plan": {"stage": "plan", "agent": "planner"},
        "dev": {"stage": "dev", "agent": "developer", "max_regressions": 0},
        "test": {"stage": "test", "agent": "tester", "max_regressions": 2, "outputs": ["report.txt"]},
        **extra_jobs,
    }
    return build_pipeline("p", spec, jobs, Config())


def workspace_with(tmp_path: Path, outputs: dict[str, Any]) -> Path:
    ws = tmp_path / "ws"
    for job, output in outputs.items():
        (ws / ".clowder" / job).mkdir(parents=True)
        (ws / ".clowder" / job / "output.json").write_text(json.dumps(output))
    ws.mkdir(exist_ok=True)
    return ws


# -- prompt composition -------------------------------------------------------------------------

def test_the_plans_output_reaches_the_dev_prompt_after_the_prompt_and_the_instructions(tmp_path: Path) -> None:
    p = agent_pipeline()
    ws = workspace_with(tmp_path, {"plan": {"plan": ["write calc.py", "test add()"]}})
    text = prompt.compose(prompt.Context(p, p.jobs["dev"], 1, ws))
    assert f"# Task\n\n{PROMPT}\n\n# Your role: developer\n\nImplement the plan." in text
    assert '## plan (you start from its work)\n\n```json\n{"plan": ["write calc.py", "test add()"]}\n```' in text
    assert "# Asking for a fix-up" not in text  # max_regressions = 0
    assert text.index("# Task") < text.index("# Your role") < text.index("# Results of the jobs before you")


def test_the_devs_output_reaches_the_tester_with_the_plans_and_how_to_spawn(tmp_path: Path) -> None:
    p = agent_pipeline()
    ws = workspace_with(tmp_path, {"plan": {"plan": ["x"]}, "dev": {"summary": "calc.py written"},
                                   "test": {"stale": "own output of an earlier attempt"}})
    text = prompt.compose(prompt.Context(p, p.jobs["test"], 2, ws, spawned=1))
    assert text.index("## plan (an earlier job)") < text.index("## dev (you start from its work)")
    assert '{"summary": "calc.py written"}' in text
    assert "stale" not in text
    assert 'clowder spawn JOB --reason "what is wrong" [--context-file FILE]' in text
    assert "usually one before you: plan, dev." in text
    assert "You may ask for 1 more fix-up(s) (max_regressions = 2, 1 used)." in text
    assert "the files this job must produce (`report.txt`)" in text


def test_a_spawner_that_used_all_its_fixups_is_told_so(tmp_path: Path) -> None:
    p = agent_pipeline()
    text = prompt.compose(prompt.Context(p, p.jobs["test"], 3, workspace_with(tmp_path, {}), spawned=2))
    assert "You have asked for all 2 fix-up(s) this job may (max_regressions)" in text


def test_a_fixups_prompt_carries_the_regression_context_and_the_same_pipeline_prompt(tmp_path: Path) -> None:
    context = {"reason": "test_add fails: add(2, 2) is 0", "spawner": "test", "spawner_attempt": 1, "request": "r1",
               "context": "E   assert 0 == 4\n```not a fence```", "log_tail": ["FAILED test_calc.py::test_add"]}
    p = agent_pipeline(**{"dev.r1": {"agent": "developer", "needs": [], "parent": "test", "regression_of": "dev",
                                     "regression_context": context}})
    ws = workspace_with(tmp_path, {"plan": {"plan": ["x"]}, "dev": {"summary": "s"}, "test": {"verdict": "fail"}})
    fixup = prompt.compose(prompt.Context(p, p.jobs["dev.r1"], 1, ws))
    first = prompt.compose(prompt.Context(p, p.jobs["dev"], 1, ws))
    assert fixup.split("\n\n# Your role")[0].split("\n\n", 1)[1] == f"# Task\n\n{PROMPT}"
    assert first.split("\n\n# Your role")[0].split("\n\n", 1)[1] == f"# Task\n\n{PROMPT}"
    assert "# Regression context\n\nThis job is a fix-up of `dev`: `test` (attempt 1) found a problem" in fixup
    assert "Reason: test_add fails: add(2, 2) is 0" in fixup
    assert "request" not in fixup  # its id is bookkeeping
    assert "Context:\n\n````\nE   assert 0 == 4\n```not a fence```\n````" in fixup
    assert "Log tail:\n\n```\nFAILED test_calc.py::test_add\n```" in fixup
    assert '{"verdict": "fail"}' in fixup  # the spawner's findings
    assert "# Regression context" not in first


def test_regression_json_in_the_workspace_is_read_under_the_specs_context(tmp_path: Path) -> None:
    p = agent_pipeline(**{"dev.r1": {"agent": "developer", "needs": [], "regression_of": "dev",
                                     "regression_context": {"reason": "from the spec"}}})
    ws = workspace_with(tmp_path, {})
    (ws / ".clowder" / "dev.r1").mkdir(parents=True)
    (ws / ".clowder" / "dev.r1" / "regression.json").write_text(json.dumps(
        {"parent": "test", "regression_of": "dev", "reason": "from the file", "spawner": "test",
         "context": "details from the file"}))
    text = prompt.compose(prompt.Context(p, p.jobs["dev.r1"], 1, ws))
    assert "Reason: from the spec" in text and "details from the file" in text and "`test`" in text
    assert "- parent:" not in text and "- regression_of:" not in text


def test_the_prompt_states_the_budget_when_one_is_set(tmp_path: Path) -> None:
    p = agent_pipeline(max_cost=5.0)
    text = prompt.compose(prompt.Context(p, p.jobs["test"], 1, workspace_with(tmp_path, {}), pipeline_spent_usd=1.25))
    assert "Budget: the pipeline $1.2500 of its $5.00." in text


# -- harness configuration ----------------------------------------------------------------------

def test_the_harness_is_the_jobs_else_the_roles_else_the_default_else_scripted() -> None:
    p = agent_pipeline(lint={"agent": "tester", "harness": "codex"})
    assert harness_name(Config(), p.spec, p.jobs["lint"]) == "codex"
    assert harness_name(Config(), p.spec, p.jobs["dev"]) == "claude"
    assert harness_name(Config(default_harness="aider"), p.spec, p.jobs["test"]) == "aider"
    assert harness_name(Config(), p.spec, p.jobs["test"]) == "scripted"
    mine = Harness("claude", ("my-claude", "{prompt_file}"), {}, "claude")
    assert resolve(Config(harnesses={"claude": mine}), p.spec, p.jobs["dev"]) is mine
    with pytest.raises(ClowderError, match="job dev: unknown harness 'nope'"):
        resolve(Config(), p.spec, JobSpec("dev", agent="developer", harness="nope"))


def test_a_command_template_expands_placeholders_and_adapted_clis_run_under_the_adapter() -> None:
    values = {"prompt_file": "/w/.clowder/dev/prompt.md", "python": "/py", "job": "dev", "prompt": "it's"}
    assert argv(BUILTIN["scripted"], values) == ("/py", "-m", "clowder.harness.scripted")
    assert argv(BUILTIN["aider"], values)[:7] == ("/py", "-m", "clowder.harness.adapters", "aider", "--", "aider",
                                                  "--message-file")
    assert argv(BUILTIN["aider"], values)[7] == "/w/.clowder/dev/prompt.md"
    shell = Harness("sh", "my-agent --job {job} --text {prompt} {unknown}", {}, "actions")
    assert argv(shell, values) == ("/bin/sh", "-c", "my-agent --job dev --text 'it'\"'\"'s' {unknown}")
    with pytest.raises(ClowderError, match=r"too long to pass as \{prompt\}"):
        argv(shell, {**values, "prompt": "x" * 200_000})


# -- the action log and the output --------------------------------------------------------------

def write_log(ws: Path, job: str, lines: list[str]) -> Path:
    meta = ws / ".clowder" / job
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "actions.jsonl").write_text("".join(line + "\n" for line in lines))
    return meta


def test_usage_is_summed_and_the_last_result_becomes_output_json(tmp_path: Path) -> None:
    meta = write_log(tmp_path, "dev", [
        '{"type": "message", "text": "hi"}', "",
        '{"type": "usage", "input_tokens": 100, "output_tokens": 20, "cost_usd": 0.01}',
        '{"type": "result", "output": {"draft": 1}}',
        '{"type": "thinking", "anything": ["goes"]}',
        '{"type": "usage", "input_tokens": 50, "cost_usd": 0.02}',
        '{"type": "result", "output": {"summary": "done"}}',
    ])
    got = agent.collect(tmp_path, "dev")
    assert got == agent.Collected(Usage(150, 20, pytest.approx(0.03)), "", True)  # type: ignore[arg-type]
    assert json.loads((meta / "output.json").read_text()) == {"summary": "done"}


@pytest.mark.parametrize(("line", "problem"), [
    ("{not json", "actions.jsonl line 2: not JSON (Expecting property name enclosed in double quotes: line 1 "
                  "column 2 (char 1))"),
    ('["a list"]', "actions.jsonl line 2: expected a JSON object, got list"),
    ('{"text": "no type"}', 'actions.jsonl line 2: no "type" string'),
    ('{"type": "usage", "cost_usd": -1}', 'actions.jsonl line 2: usage: "cost_usd" must be a non-negative number'),
    ('{"type": "usage", "input_tokens": "12"}',
     'actions.jsonl line 2: usage: "input_tokens" must be a non-negative integer'),
    ('{"type": "result"}', 'actions.jsonl line 2: result: no "output"'),
    ('{"type": "command", "command": 3}', 'actions.jsonl line 2: command: "command" must be a string or a list '
                                          "of strings"),
])
def test_a_malformed_line_is_a_problem_that_names_the_line(tmp_path: Path, line: str, problem: str) -> None:
    write_log(tmp_path, "dev", ['{"type": "usage", "cost_usd": 0.5}', line])
    got = agent.collect(tmp_path, "dev")
    assert got.problem == problem
    assert got.usage == Usage(0, 0, 0.5)  # the valid lines still count


def test_an_output_json_the_agent_wrote_itself_wins_and_must_be_json(tmp_path: Path) -> None:
    meta = write_log(tmp_path, "dev", ['{"type": "result", "output": {"from": "log"}}'])
    (meta / "output.json").write_text('{"from": "agent"}')
    assert agent.collect(tmp_path, "dev").problem == ""
    assert json.loads((meta / "output.json").read_text()) == {"from": "agent"}
    (meta / "output.json").write_text("{oops")
    assert agent.collect(tmp_path, "dev").problem.startswith("output.json: not JSON (")


def test_output_from_text_never_pairs_a_code_block_with_the_json_block_after_it() -> None:
    # An agent that shows code first and then its answer: each fence closes its own block.
    text = "I wrote:\n```python\ndef add(a, b):\n    return a + b\n```\nResult:\n```json\n{\"ok\": true}\n```\n"
    assert output_from_text(text) == {"ok": True}
    assert output_from_text("```python\nx = [1]\n```\n") == {"text": "```python\nx = [1]\n```\n"}


def test_output_from_text_takes_json_or_the_last_json_block_or_the_text() -> None:
    assert output_from_text('{"a": 1}') == {"a": 1}
    assert output_from_text('first\n```json\n{"a": 1}\n```\nthen\n```json\n{"a": 2}\n```\n') == {"a": 2}
    assert output_from_text("just words") == {"text": "just words"}
    assert output_from_text("```json\n{broken\n```") == {"text": "```json\n{broken\n```"}


def test_start_writes_prompt_and_script_clears_stale_logs_and_sets_the_environment(tmp_path: Path) -> None:
    script = [{"message": "hello"}]
    p = build_pipeline("p", {"prompt": PROMPT, "roles": {"tester": {"instructions": "Test.", "script": script}}},
                       {"test": {"agent": "tester"}}, Config())
    ws = workspace_with(tmp_path, {})
    meta = write_log(ws, "test", ['{"type": "message", "text": "attempt 1"}'])
    (meta / "output.json").write_text("{}")
    (meta / "raw.jsonl").write_text("{}")
    statuses = {"test": JobStatus("test", JobState.RUNNING, 2, attempts=(
        Attempt(1, JobState.FAILED, usage=Usage(1, 1, 0.5)), Attempt(2, JobState.RUNNING)), spawned=("dev.r1",))}
    ctx = agent.context(p, p.jobs["test"], 2, ws, statuses)
    assert (ctx.spawned, ctx.job_spent_usd, ctx.pipeline_spent_usd) == (1, 0.5, 0.5)
    launch = agent.start(Config(), ctx, tmp_path)
    assert launch.argv == (sys.executable, "-m", "clowder.harness.scripted")
    assert sorted(f.name for f in meta.iterdir()) == ["prompt.md", "script.json"]
    assert json.loads((meta / "script.json").read_text()) == script
    assert (meta / "prompt.md").read_text() == prompt.compose(ctx)
    assert launch.env["CLOWDER_PROMPT_FILE"] == str((meta / "prompt.md").resolve())
    assert launch.env["CLOWDER_ACTIONS_FILE"] == str((meta / "actions.jsonl").resolve())
    assert launch.env["CLOWDER_OUTPUT_FILE"] == str((meta / "output.json").resolve())
    assert launch.env["CLOWDER_SCRIPT_FILE"] == str((meta / "script.json").resolve())
    assert str(Path(sys.executable).parent) in launch.env["PATH"].split(os.pathsep)
    assert "CLOWDER_REGRESSION_OF" not in launch.env


# -- the scripted agent -------------------------------------------------------------------------

def run_scripted(ws: Path, steps: list[dict[str, Any]], attempt: int = 1, regression: bool = False,
                 prompt_text: str = "the prompt") -> tuple[int, list[dict[str, Any]], str]:
    meta = ws / ".clowder" / "dev"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "prompt.md").write_text(prompt_text)
    (meta / "script.json").write_text(json.dumps(steps))
    (meta / "actions.jsonl").unlink(missing_ok=True)  # as `agent.start` does before each attempt
    env = {**os.environ, "CLOWDER_PROMPT_FILE": str(meta / "prompt.md"), "CLOWDER_ACTIONS_FILE":
           str(meta / "actions.jsonl"), "CLOWDER_SCRIPT_FILE": str(meta / "script.json"), "CLOWDER_JOB": "dev",
           "CLOWDER_ATTEMPT": str(attempt)}
    if regression:
        env["CLOWDER_REGRESSION_OF"] = "dev"
    proc = subprocess.run([sys.executable, "-m", "clowder.harness.scripted"], cwd=ws, env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, check=False)
    events = [json.loads(line) for line in (meta / "actions.jsonl").read_text().splitlines()]
    for e in events:
        e.pop("ts")
    return proc.returncode, events, proc.stdout + proc.stderr


BUGGY = [
    {"write": "calc.py", "content": "def add(a, b):\n    return a - b\n", "if": {"regression": False}},
    {"write": "calc.py", "content": "def add(a, b):\n    return a + b\n", "if": {"regression": True}},
    {"run": ["python", "-c", "from calc import add; assert add(2, 2) == 4"], "check": False},
    {"message": "add() is wrong", "if": {"failed": True}},
    {"output": {"verdict": "fail"}, "if": {"failed": True}},
    {"exit": 1, "if": {"failed": True}},
    {"usage": {"input_tokens": 10, "output_tokens": 2, "cost_usd": 0.001}},
    {"output": {"verdict": "pass"}},
]


def test_the_scripted_agent_follows_its_steps_and_logs_each_action(tmp_path: Path) -> None:
    code, events, _ = run_scripted(tmp_path, BUGGY)
    assert code == 1
    assert [e["type"] for e in events] == ["message", "file_changed", "command", "message", "result"]
    assert events[1] == {"type": "file_changed", "path": "calc.py", "change": "add"}
    assert events[2]["exit_code"] == 1 and "AssertionError" in events[2]["output"]
    assert events[-1] == {"type": "result", "output": {"verdict": "fail"}}
    code, events, _ = run_scripted(tmp_path, BUGGY, attempt=2, regression=True)
    assert code == 0
    assert [e["type"] for e in events] == ["message", "file_changed", "command", "usage", "result"]
    assert events[1]["change"] == "update" and events[2]["exit_code"] == 0
    assert events[-1]["output"] == {"verdict": "pass"}


def test_the_scripted_agent_conditions_on_attempt_files_and_prompt(tmp_path: Path) -> None:
    steps = [{"message": "first", "if": {"attempt": 1}}, {"message": "second", "if": {"attempt": 2}},
             {"message": "has calc", "if": {"exists": "calc.py"}}, {"message": "no calc", "if": {"missing": "calc.py"}},
             {"message": "planned", "if": {"prompt_contains": "PLAN-42"}}]
    _, events, _ = run_scripted(tmp_path, steps, attempt=2, prompt_text="see PLAN-42")
    assert [e["text"] for e in events[1:]] == ["second", "no calc", "planned"]


@pytest.mark.parametrize(("steps", "message"), [
    ([{"write": "../outside.txt", "content": "x"}], "step 1: write '../outside.txt': only paths inside the workspace"),
    ([{"message": "a", "exit": 1}], "step 1: needs exactly one of message, write, run, spawn, output, usage, exit; "
                                    "it has message, exit"),
    ([{"message": "a", "if": {"weather": "fine"}}], "step 1: unknown condition 'weather'"),
])
def test_a_bad_step_stops_the_scripted_agent_with_a_clear_message(tmp_path: Path, steps: list[dict[str, Any]],
                                                                 message: str) -> None:
    code, _, out = run_scripted(tmp_path / "ws", steps)
    assert code == 2 and message in out
    assert not (tmp_path / "outside.txt").exists()


def test_the_scripted_agent_without_a_script_fails_and_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "p.md").write_text("x")
    env = {**os.environ, "CLOWDER_PROMPT_FILE": str(tmp_path / "p.md"),
           "CLOWDER_ACTIONS_FILE": str(tmp_path / "a.jsonl")}
    env.pop("CLOWDER_SCRIPT_FILE", None)
    proc = subprocess.run([sys.executable, "-m", "clowder.harness.scripted"], cwd=tmp_path, env=env, text=True,
                          capture_output=True, check=False)
    assert proc.returncode == 2
    assert "this job has no script: the built-in `scripted` harness (no model)" in proc.stderr


def test_the_scripted_agent_imports_neither_click_nor_gitpython() -> None:
    code = ("import sys, clowder.harness.scripted\n"
            "print(sorted(m for m in ('click', 'git', 'rich') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


# -- adapters, replayed through fake CLIs ---------------------------------------------------------

def fake_cli(bin_dir: Path, name: str, fixture: str, exit_code: int = 0) -> None:
    """An executable `name` that saves its stdin and argv, then prints a recorded stream with
    /WORKSPACE replaced by its working directory (the real CLIs print absolute paths)."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\ncat > "$FAKE_CLI_STDIN"\necho "$@" > "$FAKE_CLI_ARGS"\n'
                      f'sed "s#/WORKSPACE#$PWD#g" "{FIXTURES / fixture}"\nexit {exit_code}\n')
    script.chmod(0o755)


def run_adapted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, fixture: str,
                exit_code: int = 0) -> tuple[int, list[dict[str, Any]], agent.Collected, Path]:
    p = build_pipeline("p", {"prompt": PROMPT, "roles": {"developer": {"harness": name}}},
                       {"dev": {"agent": "developer"}}, Config())
    fake_cli(tmp_path / "bin", name, fixture, exit_code)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLI_STDIN", str(tmp_path / "stdin"))
    monkeypatch.setenv("FAKE_CLI_ARGS", str(tmp_path / "args"))
    ws = workspace_with(tmp_path, {})
    launch = agent.start(Config(), agent.context(p, p.jobs["dev"], 1, ws, {}), tmp_path)
    proc = subprocess.run(launch.argv, cwd=ws, env={**os.environ, **launch.env}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    meta = ws / ".clowder" / "dev"
    events = [json.loads(line) for line in (meta / "actions.jsonl").read_text().splitlines()]
    for e in events:
        e.pop("ts")
    return proc.returncode, events, agent.collect(ws, "dev"), meta


def test_claude_stream_json_becomes_actions_usage_and_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, events, got, meta = run_adapted(tmp_path, monkeypatch, "claude", "claude_stream.jsonl")
    assert code == 0
    assert events == [
        {"type": "message", "role": "assistant", "text": "I'll follow the plan: write calc.py with add() and a test "
                                                         "for it."},
        {"type": "file_changed", "path": "calc.py", "change": "update", "tool": "Write"},
        {"type": "command", "command": "python -m pytest -q", "output": ".\n1 passed in 0.01s", "is_error": False},
        {"type": "message", "role": "assistant", "text": "Done: calc.py has add(), and its test passes.\n\n```json\n"
                                                         '{"summary": "calc.py with add()", "tests": "1 passed"}\n```'},
        {"type": "usage", "input_tokens": 12 + 2350 + 38928, "output_tokens": 132, "cost_usd": 0.0421},
        {"type": "result", "output": {"summary": "calc.py with add()", "tests": "1 passed"},
         "text": events[-1]["text"]},
    ]
    assert got == agent.Collected(Usage(41290, 132, 0.0421), "", True)
    assert json.loads((meta / "output.json").read_text()) == {"summary": "calc.py with add()", "tests": "1 passed"}
    assert (meta / "raw.jsonl").read_text() == (FIXTURES / "claude_stream.jsonl").read_text().replace(
        "/WORKSPACE", str((tmp_path / "ws").resolve()))
    assert (tmp_path / "stdin").read_text() == (meta / "prompt.md").read_text()  # the prompt came on stdin
    assert (tmp_path / "args").read_text().split() == ["-p", "--output-format", "stream-json", "--verbose",
                                                       "--permission-mode", "acceptEdits", "--allowedTools",
                                                       "Bash,Read,Edit,Write,Glob,Grep"]


def test_codex_exec_json_becomes_actions_usage_and_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, events, got, meta = run_adapted(tmp_path, monkeypatch, "codex", "codex_stream.jsonl")
    assert code == 0
    assert events == [
        {"type": "command", "command": "cat .clowder/plan/output.json", "exit_code": 0,
         "output": '{"plan": ["write calc.py with add()", "test it"]}\n'},
        {"type": "file_changed", "path": "calc.py", "change": "add"},
        {"type": "file_changed", "path": "test_calc.py", "change": "add"},
        {"type": "command", "command": "python -m pytest -q", "exit_code": 0,
         "output": ".\n1 passed in 0.01s\n"},
        {"type": "message", "role": "assistant",
         "text": '{"summary": "calc.py with add() and its test", "tests": "1 passed"}'},
        {"type": "usage", "input_tokens": 24763, "output_tokens": 122, "cached_input_tokens": 24448},
        {"type": "result", "output": {"summary": "calc.py with add() and its test", "tests": "1 passed"},
         "text": '{"summary": "calc.py with add() and its test", "tests": "1 passed"}'},
    ]
    assert got == agent.Collected(Usage(24763, 122, 0.0), "", True)
    assert (meta / "raw.jsonl").is_file()
    assert (tmp_path / "args").read_text().split() == ["exec", "--json", "--sandbox", "workspace-write", "-"]
    assert (tmp_path / "stdin").read_text() == (meta / "prompt.md").read_text()


def test_aider_text_becomes_actions_usage_and_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, events, got, meta = run_adapted(tmp_path, monkeypatch, "aider", "aider_output.txt")
    assert code == 0
    reply = ("The bug is in add(): it subtracts. I'll make it add.\n\ncalc.py\n<<<<<<< SEARCH\ndef add(a, b):\n"
             "    return a - b\n=======\ndef add(a, b):\n    return a + b\n>>>>>>> REPLACE")
    assert events == [
        {"type": "message", "role": "assistant", "text": reply},
        {"type": "usage", "input_tokens": 2500 - 1200, "output_tokens": 89, "cost_usd": 0.01},  # sent - write
        {"type": "file_changed", "path": "calc.py", "change": "update"},
        {"type": "result", "output": {"text": reply}, "text": reply},
    ]
    assert got.usage == Usage(1300, 89, 0.01)
    assert (meta / "raw.txt").read_text() == (FIXTURES / "aider_output.txt").read_text()
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["--message-file", str((meta / "prompt.md").resolve())]
    assert args[2:6] == ["--yes-always", "--no-auto-commits", "--no-stream", "--no-pretty"]  # + test_adapter_aider


def test_an_adapted_clis_exit_code_is_the_attempts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, got, _ = run_adapted(tmp_path, monkeypatch, "codex", "codex_stream.jsonl", exit_code=3)
    assert code == 3 and got.problem == ""


def test_a_missing_cli_exits_127_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = build_pipeline("p", {"prompt": PROMPT}, {"dev": {"agent": "developer", "harness": "claude"}}, Config())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    ws = workspace_with(tmp_path, {})
    launch = agent.start(Config(), agent.context(p, p.jobs["dev"], 1, ws, {}), tmp_path)
    proc = subprocess.run(launch.argv, cwd=ws, env={**os.environ, **launch.env}, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 127
    assert "clowder adapter: cannot run 'claude'" in proc.stderr and "clowder.toml [harnesses]" in proc.stderr


def test_read_log_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    summary = read_log(tmp_path / "none.jsonl")
    assert summary.events == 0 and summary.problem == "" and not summary.has_result


# -- agent jobs run by the scheduler ------------------------------------------------------------

def attempts_of(root: Root, pipeline: str, job: str) -> list[Attempt]:
    return list(read_job_status(root.pipeline(pipeline).job_status_file(job), job).attempts)


def test_a_malformed_action_log_fails_the_attempt_with_an_error_context(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    root.config_file.write_text('[harnesses.broken]\ncommand = ["sh", "-c", '
                                '"echo \'{\\"type\\": \\"usage\\", \\"cost_usd\\": 0.5}\' > $CLOWDER_ACTIONS_FILE; '
                                'echo \'{oops\' >> $CLOWDER_ACTIONS_FILE"]\n')
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "broken"\n', "b": 'command = "true"\nneeds = ["a"]\n'})
    result = cli("run", "p")
    assert result.exit_code == 1
    status = read_job_status(root.pipeline("p").job_status_file("a"), "a")
    reason = ("actions.jsonl line 2: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
              "(char 1))")
    assert status.state is JobState.FAILED and status.message == f"attempt 1 failed: {reason}"
    assert status.attempts[0].exit_code == 0 and status.attempts[0].usage == Usage(0, 0, 0.5)
    error = json.loads((root.pipeline("p").workspace("a") / ".clowder" / "a" / "error.json").read_text())
    assert error["reason"] == reason
    assert [x.path for x in status.attempts[0].artifacts if x.kind == "error_context"] == [".clowder/a/error.json"]
    assert read_job_status(root.pipeline("p").job_status_file("b"), "b").state is JobState.SKIPPED


def test_a_budget_stops_a_retry_loop(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": (
        'agent = "dev"\nretries = 10\nbackoff = { initial = 0, factor = 1 }\nmax_cost_usd = 1.0\n'
        '[[script]]\nusage = { input_tokens = 1000, output_tokens = 100, cost_usd = 0.4 }\n'
        '[[script]]\nexit = 1\n')})
    assert cli("run", "p").exit_code == 1
    status = read_job_status(root.pipeline("p").job_status_file("a"), "a")
    assert [a.usage for a in status.attempts] == [Usage(1000, 100, 0.4)] * 3
    assert status.state is JobState.FAILED
    assert status.message == ("budget spent: a has cost $1.2000 of its max_cost_usd $1.00; no further attempts or "
                              "fix-ups (raise max_cost_usd to go on)")


def test_success_is_the_exit_code_and_the_declared_outputs_never_the_agents_claim(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    claims = '[[script]]\noutput = { verdict = "pass", all_tests = "green" }\n'
    make_pipeline("p", {
        "exits_1": f'agent = "dev"\n{claims}[[script]]\nexit = 1\n',
        "no_output": f'agent = "dev"\noutputs = ["report.txt"]\n{claims}',
        "humble": 'agent = "dev"\n[[script]]\noutput = { verdict = "fail" }\n',
    })
    assert cli("run", "p").exit_code == 1
    states = {j: read_job_status(root.pipeline("p").job_status_file(j), j) for j in ("exits_1", "no_output", "humble")}
    assert states["exits_1"].message == "attempt 1 failed: exit code 1"
    assert states["no_output"].message == "attempt 1 failed: missing declared output(s): report.txt"
    assert states["humble"].state is JobState.SUCCEEDED  # its verdict is data for the jobs after it


def test_the_agent_dev_example_runs_end_to_end_with_the_scripted_agent(root: Root, cli: Invoke) -> None:
    shutil.copy(EXAMPLES / "templates" / "agent-dev.toml", root.templates_dir)
    prompt_text = "Write calc.py with add(a, b), and a test that proves it."
    assert cli("new", "agent-dev", "--prompt", prompt_text, "--name", "calc").exit_code == 0
    spec_before = root.pipeline("calc").spec_file.read_bytes()
    paths = root.pipeline("calc")
    with daemon(root):  # dev waits at its approval gate until someone approves it
        wait_for(lambda: read_job_status(paths.job_status_file("dev"), "dev").state is JobState.APPROVAL,
                 what="dev to wait for approval")
        assert cli("approve", "calc", "dev").exit_code == 0
        wait_for(lambda: read_pipeline_status(paths.status_file).state.terminal, what="the pipeline to end")
    assert read_pipeline_status(paths.status_file).state is PipelineState.SUCCEEDED
    states = {j: read_job_status(paths.job_status_file(j), j) for j in ("plan", "dev", "test", "dev.r1", "verify")}
    assert {j: s.state for j, s in states.items()} == dict.fromkeys(states, JobState.SUCCEEDED)
    assert [(a.number, a.state, a.trigger) for a in states["test"].attempts] == [
        (1, JobState.FAILED, "start"), (2, JobState.SUCCEEDED, "regression")]
    assert states["test"].spawned == ("dev.r1",)

    def prompt_of(job: str) -> str:
        return (paths.workspace(job) / ".clowder" / job / "prompt.md").read_text()

    task = f"# Task\n\n{prompt_text}\n\n# Your role:"
    assert all(task in prompt_of(j) for j in states)
    assert '"write calc.py with add(a, b)"' in prompt_of("dev")
    assert '"summary": "calc.py with add(a, b), and test_calc.py"' in prompt_of("test")
    fixup = prompt_of("dev.r1")
    assert "# Regression context" in fixup and "Reason: test_add fails: add(2, 2) does not return 4" in fixup
    assert "AssertionError: 0 != 4" in fixup
    assert '"summary": "fixed add(): it subtracted instead of adding"' in prompt_of("test")  # attempt 2
    assert paths.spec_file.read_bytes() == spec_before
    output = json.loads((paths.workspace("verify") / ".clowder" / "verify" / "output.json").read_text())
    assert output == {"verdict": "pass", "notes": "calc.add adds, and its test passes"}
    kinds = {(x.path, x.kind) for x in states["plan"].attempts[0].artifacts}
    assert (".clowder/plan/output.json", "model_output") in kinds
    assert states["dev.r1"].attempts[0].usage == Usage(2400, 610, 0.0087)
    shown = cli("status", "calc").output.splitlines()
    assert shown[1].split() == ["JOB", "STAGE", "STATE", "ATTEMPT", "DURATION", "COST", "MESSAGE"]
    costs = {line.split()[0]: line.split()[5] for line in shown[2:-1]}
    assert costs == {"plan": "$0.0021", "dev": "$0.0087", "test": "$0.0084", "verify": "$0.0019",
                     "dev.r1": "$0.0087"}
    assert shown[-1] == "spent: $0.0298 (9,520 tokens in, 1,850 out)"


# -- clowder status -------------------------------------------------------------------------------

def test_status_of_one_pipeline_reports_what_its_agents_spent(root: Root, make_pipeline: MakePipeline) -> None:
    d = make_pipeline("p", {"a": 'agent = "dev"\n', "b": 'command = "true"\nneeds = ["a"]\n'})
    (d / "status").mkdir()
    (d / "status" / "a.toml").write_text(job_status_to_toml(JobStatus("a", JobState.SUCCEEDED, 2, attempts=(
        Attempt(1, JobState.FAILED, usage=Usage(1000, 100, 0.25)), Attempt(2, JobState.SUCCEEDED, usage=Usage(
            500, 50, 0.5))))))
    (d / "status" / "b.toml").write_text(job_status_to_toml(JobStatus("b", JobState.SUCCEEDED, 1, attempts=(
        Attempt(1, JobState.SUCCEEDED),))))
    [r] = reader.reports(root, "p")
    assert [(j.name, j.usage) for j in r.jobs] == [("a", Usage(1500, 150, 0.75)), ("b", None)]
    assert r.usage == Usage(1500, 150, 0.75)
    assert jsonout.format_usage(r.usage) == "$0.7500 (1,500 tokens in, 150 out)"
    [data] = jsonout.reports_json([r])
    assert data["usage"] == {"input_tokens": 1500, "output_tokens": 150, "cost_usd": 0.75}
    assert data["jobs"][0]["usage"] == data["usage"] and "usage" not in data["jobs"][1]
