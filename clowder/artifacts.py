"""Artifacts: the files an attempt's commit changed or declared as outputs, identified by git
blob ids and recorded in status/<job>.toml (DESIGN §3); listing and finding them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from clowder import known
from clowder.errors import UsageError
from clowder.metadata import write_metadata as write_metadata  # its home before clowder.metadata
from clowder.state import read_job_status
from clowder.tree import PipelinePaths


@dataclass(frozen=True)
class Row:
    """One artifact of one attempt."""

    job: str
    attempt: int
    state: str
    commit: str
    path: str
    blob: str
    size: int
    kind: str


def list_artifacts(paths: PipelinePaths, job: str | None = None, sha: str | None = None) -> list[Row]:
    """Every recorded artifact of the pipeline (or of one job), oldest attempt first; with `sha`,
    only those whose blob id starts with it."""
    known.existing(paths)
    if sha is not None and (len(sha) < 4 or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise UsageError(f"--sha {sha!r}: give at least 4 hex digits of a blob id")
    if job is not None:
        known.job(paths, job)
    indexed = _from_index(paths, job, sha)
    if indexed is not None:
        return indexed
    jobs = [job] if job is not None else sorted(f.stem for f in paths.status_dir.glob("*.toml"))
    rows = []
    for name in jobs:
        for a in read_job_status(paths.job_status_file(name), name).attempts:
            rows += [Row(name, a.number, a.state.value, a.commit or "", x.path, x.blob, x.size, x.kind)
                     for x in a.artifacts if sha is None or x.blob.startswith(sha.lower())]
    return rows


def _from_index(paths: PipelinePaths, job: str | None, sha: str | None) -> list[Row] | None:
    """The same rows from the index, when it holds the pipeline fresh (clowder.index.fresh)."""
    from clowder.index import artifact_rows
    from clowder.tree import Root

    found = artifact_rows(Root(paths.dir.parent.parent), paths.name, job, sha)
    return None if found is None else [Row(*r) for r in found]


def to_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
