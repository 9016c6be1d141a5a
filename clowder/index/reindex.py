"""Rebuilding the index from the tree alone: `clowder reindex`, and the fresh copy `clowder fsck`
compares with."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clowder.index.db import Index, connect, placeholders
from clowder.index.rows import FreshnessRow, PipelineRow
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


_reader: tuple[Root, Any] | None = None  # what forked readers inherit


def _read_chunk(names: list[str]) -> list[PipelineRows]:
    from clowder import snapshot

    assert _reader is not None
    root, config = _reader
    return [snapshot.read_pipeline(root, name, config) for name in names]


def read_tree(root: Root) -> Iterator[PipelineRows]:
    """Every pipeline of the tree as rows. Parsing TOML dominates (DESIGN §5: ~0.5 s per 10,000
    small files), so a large root is read by one forked process per core."""
    import multiprocessing  # only a rebuild forks: `clowder status` does not pay for importing it

    from clowder import snapshot
    from clowder.validate import check_config

    global _reader
    config, _ = check_config(root.config_file)
    names = [n for n in root.pipeline_names() if is_name(n)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if len(names) < PARALLEL_MIN or cores < 2 or "fork" not in multiprocessing.get_all_start_methods():
        for name in names:
            yield snapshot.read_pipeline(root, name, config)
        return
    _reader = (root, config)
    chunks = [names[i:i + 16] for i in range(0, len(names), 16)]
    try:
        with multiprocessing.get_context("fork").Pool(cores) as pool:
            for rows in pool.imap(_read_chunk, chunks):
                yield from rows
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
            batch: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _BUILD_TABLES}
            names: list[str] = []
            for i, rows in enumerate(read_tree(root), 1):
                names.append(rows.name)
                batch["pipelines"].append(PipelineRow.of(rows.name, rows.status, rows.spec))
                for table in _BUILD_TABLES[1:-2]:
                    batch[table] += getattr(rows, table)
                batch["model_outputs"] += rows.outputs
                batch["freshness"].append(FreshnessRow(rows.name, rows.status_sig, rows.spec_sig, None))
                counts = [counts[0] + 1, counts[1] + len(rows.jobs), counts[2] + len(rows.attempts),
                          counts[3] + len(rows.artifacts)]
                if i % 64 == 0:  # one executemany per table for many pipelines
                    _insert_batch(index, batch, names)
            _insert_batch(index, batch, names)
            _put_back(conn, taken_off)
        conn.execute("PRAGMA optimize")
    finally:
        conn.close()
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    return Counts(counts[0], counts[1], counts[2], counts[3], time.perf_counter() - started)


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


_BUILD_TABLES = ("pipelines", "job_specs", "edges", "jobs", "attempts", "artifacts", "consumed", "approvals",
                 "model_outputs", "freshness")


def _insert_batch(index: Index, batch: dict[str, list[tuple[Any, ...]]], names: list[str]) -> None:
    """Insert the rows of a batch of pipelines (`names`) and derive their consumption rows (while
    the readers go on reading the next ones); empties both."""
    for table, rows in batch.items():
        index._insert(table, rows, "INSERT OR IGNORE" if table == "model_outputs" else "INSERT")
        rows.clear()
    if names:
        index.conn.execute(f"{CONSUMPTION} AND c.pipeline IN ({placeholders(len(names))})", names)
        names.clear()


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
