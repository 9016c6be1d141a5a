"""Rebuilding the index from the tree alone: `clowder reindex`, and the fresh copy `clowder fsck`
compares with."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clowder.index.db import Index, connect, placeholders
from clowder.index.rows import PipelineRow
from clowder.index.schema import CONSUMPTION, COUNT_JOBS, migrate
from clowder.tree import Root, is_name

if TYPE_CHECKING:
    from clowder.snapshot import PipelineRows

PARALLEL_MIN = 64  # pipelines below which reading the tree in one process is faster than forking


@dataclass(frozen=True)
class Counts:
    pipelines: int
    jobs: int
    attempts: int
    artifacts: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.pipelines} pipelines, {self.jobs} jobs, {self.attempts} attempts, "
                f"{self.artifacts} artifacts in {self.seconds:.2f} s")


_BUILD_TABLES = ("pipelines", "job_specs", "edges", "jobs", "attempts", "artifacts", "consumed", "approvals",
                 "model_outputs", "freshness")
_PIPELINE_TABLES = _BUILD_TABLES[1:-2]  # those PipelineRows holds under their own names
# Pipelines a reader reads and sends at a time, inserted with one executemany per table: the
# parent's CPU was the same for 16, 64 or 256, and the last batch is inserted after the readers
# are done, so a small one keeps that short.
CHUNK = 16


def _no_rows() -> dict[str, list[tuple[Any, ...]]]:
    return {table: [] for table in _BUILD_TABLES}


@dataclass
class Batch:
    """The rows of some pipelines, table by table, as plain tuples: what a forked reader sends the
    parent. A NamedTuple is unpickled through its Python __new__, a tuple in C: for 1,000 pipelines
    the parent's unpickling went from 0.19 to 0.05 s of CPU, the readers' pickling from 0.13 to 0.06 s."""

    names: list[str] = field(default_factory=list)
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=_no_rows)

    def add(self, p: PipelineRows) -> None:
        self.names.append(p.name)
        rows = self.rows
        rows["pipelines"].append(tuple(PipelineRow.of(p.name, p.status, p.spec)))
        for table in _PIPELINE_TABLES:
            rows[table] += map(tuple, getattr(p, table))
        rows["model_outputs"] += map(tuple, p.outputs)
        rows["freshness"].append((p.name, p.status_sig, p.spec_sig, None))


_reader: tuple[Root, Any] | None = None  # what forked readers inherit


def _read_chunk(names: list[str]) -> Batch:
    from clowder import snapshot

    assert _reader is not None
    root, config = _reader
    batch = Batch()
    for name in names:
        batch.add(snapshot.read_pipeline(root, name, config))
    return batch


def read_tree(root: Root) -> Iterator[Batch]:
    """Every pipeline of the tree as rows, a few pipelines at a time. Parsing TOML dominates (DESIGN
    §5: ~0.5 s per 10,000 small files), so a large root is read by one forked process per core."""
    import multiprocessing  # only a rebuild forks: `clowder status` does not pay for importing it

    from clowder.validate import check_config

    global _reader
    config, _ = check_config(root.config_file)
    names = [n for n in root.pipeline_names() if is_name(n)]
    chunks = [names[i:i + CHUNK] for i in range(0, len(names), CHUNK)]
    _reader = (root, config)
    try:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if len(names) < PARALLEL_MIN or cores < 2 or "fork" not in multiprocessing.get_all_start_methods():
            yield from map(_read_chunk, chunks)
            return
        with multiprocessing.get_context("fork").Pool(cores) as pool:
            yield from pool.imap(_read_chunk, chunks)
    finally:
        _reader = None


def build(root: Root, target: Path) -> Counts:
    """Write a complete index of the tree to `target`, a new file."""
    started = time.perf_counter()
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    conn = connect(target, readonly=False)
    try:
        # Nobody reads this file until it is complete and swapped in: no journal, no fsync per commit.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        migrate(conn)
        index = Index(target, conn)
        counts = [0, 0, 0, 0]
        with index.transaction():
            taken_off = _take_off(conn)
            for batch in read_tree(root):
                counts = _insert_batch(index, batch, counts)
            _put_back(conn, taken_off)
        conn.execute("PRAGMA optimize")
    finally:
        conn.close()
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    return Counts(counts[0], counts[1], counts[2], counts[3], time.perf_counter() - started)


def _insert_batch(index: Index, batch: Batch, counts: list[int]) -> list[int]:
    """Insert the rows of a batch of pipelines and derive their consumption rows (while the readers
    go on reading the next ones). Returns `counts` (pipelines, jobs, attempts, artifacts) with the
    batch's added. Consumption is derived per batch, not once after the indexes are made: the
    tables' primary keys serve its lookups, and for 1,000 pipelines it cost the parent 0.06 s of
    CPU this way against 0.14 s in one statement at the end, which the readers no longer overlap."""
    for table, rows in batch.rows.items():
        index._insert(table, rows, "INSERT OR IGNORE" if table == "model_outputs" else "INSERT")
    if batch.names:
        index.conn.execute(f"{CONSUMPTION} AND c.pipeline IN ({placeholders(len(batch.names))})", batch.names)
    added = batch.rows
    return [counts[0] + len(batch.names), counts[1] + len(added["jobs"]), counts[2] + len(added["attempts"]),
            counts[3] + len(added["artifacts"])]


@dataclass(frozen=True)
class SchemaObject:
    """A trigger or secondary index of the migrated file, as sqlite_master holds it."""

    type: str  # index | trigger
    name: str
    sql: str


def _take_off(conn: sqlite3.Connection) -> list[SchemaObject]:
    """Drop the triggers and secondary indexes of the freshly migrated (empty) file, for a bulk load:
    kept row by row they cost a third of the parent's CPU (measured: 0.70 -> 0.47 s for 1,000
    pipelines, indexes made and counts filled at the end). Their SQL is read back from the file, so
    schema.py's migrations stay their one definition."""
    taken = [SchemaObject(*row) for row in conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL "
        "ORDER BY rowid")]
    for o in taken:
        conn.execute(f'DROP {o.type.upper()} "{o.name}"')
    return taken


def _put_back(conn: sqlite3.Connection, taken: list[SchemaObject]) -> None:
    """Make the indexes, count every job at once with the migration's own statement (the triggers
    were off: job_counts is empty), then give the triggers back for the daemon's writes."""
    for o in taken:
        if o.type == "index":
            conn.execute(o.sql)
    conn.execute(COUNT_JOBS)
    for o in taken:
        if o.type == "trigger":
            conn.execute(o.sql)



def rebuild(root: Root) -> Counts:
    """`clowder reindex`: build a new index from the tree alone and swap it in atomically."""
    root.state_dir.mkdir(parents=True, exist_ok=True)
    target = root.state_dir / f"index.sqlite.new-{os.getpid()}"
    try:
        counts = build(root, target)
        # The old file's WAL must go before the new file takes its name: SQLite would replay a
        # -wal it finds next to a database into it, whichever database it came from. A daemon
        # holding the old file keeps writing to its own (now unlinked) WAL until it notices
        # the swap and reopens.
        for suffix in ("-wal", "-shm"):
            Path(f"{root.index_file}{suffix}").unlink(missing_ok=True)
        os.replace(target, root.index_file)
    finally:
        target.unlink(missing_ok=True)
    return counts
