"""Bringing a pipeline's work back: `clowder export` turns a job's lineage into commits on top of
the commit the pipeline started from, without Clowder's metadata (`.clowder/`) and the files
pipeline.toml's `export.exclude` names, as a branch in the user's repository or as a patch series.

How, and why so: the commits are built in a scratch repository that borrows the job's objects
(git alternates), so neither the job's workspace nor the user's repository is written while
they are made. The branch is then brought into the user's repository with one `git fetch` of
that ref alone: it writes the new objects and the branch, never a working tree, an index or
HEAD, and the user's repository receives no object of the metadata or the excluded files."""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clowder import known
from clowder.errors import EXIT_WORK_FAILED, ClowderError, UsageError
from clowder.fsio import atomic_write
from clowder.state import JobState, JobStatus, read_job_status
from clowder.tree import PipelinePaths, Root
from clowder.workspace import resolve
from clowder.workspace.repo import git

METADATA = "/.clowder/"  # the run metadata of every job: `.clowder/<job>/` at the top of the tree
SCRATCH_REF = "refs/heads/clowder-export"
_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
_FIELDS = ("sha", "parents", "an", "ae", "ad", "cn", "ce", "cd", "message")
_FORMAT = "%x1f".join(("%H", "%P", "%an", "%ae", "%aI", "%cn", "%ce", "%cI", "%B"))


class NothingToExport(ClowderError):
    """The job's files, less what export leaves out, are those it started from."""

    exit_code = EXIT_WORK_FAILED


@dataclass(frozen=True)
class ExportRequest:
    """What `clowder export` was asked for: a branch (in `repo`, else the source) or a patch."""

    pipeline: str
    job: str | None = None
    branch: str | None = None
    patch: str | None = None  # a file, or "-" for stdout
    squash: bool = False
    repo: Path | None = None
    force: bool = False


@dataclass(frozen=True)
class Step:
    """A commit of the job's first-parent lineage since the source commit."""

    sha: str
    parents: tuple[str, ...]
    author: Mapping[str, str]
    committer: Mapping[str, str]
    message: str


@dataclass(frozen=True)
class Exported:
    job: str
    base: str | None  # the commit the export starts from; None: the first commit has no parent
    commits: tuple[str, ...]  # oldest first
    target: Path | None = None  # the repository the branch was written to
    branch: str | None = None
    patch: str = ""  # the patch series, for --patch


# -- which job, and what it started from ----------------------------------------------------------

def _statuses(paths: PipelinePaths) -> dict[str, JobStatus]:
    return {job: read_job_status(paths.job_status_file(job), job) for job in paths.job_names()}


def default_job(statuses: Mapping[str, JobStatus], order: Sequence[str]) -> str:
    """The last succeeded job, in the pipeline's order, whose work no other job went on with: the
    sink of the graph. A fix-up is consumed by its spawner's next attempt, so after a regression
    loop this is the spawner, whose commit holds the fix-up's work as it was tested."""
    consumed = {up for s in statuses.values() for a in s.attempts for up in a.consumed if up != s.job}
    done = [j for j in order if j in statuses and statuses[j].state is JobState.SUCCEEDED]
    done += [j for j, s in statuses.items() if s.state is JobState.SUCCEEDED and j not in done]
    sinks = [j for j in done if j not in consumed]
    if not done:
        raise UsageError("no job has succeeded yet: nothing to export (name a JOB and add --force to export "
                         "what one left)")
    return (sinks or done)[-1]


def _job(paths: PipelinePaths, request: ExportRequest, statuses: Mapping[str, JobStatus], order: Sequence[str]) -> str:
    if request.job is None:
        return default_job(statuses, order)
    job = known.job(paths, request.job)
    state = statuses[job].state if job in statuses else JobState.PENDING
    if state is not JobState.SUCCEEDED and not request.force:
        raise UsageError(f"{paths.name}/{job} has not succeeded (it is {state.value}); --force exports "
                         "what its last attempt left")
    return job


def source_commits(statuses: Iterable[JobStatus]) -> set[str]:
    """The commits the jobs that started from the pipeline's source started from."""
    out = set()
    for s in statuses:
        first = s.attempts[0] if s.attempts else None
        if first is not None and not first.consumed and first.base_commit and _SHA.match(first.base_commit):
            out.add(first.base_commit)
    return out


# -- the scratch repository -----------------------------------------------------------------------

def _scratch(where: Path, objects: Path) -> Path:
    git(where, "init", "-q", ".")
    (where / ".git" / "objects" / "info" / "alternates").write_text(f"{objects.resolve()}\n")
    return where


def lineage(scratch: Path, commit: str, bases: Iterable[str]) -> list[Step]:
    """The first-parent chain from the first commit after a source commit up to `commit`."""
    stops = [f"^{b}" for b in sorted(bases) if b != commit]
    out = git(scratch, "log", "-z", "--first-parent", "--reverse", "--ignore-missing", f"--format={_FORMAT}",
              "--end-of-options", commit, *stops).stdout
    steps = []
    for record in out.split("\0"):
        if not record:
            continue
        f = dict(zip(_FIELDS, record.split("\x1f", len(_FIELDS) - 1), strict=True))
        steps.append(Step(f["sha"], tuple(f["parents"].split()),
                          {"GIT_AUTHOR_NAME": f["an"], "GIT_AUTHOR_EMAIL": f["ae"], "GIT_AUTHOR_DATE": f["ad"]},
                          {"GIT_COMMITTER_NAME": f["cn"], "GIT_COMMITTER_EMAIL": f["ce"],
                           "GIT_COMMITTER_DATE": f["cd"]},
                          f["message"]))
    return steps


def clowders_own(pipeline: str, steps: Sequence[Step]) -> list[Step]:
    """The end of `steps` that Clowder made for `pipeline`: where no status file says which commit
    the source was (status files rebuilt from the attempts' own records do not), the source's
    history must not be exported as if it were the pipeline's work."""
    start = len(steps)
    while start > 0 and _is_clowders(pipeline, steps[start - 1]):
        start -= 1
    return list(steps[start:])


def _is_clowders(pipeline: str, step: Step) -> bool:
    if _trailers(step.message).get("Clowder-Pipeline") == pipeline:
        return True
    return len(step.parents) > 1 and re.match(r"^[a-z0-9][a-z0-9._-]*: merge ", step.message) is not None


class _Trees:
    """A commit's tree without what export leaves out: those paths are as the base has them (a
    file of the user's own that matches an exclude pattern is kept, never deleted)."""

    def __init__(self, scratch: Path, base: str | None, excludes: Sequence[str]) -> None:
        self.scratch = scratch
        self.env = {"GIT_INDEX_FILE": str(scratch / ".git" / "export.index")}
        self.options = [f"--exclude={p}" for p in (METADATA, *excludes)]
        self.restore = self._excluded(base, stage=True) if base else ""

    def _excluded(self, commit: str, stage: bool = False) -> str:
        git(self.scratch, "read-tree", "--end-of-options", commit, env=self.env)
        # ls-files -i -c: the index's files that match the patterns, with gitignore's rules.
        return git(self.scratch, "ls-files", "-z", "-c", "-i", *(["-s"] if stage else []), *self.options,
                   env=self.env).stdout

    def of(self, commit: str) -> str:
        drop = "".join(f"0 {'0' * 40}\t{p}\0" for p in self._excluded(commit).split("\0") if p)
        if drop or self.restore:
            git(self.scratch, "update-index", "-z", "--index-info", stdin=drop + self.restore, env=self.env)
        return git(self.scratch, "write-tree", env=self.env).stdout.strip()


# -- commit messages ------------------------------------------------------------------------------

def _trailers(message: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^(Clowder-[A-Za-z]+): (.*)$", message, re.M)}


def _message(pipeline: str, step: Step) -> str:
    """The attempt's own message, its subject naming the pipeline, and the commit it comes from."""
    text = step.message.rstrip("\n")
    trailers = _trailers(text)
    if trailers.get("Clowder-Pipeline") == pipeline or len(step.parents) > 1:
        text = f"{pipeline}/{text}"  # Clowder's attempt commits and merges: `dev: attempt 1 succeeded`
    if "Clowder-Pipeline" not in trailers:  # a merge of upstreams, or a commit a job made itself
        job = text.split(":", 1)[0].rsplit("/", 1)[-1]
        text += f"\n\nClowder-Pipeline: {pipeline}" + (f"\nClowder-Job: {job}" if len(step.parents) > 1 else "")
    return f"{text}\nClowder-Commit: {step.sha}\n"


def _squash_message(pipeline: str, job: str, steps: Sequence[Step]) -> str:
    names = []
    for step in steps:
        t = _trailers(step.message)
        if "Clowder-Job" in t and "Clowder-Attempt" in t:
            names.append(f"{t['Clowder-Job']}@{t['Clowder-Attempt']} {t.get('Clowder-State', '')}".strip())
        else:
            names.append(step.message.splitlines()[0] if step.message else step.sha[:12])
    last = _trailers(steps[-1].message)
    lines = "\n".join(f"- {n}" for n in names)
    attempts = ", ".join(n.split()[0] for n in names if "@" in n.split()[0])
    return (f"{pipeline}/{job}: the work of {len(steps)} commit(s)\n\n{lines}\n\n"
            f"Clowder-Pipeline: {pipeline}\nClowder-Job: {job}\n"
            + (f"Clowder-Attempt: {last['Clowder-Attempt']}\n" if last.get("Clowder-Job") == job else "")
            + (f"Clowder-Attempts: {attempts}\n" if attempts else ""))


# -- building the commits -------------------------------------------------------------------------

def _commit(scratch: Path, tree: str, parent: str | None, message: str, who: Mapping[str, str]) -> str:
    parents = ["-p", parent] if parent else []
    return git(scratch, "commit-tree", tree, *parents, "-F", "-", stdin=message, env=who).stdout.strip()


def build(scratch: Path, pipeline: str, job: str, steps: Sequence[Step], excludes: Sequence[str],
          squash: bool) -> tuple[str | None, tuple[str, ...]]:
    """(base, new commits): one commit per step that changed the exported files, or one for all."""
    base = steps[0].parents[0] if steps and steps[0].parents else None
    trees = _Trees(scratch, base, excludes)
    previous = trees.of(base) if base else None
    head, made, kept = base, [], []
    for step in steps:
        tree = trees.of(step.sha)
        if tree == previous:
            continue  # an attempt that changed only metadata or excluded files, or nothing
        kept.append(step)
        previous = tree
        if not squash:
            head = _commit(scratch, tree, head, _message(pipeline, step), {**step.author, **step.committer})
            made.append(head)
    if squash and kept:
        who = {**kept[-1].author, **kept[-1].committer}
        made.append(_commit(scratch, previous or "", base, _squash_message(pipeline, job, kept), who))
    return base, tuple(made)


# -- where it goes --------------------------------------------------------------------------------

def _target(root: Root, paths: PipelinePaths, request: ExportRequest, source: str | None) -> Path:
    if request.repo is not None:
        target = request.repo.expanduser().resolve()
    elif source is None:
        raise UsageError(f"{paths.spec_file}: the pipeline has no source: give --repo PATH (the branch then "
                         "starts with no parent, as an orphan branch)")
    else:
        text = source.removeprefix("file://")
        if "://" in text or re.match(r"^[\w.-]+@[\w.-]+:", text):
            raise UsageError(f"{paths.spec_file}: source.repo: {source} is not a local repository: "
                             "give --repo PATH")
        target = (root.path / Path(text).expanduser()).resolve()
    if git(target if target.is_dir() else root.path, "-C", str(target), "rev-parse", "--git-dir",
           check=False).returncode != 0:
        raise UsageError(f"{target}: not a git repository")
    return target


def _check_branch(target: Path, branch: str, force: bool) -> None:
    if branch.startswith("-") or git(target, "check-ref-format", "--branch", branch, check=False).returncode:
        raise UsageError(f"{branch!r}: not a valid branch name")
    ref = f"refs/heads/{branch}"
    worktree = str(target)
    for line in git(target, "worktree", "list", "--porcelain").stdout.splitlines():
        worktree = line.removeprefix("worktree ") if line.startswith("worktree ") else worktree
        if line == f"branch {ref}":
            raise UsageError(f"{branch} is checked out in {worktree}: export never touches a checked-out "
                             "branch; choose another --branch")
    have = git(target, "rev-parse", "--verify", "-q", "--end-of-options", ref, check=False).stdout.strip()
    if have and not force:
        raise UsageError(f"branch {branch} already exists in {target} (at {have[:12]}); --force replaces it")


def _fetch(target: Path, scratch: Path, branch: str, force: bool) -> None:
    # Without --force no `+`: a branch made meanwhile by someone else is never rewound by git.
    spec = f"{'+' if force else ''}{SCRATCH_REF}:refs/heads/{branch}"
    git(target, "fetch", "-q", "--no-tags", "--no-prune", "--no-write-fetch-head", "--recurse-submodules=no", "--",
        str(scratch), spec)


def _patch(scratch: Path, base: str | None, tip: str) -> str:
    span = [f"{base}..{tip}"] if base else ["--root", tip]
    # The user's format.* and diff.* settings (a cover letter, attachments, no prefixes, color)
    # would make a series `git am` cannot apply: each is turned off here.
    return git(scratch, "format-patch", "--stdout", "--no-color", "--no-signature", "--no-cover-letter",
               "--no-attach", "--no-numbered", "--src-prefix=a/", "--dst-prefix=b/", "--no-relative",
               "--no-ext-diff", "--no-textconv", *span).stdout


# -- the command ----------------------------------------------------------------------------------

def export(root: Root, request: ExportRequest) -> Exported:
    """Export a job's work as `request` says; see the module's docstring."""
    from clowder.validate import load_config, load_pipeline

    if (request.branch is None) == (request.patch is None):
        raise UsageError("give --branch NAME (a branch in the repository) or --patch FILE (a patch series)")
    paths = known.existing(root.pipeline(request.pipeline))
    pipeline = load_pipeline(paths, load_config(root))
    statuses = _statuses(paths)
    job = _job(paths, request, statuses, pipeline.order)
    tip = resolve(paths, job)
    target = None
    if request.branch is not None:
        target = _target(root, paths, request, pipeline.spec.source.repo if pipeline.spec.source else None)
        _check_branch(target, request.branch, request.force)
    with tempfile.TemporaryDirectory(prefix="clowder-export-") as tmp:
        scratch = _scratch(Path(tmp), tip.repo / ".git" / "objects")
        bases = source_commits(statuses.values())
        steps = lineage(scratch, tip.commit, bases)
        if pipeline.spec.source is not None and not bases:
            steps = clowders_own(paths.name, steps)
        base, commits = build(scratch, paths.name, job, steps, pipeline.spec.export_exclude, request.squash)
        if not commits:
            raise NothingToExport(f"{paths.name}/{job}: nothing to export: without .clowder/ and the files "
                                  "export.exclude names, its files are those it started from")
        if request.patch is not None:
            return Exported(job, base, commits, patch=_patch(scratch, base, commits[-1]))
        assert target is not None and request.branch is not None
        git(scratch, "update-ref", SCRATCH_REF, commits[-1])
        _fetch(target, scratch, request.branch, request.force)
    return Exported(job, base, commits, target, request.branch)


def write_patch(where: str, text: str) -> None:
    if where == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write(Path(where), text)


def command_line(pipeline: str, job: str) -> str:
    """The export command the web page shows for a job."""
    return f"clowder export {pipeline} {job} --branch clowder/{pipeline}-{job}"


__all__ = ["ExportRequest", "Exported", "NothingToExport", "command_line", "default_job", "export", "write_patch"]
