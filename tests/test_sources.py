"""Any git repository as a pipeline's `source`: what it holds never collides with Clowder's refs,
every shape of repository works, a job never writes into it, and its uncommitted changes are
either reported or taken as a snapshot. Real repositories, real runs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from clowder.driver import Driver
from clowder.state import JobState, JobStatus, read_job_status, read_pipeline_status
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline, write

ID = ["-c", "user.name=Dev", "-c", "user.email=dev@x.org"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, *ID, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


def run(root: Root, pipeline: str = "p", log: Callable[[str], None] = lambda s: None) -> bool:
    return Driver(root, only=[pipeline], log=log).serve(until_done=True)


def status(root: Root, job: str, pipeline: str = "p") -> JobStatus:
    return read_job_status(root.pipeline(pipeline).job_status_file(job), job)


def ws(root: Root, job: str, pipeline: str = "p") -> Path:
    return root.pipeline(pipeline).workspace(job)


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def source_toml(repo: Path | str, extra: str = "") -> str:
    return f'prompt = "x"\nsource = {{ repo = "{repo}"{extra} }}\n'


def project(path: Path) -> Path:
    """A small project on branch `main`: app.py at version 2, tagged v1 at version 1."""
    git(path.parent, "init", "-q", "-b", "main", str(path))
    write(path / "app.py", "VERSION = 1\n")
    commit(path, "v1")
    git(path, "tag", "v1")
    write(path / "app.py", "VERSION = 2\n")
    commit(path, "v2")
    return path


# -- 1. the source's refs never collide with Clowder's ----------------------------------------

DEV_TEST = {
    "dev": 'command = "echo done > feature.txt"\n',
    "test": 'command = "grep done feature.txt && grep VERSION app.py"\nneeds = ["dev"]\n',
}


def test_a_source_holding_refs_named_like_clowders_never_hides_a_jobs_work(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    src = project(tmp_path / "src")
    old = git(src, "rev-parse", "v1").strip()
    for tag in ("attempt-1", "attempt-2", "dev/attempt-1", "test/attempt-1"):
        git(src, "tag", tag, old)
    git(src, "branch", "dev", old)
    git(src, "branch", "clowder/dev", old)
    git(src, *ID, "notes", "add", "-m", "a note", "HEAD")
    make_pipeline("p", DEV_TEST, spec=source_toml(src))
    assert run(root)
    dev = status(root, "dev").attempts[0]
    assert dev.commit != old and dev.base_commit == git(src, "rev-parse", "HEAD").strip()
    assert (ws(root, "test") / "feature.txt").read_text() == "done\n"
    assert git(ws(root, "dev"), "status", "--porcelain") == ""
    assert git(ws(root, "dev"), "rev-parse", "attempt-1").strip() == dev.commit
    assert git(ws(root, "test"), "rev-parse", "dev/attempt-1").strip() == dev.commit
    assert git(ws(root, "dev"), "tag", "--list").split() == ["attempt-1"]  # none of the source's refs


def test_a_clowder_workspace_is_a_source_for_another_pipeline(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    make_pipeline("first", {"plan": 'command = "echo plan > plan.md"\n'}, spec='prompt = "x"\n')
    assert run(root, "first")
    make_pipeline("p", DEV_TEST | {"test": 'command = "grep done feature.txt && grep plan plan.md"\n'
                                           'needs = ["dev"]\n'},
                  spec=source_toml(ws(root, "plan", "first")))
    assert run(root)
    assert status(root, "dev").attempts[0].base_commit == status(root, "plan", "first").attempts[0].commit
    assert (ws(root, "test") / "feature.txt").read_text() == "done\n"


# -- 2. every shape of repository -------------------------------------------------------------

def _plain(tmp_path: Path) -> str:
    return str(project(tmp_path / "src"))


def _shared(tmp_path: Path) -> str:
    origin = project(tmp_path / "origin")
    git(tmp_path, "clone", "-q", "--shared", str(origin), "src")
    return str(tmp_path / "src")


def _reference(tmp_path: Path) -> str:
    origin = project(tmp_path / "origin")
    git(tmp_path, "clone", "-q", "--reference", str(origin), f"file://{origin}", "src")
    return str(tmp_path / "src")


def _a_workspace_clone(tmp_path: Path) -> str:
    """A clone borrowing from a repository that itself borrows (alternates of alternates)."""
    git(tmp_path, "clone", "-q", "--shared", _shared(tmp_path), "src2")
    return str(tmp_path / "src2")


def _shallow(tmp_path: Path) -> str:
    origin = project(tmp_path / "origin")
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{origin}", "src")
    assert (tmp_path / "src" / ".git" / "shallow").exists()
    return str(tmp_path / "src")


def _worktree(tmp_path: Path) -> str:
    origin = project(tmp_path / "origin")
    git(origin, "worktree", "add", "-q", "--detach", str(tmp_path / "linked"), "HEAD")
    git(origin, "checkout", "-q", "v1")  # the main checkout elsewhere: the linked one is the source
    return str(tmp_path / "linked")


def _bare(tmp_path: Path) -> str:
    origin = project(tmp_path / "origin")
    git(tmp_path, "clone", "-q", "--bare", str(origin), "src.git")
    return str(tmp_path / "src.git")


def _file_url(tmp_path: Path) -> str:
    return f"file://{project(tmp_path / 'src')}"


def _spaces(tmp_path: Path) -> str:
    return str(project(tmp_path / "my project dir"))


def _submodules(tmp_path: Path) -> str:
    lib = tmp_path / "lib"
    git(tmp_path, "init", "-q", "-b", "main", str(lib))
    write(lib / "lib.txt", "library\n")
    commit(lib, "lib")
    src = project(tmp_path / "src")
    git(src, "-c", "protocol.file.allow=always", "submodule", "add", "-q", "../lib", "vendor/lib")
    commit(src, "add lib")
    return str(src)


def _detached(tmp_path: Path) -> str:
    src = project(tmp_path / "src")
    git(src, "checkout", "-q", "--detach", "HEAD")
    write(src / "app.py", "VERSION = 2\n# detached\n")
    commit(src, "only on a detached HEAD")
    return str(src)


SHAPES = {"plain": _plain, "shared": _shared, "reference": _reference, "nested-alternates": _a_workspace_clone,
          "shallow": _shallow, "linked-worktree": _worktree, "bare": _bare, "file-url": _file_url,
          "spaces": _spaces, "submodules": _submodules, "detached": _detached}

FAN_IN = {
    "a": 'command = "grep VERSION app.py > a.txt"\n',
    "b": 'command = "echo b > b.txt"\n',
    "join": 'command = "cat a.txt b.txt && git log --format=%s"\nneeds = ["a", "b"]\n',
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_of_repository_is_a_source(root: Root, make_pipeline: MakePipeline, tmp_path: Path,
                                               shape: str) -> None:
    source = SHAPES[shape](tmp_path)
    where = source.removeprefix("file://")
    before = refs(Path(where))
    expected = git(Path(where), "rev-parse", "HEAD").strip()
    make_pipeline("p", FAN_IN, spec=source_toml(source))
    assert run(root), [status(root, j).message for j in FAN_IN]
    assert status(root, "a").attempts[0].base_commit == expected
    join = ws(root, "join")
    assert (join / "a.txt").read_text().startswith("VERSION = 2")
    assert (join / "b.txt").read_text() == "b\n"
    assert refs(Path(where)) == before
    if shape == "submodules":  # checked out in the first jobs and downstream, with nowhere to push
        for job in FAN_IN:
            assert (ws(root, job) / "vendor" / "lib" / "lib.txt").read_text() == "library\n"
            assert git(ws(root, job) / "vendor" / "lib", "remote") == ""
            assert git(ws(root, job), "status", "--porcelain") == ""


def test_an_empty_repository_is_a_source(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    src = tmp_path / "empty"
    git(tmp_path, "init", "-q", str(src))
    make_pipeline("p", {"dev": 'command = "echo x > x.txt"\n',
                        "test": 'command = "grep x x.txt"\nneeds = ["dev"]\n'}, spec=source_toml(src))
    assert run(root)
    assert status(root, "dev").attempts[0].base_commit is None


def test_a_fifo_left_where_the_source_record_goes_never_hangs_the_daemon(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    src = dirty(tmp_path)
    make_pipeline("p", DEV_TEST, spec=source_toml(src))
    workspaces = root.pipeline("p").workspaces_dir
    workspaces.mkdir(parents=True)
    os.mkfifo(workspaces / ".source.json")
    assert run(root)
    assert "uncommitted changes" in read_pipeline_status(root.pipeline("p").status_file).message


# -- 3. a job never writes into the source ----------------------------------------------------

def test_a_job_cannot_push_into_the_source(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    src = project(tmp_path / "src")
    before = refs(src)
    push = 'command = "git push origin HEAD:refs/heads/evil; git push --all; git push --tags; true"\n'
    make_pipeline("p", {"dev": push, "test": push + 'needs = ["dev"]\n'}, spec=source_toml(src))
    assert run(root)
    assert refs(src) == before
    assert git(ws(root, "dev"), "remote") == "" and git(ws(root, "test"), "remote") == ""


# -- 4. uncommitted changes: reported, or taken as a snapshot ---------------------------------

def dirty(tmp_path: Path) -> Path:
    src = project(tmp_path / "src")
    write(src / ".gitignore", "*.log\n")
    commit(src, "ignore logs")
    write(src / "app.py", "VERSION = 3  # not committed\n")
    write(src / "new.txt", "untracked\n")
    write(src / "debug.log", "ignored\n")
    write(src / ".git" / "info" / "exclude", "secret.txt\n")
    write(src / "secret.txt", "ignored by the repository's own rules\n")
    return src


def test_uncommitted_changes_in_the_source_are_reported(root: Root, make_pipeline: MakePipeline,
                                                        tmp_path: Path) -> None:
    src = dirty(tmp_path)
    before = (refs(src), (src / ".git" / "index").read_bytes())
    lines: list[str] = []
    status_file = root.pipeline("p").status_file
    # The job sees its pipeline's status while it runs: the warning is there already.
    wait = f"for i in $(seq 600); do grep -q uncommitted {status_file} && exit 0; sleep 0.05; done; exit 1"
    make_pipeline("p", {"dev": f'command = "grep \'VERSION = 2\' app.py && test ! -e new.txt && {wait}"\n'},
                  spec=source_toml(src))
    assert run(root, log=lines.append)
    warning = (f"source {src} has uncommitted changes (2 files) that this pipeline does not include; "
               "`worktree = true` in pipeline.toml's source starts from the working tree as it is")
    assert f"p: warning: {warning}" in lines
    assert read_pipeline_status(root.pipeline("p").status_file).message == f"warning: {warning}"
    assert (refs(src), (src / ".git" / "index").read_bytes()) == before  # read without refreshing its index


def test_worktree_true_starts_from_the_working_tree_as_a_snapshot(root: Root, make_pipeline: MakePipeline,
                                                                 tmp_path: Path) -> None:
    src = dirty(tmp_path)
    head = git(src, "rev-parse", "HEAD").strip()
    before = (refs(src), git(src, "status", "--porcelain"), (src / ".git" / "index").read_bytes())
    make_pipeline("p", {"dev": 'command = "grep \'VERSION = 3\' app.py && grep untracked new.txt '
                               '&& test ! -e debug.log && test ! -e secret.txt"\n'},
                  spec=source_toml(src, ", worktree = true"))
    lines: list[str] = []
    assert run(root, log=lines.append)
    assert not [x for x in lines if "warning" in x]
    base = status(root, "dev").attempts[0].base_commit
    assert base is not None and base != head
    assert git(ws(root, "dev"), "rev-parse", f"{base}^").strip() == head
    assert "snapshot" in git(ws(root, "dev"), "log", "-1", "--format=%s", base)
    assert (refs(src), git(src, "status", "--porcelain"), (src / ".git" / "index").read_bytes()) == before


def test_worktree_true_on_a_root_inside_the_source_leaves_the_root_out(
        tmp_path: Path, make_pipeline: MakePipeline, root: Root) -> None:
    # The root is tmp_path/root; make tmp_path the source checkout, holding the root.
    git(tmp_path, "init", "-q", "-b", "main", ".")
    write(tmp_path / "app.py", "VERSION = 1\n")
    git(tmp_path, "add", "app.py")
    git(tmp_path, *ID, "commit", "-qm", "v1")
    make_pipeline("p", {"dev": 'command = "test ! -e root && grep VERSION app.py"\n'},
                  spec=source_toml("..", ", worktree = true"))
    assert run(root), status(root, "dev").message


@pytest.mark.parametrize(("worktree", "message"), [
    ("1", "source.worktree: expected true or false, got 1"),
    ("true", "source.worktree: a URL (https://example.org/x.git) has no working tree here; "
             "worktree = true needs the path of a checkout"),
])
def test_worktree_is_checked_by_validate(root: Root, make_pipeline: MakePipeline, cli: Invoke, worktree: str,
                                         message: str) -> None:
    make_pipeline("p", {"dev": 'command = "true"\n'},
                  spec=source_toml("https://example.org/x.git", f", worktree = {worktree}"))
    result = cli("validate")
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [f"{root.pipeline('p').spec_file}: {message}"]


def test_worktree_of_a_bare_repository_fails_the_job_saying_why(root: Root, make_pipeline: MakePipeline,
                                                                tmp_path: Path) -> None:
    bare = _bare(tmp_path)
    make_pipeline("p", {"dev": 'command = "true"\n'}, spec=source_toml(bare, ", worktree = true"))
    assert not run(root)
    assert status(root, "dev").message == (f"attempt 1 failed: could not start: pipeline.toml: source.worktree: "
                                           f"{bare} has no working tree (a URL or a bare repository)")


@pytest.mark.parametrize("worktree", [False, True])
def test_a_root_that_is_its_own_source_leaves_clowders_files_out(root: Root, make_pipeline: MakePipeline,
                                                                 worktree: bool) -> None:
    git(root.path, "init", "-q", "-b", "main")
    write(root.path / "app.py", "VERSION = 1\n")
    write(root.path / ".gitignore", ".clowder/\n")
    git(root.path, "add", "app.py", ".gitignore", "clowder.toml")
    git(root.path, *ID, "commit", "-qm", "v1")
    if worktree:
        write(root.path / "app.py", "VERSION = 2\n")
    make_pipeline("p", {"dev": 'command = "test ! -e pipelines && test ! -e .clowder/index.sqlite && cat app.py"\n'},
                  spec=source_toml(".", ", worktree = true" if worktree else ""))
    lines: list[str] = []
    assert run(root, log=lines.append), status(root, "dev").message
    assert not [x for x in lines if "warning" in x]
    assert (ws(root, "dev") / "app.py").read_text() == f"VERSION = {2 if worktree else 1}\n"


# -- 5. one branch name -----------------------------------------------------------------------

def test_every_workspace_is_on_the_branch_named_after_its_job(root: Root, make_pipeline: MakePipeline,
                                                             tmp_path: Path) -> None:
    src = tmp_path / "src"
    git(tmp_path, "init", "-q", "-b", "master", str(src))
    write(src / "app.py", "VERSION = 1\n")
    commit(src, "v1")
    make_pipeline("p", FAN_IN, spec=source_toml(src))
    assert run(root)
    for job in FAN_IN:
        assert git(ws(root, job), "symbolic-ref", "HEAD").strip() == f"refs/heads/clowder/{job}"
    make_pipeline("q", {"solo": 'command = "true"\n'})
    assert run(root, "q")
    assert git(ws(root, "solo", "q"), "symbolic-ref", "HEAD").strip() == "refs/heads/clowder/solo"
    assert status(root, "a").state is JobState.SUCCEEDED
