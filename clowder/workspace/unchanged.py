"""A commit without git processes, when the attempt changed nothing."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import time
from pathlib import Path

from clowder.workspace.odb import EMPTY_TREE, store_object
from clowder.workspace.repo import STORE, Identity, Repo

# `git add -A` + `git commit` cost 7-9 ms (two processes and a dozen small file writes). When
# the worktree provably equals the index and the index equals HEAD, the commit's tree is HEAD's
# and the commit object is written in-process with gitdb (no reflog entry): ~0.5 ms.

_INDEX_ENTRY = struct.Struct(">10I20sH")  # ctime s/ns, mtime s/ns, dev, ino, mode, uid, gid, size, id, flags
_MAX_CHECKED = 2000  # beyond this many files, git's own index refresh is the faster check
_IndexEntry = tuple[int, int, int, str]  # mtime ns, size, mode, blob id


def untouched(repo: Repo, head: str | None) -> bool:
    """True only if nothing in the worktree or index differs from HEAD, judged as git does: by
    stat data, re-hashing the racily clean files; False whenever unsure (an unknown index
    format, a merge in progress, too many files)."""
    index = _read_index(repo.git_dir / "index")
    if index is None:
        return False
    entries, tree, index_mtime = index
    if tree != (repo.objects().tree_of(head) if head else EMPTY_TREE):
        return False
    seen = 0
    for dirpath, dirs, files in os.walk(repo.path):
        if dirpath == str(repo.path):
            dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            seen += 1
            path = os.path.join(dirpath, name)
            entry = entries.get(os.path.relpath(path, repo.path))
            if entry is None or seen > _MAX_CHECKED or not _same_file(path, entry, index_mtime):
                return False
    return seen == len(entries)


def _same_file(path: str, entry: _IndexEntry, index_mtime: int) -> bool:
    mtime, size, mode, blob = entry
    st = os.lstat(path)
    if mode != (0o120000 if stat.S_ISLNK(st.st_mode) else 0o100755 if st.st_mode & 0o100 else 0o100644):
        return False
    if (st.st_mtime_ns, st.st_size) == (mtime, size) and mtime < index_mtime:
        return True
    # Written in the same clock tick as the index (timestamps are coarse): same stat data may
    # hide other content, and git may have zeroed the size to say so. Compare the content.
    if st.st_mtime_ns != mtime or size not in (0, st.st_size) or st.st_size > 1 << 20:
        return False
    data = os.readlink(path).encode() if stat.S_ISLNK(st.st_mode) else Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob


def _read_index(path: Path) -> tuple[dict[str, _IndexEntry], str, int] | None:
    """path -> (mtime ns, size, mode, blob) of a version 2 or 3 index, its cached root tree id, and the
    index's own mtime; an absent index is empty. None: a format or state not handled here."""
    try:
        data, mtime = path.read_bytes(), path.stat().st_mtime_ns
    except FileNotFoundError:
        return {}, EMPTY_TREE, 0
    if data[:4] != b"DIRC" or int.from_bytes(data[4:8], "big") not in (2, 3):
        return None
    count, pos = int.from_bytes(data[8:12], "big"), 12
    entries: dict[str, _IndexEntry] = {}
    for _ in range(count):
        fields = _INDEX_ENTRY.unpack_from(data, pos)
        flags = fields[11]
        start = pos + 62 + (2 if flags & 0x4000 else 0)
        end = data.index(b"\0", start)
        if flags & 0x3000 or len(entries) > _MAX_CHECKED:  # a merge stage, or too many to check
            return None
        entries[data[start:end].decode(errors="surrogateescape")] = (fields[2] * 10**9 + fields[3], fields[9],
                                                                     fields[6], fields[10].hex())
        pos += (end - pos + 8) & ~7  # entries are NUL-padded to a multiple of 8 bytes
    tree = EMPTY_TREE
    if data[pos:pos + 4] == b"TREE":  # the cache-tree extension: root line "\0<count> <subtrees>\n<id>"
        header_end = data.index(b"\n", pos + 8)
        if data[pos + 9:header_end].split(b" ")[0] == b"-1":
            return None
        tree = data[header_end + 1:header_end + 21].hex()
    elif entries:
        return None
    return entries, tree, mtime


def write_commit(repo: Repo, parent: str | None, message: str, identity: Identity, tree: str | None = None) -> str:
    """The commit object of an attempt, written straight into the pipeline's store (the
    repository borrows from it: nothing to publish): of `tree`, by default its parent's (it
    changed nothing). The caller moves the branch."""
    objects = repo.objects()
    store = repo.path.parent / STORE
    target = store if store.is_dir() else repo.git_dir / "objects"
    if tree is None:
        tree = objects.tree_of(parent) if parent else EMPTY_TREE
    if tree == EMPTY_TREE and not objects.has(tree):
        store_object(target, b"tree", b"")
    now = time.time()
    offset = time.localtime(now).tm_gmtoff
    zone = f"{'-' if offset < 0 else '+'}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
    name, email = (re.sub(r"[<>\n]", "", x) for x in (identity.name, identity.email))
    who = f"{name} <{email}> {int(now)} {zone}"
    parents = f"parent {parent}\n" if parent else ""
    data = f"tree {tree}\n{parents}author {who}\ncommitter {who}\n\n{message}".encode()
    return store_object(target, b"commit", data)
