"""Job workspaces: one git repository per job and a commit per attempt (DESIGN §3). This package
is the only place that runs git or reads git objects: `repo` (git itself, refs), `odb` (objects
read in-process), `skeleton` (new repositories, the shared object store), `unchanged` (the
commit of an attempt that changed nothing), `merge` (starting from several upstreams), `lookup`
(`clowder path`/`diff`), `handon` (a chain's files moved on to its next job), `copy` (files
copied sharing blocks), `sparse` (jobs that check out only the paths they need), `source` (a
pipeline's source repository), `objects` (blobs and object checks for the index), `worktree`
(an attempt's commit and a new checkout written in-process), `gitindex` (git's index file read
and written), `plain` (whether git would do more than store the files as they are).

How each operation is done, and why (measured on the 2-core dev machine; see
tests/bench/bench_workspace.py and tests/bench/bench_scheduler.py):
- Objects are shared per pipeline: every job repository borrows from `workspaces/.objects/`
  through a relative `objects/info/alternates` entry, and an attempt's new objects are hard-linked
  into that store when it ends. Starting from an upstream is then a skeleton `.git` whose branch
  points at the upstream commit, plus a checkout: ~1 ms without files. `git clone --local`
  hard-links every loose object one fan-out directory at a time: 13-15 ms per job at the end of a
  100-job chain, growing with depth. Chained `--shared` clones break past 5 levels ("alternates
  nesting too deep"), and a flattened alternates list costs ~50 ms per git command at depth 100.
  The store is only ever added to, so a repository keeps working if another one is deleted.
- A new workspace's files are moved from its upstream's checkout when it is the only job that
  starts from it and the tree has 1,000 files or more (handon.py; the upstream's files are
  checked out again when asked for): one rename per top-level entry and one `git status`,
  0.17 s for 10,000 files where writing them costs 1-5 s on ext4 whichever way (checkout,
  copy, `cp -a`). Otherwise they are copied with
  the upstream's index where the file system shares blocks (FICLONE: btrfs, XFS; copy.py), else
  checked out (`read-tree -u`), which inflates and writes every blob. A first job copies a local
  source's checkout the same way; a URL source is fetched once into `<root>/.clowder/sources/`
  and cloned from there.
- A skeleton copies the config and HEAD of one `git init` per process (git's probes of the file
  system and the user's init.defaultBranch still apply); `git init` itself costs 5-8 ms.
- Reads are in-process: refs are small files, objects go through gitdb (GitPython's object
  database): a commit, its tree and blob sizes in well under 1 ms, where each `git rev-parse` or
  `cat-file` is a ~1.3 ms subprocess. Neither imports `git`: GitPython's top level runs
  `git version` on import, 50-80 ms in every CLI command.
- Commits are written in-process (worktree.py): an attempt that changed nothing (judged from the
  index's stat data as git does) gets a commit object of its parent's tree (~0.5 ms); one that
  changed files gets their blobs, its trees and the commit written as loose objects into the
  store and its index rewritten (~0.3 ms plus hashing what changed), where `add -A` + `commit`
  cost two processes (5-9 ms). A new workspace's files are written the same way from its
  upstream's tree (a file per blob, and the index). Only where git would store or write the
  files as they are (plain.py: no ignore rules, attributes or settings that change either, no
  submodules, at most 2,000 files); else the git CLI, `add -A` + `commit` and `read-tree -u`.
  A fan-in of two is a `git merge`; more upstreams are merged in
  one commit with a fixed number of plumbing calls when they change disjoint paths (git's
  octopus merge is quadratic: 7 s for 200 upstreams). Every call turns off hooks, templates,
  signing, fsmonitor and automatic gc/maintenance: for speed, and so a user's global git config
  can neither run code in nor stop a pipeline.
- Per attempt, on a chain of jobs that change nothing: prepare and finish ~2.6 ms of CPU together
  (prepare and finish called in one process down a 200-job chain); a chain of jobs that copy a file: ~7.5 ms,
  most of it the kernel creating job i's i files (ext4), not Python.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from glob import glob
from pathlib import Path
from typing import Any

from clowder.diskfull import no_space
from clowder.errors import DiskFull
from clowder.metadata import ERROR_FILE, kind_of, metadata_dir, write_metadata
from clowder.spec import Source
from clowder.state import Artifact
from clowder.workspace import sparse
from clowder.workspace.copy import copy_checkout
from clowder.workspace.handon import hand_on, locked, restore_locked
from clowder.workspace.lookup import base_of, diff, resolve, split_diff_args, workspace_path
from clowder.workspace.merge import Upstream, add_upstream_tags, ensure_published, merge, upstream_tags
from clowder.workspace.odb import EMPTY_TREE, blob_at, is_blob, tree_changes
from clowder.workspace.repo import ATTEMPT_REFS, MARKER, TAG_PREFIX, Identity, Repo, WorkspaceError, git
from clowder.workspace.skeleton import checkout, publish, skeleton
from clowder.workspace.source import SourceRecord, carry_submodules, clone, read_record
from clowder.workspace.unchanged import untouched, write_commit
from clowder.workspace.worktree import commit_worktree

__all__ = ["EMPTY_TREE", "AttemptRef", "End", "ErrorContext", "Finished", "Identity", "Prepared", "SourceRecord",
           "Start", "Upstream", "WorkspaceError", "base_of", "diff", "finish", "log_tail", "prepare", "read_record",
           "resolve", "split_diff_args", "workspace_path"]

TAIL_LINES = 50


@dataclass(frozen=True)
class Prepared:
    base_commit: str | None
    consumed: Mapping[str, str]
    problem: str = ""  # non-empty: the attempt cannot run (a merge conflict, ...)
    conflicts: tuple[str, ...] = ()
    recovered: tuple[int, str] | None = None  # (attempt, commit) of a lost attempt committed now
    warning: str = ""  # what the user should know about the source it started from (uncommitted changes)


@dataclass(frozen=True)
class ErrorContext:
    """What `.clowder/<job>/error.json` says about a failed attempt."""

    reason: str
    exit_code: int | None = None
    signal: int | None = None
    log_tail: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()

    def to_json(self, job: str, attempt: int, state: str) -> str:
        data = {"job": job, "attempt": attempt, "state": state, "reason": self.reason,
                "exit_code": self.exit_code, "signal": self.signal, "conflicts": list(self.conflicts),
                "log_tail": list(self.log_tail)}
        return json.dumps(data, indent=2) + "\n"


@dataclass(frozen=True)
class Finished:
    commit: str
    base_commit: str | None
    artifacts: tuple[Artifact, ...]
    consumed: Mapping[str, str] = field(default_factory=dict)
    changed: bool = True  # whether the attempt changed any file outside Clowder's metadata (.clowder/)


# -- an attempt's start and end ---------------------------------------------------------------

@dataclass(frozen=True)
class AttemptRef:
    """The attempt a workspace operation is for: the job's workspace, pipeline, job and number."""

    ws: Path
    pipeline: str
    job: str
    number: int


@dataclass(frozen=True)
class Start:
    """How an attempt's workspace starts, besides its upstreams: who commits, the pipeline's source
    and root (for a first job), and the paths the job checks out (empty: the whole tree)."""

    identity: Identity = field(default_factory=Identity)
    source: Source | None = None
    root: Path | None = None
    sparse_checkout: tuple[str, ...] = ()


@dataclass(frozen=True)
class End:
    """How an attempt ended, for its commit: its state, who commits, its declared outputs and
    (failed) what error.json says."""

    state: str
    identity: Identity = field(default_factory=Identity)
    outputs: Sequence[str] = ()
    error: ErrorContext | None = None
    trailers: str = ""  # more trailers after Clowder-State (an approval's), one per line


def prepare(ref: AttemptRef, upstreams: Sequence[Upstream], start: Start) -> Prepared:
    """Make the job's repository ready for attempt `ref.number` and record what it starts from.

    A first attempt starts from the first upstream's commit with the others merged in, else from
    the pipeline's source, else from an empty repository. A later attempt starts from the job's
    last commit (first committing what a lost attempt left behind) and merges any upstream
    commit it has not consumed yet. A merge conflict is returned as `problem`, not raised."""
    started = time.time_ns()
    repo = Repo(ref.ws)
    if repo.exists():  # its files may have gone to its downstream (handon.py): ours until it is ready
        with locked(repo):
            restore_locked(repo)
            return _prepare_again(repo, ref, upstreams, start, started)
    return _prepare_new(ref, upstreams, start, started)


def _prepare_again(repo: Repo, ref: AttemptRef, upstreams: Sequence[Upstream], start: Start,
                   started: int) -> Prepared:
    """A later attempt (or a first one prepared again): from the job's last commit."""
    recovered = _recover_lost(repo, ref, start.identity)
    with contextlib.suppress(FileNotFoundError):  # error.json describes the attempt that failed
        (ref.ws / metadata_dir(ref.job) / ERROR_FILE).unlink()
    # The paths may have been edited since the last attempt (a live edit before a retry).
    sparse.configure(repo, start.sparse_checkout, repo.head(), checked_out=True)
    consumed = {k: v for k, v in repo.marker().get("consumed", {}).items() if isinstance(v, str)}
    todo = [u for u in upstreams if consumed.get(u.job) != u.commit]
    return replace(_merge_in(repo, ref, todo, consumed, start.identity, started), recovered=recovered)


def _prepare_new(ref: AttemptRef, upstreams: Sequence[Upstream], start: Start, started: int) -> Prepared:
    """A first attempt: a new repository from the first upstream, the source, or nothing."""
    todo = list(upstreams[1:])
    consumed = {upstreams[0].job: upstreams[0].commit} if upstreams else {}
    if not todo:  # nothing to merge: the marker goes in with the rest of the new repository
        marker = {"attempt": ref.number, "consumed": consumed, "started_ns": started}
        repo, warning = _create(ref, upstreams, start, marker)
        return Prepared(repo.head(), consumed, "", (), None, warning)
    repo, _ = _create(ref, upstreams, start)
    return _merge_in(repo, ref, todo, consumed, start.identity, started)


def _merge_in(repo: Repo, ref: AttemptRef, todo: Sequence[Upstream], consumed: dict[str, str],
              identity: Identity, started: int) -> Prepared:
    """Merge the upstream commits not consumed yet and record the attempt's start."""
    ws, job = repo.path, ref.job
    merged = merge(repo, job, todo, identity)
    if merged.problem and not merged.conflicts and no_space(ws.parent):  # not the merge's fault: wait for space
        raise DiskFull(f"{ws}: no space left on device ({merged.problem})")
    add_upstream_tags(repo, job, [u for u in todo if u.job != merged.failed])
    for u in todo:
        if u.job == merged.failed:
            break
        consumed[u.job] = u.commit
    base = repo.head()
    repo.write_marker({"attempt": ref.number, "base": base, "consumed": consumed, "started_ns": started})
    return Prepared(base, consumed, merged.problem, merged.conflicts)


def _create(ref: AttemptRef, upstreams: Sequence[Upstream], start: Start,
            marker: Mapping[str, Any] | None = None) -> tuple[Repo, str]:
    """Build the repository next to its final place and move it there in one rename, so a crash
    or a full disk never leaves a half-made workspace where the job's belongs; with `marker`
    (the attempt's, less its base: the new HEAD), already prepared for an attempt. The build
    directory is a sibling, `.<job>.tmp` (job names never start with a dot), not a directory
    below: the alternates entry that finds the store is relative, and the checkout needs it.
    Returns the repository and a warning about the source (empty if none)."""
    ws, job = ref.ws, ref.job
    _clear_place(ws)
    tmp = ws.with_name(f".{ws.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a build cut short by a crash
    ws.parent.mkdir(parents=True, exist_ok=True)
    warning = ""
    try:
        if upstreams:
            repo = _from_upstream(tmp, job, upstreams, start.sparse_checkout)
        elif start.source is not None:
            repo, record, fresh = clone(tmp, job, start.source, start.root or ws.parent, start.identity,
                                        start.sparse_checkout)
            warning = record.warning if fresh else ""
        else:
            repo = skeleton(tmp, None, job=job)
            sparse.configure(repo, start.sparse_checkout, None, checked_out=False)
        if marker is not None:  # no rename of its own: the directory's is enough
            (repo.git_dir / MARKER).write_text(json.dumps({**marker, "base": repo.head()}))
        with contextlib.suppress(FileNotFoundError):
            ws.rmdir()  # the empty directory an executor may have made
        os.rename(tmp, ws)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs back
        raise
    return Repo(ws), warning


def _from_upstream(tmp: Path, job: str, upstreams: Sequence[Upstream], paths: Sequence[str]) -> Repo:
    """A new repository at the first upstream's commit, its files handed on, copied or checked
    out (only `paths`, if given: such a job neither takes a hand-on nor copies a whole tree)."""
    first = upstreams[0]
    repo = skeleton(tmp, first.commit, upstream_tags(job, upstreams), job)
    ensure_published(repo, first)
    if paths:
        sparse.configure(repo, paths, first.commit, checked_out=False)
        checkout(repo)
    elif not (first.hand_on and hand_on(repo, Repo(first.path), first.commit, job)) \
            and not copy_checkout(repo, Repo(first.path), first.commit):
        checkout(repo)
    carry_submodules(repo, Repo(first.path))
    return repo


def _clear_place(ws: Path) -> None:
    """Make room for a new repository at `ws`. Older versions built workspaces in place, and a
    crash or a full disk could leave one half made (a `.git` without HEAD): nothing of it is
    worth keeping, so it is removed. Anything else there is moved aside, never deleted."""
    try:
        entries = os.listdir(ws)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    if not entries:
        return
    if entries == [".git"]:
        shutil.rmtree(ws)
        return
    for n in itertools.count(1):
        aside = ws.with_name(f".{ws.name}.aside-{n}")
        if not aside.exists():
            os.rename(ws, aside)
            return


def _recover_lost(repo: Repo, ref: AttemptRef, identity: Identity) -> tuple[int, str] | None:
    """Commit what an attempt that ended without a waiter (lost) left in the workspace."""
    number = repo.marker().get("attempt")
    if not isinstance(number, int) or repo.attempt(number):  # it was committed
        return None
    if number == ref.number:  # prepared again: it never started (the daemon died first), nothing to keep
        return None
    lost = End("lost", identity, error=ErrorContext("the process vanished without an exit record"))
    return number, _commit(replace(ref, number=number), lost, ())


def finish(ref: AttemptRef, end: End) -> Finished:
    """Commit everything the attempt left (even nothing), tag it `attempt-<n>` (and record it
    under refs/clowder/attempts/<n>), publish its objects and list its artifacts; say whether
    it changed any file. Safe to call again for the same attempt."""
    ws, job = ref.ws, ref.job
    repo = Repo(ws)
    if not repo.exists():  # an attempt that ended before its workspace was made
        repo, _ = _create(ref, (), Start())
    marker = repo.marker()
    ours = marker.get("attempt") == ref.number
    base = marker.get("base") if ours else repo.head()
    meta = ws / metadata_dir(job)
    if end.error is not None:
        write_metadata(ws, job, ERROR_FILE, end.error.to_json(job, ref.number, end.state))
    force = _output_files(ws, end.outputs) + ([metadata_dir(job)] if meta.is_dir() else [])
    commit = _commit(ref, end, force)
    publish(repo, marker.get("started_ns", 0) if ours else 0)
    artifacts = _artifacts(repo, base, commit, job, end.outputs)
    consumed = marker.get("consumed", {}) if ours else {}
    return Finished(commit, base, artifacts, consumed, _changed(repo, base, commit, job))


def _changed(repo: Repo, base: str | None, commit: str, job: str) -> bool:
    """Whether the commit changed a file other than the job's own run metadata (.clowder/<job>/)."""
    objs = repo.objects()
    own = metadata_dir(job) + "/"
    return any(not path.startswith(own) for path, _ in tree_changes(objs, objs.tree_of(base), objs.tree_of(commit)))


def _message(pipeline: str, job: str, attempt: int, state: str, reason: str, trailers: str = "") -> str:
    lines = [line.rstrip() for line in reason.strip()[:1000].splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))  # what git's whitespace cleanup would leave
    body = f"\n{text}\n" if text else ""
    return (f"{job}: attempt {attempt} {state}\n{body}\n"
            f"Clowder-Pipeline: {pipeline}\nClowder-Job: {job}\nClowder-Attempt: {attempt}\nClowder-State: {state}\n"
            + trailers)  # an approval's come after Clowder-State: repo.attempt finds an attempt by those two


def _commit(ref: AttemptRef, end: End, force: Sequence[str]) -> str:
    """The attempt's commit (made once: a crash between the commit and its tag leaves it at HEAD),
    with the refs Clowder finds it by."""
    repo, job, attempt = Repo(ref.ws), ref.job, ref.number
    tag = f"{TAG_PREFIX}{attempt}"
    done = repo.attempt(attempt)
    if done:
        return done
    ours = {f"refs/tags/{tag}": "", f"{ATTEMPT_REFS}{attempt}": ""}
    head = repo.head()
    # A crash between the commit and its tag leaves the commit at HEAD: tag it, do not commit twice.
    if head is None or f"Clowder-Job: {job}\nClowder-Attempt: {attempt}\n" not in repo.objects().message(head):
        message = _message(ref.pipeline, job, attempt, end.state, end.error.reason if end.error else "",
                           end.trailers)
        # The attempt's processes are gone; a git it ran and killed may have left its lock.
        with contextlib.suppress(FileNotFoundError):
            (repo.git_dir / "index.lock").unlink()
        if not force and untouched(repo, head):
            head = write_commit(repo, head, message, end.identity)
            repo.write_refs({repo.branch(): head, **dict.fromkeys(ours, head)})
            return head
        written = commit_worktree(repo, head, message, end.identity)  # no git process where nothing needs one
        if written is not None:
            repo.write_refs({repo.branch(): written, **dict.fromkeys(ours, written)})
            return written
        # A sparse checkout: what the job wrote outside its paths is committed too (git would skip it).
        git(repo.path, "add", "-A", *sparse.add_options(repo))
        if force:  # declared outputs and run metadata are committed even if .gitignore says otherwise
            git(repo.path, "add", "-f", *sparse.add_options(repo), "--", *force)
        git(repo.path, "commit", "-q", "--allow-empty", "--no-verify", "--cleanup=whitespace", "-F", "-",
            stdin=message, identity=end.identity)
        head = repo.head()
        assert head is not None
    repo.write_refs(dict.fromkeys(ours, head))
    return head


def _output_files(ws: Path, patterns: Sequence[str]) -> list[str]:
    """Files matching the declared `outputs` globs (a matched directory stands for its files)."""
    if not patterns:  # most jobs declare none: no path resolution on every attempt's end
        return []
    out: list[str] = []
    inside = ws.resolve()
    for pattern in patterns:
        for match in sorted(glob(pattern, root_dir=ws, recursive=True, include_hidden=True)):
            path = ws / match
            if not path.resolve().is_relative_to(inside):  # `../x` is not the job's to commit
                continue
            if path.is_dir():
                out += [Path(d, f).relative_to(ws).as_posix() for d, dirs, files in os.walk(path)
                        for f in files if ".git" not in Path(d).relative_to(ws).parts]
            elif path.is_file() or path.is_symlink():
                out.append(Path(match).as_posix())
    return [p for p in dict.fromkeys(out) if not p.startswith(".git/")]


def _artifacts(repo: Repo, base: str | None, commit: str, job: str, outputs: Sequence[str]) -> tuple[Artifact, ...]:
    objs = repo.objects()
    tree = objs.tree_of(commit)
    found = {path: entry[1] for path, entry in tree_changes(objs, objs.tree_of(base), tree)
             if entry is not None and is_blob(entry[0])}
    for path in _output_files(repo.path, outputs):
        blob = found.get(path) or blob_at(objs, tree, path)
        if blob is not None:
            found[path] = blob
    return tuple(Artifact(p, b, objs.size(b), kind_of(p, job)) for p, b in sorted(found.items()))


def log_tail(path: Path, lines: int = TAIL_LINES) -> tuple[str, ...]:
    """The last lines of an attempt's log (read from the end: logs can be large)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ()
    return tuple(data.decode(errors="replace").splitlines()[-lines:])


