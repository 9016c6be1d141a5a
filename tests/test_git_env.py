"""Clowder's one git environment policy (clowder.workspace.repo) holds for everything that runs
git in a workspace: Clowder's own commands and the jobs. Run as a user would, from inside a git
hook or a shell that exports GIT_DIR: the user's repository is never the one written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clowder.tree import Root
from tests.conftest import MakePipeline


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout


def clowder(root: Root, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clowder", *args], cwd=root.path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_run_started_with_git_dir_set_leaves_the_users_repository_alone(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    git(mine, "init", "-q")
    git(mine, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty", "-m", "my work")
    head = git(mine, "rev-parse", "HEAD")
    # What a pre-commit hook hands to every process it starts (an `export GIT_DIR=...` too).
    env = {**os.environ, "GIT_DIR": str(mine / ".git"), "GIT_INDEX_FILE": str(mine / ".git" / "index")}
    make_pipeline("p", {"a": 'command = "echo x > made.txt && git add made.txt && git commit -qm job-commit"\n'})

    ran = clowder(root, "run", "p", env=env)

    assert ran.returncode == 0, ran.stderr[-2000:]
    assert git(mine, "rev-parse", "HEAD") == head and git(mine, "status", "--porcelain") == ""
    assert not (mine / "made.txt").exists()
    workspace = root.pipeline("p").workspace("a")
    assert git(workspace, "log", "--format=%s").splitlines() == ["a: attempt 1 succeeded", "job-commit"]
    checked = clowder(root, "fsck", env=env)  # reads the workspaces' objects, through the same policy
    assert checked.returncode == 0, checked.stdout + checked.stderr
