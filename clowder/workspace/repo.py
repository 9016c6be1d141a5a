"""A git repository as Clowder's workspaces use it: the git CLI with hooks, templates and signing
turned off; refs and objects read in-process; the pipeline's shared object store; skeleton
repositories; and commits written without git when an attempt changed nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clowder.errors import WorkspaceError as WorkspaceError

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
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


# -- refs and objects, read in-process --------------------------------------------------------

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


_READ: dict[str, bytes] = {}  # sha -> content of small objects this process read or wrote
_READ_MAX = 4096  # entries; commits and trees of the jobs at hand
_READ_SMALL = 1 << 16  # bytes


def _remember(sha: str, data: bytes) -> None:
    """Objects never change (their id is their content's hash), so what was read once can be
    read from memory: the same commits and trees are read again and again while attempts end
    and dependents start."""
    if len(data) <= _READ_SMALL:
        if len(_READ) >= _READ_MAX:
            _READ.clear()
        _READ[sha] = data


class Objects:
    """Read-only access to a repository's objects and the pipeline's store."""

    def __init__(self, *dirs: Path) -> None:
        self._dirs = dirs
        self._opened: list[Any] | None = None

    @property
    def _dbs(self) -> list[Any]:
        if self._opened is None:
            from gitdb.db.loose import LooseObjectDB  # type: ignore[import-untyped]  # ~10 ms: import on use
            from gitdb.db.pack import PackedDB  # type: ignore[import-untyped]

            dirs = self._dirs
            self._opened = [LooseObjectDB(str(d)) for d in dirs if d.is_dir()]
            self._opened += [PackedDB(str(d / "pack")) for d in dirs if (d / "pack").is_dir()]
        return self._opened

    def _find(self, sha: str) -> Any:
        binsha = bytes.fromhex(sha)
        for db in self._dbs:
            if db.has_object(binsha):
                return db, binsha
        raise WorkspaceError(f"git object {sha} not found")

    def has(self, sha: str) -> bool:
        """Whether this repository (with the store) holds the object: asked of the files, never
        of memory, since another repository's object is not this one's."""
        binsha = bytes.fromhex(sha)
        return any(db.has_object(binsha) for db in self._dbs)

    def size(self, sha: str) -> int:
        if sha in _READ:
            return len(_READ[sha])
        db, binsha = self._find(sha)
        return int(db.info(binsha).size)

    def read(self, sha: str) -> bytes:
        data = _READ.get(sha)
        if data is None:
            db, binsha = self._find(sha)
            data = bytes(db.stream(binsha).read())
            _remember(sha, data)
        return data

    def tree_of(self, commit: str | None) -> str:
        if commit is None:
            return EMPTY_TREE
        header = self.read(commit).split(b"\n", 1)[0]
        return header[len(b"tree "):].decode()

    def message(self, commit: str) -> str:
        return self.read(commit).split(b"\n\n", 1)[-1].decode(errors="replace")

    def entries(self, tree: str) -> dict[str, tuple[int, str]]:
        """name -> (mode, sha) of one tree object."""
        if tree == EMPTY_TREE:
            return {}
        data, out, pos = self.read(tree), {}, 0
        while pos < len(data):
            space = data.index(b" ", pos)
            nul = data.index(b"\0", space)
            out[data[space + 1:nul].decode(errors="surrogateescape")] = (int(data[pos:space], 8),
                                                                          data[nul + 1:nul + 21].hex())
            pos = nul + 21
        return out


def store_object(objects_dir: Path, kind: bytes, data: bytes) -> str:
    """Write a loose object into `objects_dir` (a repository's, or the pipeline's store) as git
    does, atomically, and return its id. No-op if it is there already."""
    raw = b"%s %d\0%s" % (kind, len(data), data)
    sha = hashlib.sha1(raw).hexdigest()
    final = objects_dir / sha[:2] / sha[2:]
    if final.exists():
        return sha
    final.parent.mkdir(exist_ok=True)
    tmp = final.with_name(f"tmp_obj_{os.getpid()}_{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
    try:
        os.write(fd, zlib.compress(raw, 1))
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _remember(sha, data)
    return sha


def is_tree(mode: int) -> bool:
    return mode == 0o40000


def is_blob(mode: int) -> bool:
    return mode in (0o100644, 0o100755, 0o120000)


Entry = tuple[int, str]  # (mode, object id) in a tree


def tree_changes(objs: Objects, old_tree: str, new_tree: str, prefix: str = "") -> Iterator[tuple[str, Entry | None]]:
    """(path, new entry or None if deleted) for every file, symlink or submodule that differs from
    `old_tree` to `new_tree`. Subtrees with the same id are skipped unread, so the cost follows
    the change, not the size of the tree."""
    if old_tree == new_tree:
        return
    old, new = objs.entries(old_tree), objs.entries(new_tree)
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        old_is_tree = before is not None and is_tree(before[0])
        new_is_tree = after is not None and is_tree(after[0])
        if old_is_tree or new_is_tree:
            yield from tree_changes(objs, before[1] if before and old_is_tree else EMPTY_TREE,
                                    after[1] if after and new_is_tree else EMPTY_TREE, f"{prefix}{name}/")
        if after is not None and not new_is_tree:
            yield f"{prefix}{name}", after
        elif before is not None and not old_is_tree:
            yield f"{prefix}{name}", None


def blob_at(objs: Objects, tree: str, path: str) -> str | None:
    parts = path.split("/")
    for i, part in enumerate(parts):
        entry = objs.entries(tree).get(part)
        if entry is None:
            return None
        mode, sha = entry
        if i == len(parts) - 1:
            return sha if is_blob(mode) else None
        if not is_tree(mode):
            return None
        tree = sha
    return None


# -- the shared object store ------------------------------------------------------------------

def store_dir(workspaces: Path) -> Path:
    store = workspaces / STORE
    store.mkdir(parents=True, exist_ok=True)
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
    return f"{STORE_FROM_OBJECTS}\n{(git_dir / 'objects' / STORE_FROM_OBJECTS).resolve()}\n"


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
    if head is not None and repo.objects().tree_of(head) != EMPTY_TREE:  # an empty tree needs no index
        git(repo.path, "read-tree", "-u", "--reset", "HEAD")


# -- a commit without git processes, when the attempt changed nothing ---------------------------
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


def write_commit(repo: Repo, parent: str | None, message: str, identity: Identity) -> str:
    """The commit object of an attempt that changed nothing, written straight into the
    pipeline's store (the repository borrows from it: nothing to publish). The caller moves
    the branch."""
    objects = repo.objects()
    store = repo.path.parent / STORE
    target = store if store.is_dir() else repo.git_dir / "objects"
    tree = objects.tree_of(parent) if parent else EMPTY_TREE
    if not objects.has(tree):
        store_object(target, b"tree", b"")
    now = time.time()
    offset = time.localtime(now).tm_gmtoff
    zone = f"{'-' if offset < 0 else '+'}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
    name, email = (re.sub(r"[<>\n]", "", x) for x in (identity.name, identity.email))
    who = f"{name} <{email}> {int(now)} {zone}"
    parents = f"parent {parent}\n" if parent else ""
    data = f"tree {tree}\n{parents}author {who}\ncommitter {who}\n\n{message}".encode()
    return store_object(target, b"commit", data)


