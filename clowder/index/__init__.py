"""The index: `.clowder/index.sqlite`, a cache of the tree for fast questions (DESIGN §6).
This package alone opens the file: `schema` creates and migrates it, `rows` names the record of
each table, `db` opens it and writes it, `freshness` says which of its rows still match the tree,
`read` and `query` answer questions, `compare` sets it beside the tree for fsck, `reindex`
rebuilds it from the tree and `recorder` keeps it as the daemon decides. Those two are imported
on their own: they read the tree through clowder.snapshot, which builds its rows with `rows`
(importing them here would make a cycle). Delete the file and nothing is lost."""

from clowder.index.compare import RowDifference, compare, recorded_objects
from clowder.index.db import Index, connect_readonly
from clowder.index.errors import IndexUnavailable, QueryError
from clowder.index.freshness import fresh, live_daemon
from clowder.index.query import QueryResult, query
from clowder.index.read import (
    ENDED,
    ArtifactListRow,
    JobStatusRow,
    OverviewRow,
    PipelineHeadRow,
    StatusRows,
    artifact_rows,
    dump,
    dump_index,
    ended_fresh,
    overview_rows,
    status_rows,
)
from clowder.index.schema import LATEST, MIGRATIONS, TABLES, Migration, migrate

__all__ = [
    "ENDED", "LATEST", "MIGRATIONS", "TABLES", "ArtifactListRow", "Index", "IndexUnavailable",
    "JobStatusRow", "Migration", "OverviewRow", "PipelineHeadRow", "QueryError", "QueryResult", "RowDifference",
    "StatusRows", "artifact_rows", "compare", "connect_readonly", "dump", "dump_index", "ended_fresh", "fresh",
    "live_daemon", "migrate", "overview_rows", "query", "recorded_objects", "status_rows",
]
