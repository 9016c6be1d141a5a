"""Hostile and hand-made inputs: status files edited by hand, absurd numbers, files that are not
files, text that could be read as an option. None of them may crash or hang the daemon; each is
a clear problem naming its file and key."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clowder import jobchecks, workspace
from clowder.driver import Driver
from clowder.spec import Source
from clowder.state import JobState, PipelineState, read_job_status, read_pipeline_status
from clowder.tree import Root
from clowder.workspace import Identity, WorkspaceError
from tests.conftest import Invoke, MakePipeline, no_settle, wait_for, write

MiB = 1024 * 1024


def _limit_memory() -> None:
    # A reader that slurps /dev/zero must fail fast in the test, not take the machine down.
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024 * MiB, 2 * 1024 * MiB))


@pytest.fixture
def clowder(root: Root) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `clowder ARGS --root ROOT` as a real subprocess; every one is killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "clowder", *args, "--root", str(root.path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_limit_memory)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def jstatus(root: Root, p: str, job: str):  # type: ignore[no-untyped-def]
    return read_job_status(root.pipeline(p).job_status_file(job), job)


def pstate(root: Root, p: str) -> PipelineState:
    return read_pipeline_status(root.pipeline(p).status_file).state


# -- A.1: one status reader, which checks time zones ----------------------------------------

def test_a_status_time_edited_without_offset_does_not_crash_run(
    root: Root, make_pipeline: MakePipeline, clowder: Callable[..., subprocess.Popen[str]], tmp_path: Path, cli: Invoke
) -> None:
    flag = tmp_path / "failed-once"
    make_pipeline("p", {"a": f'command = "if [ -f {flag} ]; then exit 0; fi; touch {flag}; exit 1"\n'
                             'retries = 1\nbackoff = { initial = "1h" }\n'})
    first = clowder("watch")
    wait_for(lambda: jstatus(root, "p", "a").state is JobState.RETRYING, what="a retrying")
    first.send_signal(signal.SIGTERM)
    assert finish(first)[0] == 0
    status_file = root.pipeline("p").job_status_file("a")
    text = status_file.read_text()
    lines = [line if not line.startswith("retry_at") else "retry_at = 2026-01-01T10:00:00" for line in
             text.splitlines()]
    saved = status_file.with_name("a.toml~")  # saved as vim does: a new file renamed over the old
    saved.write_text("\n".join(lines) + "\n")
    os.replace(saved, status_file)
    problem = f"{status_file}: retry_at: expected a date-time with a UTC offset, got 2026-01-01T10:00:00"

    shown = cli("status", "p")
    assert shown.exit_code == 0
    assert "retry_at: expected a date-time with a UTC offset" in shown.output

    # The user lowers the backoff so that the test need not wait an hour.
    write(root.pipeline("p").job_file("a"), f'command = "if [ -f {flag} ]; then exit 0; fi; exit 1"\n'
                                            'retries = 1\nbackoff = { initial = "100ms" }\n')
    code, _, err = finish(clowder("run", "p"))
    assert "Traceback" not in err
    assert code == 0, err
    assert problem in err
    a = jstatus(root, "p", "a")
    assert a.state is JobState.SUCCEEDED
    assert [x.state for x in a.attempts] == [JobState.FAILED, JobState.SUCCEEDED]


def test_every_reader_refuses_a_time_without_offset_naming_file_and_key(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    d = make_pipeline("p", {"a": 'command = ["true"]\n'})
    write(d / "status" / "a.toml", 'state = "failed"\nattempt = 1\n[[attempts]]\nnumber = 1\nstate = "failed"\n'
                                   'started_at = 2026-01-01T10:00:00Z\nended_at = 2026-01-01T10:00:03\n')
    problem = (f"{d}/status/a.toml: attempts[0].ended_at: expected a date-time with a UTC offset, "
               "got 2026-01-01T10:00:03")
    assert cli("validate").stdout.splitlines() == [problem]
    for args in (("logs", "p", "a"), ("diff", "p", "a@1"), ("artifacts", "p", "a")):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert problem in result.output
    assert problem in cli("status", "p", "--json").output
    assert cli("reindex").exit_code == 0
    assert problem in cli("status", "p", "--json").output


def test_a_status_path_that_is_not_a_file_is_a_problem(root: Root, make_pipeline: MakePipeline,
                                                       cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'command = ["true"]\n', "b": 'command = ["true"]\n'})
    (d / "status" / "a.toml").mkdir(parents=True)
    os.mkfifo(d / "status" / "b.toml")
    assert cli("validate").stdout.splitlines() == [
        f"{d}/status/a.toml: <file>: cannot read: a directory, not a file",
        f"{d}/status/b.toml: <file>: cannot read: not a regular file (a FIFO)",
    ]
    shown = cli("status", "p")
    assert "unreadable status file" in shown.output and "a directory, not a file" in shown.output


# -- A.2: bounds on every number ----------------------------------------------------------------

def test_a_status_number_past_64_bits_is_a_problem_not_an_index_crash(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    d = make_pipeline("p", {"a": 'command = ["true"]\n'})
    write(d / "status" / "a.toml", 'state = "failed"\nattempt = 1\n[[attempts]]\nnumber = 1\nstate = "failed"\n'
                                   'exit_code = 99999999999999999999\n')
    problem = f"{d}/status/a.toml: attempts[0].exit_code: must be <= 9223372036854775807, got 99999999999999999999"
    assert cli("validate").stdout.splitlines() == [problem]
    assert cli("reindex").exit_code == 0
    assert problem in cli("status", "p", "--json").output


def test_absurd_backoff_and_timeout_are_validation_errors(root: Root, make_pipeline: MakePipeline,
                                                         cli: Invoke) -> None:
    d = make_pipeline("p", {
        "a": 'command = "x"\nretries = 3\nbackoff = { initial = "1ms", factor = 1e308, max = "1ms" }\n',
        "b": 'command = "x"\ntimeout = "1000000000d"\n',
        "c": 'command = "x"\ntimeout = 1e12\nbackoff = { factor = nan }\nmax_cost_usd = inf\n',
        "d": 'command = "x"\nretries = 99999999999999999999\nmax_regressions = 1001\n',
    })
    result = cli("validate")
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{d}/jobs/a.toml: backoff.factor: must be <= 100, got 1e+308",
        f"{d}/jobs/b.toml: timeout: invalid duration '1000000000d': must be at most 365d",
        f"{d}/jobs/c.toml: backoff.factor: must be a finite number, got nan",
        f"{d}/jobs/c.toml: max_cost_usd: must be a finite number, got inf",
        f"{d}/jobs/c.toml: timeout: must be <= 31536000, got 1000000000000.0",
        f"{d}/jobs/d.toml: max_regressions: must be <= 1000, got 1001",
        f"{d}/jobs/d.toml: retries: must be <= 1000, got 99999999999999999999",
    ]


def test_absurd_numbers_in_clowder_toml_and_pipeline_toml(root: Root, make_pipeline: MakePipeline,
                                                         cli: Invoke) -> None:
    root.config_file.write_text('max_parallel = 99999999999999999999\nkill_grace = "99999d"\n'
                                "[retry]\nbackoff = { factor = 1000 }\n[resources]\ngpu = inf\n")
    d = make_pipeline("p", {"a": 'command = "x"\n'}, spec='prompt = "x"\nmax_cost_usd = nan\nmax_parallel = 100000\n')
    assert cli("validate").stdout.splitlines() == [
        f"{root.path}/clowder.toml: max_parallel: must be <= 10000, got 99999999999999999999",
        f"{root.path}/clowder.toml: resources.gpu: must be a finite number, got inf",
        f"{root.path}/clowder.toml: retry.backoff.factor: must be <= 100, got 1000",
        f"{root.path}/clowder.toml: kill_grace: invalid duration '99999d': must be at most 365d",
        f"{d}/pipeline.toml: max_cost_usd: must be a finite number, got nan",
        f"{d}/pipeline.toml: max_parallel: must be <= 10000, got 100000",
    ]


def test_a_sweep_or_heartbeat_under_a_second_is_refused(root: Root, cli: Invoke) -> None:
    root.config_file.write_text('sweep_interval = "0s"\nheartbeat_timeout = 0.5\n')
    assert cli("validate").stdout.splitlines() == [
        f"{root.path}/clowder.toml: heartbeat_timeout: must be >= 1, got 0.5",
        f"{root.path}/clowder.toml: sweep_interval: must be at least 1s, got '0s'",
    ]


def test_run_with_an_absurd_timeout_exits_with_the_problem_not_a_traceback(
    root: Root, make_pipeline: MakePipeline, clowder: Callable[..., subprocess.Popen[str]]
) -> None:
    d = make_pipeline("p", {"a": 'command = "true"\ntimeout = "1000000000d"\n'})
    no_settle(root)
    code, _, err = finish(clowder("run", "p"))
    assert "Traceback" not in err
    assert code in (1, 2)
    assert f"{d}/jobs/a.toml: timeout: invalid duration '1000000000d': must be at most 365d" in err


# -- A.3: only regular files, never a blocking read, a size cap, no way out of the root -------------

def test_files_that_are_not_regular_files_are_problems(root: Root, make_pipeline: MakePipeline,
                                                       clowder: Callable[..., subprocess.Popen[str]],
                                                       tmp_path: Path) -> None:
    d = make_pipeline("p", {"a": 'command = "true"\n'})
    jobs = d / "jobs"
    os.mkfifo(jobs / "fifo.toml")
    (jobs / "dir.toml").mkdir()
    (jobs / "zero.toml").symlink_to("/dev/zero")
    outside = write(tmp_path / "outside.toml", 'command = "true"\n')
    (jobs / "out.toml").symlink_to(outside)
    write(root.path / "shared" / "inside.toml", 'command = "true"\n')
    (jobs / "in.toml").symlink_to(root.path / "shared" / "inside.toml")
    write(jobs / "big.toml", 'command = "true"\n' + "#" * (2 * MiB) + "\n")
    code, out, _ = finish(clowder("validate"), timeout=60)
    assert code == 2
    assert out.splitlines() == [
        f"{jobs}/big.toml: <file>: cannot read: larger than 1 MiB ({2 * MiB + 18} bytes)",
        f"{jobs}/dir.toml: <file>: cannot read: a directory, not a file",
        f"{jobs}/fifo.toml: <file>: cannot read: not a regular file (a FIFO)",
        f"{jobs}/out.toml: <file>: cannot read: a symbolic link to {outside}, outside the root",
        f"{jobs}/zero.toml: <file>: cannot read: a symbolic link to /dev/zero, outside the root",
    ]


def test_run_neither_hangs_nor_crashes_on_a_fifo_or_dev_zero_among_the_jobs(
    root: Root, make_pipeline: MakePipeline, clowder: Callable[..., subprocess.Popen[str]]
) -> None:
    d = make_pipeline("p", {"a": 'command = "true"\n'})
    os.mkfifo(d / "jobs" / "fifo.toml")
    (d / "jobs" / "zero.toml").symlink_to("/dev/zero")
    make_pipeline("q", {"a": 'command = "true"\n'})
    no_settle(root)
    code, _, err = finish(clowder("run", "p", "q"), timeout=60)
    assert "Traceback" not in err
    assert code in (1, 2)
    assert f"{d}/jobs/fifo.toml: <file>: cannot read: not a regular file (a FIFO)" in err
    assert pstate(root, "q") is PipelineState.SUCCEEDED


def test_watch_survives_a_fifo_and_a_directory_among_requests_and_statuses_and_obeys_sigterm(
    root: Root, make_pipeline: MakePipeline, clowder: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    d = make_pipeline("p", {"a": f'command = "while [ ! -e {gate} ]; do sleep 0.05; done"\n'})
    (d / "requests").mkdir()
    os.mkfifo(d / "requests" / "fifo.toml")
    (d / "requests" / "dir.toml").mkdir()
    (d / "status").mkdir()
    os.mkfifo(d / "status" / "b.toml")
    daemon = clowder("watch")
    wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a running")
    os.mkfifo(d / "requests" / "late.toml")
    (d / "requests" / "late-dir.toml").mkdir()
    make_pipeline("q", {"a": 'command = "true"\n'})
    wait_for(lambda: root.pipeline("q").status_file.exists() and pstate(root, "q") is PipelineState.SUCCEEDED,
             what="q succeeded")
    gate.touch()
    wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, what="p succeeded")
    daemon.send_signal(signal.SIGTERM)
    code, _, err = finish(daemon, timeout=30)
    assert code == 0, err
    assert "Traceback" not in err
    assert f"{d}/requests/fifo.toml: <file>: cannot read: not a regular file (a FIFO)" in err
    assert not (d / "requests" / "fifo.toml").exists()  # consumed: it was in Clowder's inbox
    assert (d / "requests" / "dir.toml").is_dir()  # a directory is not a request: left alone


def test_a_spawn_request_too_large_to_be_read_back_is_refused_at_once(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make_pipeline("p", {"dev": 'command = "true"\n', "test": 'command = "true"\n'})
    # Within the context file's cap (256 KiB), but TOML writes each control character as \u0001.
    big = write(tmp_path / "report.txt", "\x01" * (200 * 1024))
    for var, value in (("CLOWDER_PIPELINE", "p"), ("CLOWDER_JOB", "test"), ("CLOWDER_ATTEMPT", "1")):
        monkeypatch.setenv(var, value)
    result = cli("spawn", "dev", "--reason", "r", "--context-file", str(big))
    assert result.exit_code == 2
    assert "more than the 262144 a request may hold: give a shorter context" in result.output
    assert not (d / "requests").exists() or list((d / "requests").iterdir()) == []


# -- A.4: text no process can be given ---------------------------------------------------------

def test_nul_in_commands_and_env_and_bad_env_keys_are_validation_errors(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    d = make_pipeline("p", {
        "a": 'command = ["echo", "a\\u0000b"]\n',
        "b": 'command = "echo \\u0000"\nenv = { V = "x\\u0000y", "A=B" = "1", "" = "2", "N\\u0000" = "3" }\n',
    })
    root.config_file.write_text('[harnesses.h]\ncommand = ["x"]\nenv = { "K=V" = "1" }\n')
    assert cli("validate").stdout.splitlines() == [
        f"{root.path}/clowder.toml: harnesses.h.env.\"K=V\": an environment variable's name cannot be empty or "
        "hold '=' or a NUL character",
        f"{d}/jobs/a.toml: command[1]: contains a NUL character, which no command, path or environment can hold",
        f"{d}/jobs/b.toml: command: contains a NUL character, which no command, path or environment can hold",
        f"{d}/jobs/b.toml: env.\"\": an environment variable's name cannot be empty or hold '=' or a NUL character",
        f"{d}/jobs/b.toml: env.\"A=B\": an environment variable's name cannot be empty or hold '=' or a NUL "
        "character",
        f"{d}/jobs/b.toml: env.\"N\\u0000\": an environment variable's name cannot be empty or hold '=' or a NUL "
        "character",
        f"{d}/jobs/b.toml: env.V: contains a NUL character, which no command, path or environment can hold",
    ]


def test_run_refuses_a_nul_in_env_at_once(root: Root, make_pipeline: MakePipeline,
                                          clowder: Callable[..., subprocess.Popen[str]]) -> None:
    d = make_pipeline("p", {"a": 'command = "true"\nenv = { V = "x\\u0000y" }\n'})
    no_settle(root)
    started = time.monotonic()
    code, _, err = finish(clowder("run", "p"), timeout=25)  # a lost attempt would take 30 s
    assert time.monotonic() - started < 25
    assert code in (1, 2), err
    assert f"{d}/jobs/a.toml: env.V: contains a NUL character" in err


def test_an_attempt_that_cannot_start_fails_at_once_with_the_reason(
    root: Root, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validation refuses what Popen cannot take; this checks the driver's own guard, were a
    # check ever missing: the attempt fails at once with Popen's reason, and is not `lost` later.
    monkeypatch.setattr(jobchecks, "check_process_text", lambda data, w: [])
    make_pipeline("p", {"a": 'command = "true"\nenv = { V = "x\\u0000y" }\n'})
    lines: list[str] = []
    started = time.monotonic()
    ok = Driver(root, only=["p"], log=lines.append).serve(until_done=True)
    assert not ok
    assert time.monotonic() - started < 20
    a = jstatus(root, "p", "a")
    assert a.state is JobState.FAILED
    assert "could not start: embedded null byte" in a.message, a.message
    assert any("could not start attempt 1: embedded null byte" in line for line in lines), lines


# -- A.5: user text is never an option to git ---------------------------------------------------

def test_a_source_repo_that_looks_like_an_option_is_refused(root: Root, make_pipeline: MakePipeline,
                                                            cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'command = "true"\n'},
                      spec='prompt = "x"\nsource = { repo = "--upload-pack=touch pwned", ref = "-b" }\n')
    assert cli("validate").stdout.splitlines() == [
        f"{d}/pipeline.toml: source.ref: must not start with '-' (git would read it as an option)",
        f"{d}/pipeline.toml: source.repo: must not start with '-' (git would read it as an option)",
    ]


def test_git_never_reads_a_source_repo_as_an_option(root: Root, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    src = tmp_path / "src"
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    hostile = Source(f"--upload-pack=touch {pwned}; git-upload-pack {src}; echo ://")
    ws = root.pipeline("p").workspace("a")
    with pytest.raises(WorkspaceError) as e:
        workspace.prepare(workspace.AttemptRef(ws, "p", "a", 1),
                          (), workspace.Start(Identity("t", "t@t"), hostile, root.path))
    assert "--upload-pack" in str(e.value)  # git took it for a URL, and says so
    assert not pwned.exists()


def test_a_commit_in_a_status_file_must_be_an_object_id(root: Root, make_pipeline: MakePipeline,
                                                        cli: Invoke) -> None:
    # Commits recorded in status files are handed to git (merge, diff): never an option.
    d = make_pipeline("p", {"a": 'command = ["true"]\n'})
    write(d / "status" / "a.toml", 'state = "succeeded"\nattempt = 1\n[[attempts]]\nnumber = 1\n'
                                   'state = "succeeded"\ncommit = "--output=/tmp/x"\n')
    assert cli("validate").stdout.splitlines() == [
        f"{d}/status/a.toml: attempts[0].commit: '--output=/tmp/x' does not match ^[0-9a-f]{{40,64}}$",
    ]
    result = cli("diff", "p", "a")
    assert result.exit_code == 2
    assert f"{d}/status/a.toml: attempts[0].commit:" in result.output


# -- E.4: non-string env values reach the job as TOML writes them ---------------------------------

def test_env_values_that_are_not_strings_reach_the_job_as_toml_writes_them(
    root: Root, make_pipeline: MakePipeline, clowder: Callable[..., subprocess.Popen[str]]
) -> None:
    make_pipeline("p", {"a": 'command = "echo \\"$B $F $I $N $S\\" > env.txt"\n'
                             'env = { B = true, F = false, I = 1, N = 1.5, S = "s" }\n'})
    code, _, err = finish(clowder("run", "p"))
    assert code == 0, err
    assert (root.pipeline("p").workspace("a") / "env.txt").read_text() == "true false 1 1.5 s\n"


NESTED = "x = " + "[" * 1000 + "]" * 1000 + "\n"  # tomli recurses per level: a RecursionError


def test_toml_nested_too_deeply_is_a_problem_not_a_crash(root: Root, make_pipeline: MakePipeline,
                                                         cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'command = ["true"]\n' + NESTED})
    write(d / "status" / "b.toml", 'state = "pending"\n' + NESTED)
    write(d / "requests" / "r.toml", 'action = "cancel"\n' + NESTED)
    result = cli("validate")
    assert result.exit_code == 2
    assert f"{d / 'jobs' / 'a.toml'}: <toml>: syntax error: arrays or tables nested too deeply" in result.output
    assert f"{d / 'status' / 'b.toml'}: <toml>: syntax error: arrays or tables nested too deeply" in result.output
    no_settle(root)
    run = subprocess.run([sys.executable, "-m", "clowder", "run", "--root", str(root.path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "nested too deeply" in run.stderr


def test_a_directory_where_a_status_file_belongs_breaks_only_its_pipeline(root: Root,
                                                                          make_pipeline: MakePipeline) -> None:
    from tests.test_driver import pstate, wait_for

    for name in ("good", "bad"):
        make_pipeline(name, {"a": 'command = ["true"]\n', "b": 'command = ["true"]\nneeds = ["a"]\n'})
    blocker = root.pipeline("bad").status_dir / "a.toml"
    blocker.mkdir(parents=True)  # nothing can replace a directory with a file: its status cannot be written
    watch = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--sweep", "1s", "--root", str(root.path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: root.pipeline("good").status_file.exists() and pstate(root, "good").terminal,
                 what="the healthy pipeline to end")
        assert pstate(root, "good") is PipelineState.SUCCEEDED
        wait_for(lambda: root.pipeline("bad").status_file.exists() and pstate(root, "bad") is PipelineState.BROKEN,
                 what="the other to be marked broken")
        message = read_pipeline_status(root.pipeline("bad").status_file).message
        assert f"{blocker}: Is a directory" in message, message
        assert watch.poll() is None, "clowder watch died"
        blocker.rmdir()  # mended: the sweep tries it again
        wait_for(lambda: pstate(root, "bad") is PipelineState.SUCCEEDED, what="the mended pipeline to succeed")
    finally:
        watch.terminate()
        _, err = watch.communicate(timeout=30)
    assert "Traceback" not in err and watch.returncode == 0, err


def test_a_fifo_as_an_attempts_own_record_neither_hangs_nor_crashes(root: Root, make_pipeline: MakePipeline) -> None:
    d = make_pipeline("p", {"a": 'command = ["true"]\n'})
    write(d / "status" / "a.toml", 'state = "running"\nattempt = 1\n[[attempts]]\nnumber = 1\nstate = "running"\n'
                                   "started_at = 2026-01-01T00:00:00Z\n")
    write(d / "logs" / "a" / "1.log", "")
    os.mkfifo(d / "logs" / "a" / "1.run")  # nobody will ever write to it: reading it would block
    run = subprocess.run([sys.executable, "-m", "clowder", "run", "--root", str(root.path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    status = read_job_status(d / "status" / "a.toml", "a")
    assert status.state is JobState.SUCCEEDED and status.attempt == 1
