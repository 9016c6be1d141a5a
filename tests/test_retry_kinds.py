"""Failure kinds end to end: an agent harness (a small script standing in for a CLI) reports a
`failure` event in its action log, and the job's `retry_on` decides whether it is retried."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clowder.harness.actions import read_log
from clowder.state import FailureKind, JobState, read_job_status
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline

# Fails as told by the FAIL_<attempt> variable (`kind:text`) or answers; its action log is what a
# real CLI's adapter would write.
AGENT = """\
import json, os, sys
attempt = os.environ["CLOWDER_ATTEMPT"]
fail = os.environ.get("FAIL_" + attempt)
with open(os.environ["CLOWDER_ACTIONS_FILE"], "a") as log:
    if fail:
        kind, text = fail.split(":", 1)
        log.write(json.dumps({"type": "failure", "kind": kind, "text": text}) + "\\n")
        sys.exit(1)
    log.write(json.dumps({"type": "result", "output": {"attempt": attempt}}) + "\\n")
"""


def agent_harness(root: Root, tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    root.config_file.write_text(f'[harnesses.fake]\ncommand = [{json.dumps(sys.executable)}, '
                                f'{json.dumps(str(script))}]\n')


def test_a_rate_limited_agent_is_retried_and_its_next_attempt_kept(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    agent_harness(root, tmp_path)
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "fake"\nbackoff = { initial = "100ms" }\n'
                             'env = { FAIL_1 = "transient:429 Too Many Requests" }\n'})
    log = tmp_path / "decisions.log"
    assert cli("run", "p", "--log-file", str(log)).exit_code == 0
    status = read_job_status(root.pipeline("p").job_status_file("a"), "a")
    assert status.state is JobState.SUCCEEDED
    first, second = status.attempts
    assert (first.state, first.failure_kind, first.message) == (
        JobState.FAILED, FailureKind.TRANSIENT, "429 Too Many Requests")
    assert (second.trigger, second.failure_kind) == ("retry", None)
    assert any(line.endswith("p/a attempt 1 failed (transient: 429 Too Many Requests); retry 1 of 3 in 100ms")
               for line in log.read_text().splitlines())
    status_file = root.pipeline("p").job_status_file("a").read_text()
    assert 'failure_kind = "transient"' in status_file


def test_a_wrong_key_fails_at_once_though_the_job_has_retries(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    agent_harness(root, tmp_path)
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "fake"\nretries = 2\nbackoff = { initial = "100ms" }\n'
                             'env = { FAIL_1 = "config:401 Incorrect API key" }\n'})
    result = cli("run", "p")
    assert result.exit_code == 1
    status = read_job_status(root.pipeline("p").job_status_file("a"), "a")
    assert (status.state, len(status.attempts)) == (JobState.FAILED, 1)
    assert status.message == ("attempt 1 failed (config: 401 Incorrect API key); "
                              "not retried: retry_on has no config")


def test_retry_on_can_leave_out_transient_failures(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    agent_harness(root, tmp_path)
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "fake"\nretry_on = ["agent"]\nretries = 1\n'
                             'backoff = { initial = "100ms" }\n'
                             'env = { FAIL_1 = "transient:503 overloaded", FAIL_2 = "agent:tests fail" }\n'})
    assert cli("run", "p").exit_code == 1
    status = read_job_status(root.pipeline("p").job_status_file("a"), "a")
    assert status.message == "attempt 1 failed (transient: 503 overloaded); not retried: retry_on has no transient"


def test_an_unknown_failure_kind_in_retry_on_is_refused_with_a_suggestion(
    make_pipeline: MakePipeline, cli: Invoke
) -> None:
    d = make_pipeline("p", {"a": 'agent = "dev"\nretry_on = ["transiant", "network"]\n'})
    result = cli("validate")
    assert result.exit_code == 2
    assert (f"{d}/jobs/a.toml: retry_on[0]: unknown failure kind 'transiant' (did you mean 'transient'?); "
            "the kinds are transient, config, agent, command") in result.output
    assert (f"{d}/jobs/a.toml: retry_on[1]: unknown failure kind 'network'; "
            "the kinds are transient, config, agent, command") in result.output


def test_a_failure_event_with_an_unknown_kind_makes_the_log_malformed(tmp_path: Path) -> None:
    log = tmp_path / "actions.jsonl"
    log.write_text('{"type": "failure", "kind": "cosmic", "text": "x"}\n'
                   '{"type": "failure", "kind": "config", "text": "401"}\n')
    summary = read_log(log)
    assert summary.problem == 'actions.jsonl line 1: failure: "kind" must be one of transient, config, agent'
    assert (summary.failure_kind, summary.failure_text) == ("config", "401")
