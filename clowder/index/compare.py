"""Comparing the index with a fresh build of the tree, for `clowder fsck`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from clowder.index.db import connect, connect_readonly
from clowder.index.schema import TABLES
from clowder.tree import Root


@dataclass(frozen=True)
class RowDifference:
    table: str
    key: tuple[Any, ...]
    columns: tuple[str, ...]
    index: tuple[Any, ...] | None  # None: the row is missing from the index
    tree: tuple[Any, ...] | None  # None: the index has a row the tree does not


def compare(root: Root, fresh_file: Path) -> list[RowDifference]:
    """Every row in which the index and `fresh_file` (a build of the tree) differ."""
    conn = connect_readonly(root)
    try:
        conn.execute("ATTACH DATABASE ? AS fresh", (fresh_file.resolve().as_uri() + "?mode=ro",))
        out = []
        for table, key in TABLES.items():
            columns = tuple(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})"))
            at = [columns.index(k) for k in key]
            ours = conn.execute(f"SELECT * FROM main.{table} EXCEPT SELECT * FROM fresh.{table}").fetchall()
            theirs = conn.execute(f"SELECT * FROM fresh.{table} EXCEPT SELECT * FROM main.{table}").fetchall()
            mine = {tuple(r[i] for i in at): r for r in ours}
            tree = {tuple(r[i] for i in at): r for r in theirs}
            for k in sorted(mine.keys() | tree.keys(), key=repr):
                out.append(RowDifference(table, k, columns, mine.get(k), tree.get(k)))
        return out
    finally:
        conn.close()


class RecordedBlob(NamedTuple):
    """An artifact's blob, which its workspace must hold."""

    pipeline: str
    job: str
    attempt: int
    path: str
    blob: str
    size: int


class RecordedCommit(NamedTuple):
    """An attempt's commit, which its workspace must hold."""

    pipeline: str
    job: str
    number: int
    commit: str


def recorded_objects(fresh_file: Path) -> tuple[list[RecordedBlob], list[RecordedCommit]]:
    """From a build of the tree: the blob of every artifact and the commit of every attempt that
    has one."""
    conn = connect(fresh_file, readonly=True)
    try:
        artifacts = [RecordedBlob(*r) for r in conn.execute(
            "SELECT pipeline, job, attempt, path, blob, size FROM artifacts ORDER BY pipeline, job, attempt, path")]
        commits = [RecordedCommit(*r) for r in conn.execute(
            'SELECT pipeline, job, number, "commit" FROM attempts WHERE "commit" IS NOT NULL '
            "ORDER BY pipeline, job, number")]
        return artifacts, commits
    finally:
        conn.close()
