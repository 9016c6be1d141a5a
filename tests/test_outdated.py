"""Out of date and `cache = true` (issue 18 point 4): what each attempt was made from, the
`outdated` mark, `clowder run --outdated`, and reuse of an attempt with the same inputs. Real
`clowder` processes, real git, real files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from clowder.cli import main
from clowder.scheduler.inputs import Changed, InputKind, current_inputs, outdated, outdated_jobs, rerun_roots
from clowder.spec import Config, Pipeline
from clowder.state import Attempt, JobState, JobStatus, Trigger, read_job_status
from clowder.tree import Root
from clowder.validate import build_pipeline
from tests.conftest import MakePipeline, wait_for
from tests.test_server import CHROMIUM, CHROMIUM_ARGS, client, serving


def clowder(root: Root, *args: str) -> subprocess.CompletedProcess[str]:
    """`clowder ARGS` as a user runs it: a process of its own."""
    return subprocess.run([sys.executable, "-m", "clowder", *args], cwd=root.path, capture_output=True,
                          text=True, timeout=120)


def cl(root: Root, *args: str) -> subprocess.CompletedProcess[str]:
    """`clowder ARGS` in this process (the same CLI, without a Python start-up per call: the suite
    runs on two shared cores), shaped as `clowder` returns it."""
    old = os.getcwd()
    os.chdir(root.path)
    try:
        r = CliRunner().invoke(main, list(args), catch_exceptions=False, prog_name="clowder")
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, r.stderr)


def status(root: Root, job: str, p: str = "p") -> JobStatus:
    return read_job_status(root.pipeline(p).job_status_file(job), job)


def runs(root: Root, job: str) -> list[tuple[int, JobState, int | None]]:
    """Each attempt of a job: its number, state and the attempt it reused."""
    return [(a.number, a.state, a.reused_from) for a in status(root, job).attempts]


def job_file(root: Root, job: str, text: str) -> None:
    (root.pipeline("p").jobs_dir / f"{job}.toml").write_text(text)


def table(root: Root) -> dict[str, list[str]]:
    """`clowder status p` as {job: [stage, state, attempt, duration, message]}."""
    out = cl(root, "status", "p")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()[2:]
    return {line.split()[0]: [c.strip() for c in line.split("  ") if c.strip()][1:] for line in lines}


def _chain(make_pipeline: MakePipeline, tmp_path: Path) -> Path:
    """a copies a file from outside the root; b and c follow it; d stands alone."""
    given = tmp_path / "given.txt"
    given.write_text("one\n")
    make_pipeline("p", {"a": f'command = "cp {given} a.txt"\n',
                        "b": 'command = "cat a.txt > b.txt"\nneeds = ["a"]\n',
                        "c": 'command = "cat b.txt"\nneeds = ["b"]\n',
                        "d": 'command = "echo d"\n'})
    return given


def test_editing_a_finished_jobs_command_marks_it_outdated_and_why_names_the_spec(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    _chain(make_pipeline, tmp_path)
    assert cl(root, "run", "p").returncode == 0
    assert status(root, "b").attempts[0].inputs is not None
    job_file(root, "b", 'command = "cat a.txt > b.txt; echo edited"\nneeds = ["a"]\n')
    rows = table(root)
    assert rows["b"][1:] == ["succeeded (outdated)", "1", rows["b"][3], "outdated: spec changed since attempt 1"]
    assert [rows[j][1] for j in "acd"] == ["succeeded"] * 3  # c's upstream has not run again: not outdated
    why = cl(root, "why", "p", "b")
    assert why.stdout.startswith("p/b is succeeded: outdated: spec changed since attempt 1; attempt 1 ran because")
    asked = json.loads(cl(root, "why", "p", "b", "--json").stdout)
    assert (asked["cause"], asked["verdict"]) == ("outdated", "ran")
    listed = json.loads(cl(root, "status", "p", "--json").stdout)[0]["jobs"]
    marks = {j["name"]: j.get("outdated") for j in listed}
    assert marks == {"a": None, "b": {"reason": "outdated: spec changed since attempt 1", "attempt": 1,
                                      "changed": ["spec"], "upstreams": []}, "c": None, "d": None}
    with client(root) as (c, _):  # the API and the web page read the same mark
        jobs = {j["name"]: j for j in c.get("/api/pipelines/p").json()["jobs"]}
        assert jobs["b"]["outdated"]["reason"] == "outdated: spec changed since attempt 1"
        assert jobs["a"]["outdated"] is None
        detail = c.get("/api/pipelines/p/jobs/b").json()
        assert detail["outdated"]["changed"] == ["spec"]
        assert detail["attempts"][0]["inputs"]["upstreams"] == {"a": status(root, "a").attempts[0].commit}
        assert c.get("/api/pipelines/p/jobs/b/why").json()["cause"] == "outdated"
    # A mark, not a state: the spec edit changed no status file and started nothing.
    assert status(root, "b").state is JobState.SUCCEEDED and len(status(root, "b").attempts) == 1
    assert cl(root, "run", "p").stdout == ""  # it has ended: `run` has nothing to do
    assert len(status(root, "b").attempts) == 1


def test_an_upstream_rerun_with_a_new_commit_makes_its_downstream_outdated_naming_it(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    given = _chain(make_pipeline, tmp_path)
    assert cl(root, "run", "p").returncode == 0
    first = status(root, "a").attempts[0].commit
    said = subprocess.run(["git", "log", "-1", "--format=%(trailers:key=Clowder-Input-Upstream)", "attempt-1"],
                          cwd=root.pipeline("p").workspace("b"), capture_output=True, text=True, check=True)
    assert said.stdout.strip() == f"Clowder-Input-Upstream: a {first}"  # its commit says what it was made from
    given.write_text("two\n")
    assert cl(root, "rerun", "p", "a").returncode == 0
    assert cl(root, "run", "p").returncode == 0
    assert len(status(root, "a").attempts) == 2
    rows = table(root)
    assert rows["b"][1] == "succeeded (outdated)"
    assert rows["b"][-1] == "outdated: upstream a has a new commit since attempt 1"
    assert (rows["a"][1], rows["c"][1]) == ("succeeded", "succeeded")  # c's upstream b is as it was
    asked = json.loads(cl(root, "why", "p", "b", "--json").stdout)
    assert (asked["cause"], asked["subject"]) == ("outdated", "a")
    assert asked["reason"].startswith("outdated: upstream a has a new commit since attempt 1;")


def test_run_outdated_reruns_exactly_the_outdated_jobs_and_their_downstreams(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    _chain(make_pipeline, tmp_path)
    make_pipeline("q", {"x": 'command = "echo x"\n'})
    assert cl(root, "run", "p", "q").returncode == 0
    job_file(root, "b", 'command = "cat a.txt > b.txt; echo edited"\nneeds = ["a"]\n')
    before = {j: status(root, j) for j in "abcd"}
    dry = clowder(root, "run", "--outdated", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "p/b is outdated: spec changed since attempt 1",
        "dry run: nothing is started or written; each attempt is taken to succeed",
        "  1. p/b: starts attempt 2: `clowder rerun` asked for it (request outdated-b-rerun)",
        "  2. p/c: starts attempt 2: its needs are met: b succeeded",
        "p would end succeeded",
    ]
    assert {j: status(root, j) for j in "abcd"} == before and not list(root.pipeline("p").requests_dir.iterdir())
    done = clowder(root, "run", "--outdated")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["p/b is outdated: spec changed since attempt 1",
                                            "re-run requested for p/b and what follows it"]
    assert {j: len(status(root, j).attempts) for j in "abcd"} == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert status(root, "b").attempts[1].trigger is Trigger.MANUAL
    assert len(status(root, "x", "q").attempts) == 1  # another pipeline: untouched
    assert all(r[1] == "succeeded" for r in table(root).values())  # nothing is outdated now
    assert cl(root, "run", "--outdated").stdout == "nothing is outdated\n"


def test_cache_reuses_an_attempt_only_when_the_inputs_are_the_same(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    counter = tmp_path / "ran.txt"
    make_pipeline("p", {
        "a": f'command = "echo a >> {counter}; date +%s%N > a.txt"\ncache = true\nenv = {{ MODE = "1" }}\n',
        "b": 'command = "cat a.txt > b.txt"\nneeds = ["a"]\n'})
    assert cl(root, "run", "p").returncode == 0
    # Editing only the later job, then re-running from the top: a is reused, b runs.
    job_file(root, "b", 'command = "cat a.txt > b.txt; echo more"\nneeds = ["a"]\n')
    assert cl(root, "rerun", "p", "a", "--downstream").returncode == 0
    dry = cl(root, "run", "p", "--dry-run").stdout.splitlines()
    assert dry[1].startswith("  1. p/a: attempt 2 reused attempt 1 (same inputs): `clowder rerun` asked for it")
    # Reused at once: what follows it starts in the same step.
    assert dry[2:] == ["  1. p/b: starts attempt 2: its needs are met: a succeeded", "p would end succeeded"]
    assert cl(root, "run", "p").returncode == 0
    assert counter.read_text() == "a\n"
    assert runs(root, "a") == [(1, JobState.SUCCEEDED, None), (2, JobState.SUCCEEDED, 1)]
    a = status(root, "a")
    assert a.attempts[1].commit == a.attempts[0].commit and a.attempts[1].trigger is Trigger.MANUAL
    assert [x.state for x in status(root, "b").attempts] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert status(root, "b").attempts[1].consumed == {"a": a.attempts[0].commit}
    assert table(root)["a"][1:3] == ["succeeded", "2"] and table(root)["a"][-1] == "reused attempt 1 (same inputs)"
    why = cl(root, "why", "p", "a")
    assert why.stdout.startswith("p/a is succeeded: attempt 2 reused attempt 1 (same inputs): `clowder rerun`")
    assert cl(root, "logs", "p", "a").stdout.startswith("clowder: not run: reused attempt 1 (same inputs)")
    diff = cl(root, "diff", "p", "a@1", "a@2")
    assert (diff.returncode, diff.stdout) == (0, "")
    ws = root.pipeline("p").workspace("a")
    tags = subprocess.run(["git", "-C", str(ws), "rev-parse", "attempt-1", "attempt-2"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert tags == [a.attempts[0].commit] * 2
    # Another env: the inputs differ, so it runs.
    job_file(root, "a", f'command = "echo a >> {counter}; date +%s%N > a.txt"\ncache = true\nenv = {{ MODE = "2" }}\n')
    assert table(root)["a"][1] == "succeeded (outdated)" and "env changed" in table(root)["a"][-1]
    assert cl(root, "rerun", "p", "a").returncode == 0
    assert cl(root, "run", "p").returncode == 0
    assert counter.read_text() == "a\na\n"
    assert runs(root, "a")[2] == (3, JobState.SUCCEEDED, None)
    # Back to the first env: attempt 1's inputs again (b has not run since), reused once more.
    job_file(root, "a", f'command = "echo a >> {counter}; date +%s%N > a.txt"\ncache = true\nenv = {{ MODE = "1" }}\n')
    assert cl(root, "rerun", "p", "a").returncode == 0
    assert cl(root, "run", "p").returncode == 0
    assert counter.read_text() == "a\na\n"
    assert runs(root, "a")[3] == (4, JobState.SUCCEEDED, 1)


@contextmanager
def watching(root: Root) -> Iterator[subprocess.Popen[str]]:
    daemon = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--sweep", "1s"], cwd=root.path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (root.state_dir / "watch.lock").exists(), timeout=60, what="the daemon to start")
        yield daemon
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def test_reuse_survives_a_daemon_restart_and_the_daemon_never_reruns_outdated_work(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    counter = tmp_path / "ran.txt"
    make_pipeline("p", {"a": f'command = "echo a >> {counter}; date +%s%N > a.txt"\ncache = true\n',
                        "b": 'command = "cat a.txt"\nneeds = ["a"]\n'})
    assert cl(root, "run", "p").returncode == 0
    with watching(root) as daemon:
        assert cl(root, "rerun", "p", "a", "--downstream").returncode == 0
        wait_for(lambda: len(status(root, "b").attempts) == 2 and status(root, "b").state.terminal, timeout=60,
                 what="b to run again after a was reused")
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
    assert runs(root, "a") == [(1, JobState.SUCCEEDED, None), (2, JobState.SUCCEEDED, 1)]
    # A hand edit of the finished pipeline makes b outdated; a new daemon re-runs nothing unasked.
    job_file(root, "b", 'command = "cat a.txt; echo edited"\nneeds = ["a"]\n')
    make_pipeline("marker", {"m": 'command = "true"\n'})
    with watching(root):
        wait_for(lambda: status(root, "m", "marker").state is JobState.SUCCEEDED, timeout=60,
                 what="the new daemon to serve the root")
        assert cl(root, "rerun", "p", "a").returncode == 0
        wait_for(lambda: len(status(root, "a").attempts) == 3, timeout=60, what="a to be reused again")
    assert runs(root, "a")[2] == (3, JobState.SUCCEEDED, 1)
    assert counter.read_text() == "a\n"
    assert len(status(root, "b").attempts) == 2 and table(root)["b"][1] == "succeeded (outdated)"
    assert cl(root, "diff", "p", "a@2", "a@3").returncode == 0


def _attempt_rows(root: Root) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(root.state_dir / "index.sqlite")
    try:
        return conn.execute("SELECT job, number, inputs, reused_from FROM attempts ORDER BY job, number").fetchall()
    finally:
        conn.close()


def test_the_index_holds_inputs_and_reuse_and_a_reindex_keeps_them(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    make_pipeline("p", {"a": 'command = "echo a > a.txt"\ncache = true\nenv = { K = "v" }\n',
                        "b": 'command = "cat a.txt"\nneeds = ["a"]\n'})
    assert cl(root, "run", "p").returncode == 0
    assert cl(root, "rerun", "p", "a").returncode == 0
    assert cl(root, "run", "p").returncode == 0
    recorded = _attempt_rows(root)
    a = status(root, "a")
    assert [(r[0], r[1], r[3]) for r in recorded] == [("a", 1, None), ("a", 2, 1), ("b", 1, None)]
    inputs = json.loads(str(recorded[2][2]))
    assert inputs["upstreams"] == {"a": a.attempts[0].commit}
    assert inputs["spec"] == status(root, "b").attempts[0].spec_hash
    assert cl(root, "reindex").returncode == 0
    assert _attempt_rows(root) == recorded
    assert cl(root, "fsck").returncode == 0


def test_cache_on_an_agent_job_and_bad_inputs_in_a_status_file_are_refused_naming_file_and_key(
        root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'agent = "dev"\ncache = true\n', "b": 'command = "true"\ncache = "yes"\n'})
    out = cl(root, "validate")
    assert out.returncode == 2
    a_file, b_file = (root.pipeline("p").jobs_dir / f"{j}.toml" for j in "ab")
    assert f"{a_file}: cache: cache = true is for command jobs only" in out.stdout + out.stderr
    assert f"{b_file}: cache: " in out.stdout + out.stderr
    make_pipeline("q", {"a": 'command = "true"\n'})
    assert cl(root, "run", "q").returncode == 0
    path = root.pipeline("q").job_status_file("a")
    text = path.read_text()
    edited = "reused_from = 0\n\n[attempts.inputs]\nupstreams = { x = \"--\" }\n"
    path.write_text(text.replace("[attempts.inputs]\n", edited))
    bad = cl(root, "validate", str(path))
    assert bad.returncode == 2
    said = bad.stdout + bad.stderr
    assert f"{path}: attempts[0].reused_from: " in said and f"{path}: attempts[0].inputs.upstreams.x: " in said


def test_the_web_page_marks_an_outdated_job_beside_its_state(root: Root, make_pipeline: MakePipeline) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    make_pipeline("p", {"a": 'command = "echo a"\n', "b": 'command = "echo b"\nneeds = ["a"]\n'})
    assert cl(root, "run", "p").returncode == 0
    job_file(root, "b", 'command = "echo b again"\nneeds = ["a"]\n')
    with serving(root) as p, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{p.url}#/p/p/b")
            node = page.locator('g.node[data-job="b"]')
            sync_api.expect(node).to_have_attribute("data-state", "succeeded", timeout=15_000)
            sync_api.expect(node).to_have_class("node s-succeeded outdated selected")
            sync_api.expect(page.locator('g.node[data-job="a"]')).to_have_class("node s-succeeded")
            sync_api.expect(page.locator("#job-message")).to_have_text("outdated: spec changed since attempt 1")
        finally:
            browser.close()


# -- the decision itself, pure: what each kind of change is called ----------------------------------

def _ended_with(p: Pipeline, job: str, jobs: dict[str, JobStatus]) -> JobStatus:
    """The job as having succeeded once, made from the inputs it would be made from now."""
    inputs = current_inputs(p, p.jobs[job], jobs)
    return JobStatus(job, JobState.SUCCEEDED, 1, attempts=(Attempt(1, JobState.SUCCEEDED, commit="c" * 40,
                                                                    inputs=inputs),))


def test_each_changed_input_is_named_and_a_job_that_has_not_ended_is_never_outdated() -> None:
    spec = {"prompt": "p", "roles": {"dev": {"instructions": "be brief"}}, "source": {"repo": "/src", "ref": "main"}}
    jobs_spec = {"a": {"command": "x"}, "d": {"agent": "dev", "needs": ["a"]}}
    p = build_pipeline("p", spec, jobs_spec, Config())
    jobs: dict[str, JobStatus] = {}
    jobs["a"] = _ended_with(p, "a", jobs)
    jobs["d"] = _ended_with(p, "d", jobs)
    assert outdated_jobs(p, jobs) == {}
    edited = build_pipeline("p", {**spec, "roles": {"dev": {"instructions": "be thorough"}},
                                  "source": {"repo": "/src", "ref": "next"}}, jobs_spec, Config())
    assert {j: o.reason for j, o in outdated_jobs(edited, jobs).items()} == {
        "a": "outdated: source changed since attempt 1", "d": "outdated: role instructions changed since attempt 1"}
    rerun = {**jobs, "a": replace(jobs["a"], attempts=(*jobs["a"].attempts, Attempt(2, JobState.SUCCEEDED,
                                                                                     commit="e" * 40)))}
    found = outdated(p, "d", rerun)
    assert found is not None and found.upstreams == ("a",) and found.changed == (Changed(InputKind.UPSTREAM, "a"),)
    assert rerun_roots(p, {"d": found}) == ("d",)
    assert outdated(p, "d", {**rerun, "d": replace(rerun["d"], state=JobState.RUNNING)}) is None
