"""A finished upstream's working tree handed on to its only downstream, and put back when asked.

Writing 10,000 files of its own costs this disk (ext4) 1-5 s whichever way (checkout, copy,
`cp -a`, `git clone`), where moving a tree is one rename per top-level entry and one `git
status`: a chain's next workspace is ready in 0.17 s for 10,000 files, 0.28 s for 50,000 (bench
medians under load), and the chain keeps one working tree on disk. The upstream keeps its
repository (history, refs, index), its run metadata and a mark, `.git/CLOWDER_HANDED`; its
files are checked out again from its HEAD when someone needs them: its own next attempt,
`clowder path`. Everything else reads commits, never its files.

Crash safety: the mark is written before anything moves, and the downstream is built aside and
renamed into place (workspace._create), so a crash leaves the downstream either whole or absent
(its next build starts over and checks out), and the upstream marked, hence put back on demand.
An flock on the upstream's `.git` keeps a hand-on and a put-back (another thread, `clowder path`
in another process) from running at once."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clowder.workspace.repo import EMPTY_TREE, Repo, WorkspaceError, git, read_git

HANDED = "CLOWDER_HANDED"  # .git/CLOWDER_HANDED: this workspace's files went to another (json: to, commit)
MODE_VAR = "CLOWDER_WORKSPACE_HAND_ON"  # auto (the default): trees of MIN_FILES or more; always; never
# Below this many files a checkout costs about what a hand-on's `git status` does (a few ms to
# ~0.1 s here), and the upstream keeps its files where people look for them.
MIN_FILES = 1000
METADATA = ".clowder"  # every job's run metadata: .clowder/<job>/ (metadata_dir)
_MODES = (b"\0\0\x81\xa4", b"\0\0\x81\xed", b"\0\0\xa0\x00")  # 100644, 100755, 120000: no submodules


@contextlib.contextmanager
def locked(repo: Repo) -> Iterator[None]:
    """The repository's files are ours until the block ends (an flock on its .git directory)."""
    fd = os.open(repo.git_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def handed(repo: Repo) -> bool:
    return (repo.git_dir / HANDED).exists()


def hand_on(repo: Repo, upstream: Repo, commit: str, job: str) -> bool:
    """Fill `repo` (a new skeleton at `commit`) by moving the upstream's files into it; False,
    with nothing moved, if the upstream's checkout cannot stand for `commit` (an attempt of it
    in progress, another commit, an index this does not handle, another file system)."""
    mode = os.environ.get(MODE_VAR, "auto")
    if mode == "never" or not upstream.exists() or (mode != "always" and _fewer_than_min(upstream)):
        return False
    with locked(upstream):
        index = _suitable(repo, upstream, commit)
        if index is None or (mode != "always" and int.from_bytes(index.data[8:12], "big") < MIN_FILES):
            return False
        # The mark first: from here on a crash leaves the upstream to be put back from its commit.
        # Not fsynced: a killed daemon is the case (ext4 and XFS journal these renames in order).
        _write(upstream.git_dir / HANDED, json.dumps({"to": job, "commit": commit}).encode())
        # The index comes with the files (same inodes, so its stat data holds), keeping its mtime:
        # git judges "racily clean" entries (as new as the index) exactly as it would upstream.
        _write(repo.git_dir / "index", index.data)
        os.utime(repo.git_dir / "index", ns=(index.mtime_ns, index.mtime_ns))
        for name in os.listdir(upstream.path):
            if name not in (".git", METADATA):
                os.rename(upstream.path / name, repo.path / name)
        # Run metadata (prompts, action logs, outputs: a few small files) is read where its job
        # ran, `cat workspaces/dev/.clowder/dev/prompt.md`: it stays, and the downstream gets a copy.
        with contextlib.suppress(FileNotFoundError):
            shutil.copytree(upstream.path / METADATA, repo.path / METADATA, symlinks=True)
        _settle(repo, upstream)
    return True


def _settle(repo: Repo, upstream: Repo) -> None:
    """Make the moved files exactly the commit's, as a checkout would: one `git status` in the
    usual case (~40 ms for 10,000 files). What changed since the upstream's commit is checked
    out again; what it left uncommitted (ignored files: build output, caches; untracked ones)
    is not the downstream's, and goes back where it was."""
    proc = read_git(repo.path, "-c", "core.untrackedCache=false", "status", "--porcelain", "-z",
                    "--ignored=matching", "--untracked-files=normal")
    if proc.returncode != 0:
        raise WorkspaceError(f"{repo.path}: git status failed: {os.fsdecode(proc.stderr).strip()}")
    entries = [e for e in proc.stdout.split(b"\0") if e]
    for e in entries:  # first: a checkout below would overwrite an untracked file in its way
        if e.startswith((b"??", b"!!")):
            path = os.fsdecode(e[3:]).rstrip("/")
            back = upstream.path / path
            if back.exists() or back.is_symlink():  # in what stayed (run metadata): this is a copy
                _remove(repo.path / path)
                continue
            back.parent.mkdir(parents=True, exist_ok=True)
            os.rename(repo.path / path, back)
    if any(not e.startswith((b"??", b"!!")) for e in entries):
        git(repo.path, "reset", "-q", "--hard")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def restore(repo: Repo) -> None:
    """Check a workspace's files out again from its HEAD if it handed them on; no-op otherwise."""
    if not handed(repo):
        return
    with locked(repo):
        restore_locked(repo)


def restore_locked(repo: Repo) -> None:
    """`restore`, for a caller that holds the lock."""
    if not handed(repo):
        return
    # The index still lists the files that left: git checks each out again (and keeps any a crash
    # left behind, unchanged), then the mark goes: a crash before that only means doing it again.
    git(repo.path, "reset", "-q", "--hard")
    (repo.git_dir / HANDED).unlink()


@dataclass(frozen=True)
class _Index:
    data: bytes
    mtime_ns: int


def _fewer_than_min(upstream: Repo) -> bool:
    """Whether the upstream's index surely lists fewer than MIN_FILES files, from its size alone
    (an entry takes 64 bytes or more): a small tree is checked out without locking or reading
    anything of the upstream's, on every start of a chain's job."""
    try:
        return os.stat(upstream.git_dir / "index").st_size < MIN_FILES * 64
    except OSError:
        return True


def _suitable(repo: Repo, upstream: Repo, commit: str) -> _Index | None:
    """The upstream's index if its checkout is a finished attempt's checkout of `commit`, on this
    file system, with an index as git writes it by default (handed to git as it is); else None."""
    if handed(upstream) or upstream.head() != commit or (upstream.git_dir / "MERGE_HEAD").exists():
        return None
    number = upstream.marker().get("attempt")
    if isinstance(number, int) and upstream.attempt(number) is None:  # an attempt of it not committed yet
        return None
    try:
        if os.stat(upstream.path).st_dev != os.stat(repo.path).st_dev:
            return None
        with open(upstream.git_dir / "index", "rb") as f:
            index = _Index(f.read(), os.fstat(f.fileno()).st_mtime_ns)
    except OSError:
        return None
    return index if _plain_index(index.data) == repo.objects().tree_of(commit) else None


def _plain_index(data: bytes) -> str | None:
    """The tree a version 2 or 3 index holds (its cache-tree), or None: merge stages, submodules,
    skip-worktree or intent-to-add entries, an extension git requires (split or sparse index),
    a bad checksum. A lean walk (~20 ms for 10,000 entries): copy.parse_index decodes every entry."""
    if len(data) < 32 or data[:4] != b"DIRC" or data[4:8] not in (b"\0\0\0\2", b"\0\0\0\3"):
        return None
    if hashlib.sha1(data[:-20]).digest() != data[-20:]:
        return None
    count, pos, index = int.from_bytes(data[8:12], "big"), 12, data.index
    for _ in range(count):
        if data[pos + 24:pos + 28] not in _MODES or data[pos + 60] & 0x70:  # extended flags, a merge stage
            return None
        pos += (index(b"\0", pos + 62) - pos + 8) & ~7  # entries are NUL-padded to a multiple of 8 bytes
    tree = EMPTY_TREE if count == 0 else None
    while pos < len(data) - 20:
        name, length = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "big")
        if not name[:1].isupper():
            return None
        if name == b"TREE":  # the root's line: "\0<entries> <subtrees>\n<id>"; -1 entries: invalidated
            body = data[pos + 8:pos + 8 + length]
            header_end = body.index(b"\n")
            tree = None if body[1:header_end].startswith(b"-1") else body[header_end + 1:header_end + 21].hex()
        pos += 8 + length
    return tree


def _write(path: Path, data: bytes) -> None:
    """Write-then-rename, as git writes files in .git: a reader sees the old file or the new."""
    tmp = path.with_name(path.name + ".lock")
    tmp.write_bytes(data)
    os.replace(tmp, path)
