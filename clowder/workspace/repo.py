"""A git repository as Clowder's workspaces use it: the git CLI with hooks, templates and signing
turned off (the one place git runs), and refs read in-process. Objects are read in `odb`, new
repositories are made in `skeleton`, and `unchanged` commits an attempt that changed nothing."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clowder.errors import WorkspaceError as WorkspaceError
from clowder.workspace.odb import EMPTY_TREE as EMPTY_TREE
from clowder.workspace.odb import Objects

STORE = ".objects"  # workspaces/.objects: the pipeline's shared object store
STORE_FROM_OBJECTS = "../../../" + STORE  # the alternates entry, relative to workspaces/<job>/.git/objects
SHALLOW = ".shallow"  # workspaces/.shallow: a shallow source's boundary, given to every workspace
MARKER = "CLOWDER_ATTEMPT"  # .git/CLOWDER_ATTEMPT: the attempt prepared last (json)
TAG_PREFIX = "attempt-"  # tags `attempt-<n>` (and `<job>/attempt-<n>` downstream): for people reading `git log`
# What Clowder looks its attempts up by: a ref no source and no `git tag` ever writes. A tag named
# `attempt-1` can come from anywhere (a job, a repository used as a source) and once hid a job's work.
ATTEMPT_REFS = "refs/clowder/attempts/"
BRANCH_PREFIX = "refs/heads/clowder/"  # every workspace's branch: clowder/<job>, whatever the source's are
PACKED_HEADER = "# pack-refs with: peeled"
GIT_OPTIONS = (
    "-c", "core.hooksPath=/dev/null", "-c", "init.templateDir=", "-c", "commit.gpgsign=false",
    "-c", "tag.gpgsign=false", "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "core.fsmonitor=false",
)
# Variables that would point git at another repository than the one we pass in `cwd`.
_REPO_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
              "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX")


@dataclass(frozen=True)
class Identity:
    """Author and committer of Clowder's commits (clowder.toml [git])."""

    name: str = "Clowder"
    email: str = "clowder@localhost"

    def env(self) -> dict[str, str]:
        return {"GIT_AUTHOR_NAME": self.name, "GIT_AUTHOR_EMAIL": self.email,
                "GIT_COMMITTER_NAME": self.name, "GIT_COMMITTER_EMAIL": self.email}


# -- running git ------------------------------------------------------------------------------

def job_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the variables that point git at another repository than the one it runs
    in: what Clowder's git and every job start from. Run from a git hook (or after `export
    GIT_DIR=...`), a job's `git commit` would otherwise land in the user's repository."""
    return {k: v for k, v in environ.items() if k not in _REPO_VARS}


def _env(identity: Identity | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = job_environ(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    if identity is not None:
        env.update(identity.env())
    env.update(extra or {})
    return env


def git(cwd: Path, *args: str, identity: Identity | None = None, stdin: str | None = None,
        check: bool = True, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one git command in `cwd`; raise WorkspaceError with git's message if it fails."""
    proc = subprocess.run(["git", *GIT_OPTIONS, *args], cwd=cwd, env=_env(identity, env), input=stdin,
                          capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise WorkspaceError(f"{cwd}: git {args[0]} failed: {message[-1] if message else proc.returncode}")
    return proc


def read_git(cwd: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run one read-only git command in `cwd`, bytes in and out (blobs are not text), under the same
    policy as `git`; never raises: the caller says what a failure means."""
    return subprocess.run(["git", *GIT_OPTIONS, *args], cwd=cwd, env=_env(), input=stdin, capture_output=True,
                          check=False)


# -- refs, read in-process -------------------------------------------------------------------

_PACKED: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {}  # packed-refs path -> (version, refs)
# The refs _PACKED may hold, least recently used dropped first. A count of files was no bound: down
# a 500-deep chain each repository holds its lineage's tags, and 4,096 files held 251,000 refs (268 MB).
_PACKED_MAX_REFS = 20_000
_packed_refs = 0  # the refs _PACKED holds
_PACKED_LOCK = threading.Lock()


def _remember_packed(path: str, key: tuple[int, int, int], refs: dict[str, str]) -> None:
    global _packed_refs
    with _PACKED_LOCK:  # the launcher's threads prepare and finish workspaces side by side
        old = _PACKED.pop(path, None)
        _packed_refs += len(refs) - (len(old[1]) if old else 0)
        while _PACKED and _packed_refs > _PACKED_MAX_REFS:
            _packed_refs -= len(_PACKED.pop(next(iter(_PACKED)))[1])
        _PACKED[path] = (key, refs)


class Repo:
    """A workspace repository: refs read from files, objects through gitdb."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.git_dir = path / ".git"

    def exists(self) -> bool:
        return (self.git_dir / "HEAD").is_file()

    def _packed(self) -> Mapping[str, str]:
        """packed-refs as name -> id. Parsed once per version of the file (inode, mtime, size:
        git and Clowder replace it by rename): a chain's tags make it long, and a job's start
        and end read it several times."""
        path = str(self.git_dir / "packed-refs")
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = _PACKED.get(path)
        if hit is not None and hit[0] == key:
            with _PACKED_LOCK:
                if _PACKED.get(path) is hit:
                    _PACKED[path] = _PACKED.pop(path)  # the most recently used last
            return hit[1]
        refs: dict[str, str] = {}
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return {}
        for line in text.splitlines():
            if line and line[0] not in "#^":
                sha, _, name = line.partition(" ")
                refs[name] = sha
        _remember_packed(path, key, refs)
        return refs

    def ref(self, name: str, depth: int = 0) -> str | None:
        """The commit a ref (HEAD, refs/tags/attempt-1, ...) points to, or None."""
        try:
            text = (self.git_dir / name).read_text().strip()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return self._packed().get(name)
        if text.startswith("ref: ") and depth < 5:
            return self.ref(text[5:], depth + 1)
        return text or None

    def head(self) -> str | None:
        return self.ref("HEAD")

    def branch(self) -> str:
        text = (self.git_dir / "HEAD").read_text().strip()
        return text[5:] if text.startswith("ref: ") else "HEAD"

    def tags(self) -> dict[str, str]:
        tags = {n[len("refs/tags/"):]: s for n, s in self._packed().items() if n.startswith("refs/tags/")}
        base = self.git_dir / "refs" / "tags"
        for dirpath, _, files in os.walk(base):
            for f in files:
                name = Path(dirpath, f).relative_to(base).as_posix()
                if not name.endswith(".lock"):
                    tags[name] = Path(dirpath, f).read_text().strip()
        return tags

    def tag(self, name: str) -> str | None:
        return self.ref(f"refs/tags/{name}")

    def attempt(self, number: int) -> str | None:
        """The commit of this job's attempt `number`, if it was committed. Workspaces made before
        the private refs have only the tag: it counts if its commit says it is that attempt."""
        found = self.ref(f"{ATTEMPT_REFS}{number}")
        if found is not None:
            return found
        tagged = self.tag(f"{TAG_PREFIX}{number}")
        if tagged is None or (self.git_dir / "refs" / "clowder").is_dir() or any(
                n.startswith(ATTEMPT_REFS) for n in self._packed()):
            return None
        try:
            message = self.objects().message(tagged)
        except (WorkspaceError, ValueError):
            return None
        return tagged if f"\nClowder-Attempt: {number}\nClowder-State: " in message else None

    def attempts(self) -> dict[int, str]:
        """attempt number -> commit, for every committed attempt (the private refs)."""
        found = {n[len(ATTEMPT_REFS):]: s for n, s in self._packed().items() if n.startswith(ATTEMPT_REFS)}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(self.git_dir / ATTEMPT_REFS):
                if entry.is_file() and not entry.name.endswith(".lock"):
                    found[entry.name] = Path(entry.path).read_text().strip()
        return {int(n): s for n, s in found.items() if n.isdigit()}

    def write_ref(self, name: str, sha: str) -> None:
        path = self.git_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")  # git's own convention: ref.lock, then rename
        lock.write_text(sha + "\n")
        os.replace(lock, path)

    def write_refs(self, refs: Mapping[str, str]) -> None:
        """Set several refs at once: one rewrite of packed-refs (through packed-refs.lock, as git
        does) instead of a file per ref; a ref that exists as a loose file is written there,
        since a loose ref hides its packed entry."""
        packed: dict[str, str] = {}
        for name, sha in refs.items():
            if (self.git_dir / name).exists():
                self.write_ref(name, sha)
            else:
                packed[name] = sha
        if not packed:
            return
        path = self.git_dir / "packed-refs"
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        out, peeled_of = [PACKED_HEADER], None
        for line in lines:
            if line.startswith("#") or not line:
                continue
            if line.startswith("^"):  # a peeled tag: keep it with its tag unless that is replaced
                if peeled_of is not None and peeled_of not in packed:
                    out.append(line)
                continue
            peeled_of = line.partition(" ")[2]
            if peeled_of not in packed:
                out.append(line)
        out += [f"{sha} {name}" for name, sha in packed.items()]
        lock = self.git_dir / "packed-refs.lock"
        lock.write_text("\n".join(out) + "\n")
        os.replace(lock, path)

    def objects(self) -> Objects:
        return Objects(self.git_dir / "objects", self.path.parent / STORE)

    def marker(self) -> dict[str, Any]:
        try:
            data = json.loads((self.git_dir / MARKER).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_marker(self, data: Mapping[str, Any]) -> None:
        tmp = self.git_dir / (MARKER + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.git_dir / MARKER)
