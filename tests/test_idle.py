"""Attempts that hang or linger: `idle_timeout` kills an attempt whose log stays quiet, and the
adapter runner ends a CLI that is still running after its final answer. The CLIs here are small
scripts speaking Codex's JSON stream (no model, no network)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from clowder.harness.adapters.linger import Watch
from clowder.state import FailureKind, JobState, read_job_status
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline

ANSWER = {"summary": "done"}
TEXT = json.dumps(json.dumps(ANSWER))
# A Codex that answers, then hangs (as Codex and Claude Code were seen to).
ANSWERS_THEN_HANGS = f"""\
import json, sys, time
for event in [{{"type": "thread.started", "thread_id": "t"}}, {{"type": "turn.started"}},
              {{"type": "item.completed", "item": {{"type": "agent_message", "text": {TEXT}}}}},
              {{"type": "turn.completed", "usage": {{"input_tokens": 10, "output_tokens": 2}}}}]:
    print(json.dumps(event), flush=True)
time.sleep(120)
"""
# A Codex that cannot reach its API: it waits "for network" forever, printing the same line.
WAITS_FOR_NETWORK = """\
import json, time
print(json.dumps({"type": "turn.started"}), flush=True)
while True:
    print(json.dumps({"type": "error", "message": "Reconnecting... waiting for network (Connection failed)"}),
          flush=True)
    time.sleep(0.2)
"""


def fake_codex(root: Root, tmp_path: Path, script: str) -> None:
    path = tmp_path / "fake_codex.py"
    path.write_text(script)
    root.config_file.write_text(f'[harnesses.codex]\ncommand = [{json.dumps(sys.executable)}, '
                                f'{json.dumps(str(path))}]\nadapter = "codex"\n')


def status_of(root: Root, job: str = "a") -> tuple[JobState, str]:
    status = read_job_status(root.pipeline("p").job_status_file(job), job)
    return status.state, status.message


def test_a_command_with_no_output_for_its_idle_timeout_is_killed(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", {"a": 'command = "echo started; sleep 120"\nidle_timeout = "1s"\n',
                        "b": 'command = "for i in $(seq 12); do echo $i; sleep 0.25; done"\nidle_timeout = "2s"\n'})
    begun = time.monotonic()
    assert cli("run", "p").exit_code == 1
    assert time.monotonic() - begun < 60
    assert status_of(root, "a") == (JobState.FAILED, "attempt 1 failed: idle: no output for 1.0s")
    assert status_of(root, "b") == (JobState.SUCCEEDED, "")  # it kept writing: never idle
    log = root.pipeline("p").log_file("a", 1).read_text()
    assert log.startswith("started\n")


def test_an_agent_that_hangs_after_answering_is_ended_and_its_answer_kept(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    fake_codex(root, tmp_path, ANSWERS_THEN_HANGS)
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "codex"\ntimeout = "100s"\n'
                             'env = { CLOWDER_RESULT_GRACE = "1" }\n'})
    begun = time.monotonic()
    assert cli("run", "p").exit_code == 0
    assert time.monotonic() - begun < 60
    assert status_of(root) == (JobState.SUCCEEDED, "")
    meta = root.pipeline("p").workspace("a") / ".clowder" / "a"
    assert json.loads((meta / "output.json").read_text()) == ANSWER
    log = root.pipeline("p").log_file("a", 1).read_text()
    assert "clowder adapter: the agent answered but was still running 1s later: ending it" in log


def test_an_agent_retrying_an_unreachable_api_forever_ends_as_idle_and_transient(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    fake_codex(root, tmp_path, WAITS_FOR_NETWORK)
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "codex"\nidle_timeout = "2s"\nretry_on = []\n'})
    assert cli("run", "p").exit_code == 1
    status = read_job_status(root.pipeline("p").job_status_file("a"), "a")
    assert status.state is JobState.FAILED
    assert status.message == "attempt 1 failed (transient: idle: no output for 2.0s)"
    assert status.attempts[0].failure_kind is FailureKind.TRANSIENT
    log = root.pipeline("p").log_file("a", 1).read_text()
    # The retry line is shown once; the action log has every one.
    assert log.count("[message] Reconnecting... waiting for network") == 1
    assert ("[failure] transient: ended while retrying: Reconnecting... waiting for network "
            "(Connection failed)\n") in log
    actions = (root.pipeline("p").workspace("a") / ".clowder" / "a" / "actions.jsonl").read_text()
    assert actions.count("waiting for network") > 3


def test_a_cli_ended_after_answering_exits_1_if_it_reported_a_failure() -> None:
    for events, code in [([{"type": "result", "output": {}}], 0),
                         ([{"type": "failure", "kind": "agent", "text": "x"}, {"type": "result", "output": {}}], 1)]:
        proc = subprocess.Popen(["sleep", "60"])
        try:
            watch = Watch(proc, object(), grace=0.2)
            assert all(watch.shows(e) for e in events)
            assert watch.exit_code(proc.wait(timeout=30)) == code
        finally:
            proc.kill()
            proc.wait()


def test_a_bad_idle_timeout_is_refused(make_pipeline: MakePipeline, cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'agent = "dev"\nidle_timeout = "soon"\n', "b": 'command = "x"\nidle_timeout = -1\n'})
    result = cli("validate")
    assert result.exit_code == 2
    assert f"{d}/jobs/a.toml: idle_timeout: invalid duration 'soon'" in result.output
    assert f"{d}/jobs/b.toml: idle_timeout: must be >= 0, got -1" in result.output
