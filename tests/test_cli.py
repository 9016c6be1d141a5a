"""The command line as a user sees it: `clowder status`, finding the root, and help texts."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clowder.cli import main
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline, write

FAN = {
    "split": 'command = "x"\n',
    "b": 'command = "x"\nneeds = ["split"]\n',
    "a": 'command = "x"\nneeds = ["split"]\n',
    "join": 'command = "x"\nneeds = ["a", "b"]\n',
}


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


# -- status -----------------------------------------------------------------------------------

def test_status_of_a_pipeline_lists_jobs_in_dependency_order_all_pending(
    make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", FAN)
    result = cli("status", "p")
    assert result.exit_code == 0, result.output
    assert rows(result.stdout) == [
        ["pipeline", "p:", "pending"],
        ["JOB", "STAGE", "STATE", "ATTEMPT", "DURATION", "MESSAGE"],
        ["split", "-", "pending", "-", "-"],
        ["a", "-", "pending", "-", "-"],
        ["b", "-", "pending", "-", "-"],
        ["join", "-", "pending", "-", "-"],
    ]


def test_status_shows_stages(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"x": 'stage = "build"\ncommand = "x"\n'}, spec='prompt = "x"\nstages = ["build"]\n')
    assert rows(cli("status", "p").stdout)[2] == ["x", "build", "pending", "-", "-"]


def test_status_of_every_pipeline(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", FAN)
    make_pipeline("q", {"only": 'command = "x"\n'})
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert rows(result.stdout) == [
        ["PIPELINE", "STATE", "JOBS", "MESSAGE"],
        ["p", "pending", "4", "pending"],
        ["q", "pending", "1", "pending"],
    ]


def test_status_with_no_pipelines_says_how_to_make_one(cli: Invoke) -> None:
    result = cli("status")
    assert (result.exit_code, result.stdout) == (
        0, "no pipelines yet; create one with `clowder new TEMPLATE --prompt TEXT`\n",
    )


def test_status_json(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "x"\n', "b": 'stage = "s"\ncommand = "x"\nneeds = ["a"]\n'},
                  spec='prompt = "x"\nstages = ["s"]\n')
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    pending = {"state": "pending", "attempt": 0, "duration": None, "message": "", "started_at": None,
               "ended_at": None}
    assert json.loads(result.stdout) == [{
        "name": "p", "state": "pending", "message": "", "started_at": None, "ended_at": None, "problems": [],
        "jobs": [
            {"name": "a", "stage": None, "needs": [], **pending},
            {"name": "b", "stage": "s", "needs": ["a"], **pending},
        ],
    }]
    assert json.loads(cli("status", "p", "--json").stdout) == json.loads(result.stdout)


def test_status_json_with_no_pipelines_is_an_empty_list(cli: Invoke) -> None:
    assert json.loads(cli("status", "--json").stdout) == []


def test_status_of_an_invalid_pipeline_points_to_validate(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    d = make_pipeline("p", {"a": 'command = "x"\nretries = -1\n'})
    result = cli("status", "p")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        f"pipeline p: invalid — 1 problem(s); run `clowder validate {d}`",
        f"  {d}/jobs/a.toml: retries: must be >= 0, got -1",
    ]
    assert json.loads(cli("status", "--json").stdout)[0]["problems"] == [
        f"{d}/jobs/a.toml: retries: must be >= 0, got -1",
    ]


def test_status_of_a_missing_pipeline(root: Root, cli: Invoke) -> None:
    result = cli("status", "nope")
    assert (result.exit_code, result.stderr) == (2, f"error: {root.pipelines_dir}/nope: no such pipeline\n")


def test_status_of_an_invalid_pipeline_name_never_leaves_the_root(cli: Invoke) -> None:
    result = cli("status", "../..")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid pipeline name '../..'")


@pytest.mark.parametrize(("content", "problem"), [
    (b"\xff", "<toml>: not UTF-8 text: invalid start byte"),
    (b'state = "dreaming"\n', "state: must be one of pending, queued, running, retrying, waiting, approval, lost, "
                              "succeeded, failed, skipped, cancelled, blocked, broken; got 'dreaming'"),
    (b'state = "running"\nmessage = 5\n', "message: expected a string, got 5"),
    (b'state = "running"\n[[attempts]]\nnumber = 1\nstate = "running"\nstarted_at = "yesterday"\n',
     "attempts[0].started_at: expected a date-time with a UTC offset, got 'yesterday'"),
    (b'state = "running"\n[[attempts]]\nnumber = 1\nstate = "running"\nstarted_at = 2026-01-01T10:00:00\n',
     "attempts[0].started_at: expected a date-time with a UTC offset, got 2026-01-01T10:00:00"),
])
def test_hand_broken_job_status_file_is_shown_not_a_crash(
    make_pipeline: MakePipeline, cli: Invoke, content: bytes, problem: str
) -> None:
    d = make_pipeline("p", {"a": 'command = "x"\n'})
    write(d / "status" / "a.toml", "").write_bytes(content)
    result = cli("status", "p", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["jobs"][0]["message"] == (
        f"unreadable status file: {d}/status/a.toml: {problem}"
    )
    assert cli("status", "p").exit_code == 0
    validated = cli("validate")
    assert (validated.exit_code, validated.stdout) == (2, f"{d}/status/a.toml: {problem}\n")


def test_hand_broken_pipeline_status_file_shows_the_pipeline_as_broken(
    make_pipeline: MakePipeline, cli: Invoke
) -> None:
    d = make_pipeline("p", {"a": 'command = "x"\n'})
    write(d / "status.toml", 'state = "running"\nstarted_at = 5\n')
    message = f"{d}/status.toml: started_at: expected a date-time with a UTC offset, got 5"
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert json.loads(cli("status", "--json").stdout)[0]["state"] == "broken"
    assert json.loads(cli("status", "--json").stdout)[0]["message"] == message


def test_status_reads_recorded_job_states(make_pipeline: MakePipeline, cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'command = "x"\n'})
    write(d / "status" / "a.toml", """\
        state = "failed"
        attempt = 1
        message = "exit code 3"
        [[attempts]]
        number = 1
        state = "failed"
        started_at = 2026-01-01T10:00:00Z
        ended_at = 2026-01-01T10:01:30Z
        exit_code = 3
        """)
    assert rows(cli("status", "p").stdout)[2] == ["a", "-", "failed", "1", "1m30s", "exit", "code", "3"]
    job = json.loads(cli("status", "p", "--json").stdout)[0]["jobs"][0]
    assert (job["duration"], job["started_at"], job["ended_at"]) == (
        90.0, "2026-01-01T10:00:00+00:00", "2026-01-01T10:01:30+00:00",
    )


# -- finding the root -------------------------------------------------------------------------

def test_root_is_found_from_a_subdirectory(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    d = make_pipeline("p", FAN)
    result = cli("status", "p", cwd=d / "jobs")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("pipeline p: pending\n")


def test_root_option(root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    make_pipeline("p", FAN)
    result = cli("status", "--root", str(root.path), cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert rows(result.stdout)[1][0] == "p"
    assert cli("status", "--root", "root", cwd=tmp_path).stdout == result.stdout


def test_clowder_root_environment_variable(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pipeline("p", FAN)
    monkeypatch.setenv("CLOWDER_ROOT", str(root.path))
    result = cli("status", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert rows(result.stdout)[1][0] == "p"


def test_root_option_wins_over_the_environment(
    root: Root, cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOWDER_ROOT", str(tmp_path / "elsewhere"))
    result = cli("status", "--root", str(root.path), cwd=tmp_path)
    assert result.exit_code == 0, result.output


def test_environment_wins_over_the_current_directory(
    root: Root, tmp_path: Path, cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOWDER_ROOT", str(tmp_path))
    result = cli("status")  # run from inside `root`, but the environment names another place
    assert (result.exit_code, result.stderr) == (
        2, f"error: {tmp_path}: no clowder.toml here; run `clowder init {tmp_path}` to create a root\n",
    )


def test_no_root_is_a_clear_error(cli: Invoke, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for args in (["status"], ["validate"], ["new", "t", "-p", "x"], ["graph", "p"]):
        result = cli(*args, cwd=tmp_path / "empty")
        assert (result.exit_code, result.stderr) == (2, (
            f"error: no clowder.toml found in {tmp_path}/empty or any parent directory; run `clowder init` "
            "to create a root, or pass --root / set CLOWDER_ROOT\n"
        )), args


def test_root_option_naming_a_directory_without_a_root(cli: Invoke, tmp_path: Path) -> None:
    result = cli("status", "--root", str(tmp_path))
    assert (result.exit_code, result.stderr) == (
        2, f"error: {tmp_path}: no clowder.toml here; run `clowder init {tmp_path}` to create a root\n",
    )


# -- help -------------------------------------------------------------------------------------

COMMANDS = sorted(main.commands)


def test_the_group_has_help() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Clowder runs pipelines" in result.output
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_text(name: str) -> None:
    command = main.commands[name]
    assert command.help and command.help.strip(), f"`clowder {name}` has no help text"
    assert command.get_short_help_str().strip()
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"`clowder {name} {param.opts[0]}` has no help text"
    for flag in ("--help", "-h"):
        result = CliRunner().invoke(main, [name, flag])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Usage: main {name}") or result.output.startswith(f"Usage: clowder {name}")


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "version" in result.output


# -- diff: jobs before `--`, paths after ---------------------------------------------------------

DIFFED = {"dev": 'command = "echo v1 > code.txt; echo a > notes.txt"\n',
          "test": 'command = "echo v2 > code.txt; echo b > notes.txt"\nneeds = ["dev"]\n'}


@pytest.fixture
def diffed(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", DIFFED)
    assert cli("run", "p").exit_code == 0


@pytest.mark.usefixtures("diffed")
@pytest.mark.parametrize(("args", "message"), [
    (("dev", "tset"), "error: 'tset': not a job of p; did you mean test? (jobs: dev, test)\n"),
    (("dvv", "test"), "error: 'dvv': not a job of p; did you mean dev? (jobs: dev, test)\n"),
    (("ghost", "test"), "error: 'ghost': not a job of p (jobs: dev, test)\n"),
    (("dev", "ghost"),
     "error: 'ghost': not a job of p (jobs: dev, test); paths go after `--`: clowder diff p dev -- ghost\n"),
    (("dev", "tst@1"), "error: 'tst@1': not a job of p; did you mean test? (jobs: dev, test)\n"),
    (("dev", "test@9"), "error: test@9: no such attempt (attempts with a commit: 1)\n"),
    (("dev", "test", "code.txt"),
     "error: 'code.txt': paths go after `--`: clowder diff p dev test -- code.txt\n"),
    (("dev", "--stat", "code.txt"),
     "error: 'code.txt': not a job of p (jobs: dev, test); paths go after `--`: clowder diff p dev -- code.txt\n"),
])
def test_diff_with_an_unknown_job_or_a_path_before_the_dashes_is_refused(
        cli: Invoke, args: tuple[str, ...], message: str) -> None:
    result = cli("diff", "p", *args)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", message)


@pytest.mark.usefixtures("diffed")
def test_diff_takes_paths_after_the_dashes(cli: Invoke) -> None:
    between = cli("diff", "p", "dev", "test", "--", "code.txt")
    assert between.exit_code == 0, between.output
    assert between.stdout.endswith("-v1\n+v2\n") and "notes.txt" not in between.stdout
    alone = cli("diff", "p", "test", "--", "notes.txt")
    assert alone.exit_code == 0, alone.output
    assert "+b\n" in alone.stdout and "code.txt" not in alone.stdout
    options = cli("diff", "p", "dev", "test", "--name-only", "--", "code.txt", "notes.txt")
    assert (options.exit_code, options.stdout) == (0, "code.txt\nnotes.txt\n")
    assert cli("diff", "p", "dev", "test", "--stat").stdout.count("|") == 2
    assert cli("diff", "p", "dev@1", "test@1", "--name-status").stdout == "M\tcode.txt\nM\tnotes.txt\n"
    assert cli("diff", "p", "dev", "--", "--stat").stdout == ""  # after `--`, a path, not an option


# -- cancel and retry: refused at once when they cannot apply -----------------------------------

def requests_waiting(root: Root) -> list[str]:
    return sorted(p.name for p in root.pipeline("p").requests_dir.glob("*.toml"))


def test_retry_and_cancel_of_what_has_ended_are_refused_with_the_reason(
        root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n', "b": 'command = ["false"]\nneeds = ["a"]\n',
                        "c": 'command = ["true"]\nneeds = ["b"]\n'})
    assert cli("run", "p").exit_code == 1
    refused = {
        ("retry", "p", "a"): "error: p/a has succeeded; only a failed or cancelled job can be retried\n",
        ("retry", "p", "c"): "error: p/c was skipped; only a failed or cancelled job can be retried\n",
        ("cancel", "p", "a"): "error: p/a has succeeded; only a job that has not ended can be cancelled\n",
        ("cancel", "p", "b"): "error: p/b has failed; only a job that has not ended can be cancelled\n",
        ("cancel", "p"): "error: p has failed; only a pipeline that has not ended can be cancelled\n",
    }
    for args, message in refused.items():
        result = cli(*args)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", message), args
    assert requests_waiting(root) == []
    retried = cli("retry", "p", "b")
    assert (retried.exit_code, retried.stdout) == (0, "retry requested for p/b\n")
    again = cli("retry", "p", "b")
    assert (again.exit_code, again.stderr) == (2, "error: a retry of p/b is already requested\n")
    # The retry will run b and c again: cancelling them, or the pipeline, applies.
    assert cli("cancel", "p", "b").exit_code == 0
    assert cli("cancel", "p").exit_code == 0
    assert len(requests_waiting(root)) == 3


def test_retry_of_a_job_that_has_not_run_is_refused(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n'})
    result = cli("retry", "p", "a")
    assert (result.exit_code, result.stderr) == (2, "error: p/a is pending; only a failed or cancelled job can be "
                                                    "retried\n")
    assert cli("cancel", "p", "a").exit_code == 0


# -- naming what does not exist -----------------------------------------------------------------

ON_A_PIPELINE = [("status", "{p}"), ("graph", "{p}"), ("logs", "{p}", "dev"), ("artifacts", "{p}"),
                 ("path", "{p}", "dev"), ("diff", "{p}", "dev"), ("cancel", "{p}"), ("retry", "{p}", "dev"),
                 ("run", "{p}"), ("export", "{p}", "--branch", "x")]
ON_A_JOB = [("logs", "p", "{j}"), ("artifacts", "p", "{j}"), ("path", "p", "{j}"), ("diff", "p", "{j}"),
            ("cancel", "p", "{j}"), ("retry", "p", "{j}"), ("export", "p", "{j}", "--branch", "x")]


@pytest.mark.parametrize("args", ON_A_PIPELINE, ids=lambda a: a[0])
def test_every_command_says_the_same_of_a_missing_pipeline(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                           args: tuple[str, ...]) -> None:
    make_pipeline("alpha", {"dev": 'command = ["true"]\n'})
    result = cli(*(a.format(p="alpa") for a in args))
    assert (result.exit_code, result.stderr) == (
        2, f"error: {root.pipelines_dir}/alpa: no such pipeline; did you mean alpha?\n")


@pytest.mark.parametrize("args", ON_A_JOB, ids=lambda a: a[0])
def test_every_command_says_the_same_of_a_missing_job(make_pipeline: MakePipeline, cli: Invoke,
                                                      args: tuple[str, ...]) -> None:
    make_pipeline("p", {"dev": 'command = ["true"]\n'})
    result = cli(*(a.format(j="dve") for a in args))
    assert (result.exit_code, result.stderr) == (2, "error: 'dve': not a job of p; did you mean dev? (jobs: dev)\n")
