"""The flags Clowder adds to the real Claude Code's argv (clowder/harness/config.py FLAGS): the
job's remaining budget as --max-budget-usd, its output_schema as --json-schema. Each runs
through Clowder against the fake Messages API, like the rest of the Claude suite."""

from __future__ import annotations

import json

import pytest

from clowder.state import JobState
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline

pytest.importorskip("tests.agents.fake_anthropic", reason="needs the Claude suite's fake Messages API")
from tests.agents.fake_anthropic import ToolUse, reply, serve
from tests.agents.test_claude import CALL, Scenario


def scenario(root: Root, make_pipeline: MakePipeline, cli: Invoke, job_keys: str) -> Scenario:
    """The Claude suite's scenario, its one job with `job_keys` added."""
    def make(name: str, jobs: dict[str, str], spec: str) -> object:
        return make_pipeline(name, {job: text + job_keys for job, text in jobs.items()}, spec=spec)

    return Scenario(root, make, cli)


def test_the_jobs_budget_stops_claude_inside_the_attempt(root: Root, make_pipeline: MakePipeline,
                                                         cli: Invoke) -> None:
    s = scenario(root, make_pipeline, cli, "max_cost_usd = 0.001\n")
    with serve([reply("I'll write calc.py.", s.write("calc.py", "x = 1\n")), reply("Done.")]) as server:
        assert s.run(server.url) == 1
    status = s.status()
    assert status.state is JobState.FAILED and len(status.attempts) == 1
    assert s.of_type("failure") == [{"type": "failure", "kind": "agent", "text": "Reached maximum budget ($0.001)"}]
    assert status.attempts[0].usage is not None and status.attempts[0].usage.cost_usd == CALL.cost_usd
    assert not (s.workspace / "calc.py").exists()  # stopped before its second call wrote it


def test_the_output_schema_reaches_claude_and_its_structured_output_is_checked(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    schema = 'output_schema = { type = "object", required = ["summary"] }\n'
    s = scenario(root, make_pipeline, cli, schema)
    with serve([reply(ToolUse("StructuredOutput", {"summary": "calc.py with add()"})), reply("ok")]) as server:
        assert s.run(server.url) == 0
    assert s.status().state is JobState.SUCCEEDED
    assert s.output() == {"summary": "calc.py with add()"}
    raw = [json.loads(line) for line in (s.workspace / ".clowder" / "dev" / "raw.jsonl").read_text().splitlines()]
    assert [e["structured_output"] for e in raw if e.get("type") == "result"] == [{"summary": "calc.py with add()"}]
