"""Artifacts: the files an attempt's commit changed or declared as outputs, identified by git
blob ids and recorded in status/<job>.toml (DESIGN §3); listing and finding them."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clowder import known
from clowder.errors import UsageError
from clowder.state import read_job_status
from clowder.tree import PipelinePaths

FILE = "file"
MODEL_OUTPUT = "model_output"
ERROR_CONTEXT = "error_context"
OUTPUT_FILE = "output.json"
ERROR_FILE = "error.json"


def metadata_dir(job: str) -> str:
    """The job's run metadata inside its workspace: prompt, action log, output, error."""
    return f".clowder/{job}"


def metadata_path(workspace: Path, job: str) -> Path:
    """`workspace/.clowder/<job>`, made a real directory of the workspace before Clowder writes
    there: a job (or an upstream's commit) may have left a symbolic link or a file in its place,
    and nothing written there may land outside the root. What is in the way goes: the directory
    is Clowder's, by contract."""
    here = workspace
    for part in metadata_dir(job).split("/"):
        here = here / part
        if here.is_symlink() or (here.exists() and not here.is_dir()):
            here.unlink()
        here.mkdir(exist_ok=True)
    return here


def write_metadata(workspace: Path, job: str, name: str, text: str) -> Path:
    """Write one file of the job's run metadata, never through a link left in its place."""
    path = metadata_path(workspace, job) / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def kind_of(path: str, job: str) -> str:
    if path == f"{metadata_dir(job)}/{OUTPUT_FILE}":
        return MODEL_OUTPUT
    if path == f"{metadata_dir(job)}/{ERROR_FILE}":
        return ERROR_CONTEXT
    return FILE


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
