"""Starting a workspace from several upstreams: their commits merged into one."""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clowder.workspace.odb import Entry, Objects, store_object, tree_changes
from clowder.workspace.repo import ATTEMPT_REFS, STORE, TAG_PREFIX, Identity, Repo, WorkspaceError, git
from clowder.workspace.skeleton import checkout, publish


@dataclass(frozen=True)
class Upstream:
    """A job this workspace starts from: its name, workspace and final commit."""

    job: str
    path: Path
    commit: str
    hand_on: bool = False  # the only job that starts from it: its files may move here (handon.py)


def upstream_tags(job: str, upstreams: Sequence[Upstream]) -> dict[str, str]:
    """The upstreams' tags, their own `attempt-<n>` renamed `<job>/attempt-<n>`, so `git log
    --decorate` downstream names every attempt of every job in the lineage. A fix-up's
    repository holds its spawner's tags (`test/attempt-1`): the spawner keeps its own names."""
    tags: dict[str, str] = {}
    for u in upstreams:
        attempts, own = _attempts_and_tags(u.path)
        attempts = attempts or {  # a workspace made before the private refs: its tags say
            int(n[len(TAG_PREFIX):]): s for n, s in own.items() if n[len(TAG_PREFIX):].isdigit()
            and n.startswith(TAG_PREFIX)}
        for number, sha in sorted(attempts.items()):  # its attempts as Clowder recorded them
            tags.setdefault(f"{u.job}/{TAG_PREFIX}{number}", sha)
        for name, sha in own.items():
            # Its own `attempt-<n>` tags are named above from the attempts; one a job made is not one.
            if not name.startswith((TAG_PREFIX, f"{job}/")):
                tags.setdefault(name, sha)
    return tags


def _attempts_and_tags(path: Path) -> tuple[dict[int, str], dict[str, str]]:
    """An upstream workspace's attempts (refs/clowder/attempts/<n>) and tags, as Repo.attempts()
    and Repo.tags() read them, in one pass over its packed-refs and the two loose directories.
    Those two read packed-refs twice and build a dozen paths per repository: a 5,000-wide join
    paid 0.7 s for it, twice. Its packed-refs is read past Repo's cache, which thousands of
    upstreams read once would only churn."""
    git_dir = f"{path}/.git"
    refs: dict[str, str] = {}
    try:
        with open(f"{git_dir}/packed-refs") as f:
            for line in f:
                if line[0] not in "#^\n":
                    sha, _, name = line.rstrip("\n").partition(" ")
                    refs[name] = sha
    except (FileNotFoundError, NotADirectoryError):
        pass
    try:  # most workspaces have neither loose tags nor loose attempt refs: one listing says so
        tops = {e.name for e in os.scandir(f"{git_dir}/refs")}
    except (FileNotFoundError, NotADirectoryError):
        tops = set()
    for top in ("refs/tags", ATTEMPT_REFS.rstrip("/")):
        if top.split("/")[1] in tops:
            _loose_refs(f"{git_dir}/{top}", top, refs)  # a loose ref hides its packed entry
    attempts = {int(n[len(ATTEMPT_REFS):]): s for n, s in refs.items()
                if n.startswith(ATTEMPT_REFS) and n[len(ATTEMPT_REFS):].isdigit()}
    tags = {n[len("refs/tags/"):]: s for n, s in refs.items() if n.startswith("refs/tags/")}
    return attempts, tags


def _loose_refs(directory: str, name: str, into: dict[str, str]) -> None:
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir():
            _loose_refs(entry.path, f"{name}/{entry.name}", into)
        elif not entry.name.endswith(".lock"):
            with open(entry.path) as f:
                into[f"{name}/{entry.name}"] = f.read().strip()


def add_upstream_tags(repo: Repo, job: str, upstreams: Sequence[Upstream]) -> None:
    """Give an existing repository the tags of upstreams it starts to consume now (a spawner's
    new attempt takes its fix-ups' commits; a retry takes new upstream commits). An upstream
    whose commit the repository already tags under its name was given its tags at that commit
    (a new repository, just made with them): its tags are not read again."""
    have = repo.tags()
    tagged = {(name.rpartition("/")[0], sha) for name, sha in have.items()}
    todo = [u for u in upstreams if (u.job, u.commit) not in tagged]
    new = {f"refs/tags/{n}": s for n, s in upstream_tags(job, todo).items() if n not in have}
    if new:
        repo.write_refs(new)


@dataclass(frozen=True)
class Merged:
    problem: str = ""
    conflicts: tuple[str, ...] = ()
    failed: str | None = None  # the upstream that could not be merged


def merge(repo: Repo, job: str, upstreams: Sequence[Upstream], identity: Identity) -> Merged:
    """Merge the upstreams' commits into HEAD, stopping at the first that cannot be merged."""
    if (repo.git_dir / "MERGE_HEAD").exists():  # a merge of ours cut short by a crash
        git(repo.path, "reset", "-q", "--hard", "HEAD")
    head = repo.head()  # once: a ref read per upstream showed in a 5,000-wide join's profile
    todo = [u for u in upstreams if u.commit != head]
    read = _published(repo, todo)
    if todo and repo.head() is None:  # an unborn branch (an empty first upstream): take the next one
        repo.write_ref(repo.branch(), todo[0].commit)
        checkout(repo)
        todo = todo[1:]
    if len(todo) > 1 and _merge_disjoint(repo, job, todo, identity, read):
        return Merged()
    for u in todo:
        error = _merge_one(repo, job, u, identity)
        if error is not None:
            conflicts = _conflicts(repo)
            git(repo.path, "reset", "-q", "--hard", "HEAD")
            if conflicts:
                return Merged(f"merge conflict with upstream {u.job} in: {', '.join(conflicts)}", conflicts, u.job)
            return Merged(f"could not merge upstream {u.job}: {error}", (), u.job)
    return Merged()


def _merge_one(repo: Repo, job: str, u: Upstream, identity: Identity) -> str | None:
    """None if git merged the upstream (or it was already in), else git's message."""
    proc = git(repo.path, "merge", "-q", "--no-edit", "--ff", "--no-stat", "--allow-unrelated-histories",
               "-m", f"{job}: merge upstream {u.job}", u.commit, identity=identity, check=False)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else "git merge failed"


def _merge_disjoint(repo: Repo, job: str, ups: Sequence[Upstream], identity: Identity,
                    read: Mapping[str, _Commit]) -> bool:
    """Merge many upstreams in one commit when no two of them change a path differently (the
    common fan-in: each adds its own files). At most four git processes for any number of upstreams,
    where git's octopus merge is quadratic (7 s for 200 upstreams) and pairwise merges cost one
    process each. False: nothing was changed, merge them one by one. `read`: commits already read."""
    head = repo.head()
    assert head is not None
    objs = repo.objects()
    loose = _loose_dirs(repo)
    commits = {c: read.get(c) or _Commit.read(objs, c, loose) for c in dict.fromkeys([head, *(u.commit for u in ups)])}
    heads, base = _heads_and_base(repo, commits)
    base_tree = commits[base].tree if base in commits else objs.tree_of(base)
    union: dict[str, Entry | None] = {}
    first: dict[str, Entry | None] = {}
    for commit in heads:
        changes = dict(tree_changes(objs, base_tree, commits[commit].tree))
        first = first or changes
        for path, entry in changes.items():
            if union.setdefault(path, entry) != entry:
                return False  # a real merge: git decides, and names the conflicts
    updates = "".join(f"{e[0]:o} {e[1]}\t{p}\0" if e else f"0 {'0' * 40}\t{p}\0"
                      for p, e in union.items() if p not in first)
    # Upstreams that changed nothing the first did not (jobs that only ran something): the merge's
    # tree is the first's, and when that is HEAD's the checkout stands: no git process at all.
    tree = _merged_tree(repo, heads[0], updates) if updates else commits[heads[0]].tree
    if tree is None:
        return False  # e.g. a file where another upstream made a directory
    names = ", ".join(u.job for u in ups)
    message = f"{job}: merge {len(ups)} upstreams: {names if len(names) < 200 else names[:200] + ', ...'}"
    commit = _write_merge_commit(repo, tree, heads, message, identity)
    if tree != commits[head].tree:
        git(repo.path, "read-tree", "-u", "-m", head, commit)
    repo.write_ref(repo.branch(), commit)
    return True


def _write_merge_commit(repo: Repo, tree: str, parents: Sequence[str], message: str, identity: Identity) -> str:
    """The merge commit, written in-process into the pipeline's store as `git commit-tree` would
    write it: git checks each parent against every other, 0.5 s for 5,000 of them."""
    now = time.time()
    offset = time.localtime(now).tm_gmtoff
    zone = f"{'-' if offset < 0 else '+'}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
    name, email = (re.sub(r"[<>\n]", "", x) for x in (identity.name, identity.email))
    who = f"{name} <{email}> {int(now)} {zone}"
    lines = "".join(f"parent {p}\n" for p in parents)
    data = f"tree {tree}\n{lines}author {who}\ncommitter {who}\n\n{message}\n".encode()
    store = repo.path.parent / STORE
    return store_object(store if store.is_dir() else repo.git_dir / "objects", b"commit", data)


def _merged_tree(repo: Repo, first: str, updates: str) -> str | None:
    """The tree of commit `first` with `updates` (update-index --index-info lines) applied; None
    if git refuses them."""
    index = {"GIT_INDEX_FILE": str(repo.git_dir / "clowder-merge.index")}
    try:
        git(repo.path, "read-tree", first, env=index)
        git(repo.path, "update-index", "-z", "--index-info", stdin=updates, env=index)
        return git(repo.path, "write-tree", env=index).stdout.strip()
    except WorkspaceError:
        return None
    finally:
        Path(index["GIT_INDEX_FILE"]).unlink(missing_ok=True)


@dataclass(frozen=True)
class _Commit:
    """What a merge needs of a commit's header, read once (5,000 upstreams outgrow the object cache)."""

    tree: str
    parents: tuple[str, ...]

    @staticmethod
    def read(objs: Objects, sha: str, loose: Sequence[str] = ()) -> _Commit:
        data = _read_loose(loose, sha)
        return _Commit.parse(objs.read(sha) if data is None else data)

    @staticmethod
    def parse(data: bytes) -> _Commit:
        lines = data.split(b"\n\n", 1)[0].split(b"\n")
        return _Commit(lines[0][len(b"tree "):].decode(),
                       tuple(x[len(b"parent "):].decode() for x in lines[1:] if x.startswith(b"parent ")))


def _heads_and_base(repo: Repo, commits: Mapping[str, _Commit]) -> tuple[list[str], str | None]:
    """The commits that are in no other one (in their order), and their merge base. `git merge-base
    --independent` is quadratic in its commits (0.28 s for 1,000, 8.2 s for 5,000): a fan-in whose
    upstreams are children of one commit (a fan-out's, or a source's) needs no git at all, and any
    other is two linear walks and one `rev-list`."""
    kinds = {c.parents for c in commits.values()}
    for only in kinds if len(kinds) <= 2 else ():  # two: the base itself is one of the commits
        heads = [c for c in commits if (c,) != only]
        if len(only) == 1 and all(commits[c].parents == only for c in heads):  # children of one commit:
            return heads, only[0]  # none is in another
    return _independent(repo, list(commits))


def _independent(repo: Repo, commits: list[str]) -> tuple[list[str], str | None]:
    """`merge-base --independent` and `--octopus`, linear: a commit is in another one exactly
    when it is the parent of a commit that only the given ones reach (not their common base)."""
    base = git(repo.path, "merge-base", "--octopus", *commits, check=False).stdout.strip()
    walk = git(repo.path, "rev-list", "--parents", "--stdin",
               stdin="".join(f"{c}\n" for c in commits) + (f"^{base}\n" if base else "")).stdout
    inner = {p for line in walk.splitlines() for p in line.split()[1:]}
    heads = [c for c in commits if c not in inner]
    if len(heads) < len(commits):  # the base of what is left may be a later commit
        base = git(repo.path, "merge-base", "--octopus", *heads, check=False).stdout.strip()
    return heads, base or None


def _conflicts(repo: Repo) -> tuple[str, ...]:
    out = git(repo.path, "ls-files", "-u", "-z").stdout
    return tuple(sorted({item.split("\t", 1)[1] for item in out.split("\0") if "\t" in item}))


def _loose_dirs(repo: Repo) -> tuple[str, str]:
    """Where a job repository's loose objects are: the pipeline's store first (upstream commits
    are published there), then its own."""
    return str(repo.path.parent / STORE), str(repo.git_dir / "objects")


def _read_loose(dirs: Sequence[str], sha: str) -> bytes | None:
    """A loose object's content, read straight from its file; None if it is not loose in `dirs`
    (packed: Objects reads it). A 5,000-wide join reads 5,000 commits: gitdb's lookup of each, a
    path built and stat'ed per database, cost more than reading them."""
    for d in dirs:
        try:
            with open(f"{d}/{sha[:2]}/{sha[2:]}", "rb") as f:
                raw = zlib.decompress(f.read())
        except (FileNotFoundError, NotADirectoryError):
            continue
        return raw[raw.index(b"\0") + 1:]
    return None


def _published(repo: Repo, upstreams: Sequence[Upstream]) -> dict[str, _Commit]:
    """ensure_published for many upstreams, reading their commits as it goes: a loose commit in
    the store (the common case) is both found and read by one open; the object database is asked
    only about the others. Returns the commits read."""
    dirs, objs = _loose_dirs(repo), repo.objects()
    read = {}
    for u in upstreams:
        data = _read_loose(dirs, u.commit)
        if data is not None:
            read[u.commit] = _Commit.parse(data)
        elif not objs.has(u.commit):
            publish(Repo(u.path))
    return read


def ensure_published(repo: Repo, upstream: Upstream) -> None:
    """An upstream's commit is in the store once its attempt ended; if not (a repository made
    before the store, or a crash in between), publish all of its objects now."""
    if not repo.objects().has(upstream.commit):
        publish(Repo(upstream.path))


