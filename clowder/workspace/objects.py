"""Reading a workspace's git objects for the index (`clowder reindex`, `clowder fsck`): a blob's
content and whether the objects a status file names are there. Read-only plumbing that works on any
repository, with or without Clowder's object store; git runs through `repo`'s one policy."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from pathlib import Path

from clowder.workspace.repo import read_git


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_blob(ws: Path, blob: str, path: str | None = None) -> bytes | None:
    """A blob's content from a workspace, cheapest way first: the working-tree file when it still
    has that content, a loose object (of the repository or of a store it borrows from), then
    `git cat-file` (packs). None if it is nowhere. Read-only; never raises for a missing repo."""
    if path is not None:
        try:
            data = (ws / path).read_bytes()
        except OSError:
            data = None
        if data is not None and blob_id(data) == blob:
            return data
    for objects in _object_dirs(ws):
        try:
            raw = zlib.decompress((objects / blob[:2] / blob[2:]).read_bytes())
        except (OSError, zlib.error):
            continue
        header, _, content = raw.partition(b"\0")
        if header.startswith(b"blob "):
            return content
    if not (ws / ".git").exists():
        return None
    proc = read_git(ws, "cat-file", "blob", blob)
    return proc.stdout if proc.returncode == 0 else None


def _object_dirs(ws: Path) -> list[Path]:
    objects = ws / ".git" / "objects"
    dirs = [objects]
    try:
        lines = (objects / "info" / "alternates").read_text().splitlines()
    except OSError:
        lines = []
    dirs += [(objects / line.strip()).resolve() for line in lines if line.strip() and not line.startswith("#")]
    return dirs


def check_objects(ws: Path, wanted: Mapping[str, tuple[str, int | None]]) -> dict[str, str]:
    """Which of `wanted` (object id -> (type, size or None)) the repository at `ws` lacks or
    holds differently, with why. One `git cat-file --batch-check` for the whole repository."""
    if not (ws / ".git").exists():
        return dict.fromkeys(wanted, "no workspace repository")
    ids = sorted(wanted)
    proc = read_git(ws, "cat-file", "--batch-check", stdin="".join(f"{i}\n" for i in ids).encode())
    if proc.returncode != 0:
        return dict.fromkeys(wanted, f"git cat-file failed: {proc.stderr.decode(errors='replace').strip()}")
    out = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == "missing":
            out[parts[0]] = "missing from the repository"
        elif len(parts) == 3 and parts[0] in wanted:
            kind, size = wanted[parts[0]]
            if parts[1] != kind:
                out[parts[0]] = f"is a {parts[1]}, recorded as a {kind}"
            elif size is not None and int(parts[2]) != size:
                out[parts[0]] = f"has {parts[2]} bytes, recorded as {size}"
    return out
