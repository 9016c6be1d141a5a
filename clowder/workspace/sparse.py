"""Sparse checkouts: a job that declares `sparse_checkout` gets only those paths in its workspace
(git's skip-worktree entries), so a big repository costs it the files it needs, not the whole
tree. Its index still lists every file, so its commits carry the whole tree: a file outside the
paths is never deleted by a commit, and one the job writes there anyway is committed like any
other (`git add -A --sparse`). The top-level files and `.clowder/` (run metadata, upstreams'
outputs) always come. Directories alone use git's cone mode (its fast path, and its rule: the
files directly in each parent directory come too); a file or a glob needs git's pattern mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clowder.workspace.odb import EMPTY_TREE, Objects, is_tree
from clowder.workspace.repo import Repo, git

PATTERNS = "info/sparse-checkout"  # .git/info/sparse-checkout: git's own file; present: the checkout is sparse
METADATA = ".clowder"
_GLOB = set("*?[")


@dataclass(frozen=True)
class Patterns:
    """What .git/info/sparse-checkout says, and in which of git's modes."""

    cone: bool
    text: str


def enabled(repo: Repo) -> bool:
    return (repo.git_dir / PATTERNS).is_file()


def patterns(paths: Sequence[str], objs: Objects, tree: str) -> Patterns:
    """The patterns for `paths` as they name entries of `tree` (the commit the job starts from)."""
    names = [p.rstrip("/") for p in paths]
    if any(_GLOB & set(n) for n in names) or any(_kind(objs, tree, n) == "file" for n in names):
        lines = ["/*", "!/*/", f"/{METADATA}/", *(f"/{p}" for p in paths)]
        return Patterns(False, "".join(f"{line}\n" for line in dict.fromkeys(lines)))
    return Patterns(True, _cone([*names, METADATA]))


def _cone(dirs: Sequence[str]) -> str:
    """The file `git sparse-checkout set --cone DIRS` writes: the top-level files, each parent
    directory's own files, and everything below each directory (one inside another: the outer)."""
    wanted = sorted(set(dirs))
    kept = [d for d in wanted if not any(d.startswith(f"{o}/") for o in wanted)]
    parents = sorted({"/".join(d.split("/")[:i]) for d in kept for i in range(1, d.count("/") + 1)} - set(kept))
    lines = ["/*", "!/*/"]
    for path in sorted([*parents, *kept]):
        lines.append(f"/{path}/")
        if path in parents:
            lines.append(f"!/{path}/*/")
    return "".join(f"{line}\n" for line in lines)


def _kind(objs: Objects, tree: str, path: str) -> str:
    """"dir", "file" or "" (not in the tree: the job may make it; a directory is assumed)."""
    for part in path.split("/"):
        if tree == EMPTY_TREE:
            return ""
        entry = objs.entries(tree).get(part)
        if entry is None:
            return ""
        if not is_tree(entry[0]):
            return "file"
        tree = entry[1]
    return "dir"


def configure(repo: Repo, paths: Sequence[str], commit: str | None, *, checked_out: bool) -> None:
    """Make the repository's checkout hold `paths` (none: the whole tree). In a new repository
    (`checked_out` False) only the settings are written, for the first checkout to follow; in
    one with files, the working tree is brought in line with them (files added or removed)."""
    if not paths:
        if enabled(repo):
            git(repo.path, "sparse-checkout", "disable")  # every file checked out again
            (repo.git_dir / PATTERNS).unlink()
        return
    wanted = patterns(paths, repo.objects(), repo.objects().tree_of(commit))
    path = repo.git_dir / PATTERNS
    if enabled(repo) and path.read_text() == wanted.text:
        return
    git(repo.path, "config", "core.sparseCheckout", "true")
    git(repo.path, "config", "core.sparseCheckoutCone", "true" if wanted.cone else "false")
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(path.name + ".lock")
    tmp.write_text(wanted.text)
    tmp.replace(path)
    if checked_out and commit is not None:
        git(repo.path, "sparse-checkout", "reapply")


def add_options(repo: Repo) -> tuple[str, ...]:
    """What `git add -A` needs in this repository to commit what the job wrote outside its paths."""
    return ("--sparse",) if enabled(repo) else ()
