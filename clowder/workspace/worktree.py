"""An attempt's files committed, and a new workspace's files checked out, in-process: loose blobs,
trees and the commit written straight into the pipeline's store, and the index written as git
writes it (with its cache-tree), so `git status` in the workspace is clean and git's own later
commands find nothing to redo.

Why: `git add -A` + `git commit` (two processes, 5-9 ms) and `git read-tree -u` (one, 3-5 ms plus
a file per blob) were most of a job's cost when it writes a file: a chain of 1,000 jobs that each
copy one file ran 2.6-3.6x as long as one of jobs that change nothing. In-process a small commit
costs ~0.3 ms of CPU. Only the plain case is done here (plain.py: no ignore rules, attributes or
settings that change what git stores; no submodules, nested repositories or special files; at most
MAX_FILES files and MAX_BYTES of content to hash or write); anything else returns None / False,
and the caller runs git as before."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clowder.workspace.gitindex import CachedTree, Entry, Index, read_index, write_index
from clowder.workspace.odb import EMPTY_TREE, Objects, is_blob, is_tree, store_object
from clowder.workspace.plain import plain
from clowder.workspace.repo import STORE, Identity, Repo
from clowder.workspace.unchanged import write_commit

MAX_FILES = 2000  # beyond, git's own index refresh and checkout are as fast, and fewer Python cycles
MAX_BYTES = 16 << 20  # content hashed or written in one call: past it, git's C code is the better place
_REGULAR, _EXECUTABLE, _SYMLINK = 0o100644, 0o100755, 0o120000
_SPECIAL = frozenset({b".gitignore", b".gitattributes"})  # rules git applies, which this module does not


class _Unhandled(Exception):
    """Something git handles and this module does not: the caller runs git."""


@dataclass
class _Dir:
    """A directory of the tree being built: name -> (mode, id) of its files, and its subdirectories."""

    files: dict[bytes, tuple[int, str]] = field(default_factory=dict)
    dirs: dict[bytes, _Dir] = field(default_factory=dict)


def commit_worktree(repo: Repo, parent: str | None, message: str, identity: Identity) -> str | None:
    """Commit every file of the worktree, as `git add -A` + `git commit --allow-empty` would, and
    update the index to match; the caller moves the branch. None: not the plain case (nothing
    was written but objects nobody refers to)."""
    if not plain(repo):
        return None
    index = read_index(repo.git_dir / "index")
    if index is None:
        return None
    target = _objects_dir(repo)
    try:
        entries = list(_scan(repo, index, target))
    except _Unhandled:
        return None
    root = _Dir()
    for e in entries:
        _place(root, e.path, (e.mode, e.blob))
    trees: dict[bytes, CachedTree] = {}
    tree = _write_tree(target, root, b"", trees)
    commit = write_commit(repo, parent, message, identity, tree)
    write_index(repo.git_dir / "index", entries, trees)
    return commit


def checkout_tree(repo: Repo, commit: str) -> bool:
    """Write `commit`'s files into a new repository's empty worktree and its index, as `git
    read-tree -u --reset` would. False, with nothing written, if it is not the plain case."""
    if not plain(repo) or (repo.git_dir / "index").exists() or os.listdir(repo.path) != [".git"]:
        return False
    objs = repo.objects()
    trees: dict[bytes, CachedTree] = {}
    try:
        files = list(_tree_files(objs, objs.tree_of(commit), b"", trees))
        if len(files) > MAX_FILES or sum(objs.size(sha) for _, _, sha in files) > MAX_BYTES:
            return False
    except _Unhandled:
        return False
    base = os.fsencode(repo.path)
    made: set[bytes] = set()
    entries = []
    for path, mode, sha in files:
        full = os.path.join(base, path)
        parent = os.path.dirname(full)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        _write_file(full, mode, objs.read(sha))
        entries.append(Entry.of(path, mode, sha, os.lstat(full)))
    write_index(repo.git_dir / "index", entries, trees)
    return True


# -- committing -------------------------------------------------------------------------------

def _objects_dir(repo: Repo) -> Path:
    """Where new objects go: the pipeline's store (the repository borrows from it; nothing to
    publish), or the repository's own objects when there is none."""
    store = repo.path.parent / STORE
    return store if store.is_dir() else repo.git_dir / "objects"


def _scan(repo: Repo, index: Index, target: Path) -> Iterator[Entry]:
    """An index entry for every file of the worktree: its blob reused from the index where the
    stat data says the file is what the index recorded (and is older than the index: else it is
    "racily clean" and compared by content, as git does), else hashed and stored."""
    budget = [MAX_FILES, MAX_BYTES]
    for path, st in _walk(os.fsencode(repo.path), b""):
        budget[0] -= 1
        if budget[0] < 0:
            raise _Unhandled
        mode = _SYMLINK if stat.S_ISLNK(st.st_mode) else _EXECUTABLE if st.st_mode & 0o100 else _REGULAR
        old = index.entries.get(path)
        if old is not None and old.mode == mode and old.same_stat(st) and old.mtime_ns < index.mtime_ns:
            yield Entry.of(path, mode, old.blob, st)
            continue
        full = os.path.join(os.fsencode(repo.path), path)
        data = os.readlink(full) if mode == _SYMLINK else _read(full)
        budget[1] -= len(data)
        if budget[1] < 0:
            raise _Unhandled
        yield Entry.of(path, mode, store_object(target, b"blob", data), st)


def _walk(base: bytes, prefix: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
    """(path, lstat) of every file and symbolic link below `base`/`prefix`, in no set order."""
    with os.scandir(os.path.join(base, prefix) if prefix else base) as it:
        for entry in it:
            name = entry.name
            if name == b".git" and not prefix:
                continue
            if name.lower().rstrip(b". ") == b".git" or name in _SPECIAL:  # a nested repository, rules
                raise _Unhandled
            st = entry.stat(follow_symlinks=False)
            path = prefix + b"/" + name if prefix else name
            if stat.S_ISDIR(st.st_mode):
                yield from _walk(base, path)
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                yield path, st
            else:  # a FIFO, a socket, a device: git's call
                raise _Unhandled


def _read(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _place(root: _Dir, path: bytes, entry: tuple[int, str]) -> None:
    *dirs, name = path.split(b"/")
    node = root
    for d in dirs:
        node = node.dirs.setdefault(d, _Dir())
    node.files[name] = entry


def _write_tree(target: Path, node: _Dir, path: bytes, trees: dict[bytes, CachedTree]) -> str:
    """Store the tree of `node` and its subtrees (directories without files have none, as in
    git); record each in `trees` for the index's cache-tree. Returns its id."""
    items: list[tuple[bytes, bytes]] = []  # (sort key, entry): git sorts a directory as "name/"
    subtrees, count = [], len(node.files)
    for name, sub in node.dirs.items():
        sub_path = path + b"/" + name if path else name
        sha = _write_tree(target, sub, sub_path, trees)
        if sub_path not in trees:  # empty
            continue
        subtrees.append(name)
        count += trees[sub_path].entries
        items.append((name + b"/", b"40000 " + name + b"\0" + bytes.fromhex(sha)))
    for name, (mode, sha) in node.files.items():
        items.append((name, b"%o " % mode + name + b"\0" + bytes.fromhex(sha)))
    if not items and path:  # a directory without files: no tree, as in git
        return EMPTY_TREE
    tree = store_object(target, b"tree", b"".join(entry for _, entry in sorted(items)))
    trees[path] = CachedTree(path, count, tuple(sorted(subtrees)), tree)
    return tree


# -- checking out -----------------------------------------------------------------------------

def _tree_files(objs: Objects, tree: str, prefix: bytes,
                trees: dict[bytes, CachedTree]) -> Iterator[tuple[bytes, int, str]]:
    """(path, mode, blob) of every file below `tree`, recording each subtree for the cache-tree."""
    entries = objs.entries(tree)
    subtrees = []
    count = 0
    for name_text, (mode, sha) in entries.items():
        name = name_text.encode(errors="surrogateescape")
        if name.lower().rstrip(b". ") in (b"", b".", b"..", b".git") or b"\\" in name or name == b".gitattributes":
            raise _Unhandled  # git refuses or treats these specially
        path = prefix + b"/" + name if prefix else name
        if is_tree(mode):
            found = list(_tree_files(objs, sha, path, trees))
            count += len(found)
            subtrees.append(name)
            yield from found
        elif is_blob(mode):
            count += 1
            yield path, mode, sha
        else:  # a submodule
            raise _Unhandled
    trees[prefix] = CachedTree(prefix, count, tuple(subtrees), tree)


def _write_file(path: bytes, mode: int, data: bytes) -> None:
    if mode == _SYMLINK:
        os.symlink(data, path)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777 if mode == _EXECUTABLE else 0o666)
    with open(fd, "wb") as f:
        f.write(data)
