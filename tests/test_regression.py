"""Regression loops end to end: a tester spawns a fix-up, waits for it and runs again."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clowder.state import JobState, PipelineState, read_job_status, read_pipeline_status
from clowder.tree import Root
from clowder.validate import load_pipeline
from tests.conftest import EXAMPLES, Invoke, MakePipeline, no_settle
from tests.test_driver import jstatus, pstate, wait_for


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_the_regression_loop_example_runs_to_success(root: Root, cli: Invoke) -> None:
    shutil.copy(EXAMPLES / "templates" / "regression-loop.toml", root.templates_dir)
    prompt = "Make add() add.\n  With 'quotes', \\backslashes\\ and {{ braces }}.\n"
    assert cli("new", "regression-loop", "--prompt", prompt, "--name", "p").exit_code == 0
    spec_before = root.pipeline("p").spec_file.read_bytes()
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    assert pstate(root, "p") is PipelineState.SUCCEEDED

    test = jstatus(root, "p", "test")
    assert [(a.number, a.state, a.trigger) for a in test.attempts] == [
        (1, JobState.FAILED, "start"), (2, JobState.SUCCEEDED, "regression")]
    assert test.spawned == ("dev.r1",)
    assert test.attempts[0].message == "spawned dev.r1"
    assert jstatus(root, "p", "dev.r1").state is JobState.SUCCEEDED

    fixup = load_pipeline(root.pipeline("p")).jobs["dev.r1"]
    assert (fixup.parent, fixup.regression_of) == ("test", "dev")
    context = fixup.regression_context or {}
    assert context["reason"] == "test_add fails: add(2, 2) is not 4"
    assert (context["spawner"], context["spawner_attempt"]) == ("test", 1)
    assert "1 failed" in context["context"] and "assert 0 == 4" in context["log_tail"]
    assert context["commit"] == test.attempts[0].commit

    ws = root.pipeline("p").workspaces_dir
    assert git(ws / "dev.r1", "rev-parse", "HEAD^{commit}").strip() == jstatus(root, "p", "dev.r1").attempts[0].commit
    assert git(ws / "test", "tag", "--list", "attempt-*").split() == ["attempt-1", "attempt-2"]
    assert "attempt-1" in git(ws / "dev.r1", "tag", "--list").split()
    # The fix-up started from the failing test's commit; the second test attempt from the fix-up.
    assert git(ws / "dev.r1", "merge-base", "--is-ancestor", context["commit"], "HEAD") == ""
    assert "return a + b" in (ws / "test" / "calc.py").read_text()

    diff = cli("diff", "p", "dev", "dev.r1", "--", "calc.py")
    assert diff.exit_code == 0, diff.output
    assert "-    return a - b" in diff.output and "+    return a + b" in diff.output
    diff = cli("diff", "p", "test@1", "test@2", "--name-only")
    assert "calc.py" in diff.output.split()
    # The prompt is never touched.
    assert root.pipeline("p").spec_file.read_bytes() == spec_before
    assert load_pipeline(root.pipeline("p")).spec.prompt == prompt


SPAWNER = ('command = "if [ -f fixed.txt ]; then echo ok; else clowder spawn dev --reason \'no fix yet\'; exit 1; fi"\n'
           'needs = ["dev"]\n')


def test_a_failing_fixup_fails_the_spawner_and_skips_its_dependents(root: Root, make_pipeline: MakePipeline,
                                                                     cli: Invoke) -> None:
    make_pipeline("p", {
        "dev": 'command = "if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; then exit 3; fi"\n',
        "test": SPAWNER,
        "ship": 'command = ["true"]\nneeds = ["test"]\n',
    })
    assert cli("run", "p").exit_code == 1
    assert jstatus(root, "p", "dev.r1").state is JobState.FAILED
    test = jstatus(root, "p", "test")
    assert test.state is JobState.FAILED
    assert test.message == "fix-up dev.r1 did not succeed"
    assert jstatus(root, "p", "ship").state is JobState.SKIPPED


def test_max_regressions_refuses_further_spawns(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"dev": 'command = ["true"]\n', "test": SPAWNER + "max_regressions = 1\n"})
    assert cli("run", "p").exit_code == 1
    test = jstatus(root, "p", "test")
    assert test.spawned == ("dev.r1",)
    assert [a.trigger for a in test.attempts] == ["start", "regression"]
    assert test.state is JobState.FAILED
    assert test.message == ("attempt 2 failed: exit code 1 (spawn refused: test has spawned 1 fix-up(s), "
                            "its max_regressions (1) is reached)")
    assert not root.pipeline("p").job_file("dev.r2").exists()


def test_spawn_outside_a_job_exits_two(root: Root, cli: Invoke) -> None:
    result = cli("spawn", "dev", "--reason", "x")
    assert result.exit_code == 2
    assert "clowder spawn runs inside a job" in result.output


def test_cancelling_a_spawner_while_its_fixup_runs(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                   tmp_path: Path) -> None:
    from tests.test_driver import daemon

    make_pipeline("p", {
        "dev": 'command = "if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; then sleep 30; fi"\n',
        "test": SPAWNER,
    })
    with daemon(root):
        wait_for(lambda: jstatus(root, "p", "dev.r1").state is JobState.RUNNING, what="fix-up running")
        assert jstatus(root, "p", "test").state is JobState.WAITING
        assert cli("cancel", "p", "test").exit_code == 0
        wait_for(lambda: pstate(root, "p").terminal, what="pipeline end")
    assert jstatus(root, "p", "test").state is JobState.CANCELLED
    assert jstatus(root, "p", "dev.r1").state is JobState.CANCELLED
    assert pstate(root, "p") is PipelineState.CANCELLED


def _daemon(root: Root) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(root: Root) -> None:
    done = subprocess.run([sys.executable, "-m", "clowder", "run", "p", "--root", str(root.path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_daemon_killed_while_a_spawn_request_is_pending(root: Root, make_pipeline: MakePipeline,
                                                        tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = tmp_path / "record"
    make_pipeline("p", {
        "dev": f'command = "echo $CLOWDER_JOB >> {record}; if [ -n \\"$(ls .clowder/*/regression.json '
               '2>/dev/null)\\" ]; then touch fixed.txt; fi"\n',
        "test": f'command = "echo test $CLOWDER_ATTEMPT >> {record}; if [ -f fixed.txt ]; then exit 0; fi; '
                f'clowder spawn dev --reason broken; while [ ! -f {gate} ]; do sleep 0.05; done; exit 1"\n'
                'needs = ["dev"]\n',
    })
    first = _daemon(root)
    requests = root.pipeline("p").requests_dir
    try:
        wait_for(lambda: requests.is_dir() and any(requests.glob("*.toml")), timeout=60, what="spawn request")
    finally:
        first.kill()
        first.communicate()
        gate.touch()  # the spawner's attempt ends now, with or without a daemon
    _finish(root)
    assert sorted(record.read_text().splitlines()) == ["dev", "dev.r1", "test 1", "test 2"]
    assert jstatus(root, "p", "test").spawned == ("dev.r1",)
    assert sorted(p.name for p in root.pipeline("p").jobs_dir.iterdir()) == ["dev.r1.toml", "dev.toml", "test.toml"]


def test_daemon_killed_while_the_fixup_runs(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = tmp_path / "record"
    make_pipeline("p", {
        "dev": f'command = "echo $CLOWDER_JOB >> {record}; if [ -n \\"$(ls .clowder/*/regression.json '
               f'2>/dev/null)\\" ]; then while [ ! -f {gate} ]; do sleep 0.05; done; touch fixed.txt; fi"\n',
        "test": f'command = "echo test $CLOWDER_ATTEMPT >> {record}; if [ -f fixed.txt ]; then exit 0; fi; '
                'clowder spawn dev --reason broken; exit 1"\nneeds = ["dev"]\n',
    })
    first = _daemon(root)
    try:
        wait_for(lambda: record.exists() and "dev.r1" in record.read_text(), timeout=60, what="fix-up running")
        time.sleep(0.1)
    finally:
        first.kill()
        first.communicate()
        gate.touch()
    _finish(root)
    assert sorted(record.read_text().splitlines()) == ["dev", "dev.r1", "test 1", "test 2"]
    assert read_job_status(root.pipeline("p").job_status_file("test"), "test").state is JobState.SUCCEEDED
    assert read_pipeline_status(root.pipeline("p").status_file).state is PipelineState.SUCCEEDED


def test_fixup_names_and_specs() -> None:
    from clowder.regression import fixup_name, fixup_spec

    assert fixup_name("dev", {"dev", "dev.r1"}) == "dev.r2"
    assert fixup_name("dev.r1", {"dev.r1"}) == "dev.r1.r1"
    spec = fixup_spec({"stage": "dev", "needs": ["plan"], "from": ["plan"], "command": ["make"], "retries": 2},
                      "test", "dev", {"reason": "broken"})
    assert spec == {"command": ["make"], "retries": 2, "needs": [], "parent": "test", "regression_of": "dev",
                    "regression_context": {"reason": "broken"}}


def _timed_serve(root: Root, sweep: float, limit: float) -> float:
    """Run the root's pipelines to the end with a long sweep; the seconds it took (fails past `limit`)."""
    import threading

    from clowder.driver import Driver

    driver = Driver(root, log=lambda s: None)
    started = time.monotonic()
    thread = threading.Thread(target=driver.serve, kwargs={"until_done": True, "sweep": sweep}, daemon=True)
    thread.start()
    thread.join(timeout=limit)
    elapsed = time.monotonic() - started
    if thread.is_alive():
        driver.stop()
        thread.join(timeout=10)
    return elapsed


@pytest.mark.parametrize(("target", "spawner"), [("dev", "test"), ("dev", "dev-test"), ("build", "a")])
def test_the_spawner_runs_again_as_soon_as_its_fixup_succeeds(root: Root, make_pipeline: MakePipeline,
                                                              target: str, spawner: str) -> None:
    # Whatever the names (they order the jobs), the spawner's new attempt must not wait for the
    # sweep (300 s here; 30 s by default) once its fix-up has succeeded.
    make_pipeline("p", {
        target: 'command = "if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; then touch fixed.txt; fi"\n',
        spawner: f'command = "if [ -f fixed.txt ]; then exit 0; fi; clowder spawn {target} --reason broken; exit 1"\n'
                 f'needs = ["{target}"]\n',
        "ship": f'command = ["true"]\nneeds = ["{spawner}"]\n',
    })
    elapsed = _timed_serve(root, sweep=300, limit=30)
    assert elapsed < 10, f"the regression loop took {elapsed:.1f} s: it waited for a sweep"
    assert pstate(root, "p") is PipelineState.SUCCEEDED
    assert [a.trigger for a in jstatus(root, "p", spawner).attempts] == ["start", "regression"]


@contextlib.contextmanager
def _opened_at_the_end(gate: Path) -> Iterator[None]:
    """No job keeps waiting on the gate after the test, whatever happened."""
    try:
        yield
    finally:
        gate.touch()


def test_nothing_starts_in_a_blocked_pipeline_not_even_a_spawner_whose_fixup_succeeded(
    root: Root, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    from tests.test_driver import daemon

    gate = tmp_path / "gate"
    d = make_pipeline("p", {
        "dev": f'command = "if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; then '
               f'while [ ! -f {gate} ]; do sleep 0.05; done; touch fixed.txt; fi"\n',
        "test": SPAWNER,
        "other": 'command = ["true"]\nneeds = ["test"]\n',
    })
    other = d / "jobs" / "other.toml"
    # No settling: a back-dated mtime raced the daemon's read of the write before it (2 s lost).
    no_settle(root)
    with daemon(root), _opened_at_the_end(gate):
        wait_for(lambda: jstatus(root, "p", "dev.r1").state is JobState.RUNNING, what="fix-up running")
        other.write_text('command = ["true"]\nneeds = ["test"]\nretries = "many"\n')
        wait_for(lambda: pstate(root, "p") is PipelineState.BLOCKED, what="pipeline blocked")
        gate.touch()
        wait_for(lambda: jstatus(root, "p", "dev.r1").state is JobState.SUCCEEDED, what="fix-up succeeded")
        time.sleep(0.5)
        test = jstatus(root, "p", "test")
        assert (test.state, len(test.attempts)) == (JobState.WAITING, 1)
        assert pstate(root, "p") is PipelineState.BLOCKED
        other.write_text('command = ["true"]\nneeds = ["test"]\n')
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, what="pipeline resumed")
    assert [a.trigger for a in jstatus(root, "p", "test").attempts] == ["start", "regression"]
    assert jstatus(root, "p", "other").state is JobState.SUCCEEDED
