"""Sparse checkouts (`sparse_checkout` in a job): real pipelines from a real source repository; the
job's workspace holds only its paths, its commits carry the whole tree, and everything that reads
commits (downstream jobs, `clowder diff`, `clowder export`) sees the whole tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clowder.state import read_job_status
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline, write


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def files(ws: Path) -> list[str]:
    """The files in a workspace, as a user listing it sees them (git's own directory left out)."""
    return sorted(p.relative_to(ws).as_posix() for p in ws.rglob("*")
                  if p.is_file() and ".git" not in p.relative_to(ws).parts)


def tree(ws: Path, rev: str = "HEAD") -> list[str]:
    return sorted(git(ws, "ls-tree", "-r", "--name-only", rev).split())


def ws(root: Root, job: str, pipeline: str = "p") -> Path:
    return root.pipeline(pipeline).workspace(job)


SOURCE_FILES = {"README.md": "read me\n", "pyproject.toml": "[project]\n", "src/app.py": "VERSION = 1\n",
                "src/util/io.py": "io\n", "tests/test_app.py": "def test(): pass\n", "docs/guide.md": "guide\n",
                "docs/api/index.md": "api\n", "data/big.csv": "1,2\n"}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    repo = tmp_path / "project"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    for name, text in SOURCE_FILES.items():
        write(repo / name, text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@x.org", "commit", "-qm", "v1")
    return repo


def spec(source: Path) -> str:
    return f'prompt = "x"\nsource = {{ repo = "{source}" }}\n'


def test_a_sparse_job_holds_only_its_paths_and_commits_the_whole_tree(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, source: Path, tmp_path: Path) -> None:
    make_pipeline("p", {
        "dev": ('command = "echo \'VERSION = 2\' > src/app.py; echo new > src/new.py; rm src/util/io.py"\n'
                'sparse_checkout = ["src/"]\n'),
        "check": 'command = "cat docs/guide.md src/app.py src/new.py > seen.txt"\nneeds = ["dev"]\n',
    }, spec=spec(source))
    assert cli("run", "p").exit_code == 0
    dev, check = ws(root, "dev"), ws(root, "check")
    # Its workspace: its paths, the top-level files, its run metadata; nothing of docs/, tests/, data/.
    assert files(dev) == ["README.md", "pyproject.toml", "src/app.py", "src/new.py"]
    # Its commit: the whole tree, what it changed included; nothing outside its paths deleted.
    assert tree(dev) == sorted(["README.md", "pyproject.toml", "src/app.py", "src/new.py",
                                "tests/test_app.py", "docs/guide.md", "docs/api/index.md", "data/big.csv"])
    assert git(dev, "status", "--porcelain") == ""
    # A downstream without sparse_checkout gets the whole tree, dev's changes in it.
    assert (check / "seen.txt").read_text() == "guide\nVERSION = 2\nnew\n"
    assert "docs/api/index.md" in files(check) and "src/util/io.py" not in files(check)
    # What reads commits is unchanged: the diff is dev's change, the export holds the whole tree.
    changed = cli("diff", "p", "dev", "--name-status").output.split()
    assert changed == ["M", "src/app.py", "A", "src/new.py", "D", "src/util/io.py"]
    assert cli("export", "p", "dev", "--branch", "sparse-work").exit_code == 0
    assert tree(source, "sparse-work") == sorted(["README.md", "pyproject.toml", "src/app.py", "src/new.py",
                                                  "tests/test_app.py", "docs/guide.md", "docs/api/index.md",
                                                  "data/big.csv"])
    assert cli("fsck").exit_code == 0


def test_what_a_sparse_job_writes_outside_its_paths_is_committed_too(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, source: Path) -> None:
    make_pipeline("p", {
        "dev": ('command = "mkdir -p docs/api notes; echo rewritten > docs/guide.md; echo mine > notes/n.md; '
                'echo also > docs/api/extra.md"\nsparse_checkout = ["src"]\n'),
    }, spec=spec(source))
    assert cli("run", "p").exit_code == 0
    dev = ws(root, "dev")
    assert git(dev, "show", "HEAD:docs/guide.md") == "rewritten\n"
    assert git(dev, "show", "HEAD:notes/n.md") == "mine\n"
    assert git(dev, "show", "HEAD:docs/api/extra.md") == "also\n"
    assert git(dev, "show", "HEAD:docs/api/index.md") == "api\n"  # never checked out, never deleted
    assert git(dev, "status", "--porcelain") == ""
    artifacts = cli("artifacts", "p", "dev").output
    assert "docs/guide.md" in artifacts and "notes/n.md" in artifacts and "docs/api/index.md" not in artifacts


def test_a_fan_out_of_sparse_jobs_joins_into_the_whole_tree(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, source: Path) -> None:
    make_pipeline("p", {
        "base": 'command = "echo base > base.txt"\n',
        "code": 'command = "echo code >> src/app.py"\nneeds = ["base"]\nsparse_checkout = ["src/util", "tests/"]\n',
        "docs": 'command = "echo more >> docs/guide.md"\nneeds = ["base"]\nsparse_checkout = ["docs/guide.md"]\n',
        "data": 'command = "echo 3,4 >> data/big.csv"\nneeds = ["base"]\nsparse_checkout = ["data/*.csv"]\n',
        "join": 'command = "cat src/app.py docs/guide.md data/big.csv > all.txt"\nneeds = ["code", "docs", "data"]\n',
        "sparse-join": ('command = "cat docs/guide.md > seen.txt"\nneeds = ["code", "docs", "data"]\n'
                        'sparse_checkout = ["docs"]\n'),
    }, spec=spec(source))
    assert cli("run", "p").exit_code == 0
    top = ["README.md", "base.txt", "pyproject.toml"]
    # Directories: git's cone mode (a parent directory's own files come too: src/app.py for src/util).
    assert files(ws(root, "code")) == sorted([*top, "src/app.py", "src/util/io.py", "tests/test_app.py"])
    # A file, a glob: git's pattern mode, exactly those.
    assert files(ws(root, "docs")) == sorted([*top, "docs/guide.md"])
    assert files(ws(root, "data")) == sorted([*top, "data/big.csv"])
    assert (ws(root, "join") / "all.txt").read_text() == "VERSION = 1\ncode\nguide\nmore\n1,2\n3,4\n"
    assert tree(ws(root, "join")) == sorted([*SOURCE_FILES, "base.txt", "all.txt"])
    # A sparse job that merges its upstreams: the merge is whole, its checkout sparse.
    joined = ws(root, "sparse-join")
    assert (joined / "seen.txt").read_text() == "guide\nmore\n"
    assert files(joined) == sorted([*top, "docs/api/index.md", "docs/guide.md", "seen.txt"])
    assert git(joined, "show", "HEAD:src/app.py") == "VERSION = 1\ncode\n"
    assert git(joined, "show", "HEAD:data/big.csv") == "1,2\n3,4\n"


def test_a_sparse_job_after_a_hand_on_and_its_retry(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOWDER_WORKSPACE_HAND_ON", "always")
    make_pipeline("p", {
        "a": 'command = "echo a > a.txt"\n',
        "b": 'command = "echo b >> docs/guide.md"\nneeds = ["a"]\n',
        "c": ('command = "echo c >> src/app.py; test $CLOWDER_ATTEMPT = 2"\nneeds = ["b"]\n'
              'sparse_checkout = ["src/"]\nretries = 1\n'),
    }, spec=spec(source))
    assert cli("run", "p").exit_code == 0
    a, b, c = ws(root, "a"), ws(root, "b"), ws(root, "c")
    assert "a.txt" not in files(a)  # a's files went on to b (a chain)
    assert (b / "docs" / "guide.md").read_text() == "guide\nb\n"  # b kept its own: c took only what it needs
    assert files(c) == ["README.md", "a.txt", "pyproject.toml", "src/app.py", "src/util/io.py"]  # after the retry
    assert git(c, "show", "HEAD:src/app.py") == "VERSION = 1\nc\nc\n"  # attempt 2 started from attempt 1's commit
    assert git(c, "show", "HEAD:docs/guide.md") == "guide\nb\n"
    attempts = read_job_status(root.pipeline("p").job_status_file("c"), "c").attempts
    assert [x.state.value for x in attempts] == ["failed", "succeeded"]


def test_changing_sparse_checkout_before_a_retry_changes_the_workspace(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, source: Path) -> None:
    job = root.pipelines_dir / "p" / "jobs" / "dev.toml"
    make_pipeline("p", {"dev": 'command = "exit 1"\nsparse_checkout = ["src/"]\n'}, spec=spec(source))
    assert cli("run", "p").exit_code == 1
    assert "docs/guide.md" not in files(ws(root, "dev"))
    write(job, 'command = "exit 1"\nsparse_checkout = ["docs/"]\n')
    assert cli("retry", "p", "dev").exit_code == 0 and cli("run", "p").exit_code == 1
    dev = files(ws(root, "dev"))
    assert "docs/guide.md" in dev and "src/app.py" not in dev
    write(job, 'command = "true"\n')
    assert cli("retry", "p", "dev").exit_code == 0 and cli("run", "p").exit_code == 0
    assert [f for f in files(ws(root, "dev")) if not f.startswith(".clowder/")] == sorted(SOURCE_FILES)


@pytest.mark.parametrize(("entry", "problem"), [
    ("/src", "'/src' must be relative to the repository's top (no leading '/')"),
    ("src/../..", "'src/../..' leads out of the workspace ('..')"),
    ("a\\u0000b", "contains a NUL character"),
    (".git/hooks", "'.git/hooks' names git's own directory (.git)"),
    ("src//x", "'src//x' is not a path"),
])
def test_a_bad_sparse_checkout_entry_is_named_with_its_file_and_key(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, entry: str, problem: str) -> None:
    make_pipeline("p", {"dev": f'command = "true"\nsparse_checkout = ["src/", "{entry}"]\n'})
    result = cli("validate")
    assert result.exit_code == 2
    assert f"{root.pipelines_dir / 'p' / 'jobs' / 'dev.toml'}: sparse_checkout[1]: {problem}" in result.output


def test_a_misspelt_sparse_checkout_key_gets_a_did_you_mean(root: Root, make_pipeline: MakePipeline,
                                                            cli: Invoke) -> None:
    make_pipeline("p", {"dev": 'command = "true"\nsparse_chekout = ["src/"]\n'})
    result = cli("validate")
    assert result.exit_code == 2
    assert "sparse_chekout: unknown key 'sparse_chekout' (did you mean 'sparse_checkout'?)" in result.output
