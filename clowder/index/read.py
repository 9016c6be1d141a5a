"""Reading the index: what `clowder status`, `clowder artifacts` and the tests ask of it, as
named records, for the pipelines it holds fresh."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

from clowder.index.db import connect_readonly, placeholders
from clowder.index.errors import IndexUnavailable
from clowder.index.freshness import fresh
from clowder.index.schema import TABLES
from clowder.tree import Root

ENDED = ("succeeded", "failed", "cancelled")  # pipeline states that no longer change by themselves


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every data table, every row, in key order (bookkeeping tables left out)."""
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {', '.join(k)}").fetchall() for t, k in TABLES.items()}


def dump_index(root: Root) -> dict[str, list[tuple[Any, ...]]]:
    conn = connect_readonly(root)
    try:
        return dump(conn)
    finally:
        conn.close()


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


class DecisionRow(NamedTuple):
    """A decision on a job's approval gate, as `clowder status --json` shows it."""

    verdict: str
    by: str
    at: str
    comment: str
    attempt: int | None


class StatusRows(NamedTuple):
    """What `clowder status` shows of the fresh pipelines, in display order."""

    pipelines: dict[str, PipelineHeadRow]
    jobs: dict[str, list[JobStatusRow]]  # by position
    needs: dict[tuple[str, str], list[str]]  # (pipeline, job) -> what it needs, in spec order
    decisions: dict[tuple[str, str], list[DecisionRow]]  # (pipeline, job) -> its gate's decisions, oldest first


def status_rows(root: Root, names: Sequence[str]) -> StatusRows:
    """The status of those of `names` the index holds fresh (none if there is no usable index)."""
    empty = StatusRows({}, {}, {}, {})
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
        where = f" WHERE pipeline IN ({placeholders(len(few))})" if few else ""
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
        decisions: dict[tuple[str, str], list[DecisionRow]] = {}
        for p, job, *decision in conn.execute(
                "SELECT pipeline, job, verdict, by, at, comment, attempt FROM approvals" + where
                + " ORDER BY pipeline, job, at", args):
            if p in jobs:
                decisions.setdefault((p, job), []).append(DecisionRow(*decision))
        return StatusRows(pipelines, jobs, needs, decisions)
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
        # Per pipeline, not per job: at 10,000 pipelines every step here is paid 10,000 times.
        heads = conn.execute(
            "SELECT pipeline, state, message, started_at, ended_at, problem, problems FROM pipelines").fetchall()
        ended = {h[0] for h in heads if h[1] in ENDED} if ended_from_status else set()
        ok = fresh(conn, root, names, ended=ended)
        counts: dict[str, dict[str, int]] = {}
        # Kept by triggers (schema.JOB_COUNTS): a row per pipeline and state, not one per job.
        for pipeline, state, n in conn.execute("SELECT pipeline, state, n FROM job_counts"):
            if pipeline in counts:
                counts[pipeline][state] = n
            else:
                counts[pipeline] = {state: n}
        # tuple.__new__, not OverviewRow(...): its generated __new__ is Python, paid once a pipeline.
        new = tuple.__new__
        return {p: new(OverviewRow, (state, message, started, ended_at, problem, problems, counts.get(p) or {}))
                for p, state, message, started, ended_at, problem, problems in heads if p in ok}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def ended_fresh(root: Root, names: Sequence[str]) -> dict[str, str | None]:
    """Of `names`, the pipelines that have ended, with no job running and no problem in their
    specs, as rows the index holds fresh, spec files included: name -> the prompt hash their
    status records. A daemon starting on a root of many finished pipelines reads only the others
    (see clowder.driver.dormant). Empty if there is no usable index."""
    try:
        conn = connect_readonly(root)
    except IndexUnavailable:
        return {}
    try:
        ended = {p: h for p, h in conn.execute(
            f"SELECT pipeline, prompt_hash FROM pipelines WHERE state IN ({placeholders(len(ENDED))}) "
            "AND problem IS NULL AND problems IS NULL", ENDED)}
        running = {p for (p,) in conn.execute("SELECT pipeline FROM job_counts WHERE state = 'running'")}
        candidates = [n for n in names if n in ended and n not in running]
        return {n: ended[n] for n in fresh(conn, root, candidates)}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


class ArtifactListRow(NamedTuple):
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
                  sha: str | None = None) -> list[ArtifactListRow] | None:
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
        return [ArtifactListRow(*r) for r in conn.execute(sql + " ORDER BY a.job, a.attempt, a.path", args)]
    except sqlite3.Error:
        return None
    finally:
        conn.close()
