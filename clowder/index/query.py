"""`clowder query`: one read-only SQL statement on the index."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clowder.index.db import connect_readonly
from clowder.index.errors import QueryError
from clowder.tree import Root

_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_READ_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                 "foreign_key_list", "database_list", "function_list", "pragma_list", "collation_list",
                 "compile_options", "user_version", "schema_version", "data_version", "page_count",
                 "page_size", "freelist_count", "integrity_check", "quick_check"}
# PRAGMAs whose argument is an object to describe, not a value to set.
_DESCRIBE_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                     "foreign_key_list", "table_list", "integrity_check", "quick_check"}


def _authorizer(refused: list[str]) -> Any:
    def check(action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
        if action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 in _READ_PRAGMAS and (arg2 is None or arg1 in _DESCRIBE_PRAGMAS):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master" and source is None:
            return sqlite3.SQLITE_OK  # SQLite asks this while preparing pragma_table_info() and friends
        refused.append(action_name(action))
        return sqlite3.SQLITE_DENY

    return check


_ACTIONS = ("create index", "create table", "create temp index", "create temp table", "create temp trigger",
            "create temp view", "create trigger", "create view", "delete", "drop index", "drop table",
            "drop temp index", "drop temp table", "drop temp trigger", "drop temp view", "drop trigger",
            "drop view", "insert", "pragma", "read", "select", "transaction", "update", "attach", "detach",
            "alter table", "reindex", "analyze", "create vtable", "drop vtable", "function", "savepoint",
            "recursive")


def action_name(action: int) -> str:
    """SQLite's authorizer action codes (1 = create index, ..., 33 = recursive) as words."""
    return _ACTIONS[action - 1].upper() if 1 <= action <= len(_ACTIONS) else f"action {action}"


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def query(root: Root, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
    """Run one read-only SQL statement against the index. Anything that would write (or attach
    another file) is refused, whatever the statement looks like: the connection is opened
    read-only and an authorizer allows only reads."""
    conn = connect_readonly(root)
    refused: list[str] = []
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_authorizer(refused))
        try:
            cursor = conn.execute(sql, dict(params or {}))
            columns = tuple(d[0] for d in cursor.description or ())
            return QueryResult(columns, cursor.fetchall())
        except (sqlite3.Warning, sqlite3.ProgrammingError) as e:  # more than one statement
            raise QueryError(f"query: {e} (give one SQL statement)") from e
        except sqlite3.Error as e:
            if refused:
                raise QueryError(f"query refused: the index is read-only here ({', '.join(dict.fromkeys(refused))} "
                                 "not allowed); "
                                 "`clowder query` runs SELECT and WITH statements, and `clowder reindex` "
                                 "rebuilds the index") from e
            if "readonly" in str(e) or "query_only" in str(e):
                raise QueryError(f"query refused: the index is read-only here ({e})") from e
            raise QueryError(f"query failed: {e}") from e
    finally:
        conn.close()
