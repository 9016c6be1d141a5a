"""The index's schema: its migrations, each recorded in schema_migrations as it is applied, and
the tables that hold data (clowder.index.rows has a record for each)."""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from clowder.index.errors import IndexUnavailable


class Migration(NamedTuple):
    version: int
    name: str
    statements: tuple[str, ...]


# `clowder status` over every pipeline shows how many of its jobs are in each state. Counting
# them by joining job_specs to jobs read every job of the root: at 10,000 pipelines the query
# alone grew with the jobs (100,000 rows), not with the pipelines. These triggers keep the
# counts as the rows change, whoever writes them (the daemon, reindex, a pipeline forgotten),
# with the query's meaning: a job of the spec without a status row, or whose status file is
# unreadable, counts as pending; a status row without a job of the spec does not count.
# INSERT OR REPLACE on jobs fires no delete trigger (recursive_triggers is off): the row it
# replaces is taken off by the BEFORE INSERT trigger.
_COUNTED = "CASE WHEN {j}.problem IS NOT NULL THEN 'pending' ELSE {j}.state END"


def _bump(pipeline: str, state: str, by: int) -> str:
    """Statements of a trigger's body: the count of `state` in `pipeline` moved by `by`; a count
    that reaches 0 goes, so the table holds what the grouped query gives (fsck compares them)."""
    bump = (f"INSERT INTO job_counts (pipeline, state, n) VALUES ({pipeline}, {state}, {by}) "
            f"ON CONFLICT (pipeline, state) DO UPDATE SET n = n + {by};")
    if by > 0:
        return bump
    return bump + f"\n        DELETE FROM job_counts WHERE pipeline = {pipeline} AND state = {state} AND n = 0;"


def _spec_state(spec: str) -> str:
    """The counted state of the job of spec row `spec` (OLD or NEW of job_specs), from its status row."""
    return (f"coalesce((SELECT {_COUNTED.format(j='j')} FROM jobs j "
            f"WHERE j.pipeline = {spec}.pipeline AND j.job = {spec}.job), 'pending')")


def _has_spec(job: str) -> str:
    return f"EXISTS (SELECT 1 FROM job_specs s WHERE s.pipeline = {job}.pipeline AND s.job = {job}.job)"


# Every job counted at once, from an empty job_counts: the migration that made the table, and
# reindex's bulk load (which fills the rows with the triggers off).
COUNT_JOBS = """INSERT INTO job_counts (pipeline, state, n)
    SELECT s.pipeline, CASE WHEN j.state IS NULL OR j.problem IS NOT NULL THEN 'pending' ELSE j.state END, count(*)
    FROM job_specs s LEFT JOIN jobs j USING (pipeline, job) GROUP BY 1, 2"""

JOB_COUNTS: tuple[str, ...] = (
    """CREATE TABLE job_counts (
        pipeline TEXT NOT NULL,
        state TEXT NOT NULL,        -- a job state; 'pending' for a job without a readable status
        n INTEGER NOT NULL,         -- how many of the pipeline's jobs (of its spec) are in it
        PRIMARY KEY (pipeline, state)
    ) WITHOUT ROWID""",
    f"""CREATE TRIGGER job_counts_spec_added AFTER INSERT ON job_specs BEGIN
        {_bump("NEW.pipeline", _spec_state("NEW"), 1)}
    END""",
    f"""CREATE TRIGGER job_counts_spec_removed AFTER DELETE ON job_specs BEGIN
        {_bump("OLD.pipeline", _spec_state("OLD"), -1)}
    END""",
    f"""CREATE TRIGGER job_counts_status_replaced BEFORE INSERT ON jobs
    WHEN {_has_spec("NEW")} AND EXISTS (SELECT 1 FROM jobs o WHERE o.pipeline = NEW.pipeline AND o.job = NEW.job)
    BEGIN
        {_bump("NEW.pipeline", "(SELECT " + _COUNTED.format(j="o") + " FROM jobs o "
               "WHERE o.pipeline = NEW.pipeline AND o.job = NEW.job)", -1)}
        {_bump("NEW.pipeline", "'pending'", 1)}
    END""",
    f"""CREATE TRIGGER job_counts_status_added AFTER INSERT ON jobs WHEN {_has_spec("NEW")} BEGIN
        {_bump("NEW.pipeline", "'pending'", -1)}
        {_bump("NEW.pipeline", _COUNTED.format(j="NEW"), 1)}
    END""",
    f"""CREATE TRIGGER job_counts_status_removed AFTER DELETE ON jobs WHEN {_has_spec("OLD")} BEGIN
        {_bump("OLD.pipeline", _COUNTED.format(j="OLD"), -1)}
        {_bump("OLD.pipeline", "'pending'", 1)}
    END""",
    f"""CREATE TRIGGER job_counts_status_changed AFTER UPDATE OF state, problem ON jobs WHEN {_has_spec("NEW")} BEGIN
        {_bump("OLD.pipeline", _COUNTED.format(j="OLD"), -1)}
        {_bump("NEW.pipeline", _COUNTED.format(j="NEW"), 1)}
    END""",
    # An index migrated from version 3 already holds rows: count them once.
    COUNT_JOBS,
)

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
    # A table of its own (not columns of attempts): a rejection has no attempt.
    Migration(4, "who approved or rejected a job at its approval gate, when and why", (
        """CREATE TABLE approvals (
            pipeline TEXT NOT NULL,
            job TEXT NOT NULL,
            request TEXT NOT NULL,      -- the approve or reject request that carried it
            verdict TEXT NOT NULL,      -- approved | rejected
            by TEXT NOT NULL,           -- the user, or 'web' for the API's token
            at TEXT NOT NULL,
            comment TEXT NOT NULL,
            attempt INTEGER,            -- the first attempt it let start; NULL: a rejection, or not started yet
            PRIMARY KEY (pipeline, job, request)
        ) WITHOUT ROWID""",
        # Every pipeline's rows lack their approvals until read again: stale until then.
        "DELETE FROM freshness",
    )),
    Migration(5, "what each attempt was made from, and the attempt a cache = true job reused", (
        # JSON {spec, role, source, env, upstreams: {job: commit}} (clowder.state.Inputs)
        "ALTER TABLE attempts ADD COLUMN inputs TEXT",
        "ALTER TABLE attempts ADD COLUMN reused_from INTEGER",
        # Every attempt's row lacks its inputs until read again: stale until then.
        "DELETE FROM freshness",
    )),
    Migration(6, "how many jobs of each pipeline are in each state, kept by triggers", JOB_COUNTS),
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
    "approvals": ("pipeline", "job", "request"),
    "model_outputs": ("blob",),
    "job_counts": ("pipeline", "state"),  # derived from job_specs and jobs by triggers
}
BY_PIPELINE = [t for t in TABLES if t not in ("pipelines", "model_outputs")]  # job_counts last: the triggers empty it
STATUS_TABLES = ("jobs", "attempts", "artifacts", "consumed", "consumption", "approvals")
PIPELINE_STATUS = ("state", "message", "started_at", "ended_at", "prompt_hash", "problem")
PIPELINE_SPEC = ("template", "stages", "valid", "problems")

# Each artifact version an attempt started from: for every upstream commit it consumed, the
# upstream attempt with that commit, and per path the newest artifact recorded up to that
# attempt (attempts of a job build on each other, so older versions are overwritten).
CONSUMPTION = """
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


def version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except sqlite3.OperationalError:  # no such table: an empty file
        return 0
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply the migrations this file lacks, each in its own transaction. Returns those applied."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                 "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    current = version(conn)
    if current > LATEST:
        raise IndexUnavailable(f"the index has schema version {current}, newer than this clowder knows ({LATEST}); "
                          "upgrade clowder, or run `clowder reindex` to rebuild it with this one")
    applied = []
    for m in MIGRATIONS:
        if m.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version(conn) >= m.version:  # another process got there first
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
