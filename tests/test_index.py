"""The SQLite index: kept by the scheduler, equal to a rebuild, checked by fsck, queried read-only,
and behind `clowder status` with the tree as fallback."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clowder import index
from clowder.driver import Driver
from clowder.fsio import atomic_write
from clowder.index import recorder, reindex
from clowder.stamp import RACY_NS
from clowder.state import (
    Artifact,
    Attempt,
    JobState,
    JobStatus,
    PipelineState,
    PipelineStatus,
    Usage,
    job_status_to_toml,
    pipeline_status_to_toml,
    read_job_status,
)
from clowder.tree import Root
from clowder.views import indexed, reader
from clowder.views.records import summarize
from tests.conftest import REPO, Invoke, MakePipeline, write
from tests.test_cli import rows
from tests.test_driver import wait_for

OUTPUT = '{"verdict": "pass", "findings": [{"file": "a.txt", "line": 3}]}'
JOBS = {
    "a": "command = " + json.dumps(f"mkdir -p .clowder/a && printf '%s' '{OUTPUT}' > .clowder/a/output.json && "
                                   "echo A > a.txt") + "\n",
    "b": 'command = "echo B > b.txt"\nneeds = ["a"]\n',
    "c": 'command = "echo C > c.txt"\nneeds = ["b"]\n',
    "flaky": ('command = "test -f once && echo fixed > f.txt || { touch once; exit 3; }"\nneeds = ["a"]\n'
              'retries = 1\nbackoff = { initial = "0s" }\n'),
    "lint": 'command = "exit 1"\nneeds = ["a"]\nallow_failure = true\n',
}


def run(root: Root, name: str = "p") -> bool:
    return Driver(root, only=[name], log=lambda s: None).serve(until_done=True)


def rebuilt(root: Root) -> dict[str, list[tuple[Any, ...]]]:
    reindex.rebuild(root)
    return index.dump_index(root)


def clowder(root: Root, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "clowder", *args, "--root", str(root.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def attempt(ws: Path, number: int, state: JobState, files: dict[str, str], upstream: Path | None = None,
            consumed: dict[str, str] | None = None) -> Attempt:
    """Commit `files` in the workspace `ws` (cloned from `upstream` if new) as an attempt would."""
    if not ws.exists():
        if upstream is not None:
            git(ws.parent, "clone", "-q", str(upstream), ws.name)
        else:
            ws.mkdir(parents=True)
            git(ws, "init", "-q")
    head = subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=ws, capture_output=True, text=True)
    base = head.stdout.strip() if head.returncode == 0 else None
    for path, text in files.items():
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text(text)
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "--allow-empty", "-m", f"attempt {number}")
    blobs = dict(line.split(" ", 2)[2].split("\t")[::-1] for line in git(ws, "ls-tree", "-r", "HEAD").splitlines())
    artifacts = tuple(Artifact(p, blobs[p], len(t.encode()), "model_output" if p.endswith("output.json") else "file")
                      for p, t in sorted(files.items()))
    started = datetime(2026, 1, 1, 10, tzinfo=UTC) + timedelta(minutes=number)
    return Attempt(number, state, started, started + timedelta(seconds=2.5), exit_code=0 if state.value ==
                   "succeeded" else 1, base_commit=base, commit=git(ws, "rev-parse", "HEAD"),
                   consumed=consumed or {}, artifacts=artifacts)


def recorded(root: Root) -> Root:
    """Pipeline `s` as the scheduler would leave it, with real workspaces: plan -> dev -> test,
    test failing once; plan and test write structured outputs."""
    paths = root.pipeline("s")
    write(paths.spec_file, 'prompt = "build it"\n')
    for job, needs in (("plan", []), ("dev", ["plan"]), ("test", ["dev"]), ("lint", ["dev"])):
        write(paths.job_file(job), f'command = "true"\nneeds = {json.dumps(needs)}\n')
    ws = paths.workspaces_dir
    plan = replace(attempt(ws / "plan", 1, JobState.SUCCEEDED, {"plan.md": "the plan\n",
                                                               ".clowder/plan/output.json": OUTPUT}),
                   usage=Usage(1200, 300, 0.0125))
    dev = attempt(ws / "dev", 1, JobState.SUCCEEDED, {"app.py": "print('hi')\n"}, ws / "plan",
                  {"plan": plan.commit or ""})
    test1 = attempt(ws / "test", 1, JobState.FAILED, {".clowder/test/output.json": '{"verdict": "fail"}'},
                    ws / "dev", {"dev": dev.commit or ""})
    test2 = attempt(ws / "test", 2, JobState.SUCCEEDED, {".clowder/test/output.json": '{"verdict": "pass"}',
                                                        "report.txt": "ok\n"}, consumed={"dev": dev.commit or ""})
    lint = attempt(ws / "lint", 1, JobState.FAILED, {"lint.log": "E501\n"}, ws / "dev", {"dev": dev.commit or ""})
    for job, attempts in (("plan", (plan,)), ("dev", (dev,)), ("test", (test1, test2)), ("lint", (lint,))):
        last = attempts[-1]
        write(paths.job_status_file(job), job_status_to_toml(JobStatus(job, last.state, last.number, "", attempts)))
    write(paths.status_file, pipeline_status_to_toml(PipelineStatus(PipelineState.SUCCEEDED)))
    reindex.rebuild(root)
    return root


def blob_of(root: Root, job: str, path: str) -> str:
    status = read_job_status(root.pipeline("s").job_status_file(job), job)
    return next(x.blob for a in status.attempts for x in a.artifacts if x.path == path)


# -- the kept index equals a rebuild --------------------------------------------------------------

def test_the_index_kept_by_the_scheduler_equals_a_rebuild(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", JOBS)
    make_pipeline("q", {"x": 'command = "echo x > x.txt"\n', "y": 'command = "false"\nneeds = ["x"]\n'})
    assert run(root, "p")
    assert not run(root, "q")
    kept = index.dump_index(root)
    assert len(kept["jobs"]) == 7 and len(kept["attempts"]) == 8
    assert kept["artifacts"] and kept["consumption"] and kept["model_outputs"]
    assert kept == rebuilt(root)


def test_the_index_records_consumption_and_model_outputs(root: Root) -> None:
    recorded(root)
    rows = index.query(root, "SELECT job, attempt, upstream, upstream_attempt, path FROM consumption "
                             "ORDER BY job, attempt, path").rows
    assert rows == [("dev", 1, "plan", 1, ".clowder/plan/output.json"), ("dev", 1, "plan", 1, "plan.md"),
                    ("lint", 1, "dev", 1, "app.py"), ("test", 1, "dev", 1, "app.py"), ("test", 2, "dev", 1, "app.py")]
    found = index.query(root, "SELECT a.job, a.attempt, json_extract(m.content, '$.findings[0].line') "
                              "FROM artifacts a JOIN model_outputs m ON m.blob = a.blob "
                              "WHERE json_extract(m.content, '$.verdict') = 'pass' ORDER BY a.job")
    assert found.rows == [("plan", 1, 3), ("test", 2, None)]
    consumers = index.query(root, readme_queries()[2], {"blob": blob_of(root, "plan", "plan.md")}).rows
    assert consumers == [("s", "dev"), ("s", "lint"), ("s", "test")]  # lint and test saw plan.md through dev
    spent = index.query(root, "SELECT job, input_tokens, output_tokens, cost_usd FROM attempts "
                              "WHERE cost_usd IS NOT NULL").rows
    assert spent == [("plan", 1200, 300, 0.0125)]


@pytest.mark.parametrize("kill_after", ["a", "b"])
def test_the_index_equals_a_rebuild_after_the_daemon_is_killed_and_a_run_finishes(
    root: Root, make_pipeline: MakePipeline, kill_after: str
) -> None:
    jobs = {name: text.replace('command = "', 'command = "sleep 0.3; ', 1) for name, text in JOBS.items()}
    make_pipeline("p", jobs)
    # An attempt being launched when the daemon dies has no process to adopt: it is lost after this.
    root.config_file.write_text(root.config_file.read_text().replace('heartbeat_timeout = "30s"',
                                                                     'heartbeat_timeout = "1s"'))
    daemon = clowder(root, "watch")
    try:
        wait_for(lambda: read_job_status(root.pipeline("p").job_status_file(kill_after), kill_after).state.value
                 == "succeeded", what=f"{kill_after} to succeed")
    finally:
        daemon.kill()  # SIGKILL: nothing flushed, nothing closed
        daemon.communicate(timeout=10)
    finish = clowder(root, "run", "p")
    _, err = finish.communicate(timeout=60)
    assert finish.returncode in (0, 1), err
    kept = index.dump_index(root)
    assert {r[1] for r in kept["jobs"]} == set(JOBS)
    assert {r[2] for r in kept["jobs"]} <= {"succeeded", "failed", "skipped"}
    assert kept == rebuilt(root)


def test_a_reindex_under_a_running_daemon_is_noticed(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "true"\n'})
    gate = root.path / "gate"
    make_pipeline("q", {"a": f'command = "while [ ! -e {gate} ]; do sleep 0.05; done"\n',
                        "b": 'command = "echo b > b.txt"\nneeds = ["a"]\n'})
    driver = Driver(root, log=lambda s: None)
    thread = threading.Thread(target=driver.serve, daemon=True)
    thread.start()
    try:
        wait_for(lambda: read_job_status(root.pipeline("q").job_status_file("a"), "a").state.value == "running")
        reindex.rebuild(root)  # swaps the file under the daemon
        gate.touch()
        wait_for(lambda: read_job_status(root.pipeline("q").job_status_file("b"), "b").state.value == "succeeded")
        wait_for(lambda: ("q", "b", "succeeded") in
                 {r[:3] for r in index.dump_index(root)["jobs"]}, what="the daemon to record in the new file")
    finally:
        driver.stop()
        thread.join(timeout=10)
    conn = sqlite3.connect(root.index_file)
    kept, counted = _counts(conn)  # the rebuild's bulk load gave the triggers back: the daemon's writes count
    conn.close()
    assert kept == counted == [("p", "succeeded", 1), ("q", "succeeded", 2)]
    assert index.dump_index(root) == rebuilt(root)


def _recorded_jobs(root: Root) -> set[tuple[Any, ...]]:
    """(pipeline, job, state) rows of the index; none while it is missing or being made."""
    try:
        return {r[:3] for r in index.dump_index(root)["jobs"]}
    except (index.IndexUnavailable, sqlite3.Error):
        return set()


def test_an_index_deleted_under_a_running_daemon_is_made_again(root: Root, make_pipeline: MakePipeline) -> None:
    gate = root.path / "gate"
    make_pipeline("q", {"a": f'command = "while [ ! -e {gate} ]; do sleep 0.05; done"\n',
                        "b": 'command = "echo b > b.txt"\nneeds = ["a"]\n'})
    lines: list[str] = []
    driver = Driver(root, log=lines.append)
    thread = threading.Thread(target=driver.serve, daemon=True)
    thread.start()
    try:
        wait_for(lambda: ("q", "a", "running") in _recorded_jobs(root), timeout=60, what="a running, in the index")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{root.index_file}{suffix}").unlink(missing_ok=True)
        # The daemon looks whether its file is still there at a write, at most once a CHECK_EVERY:
        # let that time pass, then make it write (job a ends), and look for the new file.
        time.sleep(recorder.CHECK_EVERY * 1.5)
        gate.touch()
        wait_for(lambda: ("q", "b", "succeeded") in _recorded_jobs(root), timeout=60,
                 what="the daemon to record in a new file")
    finally:
        gate.touch()  # a failed wait must not leave job a waiting for ever
        driver.stop()
        thread.join(timeout=30)
    assert any("replaced or removed" in line for line in lines)
    assert index.dump_index(root) == rebuilt(root)


def test_a_broken_index_never_stops_the_scheduler(root: Root, make_pipeline: MakePipeline) -> None:
    root.index_file.parent.mkdir(parents=True, exist_ok=True)
    root.index_file.write_text("this is not a database")
    make_pipeline("p", JOBS)
    lines: list[str] = []
    assert Driver(root, only=["p"], log=lines.append).serve(until_done=True)
    assert any(line.startswith("index: ") for line in lines)
    assert [line for line in (REPO / "README.md").read_text().splitlines() if "clowder reindex" in line]
    assert reader.reports(root)[0].state == "succeeded"  # from the tree


# -- fsck -----------------------------------------------------------------------------------------

def test_fsck_finds_nothing_after_a_run(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", JOBS)
    run(root)
    result = cli("fsck")
    assert (result.exit_code, result.output) == (0, "the index and the workspaces match the tree\n")


def test_fsck_finds_an_edited_status_file(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", JOBS)
    run(root)
    f = root.pipeline("p").job_status_file("b")
    f.write_text(f.read_text().replace('state = "succeeded"', 'state = "failed"', 1))
    result = cli("fsck")
    assert result.exit_code == 1
    assert "changed jobs p/b: state is 'succeeded' in the index, 'failed' in the tree\n" in result.output


def test_fsck_finds_a_missing_and_an_extra_row(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", JOBS)
    run(root)
    paths = root.pipeline("p")
    paths.job_status_file("c").unlink()
    write(paths.job_status_file("new"), 'state = "pending"\nattempt = 0\nmessage = ""\n')
    result = cli("fsck")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "missing jobs p/new: in the tree, not in the index" in lines
    assert "extra jobs p/c: in the index, not in the tree" in lines
    assert "extra attempts p/c/1: in the index, not in the tree" in lines
    assert cli("reindex").exit_code == 0
    assert cli("fsck").exit_code == 0


def test_fsck_finds_a_deleted_workspace_object(root: Root, cli: Invoke) -> None:
    recorded(root)
    assert cli("fsck").exit_code == 0
    blob = blob_of(root, "dev", "app.py")
    objects = list(root.pipeline("s").workspaces_dir.rglob(f"{blob[:2]}/{blob[2:]}"))
    assert objects
    for p in objects:
        p.unlink()
    result = cli("fsck")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"missing object s/dev@1 app.py (blob {blob}): missing from the repository" in lines
    assert f"missing object s/test@1 app.py (blob {blob}): missing from the repository" not in lines  # not its own


def test_fsck_without_an_index(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\n'})
    result = cli("fsck")
    assert result.exit_code == 1
    assert result.output.startswith("missing index: ")


# -- query ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "DELETE FROM jobs",
    "UPDATE jobs SET state = 'failed'",
    "INSERT INTO pipelines (pipeline) VALUES ('x')",
    "DROP TABLE jobs",
    "CREATE TABLE t (x)",
    "ATTACH DATABASE 'other.sqlite' AS other",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 7",
])
def test_query_refuses_writes(root: Root, make_pipeline: MakePipeline, cli: Invoke, sql: str) -> None:
    make_pipeline("p", {"a": 'command = "true"\n'})
    run(root)
    before = index.dump_index(root)
    result = cli("query", sql)
    assert result.exit_code == 2
    assert result.output.startswith("error: query refused: the index is read-only here (")
    assert index.dump_index(root) == before
    assert not (root.path / "other.sqlite").exists()


def test_query_prints_a_table_json_or_csv(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\n', "b": 'command = "false"\nneeds = ["a"]\n'})
    run(root)
    sql = "SELECT job, state, attempt FROM jobs WHERE pipeline = :p ORDER BY job"
    table = cli("query", sql, "--param", "p=p")
    assert [line.split() for line in table.output.splitlines()] == [
        ["job", "state", "attempt"], ["a", "succeeded", "1"], ["b", "failed", "1"]]
    assert json.loads(cli("query", sql, "-p", "p=p", "--json").output) == [
        {"job": "a", "state": "succeeded", "attempt": 1}, {"job": "b", "state": "failed", "attempt": 1}]
    assert cli("query", sql, "-p", "p=p", "--csv").output == "job,state,attempt\na,succeeded,1\nb,failed,1\n"


def test_query_errors_are_bad_input(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    result = cli("query", "SELECT 1")
    assert (result.exit_code, result.output.split(":")[0]) == (2, "error")
    assert "no index yet; run `clowder reindex`" in result.output
    make_pipeline("p", {"a": 'command = "true"\n'})
    cli("reindex")
    result = cli("query", "SELEC 1")
    assert (result.exit_code, result.output) == (2, 'error: query failed: near "SELEC": syntax error\n')
    result = cli("query", "SELECT 1; SELECT 2")
    assert result.exit_code == 2 and "give one SQL statement" in result.output


# -- status ---------------------------------------------------------------------------------------

def test_status_from_the_index_equals_status_from_the_tree(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", JOBS)
    make_pipeline("q", {"a": 'command = "true"\nstage = "build"\n', "b": 'command = "true"\nstage = "test"\n'},
                  spec='prompt = "x"\nstages = ["build", "test"]\n')
    make_pipeline("bad", {"a": 'comand = "true"\n'})
    run(root, "p")
    settle()  # a pipeline written within the last moment is read from the tree (clowder.stamp)
    reindex.rebuild(root)
    names = ["bad", "p", "q"]
    assert sorted(indexed.reports(root, names)) == names
    assert reader.reports(root) == reader.reports(root, use_index=False)


def overview(root: Root) -> list[tuple[str, str, str, str]]:
    """The lines of `clowder status` over every pipeline."""
    return [(e.name, e.state, e.summary, e.message) for e in reader.entries(root, ended_from_status=True)]


def overview_from_tree(root: Root) -> list[tuple[str, str, str, str]]:
    return [(r.name, r.state, summarize(r.counts()), r.message) for r in reader.reports(root, use_index=False)]


def test_status_of_every_pipeline_reads_counts_from_the_index(root: Root, make_pipeline: MakePipeline,
                                                              cli: Invoke) -> None:
    make_pipeline("p", JOBS)
    make_pipeline("bad", {"a": 'comand = "true"\n'})
    make_pipeline("broken", {"a": 'command = "true"\n'})
    write(root.pipeline("broken").status_file, 'state = "running"\nstarted_at = 5\n')
    make_pipeline("waiting", {"a": 'command = "true"\n', "b": 'command = "true"\nneeds = ["a"]\n'})
    run(root, "p")
    settle()
    reindex.rebuild(root)
    expected = overview_from_tree(root)
    assert [row[:3] for row in expected] == [
        ("bad", "invalid", "1 pending"), ("broken", "broken", "no jobs"),
        ("p", "succeeded", "4 succeeded, 1 failed"), ("waiting", "pending", "2 pending")]
    assert index.overview_rows(root, [r[0] for r in expected]).keys() == {"bad", "broken", "p", "waiting"}
    assert overview(root) == expected
    assert rows(cli("status").stdout)[3] == ["p", "succeeded", "4", "succeeded,", "1", "failed"]


def test_status_of_an_ended_pipeline_ignores_spec_edits_in_place_but_not_new_jobs(
        root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", JOBS)
    make_pipeline("q", {"a": 'command = "true"\n'})
    run(root, "p")
    settle()
    reindex.rebuild(root)
    write(root.pipeline("p").job_file("c"), 'command = "echo C > c.txt"\nneeds = ["b"]\nretries = 2\n')
    write(root.pipeline("q").job_file("a"), 'comand = "true"\n')  # q has not ended: now invalid
    assert index.overview_rows(root, ["p", "q"]).keys() == {"p"}  # p's row cannot have changed
    assert overview(root) == overview_from_tree(root)
    assert overview(root)[1][1] == "invalid"
    write(root.pipeline("p").job_file("d"), 'command = "true"\n')  # a new job changes p's counts
    assert index.overview_rows(root, ["p", "q"]) == {}
    assert overview(root)[0][2] == "1 pending, 4 succeeded, 1 failed"


def test_status_falls_back_to_the_tree_without_an_index(root: Root, make_pipeline: MakePipeline,
                                                       cli: Invoke) -> None:
    make_pipeline("p", JOBS)
    run(root)
    from_index = cli("status", "p").output
    root.index_file.unlink()
    assert indexed.reports(root, ["p"]) == {}
    assert cli("status", "p").output == from_index
    assert cli("status", "--json").exit_code == 0


def test_status_reads_the_tree_where_the_index_is_stale(root: Root, make_pipeline: MakePipeline,
                                                       cli: Invoke) -> None:
    make_pipeline("p", JOBS)
    make_pipeline("q", {"a": 'command = "true"\n'})
    run(root, "p")
    run(root, "q")
    assert sorted(indexed.reports(root, ["p", "q"])) == ["p", "q"]
    f = root.pipeline("p").job_status_file("c")
    text = f.read_text()
    atomic_write(f, text.replace('message = ""', 'message = "edited by hand"', 1))  # as vim or sed -i save
    assert sorted(indexed.reports(root, ["p", "q"])) == ["q"]
    assert "edited by hand" in cli("status", "p").output
    write(root.pipeline("q").job_file("a"), 'command = "true"\nstage = "x"\n')  # a spec edit in place is seen too
    assert indexed.reports(root, ["p", "q"]) == {}


def test_a_status_file_written_in_place_is_not_seen_by_status_but_by_fsck(root: Root, make_pipeline: MakePipeline,
                                                                          cli: Invoke) -> None:
    """Status files have one writer, which renames: `status` checks their directories, not
    each file (clowder.stamp); an in-place edit by hand is a difference fsck reports."""
    make_pipeline("p", JOBS)
    run(root, "p")
    f = root.pipeline("p").job_status_file("c")
    with f.open("r+") as out:  # in place: the directory does not change
        text = out.read()
        out.seek(0)
        out.write(text.replace('message = ""', 'message = "edited by hand"', 1))
    assert "edited by hand" not in cli("status", "p").output
    result = cli("fsck")
    assert result.exit_code == 1 and "edited by hand" in result.output, result.output


def test_status_trusts_a_live_daemon_and_not_a_dead_one(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", JOBS)
    run(root)
    conn = sqlite3.connect(root.index_file)  # play a daemon that died with the pipeline live
    conn.execute("UPDATE freshness SET status_sig = NULL, pid = 999999999")
    conn.commit()
    conn.close()
    assert indexed.reports(root, ["p"]) == {}
    root.lock_file.write_text(f"{os.getpid()}\n")
    conn = sqlite3.connect(root.index_file)
    conn.execute("UPDATE freshness SET pid = ?", (os.getpid(),))
    conn.commit()
    conn.close()
    assert list(indexed.reports(root, ["p"])) == ["p"]


def test_artifacts_read_the_index_and_fall_back_to_the_tree(root: Root, make_pipeline: MakePipeline,
                                                            cli: Invoke) -> None:
    make_pipeline("p", JOBS)
    run(root)
    blob = blob_of_job(root, "a", "a.txt")
    assert indexed.artifacts(root, "p", None, None) is not None
    shown = [cli("artifacts", "p", *args).output for args in ((), ("a",), ("--sha", blob[:6]), ("--json",))]
    assert blob[:12] in shown[2]
    root.index_file.unlink()
    assert indexed.artifacts(root, "p", None, None) is None
    assert [cli("artifacts", "p", *args).output for args in ((), ("a",), ("--sha", blob[:6]), ("--json",))] == shown


def settle() -> None:
    """Let the files written so far age past the window in which a stamp is racy."""
    time.sleep(RACY_NS / 1e9 + 0.01)


def blob_of_job(root: Root, job: str, path: str) -> str:
    status = read_job_status(root.pipeline("p").job_status_file(job), job)
    return next(x.blob for a in status.attempts for x in a.artifacts if x.path == path)


# -- schema ---------------------------------------------------------------------------------------

def test_each_migration_is_recorded_and_an_old_file_is_migrated(root: Root) -> None:
    root.state_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(root.index_file, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "applied_at TEXT NOT NULL)")
    for statement in index.MIGRATIONS[0].statements:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 'x', 'then')")
    conn.close()
    opened = index.Index.open(root)
    assert [r[0] for r in opened.conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == [
        m.version for m in index.MIGRATIONS]
    assert opened.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    opened.close()


def test_each_table_has_a_named_record_of_its_columns(root: Root) -> None:
    """The rows the tree and the daemon write are records whose fields are the table's columns,
    in order: a migration that adds a column without its field (or the reverse) fails here."""
    from clowder.index.rows import RECORDS

    conn = sqlite3.connect(":memory:")
    index.migrate(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(RECORDS) == tables - {"schema_migrations"}
    for table, record in RECORDS.items():
        columns = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
        assert record._fields == columns, table


def test_an_index_from_a_newer_clowder_is_not_used(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\n'})
    settle()
    cli("reindex")
    conn = sqlite3.connect(root.index_file)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 'later')", (index.LATEST + 1,))
    conn.commit()
    conn.close()
    assert indexed.reports(root, ["p"]) == {}
    result = cli("query", "SELECT 1")
    assert result.exit_code == 2 and f"schema version {index.LATEST + 1}" in result.output
    assert cli("reindex").exit_code == 0
    assert list(indexed.reports(root, ["p"])) == ["p"]


# -- the README's queries -------------------------------------------------------------------------

def readme_queries() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Querying the index", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def test_the_readme_documents_queries() -> None:
    assert len(readme_queries()) >= 5


@pytest.mark.parametrize("number", range(len(readme_queries())))
def test_each_readme_query_runs(root: Root, number: int) -> None:
    recorded(root)
    values = {"since": "2026-01-01T09:00:00Z", "pipeline": "s", "job": "test", "verdict": "fail",
              "blob": blob_of(root, "plan", "plan.md")}
    sql = readme_queries()[number]
    params = {name: values[name] for name in re.findall(r":(\w+)", sql)}
    assert index.query(root, sql, params).rows


def test_batches_gathered_by_the_recorder_keep_their_order() -> None:
    from clowder.index.recorder import _Batch, _merged

    def batch(forgets: set[str] | None = None, jobs: dict[tuple[str, str], JobStatus] | None = None) -> _Batch:
        return _Batch(forgets or set(), {}, {}, {}, jobs or {}, False)

    running, done = JobStatus("a", JobState.RUNNING, 1), JobStatus("a", JobState.SUCCEEDED, 1)
    merged = _merged([batch(jobs={("p", "a"): running}), batch(jobs={("p", "a"): done}),
                      batch(forgets={"p"}), batch(jobs={("p", "b"): JobStatus("b")})])
    assert [(b.forgets, b.jobs) for b in merged] == [
        (set(), {("p", "a"): done}),  # a job that started and ended meanwhile is written once
        ({"p"}, {("p", "b"): JobStatus("b")}),  # a forget stays after what came before it
    ]


def _counts(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The trigger-kept counts, and what counting every job row gives."""
    kept = conn.execute("SELECT pipeline, state, n FROM job_counts ORDER BY 1, 2").fetchall()
    counted = conn.execute(
        "SELECT s.pipeline, CASE WHEN j.state IS NULL OR j.problem IS NOT NULL THEN 'pending' ELSE j.state END, "
        "count(*) FROM job_specs s LEFT JOIN jobs j USING (pipeline, job) GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    return kept, counted


def test_the_job_counts_status_shows_follow_every_kind_of_write(root: Root) -> None:
    """`clowder status` reads how many jobs are in each state from counts kept as rows change:
    they must equal counting the jobs after each kind of write the daemon and reindex make."""
    from clowder.index.rows import JobSpecRow, PipelineSpecCols, PipelineStatusCols
    from clowder.snapshot import job_rows

    def spec(job: str, position: int) -> JobSpecRow:
        return JobSpecRow("p", job, position, None, "command", '["true"]', None, None, None, 0, 0, None, None,
                          None, None)

    def status(job: str, state: JobState, problem: str | None = None) -> Any:
        return job_rows("p", JobStatus(job, state, 1 if state is not JobState.PENDING else 0), problem)

    db = index.Index.open(root)
    head = PipelineStatusCols("succeeded", "", None, None, None, None)
    valid = PipelineSpecCols(None, None, 1, None)
    steps: list[tuple[str, Any]] = [
        ("a spec of three jobs", lambda: db.put_spec("p", valid, [spec(j, i) for i, j in enumerate("abc")], [])),
        ("two jobs start", lambda: db.put_jobs([(status("a", JobState.RUNNING), None),
                                                (status("b", JobState.RUNNING), None)])),
        ("one ends, one's status becomes unreadable", lambda: db.put_jobs([
            (status("a", JobState.SUCCEEDED), status("a", JobState.RUNNING)),
            (status("b", JobState.FAILED, problem='["x", "", "bad"]'), status("b", JobState.RUNNING))])),
        ("a status file for a job not in the spec", lambda: db.put_jobs([(status("z", JobState.FAILED), None)])),
        ("the spec loses a job and gains the one with a status", lambda: db.put_spec(
            "p", valid, [spec("a", 0), spec("c", 1), spec("z", 2)], [])),
        ("every status read again", lambda: db.put_statuses("p", head, [
            status("a", JobState.SUCCEEDED), status("c", JobState.SKIPPED)])),
        ("the pipeline is forgotten", lambda: db.forget("p")),
    ]
    seen = []
    for what, write_rows in steps:
        with db.transaction():
            write_rows()
        kept, counted = _counts(db.conn)
        assert kept == counted, what
        seen.append(kept)
    assert seen[2] == [("p", "pending", 2), ("p", "succeeded", 1)]  # the unreadable one counts as pending
    assert seen[5] == [("p", "pending", 1), ("p", "skipped", 1), ("p", "succeeded", 1)]
    assert seen[-1] == []
    db.close()


def test_an_index_of_an_older_schema_gets_its_job_counts(root: Root, make_pipeline: MakePipeline) -> None:
    """An index written before the counts existed is migrated with them: status is unchanged."""
    make_pipeline("p", {"a": 'command = "true"\n', "b": 'command = "false"\nneeds = ["a"]\n'})
    assert not run(root)
    conn = sqlite3.connect(root.index_file, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE job_counts")
    from clowder.index.schema import JOB_COUNTS

    counts_version = next(m.version for m in index.MIGRATIONS if m.statements is JOB_COUNTS)
    conn.execute("DELETE FROM schema_migrations WHERE version >= ?", (counts_version,))  # the latest one
    conn.close()
    index.Index.open(root).close()
    conn = sqlite3.connect(root.index_file)
    kept, counted = _counts(conn)
    conn.close()
    assert kept == counted == [("p", "failed", 1), ("p", "succeeded", 1)]
