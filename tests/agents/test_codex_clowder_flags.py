"""What Clowder adds to the real Codex CLI's run: the job's output_schema as `--output-schema`
(it reaches the model API as the response format, and the answer is checked against it), and
the price of the tokens Codex reports without a cost, so `max_cost_usd` stops it."""

from __future__ import annotations

import json
from collections.abc import Callable

from clowder.state import JobState, JobStatus, Usage
from clowder.tree import Root
from tests.agents.fake_openai_responses import FakeResponses, answer
from tests.agents.test_codex import SUMMARY, codex_job, output_file  # noqa: F401  (codex_job: the fixture)

JOB = 'agent = "developer"\ntimeout = "60s"\n'
SCHEMA = 'output_schema = { type = "object", required = ["summary", "tests"], properties = { summary = ' \
         '{ type = "string" }, tests = { type = "string" } }, additionalProperties = false }\n'


def test_the_output_schema_reaches_the_api_and_a_matching_answer_succeeds(
    root: Root, codex_job: Callable[..., JobStatus]  # noqa: F811
) -> None:
    with FakeResponses([answer(json.dumps(SUMMARY))]) as api:
        status = codex_job(api.base_url, job=JOB + SCHEMA)
    assert status.state is JobState.SUCCEEDED, status.message
    assert json.loads(output_file(root).read_text()) == SUMMARY
    sent = api.requests[0].body["text"]["format"]
    assert sent["type"] == "json_schema" and sent["schema"]["required"] == ["summary", "tests"]


def test_an_answer_that_does_not_match_fails_the_attempt_naming_the_key(
    root: Root, codex_job: Callable[..., JobStatus]  # noqa: F811
) -> None:
    with FakeResponses([answer(json.dumps({"summary": "calc.py", "tests": 4}))]) as api:
        status = codex_job(api.base_url, job=JOB + SCHEMA, exit_code=1)
    assert status.state is JobState.FAILED
    assert status.message == ("attempt 1 failed: output.json does not match output_schema: at $.tests: "
                              "4 is not of type 'string'")


def test_priced_tokens_make_the_budget_stop_codex(root: Root, codex_job: Callable[..., JobStatus]) -> None:  # noqa: F811
    root.config_file.write_text(root.config_file.read_text() + '[harnesses.codex]\nmodel = "gpt-fake"\n\n'
                                '[prices."gpt-fake"]\ninput = 100.0\noutput = 1000.0\ncache_read = 10.0\n')
    job = JOB + 'retries = 3\nbackoff = { initial = 0, factor = 1 }\nmax_cost_usd = 0.05\n' + SCHEMA
    with FakeResponses([answer("no JSON at all", (1200, 1000, 30))] * 4) as api:
        status = codex_job(api.base_url, job=job, exit_code=1)
    # 200 input at $100/M, 1000 cached at $10/M, 30 output at $1000/M: $0.06, over the $0.05 budget.
    assert [a.usage for a in status.attempts] == [Usage(1200, 30, 0.06)]
    assert status.message == ("budget spent: dev has cost $0.0600 of its max_cost_usd $0.05; no further attempts "
                              "or fix-ups (raise max_cost_usd to go on)")
    assert len(api.requests) == 1
