"""Approval gates (`when = "manual"`) with a real daemon, real jobs, real git commits, the real CLI
and a real HTTP server: a job waits until a person approves it (it starts) or rejects it (it fails)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clowder.driver import Driver
from clowder.index import Index
from clowder.state import JobState, PipelineState, Verdict
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline, wait_for
from tests.test_driver import daemon, jstatus, pstate
from tests.test_notify import notify_config, received, recorder

# plan -> [gate] dev -> test -> [gate] release -> announce
GATED = {
    "plan": 'command = "echo plan > plan.txt"\n',
    "dev": 'command = "echo dev > dev.txt"\nneeds = [{ job = "plan", when = "manual" }]\n',
    "test": 'command = ["true"]\nneeds = ["dev"]\n',
    "release": 'command = ["true"]\nneeds = [{ job = "test", when = "manual" }]\n',
    "announce": 'command = ["true"]\nneeds = ["release"]\n',
}


@pytest.fixture
def alice(monkeypatch: pytest.MonkeyPatch) -> str:
    """The user who runs `clowder approve` (getpass reads LOGNAME first, then USER)."""
    for var in ("LOGNAME", "USER"):
        monkeypatch.setenv(var, "alice")
    return "alice"


def state(root: Root, job: str, p: str = "p") -> JobState:
    return jstatus(root, p, job).state


def waiting(root: Root, job: str, p: str = "p") -> bool:
    return state(root, job, p) is JobState.APPROVAL


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, check=True).stdout


def test_a_gate_waits_for_approval_then_runs_and_a_second_gate_rejected_fails_with_the_comment(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, alice: str) -> None:
    make_pipeline("p", GATED)
    paths = root.pipeline("p")
    with daemon(root):
        wait_for(lambda: waiting(root, "dev"), what="dev to wait for approval")
        time.sleep(0.5)  # nothing starts while it waits, however long
        assert state(root, "dev") is JobState.APPROVAL and jstatus(root, "p", "dev").attempts == ()
        assert not paths.log_file("dev", 1).exists() and not paths.workspace("dev").exists()
        assert state(root, "test") is JobState.PENDING  # its downstream waits too
        assert pstate(root, "p") is PipelineState.RUNNING
        shown = cli("status", "p")
        line = next(x for x in shown.output.splitlines() if x.split()[:1] == ["dev"])
        assert "approval" in line.split() and "waiting for approval: clowder approve p dev" in line
        jobs = {j["name"]: j for j in json.loads(cli("status", "p", "--json").output)[0]["jobs"]}
        assert jobs["dev"]["state"] == "approval" and jobs["dev"]["message"].startswith("waiting for approval")
        assert cli("why", "p", "dev").output == (
            "p/dev waits for approval after plan: clowder approve p dev (or clowder reject p dev)\n")

        approved = cli("approve", "p", "dev", "--comment", "the plan looks right")
        assert (approved.exit_code, approved.output) == (0, "p/dev approved by alice: the plan looks right\n")
        wait_for(lambda: waiting(root, "release"), what="release to wait for approval")
        rejected = cli("reject", "p", "release", "--comment", "not before the freeze ends")
        assert (rejected.exit_code, rejected.output) == (0, "p/release rejected by alice: not before the freeze ends\n")
        wait_for(lambda: pstate(root, "p").terminal, what="the pipeline to end")

    dev = jstatus(root, "p", "dev")
    assert dev.state is JobState.SUCCEEDED and len(dev.attempts) == 1
    approval = dev.attempts[0].approval
    assert approval is not None and (approval.verdict, approval.by, approval.comment) == (
        Verdict.APPROVED, "alice", "the plan looks right")
    assert approval.at <= dev.attempts[0].started_at  # type: ignore[operator]
    message = git(paths.workspace("dev"), "log", "-1", "--format=%B", "attempt-1")
    assert "Clowder-State: succeeded\nClowder-Approved-By: alice\n" in message
    assert f"Clowder-Approved-At: {approval.at.isoformat().replace('+00:00', 'Z')}\n" in message
    assert "Clowder-Approval-Comment: the plan looks right\n" in message
    trailers = git(paths.workspace("dev"), "log", "-1", "--format=%(trailers:key=Clowder-Approved-By,valueonly)")
    assert trailers.strip() == "alice"  # git itself reads them as trailers

    release = jstatus(root, "p", "release")
    assert (release.state, release.message, release.attempts) == (
        JobState.FAILED, "rejected by alice: not before the freeze ends", ())
    assert release.approval is not None and release.approval.verdict is Verdict.REJECTED
    assert state(root, "announce") is JobState.SKIPPED  # as after any failure
    assert jstatus(root, "p", "announce").message == "needs release to succeed; it failed"
    assert pstate(root, "p") is PipelineState.FAILED
    at = f"{approval.at:%Y-%m-%d %H:%M:%S} UTC"
    assert cli("why", "p", "dev").output == (
        "p/dev is succeeded: attempt 1 ran because its needs are met: plan succeeded (when = manual), "
        f"and alice approved it at {at}: the plan looks right\n")
    assert cli("why", "p", "release").output == (
        f"p/release is failed: rejected at its approval gate by alice at {release.approval.at:%Y-%m-%d %H:%M:%S} UTC: "
        "not before the freeze ends; `clowder retry p release` makes it wait for approval again\n")
    _the_decisions_are_in_the_index_and_in_status_json(root, cli, approval.at, release.approval.at)


def _the_decisions_are_in_the_index_and_in_status_json(root: Root, cli: Invoke, approved: datetime,
                                                       rejected: datetime) -> None:
    """Who decided, when, why and what, as the daemon's index holds it, as a rebuild makes it
    again (fsck finds no difference), and as `clowder status --json` shows it from either."""
    rows = [("dev", "approved", "alice", _z(approved), "the plan looks right", 1),
            ("release", "rejected", "alice", _z(rejected), "not before the freeze ends", None)]
    sql = "SELECT job, verdict, by, at, comment, attempt FROM approvals ORDER BY at"

    def queried() -> list[tuple[object, ...]]:
        return [tuple(r.values()) for r in json.loads(cli("query", sql, "--json").output)]

    def shown() -> dict[str, list[dict[str, object]]]:
        jobs = json.loads(cli("status", "p", "--json").output)[0]["jobs"]
        return {j["name"]: j["approvals"] for j in jobs if "approvals" in j}

    expected = {job: [{"verdict": v, "by": by, "at": approved_at(at), "comment": c, "attempt": n}]
                for job, v, by, at, c, n in rows}
    assert queried() == rows and shown() == expected  # the daemon's index
    assert cli("fsck").exit_code == 0
    root.index_file.unlink()
    assert shown() == expected  # the tree
    assert cli("reindex").exit_code == 0
    assert queried() == rows and shown() == expected
    # An index made before the approvals table, its rows fresh: the migration that adds the table
    # (run by the next daemon or reindex) makes them stale, so status reads the tree until then.
    conn = sqlite3.connect(root.index_file, isolation_level=None)
    conn.execute("DROP TABLE approvals")
    conn.execute("ALTER TABLE attempts DROP COLUMN inputs")  # and the migrations after it
    conn.execute("ALTER TABLE attempts DROP COLUMN reused_from")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE job_counts")
    conn.execute("DELETE FROM schema_migrations WHERE version >= 4")
    conn.close()
    Index.open(root).close()
    assert shown() == expected


def _z(t: datetime) -> str:
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def approved_at(index_time: str) -> str:
    return datetime.fromisoformat(index_time).isoformat()


def test_approving_or_rejecting_a_job_that_is_not_waiting_is_refused(root: Root, make_pipeline: MakePipeline,
                                                                     cli: Invoke, alice: str) -> None:
    make_pipeline("p", GATED)
    with daemon(root):
        wait_for(lambda: waiting(root, "dev"), what="dev to wait for approval")
        refused = {
            ("approve", "plan"): "p/plan has succeeded; only a job waiting for approval can be approved",
            ("reject", "test"): "p/test is pending; only a job waiting for approval can be rejected",
        }
        for (action, job), reason in refused.items():
            r = cli(action, "p", job)
            assert (r.exit_code, r.output) == (2, f"error: {reason}\n"), (action, job)
        assert cli("approve", "p", "nope").exit_code == 2
        retried = cli("retry", "p", "dev")
        assert retried.output == "error: p/dev is waiting for approval; only a failed or cancelled job can be retried\n"
        assert not any(root.pipeline("p").requests_dir.glob("*.toml"))
        assert cli("approve", "p", "dev").exit_code == 0
        twice = cli("reject", "p", "dev")  # the approval is not applied yet, or dev no longer waits
        assert twice.exit_code == 2 and "p/dev" in twice.output
        wait_for(lambda: waiting(root, "release"), what="release to wait")
        assert state(root, "dev") is JobState.SUCCEEDED


def test_a_restart_keeps_a_job_waiting_and_an_approval_made_without_a_daemon_is_applied(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, alice: str, tmp_path: Path) -> None:
    out = tmp_path / "events"
    notify_config(root, f'on = ["waiting_for_approval"]\ncommand = {recorder(out)}\n')
    make_pipeline("p", GATED)
    with daemon(root):
        wait_for(lambda: waiting(root, "dev"), what="dev to wait for approval")
        wait_for(lambda: len(received(out)) == 1, what="the notification")
    with daemon(root):  # a new daemon: still waiting, and not told again
        time.sleep(0.5)
        assert waiting(root, "dev") and jstatus(root, "p", "dev").attempts == ()
    assert cli("approve", "p", "dev", "-m", "go").exit_code == 0  # no daemon: the request waits in the inbox
    with daemon(root):
        wait_for(lambda: waiting(root, "release"), what="release to wait for approval")
        wait_for(lambda: len(received(out)) == 2, what="the second notification")
    dev = jstatus(root, "p", "dev")
    assert dev.state is JobState.SUCCEEDED and dev.attempts[0].approval is not None
    assert dev.attempts[0].approval.comment == "go"
    events = received(out)
    assert [(e["event"], e["job"], e["state"]) for e in events] == [
        ("waiting_for_approval", "dev", "approval"), ("waiting_for_approval", "release", "approval")]
    assert events[0]["text"] == "Clowder: p/dev is waiting for approval: clowder approve p dev (or clowder reject)"


def test_a_rejection_is_told_once_as_such_and_a_rejected_job_retried_waits_for_approval_again(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, alice: str, tmp_path: Path) -> None:
    out = tmp_path / "events"
    notify_config(root, f'on = ["waiting_for_approval", "job_failed", "pipeline_failed"]\ncommand = {recorder(out)}\n')
    make_pipeline("p", {k: GATED[k] for k in ("plan", "dev")})
    with daemon(root):
        for n, comment in enumerate(("not yet", "still no"), 1):
            wait_for(lambda: waiting(root, "dev"), what="dev to wait")
            assert cli("reject", "p", "dev", "-m", comment).exit_code == 0
            wait_for(lambda: pstate(root, "p") is PipelineState.FAILED, what="the pipeline to fail")
            assert jstatus(root, "p", "dev").message == f"rejected by alice: {comment}"
            wait_for(lambda: len(received(out)) == 3 * n, what=f"rejection {n} told")  # noqa: B023
            assert cli("retry", "p", "dev").exit_code == 0
        wait_for(lambda: waiting(root, "dev"), what="dev to wait again")
        assert cli("approve", "p", "dev").exit_code == 0
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, what="the pipeline to succeed")
    events = received(out)
    assert [(e["event"], e["job"]) for e in events] == [
        ("waiting_for_approval", "dev"), ("job_failed", "dev"), ("pipeline_failed", "")] * 2 + [
        ("waiting_for_approval", "dev")]
    rejected = [e for e in events if e["event"] == "job_failed"]
    assert [e["text"] for e in rejected] == ["Clowder: p/dev was rejected by alice: not yet",
                                             "Clowder: p/dev was rejected by alice: still no"]
    assert [(e["approval"]["verdict"], e["approval"]["by"], e["approval"]["comment"]) for e in rejected] == [
        ("rejected", "alice", "not yet"), ("rejected", "alice", "still no")]
    assert (rejected[0]["state"], rejected[0]["message"]) == ("failed", "rejected by alice: not yet")
    variables = Path(f"{out}.env").read_text().splitlines()
    assert "job_failed|p|dev|0|failed|rejected by alice: not yet" in variables


def test_approve_and_reject_through_the_api_need_the_token_and_record_web(root: Root,
                                                                          make_pipeline: MakePipeline) -> None:
    pytest.importorskip("fastapi")
    from tests.test_server import client

    make_pipeline("p", GATED)
    with client(root) as (c, p), daemon(root):
        wait_for(lambda: waiting(root, "dev"), what="dev to wait for approval")
        detail = c.get("/api/pipelines/p/jobs/dev").json()
        assert (detail["state"], detail["actions"]) == ("approval", ["cancel", "approve", "reject"])
        assert c.post("/api/pipelines/p/jobs/dev/approve").status_code == 401
        wrong = c.post("/api/pipelines/p/jobs/dev/approve", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert not any(root.pipeline("p").requests_dir.glob("*.toml"))
        auth = {"Authorization": f"Bearer {p.token}"}
        refused = c.post("/api/pipelines/p/jobs/plan/approve", headers=auth)
        assert (refused.status_code, refused.json()) == (
            409, {"detail": "p/plan has succeeded; only a job waiting for approval can be approved"})
        assert c.post("/api/pipelines/p/jobs/nope/approve", headers=auth).status_code == 404
        r = c.post("/api/pipelines/p/jobs/dev/approve", headers=auth, json={"comment": "ok from the page"})
        assert r.status_code == 202 and r.json()["action"] == "approve"
        wait_for(lambda: waiting(root, "release"), what="release to wait for approval")
        assert c.post("/api/pipelines/p/jobs/release/reject", headers=auth).status_code == 202
        wait_for(lambda: pstate(root, "p").terminal, what="the pipeline to end")
        shown = c.get("/api/pipelines/p/jobs/dev").json()
        assert shown["attempts"][0]["approval"]["by"] == "web"
        assert shown["approval"]["comment"] == "ok from the page" and shown["approval"]["verdict"] == "approved"
        assert c.get("/api/pipelines/p/jobs/release").json()["approval"]["verdict"] == "rejected"
    dev = jstatus(root, "p", "dev")
    assert dev.attempts[0].approval is not None
    assert (dev.attempts[0].approval.by, dev.attempts[0].approval.comment) == ("web", "ok from the page")
    assert jstatus(root, "p", "release").message == "rejected by web"


def test_clowder_run_waits_at_a_gate_until_approved(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                    alice: str) -> None:
    """`clowder run` stops at the gate and goes on once someone approves from another shell."""
    make_pipeline("p", {k: GATED[k] for k in ("plan", "dev")})
    lines: list[str] = []
    driver = Driver(root, log=lines.append)

    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(driver.serve(until_done=True)), daemon=True)
    thread.start()
    try:
        wait_for(lambda: waiting(root, "dev"), what="dev to wait")
        assert any(line.endswith("dev waiting for approval") for line in lines), lines
        assert cli("approve", "p", "dev").exit_code == 0
        thread.join(timeout=60)
    finally:
        driver.stop()
        thread.join(timeout=10)
    assert result == [True]
    assert any("dev approved by alice" in line for line in lines), lines


def test_validate_accepts_manual_and_names_a_bad_when(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    needs = 'command = ["true"]\nneeds = [{{ job = "a", when = "{}" }}]\n'
    make_pipeline("p", {"a": 'command = ["true"]\n', "b": needs.format("manual")})
    assert cli("validate").exit_code == 0
    make_pipeline("q", {"a": 'command = ["true"]\n', "b": needs.format("manaul")})
    r = cli("validate")
    assert r.exit_code == 2 and "q/jobs/b.toml: needs[0].when:" in r.output and "manual" in r.output


def test_the_page_shows_the_gate_and_its_approve_button_starts_the_job(root: Root, make_pipeline: MakePipeline) -> None:
    from tests.test_server import CHROMIUM, CHROMIUM_ARGS, serving

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    make_pipeline("p", {k: GATED[k] for k in ("plan", "dev")})
    with serving(root) as p, daemon(root), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: dialog.accept("looks good from here"))
            page.goto(f"{p.url}?token={p.token}#/p/p/dev")
            node = page.locator('g.node[data-job="dev"]')
            sync_api.expect(node).to_have_attribute("data-state", "approval", timeout=15_000)
            sync_api.expect(page.locator("#job-message")).to_contain_text("waiting for approval")
            sync_api.expect(page.locator("#reject-job")).to_be_visible()
            sync_api.expect(page.locator("#retry-job")).to_be_hidden()
            page.locator("#approve-job").click()
            sync_api.expect(page.locator("#toast")).to_have_text("approve of dev requested")
            sync_api.expect(node).to_have_attribute("data-state", "succeeded", timeout=15_000)
            sync_api.expect(page.locator("#approve-job")).to_be_hidden()
            # Who let it start, when and why, in the page's `clowder why` line.
            sync_api.expect(page.locator("#job-why")).to_contain_text(
                "and web approved it at ", timeout=15_000)
            sync_api.expect(page.locator("#job-why")).to_contain_text("UTC: looks good from here")
        finally:
            browser.close()
    approval = jstatus(root, "p", "dev").attempts[0].approval
    assert approval is not None and (approval.by, approval.comment) == ("web", "looks good from here")


def test_decisions_without_a_request_id_in_a_hand_written_status_are_indexed_each(
        root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    # A status written by hand (or by an older Clowder) may carry decisions without the request
    # that made them: each is still a decision of its own, for reindex as for `status --json`.
    make_pipeline("p", {"dev": 'command = "true"\n',
                        "ship": 'command = "true"\nneeds = [{ job = "dev", when = "manual" }]\n'})
    paths = root.pipeline("p")
    paths.status_dir.mkdir(parents=True, exist_ok=True)
    at = ["2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z"]
    attempts = "".join(
        f'[[attempts]]\nnumber = {n}\nstate = "{state}"\nstarted_at = {at[n - 1]}\nended_at = {at[n - 1]}\n'
        f'[attempts.approval]\nverdict = "approved"\nby = "alice"\nat = {at[n - 1]}\ncomment = "go {n}"\n'
        for n, state in ((1, "failed"), (2, "succeeded")))
    paths.job_status_file("ship").write_text(f'job = "ship"\nstate = "succeeded"\nattempt = 2\n{attempts}')
    reindex = cli("reindex")
    assert reindex.exit_code == 0, reindex.output
    shown = json.loads(cli("status", "p", "--json").output)
    ship = next(j for j in shown[0]["jobs"] if j["name"] == "ship")
    assert [a["comment"] for a in ship["approvals"]] == ["go 1", "go 2"]
    with sqlite3.connect(root.index_file) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT comment FROM approvals")) == ["go 1", "go 2"]
    fsck = cli("fsck")
    assert fsck.exit_code == 0, fsck.output
