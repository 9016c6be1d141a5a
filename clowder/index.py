"""The index: `.clowder/index.sqlite`, a cache of the tree for fast questions (DESIGN §6).
This module alone opens the file: it creates and migrates it, writes it, rebuilds it from
the tree, compares it with the tree, and answers queries. Delete it and nothing is lost."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from clowder import stamp
from clowder.errors import EXIT_BAD_INPUT, ClowderError
from clowder.tree import Root, is_name

if TYPE_CHECKING:  # snapshot reads and validates specs: only reindex and fsck need it at run time
    from clowder.snapshot import JobRows, PipelineRows

Row = tuple[Any, ...]

BUSY_TIMEOUT_MS = 5000
ENDED = ("succeeded", "failed", "cancelled")  # pipeline states that no longer change by themselves
PARALLEL_MIN = 64  # pipelines below which reading the tree in one process is faster than forking


class IndexUnavailable(ClowderError):
    """The index cannot be used (missing, from a newer clowder, or a refused query)."""


class QueryError(ClowderError):
    exit_code = EXIT_BAD_INPUT


# -- schema ---------------------------------------------------------------------------------------

class Migration(NamedTuple):
    version: int
    name: str
    statements: tuple[str, ...]


# Times are UTC text, 2026-01-01T10:00:03.000000Z (fixed width: they sort as they compare).
# JSON columns hold arrays or tables as JSON text; NULL when empty.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tables for pipelines, jobs, attempts, edges, artifacts, consumption, model outputs", (
        """CREATE TABLE pipelines (
            pipeline TEXT PRIMARY KEY,
            state TEXT,           -- status.toml's state, or 'broken' when it cannot be read
            message TEXT,
            started_at TEXT,
            ended_at TEXT,
            prompt_hash TEXT,
            problem TEXT,         -- why status.toml cannot be read: JSON [path, key, message]
            template TEXT,        -- the rest from pipeline.toml and jobs/*.toml
            stages TEXT,          -- JSON
            valid INTEGER,        -- 1 if the spec validates
            problems TEXT         -- JSON list of [path, key, message]
        ) WITHOUT ROWID""",
        """CREATE TABLE job_specs (
            pipeline TEXT NOT NULL,
            job TEXT NOT NULL,
            position INTEGER NOT NULL,  -- dependency order (by name when the spec is invalid)
            stage TEXT,
            kind TEXT,                  -- command | agent
            command TEXT,               -- JSON: an argv list or a shell string
            agent TEXT,
            sources TEXT,               -- JSON: the jobs whose final commits the workspace starts from
            outputs TEXT,               -- JSON: declared output globs
            retries INTEGER,
            allow_failure INTEGER,
            timeout REAL,
            parent TEXT,
            regression_of TEXT,
            spec_hash TEXT,
            PRIMARY KEY (pipeline, job)
        ) WITHOUT ROWID""",
        """CREATE TABLE edges (
            pipeline TEXT NOT NULL,
            job TEXT NOT NULL,          -- needs ...
            upstream TEXT NOT NULL,     -- ... this job (stage order made explicit)
            condition TEXT NOT NULL,    -- success | failure | always
            ord INTEGER NOT NULL,
            PRIMARY KEY (pipeline, job, upstream)
        ) WITHOUT ROWID""",
        """CREATE TABLE jobs (
            pipeline TEXT NOT NULL,
            job TEXT NOT NULL,
            state TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            message TEXT NOT NULL,
            retry_at TEXT,
            waiting_for TEXT,           -- JSON
            spawned TEXT,               -- JSON
            extra TEXT,                 -- JSON: other keys of the status file
            problem TEXT,               -- why the status file cannot be read: JSON [path, key, message]
            started_at TEXT,            -- the first attempt's start
            ended_at TEXT,              -- the last attempt's end
            duration REAL,              -- seconds, summed over the attempts that ended
            open_started TEXT,          -- JSON: starts of attempts that have not ended
            PRIMARY KEY (pipeline, job)
        ) WITHOUT ROWID""",
        """CREATE TABLE attempts (
            pipeline TEXT NOT NULL,
            job TEXT NOT NULL,
            number INTEGER NOT NULL,
            state TEXT NOT NULL,
            started_at TEXT,
            ended_at TEXT,
            duration REAL,
            exit_code INTEGER,
            signal INTEGER,
            pid INTEGER,
            spec_hash TEXT,
            base_commit TEXT,
            "commit" TEXT,
            message TEXT,
            trigger TEXT,
            request TEXT,
            PRIMARY KEY (pipeline, job, number)
        ) WITHOUT ROWID""",
        """CREATE TABLE artifacts (
            pipeline TEXT NOT NULL,
            job TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            path TEXT NOT NULL,
            blob TEXT NOT NULL,
            size INTEGER NOT NULL,
            kind TEXT NOT NULL,         -- file | model_output | error_context
            PRIMARY KEY (pipeline, job, attempt, path)
        ) WITHOUT ROWID""",
        """CREATE TABLE consumed (
            pipeline TEXT NOT NULL,
            job TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            upstream TEXT NOT NULL,
            "commit" TEXT NOT NULL,     -- the upstream commit the attempt started from
            PRIMARY KEY (pipeline, job, attempt, upstream)
        ) WITHOUT ROWID""",
        # Derived from consumed + attempts + artifacts: each artifact an attempt started from.
        """CREATE TABLE consumption (
            pipeline TEXT NOT NULL,
            job TEXT NOT NULL,              -- the consumer ...
            attempt INTEGER NOT NULL,       -- ... attempt
            upstream TEXT NOT NULL,
            upstream_attempt INTEGER NOT NULL,  -- the upstream attempt whose commit it started from
            artifact_attempt INTEGER NOT NULL,  -- the attempt that recorded this version of the file
            path TEXT NOT NULL,
            blob TEXT NOT NULL,
            PRIMARY KEY (pipeline, job, attempt, upstream, path)
        ) WITHOUT ROWID""",
        """CREATE TABLE model_outputs (
            blob TEXT PRIMARY KEY,
            content TEXT,               -- the JSON document, for json_extract() and friends
            error TEXT                  -- why content is NULL
        ) WITHOUT ROWID""",
        # Bookkeeping, not data: whether the rows of a pipeline still match its files.
        """CREATE TABLE freshness (
            pipeline TEXT PRIMARY KEY,
            status_sig TEXT,            -- signature of status files when read; NULL: kept live by a daemon
            spec_sig TEXT,              -- signature of pipeline.toml and jobs/*.toml when read
            pid INTEGER                 -- the daemon keeping it live
        ) WITHOUT ROWID""",
    )),
    Migration(2, "indexes for lookups by state, commit and blob", (
        "CREATE INDEX jobs_by_state ON jobs (state)",
        "CREATE INDEX attempts_by_commit ON attempts (pipeline, job, \"commit\")",
        "CREATE INDEX attempts_by_end ON attempts (ended_at)",
        "CREATE INDEX artifacts_by_blob ON artifacts (blob)",
        "CREATE INDEX artifacts_by_path ON artifacts (pipeline, job, path, attempt)",
        "CREATE INDEX consumed_by_upstream ON consumed (pipeline, upstream, \"commit\")",
        "CREATE INDEX consumption_by_blob ON consumption (blob)",
        "CREATE INDEX consumption_by_upstream ON consumption (pipeline, upstream)",
        "CREATE INDEX edges_by_upstream ON edges (pipeline, upstream)",
    )),
    Migration(3, "what agents reported spending in each attempt", (
        "ALTER TABLE attempts ADD COLUMN input_tokens INTEGER",
        "ALTER TABLE attempts ADD COLUMN output_tokens INTEGER",
        "ALTER TABLE attempts ADD COLUMN cost_usd REAL",
    )),
)
LATEST = MIGRATIONS[-1].version
# The tables that hold data, with their keys: what fsck compares and tests dump.
TABLES: dict[str, tuple[str, ...]] = {
    "pipelines": ("pipeline",),
    "job_specs": ("pipeline", "job"),
    "edges": ("pipeline", "job", "upstream"),
    "jobs": ("pipeline", "job"),
    "attempts": ("pipeline", "job", "number"),
    "artifacts": ("pipeline", "job", "attempt", "path"),
    "consumed": ("pipeline", "job", "attempt", "upstream"),
    "consumption": ("pipeline", "job", "attempt", "upstream", "path"),
    "model_outputs": ("blob",),
}
_BY_PIPELINE = [t for t in TABLES if t not in ("pipelines", "model_outputs")]
_STATUS_TABLES = ("jobs", "attempts", "artifacts", "consumed", "consumption")
_PIPELINE_STATUS = ("state", "message", "started_at", "ended_at", "prompt_hash", "problem")
_PIPELINE_SPEC = ("template", "stages", "valid", "problems")

# Each artifact version an attempt started from: for every upstream commit it consumed, the
# upstream attempt with that commit, and per path the newest artifact recorded up to that
# attempt (attempts of a job build on each other, so older versions are overwritten).
_CONSUMPTION = """
INSERT INTO consumption (pipeline, job, attempt, upstream, upstream_attempt, artifact_attempt, path, blob)
SELECT c.pipeline, c.job, c.attempt, c.upstream, u.number, a.attempt, a.path, a.blob
FROM consumed c
JOIN attempts u ON u.pipeline = c.pipeline AND u.job = c.upstream AND u."commit" = c."commit"
JOIN artifacts a ON a.pipeline = c.pipeline AND a.job = c.upstream AND a.attempt <= u.number
WHERE u.number = (SELECT max(number) FROM attempts x
                  WHERE x.pipeline = c.pipeline AND x.job = c.upstream AND x."commit" = c."commit")
  AND NOT EXISTS (SELECT 1 FROM artifacts b
                  WHERE b.pipeline = a.pipeline AND b.job = a.job AND b.path = a.path
                    AND b.attempt > a.attempt AND b.attempt <= u.number)
"""


# -- connections ----------------------------------------------------------------------------------

def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + ("?mode=ro" if readonly else "")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except sqlite3.OperationalError:  # no such table: an empty file
        return 0
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply the migrations this file lacks, each in its own transaction. Returns those applied."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                 "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    current = _version(conn)
    if current > LATEST:
        raise IndexUnavailable(f"the index has schema version {current}, newer than this clowder knows ({LATEST}); "
                          "upgrade clowder, or run `clowder reindex` to rebuild it with this one")
    applied = []
    for m in MIGRATIONS:
        if m.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _version(conn) >= m.version:  # another process got there first
                conn.execute("ROLLBACK")
                continue
            for statement in m.statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                         (m.version, m.name))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(m.version)
    return applied


def connect_readonly(root: Root) -> sqlite3.Connection:
    """A read-only connection to a current index; IndexUnavailable if there is none."""
    path = root.index_file
    if not path.is_file():
        raise IndexUnavailable(f"{path}: no index yet; run `clowder reindex` (or let `clowder watch` keep one)")
    try:
        conn = _connect(path, readonly=True)
        version = _version(conn)
    except sqlite3.Error as e:
        raise IndexUnavailable(f"{path}: cannot read the index ({e}); run `clowder reindex`") from e
    if version != LATEST:
        conn.close()
        raise IndexUnavailable(f"{path}: the index has schema version {version}, this clowder reads {LATEST}; "
                          "run `clowder reindex`")
    return conn


# -- writing --------------------------------------------------------------------------------------

def _placeholders(n: int) -> str:
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
        conn = _connect(root.index_file, readonly=False)
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

    def _insert(self, table: str, rows: Sequence[Row], verb: str = "INSERT") -> None:
        if rows:
            self.conn.executemany(f"{verb} INTO {table} VALUES ({_placeholders(len(rows[0]))})", rows)

    # Whole pipelines.

    def put_pipeline(self, rows: PipelineRows) -> None:
        """Replace everything the index holds about a pipeline."""
        self.forget(rows.name)
        self.conn.execute(f"INSERT INTO pipelines VALUES ({_placeholders(11)})",
                          (rows.name, *rows.status, *rows.spec))
        for table, items in (("job_specs", rows.job_specs), ("edges", rows.edges), ("jobs", rows.jobs),
                             ("attempts", rows.attempts), ("artifacts", rows.artifacts),
                             ("consumed", rows.consumed)):
            self._insert(table, items)
        self._insert("model_outputs", rows.outputs, "INSERT OR IGNORE")
        self.conn.execute(_CONSUMPTION + " AND c.pipeline = ?", (rows.name,))
        self.set_fresh(rows.name, rows.status_sig, rows.spec_sig)

    def forget(self, pipeline: str) -> None:
        self.conn.execute("DELETE FROM pipelines WHERE pipeline = ?", (pipeline,))
        self.conn.execute("DELETE FROM freshness WHERE pipeline = ?", (pipeline,))
        for table in _BY_PIPELINE:
            self.conn.execute(f"DELETE FROM {table} WHERE pipeline = ?", (pipeline,))

    def put_statuses(self, pipeline: str, status: Row, jobs: Iterable[JobRows]) -> None:
        """Replace a pipeline's status rows (status.toml and status/*.toml) with these."""
        self.put_status(pipeline, status)
        for table in _STATUS_TABLES:
            self.conn.execute(f"DELETE FROM {table} WHERE pipeline = ?", (pipeline,))
        for j in jobs:
            self._insert("jobs", [j.job])
            self._insert("attempts", j.attempts)
            self._insert("artifacts", j.artifacts)
            self._insert("consumed", j.consumed)
        self.conn.execute(_CONSUMPTION + " AND c.pipeline = ?", (pipeline,))

    def put_status(self, pipeline: str, status: Row) -> None:
        self._upsert_pipeline(pipeline, _PIPELINE_STATUS, status)

    def put_spec(self, pipeline: str, head: Row, job_specs: Sequence[Row], edges: Sequence[Row]) -> None:
        self._upsert_pipeline(pipeline, _PIPELINE_SPEC, head)
        self.conn.execute("DELETE FROM job_specs WHERE pipeline = ?", (pipeline,))
        self.conn.execute("DELETE FROM edges WHERE pipeline = ?", (pipeline,))
        self._insert("job_specs", job_specs)
        self._insert("edges", edges)

    def _upsert_pipeline(self, pipeline: str, columns: Sequence[str], values: Row) -> None:
        names = ", ".join(columns)
        update = ", ".join(f"{c} = excluded.{c}" for c in columns)
        self.conn.execute(f"INSERT INTO pipelines (pipeline, {names}) VALUES ({_placeholders(len(columns) + 1)}) "
                          f"ON CONFLICT (pipeline) DO UPDATE SET {update}", (pipeline, *values))

    # Jobs as the daemon changes them: a few statements per batch of jobs, not per job (each
    # statement hands the GIL back and forth with the scheduling threads).

    def put_jobs(self, changes: Sequence[tuple[JobRows, JobRows | None]]) -> list[tuple[str, str]]:
        """Record jobs' statuses, each given what was recorded for it before (None: unknown).
        Returns the (pipeline, job) whose attempts, artifacts or consumption changed: `derive`
        must run for those."""
        self._insert("jobs", [new.job for new, _ in changes], "INSERT OR REPLACE")
        changed: list[tuple[str, str]] = []
        stale: dict[str, list[tuple[str, str]]] = {"attempts": [], "artifacts": [], "consumed": []}
        rows: dict[str, list[Row]] = {"attempts": [], "artifacts": [], "consumed": []}
        for new, old in changes:
            key = (new.job[0], new.job[1])
            parts = {"attempts": new.attempts, "artifacts": new.artifacts, "consumed": new.consumed}
            before = None if old is None else {"attempts": old.attempts, "artifacts": old.artifacts,
                                               "consumed": old.consumed}
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
            marks = _placeholders(len(jobs))
            self.conn.execute(f"{_CONSUMPTION} AND c.pipeline = ? AND (c.job IN ({marks}) OR c.upstream IN ({marks}))",
                              (p, *jobs, *jobs))

    def known_outputs(self, blobs: Iterable[str]) -> set[str]:
        """Which of these model output blobs the index already has content for."""
        wanted = sorted(set(blobs))
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            found |= {b for (b,) in self.conn.execute(
                f"SELECT blob FROM model_outputs WHERE content IS NOT NULL AND blob IN ({_placeholders(len(chunk))})",
                chunk)}
        return found

    def put_outputs(self, rows: Sequence[Row]) -> None:
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


# -- rebuilding from the tree ---------------------------------------------------------------------

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
    conn = _connect(target, readonly=False)
    try:
        # Nobody reads this file until it is complete and swapped in: no journal, no fsync per commit.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        migrate(conn)
        index = Index(target, conn)
        counts = [0, 0, 0, 0]
        with index.transaction():
            batch: dict[str, list[Row]] = {table: [] for table in _BUILD_TABLES}
            for i, rows in enumerate(read_tree(root), 1):
                batch["pipelines"].append((rows.name, *rows.status, *rows.spec))
                for table in _BUILD_TABLES[1:-2]:
                    batch[table] += getattr(rows, table)
                batch["model_outputs"] += rows.outputs
                batch["freshness"].append((rows.name, rows.status_sig, rows.spec_sig, None))
                counts = [counts[0] + 1, counts[1] + len(rows.jobs), counts[2] + len(rows.attempts),
                          counts[3] + len(rows.artifacts)]
                if i % 64 == 0:  # one executemany per table for many pipelines
                    _insert_batch(index, batch)
            _insert_batch(index, batch)
        conn.execute("PRAGMA optimize")
    finally:
        conn.close()
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    return Counts(counts[0], counts[1], counts[2], counts[3], time.perf_counter() - started)


_BUILD_TABLES = ("pipelines", "job_specs", "edges", "jobs", "attempts", "artifacts", "consumed", "model_outputs",
                 "freshness")


def _insert_batch(index: Index, batch: dict[str, list[Row]]) -> None:
    """Insert the rows of a batch of pipelines and derive their consumption rows (while the
    readers go on reading the next ones)."""
    names = [row[0] for row in batch["pipelines"]]
    for table, rows in batch.items():
        index._insert(table, rows, "INSERT OR IGNORE" if table == "model_outputs" else "INSERT")
        rows.clear()
    if names:
        index.conn.execute(f"{_CONSUMPTION} AND c.pipeline IN ({_placeholders(len(names))})", names)


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


# -- reading ----------------------------------------------------------------------------------------

def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every data table, every row, in key order (bookkeeping tables left out)."""
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {', '.join(k)}").fetchall() for t, k in TABLES.items()}


def dump_index(root: Root) -> dict[str, list[tuple[Any, ...]]]:
    conn = connect_readonly(root)
    try:
        return dump(conn)
    finally:
        conn.close()


def live_daemon(root: Root) -> int | None:
    """The pid of the daemon that holds the root's lock, if it is alive."""
    try:
        pid = int(root.lock_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def fresh(conn: sqlite3.Connection, root: Root, names: Iterable[str], ended: Container[str] = ()) -> set[str]:
    """The pipelines among `names` whose rows match their files.

    A pipeline's rows are stale when its spec files (pipeline.toml, jobs/*.toml) changed since
    they were read (any file's mtime or size, a file added or removed), or when its status
    files did (see clowder.stamp) — unless a daemon keeps them live: it writes the rows as it
    decides each change, before the status file lands, so its rows are never older than the
    files. Rows a daemon kept live that died (kill -9) are stale until a daemon or `clowder
    reindex` reads the pipeline again. Pipelines in `ended` are fresh if their status files
    are: the caller needs nothing of them that the content of spec files could change.
    Cost: three stats per pipeline, and one per spec file of those not in `ended`."""
    known = {p: (status, spec, pid) for p, status, spec, pid in
             conn.execute("SELECT pipeline, status_sig, spec_sig, pid FROM freshness")}
    daemon = -1
    pipelines = str(root.pipelines_dir)
    out = set()
    for name in names:
        status_sig, spec_sig, pid = known.get(name, (None, None, None))
        if not spec_sig:
            continue
        where = f"{pipelines}/{name}"
        if status_sig is None:
            if daemon == -1:
                daemon = live_daemon(root) or 0
            if pid is None or pid != daemon:
                continue
        elif not stamp.is_current(status_sig, stamp.status_signature(where)):
            continue
        if name in ended or stamp.is_current(spec_sig, stamp.spec_signature(where)):
            out.add(name)
    return out


# -- answering questions ----------------------------------------------------------------------------

class PipelineHeadRow(NamedTuple):
    """A pipeline's status columns, as `clowder status` reads them."""

    state: str
    message: str
    started_at: str | None
    ended_at: str | None
    problem: str | None  # why status.toml cannot be read: JSON [path, key, message]
    problems: str | None  # JSON list of the spec's problems


class JobStatusRow(NamedTuple):
    """A job's spec and status columns, as `clowder status PIPELINE` reads them (state None: a
    job file the scheduler has not seen yet)."""

    job: str
    stage: str | None
    state: str | None
    attempt: int | None
    message: str | None
    problem: str | None
    started_at: str | None
    ended_at: str | None
    duration: float | None
    open_started: str | None  # JSON: starts of attempts that have not ended


class StatusRows(NamedTuple):
    """What `clowder status` shows of the fresh pipelines, in display order."""

    pipelines: dict[str, PipelineHeadRow]
    jobs: dict[str, list[JobStatusRow]]  # by position
    needs: dict[tuple[str, str], list[str]]  # (pipeline, job) -> what it needs, in spec order


def status_rows(root: Root, names: Sequence[str]) -> StatusRows:
    """The status of those of `names` the index holds fresh (none if there is no usable index)."""
    empty = StatusRows({}, {}, {})
    try:
        conn = connect_readonly(root)
    except IndexUnavailable:
        return empty
    try:
        ok = fresh(conn, root, names)
        if not ok:
            return empty
        # A few pipelines are looked up by key; many are read whole and picked from.
        few = sorted(ok) if len(ok) <= 100 else None
        where = f" WHERE pipeline IN ({_placeholders(len(few))})" if few else ""
        args = few or []
        pipelines = {r[0]: PipelineHeadRow(*r[1:]) for r in conn.execute(
            "SELECT pipeline, state, message, started_at, ended_at, problem, problems FROM pipelines" + where, args)
            if r[0] in ok}
        jobs: dict[str, list[JobStatusRow]] = {name: [] for name in pipelines}
        for r in conn.execute(
                "SELECT s.pipeline, s.job, s.stage, j.state, j.attempt, j.message, j.problem, j.started_at, "
                "j.ended_at, j.duration, j.open_started FROM job_specs s LEFT JOIN jobs j USING (pipeline, job)"
                + where.replace("pipeline IN", "s.pipeline IN") + " ORDER BY s.pipeline, s.position", args):
            if r[0] in jobs:
                jobs[r[0]].append(JobStatusRow(*r[1:]))
        needs: dict[tuple[str, str], list[str]] = {}
        for p, job, upstream in conn.execute(
                "SELECT pipeline, job, upstream FROM edges" + where + " ORDER BY pipeline, job, ord", args):
            if p in jobs:
                needs.setdefault((p, job), []).append(upstream)
        return StatusRows(pipelines, jobs, needs)
    except sqlite3.Error:
        return empty
    finally:
        conn.close()


class OverviewRow(NamedTuple):
    """A pipeline's line in `clowder status`: its status columns and how many of its jobs are in
    each state."""

    state: str
    message: str
    started_at: str | None
    ended_at: str | None
    problem: str | None
    problems: str | None
    counts: dict[str, int]


def overview_rows(root: Root, names: Sequence[str], ended_from_status: bool = True) -> dict[str, OverviewRow]:
    """For `clowder status` over every pipeline: the status columns and the count of jobs in each
    state of those of `names` the index holds fresh. A job the scheduler has not seen, or whose
    status file is unreadable, counts as pending. `ended_from_status`: pipelines that have ended
    are fresh if their status files are (see `fresh`)."""
    try:
        conn = connect_readonly(root)
    except IndexUnavailable:
        return {}
    try:
        heads = {r[0]: PipelineHeadRow(*r[1:]) for r in conn.execute(
            "SELECT pipeline, state, message, started_at, ended_at, problem, problems FROM pipelines")}
        ended = {name for name, h in heads.items() if h.state in ENDED} if ended_from_status else set()
        ok = fresh(conn, root, names, ended=ended)
        heads = {name: h for name, h in heads.items() if name in ok}
        counts: dict[str, dict[str, int]] = {name: {} for name in heads}
        for pipeline, state, n in conn.execute(
                "SELECT s.pipeline, CASE WHEN j.state IS NULL OR j.problem IS NOT NULL THEN 'pending' "
                "ELSE j.state END, count(*) FROM job_specs s LEFT JOIN jobs j USING (pipeline, job) GROUP BY 1, 2"):
            if pipeline in counts:
                counts[pipeline][state] = n
        return {name: OverviewRow(*head, counts=counts[name]) for name, head in heads.items()}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


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
class Result:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def query(root: Root, sql: str, params: Mapping[str, Any] | None = None) -> Result:
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
            return Result(columns, cursor.fetchall())
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


# -- comparing with the tree (fsck) ----------------------------------------------------------------

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


def recorded_objects(fresh_file: Path) -> tuple[list[Row], list[Row]]:
    """From a build of the tree: (pipeline, job, attempt, path, blob, size) of every artifact and
    (pipeline, job, number, commit) of every attempt that has a commit."""
    conn = _connect(fresh_file, readonly=True)
    try:
        artifacts = conn.execute("SELECT pipeline, job, attempt, path, blob, size FROM artifacts "
                                 "ORDER BY pipeline, job, attempt, path").fetchall()
        commits = conn.execute('SELECT pipeline, job, number, "commit" FROM attempts WHERE "commit" IS NOT NULL '
                               "ORDER BY pipeline, job, number").fetchall()
        return artifacts, commits
    finally:
        conn.close()


class ArtifactRow(NamedTuple):
    """An artifact with its attempt's state and commit, as `clowder artifacts` lists it."""

    job: str
    attempt: int
    state: str
    commit: str
    path: str
    blob: str
    size: int
    kind: str


def artifact_rows(root: Root, pipeline: str, job: str | None = None,
                  sha: str | None = None) -> list[ArtifactRow] | None:
    """The pipeline's artifacts (of one job; whose blob id starts with `sha`), by job, attempt and
    path; None if the index does not hold the pipeline fresh."""
    try:
        conn = connect_readonly(root)
    except IndexUnavailable:
        return None
    try:
        if pipeline not in fresh(conn, root, [pipeline]):
            return None
        sql = ('SELECT a.job, a.attempt, t.state, coalesce(t."commit", \'\'), a.path, a.blob, a.size, a.kind '
               "FROM artifacts a JOIN attempts t ON t.pipeline = a.pipeline AND t.job = a.job AND t.number = a.attempt "
               "WHERE a.pipeline = ?")
        args: list[Any] = [pipeline]
        if job is not None:
            sql += " AND a.job = ?"
            args.append(job)
        if sha is not None:  # hex ids: every id starting with `sha` sorts in [sha, sha + "g")
            sql += " AND a.blob >= ? AND a.blob < ?"
            args += [sha.lower(), sha.lower() + "g"]
        return [ArtifactRow(*r) for r in conn.execute(sql + " ORDER BY a.job, a.attempt, a.path", args)]
    except sqlite3.Error:
        return None
    finally:
        conn.close()
