"""A pipeline's source repository: the commit its first jobs start from, brought into a new
workspace as objects and files only. None of the source's refs, remotes or borrowed objects
come along (they collided with Clowder's own tags, broke the next job, and let a job push
into the user's repository), and nothing is ever written to the source."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clowder.fsio import atomic_write, read_input
from clowder.spec import Source, is_url
from clowder.workspace import sparse
from clowder.workspace.copy import copy_checkout
from clowder.workspace.repo import BRANCH_PREFIX, SHALLOW, Identity, Repo, WorkspaceError, git
from clowder.workspace.skeleton import alternates_text, publish, store_dir

RECORD = ".source.json"  # workspaces/.source.json: where the pipeline started (SourceRecord)
_READ_ONLY = ("--no-optional-locks",)  # a read in the user's repository never refreshes its index
# The first jobs of a pipeline start in parallel: one at a time decides where they all start.
_locks: dict[Path, threading.Lock] = {}
_locks_lock = threading.Lock()


def _lock(workspaces: Path) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(workspaces, threading.Lock())


@dataclass(frozen=True)
class SourceRecord:
    """Where a pipeline's history starts: the source's commit, the snapshot of its working tree
    made on top of it (`worktree = true`), and what the user was warned about."""

    repo: str
    ref: str | None
    commit: str | None
    snapshot: str | None = None
    warning: str = ""


def resolve(root: Path, source: Source) -> str:
    """What git is given: a URL as written, a path made absolute (relative to the root)."""
    if is_url(source.repo):
        return source.repo
    return str((root / Path(source.repo).expanduser()).resolve())


def clone(path: Path, job: str, source: Source, root: Path, identity: Identity,
          sparse_checkout: Sequence[str] = ()) -> tuple[Repo, SourceRecord, bool]:
    """A repository at `path` holding the source's commit (`source.ref`, else its HEAD) on the
    branch `clowder/<job>`, checked out with its submodules, borrowing from nothing but the
    pipeline's store; with `source.worktree`, the checkout's working tree committed on top.
    Every job of the pipeline that starts from the source starts from the same commit: the
    one the first of them found, recorded in `workspaces/.source.json`; the bool says whether
    this call recorded it (and so is the one to pass its warning on). With `sparse_checkout`,
    only those paths are checked out (sparse.py)."""
    with _lock(path.parent):
        url = resolve(root, source)
        local = None if is_url(source.repo) else Path(url)
        recorded = read_record(path.parent)
        if recorded is not None and (recorded.repo, recorded.ref) != (source.repo, source.ref):
            recorded = None  # the pipeline's source was changed by hand: start from the new one
        wanted = recorded.commit if recorded else _local_commit(local, source) if local is not None else None
        # `--`: the URL is the user's text, which git must never read as an option (--upload-pack=...).
        fetched = url if local is not None else str(_cached(root, url, fetch=recorded is None))
        git(path.parent, "clone", "-q", "--no-checkout", "--template=", "--", fetched, str(path))
        repo = Repo(path)
        if local is None:  # relative submodule URLs resolve against the source's, not the cache's
            git(path, "config", "--", "remote.origin.url", url)
        commit = wanted if local is not None or recorded else _cloned_commit(repo, source)
        _only_our_branch(repo, job, commit)
        _dissociate(repo)
        with (repo.git_dir / "objects" / "info" / "alternates").open("a") as f:
            f.write(alternates_text(repo.git_dir))
        store_dir(path.parent)
        _keep_shallow(repo)
        if commit is not None and not _has(repo, commit):
            raise WorkspaceError(f"pipeline.toml: source: {source.repo}: commit {commit} is not in it any more")
        record = recorded or SourceRecord(source.repo, source.ref, commit)
        if source.worktree:
            if record.snapshot is None or not _has(repo, record.snapshot):
                snapshot = _snapshot(repo, source, local, root, commit, identity)
                record = SourceRecord(source.repo, source.ref, commit, snapshot)
            repo.write_ref(f"{BRANCH_PREFIX}{job}", record.snapshot or "")
        elif recorded is None and local is not None and commit is not None \
                and (source.ref is None or commit == _local_commit(local, Source(source.repo))):
            record = SourceRecord(source.repo, source.ref, commit, None, _uncommitted(local, source, root))
        if recorded != record:
            write_record(path.parent, record)
    head = repo.head()
    sparse.configure(repo, sparse_checkout, head, checked_out=False)
    if head is not None:
        # A checkout of the source on this machine at that very commit: its files are copied
        # (a sparse job's are checked out: only its paths).
        if local is None or not (local / ".git").is_dir() or sparse_checkout \
                or not copy_checkout(repo, Repo(local), head):
            git(path, "read-tree", "-u", "--reset", "HEAD")
        _submodules(repo)
    git(path, "remote", "remove", "origin")  # a job's `git push` has nowhere to go
    return repo, record, recorded is None


CACHE = "sources"  # <root>/.clowder/sources/<hash>.git: a bare clone of each URL source, shared by the root
_cache_locks: dict[Path, threading.Lock] = {}


def _cached(root: Path, url: str, fetch: bool) -> Path:
    """The root's bare clone of `url`, cloned on first use; with `fetch` (a pipeline starting),
    brought up to date (only what is new crosses the network). Every workspace of every pipeline
    of the root is then a local clone of it: objects hard-linked, no copy of the history."""
    cache = root / ".clowder" / CACHE / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")
    with _locks_lock:
        lock = _cache_locks.setdefault(cache, threading.Lock())
    cache.parent.mkdir(parents=True, exist_ok=True)
    with lock, open(cache.parent / (cache.name + ".lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another Clowder process on the same root (`clowder run`)
        if not (cache / "HEAD").is_file():
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                git(cache.parent, "clone", "-q", "--bare", "--template=", "--", url, str(tmp))
                os.rename(tmp, cache)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        elif fetch:
            git(cache, "fetch", "-q", "--prune", "--force", "origin", "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*")
    return cache


def _has(repo: Repo, commit: str) -> bool:
    return git(repo.path, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0


def _git_local(local: Path, *args: str) -> str | None:
    """git's output in the user's repository, None if it fails."""
    proc = git(local, *_READ_ONLY, *args, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _local_commit(local: Path, source: Source) -> str | None:
    """The commit `source.ref` (default HEAD) names in a repository on this machine, asked of the
    repository itself: a linked worktree's or a detached HEAD, a branch of its remotes, a tag."""
    if not local.is_dir():
        raise WorkspaceError(f"pipeline.toml: source.repo: {source.repo}: no such directory")
    if _git_local(local, "rev-parse", "--git-dir") is None:
        raise WorkspaceError(f"pipeline.toml: source.repo: {source.repo} is not a git repository")
    sha = _git_local(local, "rev-parse", "--verify", "-q", "--end-of-options", f"{source.ref or 'HEAD'}^{{commit}}")
    if sha is None and source.ref:
        raise WorkspaceError(f"pipeline.toml: source.ref: {source.ref!r} is not a branch, tag or commit "
                             f"of {source.repo}")
    return sha  # None: an empty repository


def _cloned_commit(repo: Repo, source: Source) -> str | None:
    """The commit `source.ref` names in a fresh clone of a URL (its remote's HEAD by default)."""
    if not source.ref:
        return repo.head()
    for candidate in (f"refs/remotes/origin/{source.ref}", f"refs/tags/{source.ref}", source.ref):
        proc = git(repo.path, "rev-parse", "--verify", "-q", "--end-of-options", f"{candidate}^{{commit}}",
                   check=False)
        if proc.returncode == 0:
            return proc.stdout.strip()
    raise WorkspaceError(f"pipeline.toml: source.ref: {source.ref!r} is not a branch, tag or commit of {source.repo}")


def _only_our_branch(repo: Repo, job: str, commit: str | None) -> None:
    """Drop every ref the clone brought (branches, tags, notes, remote-tracking refs and their
    logs): the workspace holds Clowder's refs alone, on its branch `clowder/<job>`."""
    for name in ("refs", "logs"):
        shutil.rmtree(repo.git_dir / name, ignore_errors=True)
    (repo.git_dir / "refs").mkdir()
    with contextlib.suppress(FileNotFoundError):
        (repo.git_dir / "packed-refs").unlink()
    branch = f"{BRANCH_PREFIX}{job}"
    (repo.git_dir / "HEAD").write_text(f"ref: {branch}\n")
    if commit is not None:
        repo.write_ref(branch, commit)


def _dissociate(repo: Repo) -> None:
    """A source that borrows objects (`clone --shared`/`--reference`, a Clowder workspace) is
    cloned borrowing from the same places; copy what the commit needs and stop borrowing, so
    the pipeline's store gets every object and a lender's gc can never break a workspace."""
    alternates = repo.git_dir / "objects" / "info" / "alternates"
    if not alternates.exists():
        return
    if repo.head() is not None:
        git(repo.path, "repack", "-a", "-d", "-q")
    alternates.unlink()


def _keep_shallow(repo: Repo) -> None:
    """A shallow source's history stops at grafted commits: every workspace of the pipeline
    must know where (git reads it from `.git/shallow`), or the first `git log` or merge fails."""
    shallow = repo.git_dir / "shallow"
    if not shallow.exists():
        return
    kept = repo.path.parent / SHALLOW
    lines = set(shallow.read_text().split())
    with contextlib.suppress(FileNotFoundError):
        lines |= set(kept.read_text().split())
    atomic_write(kept, "".join(f"{line}\n" for line in sorted(lines)))


def _submodules(repo: Repo) -> None:
    """Check out the source's submodules from the places the source names (relative URLs are
    resolved against it: before `origin` is removed). Local paths need file transport, allowed
    for this command only; a submodule's own remote is removed like the workspace's."""
    if not (repo.path / ".gitmodules").is_file():
        return
    git(repo.path, "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init", "--recursive")
    git(repo.path, "submodule", "foreach", "-q", "--recursive", "git remote remove origin || :")


def carry_submodules(repo: Repo, upstream: Repo) -> None:
    """Check out a new workspace's submodules from its upstream's copies of them (the source's
    are never read again): their repositories are copied, objects hard-linked, and updated to
    the commits the new workspace's tree records. Nothing to do without a `.gitmodules`."""
    modules = upstream.git_dir / "modules"
    if not (repo.path / ".gitmodules").is_file() or not modules.is_dir():
        return
    shutil.copytree(modules, repo.git_dir / "modules", symlinks=True, copy_function=_link_objects)
    git(repo.path, "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init", "--recursive")


def _link_objects(src: str, dst: str) -> None:
    """Objects never change: link them; everything else (config, index, refs) is the copy's own."""
    if f"{os.sep}objects{os.sep}" in src:
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return
    shutil.copy2(src, dst)


def _top(local: Path) -> Path | None:
    """The working tree of a checkout; None for a bare repository."""
    if _git_local(local, "rev-parse", "--is-bare-repository") == "true":
        return None
    top = _git_local(local, "rev-parse", "--show-toplevel")
    return Path(top) if top else None


def _outside(top: Path, root: Path) -> tuple[str, ...]:
    """Pathspecs leaving out the Clowder root when it lies inside the source's working tree (its
    pipelines' workspaces would go into their own source), or, if the root is the checkout's
    top, what Clowder writes there."""
    try:
        inner = root.resolve().relative_to(top.resolve()).as_posix()
    except ValueError:
        return ()
    if inner != ".":
        return (f":(exclude){inner}",)
    return (":(exclude)pipelines", ":(exclude).clowder")


def _uncommitted(local: Path, source: Source, root: Path) -> str:
    """A warning if the checkout the pipeline starts from has changes its commit lacks."""
    top = _top(local)
    if top is None:
        return ""
    out = _git_local(top, "status", "--porcelain", "-z", "--no-renames", "--untracked-files=normal",
                     "--", ".", *_outside(top, root)) or ""
    count = len([x for x in out.split("\0") if x])
    if not count:
        return ""
    return (f"source {source.repo} has uncommitted changes ({count} file{'s' if count > 1 else ''}) that this "
            "pipeline does not include; `worktree = true` in pipeline.toml's source starts from the working tree "
            "as it is")


def _snapshot(repo: Repo, source: Source, local: Path | None, root: Path, base: str | None,
              identity: Identity) -> str:
    """Commit the source checkout's working tree as it is (untracked files too, ignored ones
    not) on top of `base`, with objects written into the workspace, never into the source."""
    top = _top(local) if local is not None else None
    if top is None:
        raise WorkspaceError(f"pipeline.toml: source.worktree: {source.repo} has no working tree "
                             "(a URL or a bare repository)")
    index = {"GIT_INDEX_FILE": str(repo.git_dir / "clowder-snapshot.index")}
    there = ("--git-dir", str(repo.git_dir), "--work-tree", str(top))
    exclude = repo.git_dir / "info" / "exclude"
    common = _git_local(top, "rev-parse", "--path-format=absolute", "--git-common-dir")
    user_rules = Path(common) / "info" / "exclude" if common else None
    # Ignore rules, not pathspecs, leave Clowder's files out: `add` refuses a pathspec naming an
    # ignored path, and an ignored directory is never walked.
    ours = "".join(f"/{spec.removeprefix(':(exclude)')}/\n" for spec in _outside(top, root))
    try:
        exclude.parent.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # the user's own ignore rules
            ours = (user_rules.read_text() + "\n" if user_rules else "") + ours
        exclude.write_text(ours)
        if base is not None:
            git(top, *there, "read-tree", base, env=index)
        git(top, *there, "add", "-A", env=index)
        tree = git(top, *there, "write-tree", env=index).stdout.strip()
    finally:
        Path(index["GIT_INDEX_FILE"]).unlink(missing_ok=True)
        exclude.unlink(missing_ok=True)
    parents = ("-p", base) if base else ()
    message = f"snapshot of {source.repo}'s working tree\n\nClowder-Source: {source.repo}\n"
    commit = git(repo.path, "commit-tree", tree, *parents, "-F", "-", stdin=message, identity=identity).stdout.strip()
    publish(repo)  # the pipeline's other first jobs start from this snapshot too, found in the store
    return commit


def write_record(workspaces: Path, record: SourceRecord) -> None:
    atomic_write(workspaces / RECORD, json.dumps(record.__dict__, indent=2) + "\n")


def read_record(workspaces: Path) -> SourceRecord | None:
    """Where the pipeline started, once its first job's workspace was made from the source."""
    try:  # read as hostile input: a job may have left anything there (a FIFO never hangs the daemon)
        data = json.loads(read_input(workspaces / RECORD, 1 << 16))
    except (ValueError, OSError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("repo"), str):
        return None
    text = {k: v if isinstance(v, str) else None for k, v in data.items()}
    return SourceRecord(data["repo"], text.get("ref"), text.get("commit"), text.get("snapshot"),
                        str(data.get("warning") or ""))

