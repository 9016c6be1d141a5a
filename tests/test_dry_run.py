"""`clowder run --dry-run`: what would run, in order and why, from real trees, changing nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline

HEAD = "dry run: nothing is started or written; each attempt is taken to succeed\n"


def test_dry_run_says_what_would_run_in_order_and_why(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\n', "b": 'command = "true"\n',
                        "c": 'command = "true"\nneeds = ["a", "b"]\n',
                        "d": 'command = "true"\nneeds = [{ job = "c", when = "failure" }]\n'})
    result = cli("run", "p", "--dry-run", "--max-parallel", "1")
    assert (result.exit_code, result.stdout) == (0, HEAD + (
        "  1. p/a: starts attempt 1: its turn came: it needs no other job\n"
        "  2. p/b: starts attempt 1: its turn came: it needs no other job\n"
        "  3. p/c: starts attempt 1: its needs are met: a succeeded, b succeeded\n"
        "not run: p/d (skipped): needs c to fail; it succeeded\n"
        "p would end succeeded\n"))
    assert not (root.pipeline("p").dir / "status").exists()


def test_dry_run_of_every_unfinished_pipeline_and_of_a_blocked_one(root: Root, make_pipeline: MakePipeline,
                                                                   cli: Invoke) -> None:
    make_pipeline("done", {"a": 'command = "true"\n'})
    assert cli("run", "done").exit_code == 0
    assert cli("run", "--dry-run").stdout == "nothing to run: every pipeline has ended\n"
    d = make_pipeline("bad", {"a": 'command = "true"\nretries = "x"\n'})
    result = cli("run", "--dry-run")
    assert (result.exit_code, result.stdout) == (0, HEAD + (
        f"bad would stay blocked: invalid spec: {d}/jobs/a.toml: retries: expected an integer, got 'x'\n"))


def _tree(path: Path) -> dict[str, tuple[int, bytes]]:
    """Every file, directory and link under `path`: its mode and its bytes (a link: its target)."""
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            st = p.lstat()
            if p.is_symlink():
                data = os.readlink(p).encode()
            elif p.is_file():
                data = hashlib.sha256(p.read_bytes()).digest()
            else:
                data = b""
            out[str(p.relative_to(path))] = (st.st_mode, data)
    return out


def test_dry_run_changes_nothing_in_the_tree_or_the_git_repositories(root: Root, make_pipeline: MakePipeline,
                                                                     cli: Invoke, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    make_pipeline("p", {"a": 'command = "echo one > one.txt"\n',
                        "b": f'command = "test -f {marker} && echo two > two.txt"\nneeds = ["a"]\n',
                        "c": 'command = "true"\nneeds = ["b"]\n'})
    make_pipeline("fresh", {"x": 'command = "true"\n'})
    assert cli("run", "p").exit_code == 1
    assert cli("rerun", "p", "a", "--downstream").exit_code == 0
    before = _tree(root.path)
    assert (root.pipeline("p").workspace("a") / ".git").is_dir()  # real repositories, compared too
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-m", "clowder", "run", "--dry-run"], cwd=root.path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == HEAD.strip()
    request = next(root.pipeline("p").requests_dir.glob("*.toml")).stem
    started = [line.split(":", 1)[0].strip() for line in lines if line[:4].strip().endswith(".")]
    assert started == ["1. fresh/x", "1. p/a", "2. p/b", "3. p/c"]
    assert f"  1. p/a: starts attempt 2: `clowder rerun` asked for it (request {request})" in lines
    assert "  2. p/b: starts attempt 2: its needs are met: a succeeded" in lines
    assert lines[-2:] == ["fresh would end succeeded", "p would end succeeded"]
    assert _tree(root.path) == before


def test_dry_run_waits_out_a_backoff_and_names_the_retry(root: Root, make_pipeline: MakePipeline,
                                                         cli: Invoke, tmp_path: Path) -> None:
    from clowder.state import JobState
    from tests.test_driver import daemon, jstatus, wait_for

    make_pipeline("p", {"a": f'command = "test -f {tmp_path / "fixed"}"\nretries = 1\n'
                             'backoff = { initial = "1h", max = "2h" }\n',
                        "b": 'command = "true"\nneeds = ["a"]\n'})
    with daemon(root):
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.RETRYING, what="a to wait for its retry")
    result = cli("run", "p", "--dry-run")
    retry_at = jstatus(root, "p", "a").retry_at
    assert (result.exit_code, result.stdout) == (0, HEAD + (
        f"  1. p/a (at {retry_at:%Y-%m-%d %H:%M:%S} UTC): starts attempt 2: an automatic retry "
        "(retries = 1) after attempt 1 failed (exit code 1)\n"
        f"  2. p/b (at {retry_at:%Y-%m-%d %H:%M:%S} UTC): starts attempt 1: its needs are met: a succeeded\n"
        "p would end succeeded\n"))
    assert jstatus(root, "p", "a").state is JobState.RETRYING
