"""Starting a workspace from several upstreams: their commits merged into one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clowder.workspace.odb import Entry, Objects, tree_changes
from clowder.workspace.repo import TAG_PREFIX, Identity, Repo, WorkspaceError, git
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
        repo = Repo(u.path)
        own = repo.tags()
        attempts = repo.attempts() or {  # a workspace made before the private refs: its tags say
            int(n[len(TAG_PREFIX):]): s for n, s in own.items() if n[len(TAG_PREFIX):].isdigit()
            and n.startswith(TAG_PREFIX)}
        for number, sha in sorted(attempts.items()):  # its attempts as Clowder recorded them
            tags.setdefault(f"{u.job}/{TAG_PREFIX}{number}", sha)
        for name, sha in own.items():
            # Its own `attempt-<n>` tags are named above from the attempts; one a job made is not one.
            if not name.startswith((TAG_PREFIX, f"{job}/")):
                tags.setdefault(name, sha)
    return tags


def add_upstream_tags(repo: Repo, job: str, upstreams: Sequence[Upstream]) -> None:
    """Give an existing repository the tags of upstreams it starts to consume now (a spawner's
    new attempt takes its fix-ups' commits; a retry takes new upstream commits)."""
    have = repo.tags()
    new = {f"refs/tags/{n}": s for n, s in upstream_tags(job, upstreams).items() if n not in have}
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
    for u in todo:
        ensure_published(repo, u)
    if todo and repo.head() is None:  # an unborn branch (an empty first upstream): take the next one
        repo.write_ref(repo.branch(), todo[0].commit)
        checkout(repo)
        todo = todo[1:]
    if len(todo) > 1 and _merge_disjoint(repo, job, todo, identity):
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


def _merge_disjoint(repo: Repo, job: str, ups: Sequence[Upstream], identity: Identity) -> bool:
    """Merge many upstreams in one commit when no two of them change a path differently (the
    common fan-in: each adds its own files). Six git processes for any number of upstreams,
    where git's octopus merge is quadratic (7 s for 200 upstreams) and pairwise merges cost one
    process each. False: nothing was changed, merge them one by one."""
    head = repo.head()
    assert head is not None
    objs = repo.objects()
    commits = {c: _Commit.read(objs, c) for c in dict.fromkeys([head, *(u.commit for u in ups)])}
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
    index = {"GIT_INDEX_FILE": str(repo.git_dir / "clowder-merge.index")}
    try:
        git(repo.path, "read-tree", heads[0], env=index)
        git(repo.path, "update-index", "-z", "--index-info", stdin=updates, env=index)
        tree = git(repo.path, "write-tree", env=index).stdout.strip()
    except WorkspaceError:
        return False  # e.g. a file where another upstream made a directory
    finally:
        Path(index["GIT_INDEX_FILE"]).unlink(missing_ok=True)
    names = ", ".join(u.job for u in ups)
    message = f"{job}: merge {len(ups)} upstreams: {names if len(names) < 200 else names[:200] + ', ...'}"
    parents = [arg for c in heads for arg in ("-p", c)]
    commit = git(repo.path, "commit-tree", tree, *parents, "-m", message, identity=identity).stdout.strip()
    git(repo.path, "read-tree", "-u", "-m", head, commit)
    repo.write_ref(repo.branch(), commit)
    return True


@dataclass(frozen=True)
class _Commit:
    """What a merge needs of a commit's header, read once (5,000 upstreams outgrow the object cache)."""

    tree: str
    parents: tuple[str, ...]

    @staticmethod
    def read(objs: Objects, sha: str) -> _Commit:
        lines = objs.read(sha).split(b"\n\n", 1)[0].split(b"\n")
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


def ensure_published(repo: Repo, upstream: Upstream) -> None:
    """An upstream's commit is in the store once its attempt ended; if not (a repository made
    before the store, or a crash in between), publish all of its objects now."""
    if not repo.objects().has(upstream.commit):
        publish(Repo(upstream.path))


