"""Naming commits on the command line (`dev`, `test@2`) and the commands that show them:
`clowder path` and `clowder diff`."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clowder import known
from clowder.errors import UsageError
from clowder.known import UnknownJob
from clowder.spec import is_name
from clowder.state import read_job_status
from clowder.tree import PipelinePaths
from clowder.workspace.handon import restore
from clowder.workspace.repo import EMPTY_TREE, Repo, WorkspaceError, git


@dataclass(frozen=True)
class Point:
    """A commit named on the command line: `dev` (its final commit) or `dev@2` (an attempt)."""

    job: str
    attempt: int | None
    commit: str
    repo: Path


_POINT = re.compile(r"^(?P<job>[^@]+)(?:@(?P<attempt>[0-9]+))?$")


def _known_job(paths: PipelinePaths, job: str) -> bool:
    try:
        return is_name(job) and bool(known.job(paths, job))
    except UnknownJob:
        return False


def workspace_path(paths: PipelinePaths, job: str) -> Path:
    """The job's workspace, for `cd "$(clowder path p dev)"`, with its files (checked out again if
    they went on to its downstream)."""
    known.existing(paths)
    known.job(paths, job)
    ws = paths.workspace(job)
    if not Repo(ws).exists():
        raise UsageError(f"{paths.name}/{job}: no workspace yet (the job has not started)")
    restore(Repo(ws))
    return ws


def resolve(paths: PipelinePaths, text: str) -> Point:
    """`job` (its final commit) or `job@n` (attempt n's commit)."""
    m = _POINT.match(text)
    if m is None or not _known_job(paths, m["job"]):
        raise UnknownJob(paths, text)
    job, ws = m["job"], paths.workspace(m["job"])
    attempts = read_job_status(paths.job_status_file(job), job).attempts
    if m["attempt"] is None:
        commit = next((a.commit for a in reversed(attempts) if a.commit), None) or Repo(ws).head()
        if commit is None:
            raise UsageError(f"{job}: no commit yet (the job has not run)")
        return Point(job, None, commit, ws)
    number = int(m["attempt"])
    recorded = {a.number: a.commit for a in attempts}
    commit = Repo(ws).attempt(number) or recorded.get(number)
    if commit is None:
        have = ", ".join(str(n) for n, c in sorted(recorded.items()) if c) or "none"
        raise UsageError(f"{job}@{number}: no such attempt (attempts with a commit: {have})")
    return Point(job, number, commit, ws)


def base_of(paths: PipelinePaths, point: Point) -> str:
    """What `point` started from: an attempt's base commit, or a job's first base."""
    attempts = read_job_status(paths.job_status_file(point.job), point.job).attempts
    number = point.attempt or (attempts[0].number if attempts else 1)
    attempt = next((a for a in attempts if a.number == number), None)
    if attempt is not None and attempt.base_commit:
        return attempt.base_commit
    previous = Repo(point.repo).attempt(number - 1) if number > 1 else None
    return previous or EMPTY_TREE


def split_diff_args(paths: PipelinePaths, a: str, rest: Sequence[str]) -> tuple[str | None, list[str]]:
    """(B or None, git diff options) from what follows A on the command line, before `--`.
    Every word that is not an option names a job: paths go after `--`, so a mistyped job is an
    error, never a path that matches nothing."""
    options = [x for x in rest if x.startswith("-")]
    words = [x for x in rest if not x.startswith("-")]
    if len(words) > 1:
        raise UsageError(f"{words[1]!r}: paths go after `--`: "
                         f"clowder diff {paths.name} {a} {words[0]} -- {' '.join(words[1:])}")
    if words:
        try:
            resolve(paths, words[0])
        except UnknownJob as e:
            if e.close or "@" in words[0]:
                raise
            raise UsageError(f"{e}; paths go after `--`: clowder diff {paths.name} {a} -- {words[0]}") from e
    return (words[0] if words else None), options


def diff(paths: PipelinePaths, a: str, rest: Sequence[str],
         files: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`git diff` from A to B, or from A's base to A: `rest` is B and git diff's options, `files`
    the paths (what followed `--`). Commits of different jobs' repositories are compared in B's
    repository with A's objects borrowed for the one command."""
    known.existing(paths)
    old_point = resolve(paths, a)
    second, options = split_diff_args(paths, a, rest)
    new = resolve(paths, second or a)
    old_commit = old_point.commit if second else base_of(paths, new)
    old_repo = old_point.repo
    env = {}
    if old_repo != new.repo:
        env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = str((old_repo / ".git" / "objects").resolve())
    proc = git(new.repo, "diff", *options, old_commit, new.commit, "--", *files, check=False, env=env)
    if proc.returncode > 1:
        raise WorkspaceError(f"git diff failed: {proc.stderr.strip()}")
    return proc
