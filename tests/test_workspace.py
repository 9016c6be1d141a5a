"""Workspaces as git repositories: a commit per attempt, lineage, artifacts, `clowder diff`,
`clowder artifacts` and `clowder path` — all with real repositories and real runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clowder import workspace
from clowder.driver import Driver
from clowder.state import JobState, JobStatus, read_job_status
from clowder.template import init_root
from clowder.tree import Root
from clowder.views import diffs
from clowder.workspace.handon import restore
from tests.conftest import Invoke, MakePipeline, write
from tests.test_driver import daemon, wait_for


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def run(root: Root, pipeline: str = "p") -> bool:
    return Driver(root, only=[pipeline], log=lambda s: None).serve(until_done=True)


def status(root: Root, job: str, pipeline: str = "p") -> JobStatus:
    return read_job_status(root.pipeline(pipeline).job_status_file(job), job)


def ws(root: Root, job: str, pipeline: str = "p") -> Path:
    return root.pipeline(pipeline).workspace(job)


def trailers(repo: Path, rev: str = "HEAD") -> list[dict[str, str]]:
    """The Clowder trailers of every commit reachable from `rev`, newest first."""
    out = git(repo, "log", "--format=%(trailers:only,unfold)%x1e", rev)
    return [dict(line.split(": ", 1) for line in block.strip().splitlines())
            for block in out.split("\x1e") if block.strip()]


CHAIN = {
    "plan": 'command = "echo step one > plan.md"\n',
    "dev": ('command = "cat plan.md > code.txt; mkdir -p .clowder/dev; '
            'echo \'{\\"ok\\": true}\' > .clowder/dev/output.json"\nneeds = ["plan"]\n'),
    "test": 'command = "echo passed > report.txt"\nneeds = ["dev"]\n',
}


# -- lineage ----------------------------------------------------------------------------------

def test_a_chain_shows_every_jobs_commit_with_trailers_and_tags(root: Root, make_pipeline: MakePipeline,
                                                                  cli: Invoke) -> None:
    make_pipeline("p", CHAIN)
    assert cli("run", "p").exit_code == 0
    test_ws = ws(root, "test")
    commits = {job: status(root, job).attempts[0].commit for job in CHAIN}
    upstream = {"test": "dev", "dev": "plan"}  # each commit also says what the attempt was made from
    assert trailers(test_ws) == [
        {"Clowder-Pipeline": "p", "Clowder-Job": job, "Clowder-Attempt": "1", "Clowder-State": "succeeded",
         "Clowder-Input-Spec": status(root, job).attempts[0].spec_hash,
         **({"Clowder-Input-Upstream": f"{upstream[job]} {commits[upstream[job]]}"} if job in upstream else {})}
        for job in ("test", "dev", "plan")
    ]
    assert git(test_ws, "rev-parse", "attempt-1", "dev/attempt-1", "plan/attempt-1").split() == [
        commits["test"], commits["dev"], commits["plan"]]
    assert git(test_ws, "log", "--format=%H").split() == [commits["test"], commits["dev"], commits["plan"]]
    for job in CHAIN:  # each job's own repository has its own tag
        assert git(ws(root, job), "rev-parse", "attempt-1").strip() == commits[job]
        assert git(ws(root, job), "status", "--porcelain") == ""
    test = status(root, "test").attempts[0]
    assert test.consumed == {"dev": commits["dev"]} and test.base_commit == commits["dev"]
    dev = status(root, "dev").attempts[0]
    assert dev.consumed == {"plan": commits["plan"]} and dev.base_commit == commits["plan"]
    assert status(root, "plan").attempts[0].base_commit is None  # an empty repository
    assert (test_ws / "code.txt").read_text() == "step one\n"
    assert json.loads((test_ws / ".clowder" / "dev" / "output.json").read_text()) == {"ok": True}


def test_every_recorded_blob_is_the_git_object_at_its_path(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {
        **CHAIN,
        "test": ('command = "echo passed > report.txt; echo x > build.log; false"\nneeds = ["dev"]\n'
                 'outputs = ["code.txt", "build.log"]\nallow_failure = true\n'),
        "ignored": 'command = "echo build.log > .gitignore; echo data > build.log"\noutputs = ["build.log"]\n',
    })
    run(root)
    kinds = {}
    for job in (*CHAIN, "ignored"):
        for attempt in status(root, job).attempts:
            assert attempt.commit and attempt.artifacts
            for a in attempt.artifacts:
                assert git(ws(root, job), "rev-parse", f"{attempt.commit}:{a.path}").strip() == a.blob
                assert int(git(ws(root, job), "cat-file", "-s", a.blob)) == a.size
                kinds[(job, a.path)] = a.kind
    assert kinds == {
        ("plan", "plan.md"): "file",
        ("dev", "code.txt"): "file",
        ("dev", ".clowder/dev/output.json"): "model_output",
        ("test", "report.txt"): "file",
        ("test", "build.log"): "file",
        ("test", "code.txt"): "file",  # unchanged, but a declared output
        ("test", ".clowder/test/error.json"): "error_context",
        ("ignored", ".gitignore"): "file",
        ("ignored", "build.log"): "file",  # a declared output is committed even if ignored
    }


def test_an_attempt_commits_with_the_configured_identity_and_no_global_config(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    config = root.config_file.read_text().replace('author_name = "Clowder"', 'author_name = "Build Bot"')
    root.config_file.write_text(config.replace('author_email = "clowder@localhost"', 'author_email = "bot@x.org"'))
    home = Path.home()
    hooks = write(tmp_path / "hooks" / "pre-commit", "#!/bin/sh\nexit 1\n")
    hooks.chmod(0o755)
    # A hostile global config: hooks that refuse every commit, signing without a key.
    write(home / "gitconfig", f"[core]\n\thooksPath = {hooks.parent}\n[commit]\n\tgpgsign = true\n")
    before = (home / "gitconfig").read_text()
    make_pipeline("p", {"a": 'command = "git commit -q --allow-empty --no-verify --no-gpg-sign -m mine; touch f"\n'})
    assert run(root)
    a = ws(root, "a")
    assert git(a, "log", "-1", "--format=%an <%ae> | %cn <%ce>").strip() == \
        "Build Bot <bot@x.org> | Build Bot <bot@x.org>"
    # The job's own commit got the same identity, from its environment.
    assert git(a, "log", "-1", "--format=%an", "HEAD^").strip() == "Build Bot"
    assert (home / "gitconfig").read_text() == before
    assert not (a / ".git" / "hooks").exists()


def test_a_job_that_commits_itself_still_gets_its_artifacts(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "echo x > mine.txt && git add . && git commit -qm mine && echo y > late"\n'})
    assert run(root)
    attempt = status(root, "a").attempts[0]
    assert [x.path for x in attempt.artifacts] == ["late", "mine.txt"]
    assert git(ws(root, "a"), "log", "--format=%s").splitlines() == ["a: attempt 1 succeeded", "mine"]


# -- fan-in -----------------------------------------------------------------------------------

def test_a_fan_in_merges_both_upstreams(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {
        "split": 'command = "echo base > base.txt"\n',
        "left": 'command = "echo l > left.txt"\nneeds = ["split"]\n',
        "right": 'command = "echo r > right.txt"\nneeds = ["split"]\n',
        "join": 'command = "cat base.txt left.txt right.txt > all.txt"\nneeds = ["left", "right"]\n',
    })
    assert run(root)
    join = ws(root, "join")
    assert (join / "all.txt").read_text() == "base\nl\nr\n"
    left, right = (status(root, j).attempts[0].commit for j in ("left", "right"))
    attempt = status(root, "join").attempts[0]
    assert attempt.consumed == {"left": left, "right": right}
    assert git(join, "rev-parse", f"{attempt.base_commit}^1", f"{attempt.base_commit}^2").split() == [left, right]
    assert [x.path for x in attempt.artifacts] == ["all.txt"]  # what the merge brought is not join's
    assert {t["Clowder-Job"] for t in trailers(join)} == {"split", "left", "right", "join"}


def test_a_fan_in_of_three_unrelated_upstreams(root: Root, make_pipeline: MakePipeline) -> None:
    jobs = {name: f'command = "echo {name} > {name}.txt"\n' for name in ("a", "b", "c")}
    make_pipeline("p", {**jobs, "join": 'command = "cat a.txt b.txt c.txt"\nneeds = ["a", "b", "c"]\n'})
    assert run(root)
    assert status(root, "join").attempts[0].consumed.keys() == {"a", "b", "c"}
    assert sorted(p.name for p in ws(root, "join").glob("*.txt")) == ["a.txt", "b.txt", "c.txt"]


def test_a_join_of_a_fan_out_and_its_start_takes_every_file_once(root: Root, make_pipeline: MakePipeline) -> None:
    workers = {f"w{i}": f'command = "echo {i} > w{i}.txt"\nneeds = ["start"]\n' for i in range(5)}
    make_pipeline("p", {"start": 'command = "echo s > start.txt"\n', **workers,
                        "join": f"command = \"cat *.txt > all.txt\"\nneeds = {json.dumps(['start', *workers])}\n"})
    assert run(root)
    join = ws(root, "join")
    assert (join / "all.txt").read_text() == "s\n0\n1\n2\n3\n4\n"
    base = status(root, "join").attempts[0].base_commit
    commits = [status(root, w).attempts[0].commit for w in workers]
    assert git(join, "log", "-1", "--format=%P", base).split() == commits  # start is in each: not a parent


def test_a_join_of_upstreams_that_changed_nothing_is_one_merge_commit_git_reads(root: Root,
                                                                                 make_pipeline: MakePipeline) -> None:
    """Workers that only ran something: the join's merge is written without checking anything out
    again, and git reads it as it reads its own (parents, author, tags of each worker, a clean tree)."""
    config = root.config_file.read_text()
    write(root.config_file, config.replace('author_name = "Clowder"', 'author_name = "Ann"')
          .replace('author_email = "clowder@localhost"', 'author_email = "ann@x"'))
    workers = {f"w{i}": 'command = "true"\nneeds = ["start"]\n' for i in range(4)}
    make_pipeline("p", {"start": 'command = "echo s > start.txt"\n', **workers,
                        "join": f"command = \"cat start.txt\"\nneeds = {json.dumps(list(workers))}\n"})
    assert run(root)
    join = ws(root, "join")
    base = status(root, "join").attempts[0].base_commit
    assert base is not None
    commits = [status(root, w).attempts[0].commit for w in workers]
    assert git(join, "log", "-1", "--format=%P|%an <%ae>|%s", base).strip().split("|") == [
        " ".join(commits), "Ann <ann@x>", "join: merge 3 upstreams: w1, w2, w3"]
    assert git(join, "rev-parse", f"{base}^{{tree}}") == git(join, "rev-parse", "w0/attempt-1^{tree}")
    assert {f"w{i}/attempt-1" for i in range(4)} <= set(git(join, "tag").split())
    assert git(join, "status", "--porcelain") == "" and (join / "start.txt").read_text() == "s\n"
    git(join, "fsck", "--strict", "--no-dangling")


def test_a_join_of_an_upstream_and_its_own_downstream_merges_each_once(root: Root,
                                                                        make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {
        "split": 'command = "echo s > split.txt"\n',
        "x": 'command = "echo x > x.txt"\nneeds = ["split"]\n',
        "y": 'command = "echo y > y.txt"\nneeds = ["x"]\n',
        "z": 'command = "echo z > z.txt"\nneeds = ["split"]\n',
        "join": 'command = "cat *.txt > all.txt"\nneeds = ["x", "y", "z"]\n',
    })
    assert run(root)
    join = ws(root, "join")
    assert (join / "all.txt").read_text() == "s\nx\ny\nz\n"
    attempt = status(root, "join").attempts[0]
    assert attempt.consumed.keys() == {"x", "y", "z"}
    y, z = (status(root, j).attempts[0].commit for j in ("y", "z"))
    assert git(join, "log", "-1", "--format=%P", attempt.base_commit).split() == [y, z]  # x is in y


def test_a_conflicting_fan_in_fails_naming_the_paths_and_runs_nothing(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    make_pipeline("p", {
        "a": 'command = "echo a > shared.txt; echo a > other.txt; echo a > a.txt"\n',
        "b": 'command = "echo b > shared.txt; echo b > other.txt"\n',
        "join": f'command = "touch {ran}"\nneeds = ["a", "b"]\nretries = 1\nbackoff = {{ initial = 0 }}\n',
    })
    assert not run(root)
    join = status(root, "join")
    message = "merge conflict with upstream b in: other.txt, shared.txt"
    assert join.state is JobState.FAILED
    assert [(x.state, x.message) for x in join.attempts] == [(JobState.FAILED, message)] * 2
    assert not ran.exists()
    assert not root.pipeline("p").log_file("join", 1).exists()
    repo = ws(root, "join")
    error = json.loads((repo / ".clowder" / "join" / "error.json").read_text())
    assert (error["reason"], error["conflicts"]) == (message, ["other.txt", "shared.txt"])
    assert git(repo, "status", "--porcelain") == ""
    assert [t["Clowder-State"] for t in trailers(repo)[:2]] == ["failed", "failed"]
    first = join.attempts[0]
    assert first.consumed == {"a": status(root, "a").attempts[0].commit}
    assert [(x.path, x.kind) for x in first.artifacts] == [(".clowder/join/error.json", "error_context")]


# -- source -----------------------------------------------------------------------------------

@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream-project"
    env_git = ["-c", "user.name=Dev", "-c", "user.email=dev@x.org"]
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    write(repo / "app.py", "VERSION = 1\n")
    git(repo, "add", "-A")
    git(repo, *env_git, "commit", "-qm", "v1")
    git(repo, "tag", "v1")
    git(repo, "checkout", "-qb", "feature")
    write(repo / "app.py", "VERSION = 2\n")
    git(repo, *env_git, "commit", "-qam", "v2")
    git(repo, "checkout", "-q", "main")
    return repo


@pytest.mark.parametrize(("ref", "version"), [("feature", "2"), ("v1", "1"), (None, "1")])
def test_a_pipeline_with_a_source_repository_starts_from_its_ref(
        root: Root, make_pipeline: MakePipeline, source_repo: Path, ref: str | None, version: str) -> None:
    source = f'source = {{ repo = "{source_repo}"' + (f', ref = "{ref}"' if ref else "") + " }\n"
    make_pipeline("p", {"build": 'command = "cat app.py > built.txt"\n',
                        "check": 'command = "grep VERSION built.txt"\nneeds = ["build"]\n'},
                  spec='prompt = "x"\n' + source)
    assert run(root)
    expected = git(source_repo, "rev-parse", ref or "HEAD").strip()
    build = status(root, "build").attempts[0]
    assert build.base_commit == expected
    assert (ws(root, "check") / "built.txt").read_text() == f"VERSION = {version}\n"
    assert git(ws(root, "check"), "log", "--format=%H").split()[-1] == git(source_repo, "rev-list", "--max-parents=0",
                                                                           "HEAD").strip()
    assert [x.path for x in build.artifacts] == ["built.txt"]


def test_a_source_path_is_relative_to_the_root_and_a_bad_ref_fails_clearly(
        root: Root, make_pipeline: MakePipeline, source_repo: Path) -> None:
    link = root.path / "project"
    link.symlink_to(source_repo)
    make_pipeline("p", {"build": 'command = "true"\n'},
                  spec='prompt = "x"\nsource = { repo = "project", ref = "nope" }\n')
    assert not run(root)
    assert status(root, "build").message == (
        "attempt 1 failed: could not start: pipeline.toml: source.ref: 'nope' is not a branch, tag or commit "
        "of project")


# -- retries and diffs ------------------------------------------------------------------------

FLAKY = ('command = "if [ -f seen ]; then echo fixed > result.txt; else echo broken > result.txt; touch seen; '
         'exit 3; fi"\nretries = 1\nbackoff = { initial = 0 }\n')


def test_a_retried_job_keeps_both_attempts_in_history_and_diffs_them(
        root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"flaky": FLAKY})
    assert cli("run", "p").exit_code == 0
    flaky = status(root, "flaky")
    first, second = flaky.attempts
    assert (first.state, second.state) == (JobState.FAILED, JobState.SUCCEEDED)
    assert second.base_commit == first.commit
    repo = ws(root, "flaky")
    assert git(repo, "rev-parse", "attempt-1", "attempt-2").split() == [first.commit, second.commit]
    assert [t["Clowder-State"] for t in trailers(repo)] == ["succeeded", "failed"]
    error = json.loads(git(repo, "show", "attempt-1:.clowder/flaky/error.json"))
    assert (error["exit_code"], error["reason"]) == (3, "exit code 3")
    assert not (repo / ".clowder" / "flaky" / "error.json").exists()  # gone with the attempt that failed

    result = cli("diff", "p", "flaky@1", "flaky@2", "--", "result.txt")
    assert result.exit_code == 0, result.output
    assert "-broken\n+fixed\n" in result.output
    assert "error.json" not in result.output
    assert cli("diff", "p", "flaky@2", "--name-only").output == ".clowder/flaky/error.json\nresult.txt\n"
    stat = cli("diff", "p", "flaky@1", "flaky@2", "--stat").output.splitlines()
    assert [line.split("|")[0].strip() for line in stat[:-1]] == [".clowder/flaky/error.json", "result.txt"]
    assert cli("diff", "p", "flaky", "--name-only").output == "result.txt\nseen\n"  # the job as a whole


def test_diff_between_two_jobs_repositories(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"dev": 'command = "echo v1 > code.txt"\n',
                        "fix": 'command = "echo v2 > code.txt; echo new > extra.txt"\nneeds = ["dev"]\n'})
    assert run(root)
    result = cli("diff", "p", "dev", "fix", "--name-status")
    assert (result.exit_code, result.output) == (0, "M\tcode.txt\nA\textra.txt\n")
    assert cli("diff", "p", "fix", "dev", "--", "code.txt").output.endswith("-v2\n+v1\n")


def test_diff_names_what_it_cannot_find(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"flaky": FLAKY})
    assert run(root)
    cases = {
        ("flaky@3",): "error: flaky@3: no such attempt (attempts with a commit: 1, 2)\n",
        ("ghost",): "error: 'ghost': not a job of p (jobs: flaky)\n",
    }
    for args, message in cases.items():
        result = cli("diff", "p", *args)
        assert (result.exit_code, result.stderr) == (2, message)
    result = cli("diff", "nope", "flaky")
    assert (result.exit_code, result.stderr) == (2, f"error: {root.pipelines_dir / 'nope'}: no such pipeline\n")


# -- missing outputs, lost attempts -----------------------------------------------------------

def test_a_missing_declared_output_fails_the_attempt_and_is_committed(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "echo hi > other.txt"\noutputs = ["report.xml", "*.txt"]\n'})
    assert not run(root)
    a = status(root, "a")
    assert (a.state, a.message) == (JobState.FAILED, "attempt 1 failed: missing declared output(s): report.xml")
    error = json.loads((ws(root, "a") / ".clowder" / "a" / "error.json").read_text())
    assert (error["reason"], error["exit_code"]) == ("missing declared output(s): report.xml", 0)
    assert trailers(ws(root, "a"))[0]["Clowder-State"] == "failed"
    assert [x.path for x in a.attempts[0].artifacts] == [".clowder/a/error.json", "other.txt"]


def test_leftovers_of_a_lost_attempt_are_committed_when_the_next_attempt_prepares(root: Root) -> None:
    repo = root.pipeline("p").workspace("a")
    me = workspace.Identity()
    first = workspace.prepare(workspace.AttemptRef(repo, "p", "a", 1), (), workspace.Start(me))
    (repo / "half-done.txt").write_text("partial\n")  # ...and the attempt vanished without a waiter
    second = workspace.prepare(workspace.AttemptRef(repo, "p", "a", 2), (), workspace.Start(me))
    lost = git(repo, "rev-parse", "attempt-1").strip()
    assert (first.base_commit, second.base_commit, second.recovered) == (None, lost, (1, lost))
    assert trailers(repo)[0] == {"Clowder-Pipeline": "p", "Clowder-Job": "a", "Clowder-Attempt": "1",
                                 "Clowder-State": "lost"}
    assert git(repo, "show", "attempt-1:half-done.txt") == "partial\n"
    done = workspace.finish(workspace.AttemptRef(repo, "p", "a", 2), workspace.End("succeeded", me))
    again = workspace.finish(workspace.AttemptRef(repo, "p", "a", 2),
                             workspace.End("succeeded", me))  # a restarted daemon looks again
    assert again == done and git(repo, "rev-list", "--count", "HEAD").strip() == "2"
    assert done.base_commit == lost and done.artifacts == ()


def test_a_cancelled_attempt_is_committed_as_cancelled(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"slow": 'command = "echo started > s.txt; sleep 30"\n'})
    with daemon(root):
        wait_for(lambda: (ws(root, "slow") / "s.txt").exists(), what="the job to start")
        cli("cancel", "p", "slow")
        wait_for(lambda: status(root, "slow").state is JobState.CANCELLED, what="the cancel")
    assert trailers(ws(root, "slow"))[0]["Clowder-State"] == "cancelled"
    assert git(ws(root, "slow"), "show", "attempt-1:s.txt") == "started\n"


# -- clowder path / artifacts -----------------------------------------------------------------

def test_path_prints_the_workspace_or_says_why_not(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\n', "b": 'command = "true"\nneeds = ["a"]\n'})
    assert cli("path", "p", "b").stderr == "error: p/b: no workspace yet (the job has not started)\n"
    assert run(root)
    result = cli("path", "p", "a")
    assert (result.exit_code, result.stdout) == (0, f"{ws(root, 'a')}\n")
    result = cli("path", "p", "zz")
    assert (result.exit_code, result.stderr) == (2, "error: 'zz': not a job of p (jobs: a, b)\n")
    result = cli("path", "p", "bb")
    assert (result.exit_code, result.stderr) == (2, "error: 'bb': not a job of p; did you mean b? (jobs: a, b)\n")


def test_artifacts_lists_finds_by_blob_and_prints_json(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", CHAIN)
    assert run(root)
    code = status(root, "dev").attempts[0].artifacts[1]
    result = cli("artifacts", "p")
    assert result.exit_code == 0
    assert [line.split() for line in result.output.splitlines()] == [
        ["JOB", "ATTEMPT", "KIND", "SIZE", "BLOB", "PATH"],
        ["dev", "1", "model_output", "13", status(root, "dev").attempts[0].artifacts[0].blob[:12],
         ".clowder/dev/output.json"],
        ["dev", "1", "file", "9", code.blob[:12], "code.txt"],
        ["plan", "1", "file", "9", code.blob[:12], "plan.md"],
        ["test", "1", "file", "7", status(root, "test").attempts[0].artifacts[0].blob[:12], "report.txt"],
    ]
    found = json.loads(cli("artifacts", "p", "--sha", code.blob[:7], "--json").output)
    assert [(x["job"], x["path"], x["blob"], x["commit"]) for x in found] == [
        ("dev", "code.txt", code.blob, status(root, "dev").attempts[0].commit),
        ("plan", "plan.md", code.blob, status(root, "plan").attempts[0].commit),
    ]
    assert cli("artifacts", "p", "test", "--sha", "0000").output == "no artifacts with blob 0000\n"
    result = cli("artifacts", "p", "--sha", "xyz")
    assert (result.exit_code, result.stderr) == (2, "error: --sha 'xyz': give at least 4 hex digits of a blob id\n")


# -- commits written in-process ---------------------------------------------------------------

def test_an_attempt_that_changes_nothing_is_committed_in_process_and_fsck_agrees(
        root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "true"\n', "b": 'command = "echo x > x.txt"\nneeds = ["a"]\n',
                        "c": 'command = "cat x.txt"\nneeds = ["b"]\n', "d": 'command = "true"\nneeds = ["c"]\n'})
    assert run(root)
    d = ws(root, "d")
    git(d, "fsck", "--strict", "--no-dangling")
    assert [t["Clowder-Job"] for t in trailers(d)] == ["d", "c", "b", "a"]
    assert git(d, "log", "-1", "--format=%an <%ae> %cn", "attempt-1").strip() == "Clowder <clowder@localhost> Clowder"
    trees = git(d, "rev-parse", "HEAD^{tree}", "HEAD~1^{tree}", "b/attempt-1^{tree}").split()
    assert trees[0] == trees[1] == trees[2]
    assert git(ws(root, "a"), "rev-parse", "HEAD^{tree}").strip() == workspace.EMPTY_TREE
    assert status(root, "d").attempts[0].artifacts == ()


@pytest.mark.parametrize("pause", ["", "sleep 0.05; "])
def test_a_change_that_keeps_the_size_is_still_committed(root: Root, make_pipeline: MakePipeline, pause: str) -> None:
    make_pipeline("p", {"a": 'command = "printf aaaa > f.txt"\n',
                        "b": f'command = "{pause}printf bbbb > f.txt"\nneeds = ["a"]\n'})
    assert run(root)
    assert git(ws(root, "b"), "show", "attempt-1:f.txt") == "bbbb"
    assert [x.path for x in status(root, "b").attempts[0].artifacts] == ["f.txt"]


def test_a_rewrite_hidden_by_a_coarse_clock_is_still_committed(root: Root) -> None:
    me, paths = workspace.Identity(), root.pipeline("p")
    up = paths.workspace("a")
    workspace.prepare(workspace.AttemptRef(up, "p", "a", 1), (), workspace.Start(me))
    (up / "f.txt").write_text("aaaa")
    a = workspace.finish(workspace.AttemptRef(up, "p", "a", 1), workspace.End("succeeded", me))
    down = paths.workspace("b")
    workspace.prepare(workspace.AttemptRef(down, "p", "b", 1),
                      (workspace.Upstream("a", up, a.commit),), workspace.Start(me))
    f, index = down / "f.txt", down / ".git" / "index"
    before = f.stat()
    os.utime(index, ns=(before.st_atime_ns, before.st_mtime_ns))  # checkout and index in one clock tick
    f.write_text("bbbb")  # same size and, with a coarse clock, the same timestamp
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    b = workspace.finish(workspace.AttemptRef(down, "p", "b", 1), workspace.End("succeeded", me))
    assert git(down, "show", f"{b.commit}:f.txt") == "bbbb"
    assert [x.path for x in b.artifacts] == ["f.txt"]


def fresh_tree(repo: Path) -> str:
    """The tree git itself makes of the worktree, from an index of its own (`git add -A`)."""
    env = {**os.environ, "GIT_INDEX_FILE": str(repo / ".git" / "test-index")}
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True)
    tree = subprocess.run(["git", "write-tree"], cwd=repo, env=env, check=True, capture_output=True, text=True)
    (repo / ".git" / "test-index").unlink()
    return tree.stdout.strip()


WRITER = {
    "a": ('command = "mkdir -p src/lib empty/deeper docs && echo one > src/lib/one.py && echo two > src/two.py'
          ' && printf \'#!/bin/sh\\necho hi\\n\' > run.sh && chmod +x run.sh && ln -s src/two.py link'
          ' && echo gone > docs/old.md && echo a-b > a-b"\n'),
    "b": ('command = "echo changed > src/two.py && rm docs/old.md && echo new > src/lib/new.py && chmod -x run.sh'
          ' && ./link 2>/dev/null; test -L link && test -f src/lib/one.py"\nneeds = ["a"]\n'),
}


def test_files_a_job_writes_are_committed_as_git_commits_them_and_git_status_is_clean(
        root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", WRITER)
    assert run(root)
    a, b = ws(root, "a"), ws(root, "b")
    for repo in (a, b):
        assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""  # the index matches the files
        assert git(repo, "rev-parse", "HEAD^{tree}").strip() == fresh_tree(repo)
        git(repo, "fsck", "--strict", "--no-dangling")
        # Written in-process: git's own commit would have left a reflog entry.
        assert not (repo / ".git" / "logs" / "HEAD").exists()
    assert git(a, "ls-tree", "-r", "--format=%(objectmode) %(path)", "HEAD").splitlines() == [
        "100644 a-b", "100644 docs/old.md", "120000 link", "100755 run.sh", "100644 src/lib/one.py",
        "100644 src/two.py"]
    assert git(b, "diff", "--name-status", "a/attempt-1", "attempt-1").splitlines() == [
        "D\tdocs/old.md", "M\trun.sh", "A\tsrc/lib/new.py", "M\tsrc/two.py"]
    assert [x.path for x in status(root, "b").attempts[0].artifacts] == ["run.sh", "src/lib/new.py", "src/two.py"]
    assert os.readlink(b / "link") == "src/two.py" and (a / "run.sh").stat().st_mode & 0o111
    (b / "src" / "two.py").write_text("by hand\n")  # git goes on from the index Clowder wrote
    git(b, "-c", "user.name=me", "-c", "user.email=me@x", "commit", "-q", "-am", "by hand")
    assert git(b, "show", "--name-only", "--format=", "HEAD").split() == ["src/two.py"]
    assert git(b, "status", "--porcelain") == ""


def test_a_users_global_ignore_rules_and_line_endings_still_apply(root: Root, make_pipeline: MakePipeline) -> None:
    home = Path(os.environ["HOME"])
    (home / "ignore").write_text("*.log\n")
    Path(os.environ["GIT_CONFIG_GLOBAL"]).write_text(f"[core]\n\texcludesFile = {home / 'ignore'}\n\tautocrlf = true\n")
    make_pipeline("p", {"a": 'command = "echo x > build.log && printf \'x\\\\r\\\\n\' > crlf.txt"\n',
                        "b": 'command = "true"\nneeds = ["a"]\n'})
    assert run(root)
    assert git(ws(root, "a"), "ls-tree", "-r", "--name-only", "HEAD").split() == ["crlf.txt"]
    assert git(ws(root, "a"), "cat-file", "-p", "HEAD:crlf.txt") == "x\n"  # stored as git stores it
    assert (ws(root, "b") / "crlf.txt").read_bytes() == b"x\r\n"  # and checked out as git checks it out


def test_attributes_in_the_tree_still_apply_to_a_downstreams_checkout(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "echo \'*.txt eol=crlf\' > .gitattributes && echo x > f.txt"\n',
                        "b": 'command = "true"\nneeds = ["a"]\n'})
    assert run(root)
    assert (ws(root, "b") / "f.txt").read_bytes() == b"x\r\n"
    assert git(ws(root, "b"), "status", "--porcelain") == ""


# -- tags of fix-ups --------------------------------------------------------------------------

def test_a_fixups_attempt_tags_appear_in_its_spawner_and_downstream(root: Root, make_pipeline: MakePipeline,
                                                                     cli: Invoke) -> None:
    make_pipeline("p", {
        "dev": 'command = "if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; then touch fixed.txt; fi"\n',
        "test": ('command = "if [ -f fixed.txt ]; then echo ok; else clowder spawn dev --reason broken; exit 1; fi"\n'
                 'needs = ["dev"]\n'),
        "ship": 'command = "echo shipped > ship.txt"\nneeds = ["test"]\n',
    })
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    fixup_commit = status(root, "dev.r1").attempts[0].commit
    for job in ("test", "ship"):
        tags = git(ws(root, job), "tag", "--list").split()
        assert "dev.r1/attempt-1" in tags, (job, tags)
        assert git(ws(root, job), "rev-parse", "dev.r1/attempt-1^{commit}").strip() == fixup_commit
        decorated = git(ws(root, job), "log", "--decorate=full", "--format=%H %d")
        assert f"{fixup_commit}  (tag: refs/tags/dev.r1/attempt-1)" in decorated, decorated
    # The spawner's repository names its own attempts once, not also as seen through its fix-up.
    assert sorted(git(ws(root, "test"), "tag", "--list").split()) == [
        "attempt-1", "attempt-2", "dev.r1/attempt-1", "dev/attempt-1"]
    assert sorted(git(ws(root, "ship"), "tag", "--list").split()) == [
        "attempt-1", "dev.r1/attempt-1", "dev/attempt-1", "test/attempt-1", "test/attempt-2"]


# -- workspaces are built aside and renamed into place ----------------------------------------

def test_a_workspace_half_built_in_place_by_an_older_version_is_rebuilt(root: Root, make_pipeline: MakePipeline,
                                                                        cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "echo a > a.txt"\n', "b": 'command = "cat a.txt"\nneeds = ["a"]\n'})
    half = ws(root, "b") / ".git" / "objects"
    half.mkdir(parents=True)  # what a crash or a full disk left: a .git without HEAD
    (half.parent / "config").write_text("[core]\n")
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    assert status(root, "b").state is JobState.SUCCEEDED
    assert "a.txt" in git(ws(root, "b"), "ls-files").split()


def test_files_where_a_workspace_belongs_are_moved_aside_not_lost(root: Root, make_pipeline: MakePipeline,
                                                                  cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "echo a > a.txt"\n'})
    write(ws(root, "a") / "notes.txt", "mine\n")
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    assert (root.pipeline("p").workspaces_dir / ".a.aside-1" / "notes.txt").read_text() == "mine\n"
    assert git(ws(root, "a"), "ls-files").split() == ["a.txt"]


def test_an_attempt_that_ends_before_its_workspace_is_whole_still_commits(root: Root) -> None:
    path = root.pipeline("p").workspace("a")
    (path / ".git" / "objects").mkdir(parents=True)  # a workspace half made when the disk filled up
    done = workspace.finish(workspace.AttemptRef(path, "p", "a", 1), workspace.End(
        "failed", workspace.Identity(), error=workspace.ErrorContext("could not start")))
    assert git(path, "rev-parse", "attempt-1").strip() == done.commit
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())


# -- a fix-up that changed nothing ------------------------------------------------------------

def test_a_fixup_that_changes_nothing_is_recorded_as_such(root: Root, make_pipeline: MakePipeline,
                                                         cli: Invoke) -> None:
    make_pipeline("p", {
        "dev": 'command = "echo v1 > code.txt"\n',
        "test": ('command = "if [ $CLOWDER_ATTEMPT = 1 ]; then clowder spawn dev --reason broken; exit 1; fi"\n'
                 'needs = ["dev"]\nmax_regressions = 2\n'),
    })
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    fixup = status(root, "dev.r1")
    assert (fixup.state, fixup.message, fixup.attempts[0].message) == (JobState.SUCCEEDED, "no changes", "no changes")
    assert status(root, "test").attempts[0].message == "spawned dev.r1; dev.r1: no changes"
    assert status(root, "dev").message == ""  # a job that is no fix-up is not judged by what it changed
    shown = cli("status", "p")
    assert "no changes" in shown.output, shown.output


def test_a_workspace_made_before_the_private_attempt_refs_is_not_committed_twice(
        root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"dev": 'command = "echo x > x.txt"\n'})
    assert run(root)
    repo = ws(root, "dev")
    done = status(root, "dev").attempts[0].commit
    git(repo, "update-ref", "-d", "refs/clowder/attempts/1")  # as older versions left it: the tag alone
    again = workspace.finish(workspace.AttemptRef(repo, "p", "dev", 1),
                             workspace.End("succeeded", workspace.Identity()))
    assert again.commit == done and git(repo, "rev-parse", "HEAD").strip() == done
    git(repo, "tag", "-f", "attempt-2", done)  # a tag a job made is no attempt of Clowder's
    git(repo, "update-ref", "refs/clowder/attempts/1", done)
    third = workspace.finish(workspace.AttemptRef(repo, "p", "dev", 2),
                             workspace.End("succeeded", workspace.Identity()))
    assert third.commit != done and git(repo, "rev-parse", "attempt-2", "refs/clowder/attempts/2").split() == [
        third.commit, third.commit]


def test_the_spawner_is_told_which_of_its_fixups_changed_nothing(root: Root, make_pipeline: MakePipeline,
                                                                  cli: Invoke) -> None:
    make_pipeline("p", {
        "dev": 'command = "echo v1 > code.txt"\n',
        "test": ('agent = "tester"\nneeds = ["dev"]\nmax_regressions = 2\n'
                 '[[script]]\nspawn = "dev"\nreason = "broken"\nif = { attempt = 1 }\n'
                 '[[script]]\nexit = 1\nif = { attempt = 1 }\n'),
    })
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    prompt = (root.pipeline("p").workspace("test") / ".clowder" / "test" / "prompt.md").read_text()
    assert "# Your fix-ups" in prompt and "- `dev.r1`: succeeded (no changes)" in prompt, prompt


# -- independence: a downstream's files are copied from its upstream's checkout -------------------

FAN_OUT = {
    "base": ('command = "printf \'*.log\\\\n\' > .gitignore; echo shared > shared.txt; echo built > build.log; '
             'printf \'#!/bin/sh\\\\necho hi\\\\n\' > run.sh; chmod +x run.sh; ln -s shared.txt link"\n'),
    "left": 'command = "echo left >> shared.txt; echo l > left.txt"\nneeds = ["base"]\n',
    "right": 'command = "echo right >> shared.txt; echo r > right.txt"\nneeds = ["base"]\n',
}


@pytest.mark.parametrize("copy", ["always", "auto"])
def test_what_a_job_writes_never_appears_in_another_jobs_files(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                                 monkeypatch: pytest.MonkeyPatch, copy: str) -> None:
    monkeypatch.setenv("CLOWDER_WORKSPACE_COPY", copy)  # always: copied even where reflinks do not work
    make_pipeline("p", FAN_OUT)
    assert cli("run", "p").exit_code == 0
    base, left, right = ws(root, "base"), ws(root, "left"), ws(root, "right")
    assert (base / "shared.txt").read_text() == "shared\n"
    assert (left / "shared.txt").read_text() == "shared\nleft\n"
    assert (right / "shared.txt").read_text() == "shared\nright\n"
    assert not (left / "right.txt").exists() and not (right / "left.txt").exists()
    assert not (base / "left.txt").exists() and not (base / "right.txt").exists()
    for job in (left, right):
        assert not (job / "build.log").exists()  # ignored, never committed: not the downstream's
        assert os.access(job / "run.sh", os.X_OK) and os.readlink(job / "link") == "shared.txt"
        for name in ("run.sh", ".gitignore"):  # copies, never hard links to the upstream's files
            assert (job / name).stat().st_nlink == 1 and (job / name).stat().st_ino != (base / name).stat().st_ino
        # git finds the copy clean by its stat data alone (diff-files never refreshes the index)
        assert git(job, "diff-files", "--name-only") == ""
        assert git(job, "status", "--porcelain") == ""


def test_a_downstream_never_starts_from_an_upstream_file_changed_after_its_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOWDER_WORKSPACE_COPY", "always")
    me = workspace.Identity()
    up = tmp_path / "workspaces" / "up"
    workspace.prepare(workspace.AttemptRef(up, "p", "up", 1), (), workspace.Start(me))
    (up / "a.txt").write_text("committed\n")
    (up / "b.txt").write_text("also committed\n")
    (up / "0.txt").write_text("deleted after\n")
    done = workspace.finish(workspace.AttemptRef(up, "p", "up", 1), workspace.End("succeeded", me))
    (up / "0.txt").unlink()
    # Someone edits the upstream's checkout, same size and mtime: only its ctime tells.
    st = (up / "a.txt").stat()
    (up / "a.txt").write_text("EDITED!!!\n")
    os.utime(up / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    down = tmp_path / "workspaces" / "down"
    workspace.prepare(workspace.AttemptRef(down, "p", "down", 1),
                      (workspace.Upstream("up", up, done.commit),), workspace.Start(me))
    assert (down / "a.txt").read_text() == "committed\n"
    assert (down / "b.txt").read_text() == "also committed\n"
    assert (down / "0.txt").read_text() == "deleted after\n"
    assert git(down, "status", "--porcelain") == ""


def test_a_first_job_copies_only_the_sources_committed_files_and_writes_nothing_there(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOWDER_WORKSPACE_COPY", "always")
    src = tmp_path / "src"
    src.mkdir()
    git(src, "init", "-q")
    write(src / "a.txt", "committed a\n")
    write(src / "b.txt", "committed b\n")
    git(src, "add", "-A")
    git(src, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", "one")
    st = (src / "a.txt").stat()
    (src / "a.txt").write_text("uncommitted\n")  # same size, same mtime: only ctime tells
    os.utime(src / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    write(src / "untracked.txt", "not mine\n")
    index = (src / ".git" / "index").read_bytes()
    make_pipeline("p", {"dev": 'command = "cat a.txt b.txt > out.txt"\n'},
                  spec=f'prompt = "x"\nsource = {{ repo = "{src}" }}\n')
    assert cli("run", "p").exit_code == 0
    assert (ws(root, "dev") / "out.txt").read_text() == "committed a\ncommitted b\n"
    assert not (ws(root, "dev") / "untracked.txt").exists()
    assert (src / ".git" / "index").read_bytes() == index
    assert (src / "a.txt").read_text() == "uncommitted\n"


def test_a_url_source_is_fetched_into_one_cache_per_root_and_every_pipeline_clones_it(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q")
    write(origin / "v.txt", "one\n")
    git(origin, "add", "-A")
    git(origin, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", "one")
    spec = f'prompt = "x"\nsource = {{ repo = "file://{origin}" }}\n'
    jobs = {"a": 'command = "cat v.txt > seen.txt"\n', "b": 'command = "cat v.txt > seen.txt"\n'}
    make_pipeline("p1", jobs, spec=spec)
    assert cli("run", "p1").exit_code == 0
    caches = list((root.path / ".clowder" / "sources").glob("*.git"))
    assert len(caches) == 1
    write(origin / "v.txt", "two\n")
    git(origin, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qam", "two")
    make_pipeline("p2", jobs, spec=spec)
    assert cli("run", "p2").exit_code == 0  # a new pipeline starts from the URL's newest commit
    assert list((root.path / ".clowder" / "sources").glob("*.git")) == caches
    for job in jobs:
        assert (ws(root, job, "p1") / "seen.txt").read_text() == "one\n"
        assert (ws(root, job, "p2") / "seen.txt").read_text() == "two\n"
        assert git(ws(root, job, "p2"), "remote") == ""  # a job's `git push` has nowhere to go
    # The objects are the cache's (hard-linked), not a second download.
    pack = next((caches[0] / "objects" / "pack").glob("*.pack"))
    linked = [p for p in (ws(root, "a", "p1") / ".git" / "objects" / "pack").glob("*.pack")]
    assert linked and linked[0].stat().st_ino == pack.stat().st_ino


# -- a file system that shares data (reflinks) ------------------------------------------------

def _mount_image(image: Path, mount: Path, mkfs: list[str]) -> str:
    """Make a file system on `image` and loop-mount it at `mount`; '' if done, else why not."""
    made = subprocess.run([*mkfs, str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        return f"{mkfs[0]}: {made.stderr.strip()[-200:]}"
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
    return "" if mounted.returncode == 0 else f"mount -o loop: {mounted.stderr.strip()[-200:]}"


@pytest.fixture(scope="module")
def reflink_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory on XFS with reflinks (else btrfs), made on a sparse loop image for these tests:
    the file systems where a workspace's copy shares its upstream's blocks. Skips, saying why,
    where that cannot be made (not root, no mkfs.xfs/mkfs.btrfs, no loop devices)."""
    if os.geteuid() != 0:
        pytest.skip("a loop mount needs root")
    top = tmp_path_factory.mktemp("reflink")
    image, mount = top / "fs.img", top / "mnt"
    mount.mkdir()
    why = []
    for mkfs in (["mkfs.xfs", "-q", "-m", "reflink=1"], ["mkfs.btrfs", "-q"]):
        if shutil.which(mkfs[0]) is None:
            why.append(f"no {mkfs[0]}")
            continue
        with image.open("wb") as f:
            f.truncate(512 << 20)  # sparse: costs only what is written
        why.append(_mount_image(image, mount, mkfs))
        if not why[-1]:
            break
    else:
        pytest.skip("no reflink file system: " + "; ".join(why))
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)  # a loop mount detaches its device itself


def physical_extents(path: Path) -> list[str]:
    """The file's extents as `filefrag -v` gives them (physical offsets, flags), written out first
    (-s: a new file's blocks are not allocated yet): equal for two files that share blocks."""
    out = subprocess.run(["filefrag", "-s", "-v", str(path)], check=True, capture_output=True, text=True).stdout
    return [" ".join(line.split(":")[2].split()) + " " + line.split(":")[-1].strip()
            for line in out.splitlines() if line.strip()[:1].isdigit()]


REFLINK_FAN_OUT = {
    "base": 'command = "head -c 1048576 /dev/urandom > data.bin; echo shared > shared.txt"\n',
    "left": ('command = "printf LEFT | dd of=data.bin conv=notrunc status=none; echo left >> shared.txt"\n'
             'needs = ["base"]\n'),
    "right": 'command = "echo right >> shared.txt"\nneeds = ["base"]\n',
}


def test_on_a_reflink_file_system_workspaces_share_blocks_and_stay_independent(
        reflink_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOWDER_WORKSPACE_COPY", raising=False)  # auto: copies because FICLONE works here
    root = init_root(reflink_dir / "fan-out")
    for job, text in REFLINK_FAN_OUT.items():
        write(root.pipelines_dir / "p" / "jobs" / f"{job}.toml", text)
    write(root.pipelines_dir / "p" / "pipeline.toml", 'prompt = "x"\n')
    assert run(root)
    base, left, right = ws(root, "base"), ws(root, "left"), ws(root, "right")
    # right never wrote data.bin: its copy is the upstream's blocks (FICLONE), not a second megabyte
    shared = physical_extents(base / "data.bin")
    assert shared and all("shared" in e for e in shared), shared
    assert physical_extents(right / "data.bin") == shared
    assert (right / "data.bin").stat().st_ino != (base / "data.bin").stat().st_ino
    # left wrote into its copy in place: its own block, nobody else's
    data = (base / "data.bin").read_bytes()
    assert (left / "data.bin").read_bytes() == b"LEFT" + data[4:] != data
    assert (right / "data.bin").read_bytes() == data
    assert (base / "shared.txt").read_text() == "shared\n"
    assert (left / "shared.txt").read_text() == "shared\nleft\n"
    assert (right / "shared.txt").read_text() == "shared\nright\n"
    for job in (left, right):
        assert git(job, "status", "--porcelain") == ""
    # and a write in one workspace after the run shows in no other
    (right / "data.bin").write_bytes(b"right's own\n")
    assert (base / "data.bin").read_bytes() == data
    assert (left / "data.bin").read_bytes() == b"LEFT" + data[4:]


# -- a chain hands its files on to its only downstream ----------------------------------------

HAND_ON = {
    "base": ('command = "printf \'*.log\\\\n\' > .gitignore; mkdir -p src; for i in 1 2 3; do echo $i > src/f$i.txt; '
             'done; echo built > build.log; stat -c %i src/f1.txt > inode.txt"\n'),
    "down": 'command = "cat src/f1.txt > down.txt"\nneeds = ["base"]\n',
}


@pytest.fixture
def hand_on_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand on however few files the tree has (auto: 1,000 files or more)."""
    monkeypatch.setenv("CLOWDER_WORKSPACE_HAND_ON", "always")


def moved(down: Path) -> bool:
    """Whether the downstream's files are its upstream's, moved (the inode base wrote down)."""
    return int((down / "inode.txt").read_text()) == (down / "src" / "f1.txt").stat().st_ino


def test_a_chains_only_downstream_takes_its_upstreams_files_and_clowder_path_puts_them_back(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path, hand_on_always: None) -> None:
    make_pipeline("p", HAND_ON)
    assert cli("run", "p").exit_code == 0
    base, down = ws(root, "base"), ws(root, "down")
    assert moved(down)  # not written again: what makes a 10,000-file chain's next workspace ~0.1 s
    assert (down / "down.txt").read_text() == "1\n"
    assert not (down / "build.log").exists()  # ignored, never committed: not the downstream's
    assert git(down, "status", "--porcelain", "--ignored") == ""
    assert sorted(os.listdir(base)) == [".git", "build.log"]  # it stays the upstream's
    # What reads commits needs no files: diff, artifacts, export
    assert "+1" in cli("diff", "p", "base", "down").output
    assert "src/f2.txt" in cli("artifacts", "p", "base").output
    assert cli("export", "p", "base", "--patch", str(tmp_path / "base.patch")).exit_code == 0
    assert "src/f3.txt" in (tmp_path / "base.patch").read_text()
    assert "+2" in diffs.diff_text(root, "p", "base", None)  # the web page's diff
    assert cli("reindex").exit_code == 0 and cli("fsck").exit_code == 0
    assert sorted(os.listdir(base)) == [".git", "build.log"]  # none of those needed its files
    # `clowder path` checks them out again, exactly the job's commit
    assert cli("path", "p", "base").output.strip() == str(base)
    assert (base / "src" / "f2.txt").read_text() == "2\n" and not (base / "down.txt").exists()
    assert git(base, "status", "--porcelain") == ""
    (down / "src" / "f2.txt").write_text("down's own\n")
    assert (base / "src" / "f2.txt").read_text() == "2\n"


def test_an_upstream_with_two_downstreams_hands_nothing_on_and_a_job_added_later_still_gets_its_files(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, hand_on_always: None) -> None:
    make_pipeline("p", {**HAND_ON, "other": 'command = "cat src/f2.txt > other.txt"\nneeds = ["base"]\n'})
    assert cli("run", "p").exit_code == 0
    base, down, other = ws(root, "base"), ws(root, "down"), ws(root, "other")
    assert (base / "src" / "f1.txt").read_text() == "1\n"  # still there: two jobs start from it
    assert not moved(down) and not moved(other)
    (other / "src" / "f1.txt").write_text("other's own\n")
    assert (down / "src" / "f1.txt").read_text() == "1\n" == (base / "src" / "f1.txt").read_text()
    # a chain hands on; a job added afterwards starts from the commit all the same
    make_pipeline("q", HAND_ON)
    assert cli("run", "q").exit_code == 0
    assert moved(ws(root, "down", "q"))
    write(root.pipeline("q").dir / "jobs" / "late.toml", 'command = "cat src/f3.txt > late.txt"\nneeds = ["base"]\n')
    assert cli("run", "q").exit_code == 0
    late = ws(root, "late", "q")
    assert (late / "late.txt").read_text() == "3\n" and not (late / "down.txt").exists()
    assert git(late, "status", "--porcelain") == ""
    assert (ws(root, "down", "q") / "down.txt").read_text() == "1\n"


def test_a_retried_downstream_and_a_retried_upstream_after_a_hand_on(root: Root, make_pipeline: MakePipeline,
                                                                      cli: Invoke, hand_on_always: None) -> None:
    make_pipeline("p", {
        "base": ('command = "mkdir -p src; echo 1 > src/f1.txt; '
                 'if [ -f once ]; then echo fixed > fixed.txt; else echo 1 > once; exit 1; fi"\n'),
        "down": ('command = "if [ $CLOWDER_ATTEMPT = 1 ]; then echo broken > src/f1.txt; exit 1; fi; '
                 'ls > seen.txt"\nneeds = [{ job = "base", when = "always" }]\nretries = 1\n'),
    })
    assert cli("run", "p").exit_code == 1  # base failed; down ran after it, failed once, then succeeded
    base, down = ws(root, "base"), ws(root, "down")
    assert status(root, "down").state is JobState.SUCCEEDED and status(root, "down").attempt == 2
    assert (down / "seen.txt").read_text().split() == ["once", "seen.txt", "src"]
    assert sorted(os.listdir(base)) == [".clowder", ".git"]  # its run metadata stays where it ran
    assert json.loads((base / ".clowder" / "base" / "error.json").read_text())["exit_code"] == 1
    # The upstream's next attempt starts from its own last commit, files and all
    assert cli("retry", "p", "base").exit_code == 0
    assert cli("run", "p").exit_code == 0
    assert status(root, "base").state is JobState.SUCCEEDED and status(root, "base").attempt == 2
    assert (base / "fixed.txt").read_text() == "fixed\n" and (base / "src" / "f1.txt").read_text() == "1\n"
    assert git(base, "status", "--porcelain") == ""
    assert (down / "src" / "f1.txt").read_text() == "broken\n"  # its own attempt 1's change, committed
    assert git(down, "status", "--porcelain") == ""


def test_a_regression_loop_across_handed_on_workspaces(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                       hand_on_always: None) -> None:
    make_pipeline("p", {
        "dev": ('command = "echo v1 > app.txt; if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; '
                'then echo fixed > fixed.txt; fi"\n'),
        "test": ('command = "if [ -f fixed.txt ]; then echo ok; else clowder spawn dev --reason broken; exit 1; fi"\n'
                 'needs = ["dev"]\n'),
        "ship": 'command = "cat app.txt fixed.txt > ship.txt"\nneeds = ["test"]\n',
    })
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    assert (ws(root, "ship") / "ship.txt").read_text() == "v1\nfixed\n"
    assert "fixed.txt" in cli("diff", "p", "dev", "dev.r1", "--stat").output
    for job in ("dev", "test", "dev.r1"):
        cli("path", "p", job)
        assert git(ws(root, job), "status", "--porcelain") == "", job
    assert (ws(root, "test") / "fixed.txt").exists() and not (ws(root, "dev") / "fixed.txt").exists()


def test_a_daemon_killed_while_files_are_handed_on_loses_nothing(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path, hand_on_always: None) -> None:
    make_pipeline("p", HAND_ON)
    # git, as the daemon finds it on PATH, stops for good once base's files are in down's build directory
    moving, shim = tmp_path / "moving", tmp_path / "bin" / "git"
    write(shim, f"""\
        #!/bin/sh
        case "$(pwd -P)" in */.down.tmp) case " $* " in *" status "*) touch {moving}; sleep 120;; esac;; esac
        exec {shutil.which("git")} "$@"
        """)
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"}
    daemon = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(moving.exists, timeout=60, what="base's files on their way to down")
        assert os.listdir(ws(root, "base")) == [".git"]
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)  # the daemon and its git
        daemon.wait()
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    base, down = ws(root, "base"), ws(root, "down")
    assert (down / "down.txt").read_text() == "1\n" and (down / "src" / "f3.txt").read_text() == "3\n"
    assert git(down, "status", "--porcelain") == ""
    assert not (down.parent / ".down.tmp").exists()
    assert cli("path", "p", "base").exit_code == 0
    assert (base / "src" / "f3.txt").read_text() == "3\n" and git(base, "status", "--porcelain") == ""


def test_a_handed_on_tree_is_exactly_the_upstreams_commit(tmp_path: Path, hand_on_always: None) -> None:
    me = workspace.Identity()
    up = tmp_path / "workspaces" / "up"
    workspace.prepare(workspace.AttemptRef(up, "p", "up", 1), (), workspace.Start(me))
    write(up / ".gitignore", "*.log\n")
    for name in ("a.txt", "b.txt", "0.txt"):
        write(up / "d" / name, f"committed {name}\n")
    done = workspace.finish(workspace.AttemptRef(up, "p", "up", 1), workspace.End("succeeded", me))
    # After its commit: a file deleted, one edited keeping its size and mtime (only ctime tells),
    # one ignored and one untracked file left behind
    (up / "d" / "0.txt").unlink()
    st = (up / "d" / "a.txt").stat()
    (up / "d" / "a.txt").write_text("EDITED!!!!!!!!\n")
    os.utime(up / "d" / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    write(up / "build.log", "ignored\n")
    write(up / "d" / "new.txt", "untracked\n")
    latin1 = os.fsdecode(b"caf\xe9.bin")  # a name that is not UTF-8
    write(up / "d" / latin1, "untracked too\n")
    down = tmp_path / "workspaces" / "down"
    workspace.prepare(workspace.AttemptRef(down, "p", "down", 1),
                      (workspace.Upstream("up", up, done.commit, True),), workspace.Start(me))
    assert sorted(os.listdir(up)) == [".git", "build.log", "d"]  # handed on, but for what it left uncommitted
    assert sorted(os.listdir(up / "d")) == sorted([latin1, "new.txt"])
    assert sorted(os.listdir(down / "d")) == ["0.txt", "a.txt", "b.txt"]
    assert (down / "d" / "a.txt").read_text() == "committed a.txt\n"
    assert (down / "d" / "0.txt").read_text() == "committed 0.txt\n"
    assert not (down / "build.log").exists()
    assert git(down, "status", "--porcelain", "--ignored") == ""
    restore(workspace.Repo(up))  # what `clowder path` and the job's next attempt do
    assert (up / "d" / "a.txt").read_text() == "committed a.txt\n"
    assert git(up, "diff", "--name-only", "HEAD") == ""
    assert (up / "d" / latin1).read_text() == "untracked too\n"
    # what the upstream left uncommitted stayed its own
    assert (up / "build.log").read_text() == "ignored\n" and (up / "d" / "new.txt").read_text() == "untracked\n"


def test_by_default_only_a_tree_of_a_thousand_files_or_more_is_handed_on(root: Root, make_pipeline: MakePipeline,
                                                                          cli: Invoke) -> None:
    big = 'command = "mkdir many; cd many; seq 1000 | while read i; do echo $i > f$i; done; cd ..; ' \
          'mkdir -p src; echo 1 > src/f1.txt; stat -c %i src/f1.txt > inode.txt"\n'
    make_pipeline("p", {"base": big, "down": HAND_ON["down"]})
    make_pipeline("q", HAND_ON)  # 5 files
    assert cli("run", "p").exit_code == 0 and cli("run", "q").exit_code == 0
    assert moved(ws(root, "down", "p")) and len(os.listdir(ws(root, "down", "p") / "many")) == 1000
    assert not moved(ws(root, "down", "q")) and (ws(root, "base", "q") / "src" / "f1.txt").read_text() == "1\n"
