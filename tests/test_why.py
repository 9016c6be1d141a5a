"""`clowder why`: the scheduler's decision about a job, in words, from real trees (run by real
daemons and `clowder run`)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clowder.state import JobState
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline
from tests.test_driver import daemon, jstatus, pstate, wait_for
from tests.test_server import client

WAIT = 'command = "while [ ! -f {} ]; do sleep 0.02; done"\n'


def why(cli: Invoke, job: str, pipeline: str = "p") -> dict[str, object]:
    result = cli("why", pipeline, job, "--json")
    assert result.exit_code == 0, result.output
    out: dict[str, object] = json.loads(result.stdout)
    return out


def said(cli: Invoke, job: str, pipeline: str = "p") -> str:
    result = cli("why", pipeline, job)
    assert result.exit_code == 0, result.output
    return result.stdout


@contextmanager
def gate_opened_at_exit(gate: Path) -> Iterator[Path]:
    try:
        yield gate
    finally:
        gate.touch()


def set_config(root: Root, old: str, new: str) -> None:
    text = root.config_file.read_text()
    assert old in text
    root.config_file.write_text(text.replace(old, new))


def test_why_a_job_waits_for_its_upstream_and_why_the_upstream_runs(root: Root, make_pipeline: MakePipeline,
                                                                     cli: Invoke, tmp_path: Path) -> None:
    with gate_opened_at_exit(tmp_path / "gate") as gate:
        make_pipeline("p", {"a": WAIT.format(gate), "b": 'command = "true"\nneeds = ["a"]\n',
                            "c": 'command = "true"\nneeds = [{ job = "a", when = "failure" }]\n'})
        assert said(cli, "a") == "p/a is pending: starts attempt 1: its turn came: it needs no other job\n"
        assert said(cli, "b") == "p/b is pending: waits for a (starts now): it needs it to succeed\n"
        with daemon(root):
            wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a to run")
            assert why(cli, "b") == {"pipeline": "p", "job": "b", "state": "pending", "verdict": "waits",
                                     "cause": "needs", "reason": "waits for a (running): it needs it to succeed",
                                     "subject": "a", "at": None}
            assert why(cli, "c")["reason"] == "waits for a (running): it needs it to fail"
            a = why(cli, "a")
            assert (a["verdict"], a["cause"]) == ("running", "trigger")
            assert str(a["reason"]).startswith("running attempt 1 since ")
            assert str(a["reason"]).endswith(" UTC: its turn came: it needs no other job")
            gate.touch()
            wait_for(lambda: pstate(root, "p").terminal, what="p to end")
    assert said(cli, "b") == "p/b is succeeded: attempt 1 ran because its needs are met: a succeeded\n"
    c = why(cli, "c")
    assert (c["state"], c["verdict"], c["cause"], c["subject"], c["reason"]) == (
        "skipped", "skipped", "condition", "a", "needs a to fail; it succeeded")


def test_why_a_ready_job_waits_for_a_resource_pool(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                   tmp_path: Path) -> None:
    set_config(root, "# llm = 4", "gpu = 1")
    with gate_opened_at_exit(tmp_path / "gate") as gate:
        make_pipeline("p", {"a": WAIT.format(gate) + "resources = { gpu = 1 }\n",
                            "b": 'command = "true"\nresources = { gpu = 1 }\n'})
        with daemon(root):
            wait_for(lambda: jstatus(root, "p", "b").state is JobState.QUEUED, what="b to be queued")
            b = why(cli, "b")
            assert (b["state"], b["verdict"], b["cause"], b["subject"], b["reason"]) == (
                "queued", "waits", "resources", "gpu", "waits: waiting for resources: gpu (1 of 1 in use)")
            gate.touch()
            wait_for(lambda: pstate(root, "p").terminal, what="p to end")


def test_why_a_ready_job_waits_for_a_slot_of_the_root(root: Root, make_pipeline: MakePipeline,
                                                                          cli: Invoke, tmp_path: Path) -> None:
    set_config(root, "max_parallel = 4", "max_parallel = 1")
    with gate_opened_at_exit(tmp_path / "gate") as gate:
        make_pipeline("p", {"a": WAIT.format(gate), "b": WAIT.format(gate)})
        with daemon(root):
            wait_for(lambda: any(jstatus(root, "p", j).state is JobState.RUNNING for j in "ab"), what="p to run")
            waiting = next(j for j in "ab" if jstatus(root, "p", j).state is not JobState.RUNNING)
            w = why(cli, waiting)
            assert (w["verdict"], w["cause"], w["subject"], w["reason"]) == (
                "waits", "max_parallel", "root",
                "ready, waits for a slot: 1 of the root's max_parallel (1) are running")
            gate.touch()
            wait_for(lambda: pstate(root, "p").terminal, what="p to end")


def test_why_names_the_pipelines_own_max_parallel(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                  tmp_path: Path) -> None:
    with gate_opened_at_exit(tmp_path / "gate") as gate:
        make_pipeline("q", {"x": WAIT.format(gate), "y": WAIT.format(gate)}, spec='prompt = "q"\nmax_parallel = 1\n')
        with daemon(root):
            wait_for(lambda: any(jstatus(root, "q", j).state is JobState.RUNNING for j in "xy"), what="q to run")
            waiting = next(j for j in "xy" if jstatus(root, "q", j).state is not JobState.RUNNING)
            w = why(cli, waiting, "q")
            assert (w["verdict"], w["cause"], w["subject"], w["reason"]) == (
                "waits", "max_parallel", "pipeline",
                "ready, waits for a slot: 1 of its pipeline's max_parallel (1) are running")
            gate.touch()
            wait_for(lambda: pstate(root, "q").terminal, what="q to end")


def test_why_a_failed_job_waits_for_its_backoff_and_why_its_retry_ran(root: Root, make_pipeline: MakePipeline,
                                                                      cli: Invoke, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    make_pipeline("p", {"a": f'command = "test -f {marker}"\nretries = 1\n'
                             'backoff = { initial = "1h", max = "2h" }\n'})
    with daemon(root):
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.RETRYING, what="a to wait for its retry")
    a = why(cli, "a")
    retry_at = jstatus(root, "p", "a").retry_at
    assert (a["state"], a["verdict"], a["cause"], a["at"]) == ("retrying", "waits", "backoff", retry_at.isoformat())
    assert str(a["reason"]).startswith(f"waits for its backoff until {retry_at:%Y-%m-%d %H:%M:%S} UTC (in 59m")
    assert str(a["reason"]).endswith("): attempt 1 failed: exit code 1; retry 1 of 1 in 1h00m")
    # A retry that ran says so.
    make_pipeline("q", {"x": f'command = "test -f {marker} || {{ touch {marker}; exit 1; }}"\nretries = 1\n'
                             'backoff = { initial = 0 }\n'})
    assert cli("run", "q").exit_code == 0
    assert said(cli, "x", "q") == ("q/x is succeeded: attempt 2 ran because an automatic retry (retries = 1) after "
                                   "attempt 1 failed (exit code 1)\n")


def test_why_a_job_runs_again_for_a_request_and_a_cancel_waits(root: Root, make_pipeline: MakePipeline,
                                                                cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\n', "b": 'command = "true"\nneeds = ["a"]\n'})
    assert cli("run", "p").exit_code == 0
    assert cli("rerun", "p", "a").exit_code == 0
    request = next(root.pipeline("p").requests_dir.glob("*.toml")).stem
    a = why(cli, "a")
    assert (a["state"], a["verdict"], a["cause"], a["subject"]) == ("succeeded", "starts", "trigger", request)
    assert a["reason"] == f"starts attempt 2: `clowder rerun` asked for it (request {request})"
    assert cli("run", "p").exit_code == 0
    assert said(cli, "a") == (f"p/a is succeeded: attempt 2 ran because `clowder rerun` asked for it "
                              f"(request {request})\n")
    make_pipeline("q", {"x": 'command = "true"\n'})
    assert cli("cancel", "q", "x").exit_code == 0
    x = why(cli, "x", "q")
    assert (x["verdict"], x["cause"]) == ("cancelled", "request")


def test_why_a_job_of_a_blocked_pipeline_waits_naming_the_file(root: Root, make_pipeline: MakePipeline,
                                                                cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'command = "true"\n', "b": 'command = "true"\nneeds = ["a"]\nretries = "x"\n'})
    a = why(cli, "a")
    assert (a["verdict"], a["cause"]) == ("waits", "blocked")
    assert a["reason"] == (f"waits: its pipeline is blocked: invalid spec: {d}/jobs/b.toml: retries: expected an "
                           "integer, got 'x'")


def test_why_a_spent_budget_stops_a_job(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    root.config_file.write_text(root.config_file.read_text() + '\n[harnesses.scripted]\nmodel = "m1"\n\n'
                                '[prices.m1]\ninput = 1000.0\noutput = 2000.0\n')
    make_pipeline("p", {"a": 'agent = "dev"\n[[script]]\nusage = { input_tokens = 1000, output_tokens = 100 }\n',
                        "b": 'command = "true"\nneeds = ["a"]\n'}, spec='prompt = "x"\nmax_cost_usd = 1.0\n')
    assert cli("run", "p").exit_code == 1
    b = why(cli, "b")
    assert (b["state"], b["verdict"], b["cause"]) == ("failed", "fails", "budget")
    assert b["reason"] == ("no further attempt may start: budget spent: the pipeline has cost $1.2000 of its "
                           "max_cost_usd $1.00; no further attempts or fix-ups (raise max_cost_usd in pipeline.toml "
                           "to go on)")


def test_why_through_the_api_and_of_what_does_not_exist(root: Root, make_pipeline: MakePipeline,
                                                        cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\n', "b": 'command = "true"\nneeds = ["a"]\n'})
    with client(root) as (c, _):
        r = c.get("/api/pipelines/p/jobs/b/why")
        assert r.status_code == 200
        assert r.json() == why(cli, "b")
        assert c.get("/api/pipelines/p/jobs/nope/why").status_code == 404
        assert c.get("/api/pipelines/nope/jobs/a/why").status_code == 404
    missing = cli("why", "p", "nope")
    assert (missing.exit_code, missing.stderr) == (2, "error: 'nope': not a job of p (jobs: a, b)\n")


def test_why_and_the_dry_run_are_pure_like_the_step_they_run() -> None:
    # A fresh interpreter: what importing them loads, and nothing a test loaded before.
    code = "import clowder.scheduler.why, clowder.scheduler.dry_run, sys; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    io = {"jsonschema", "tomli_w", "subprocess", "clowder.fsio", "clowder.validate", "clowder.requests",
          "clowder.schema", "watchdog", "git"}
    assert set(ast.literal_eval(out)) & io == set()


def test_why_is_not_stopped_by_another_pipelines_broken_files(root: Root, make_pipeline: MakePipeline,
                                                              cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\n'})
    (root.pipelines_dir / "nospec" / "jobs").mkdir(parents=True)  # no pipeline.toml
    q = make_pipeline("q", {"x": 'command = "true"\n'})
    (q / "status").mkdir()
    (q / "status" / "x.toml").write_text('state = "dreaming"\n')
    assert said(cli, "a") == "p/a is pending: starts attempt 1: its turn came: it needs no other job\n"
    assert said(cli, "x", "q") == "q/x is pending: starts attempt 1: its turn came: it needs no other job\n"


def test_why_a_job_at_its_approval_gate_waits_for_a_decision(root: Root, make_pipeline: MakePipeline,
                                                            cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\n', "b": 'command = "true"\nneeds = [{ job = "a", when = "manual" }]\n'})
    with daemon(root):
        wait_for(lambda: jstatus(root, "p", "b").state is JobState.APPROVAL, what="b to wait for approval")
        assert why(cli, "b") == {"pipeline": "p", "job": "b", "state": "approval", "verdict": "waits",
                                 "cause": "approval", "subject": "a", "at": None,
                                 "reason": "waits for approval after a: clowder approve p b (or clowder reject p b)"}
