"""Opening the index: read-only for the readers, and for writing (the daemon's incremental
updates and the rebuild's bulk load) through `Index`, the one writer."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clowder.index.errors import IndexUnavailable
from clowder.index.rows import EdgeRow, JobSpecRow, ModelOutputRow, PipelineSpecCols, PipelineStatusCols
from clowder.index.schema import (
    BY_PIPELINE,
    CONSUMPTION,
    LATEST,
    PIPELINE_SPEC,
    PIPELINE_STATUS,
    STATUS_TABLES,
    migrate,
    version,
)
from clowder.tree import Root

if TYPE_CHECKING:  # snapshot reads and validates specs: only reindex and fsck need it at run time
    from clowder.snapshot import JobRows

BUSY_TIMEOUT_MS = 5000


def connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + ("?mode=ro" if readonly else "")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def connect_readonly(root: Root) -> sqlite3.Connection:
    """A read-only connection to a current index; IndexUnavailable if there is none."""
    path = root.index_file
    if not path.is_file():
        raise IndexUnavailable(f"{path}: no index yet; run `clowder reindex` (or let `clowder watch` keep one)")
    try:
        conn = connect(path, readonly=True)
        found = version(conn)
    except sqlite3.Error as e:
        raise IndexUnavailable(f"{path}: cannot read the index ({e}); run `clowder reindex`") from e
    if found != LATEST:
        conn.close()
        raise IndexUnavailable(f"{path}: the index has schema version {found}, this clowder reads {LATEST}; "
                          "run `clowder reindex`")
    return conn


def placeholders(n: int) -> str:
    return ", ".join("?" * n)


class Index:
    """The index open for writing: the daemon's incremental updates and the rebuild's bulk load."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)

    @classmethod
    def open(cls, root: Root) -> Index:
        root.state_dir.mkdir(parents=True, exist_ok=True)
        conn = connect(root.index_file, readonly=False)
        try:
            # WAL: readers never wait for the writer. NORMAL: a commit does not fsync; the
            # index is a cache, and the tree it is rebuilt from is fsync'd.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)
            return cls(root.index_file, conn)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def replaced(self) -> bool:
        """Whether the file at our path is no longer the one we hold (a reindex swapped it, or
        someone deleted it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _insert(self, table: str, rows: Sequence[tuple[Any, ...]], verb: str = "INSERT") -> None:
        """Insert records of clowder.index.rows (the SQL boundary: any table's)."""
        if rows:
            self.conn.executemany(f"{verb} INTO {table} VALUES ({placeholders(len(rows[0]))})", rows)

    # Whole pipelines.

    def forget(self, pipeline: str) -> None:
        self.conn.execute("DELETE FROM pipelines WHERE pipeline = ?", (pipeline,))
        self.conn.execute("DELETE FROM freshness WHERE pipeline = ?", (pipeline,))
        for table in BY_PIPELINE:
            self.conn.execute(f"DELETE FROM {table} WHERE pipeline = ?", (pipeline,))

    def put_statuses(self, pipeline: str, status: PipelineStatusCols, jobs: Iterable[JobRows]) -> None:
        """Replace a pipeline's status rows (status.toml and status/*.toml) with these."""
        self.put_status(pipeline, status)
        for table in STATUS_TABLES:
            self.conn.execute(f"DELETE FROM {table} WHERE pipeline = ?", (pipeline,))
        for j in jobs:
            self._insert("jobs", [j.job])
            self._insert("attempts", j.attempts)
            self._insert("artifacts", j.artifacts)
            self._insert("consumed", j.consumed)
            self._insert("approvals", j.approvals)
        self.conn.execute(CONSUMPTION + " AND c.pipeline = ?", (pipeline,))

    def put_status(self, pipeline: str, status: PipelineStatusCols) -> None:
        self._upsert_pipeline(pipeline, PIPELINE_STATUS, status)

    def put_spec(self, pipeline: str, head: PipelineSpecCols, job_specs: Sequence[JobSpecRow],
                 edges: Sequence[EdgeRow]) -> None:
        self._upsert_pipeline(pipeline, PIPELINE_SPEC, head)
        self.conn.execute("DELETE FROM job_specs WHERE pipeline = ?", (pipeline,))
        self.conn.execute("DELETE FROM edges WHERE pipeline = ?", (pipeline,))
        self._insert("job_specs", job_specs)
        self._insert("edges", edges)

    def _upsert_pipeline(self, pipeline: str, columns: Sequence[str], values: tuple[Any, ...]) -> None:
        names = ", ".join(columns)
        update = ", ".join(f"{c} = excluded.{c}" for c in columns)
        self.conn.execute(f"INSERT INTO pipelines (pipeline, {names}) VALUES ({placeholders(len(columns) + 1)}) "
                          f"ON CONFLICT (pipeline) DO UPDATE SET {update}", (pipeline, *values))

    # Jobs as the daemon changes them: a few statements per batch of jobs, not per job (each
    # statement hands the GIL back and forth with the scheduling threads).

    def put_jobs(self, changes: Sequence[tuple[JobRows, JobRows | None]]) -> list[tuple[str, str]]:
        """Record jobs' statuses, each given what was recorded for it before (None: unknown).
        Returns the (pipeline, job) whose attempts, artifacts or consumption changed: `derive`
        must run for those."""
        self._insert("jobs", [new.job for new, _ in changes], "INSERT OR REPLACE")
        self._put_approvals(changes)
        changed: list[tuple[str, str]] = []
        stale: dict[str, list[tuple[str, str]]] = {"attempts": [], "artifacts": [], "consumed": []}
        rows: dict[str, list[tuple[Any, ...]]] = {"attempts": [], "artifacts": [], "consumed": []}
        for new, old in changes:
            key = (new.job.pipeline, new.job.job)
            parts: dict[str, Sequence[tuple[Any, ...]]] = {
                "attempts": new.attempts, "artifacts": new.artifacts, "consumed": new.consumed}
            before: dict[str, Sequence[tuple[Any, ...]]] | None = None if old is None else {
                "attempts": old.attempts, "artifacts": old.artifacts, "consumed": old.consumed}
            if before == parts:
                continue
            changed.append(key)
            for table, values in parts.items():
                if before is None or before[table] != values:
                    stale[table].append(key)
                    rows[table] += values
        for table, keys in stale.items():
            if keys:
                self.conn.executemany(f"DELETE FROM {table} WHERE pipeline = ? AND job = ?", keys)
            self._insert(table, rows[table])
        return changed

    def _put_approvals(self, changes: Sequence[tuple[JobRows, JobRows | None]]) -> None:
        """A decision changes no attempt (a rejection makes none): kept apart from what `derive` needs."""
        moved = [new for new, old in changes if old is None or old.approvals != new.approvals]
        if moved:
            self.conn.executemany("DELETE FROM approvals WHERE pipeline = ? AND job = ?",
                                  [(new.job.pipeline, new.job.job) for new in moved])
            self._insert("approvals", [a for new in moved for a in new.approvals])

    def derive(self, keys: Sequence[tuple[str, str]]) -> None:
        """Recompute the consumption rows in which these (pipeline, job) are the consumer or the
        upstream."""
        if not keys:
            return
        self.conn.executemany("DELETE FROM consumption WHERE pipeline = ? AND (job = ? OR upstream = ?)",
                              [(p, j, j) for p, j in keys])
        by_pipeline: dict[str, list[str]] = {}
        for p, j in keys:
            by_pipeline.setdefault(p, []).append(j)
        for p, jobs in by_pipeline.items():
            marks = placeholders(len(jobs))
            self.conn.execute(f"{CONSUMPTION} AND c.pipeline = ? AND (c.job IN ({marks}) OR c.upstream IN ({marks}))",
                              (p, *jobs, *jobs))

    def known_outputs(self, blobs: Iterable[str]) -> set[str]:
        """Which of these model output blobs the index already has content for."""
        wanted = sorted(set(blobs))
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            found |= {b for (b,) in self.conn.execute(
                f"SELECT blob FROM model_outputs WHERE content IS NOT NULL AND blob IN ({placeholders(len(chunk))})",
                chunk)}
        return found

    def put_outputs(self, rows: Sequence[ModelOutputRow]) -> None:
        self._insert("model_outputs", rows, "INSERT OR REPLACE")

    def drop_unused_outputs(self) -> None:
        self.conn.execute("DELETE FROM model_outputs WHERE blob NOT IN "
                          "(SELECT blob FROM artifacts WHERE kind = 'model_output')")

    def set_fresh(self, pipeline: str, status_sig: str | None, spec_sig: str | None = None,
                  pid: int | None = None, spec: bool = True) -> None:
        """Record what the pipeline's rows match: status files with `status_sig` (None: kept live
        by daemon `pid`), and, if `spec`, spec files with `spec_sig`."""
        if spec:
            self.conn.execute("INSERT OR REPLACE INTO freshness VALUES (?, ?, ?, ?)",
                              (pipeline, status_sig, spec_sig, pid))
        else:
            self.conn.execute("INSERT INTO freshness VALUES (?, ?, NULL, ?) ON CONFLICT (pipeline) DO UPDATE "
                              "SET status_sig = excluded.status_sig, pid = excluded.pid",
                              (pipeline, status_sig, pid))

    def set_spec_fresh(self, pipeline: str, spec_sig: str) -> None:
        self.conn.execute("INSERT INTO freshness VALUES (?, NULL, ?, NULL) ON CONFLICT (pipeline) DO UPDATE "
                          "SET spec_sig = excluded.spec_sig", (pipeline, spec_sig))
