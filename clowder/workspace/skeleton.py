"""New job repositories: skeletons borrowing from the pipeline's shared object store
(`workspaces/.objects/`), the store itself, and a skeleton's first checkout."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path

from clowder.workspace.odb import EMPTY_TREE
from clowder.workspace.repo import BRANCH_PREFIX, PACKED_HEADER, SHALLOW, STORE, STORE_FROM_OBJECTS, Repo, git
from clowder.workspace.worktree import checkout_tree

# -- the shared object store ------------------------------------------------------------------

_stores: set[Path] = set()  # made by this process: a mkdir per call showed in the per-job profile


def store_dir(workspaces: Path) -> Path:
    store = workspaces / STORE
    if store not in _stores or not store.is_dir():  # a stat, not a mkdir: a pipeline may be made anew
        store.mkdir(parents=True, exist_ok=True)
        _stores.add(store)
    return store


def publish(repo: Repo, since_ns: int = 0) -> None:
    """Hard-link the repository's objects into the pipeline's store, so downstream repositories
    (which borrow from the store) see them. Only fan-out directories modified since `since_ns`
    are scanned: the objects of one attempt, not the whole history."""
    objects, store = repo.git_dir / "objects", store_dir(repo.path.parent)
    # File timestamps come from a coarse kernel clock that may lag time.time_ns(): keep a margin.
    since = since_ns - 2_000_000_000
    for entry in os.scandir(objects):
        is_objects = entry.name == "pack" or (len(entry.name) == 2 and entry.is_dir())
        if is_objects and entry.stat().st_mtime_ns >= since:
            _link_dir(Path(entry.path), store / entry.name)


def _link_dir(src: Path, dst: Path) -> None:
    dst.mkdir(exist_ok=True)
    # A pack is found through its .idx: link the .pack (and .rev, ...) before the .idx.
    for name in sorted(os.listdir(src), key=lambda n: (n.endswith(".idx"), n)):
        if name.endswith((".lock", ".tmp")) or name.startswith("tmp_"):
            continue
        with contextlib.suppress(FileExistsError):
            os.link(src / name, dst / name)


# -- creating repositories --------------------------------------------------------------------

_probe_lock = threading.Lock()
_probed: dict[Path, tuple[str, str]] = {}


def _probe(workspaces: Path) -> tuple[str, str]:
    """config and HEAD of a fresh `git init` on this file system, made once per process."""
    with _probe_lock:
        if workspaces not in _probed:
            workspaces.mkdir(parents=True, exist_ok=True)
            tmp = workspaces / f".probe-{os.getpid()}-{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                git(workspaces, "init", "-q", "--template=", str(tmp))
                _probed[workspaces] = ((tmp / ".git" / "config").read_text(), (tmp / ".git" / "HEAD").read_text())
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return _probed[workspaces]


def alternates_text(git_dir: Path) -> str:
    """The lines of a job repository's objects/info/alternates: the store relative to the objects
    directory (git), then absolute, for gitdb (GitPython's GitDB, which aider uses), which resolves a
    relative entry against the process's cwd. git skips the second line: the same directory."""
    return f"{STORE_FROM_OBJECTS}\n{_resolved_store(git_dir.parent.parent)}\n"


@functools.lru_cache(maxsize=64)
def _resolved_store(workspaces: Path) -> Path:
    """workspaces/.objects with every link resolved: the same for each job of a pipeline, and a
    realpath walks the whole path (a lstat per component) at every start."""
    return (workspaces / STORE).resolve()


def skeleton(path: Path, head: str | None, tags: Mapping[str, str] | None = None, job: str = "") -> Repo:
    """A new repository at `path` borrowing from the store, its branch (`clowder/<job>`) at `head`
    (None: unborn) and these tags (name -> commit). Few files: each one created costs here."""
    config, head_text = _probe(path.parent)
    if job:  # one naming rule for every workspace, never the user's init.defaultBranch
        head_text = f"ref: {BRANCH_PREFIX}{job}\n"
    store_dir(path.parent)
    git_dir = path / ".git"
    for d in (path, git_dir, git_dir / "objects", git_dir / "objects" / "info", git_dir / "refs"):
        d.mkdir(exist_ok=d == path)
    (git_dir / "config").write_text(config)
    (git_dir / "HEAD").write_text(head_text)
    (git_dir / "objects" / "info" / "alternates").write_text(alternates_text(git_dir))
    with contextlib.suppress(FileNotFoundError):  # a shallow source: its history stops there, in every workspace
        shutil.copyfile(path.parent / SHALLOW, git_dir / "shallow")
    repo = Repo(path)
    refs = [f"{sha} refs/tags/{name}" for name, sha in sorted((tags or {}).items())]
    if head is not None:
        refs.append(f"{head} {repo.branch()}")
    if refs:
        (git_dir / "packed-refs").write_text("\n".join([PACKED_HEADER, *sorted(refs, key=_ref_name)]) + "\n")
    return repo


def _ref_name(line: str) -> str:
    return line.partition(" ")[2]


def checkout(repo: Repo) -> None:
    head = repo.head()
    # An empty tree needs no index; in-process where git would do nothing more (worktree.py).
    if head is not None and repo.objects().tree_of(head) != EMPTY_TREE and not checkout_tree(repo, head):
        git(repo.path, "read-tree", "-u", "--reset", "HEAD")
