"""Siblings of issue 12's defects: every command that names a pipeline or a job says which exist;
logs, context files and upstream outputs are read only as regular files where they belong;
integer keys are integers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clowder.driver import Driver
from clowder.harness import prompt
from clowder.spec import Config, Pipeline
from clowder.tree import Root
from clowder.validate import build_pipeline
from tests.conftest import Invoke, MakePipeline

TWO_JOBS = {"dev": 'command = "echo dev"\n', "test": 'command = "echo test"\nneeds = ["dev"]\n'}


def run_to_end(root: Root) -> None:
    Driver(root, log=lambda s: None).serve(until_done=True)


def clowder(root: Root, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real command, in its own process: a read that blocks shows up as a timeout here, not
    as a hung test run."""
    return subprocess.run([sys.executable, "-m", "clowder", *args], cwd=root.path, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False)


# -- 1. an unknown job or pipeline is exit 2 with a did-you-mean, in every command ------------------

@pytest.mark.parametrize("command", [("logs", "p", "tset"), ("retry", "p", "tset"), ("cancel", "p", "tset")])
def test_a_mistyped_job_is_no_such_job_with_a_did_you_mean(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                           command: tuple[str, ...]) -> None:
    make_pipeline("p", TWO_JOBS)
    result = cli(*command)
    assert (result.exit_code, result.stderr) == (
        2, "error: 'tset': not a job of p; did you mean test? (jobs: dev, test)\n")
    assert not any(root.pipeline("p").requests_dir.glob("*.toml"))


@pytest.mark.parametrize("command", [
    ("logs", "biuld", "dev"), ("status", "biuld"), ("graph", "biuld"), ("artifacts", "biuld"),
    ("retry", "biuld", "dev"), ("cancel", "biuld"), ("path", "biuld", "dev"), ("diff", "biuld", "dev"),
])
def test_a_mistyped_pipeline_is_no_such_pipeline_with_a_did_you_mean(root: Root, make_pipeline: MakePipeline,
                                                                     cli: Invoke, command: tuple[str, ...]) -> None:
    make_pipeline("build", TWO_JOBS)
    make_pipeline("deploy", TWO_JOBS)
    result = cli(*command)
    assert (result.exit_code, result.stderr) == (
        2, f"error: {root.pipelines_dir}/biuld: no such pipeline; did you mean build?\n")


def test_artifacts_of_a_mistyped_job_is_no_such_job(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", TWO_JOBS)
    result = cli("artifacts", "p", "dvv")
    assert (result.exit_code, result.stderr) == (
        2, "error: 'dvv': not a job of p; did you mean dev? (jobs: dev, test)\n")


def test_the_server_answers_a_mistyped_name_with_the_same_did_you_mean(root: Root,
                                                                      make_pipeline: MakePipeline) -> None:
    pytest.importorskip("fastapi")
    from tests.test_server import client

    make_pipeline("build", TWO_JOBS)
    with client(root) as (c, _):
        r = c.get("/api/pipelines/biuld")
        assert (r.status_code, r.json()["detail"]) == (
            404, f"{root.pipelines_dir}/biuld: no such pipeline; did you mean build?")
        r = c.get("/api/pipelines/build/jobs/tset/logs")
        assert (r.status_code, r.json()["detail"]) == (
            404, "'tset': not a job of build; did you mean test? (jobs: dev, test)")


def test_a_pipeline_nothing_like_any_other_gets_no_guess(root: Root, make_pipeline: MakePipeline,
                                                         cli: Invoke) -> None:
    make_pipeline("build", TWO_JOBS)
    result = cli("logs", "zzz", "dev")
    assert (result.exit_code, result.stderr) == (2, f"error: {root.pipelines_dir}/zzz: no such pipeline\n")


def test_a_pipeline_directory_without_its_spec_is_shown_but_not_run(root: Root, cli: Invoke) -> None:
    (root.pipelines_dir / "half" / "jobs").mkdir(parents=True)
    spec = root.pipelines_dir / "half" / "pipeline.toml"
    status = cli("status", "half")
    assert (status.exit_code, status.stdout.splitlines()[0]) == (
        0, f"pipeline half: invalid — 1 problem(s); run `clowder validate {spec.parent}`")
    for command in (("logs", "half", "a"), ("cancel", "half"), ("run", "half")):
        result = cli(*command)
        assert (result.exit_code, result.stderr) == (
            2, f"error: {spec}: missing: every pipeline directory needs a pipeline.toml\n"), command


def test_logs_of_a_known_job_that_has_not_run_says_so(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", TWO_JOBS)
    result = cli("logs", "p", "test")
    assert (result.exit_code, result.stderr) == (2, "error: p/test has not run yet (it is pending)\n")


# -- 2. `clowder logs` reads only the regular file inside the pipeline ------------------------------

@pytest.mark.parametrize("where", ["file", "job dir", "logs dir"])
@pytest.mark.parametrize("follow", [False, True])
def test_logs_never_follow_a_symlink_out_of_the_pipeline(root: Root, make_pipeline: MakePipeline,
                                                         tmp_path: Path, where: str, follow: bool) -> None:
    make_pipeline("p", {"a": 'command = "echo hi"\n'})
    run_to_end(root)
    paths = root.pipeline("p")
    secret = tmp_path / "outside" / "a" / "1.log"
    secret.parent.mkdir(parents=True)
    secret.write_text("root:x:0:0:secret\n")
    link = {"file": paths.log_file("a", 1), "job dir": paths.log_file("a", 1).parent, "logs dir": paths.logs_dir}
    target = {"file": secret, "job dir": secret.parent, "logs dir": secret.parent.parent}
    link[where].rename(tmp_path / "moved")
    link[where].symlink_to(target[where])
    result = clowder(root, "logs", "p", "a", *(["-f"] if follow else []))
    assert "secret" not in result.stdout
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: {paths.log_file('a', 1)}: the log resolves outside its pipeline (")


@pytest.mark.parametrize("follow", [False, True])
def test_logs_never_block_on_a_fifo(root: Root, make_pipeline: MakePipeline, follow: bool) -> None:
    make_pipeline("p", {"a": 'command = "echo hi"\n'})
    run_to_end(root)
    log = root.pipeline("p").log_file("a", 1)
    log.unlink()
    os.mkfifo(log)
    result = clowder(root, "logs", "p", "a", *(["-f"] if follow else []), timeout=30)
    assert (result.returncode, result.stderr) == (2, f"error: {log}: not a regular file; not read\n")


def test_logs_still_print_a_real_log(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "echo hi; echo caf\\u00e9"\n'})
    run_to_end(root)
    assert (clowder(root, "logs", "p", "a").stdout, clowder(root, "logs", "p", "a", "-f").stdout) == (
        "hi\ncafé\n", "hi\ncafé\n")


# -- 3. `clowder spawn --context-file` reads a small regular file, never blocks ---------------------

def _spawn_env(root: Root) -> dict[str, str]:
    return {"CLOWDER_ROOT": str(root.path), "CLOWDER_PIPELINE": "p", "CLOWDER_JOB": "test", "CLOWDER_ATTEMPT": "1"}


def test_spawn_refuses_a_fifo_as_context_file(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    make_pipeline("p", TWO_JOBS)
    fifo = tmp_path / "context"
    os.mkfifo(fifo)
    result = clowder(root, "spawn", "dev", "--reason", "r", "--context-file", str(fifo), env=_spawn_env(root),
                     timeout=30)
    assert (result.returncode, result.stderr) == (
        2, f"error: {fifo}: cannot read the context file: not a regular file (a FIFO)\n")
    assert not any(root.pipeline("p").requests_dir.glob("*.toml"))


def test_spawn_refuses_a_context_file_larger_than_a_request(root: Root, make_pipeline: MakePipeline,
                                                            tmp_path: Path) -> None:
    make_pipeline("p", TWO_JOBS)
    big = tmp_path / "big.txt"
    big.write_text("x" * (256 * 1024 + 1))
    result = clowder(root, "spawn", "dev", "--reason", "r", "--context-file", str(big), env=_spawn_env(root))
    assert (result.returncode, result.stderr) == (
        2, f"error: {big}: cannot read the context file: larger than 262144 bytes ({256 * 1024 + 1} bytes)\n")


def test_spawn_reads_a_context_file(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    make_pipeline("p", TWO_JOBS)
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("3 tests failed\n")
    result = clowder(root, "spawn", "dev", "--reason", "r", "--context-file", str(ctx), env=_spawn_env(root))
    assert result.returncode == 0, result.stderr
    (request,) = root.pipeline("p").requests_dir.glob("*.toml")
    assert "3 tests failed" in request.read_text()


# -- 4. a prompt never pastes a file from outside the workspace -------------------------------------

def _agent_pipeline() -> Pipeline:
    jobs = {"plan": {"agent": "planner"}, "dev": {"agent": "developer", "needs": ["plan"]}}
    return build_pipeline("p", {"prompt": "Build it."}, jobs, Config())


@pytest.mark.parametrize("where", ["output.json", "job dir", ".clowder"])
def test_a_prompt_never_pastes_an_upstream_output_through_a_symlink(tmp_path: Path, where: str) -> None:
    outside = tmp_path / "outside"
    (outside / "plan").mkdir(parents=True)
    (outside / "plan" / "output.json").write_text('{"secret": "root:x:0:0"}')
    ws = tmp_path / "ws"
    meta = ws / ".clowder"
    if where == ".clowder":
        ws.mkdir()
        meta.symlink_to(outside)
    elif where == "job dir":
        meta.mkdir(parents=True)
        (meta / "plan").symlink_to(outside / "plan")
    else:
        (meta / "plan").mkdir(parents=True)
        (meta / "plan" / "output.json").symlink_to(outside / "plan" / "output.json")
    p = _agent_pipeline()
    text = prompt.compose(prompt.Context(p, p.jobs["dev"], 1, ws))
    assert "secret" not in text
    assert "unreadable" in text and "a symbolic link" in text


def test_a_prompt_says_an_upstream_output_that_is_a_fifo_is_unreadable(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".clowder" / "plan").mkdir(parents=True)
    os.mkfifo(ws / ".clowder" / "plan" / "output.json")
    p = _agent_pipeline()
    text = prompt.compose(prompt.Context(p, p.jobs["dev"], 1, ws))
    assert "## plan (you start from its work)\n\n(.clowder/plan/output.json is unreadable: not a regular file " \
           "(a FIFO); not shown)" in text


def test_a_fixups_prompt_never_pastes_a_regression_file_through_a_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"reason": "root:x:0:0"}')
    ws = tmp_path / "ws"
    (ws / ".clowder" / "dev").mkdir(parents=True)
    (ws / ".clowder" / "dev" / "regression.json").symlink_to(secret)
    p = _agent_pipeline()
    text = prompt.compose(prompt.Context(p, p.jobs["dev"], 1, ws))
    assert "root:x" not in text
    assert ".clowder/dev/regression.json is unreadable: a symbolic link" in text


def test_an_agent_job_after_a_job_that_commits_a_symlinked_output_runs_without_it(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text('{"password": "hunter2"}')
    make_pipeline("p", {
        "plan": f'command = "mkdir -p .clowder/plan && ln -s {secret} .clowder/plan/output.json"\n',
        "dev": 'agent = "developer"\nneeds = ["plan"]\n',
    })
    run_to_end(root)
    paths = root.pipeline("p")
    text = (paths.workspace("dev") / ".clowder" / "dev" / "prompt.md").read_text()
    assert "hunter2" not in text
    assert ".clowder/plan/output.json is unreadable: a symbolic link" in text


# -- 5. integer keys are integers ---------------------------------------------------------------------

@pytest.mark.parametrize("text, shown", [("1e3", "1000.0"), ("2.0", "2.0")])
def test_a_float_max_parallel_is_refused(root: Root, cli: Invoke, text: str, shown: str) -> None:
    root.config_file.write_text(f"max_parallel = {text}\n")
    result = cli("validate")
    assert result.exit_code == 2
    assert f"{root.config_file}: max_parallel: expected an integer, got {shown}" in result.stdout.splitlines()


def test_a_float_retries_in_a_job_is_refused(make_pipeline: MakePipeline, cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'command = "true"\nretries = 2.0\n'})
    result = cli("validate")
    assert result.exit_code == 2
    assert f"{d}/jobs/a.toml: retries: expected an integer, got 2.0" in result.stdout


def test_a_whole_float_where_a_number_belongs_is_fine(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "true"\nbackoff = { initial = "1s", factor = 2.0, max = "1m" }\n'})
    result = cli("validate")
    assert result.exit_code == 0, result.output


# -- Clowder never writes through a link a job left in its metadata directory ---------------------

@pytest.mark.parametrize("link", [".clowder", ".clowder/dev", ".clowder/dev/prompt.md"])
def test_clowder_never_writes_through_a_link_an_upstream_left_in_the_metadata_directory(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "prompt.md" if link.endswith(".md") else outside
    make_pipeline("p", {
        "plan": f'command = "mkdir -p $(dirname {link}) && ln -s {target} {link}"\n',
        "dev": 'agent = "developer"\nneeds = ["plan"]\n',
    })
    run_to_end(root)
    assert list(outside.iterdir()) == []  # nothing written there: not the prompt, the script or the output
    meta = root.pipeline("p").workspace("dev") / ".clowder" / "dev"
    assert not meta.is_symlink() and (meta / "prompt.md").is_file() and not (meta / "prompt.md").is_symlink()


def test_a_failed_job_that_links_its_metadata_directory_out_gets_its_error_json_inside(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    make_pipeline("p", {"a": f'command = "mkdir -p .clowder && ln -s {outside} .clowder/a; exit 3"\n'})
    run_to_end(root)
    assert list(outside.iterdir()) == []
    error = root.pipeline("p").workspace("a") / ".clowder" / "a" / "error.json"
    assert not error.parent.is_symlink() and '"exit_code": 3' in error.read_text()
