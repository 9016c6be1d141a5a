"""`output_schema`: a job's structured output is checked against the JSON Schema its job or
role declares; a missing or non-matching output fails the attempt like a missing declared
output, and the schema reaches the CLIs that take one (Claude --json-schema, Codex --output-schema)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from clowder.harness import agent
from clowder.spec import Config
from clowder.state import JobState, read_job_status
from clowder.tree import Root
from clowder.validate import build_pipeline
from tests.conftest import Invoke, MakePipeline

SCHEMA = {"type": "object", "required": ["verdict"], "properties": {"verdict": {"enum": ["pass", "fail"]},
                                                                   "count": {"type": "integer"}}}
INLINE = 'output_schema = { type = "object", required = ["verdict"], properties = { verdict = { enum = ["pass", ' \
         '"fail"] }, count = { type = "integer" } } }\n'


def state(root: Root, job: str) -> tuple[JobState, str]:
    status = read_job_status(root.pipeline("p").job_status_file(job), job)
    return status.state, status.message


def test_a_matching_output_succeeds_and_a_wrong_or_missing_one_fails_naming_the_key(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", {
        "good": f'agent = "dev"\n{INLINE}[[script]]\noutput = {{ verdict = "pass", count = 3 }}\n',
        "wrong": f'agent = "dev"\n{INLINE}[[script]]\noutput = {{ verdict = "pass", count = "three" }}\n',
        "lacking": f'agent = "dev"\n{INLINE}[[script]]\noutput = {{ count = 1 }}\n',
        "silent": f'agent = "dev"\n{INLINE}[[script]]\nmessage = "done, no output"\n',
        "after": 'command = "true"\nneeds = ["wrong"]\n',
    })
    assert cli("run", "p").exit_code == 1
    assert state(root, "good") == (JobState.SUCCEEDED, "")
    assert state(root, "wrong") == (JobState.FAILED, "attempt 1 failed: output.json does not match output_schema: "
                                                     "at $.count: 'three' is not of type 'integer'")
    assert state(root, "lacking") == (JobState.FAILED, "attempt 1 failed: output.json does not match output_schema: "
                                                       "at $: 'verdict' is a required property")
    assert state(root, "silent") == (JobState.FAILED, "attempt 1 failed: output.json: missing; the job's "
                                                      "output_schema requires a structured output")
    assert state(root, "after")[0] is JobState.SKIPPED
    error = json.loads((root.pipeline("p").workspace("wrong") / ".clowder" / "wrong" / "error.json").read_text())
    assert "at $.count" in error["reason"]


def test_a_roles_schema_file_under_the_root_applies_to_its_jobs(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    (root.path / "schemas").mkdir()
    (root.path / "schemas" / "review.json").write_text(json.dumps(SCHEMA))
    spec = 'prompt = "do it"\n[roles.reviewer]\noutput_schema = "schemas/review.json"\n'
    make_pipeline("p", {"ok": 'agent = "reviewer"\n[[script]]\noutput = { verdict = "fail" }\n',
                        "bad": 'agent = "reviewer"\n[[script]]\noutput = { verdict = "maybe" }\n'}, spec=spec)
    assert cli("run", "p").exit_code == 1
    assert state(root, "ok") == (JobState.SUCCEEDED, "")
    assert state(root, "bad")[1].startswith("attempt 1 failed: output.json does not match output_schema: "
                                            "at $.verdict: 'maybe' is not one of ['pass', 'fail']")


def test_a_bad_schema_is_reported_by_validate_naming_the_file_and_key(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", {"a": 'agent = "dev"\noutput_schema = { type = "nonsense" }\n',
                        "b": 'agent = "dev"\noutput_schema = "schemas/missing.json"\n',
                        "c": 'agent = "dev"\noutput_schema = "../outside.json"\n'})
    result = cli("validate")
    assert result.exit_code == 2
    jobs = root.pipelines_dir / "p" / "jobs"
    assert f"{jobs / 'a.toml'}: output_schema: not a valid JSON Schema: 'nonsense' is not valid" in result.output
    assert f"{jobs / 'b.toml'}: output_schema: cannot read {root.path / 'schemas' / 'missing.json'}" in result.output
    assert f"{jobs / 'c.toml'}: output_schema: leaves the root" in result.output



def test_a_schema_path_with_a_nul_or_naming_a_fifo_is_a_clear_error_not_a_crash_or_a_hang(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    os.mkfifo(root.path / "fifo.json")
    make_pipeline("p", {"a": 'agent = "dev"\noutput_schema = "a\\u0000b.json"\n',
                        "b": 'agent = "dev"\noutput_schema = "fifo.json"\n'})
    result = cli("validate")
    assert result.exit_code == 2, result.output
    jobs = root.pipelines_dir / "p" / "jobs"
    assert f"{jobs / 'a.toml'}: output_schema: contains a NUL character" in result.output
    fifo = root.path / "fifo.json"
    assert f"{jobs / 'b.toml'}: output_schema: cannot read {fifo}: not a regular file" in result.output


# -- the schema reaches the CLI ---------------------------------------------------------------

def launch(tmp_path: Path, harness: str) -> tuple[tuple[str, ...], Path]:
    p = build_pipeline("p", {"prompt": "do it", "roles": {"dev": {"output_schema": SCHEMA}}},
                       {"a": {"agent": "dev", "harness": harness}}, Config())
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = agent.start(Config(), agent.context(p, p.jobs["a"], 1, ws, {}), tmp_path).argv
    return argv[argv.index("--") + 1:], ws / ".clowder" / "a"


def test_claude_gets_the_schema_as_json_schema(tmp_path: Path) -> None:
    argv, meta = launch(tmp_path, "claude")
    assert argv[:2] == ("claude", "--json-schema")
    assert json.loads(argv[2]) == SCHEMA
    assert "output-schema.json" in (meta / "prompt.md").read_text()  # the agent is told too


def test_codex_gets_the_schema_file_as_output_schema(tmp_path: Path) -> None:
    argv, meta = launch(tmp_path, "codex")
    assert argv[:4] == ("codex", "exec", "--output-schema", str((meta / "output-schema.json").resolve()))
    assert json.loads((meta / "output-schema.json").read_text()) == SCHEMA
    assert argv[-1] == "-"


def test_aider_which_has_no_schema_flag_gets_none(tmp_path: Path) -> None:
    argv, _ = launch(tmp_path, "aider")
    assert [a for a in argv if a.startswith("-") and "schema" in a] == []


