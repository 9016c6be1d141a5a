"""Artifacts: the files an attempt's commit changed or declared as outputs, identified by git
blob ids and recorded in status/<job>.toml (DESIGN §3). clowder.views lists them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
