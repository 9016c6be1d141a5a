"""`clowder rerun`: a new attempt of a job that ended, with a real daemon, real processes and git."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clowder.state import JobState, PipelineState, Trigger, read_pipeline_status
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline
from tests.test_driver import daemon, jstatus, pstate, wait_for
from tests.test_server import CHROMIUM, CHROMIUM_ARGS, client, run_to_end, serving


def _chain(make_pipeline: MakePipeline, tmp_path: Path) -> Path:
    """a copies an input file into its workspace; b and c follow it."""
    given = tmp_path / "input.txt"
    given.write_text("first\n")
    make_pipeline("p", {"a": f'command = "cp {given} out.txt"\n',
                        "b": 'command = "echo b"\nneeds = ["a"]\n',
                        "c": 'command = "echo c"\nneeds = ["b"]\n'})
    return given


def _attempts(root: Root, job: str) -> list[tuple[JobState, Trigger]]:
    return [(a.state, a.trigger) for a in jstatus(root, "p", job).attempts]


def _ended_again(root: Root, job: str, attempts: int) -> bool:
    status = jstatus(root, "p", job)
    return len(status.attempts) == attempts and status.state.terminal and pstate(root, "p").terminal


def test_rerun_of_a_succeeded_job_is_attempt_two_triggered_manually_and_diff_shows_what_changed(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    given = _chain(make_pipeline, tmp_path)
    assert cli("run", "p").exit_code == 0
    ended_first = jstatus(root, "p", "c").attempts[0].ended_at
    pipeline_ended = read_pipeline_status(root.pipeline("p").status_file).ended_at
    given.write_text("second\n")
    with daemon(root):
        result = cli("rerun", "p", "a")
        assert (result.exit_code, result.stdout) == (0, "re-run requested for p/a\n")
        wait_for(lambda: _ended_again(root, "a", 2), what="a's re-run to end")
    assert _attempts(root, "a") == [(JobState.SUCCEEDED, Trigger.START), (JobState.SUCCEEDED, Trigger.MANUAL)]
    assert jstatus(root, "p", "a").attempts[1].request is not None
    # Without --downstream what follows it is left as it was.
    assert _attempts(root, "b") == [(JobState.SUCCEEDED, Trigger.START)]
    assert jstatus(root, "p", "c").attempts[0].ended_at == ended_first
    # The pipeline ran again, and ended again.
    again = read_pipeline_status(root.pipeline("p").status_file)
    assert again.state is PipelineState.SUCCEEDED
    assert again.ended_at is not None and pipeline_ended is not None and again.ended_at > pipeline_ended
    diff = cli("diff", "p", "a@1", "a@2")
    assert diff.exit_code == 0
    assert "-first\n+second\n" in diff.stdout and "out.txt" in diff.stdout


def test_rerun_downstream_runs_what_follows_after_it_succeeds(root: Root, make_pipeline: MakePipeline,
                                                             cli: Invoke, tmp_path: Path) -> None:
    _chain(make_pipeline, tmp_path)
    make_pipeline("other", {"x": 'command = "echo x"\n'})
    assert cli("run", "p").exit_code == 0
    assert cli("run", "other").exit_code == 0
    with daemon(root):
        result = cli("rerun", "p", "b", "--downstream")
        assert (result.exit_code, result.stdout) == (0, "re-run requested for p/b and what follows it\n")
        wait_for(lambda: _ended_again(root, "c", 2), what="c to run again")
    assert _attempts(root, "a") == [(JobState.SUCCEEDED, Trigger.START)]  # upstream: untouched
    assert [s for s, _ in _attempts(root, "b")] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    c = jstatus(root, "p", "c")
    assert [a.state for a in c.attempts] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    # c started only once b's re-run had ended.
    b_ended = jstatus(root, "p", "b").attempts[1].ended_at
    assert c.attempts[1].started_at is not None and b_ended is not None and c.attempts[1].started_at >= b_ended
    assert pstate(root, "p") is PipelineState.SUCCEEDED
    assert len(jstatus(root, "other", "x").attempts) == 1  # another pipeline: untouched


def test_rerun_downstream_does_not_run_what_follows_when_the_rerun_fails(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    given = _chain(make_pipeline, tmp_path)
    assert cli("run", "p").exit_code == 0
    given.unlink()  # the re-run of a fails
    with daemon(root):
        assert cli("rerun", "p", "a", "--downstream").exit_code == 0
        wait_for(lambda: _ended_again(root, "a", 2), what="a's re-run to end")
    assert [s for s, _ in _attempts(root, "a")] == [JobState.SUCCEEDED, JobState.FAILED]
    for job in ("b", "c"):
        status = jstatus(root, "p", job)
        assert len(status.attempts) == 1 and status.state is JobState.SKIPPED, job
    assert jstatus(root, "p", "b").message == "needs a to succeed; it failed"
    assert pstate(root, "p") is PipelineState.FAILED


def test_rerun_of_a_failed_or_skipped_job_runs_it_without_a_daemon(root: Root, make_pipeline: MakePipeline,
                                                                   cli: Invoke, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    make_pipeline("p", {"a": f'command = "test -f {marker}"\n', "b": 'command = "true"\nneeds = ["a"]\n'})
    assert cli("run", "p").exit_code == 1
    assert jstatus(root, "p", "b").state is JobState.SKIPPED
    marker.touch()
    assert cli("rerun", "p", "a", "--downstream").exit_code == 0
    assert cli("run", "p").exit_code == 0
    assert _attempts(root, "a") == [(JobState.FAILED, Trigger.START), (JobState.SUCCEEDED, Trigger.MANUAL)]
    assert _attempts(root, "b") == [(JobState.SUCCEEDED, Trigger.START)]


def test_rerun_of_a_job_that_has_not_ended_is_refused(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                      tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make_pipeline("p", {"slow": f'command = "while [ ! -f {gate} ]; do sleep 0.02; done"\n',
                        "after": 'command = "true"\nneeds = ["slow"]\n'})
    try:
        with daemon(root):
            wait_for(lambda: jstatus(root, "p", "slow").state is JobState.RUNNING, what="slow to run")
            refused = {
                ("rerun", "p", "slow"): "error: p/slow is running; only a job that has ended can be re-run\n",
                ("rerun", "p", "after"): "error: p/after is pending; only a job that has ended can be re-run\n",
                ("rerun", "p", "nope"): "error: 'nope': not a job of p (jobs: after, slow)\n",
            }
            for args, message in refused.items():
                result = cli(*args)
                assert (result.exit_code, result.stdout, result.stderr) == (2, "", message), args
            assert not any(root.pipeline("p").requests_dir.glob("*.toml"))
            gate.touch()
            wait_for(lambda: pstate(root, "p").terminal, what="p to end")
    finally:
        gate.touch()
    # No daemon now: the request waits in the inbox, and a second one is refused.
    assert cli("rerun", "p", "slow").exit_code == 0
    again = cli("rerun", "p", "slow")
    assert (again.exit_code, again.stderr) == (2, "error: a retry or re-run of p/slow is already requested\n")
    assert cli("run", "p").exit_code == 0
    assert len(jstatus(root, "p", "slow").attempts) == 2


def test_rerun_through_the_api_needs_the_token_and_is_409_for_a_job_that_has_not_ended(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    _chain(make_pipeline, tmp_path)
    run_to_end(root)
    make_pipeline("q", {"x": 'command = "true"\n'})
    with client(root) as (c, p):
        auth = {"Authorization": f"Bearer {p.token}"}
        pending = c.post("/api/pipelines/q/jobs/x/rerun", headers=auth)
        assert (pending.status_code, pending.json()) == (
            409, {"detail": "q/x is pending; only a job that has ended can be re-run"})
        assert c.get("/api/pipelines/q/jobs/x").json()["actions"] == ["cancel"]
        assert c.get("/api/pipelines/p/jobs/a").json()["actions"] == ["rerun"]
        assert c.post("/api/pipelines/p/jobs/a/rerun").status_code == 401
        assert c.post("/api/pipelines/p/jobs/nope/rerun", headers=auth).status_code == 404
        r = c.post("/api/pipelines/p/jobs/a/rerun?downstream=true", headers=auth)
        assert r.status_code == 202 and r.json()["action"] == "rerun" and r.json()["job"] == "a"
        assert c.get("/api/pipelines/p/jobs/a").json()["actions"] == ["cancel"]  # asked once; not twice
        twice = c.post("/api/pipelines/p/jobs/a/rerun", headers=auth)
        assert (twice.status_code, twice.json()) == (409, {"detail": "a retry or re-run of p/a is already requested"})
    run_to_end(root)
    for job in ("a", "b", "c"):
        assert [s for s, _ in _attempts(root, job)] == [JobState.SUCCEEDED, JobState.SUCCEEDED], job
    assert _attempts(root, "a")[1] == (JobState.SUCCEEDED, Trigger.MANUAL)


def test_the_page_reruns_a_succeeded_job_with_its_button(root: Root, make_pipeline: MakePipeline,
                                                         tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    _chain(make_pipeline, tmp_path)
    run_to_end(root)
    with serving(root) as p, daemon(root), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{p.url}?token={p.token}#/p/p/b")
            sync_api.expect(page.locator("#job-name")).to_have_text("b")
            sync_api.expect(page.locator("#retry-job")).to_be_hidden()  # it succeeded: no retry, a re-run
            sync_api.expect(page.locator("#rerun-job")).to_be_visible()
            sync_api.expect(page.locator("#job-why")).to_have_text(
                "why: attempt 1 ran because its needs are met: a succeeded")
            page.locator("#rerun-downstream").click()
            sync_api.expect(page.locator("#toast")).to_have_text("re-run of b and what follows it requested")
            wait_for(lambda: _ended_again(root, "c", 2), what="c to run again")
            sync_api.expect(page.locator("#attempts tbody tr")).to_have_count(2, timeout=15_000)
        finally:
            browser.close()
    assert _attempts(root, "b")[1] == (JobState.SUCCEEDED, Trigger.MANUAL)
    assert len(jstatus(root, "p", "a").attempts) == 1


def test_a_rerun_tester_spawns_its_own_fixups_and_the_earlier_ones_stay_in_history(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    """A tester allowed one fix-up per run finds the bug again when re-run (alone, or after its
    upstream with --downstream): the re-run is a new attempt whose spawns are its own."""
    ok = tmp_path / "ok"
    fix = f'if ls .clowder/*/regression.json >/dev/null 2>&1; then touch {ok}; fi'
    make_pipeline("p", {"dev": f'command = "{fix}"\n',
                        "test": (f'command = "test -f {ok} || {{ clowder spawn dev --reason bug; exit 1; }}"\n'
                                 'needs = ["dev"]\nmax_regressions = 1\n')})
    assert cli("run", "p").exit_code == 0
    assert jstatus(root, "p", "test").spawned == ("dev.r1",)
    for rerun, fixup in ((["test"], "dev.r2"), (["dev", "--downstream"], "dev.r3")):
        ok.unlink()  # the bug is back
        assert cli("rerun", "p", *rerun).exit_code == 0
        result = cli("run", "p")
        assert result.exit_code == 0, (rerun, jstatus(root, "p", "test").message)
        test = jstatus(root, "p", "test")
        assert (test.state, test.spawned) == (JobState.SUCCEEDED, (fixup,)), rerun
        assert test.attempts[-2].message.startswith(f"spawned {fixup};"), rerun  # "; dev.r2: no changes"
        assert [a.trigger for a in test.attempts[-2:]] == [
            Trigger.MANUAL if rerun == ["test"] else Trigger.START, Trigger.REGRESSION]
    test = jstatus(root, "p", "test")
    assert [a.message.split(";")[0] for a in test.attempts if a.message.startswith("spawned")] == [
        "spawned dev.r1", "spawned dev.r2", "spawned dev.r3"]  # the earlier runs' fix-ups, in history
    for fixup in ("dev.r1", "dev.r2", "dev.r3"):
        assert jstatus(root, "p", fixup).state is JobState.SUCCEEDED


def test_a_rerun_downstream_of_what_a_gate_follows_waits_for_a_new_approval(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate is there so that someone reads the plan before dev starts on it: a plan made
    again is read again. The approval of the first plan stays on the attempt it let start."""
    for var in ("LOGNAME", "USER"):
        monkeypatch.setenv(var, "alice")
    make_pipeline("p", {"plan": 'command = "echo plan"\n',
                        "dev": 'command = "echo dev"\nneeds = [{ job = "plan", when = "manual" }]\n',
                        "test": 'command = "true"\nneeds = ["dev"]\n'})
    with daemon(root):
        for n, comment in enumerate(("first plan ok", "second plan ok"), 1):
            wait_for(lambda: jstatus(root, "p", "dev").state is JobState.APPROVAL, what=f"dev to wait ({n})")
            assert len(jstatus(root, "p", "dev").attempts) == n - 1  # it did not start without a decision
            assert cli("approve", "p", "dev", "-m", comment).exit_code == 0
            wait_for(lambda: _ended_again(root, "test", n), what=f"run {n} to end")  # noqa: B023
            if n == 1:
                assert cli("rerun", "p", "plan", "--downstream").exit_code == 0
    approvals = [a.approval for a in jstatus(root, "p", "dev").attempts]
    assert [(a.by, a.comment) for a in approvals if a is not None] == [
        ("alice", "first plan ok"), ("alice", "second plan ok")]
    assert pstate(root, "p") is PipelineState.SUCCEEDED
