"""A finished upstream's working tree handed on to its only downstream, and put back when asked.

Writing 10,000 files of its own costs this disk (ext4) 1-5 s whichever way (checkout, copy,
`cp -a`, `git clone`), where moving a tree is one rename per top-level entry: a chain's next
workspace is ready in ~0.1 s for 10,000 files, and the chain keeps one working tree on disk.
The upstream keeps its repository (history, refs, index) and a mark, `.git/CLOWDER_HANDED`;
its files are checked out again from its HEAD when someone needs them: its own next attempt,
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
from collections.abc import Iterator

from clowder.fsio import atomic_write
from clowder.workspace.copy import Unsuitable, parse_index
from clowder.workspace.copy import index_tree as _index_tree
from clowder.workspace.repo import Repo, git

HANDED = "CLOWDER_HANDED"  # .git/CLOWDER_HANDED: this workspace's files went to another (json: to, commit)
MODE_VAR = "CLOWDER_WORKSPACE_HAND_ON"  # never: always check out or copy (auto: hand on where allowed)


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
    if os.environ.get(MODE_VAR, "auto") == "never" or not upstream.exists():
        return False
    with locked(upstream):
        index = _index_for(repo, upstream, commit)
        if index is None:
            return False
        atomic_write(upstream.git_dir / HANDED, json.dumps({"to": job, "commit": commit}))
        atomic_write(repo.git_dir / "index", index)
        for name in os.listdir(upstream.path):
            if name != ".git":
                os.rename(upstream.path / name, repo.path / name)
    # The index came with the files (same inodes): git trusts what its stat data still says, and
    # rewrites from the commit whatever changed since the upstream's commit. What the upstream
    # left uncommitted (ignored files, untracked ones) is not the downstream's: removed.
    git(repo.path, "reset", "-q", "--hard")
    git(repo.path, "clean", "-q", "-ffdx")
    return True


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


def _index_for(repo: Repo, upstream: Repo, commit: str) -> bytes | None:
    """The downstream's index (the upstream's entries, stat data kept), or None if the upstream's
    checkout is not a finished attempt's checkout of `commit` on this file system."""
    if handed(upstream) or upstream.head() != commit or (upstream.git_dir / "MERGE_HEAD").exists():
        return None
    number = upstream.marker().get("attempt")
    if isinstance(number, int) and upstream.attempt(number) is None:  # an attempt of it not committed yet
        return None
    try:
        if os.stat(upstream.path).st_dev != os.stat(repo.path).st_dev:
            return None
        data, entries, extensions, index_mtime = parse_index(upstream.git_dir / "index")
    except (Unsuitable, OSError, ValueError):
        return None
    tree = _index_tree(data, extensions)
    if tree is None or tree != repo.objects().tree_of(commit):
        return None
    parts = [data[:12]]
    for e in entries:
        entry = bytearray(data[e.start:e.end])
        if e.mtime_ns >= index_mtime:  # racily clean: a zero size makes git look at the file again
            entry[36:40] = bytes(4)
        parts.append(bytes(entry))
    # Only the cache-tree extension comes along: the others describe the upstream's directories.
    parts += [name + len(body).to_bytes(4, "big") + body for name, body in extensions if name == b"TREE"]
    body = b"".join(parts)
    return body + hashlib.sha1(body).digest()

