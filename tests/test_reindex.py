"""`clowder reindex`'s bulk load: the triggers and secondary indexes come off while the rows go in
and come back after, so the rebuilt file is the migrated schema with the same rows and counts."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clowder.index import reindex
from clowder.index.db import connect
from clowder.index.schema import migrate
from clowder.state import (
    Attempt,
    JobState,
    JobStatus,
    PipelineState,
    PipelineStatus,
    job_status_to_toml,
    pipeline_status_to_toml,
)
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline, write
from tests.test_index import _counts, recorded

T0 = datetime(2026, 1, 1, 10, tzinfo=UTC)


def _schema(path: Path) -> list[tuple[Any, ...]]:
    """The file's tables, indexes and triggers; not SQLite's own statistics (PRAGMA optimize's)."""
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                   "WHERE name NOT LIKE 'sqlite_stat%'").fetchall())
    finally:
        conn.close()


def _statuses(i: int) -> dict[str, JobStatus]:
    """Jobs of pipeline number `i` in every state a live root has: ended, failed, running, retrying."""
    start = T0 + timedelta(minutes=i)
    ok = Attempt(1, JobState.SUCCEEDED, start, start + timedelta(seconds=3), exit_code=0)
    failed = Attempt(1, JobState.FAILED, start, start + timedelta(seconds=2), exit_code=1)
    return {
        "a": JobStatus("a", JobState.SUCCEEDED, 1, "", (ok,)),
        "b": JobStatus("b", JobState.FAILED, 1, "attempt 1 failed: exit code 1", (failed,)),
        "c": JobStatus("c", JobState.RUNNING, 1, "", (Attempt(1, JobState.RUNNING, start, pid=4242),)),
        "d": JobStatus("d", JobState.RETRYING, 1, "attempt 1 failed: exit code 1; retry 1 of 2", (failed,),
                       retry_at=start + timedelta(hours=1)),
    }


def _mixed_root(root: Root, make_pipeline: MakePipeline, pipelines: int) -> None:
    """`pipelines` pipelines of five jobs (e never started), a status file that cannot be read, and a
    status file for a job the spec does not have."""
    jobs = {"a": 'command = "true"\n', "b": 'command = "false"\nneeds = ["a"]\n',
            "c": 'command = "sleep 60"\nneeds = ["a"]\n', "d": 'command = "false"\nretries = 2\n',
            "e": 'command = "true"\nneeds = ["b"]\n'}
    for i in range(pipelines):
        paths = root.pipeline(f"m{i:03d}")
        make_pipeline(paths.name, jobs)
        for job, status in _statuses(i).items():
            write(paths.job_status_file(job), job_status_to_toml(status))
        write(paths.status_file, pipeline_status_to_toml(PipelineStatus(PipelineState.RUNNING, T0)))
    write(root.pipeline("m000").job_status_file("a"), "state = [unclosed\n")
    write(root.pipeline("m001").job_status_file("gone"), job_status_to_toml(_statuses(1)["a"]))


def test_a_rebuilt_index_has_the_schema_of_a_migrated_one(root: Root, make_pipeline: MakePipeline) -> None:
    """Its triggers and indexes were taken off for the load and made again from their own SQL."""
    _mixed_root(root, make_pipeline, 3)
    recorded(root)  # rebuilds the index
    migrated = root.path / "empty.sqlite"
    conn = connect(migrated, readonly=False)
    migrate(conn)
    conn.close()
    schema = _schema(root.index_file)
    assert schema == _schema(migrated)
    assert {(t, n) for t, n, _, _ in schema} >= {("trigger", "job_counts_status_added"),
                                                 ("index", "consumption_by_blob"), ("index", "jobs_by_state")}


def test_reindex_of_a_live_root_leaves_nothing_for_fsck_and_counts_every_job(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    """Enough pipelines that reindex reads them in forked readers, with running, ended, failed and
    retrying jobs, real workspaces (consumption) and files that cannot be read."""
    _mixed_root(root, make_pipeline, reindex.PARALLEL_MIN + 6)
    recorded(root)
    result = cli("reindex")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"indexed {reindex.PARALLEL_MIN + 7} pipelines, ")
    result = cli("fsck")
    assert (result.exit_code, result.output) == (0, "the index and the workspaces match the tree\n")
    conn = sqlite3.connect(root.index_file)
    kept, counted = _counts(conn)
    consumption = conn.execute("SELECT job, attempt, upstream, path FROM consumption ORDER BY 1, 2, 4").fetchall()
    conn.close()
    assert kept == counted
    by_pipeline = {(p, state): n for p, state, n in kept}
    assert {k: v for k, v in by_pipeline.items() if k[0] == "m002"} == {
        ("m002", "succeeded"): 1, ("m002", "failed"): 1, ("m002", "running"): 1, ("m002", "retrying"): 1,
        ("m002", "pending"): 1}
    assert by_pipeline[("m000", "pending")] == 2  # e, and a whose status file cannot be read
    assert ("m001", "pending") in by_pipeline and sum(n for (p, _), n in by_pipeline.items() if p == "m001") == 5
    assert consumption == [("dev", 1, "plan", ".clowder/plan/output.json"), ("dev", 1, "plan", "plan.md"),
                           ("lint", 1, "dev", "app.py"), ("test", 1, "dev", "app.py"), ("test", 2, "dev", "app.py")]
