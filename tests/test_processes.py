"""Processes belong to their attempt: nothing an attempt started outlives it, an attempt is never
retried while anything of it runs, one that never started is started again, and one daemon
serves a root however its lock file is handled. Real processes, real signals, real daemons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clowder import processes, workspace
from clowder.driver import Driver
from clowder.processes import cgroup_base
from clowder.requests import drop
from clowder.state import Attempt, JobState, JobStatus, PipelineState, job_status_to_toml, utcnow
from clowder.template import init_root
from clowder.tree import Root
from tests.conftest import REPO, Invoke, MakePipeline, write
from tests.test_driver import daemon, jstatus, pstate, wait_for


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: it only waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def pid_in(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip().isdigit(), timeout=60, what=f"a pid in {path.name}")
    return int(path.read_text())


@pytest.fixture(params=["cgroup", "marker"])
def mechanism(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of finding an attempt's processes: its cgroup where the machine gives one, and
    the environment marker alone, as on a machine without (or for attempts of a daemon that
    had none)."""
    if request.param == "cgroup" and cgroup_base() is None:
        pytest.skip("no writable cgroup v2 hierarchy on this machine")
    if request.param == "marker":
        monkeypatch.setattr(processes, "cgroup_base", lambda: None)
    return str(request.param)


def run(root: Root, name: str = "p") -> bool:
    return Driver(root, only=[name], log=lambda s: None).serve(until_done=True)


# -- C.1: an attempt is not over while anything of it runs ------------------------------------

def test_a_killed_wrapper_is_retried_only_once_its_command_is_dead(root: Root, make_pipeline: MakePipeline,
                                                                   tmp_path: Path, mechanism: str) -> None:
    ticks = tmp_path / "ticks"  # outside the root
    first_pid = tmp_path / "first.pid"
    command = (f'if [ "$CLOWDER_ATTEMPT" = 2 ]; then echo "start 2" >> {ticks}; sleep 1; echo "end 2" >> {ticks}; '
               f'exit 0; fi; echo $$ > {first_pid}; i=0; while [ $i -lt 600 ]; do echo tick >> {ticks}; '
               'sleep 0.05; i=$((i+1)); done')
    make_pipeline("p", {"a": f"command = '{command}'\nretries = 1\nbackoff = {{ initial = \"0s\" }}\n"})
    run_file = root.pipeline("p").logs_dir / "a" / "1.run"
    with daemon(root):
        command_pid = pid_in(first_pid)
        wrapper = pid_in(run_file)
        os.kill(wrapper, signal.SIGKILL)
        wait_for(lambda: pstate(root, "p").terminal, timeout=60, what="the pipeline to end")
    lines = ticks.read_text().splitlines()
    assert "start 2" in lines and lines[-1] == "end 2"
    assert "tick" not in lines[lines.index("start 2"):], "attempt 1 still ran while attempt 2 ran"
    assert not alive(command_pid)
    a = jstatus(root, "p", "a")
    assert [x.state for x in a.attempts] == [JobState.LOST, JobState.SUCCEEDED]


def test_a_wrapper_killed_while_no_daemon_runs_is_ended_before_its_retry(root: Root, make_pipeline: MakePipeline,
                                                                         tmp_path: Path) -> None:
    ticks = tmp_path / "ticks"
    first_pid = tmp_path / "first.pid"
    command = (f'if [ "$CLOWDER_ATTEMPT" = 2 ]; then echo "start 2" >> {ticks}; sleep 1; echo "end 2" >> {ticks}; '
               f'exit 0; fi; echo $$ > {first_pid}; i=0; while [ $i -lt 600 ]; do echo tick >> {ticks}; '
               'sleep 0.05; i=$((i+1)); done')
    make_pipeline("p", {"a": f"command = '{command}'\nretries = 1\nbackoff = {{ initial = \"0s\" }}\n"})
    first = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        command_pid = pid_in(first_pid)
        wrapper = pid_in(root.pipeline("p").logs_dir / "a" / "1.run")
    finally:
        first.kill()
        first.wait()
    os.kill(wrapper, signal.SIGKILL)
    second = subprocess.run([sys.executable, "-m", "clowder", "run", "p", "--root", str(root.path)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    lines = ticks.read_text().splitlines()
    assert "tick" not in lines[lines.index("start 2"):], "attempt 1 still ran while attempt 2 ran"
    assert not alive(command_pid)
    assert [x.state for x in jstatus(root, "p", "a").attempts] == [JobState.LOST, JobState.SUCCEEDED]


# -- C.2: nothing an attempt started outlives it ----------------------------------------------

def test_a_background_child_does_not_outlive_a_succeeded_attempt(root: Root, make_pipeline: MakePipeline,
                                                                  tmp_path: Path, cli: Invoke, mechanism: str) -> None:
    child = tmp_path / "child.pid"
    make_pipeline("p", {"a": f"command = ['sh', '-c', 'sleep 37 & echo $! > {child}; echo ok']\n"})
    assert run(root)
    assert jstatus(root, "p", "a").state is JobState.SUCCEEDED
    assert cli("logs", "p", "a").output == "ok\n"
    assert not alive(int(child.read_text()))


# A child in its own session that ignores SIGTERM: out of reach of the attempt's process group.
ESCAPEE = """command = '''setsid sh -c 'trap "" TERM; echo $$ > {pidfile}; exec sleep 60' & sleep 60'''\n"""


def test_a_setsid_child_does_not_outlive_a_cancelled_attempt(root: Root, make_pipeline: MakePipeline,
                                                             tmp_path: Path, mechanism: str) -> None:
    pidfile = tmp_path / "escapee.pid"
    make_pipeline("p", {"a": ESCAPEE.format(pidfile=pidfile)})
    with daemon(root):
        escapee = pid_in(pidfile)
        drop(root, root.pipeline("p"), "cancel", "a")
        wait_for(lambda: pstate(root, "p").terminal, timeout=60, what="the pipeline to end")
    assert jstatus(root, "p", "a").state is JobState.CANCELLED
    assert not alive(escapee)


def test_a_setsid_child_does_not_outlive_a_timed_out_attempt(root: Root, make_pipeline: MakePipeline,
                                                             tmp_path: Path, mechanism: str) -> None:
    pidfile = tmp_path / "escapee.pid"
    make_pipeline("p", {"a": ESCAPEE.format(pidfile=pidfile) + 'timeout = "1s"\n'})
    assert not run(root)
    a = jstatus(root, "p", "a")
    assert a.state is JobState.FAILED and a.attempts[0].message.startswith("timed out after")
    assert not alive(int(pidfile.read_text()))


def test_a_double_forked_child_does_not_outlive_a_failed_attempt(root: Root, make_pipeline: MakePipeline,
                                                                 tmp_path: Path, mechanism: str) -> None:
    pidfile = tmp_path / "daemonized.pid"
    # The classic daemon: fork, setsid, the middle process exits; the grandchild is adopted by
    # init and shares neither the attempt's process group nor its session.
    command = f"(setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' &); while [ ! -s {pidfile} ]; do sleep 0.01; done"
    make_pipeline("p", {"a": f"command = '''{command}; exit 3'''\ntimeout = \"60s\"\n"})
    assert not run(root)
    assert jstatus(root, "p", "a").attempts[0].exit_code == 3
    assert not alive(pid_in(pidfile))


@pytest.mark.skipif(cgroup_base() is None, reason="no writable cgroup v2 hierarchy: the environment marker is the net")
def test_with_cgroups_a_child_that_clears_its_environment_is_caught_too(root: Root, make_pipeline: MakePipeline,
                                                                        tmp_path: Path) -> None:
    pidfile = tmp_path / "clean.pid"
    command = (f"env -i setsid /bin/sh -c 'echo $$ > {pidfile}; exec /bin/sleep 60' & "
               f"while [ ! -s {pidfile} ]; do sleep 0.01; done")
    make_pipeline("p", {"a": f"command = '''{command}'''\ntimeout = \"60s\"\n"})
    assert run(root)
    assert not alive(pid_in(pidfile))


def test_attempts_of_a_clowder_run_by_a_job_end_with_that_job(root: Root, make_pipeline: MakePipeline,
                                                             tmp_path: Path, mechanism: str) -> None:
    inner = init_root(tmp_path / "inner")
    pidfile = tmp_path / "inner.pid"
    write(inner.pipelines_dir / "q" / "pipeline.toml", 'prompt = "inner"\n')
    write(inner.pipelines_dir / "q" / "jobs" / "deep.toml", f'command = "echo $$ > {pidfile}; sleep 60"\n')
    clowder = f"{sys.executable} -m clowder run q --root {inner.path}"
    make_pipeline("p", {"a": f'command = "{clowder}"\ntimeout = "60s"\n'})
    with daemon(root):
        deep = pid_in(pidfile)
        drop(root, root.pipeline("p"), "cancel", "a")
        wait_for(lambda: pstate(root, "p").terminal, timeout=60, what="the pipeline to end")
    assert jstatus(root, "p", "a").state is JobState.CANCELLED
    assert not alive(deep)


# -- C.3: an attempt that never started is started again --------------------------------------

def _never_started(root: Root, attempts: tuple[Attempt, ...]) -> None:
    """What a daemon killed after creating attempt n's log file, before its wrapper wrote its pid,
    leaves behind: the status says running, the workspace is prepared, the log file exists, no
    run file."""
    paths = root.pipeline("p")
    n = attempts[-1].number
    status = JobStatus("a", JobState.RUNNING, n, attempts=attempts)
    write(paths.job_status_file("a"), job_status_to_toml(status))
    who = workspace.Identity("t", "t@example.com")
    for attempt in attempts:
        ref = workspace.AttemptRef(paths.workspace("a"), "p", "a", attempt.number)
        workspace.prepare(ref, (), workspace.Start(who))
        if attempt.state is not JobState.RUNNING:
            workspace.finish(ref, workspace.End(attempt.state.value, who))
    paths.log_file("a", n).parent.mkdir(parents=True, exist_ok=True)
    paths.log_file("a", n).touch()


def test_an_attempt_that_never_started_is_started_again_as_the_same_attempt(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    record = tmp_path / "record"
    make_pipeline("p", {"a": f'command = "echo ran $CLOWDER_ATTEMPT >> {record}"\nretries = 0\n'})
    _never_started(root, (Attempt(1, JobState.RUNNING, utcnow()),))
    t = time.monotonic()
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - t < 20  # not after the 30 s heartbeat timeout
    a = jstatus(root, "p", "a")
    assert [(x.number, x.state) for x in a.attempts] == [(1, JobState.SUCCEEDED)]
    assert record.read_text() == "ran 1\n"
    assert pstate(root, "p") is PipelineState.SUCCEEDED


def test_a_retry_that_never_started_is_started_again_as_that_retry(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    record = tmp_path / "record"
    make_pipeline("p", {"a": f'command = "echo ran $CLOWDER_ATTEMPT >> {record}; test $CLOWDER_ATTEMPT = 3"\n'
                             'retries = 2\nbackoff = { initial = "0s" }\n'})
    now = utcnow()
    _never_started(root, (Attempt(1, JobState.FAILED, now, now, exit_code=1),
                          Attempt(2, JobState.RUNNING, now, trigger="retry")))
    assert cli("run", "p").exit_code == 0
    a = jstatus(root, "p", "a")
    assert [(x.number, x.state, x.trigger) for x in a.attempts] == [
        (1, JobState.FAILED, "start"), (2, JobState.FAILED, "retry"), (3, JobState.SUCCEEDED, "retry")]
    assert record.read_text() == "ran 2\nran 3\n"


# -- C.4: one daemon per root, however the lock file is handled -------------------------------

def test_deleting_the_lock_file_does_not_let_a_second_daemon_in(root: Root, make_pipeline: MakePipeline,
                                                                tmp_path: Path) -> None:
    record = tmp_path / "record"
    gate = tmp_path / "gate"
    jobs = {f"j{i}": f'command = "echo $CLOWDER_JOB >> {record}; while [ ! -e {gate} ]; do sleep 0.05; done"\n'
            for i in range(3)}
    make_pipeline("p", jobs)
    first = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: record.exists() and len(record.read_text().splitlines()) == 3, timeout=60,
                 what="the jobs to start")
        root.lock_file.unlink()
        second = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = second.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate()
            pytest.fail("a second daemon serves the root")
        assert second.returncode == 2, err
        assert "another clowder daemon is serving this root" in err
        gate.touch()
        follower = subprocess.run([sys.executable, "-m", "clowder", "run", "p", "--root", str(root.path)],
                                  capture_output=True, text=True, timeout=120)
        assert follower.returncode == 0, follower.stderr
    finally:
        first.terminate()
        first.communicate(timeout=30)
    assert sorted(record.read_text().splitlines()) == ["j0", "j1", "j2"]
    for i in range(3):
        assert jstatus(root, "p", f"j{i}").attempt == 1


# -- F: the suite itself leaves nothing running -----------------------------------------------

def test_the_suite_fails_when_a_process_it_started_outlives_its_test(tmp_path: Path) -> None:
    tests = tmp_path / "suite"
    write(tests / "conftest.py", "from tests.conftest import *  # noqa: F403\n")
    write(tests / "test_leak.py", """\
        import subprocess

        # Started outside any test (at import), so no test's teardown ends it.
        LEAK = subprocess.Popen(["sleep", "61.5"])


        def test_passes() -> None:
            assert LEAK.poll() is None
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "processes started by the test suite were still running at its end (now killed):" in result.stdout
    assert "sleep 61.5" in result.stdout
