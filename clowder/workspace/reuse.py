"""A reused attempt (`cache = true`): an earlier attempt's commit named as the new attempt too."""

from __future__ import annotations

from pathlib import Path

from clowder.fsio import atomic_write
from clowder.workspace.repo import ATTEMPT_REFS, TAG_PREFIX, Repo, WorkspaceError


def name_attempt(ws: Path, attempt: int, commit: str) -> None:
    """Tag `commit` `attempt-<attempt>` and record it as that attempt (refs/clowder/attempts/<n>),
    so `job@n`, `clowder diff` and the downstreams' merged tags find the reused attempt. Safe to
    call again."""
    repo = Repo(ws)
    if not repo.exists():
        raise WorkspaceError(f"{ws}: the workspace of the attempt to reuse is gone")
    repo.write_refs({f"refs/tags/{TAG_PREFIX}{attempt}": commit, f"{ATTEMPT_REFS}{attempt}": commit})


def record_reuse(ws: Path, log: Path, attempt: int, commit: str, reused_from: int) -> None:
    """Name the commit as the new attempt, and give the attempt a log saying it did not run."""
    name_attempt(ws, attempt, commit)
    log.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(log, f"clowder: not run: reused attempt {reused_from} (same inputs), commit {commit}\n")
