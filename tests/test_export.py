"""`clowder export`: a pipeline's work goes back to the user's repository as a branch or a patch,
without Clowder's metadata and the excluded files, and the user's checkout is never touched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from clowder.state import read_job_status
from clowder.tree import Root
from clowder.views import reader
from tests.conftest import Invoke, MakePipeline, write

USER = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.com"}

EXCLUDED_SPEC = '''prompt = "do it"
source = { repo = "../user" }
export = { exclude = ["*.xml", "reports/"] }
'''
DEV = ('command = "echo one > out.txt; echo \'<r/>\' > report.xml; mkdir -p reports; echo r > reports/r.txt; '
       'echo theirs > data.xml"\n')
TEST = 'command = "echo two >> out.txt"\nneeds = ["dev"]\n'


def git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=_env())
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _env() -> dict[str, str]:
    return {**os.environ, **USER}


def user_repo(path: Path) -> Path:
    """The user's repository: two commits on `main`, a file of theirs matching an exclude pattern."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    write(path / "README.md", "my project\n")
    write(path / "data.xml", "<mine/>\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "initial")
    write(path / "lib.txt", "lib\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "add lib")
    return path


def dirty(repo: Path) -> None:
    """Uncommitted work in the user's checkout: a staged change, an unstaged one, an untracked file."""
    write(repo / "lib.txt", "lib, staged edit\n")
    git(repo, "add", "lib.txt")
    write(repo / "README.md", "my project, unsaved edit\n")
    write(repo / "notes.txt", "untracked\n")


def snapshot(repo: Path) -> tuple[str, ...]:
    """Everything of the checkout export must leave alone."""
    files = tuple(p.read_text() for p in [*sorted(repo.glob("*.txt")), repo / "README.md", repo / "data.xml"])
    return (git(repo, "status", "--porcelain"), git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD"),
            git(repo, "ls-files", "--stage"), git(repo, "diff", "--cached"), git(repo, "diff"), *files)


def subjects(repo: Path, ref: str) -> list[str]:
    return git(repo, "log", "--format=%s", ref).splitlines()


def files(repo: Path, ref: str) -> list[str]:
    return git(repo, "ls-tree", "-r", "--name-only", ref).split()


@pytest.fixture
def ran(root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> Path:
    """The user's repository, and a pipeline dev -> test started from it that has run."""
    repo = user_repo(tmp_path / "user")
    make_pipeline("p", {"dev": DEV, "test": TEST}, spec=EXCLUDED_SPEC)
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    dirty(repo)
    return repo


def test_export_round_trip_a_branch_with_the_work_and_nothing_else(root: Root, ran: Path, cli: Invoke) -> None:
    hook = ran / ".git" / "hooks" / "reference-transaction"
    hook.write_text(f"#!/bin/sh\ntouch {ran.parent / 'hook-ran'}\n")
    hook.chmod(0o755)
    before = snapshot(ran)
    head = git(ran, "rev-parse", "HEAD").strip()
    result = cli("export", "p", "--branch", "clowder/p")
    assert result.exit_code == 0, result.output
    assert f"exported p/test to branch clowder/p of {ran}: 2 commit(s) on {head[:12]}" in result.output
    assert subjects(ran, "clowder/p") == ["p/test: attempt 1 succeeded", "p/dev: attempt 1 succeeded",
                                          "add lib", "initial"]
    assert git(ran, "rev-parse", "clowder/p~2").strip() == head  # on top of what the pipeline started from
    # The work is there; .clowder/ and the excluded files are not; the user's own data.xml is kept as it was.
    assert files(ran, "clowder/p") == ["README.md", "data.xml", "lib.txt", "out.txt"]
    assert git(ran, "show", "clowder/p:out.txt") == "one\ntwo\n"
    assert git(ran, "show", "clowder/p:data.xml") == "<mine/>\n"
    assert git(ran, "show", "--stat", "--format=", "clowder/p~1").split()[0] == "out.txt"
    body = git(ran, "log", "-1", "--format=%B", "clowder/p")
    assert "Clowder-Pipeline: p\nClowder-Job: test\nClowder-Attempt: 1\nClowder-State: succeeded\n" in body
    # Excluded files' objects never enter the user's repository.
    dev = read_job_status(root.pipeline("p").job_status_file("dev"), "dev")
    blob = next(a.blob for a in dev.attempts[0].artifacts if a.path == "report.xml")
    assert subprocess.run(["git", "-C", str(ran), "cat-file", "-e", blob]).returncode != 0
    # The checkout, its branch, HEAD, index and uncommitted work are untouched.
    assert snapshot(ran) == before
    assert not (ran / "out.txt").exists()
    assert not (ran.parent / "hook-ran").exists()  # the user's hooks never run
    assert cli("export", "p", "--branch", "again").exit_code == 0  # the same export, the same commits
    assert git(ran, "rev-parse", "again") == git(ran, "rev-parse", "clowder/p")


def test_export_refuses_an_existing_branch_without_force_and_a_checked_out_one_always(
    ran: Path, cli: Invoke
) -> None:
    git(ran, "branch", "taken", "HEAD~1")
    result = cli("export", "p", "--branch", "taken")
    assert result.exit_code == 2
    assert f"error: branch taken already exists in {ran} (at " in result.output
    assert "--force replaces it" in result.output
    assert subjects(ran, "taken") == ["initial"]
    assert cli("export", "p", "--branch", "taken", "--force").exit_code == 0
    assert subjects(ran, "taken")[0] == "p/test: attempt 1 succeeded"
    before = snapshot(ran)
    result = cli("export", "p", "--branch", "main", "--force")
    assert result.exit_code == 2
    assert f"error: main is checked out in {ran}: export never touches a checked-out branch" in result.output
    assert snapshot(ran) == before
    assert cli("export", "p", "--branch", "-x").exit_code == 2


def test_export_squash_gives_one_commit_with_the_same_files(ran: Path, cli: Invoke) -> None:
    assert cli("export", "p", "--branch", "each").exit_code == 0
    result = cli("export", "p", "--branch", "one", "--squash")
    assert result.exit_code == 0, result.output
    assert "1 commit(s)" in result.output
    assert subjects(ran, "one") == ["p/test: the work of 2 commit(s)", "add lib", "initial"]
    assert git(ran, "rev-parse", "one^{tree}") == git(ran, "rev-parse", "each^{tree}")
    body = git(ran, "log", "-1", "--format=%B", "one")
    assert "- dev@1 succeeded\n- test@1 succeeded\n" in body
    assert "Clowder-Job: test\nClowder-Attempt: 1\nClowder-Attempts: dev@1, test@1\n" in body


def test_export_patch_applies_with_git_am_in_a_fresh_clone(ran: Path, cli: Invoke, tmp_path: Path) -> None:
    assert cli("export", "p", "--branch", "ref").exit_code == 0
    patch = tmp_path / "work.patch"
    result = cli("export", "p", "--patch", str(patch))
    assert result.exit_code == 0, result.output
    assert f"wrote 2 patch(es) of p/test to {patch} (apply with git am)" in result.output
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(ran), str(clone)], check=True)
    git(clone, "am", "-q", str(patch))
    assert subjects(clone, "HEAD")[:2] == ["p/test: attempt 1 succeeded", "p/dev: attempt 1 succeeded"]
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(ran, "rev-parse", "ref^{tree}")
    assert "Clowder-Job: dev" in git(clone, "log", "-1", "--format=%B", "HEAD~1")
    stdout = cli("export", "p", "--patch", "-")
    assert stdout.exit_code == 0 and stdout.output == patch.read_text()


def test_export_the_last_fixup_of_a_regression_loop(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    repo = user_repo(tmp_path / "user")
    make_pipeline("loop", {
        # dev writes a bug; as a fix-up (its regression.json is there) it fixes it.
        "dev": 'command = "if ls .clowder/*/regression.json >/dev/null 2>&1; then echo fixed > calc.txt; '
               'else echo bug > calc.txt; fi"\n',
        "test": 'command = "echo ran >> test.log; grep -q fixed calc.txt || { clowder spawn dev --reason bug; '
                'exit 1; }"\nneeds = ["dev"]\n',
    }, spec='prompt = "fix it"\nsource = { repo = "../user" }\nexport = { exclude = ["*.log"] }\n')
    result = cli("run", "loop")
    assert result.exit_code == 0, result.output
    before = snapshot(repo)
    result = cli("export", "loop", "--branch", "fixed")  # the default job: test, which consumed the fix-up
    assert result.exit_code == 0, result.output
    assert "exported loop/test to branch fixed" in result.output
    # test@1 and test@2 changed only their metadata and an excluded log: no commit of their own.
    assert subjects(repo, "fixed") == ["loop/dev.r1: attempt 1 succeeded", "loop/dev: attempt 1 succeeded",
                                       "add lib", "initial"]
    assert git(repo, "show", "fixed:calc.txt") == "fixed\n"
    assert files(repo, "fixed") == ["README.md", "calc.txt", "data.xml", "lib.txt"]
    result = cli("export", "loop", "dev.r1", "--branch", "fixup")  # the fix-up itself, named
    assert result.exit_code == 0, result.output
    assert git(repo, "rev-parse", "fixup^{tree}") == git(repo, "rev-parse", "fixed^{tree}")
    assert snapshot(repo) == before


def test_export_refuses_unknown_names_and_unfinished_jobs(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    repo = user_repo(tmp_path / "user")
    make_pipeline("p", {"dev": 'command = "echo x > x.txt"\n',
                        "bad": 'command = "echo y > y.txt; exit 1"\nallow_failure = true\n'},
                  spec='prompt = "p"\nsource = { repo = "../user" }\n')
    cli("run", "p")
    result = cli("export", "px", "--branch", "b")
    assert result.exit_code == 2 and "no such pipeline; did you mean p?" in result.output
    result = cli("export", "p", "deb", "--branch", "b")
    assert result.exit_code == 2 and "'deb': not a job of p; did you mean dev?" in result.output
    result = cli("export", "p", "bad", "--branch", "b")
    assert result.exit_code == 2
    assert "error: p/bad has not succeeded (it is failed); --force exports what its last attempt left" in result.output
    assert cli("export", "p", "bad", "--branch", "b", "--force").exit_code == 0
    assert git(repo, "show", "b:y.txt") == "y\n"
    result = cli("export", "p")
    assert result.exit_code == 2 and "give --branch NAME" in result.output


def test_export_without_a_source_needs_a_repo_and_makes_an_orphan_branch(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    make_pipeline("p", {"dev": 'command = "echo x > x.txt"\n'})
    assert cli("run", "p").exit_code == 0
    result = cli("export", "p", "--branch", "b")
    assert result.exit_code == 2
    assert "pipeline.toml: the pipeline has no source: give --repo PATH" in result.output
    repo = user_repo(tmp_path / "user")
    result = cli("export", "p", "--branch", "b", "--repo", str(repo))
    assert result.exit_code == 0, result.output
    assert "on no parent (an orphan branch)" in result.output
    assert subjects(repo, "b") == ["p/dev: attempt 1 succeeded"]
    assert files(repo, "b") == ["x.txt"]
    assert cli("export", "p", "--branch", "c", "--repo", str(tmp_path / "nowhere")).exit_code == 2


def test_export_with_nothing_changed_says_so(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                             tmp_path: Path) -> None:
    repo = user_repo(tmp_path / "user")
    make_pipeline("p", {"dev": 'command = "echo r > r.xml"\n'},
                  spec='prompt = "p"\nsource = { repo = "../user" }\nexport = { exclude = ["*.xml"] }\n')
    assert cli("run", "p").exit_code == 0
    result = cli("export", "p", "--branch", "b")
    assert result.exit_code == 1
    assert "p/dev: nothing to export" in result.output
    assert git(repo, "branch", "--list", "b") == ""


def test_export_exclude_is_validated(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"dev": 'command = "true"\n'}, spec='prompt = "p"\nexport = { exclude = "*.xml" }\n')
    make_pipeline("q", {"dev": 'command = "true"\n'}, spec='prompt = "q"\nexport = { exlude = ["*.xml"] }\n')
    make_pipeline("r", {"dev": 'command = "true"\n'}, spec='prompt = "r"\nexport = { exclude = ["a\\u0000b"] }\n')
    result = cli("validate")
    assert result.exit_code == 2
    assert "pipelines/p/pipeline.toml: export.exclude: expected an array" in result.output
    assert "pipelines/q/pipeline.toml: export.exlude: unknown key" in result.output
    assert "pipelines/r/pipeline.toml: export.exclude[0]: contains a NUL character" in result.output


def test_the_job_page_shows_the_export_command(root: Root, ran: Path) -> None:
    assert reader.job_detail(root, "p", "test").export_command == "clowder export p test --branch clowder/p-test"
    root.pipeline("p").job_file("later").write_text('command = "true"\nneeds = ["test"]\n')
    assert reader.job_detail(root, "p", "later").export_command == ""  # nothing to bring back yet


def test_export_of_a_fan_in_holds_every_upstream_s_work(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    repo = user_repo(tmp_path / "user")
    make_pipeline("fan", {"a": 'command = "echo a > a.txt"\n', "b": 'command = "echo b > b.txt"\n',
                          "c": 'command = "echo c > c.txt"\n',
                          "join": 'command = "cat a.txt b.txt c.txt > all.txt"\nneeds = ["a", "b", "c"]\n'},
                  spec='prompt = "p"\nsource = { repo = "../user" }\n')
    assert cli("run", "fan").exit_code == 0
    result = cli("export", "fan", "--branch", "fan")
    assert result.exit_code == 0, result.output
    assert files(repo, "fan") == ["README.md", "a.txt", "all.txt", "b.txt", "c.txt", "data.xml", "lib.txt"]
    # The first-parent line: join's first upstream, then the merge of the others (their work in one commit).
    assert subjects(repo, "fan")[:3] == ["fan/join: attempt 1 succeeded", "fan/join: merge 2 upstreams: b, c",
                                         "fan/a: attempt 1 succeeded"]
    merge = git(repo, "log", "-1", "--format=%B", "fan~1")
    assert "Clowder-Pipeline: fan\nClowder-Job: join\nClowder-Commit: " in merge
    assert git(repo, "rev-list", "--count", "--merges", "fan") == "0\n"  # a straight line on the user's branch


def test_the_web_page_shows_the_export_command_of_a_job(root: Root, ran: Path) -> None:
    pytest.importorskip("fastapi")
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("no /usr/bin/chromium: install Debian's chromium package (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    import httpx

    from tests.test_server import CHROMIUM, CHROMIUM_ARGS, serving

    with serving(root) as p:
        detail = httpx.get(f"{p.url}api/pipelines/p/jobs/test", headers={"Authorization": f"Bearer {p.token}"})
        assert detail.json()["export_command"] == "clowder export p test --branch clowder/p-test"
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"{p.url}?token={p.token}#/p/p/dev")
                sync_api.expect(page.locator("#export-command")).to_have_text(
                    "clowder export p dev --branch clowder/p-dev", timeout=15_000)
                sync_api.expect(page.locator("#copy-export")).to_be_visible()
            finally:
                browser.close()


def test_export_ignores_the_user_s_git_settings(ran: Path, cli: Invoke, tmp_path: Path) -> None:
    """Settings that change what git log and format-patch print cannot break the export."""
    config = Path(os.environ["GIT_CONFIG_GLOBAL"])
    config.write_text("[format]\n\tcoverLetter = true\n\tattach = yes\n\tsignature = sig\n"
                      "[diff]\n\tnoprefix = true\n\tmnemonicPrefix = true\n[color]\n\tui = always\n"
                      "[log]\n\tdecorate = full\n\tabbrevCommit = true\n[core]\n\tabbrev = 7\n")
    assert cli("export", "p", "--branch", "ref").exit_code == 0
    patch = tmp_path / "work.patch"
    assert cli("export", "p", "--patch", str(patch)).exit_code == 0
    assert "*** SUBJECT HERE ***" not in patch.read_text()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(ran), str(clone)], check=True)
    git(clone, "am", "-q", str(patch))
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(ran, "rev-parse", "ref^{tree}")


def test_export_to_a_bare_source_named_by_a_file_url_on_its_ref(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path
) -> None:
    work = user_repo(tmp_path / "work")
    git(work, "branch", "feature", "HEAD~1")
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    git(work, "worktree", "add", "-q", str(tmp_path / "linked"), "feature")
    make_pipeline("p", {"dev": 'command = "echo x > x.txt"\n'},
                  spec=f'prompt = "p"\nsource = {{ repo = "file://{bare}", ref = "feature" }}\n')
    assert cli("run", "p").exit_code == 0
    result = cli("export", "p", "--branch", "done")
    assert result.exit_code == 0, result.output
    assert f"to branch done of {bare}" in result.output
    assert subjects(bare, "done") == ["p/dev: attempt 1 succeeded", "initial"]  # on feature, not on main
    # A branch checked out in a linked worktree is as untouchable as the main one.
    result = cli("export", "p", "--branch", "feature", "--repo", str(work), "--force")
    assert result.exit_code == 2 and f"feature is checked out in {tmp_path / 'linked'}" in result.output
    assert subjects(work, "feature") == ["initial"]


def test_export_without_recorded_base_commits_stops_at_the_source(root: Root, ran: Path, cli: Invoke) -> None:
    """Status files rebuilt from the attempts' own records have no base_commit: the source's own
    history is still never exported as the pipeline's work."""
    for job in ("dev", "test"):
        status = root.pipeline("p").job_status_file(job)
        status.write_text("".join(line for line in status.read_text().splitlines(keepends=True)
                                  if not line.startswith("base_commit")))
    head = git(ran, "rev-parse", "HEAD").strip()
    result = cli("export", "p", "--branch", "b")
    assert result.exit_code == 0, result.output
    assert git(ran, "rev-parse", "b~2").strip() == head
    assert subjects(ran, "b")[:2] == ["p/test: attempt 1 succeeded", "p/dev: attempt 1 succeeded"]
