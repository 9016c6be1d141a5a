"""The scheduler with real processes, files and watchdog observers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from clowder.driver import Driver
from clowder.requests import drop
from clowder.state import JobState, PipelineState, read_job_status, read_pipeline_status
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline, no_settle, wait_for, write


def pstate(root: Root, p: str) -> PipelineState:
    return read_pipeline_status(root.pipeline(p).status_file).state


def jstatus(root: Root, p: str, job: str):  # type: ignore[no-untyped-def]
    return read_job_status(root.pipeline(p).job_status_file(job), job)


@contextmanager
def daemon(root: Root, **kw: object) -> Iterator[Driver]:
    """A Driver serving the root in a thread, as `clowder watch` does."""
    lines: list[str] = []
    driver = Driver(root, log=lines.append, **kw)  # type: ignore[arg-type]
    thread = threading.Thread(target=driver.serve, daemon=True)
    thread.start()
    try:
        yield driver
    finally:
        driver.stop()
        thread.join(timeout=10)


def test_run_executes_a_pipeline_and_exits_zero(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ["sh", "-c", "echo hello from $CLOWDER_JOB attempt $CLOWDER_ATTEMPT"]\n',
                        "b": 'command = "echo $GREETING; pwd"\nneeds = ["a"]\nenv = { GREETING = "hi" }\n'})
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    assert pstate(root, "p") is PipelineState.SUCCEEDED
    a = jstatus(root, "p", "a")
    assert a.state is JobState.SUCCEEDED and a.attempt == 1 and a.attempts[0].exit_code == 0
    logs = cli("logs", "p", "a")
    assert logs.output == "hello from a attempt 1\n"
    b_log = cli("logs", "p", "b").output.splitlines()
    assert b_log == ["hi", str(root.pipeline("p").workspace("b"))]


def test_run_exits_one_when_a_job_fails(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ["false"]\n', "b": 'command = ["true"]\nneeds = ["a"]\n'})
    result = cli("run", "p")
    assert result.exit_code == 1
    assert jstatus(root, "p", "a").message == "attempt 1 failed: exit code 1"
    assert jstatus(root, "p", "b").state is JobState.SKIPPED
    assert read_pipeline_status(root.pipeline("p").status_file).message == "failed: a"


def test_max_parallel_is_never_exceeded(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    spans = tmp_path / "spans"
    job = f'command = ["sh", "-c", "s=$(date +%s%N); sleep 0.2; echo $s $(date +%s%N) >> {spans}"]\n'
    make_pipeline("p", {f"j{i}": job for i in range(6)})
    Driver(root, max_parallel=2, only=["p"], log=lambda s: None).serve(until_done=True)
    assert pstate(root, "p") is PipelineState.SUCCEEDED
    events = []
    for line in spans.read_text().splitlines():
        start, end = map(int, line.split())
        events += [(start, 1), (end, -1)]
    level = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        level += delta
        peak = max(peak, level)
    assert peak == 2


def test_retries_wait_a_growing_backoff(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["false"]\nretries = 2\nbackoff = { initial = "300ms", factor = 2.0 }\n'})
    Driver(root, only=["p"], log=lambda s: None).serve(until_done=True)
    a = jstatus(root, "p", "a")
    assert a.state is JobState.FAILED and a.attempt == 3
    assert [x.trigger for x in a.attempts] == ["start", "retry", "retry"]
    gaps = [(a.attempts[i + 1].started_at - a.attempts[i].ended_at).total_seconds() for i in range(2)]
    assert 0.3 <= gaps[0] < 0.55
    assert 0.6 <= gaps[1] < 0.9


def test_a_timeout_is_applied_on_time_when_the_daemon_polls(root: Root, make_pipeline: MakePipeline) -> None:
    # Polling sees no status or log writes, so nothing but the deadline itself wakes the loop: the
    # step that starts an attempt must ask to be woken at its timeout (it waited for the 30 s sweep).
    make_pipeline("p", {"a": 'command = "sleep 30"\ntimeout = "500ms"\n'})
    t = time.monotonic()
    Driver(root, only=["p"], log=lambda s: None, poll=True).serve(until_done=True)
    assert time.monotonic() - t < 10
    assert jstatus(root, "p", "a").attempts[0].message == "timed out after 500ms"


def test_timeout_kills_the_whole_process_group(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    make_pipeline("p", {"a": f'command = "sleep 30 & echo $! > {pidfile}; wait"\ntimeout = "500ms"\n'})
    t = time.monotonic()
    Driver(root, only=["p"], log=lambda s: None).serve(until_done=True)
    assert time.monotonic() - t < 10
    a = jstatus(root, "p", "a")
    assert a.state is JobState.FAILED
    assert a.attempts[0].message == "timed out after 500ms"
    assert not _alive(int(pidfile.read_text()))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_cancel_kills_a_grandchild_and_skips_dependents(root: Root, make_pipeline: MakePipeline,
                                                        tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    make_pipeline("p", {
        "a": f"""command = ["sh", "-c", "sh -c 'sleep 100 & echo $! > {pidfile}; wait'"]\n""",
        "b": 'command = ["true"]\nneeds = ["a"]\n',
        "c": 'command = ["true"]\nneeds = [{ job = "a", when = "always" }]\n',
    })
    with daemon(root):
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "", what="grandchild")
        grandchild = int(pidfile.read_text())
        drop(root, root.pipeline("p"), "cancel", "a")
        wait_for(lambda: pstate(root, "p").terminal, what="pipeline end")
    assert jstatus(root, "p", "a").state is JobState.CANCELLED
    assert jstatus(root, "p", "b").state is JobState.SKIPPED
    assert jstatus(root, "p", "c").state is JobState.SUCCEEDED
    assert pstate(root, "p") is PipelineState.CANCELLED
    wait_for(lambda: not _alive(grandchild), timeout=5, what="grandchild to die")


def test_cancel_command_with_no_daemon_is_applied_by_the_next_one(root: Root, make_pipeline: MakePipeline,
                                                                  cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n'})
    assert cli("cancel", "p").output == "cancel requested for p\n"
    assert cli("run", "p").exit_code == 1
    assert jstatus(root, "p", "a").state is JobState.CANCELLED
    assert pstate(root, "p") is PipelineState.CANCELLED


def test_retry_command_reruns_a_failed_job_and_what_it_gated(root: Root, make_pipeline: MakePipeline,
                                                             cli: Invoke, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    make_pipeline("p", {"a": f'command = "test -f {marker}"\n', "b": 'command = ["true"]\nneeds = ["a"]\n'})
    assert cli("run", "p").exit_code == 1
    marker.touch()
    assert cli("retry", "p", "a").exit_code == 0
    assert cli("run", "p").exit_code == 0
    a = jstatus(root, "p", "a")
    assert [x.state for x in a.attempts] == [JobState.FAILED, JobState.SUCCEEDED]
    assert a.attempts[1].trigger == "manual"
    assert jstatus(root, "p", "b").state is JobState.SUCCEEDED


def test_a_job_killed_with_sigkill_is_retried(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    pidfile = tmp_path / "job.pid"
    make_pipeline("p", {"a": f'command = "if [ -f {pidfile} ]; then exit 0; fi; echo $$ > {pidfile}; sleep 30"\n'
                              'retries = 1\nbackoff = { initial = "100ms" }\n'})
    with daemon(root):
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "", what="job pid")
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        wait_for(lambda: pstate(root, "p").terminal, what="pipeline end")
    a = jstatus(root, "p", "a")
    assert [x.state for x in a.attempts] == [JobState.FAILED, JobState.SUCCEEDED]
    assert a.attempts[0].signal == signal.SIGKILL
    assert a.attempts[0].message == "killed by signal 9 (SIGKILL)"


def test_a_broken_job_file_blocks_its_pipeline_while_another_completes(root: Root, make_pipeline: MakePipeline,
                                                                       tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make_pipeline("bad", {"a": f'command = "while [ ! -f {gate} ]; do sleep 0.05; done"\n',
                          "b": 'command = ["true"]\nneeds = ["a"]\n'})
    make_pipeline("good", {"a": f'command = "while [ ! -f {gate} ]; do sleep 0.05; done"\n',
                           "b": 'command = ["true"]\nneeds = ["a"]\n'})
    no_settle(root)
    with daemon(root):
        wait_for(lambda: jstatus(root, "bad", "a").state is JobState.RUNNING, what="bad/a running")
        job_b = root.pipeline("bad").jobs_dir / "b.toml"
        job_b.write_text("command = [oops\n")
        gate.touch()
        wait_for(lambda: pstate(root, "good").terminal and pstate(root, "bad") is PipelineState.BLOCKED,
                 what="good to end and bad to be blocked")
        wait_for(lambda: jstatus(root, "bad", "a").state.terminal, what="bad/a recorded")
    assert pstate(root, "good") is PipelineState.SUCCEEDED
    bad = read_pipeline_status(root.pipeline("bad").status_file)
    assert bad.state is PipelineState.BLOCKED
    assert bad.message.startswith(f"invalid spec: {job_b}: <toml>: syntax error: line 1")
    assert jstatus(root, "bad", "a").state is JobState.SUCCEEDED
    assert jstatus(root, "bad", "b").state is JobState.PENDING


def test_a_pipeline_stopped_by_a_broken_file_resumes_when_it_is_fixed(root: Root, make_pipeline: MakePipeline,
                                                                       tmp_path: Path) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n', "b": 'command = ["true"]\nneeds = ["a"]\n'})
    job_b = root.pipeline("p").jobs_dir / "b.toml"
    job_b.write_text("command = [oops\n")
    no_settle(root)
    with daemon(root):
        wait_for(lambda: root.pipeline("p").status_file.exists() and pstate(root, "p") is PipelineState.BLOCKED,
                 what="pipeline blocked")
        time.sleep(0.2)
        job_b.write_text('command = ["true"]\nneeds = ["a"]\n')
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, timeout=10, what="pipeline resumed")
    assert jstatus(root, "p", "b").state is JobState.SUCCEEDED


def test_a_job_added_while_running_takes_effect(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make_pipeline("p", {"a": f'command = "while [ ! -f {gate} ]; do sleep 0.05; done"\n'})
    with daemon(root):
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a running")
        write(root.pipeline("p").jobs_dir / "late.toml", 'command = ["true"]\nneeds = ["a"]\n')
        time.sleep(0.2)
        gate.touch()
        wait_for(lambda: pstate(root, "p").terminal, what="pipeline end")
    assert jstatus(root, "p", "late").state is JobState.SUCCEEDED


def test_a_second_daemon_exits_two_with_a_clear_message(root: Root, cli: Invoke) -> None:
    with daemon(root):
        wait_for(lambda: root.lock_file.exists() and root.lock_file.read_text().strip() != "", what="lock")
        result = subprocess.run([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "another clowder daemon is serving this root" in result.stderr
    # It never served: it must not say it does (the chaos run saw "serving" then this error).
    assert "clowder watch serving" not in result.stderr, result.stderr


def _clowder(root: Root, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "clowder", *args, "--root", str(root.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kill_after_lines", [2, 5])
def test_daemon_killed_with_sigkill_and_restarted_finishes_each_job_once(
    root: Root, make_pipeline: MakePipeline, tmp_path: Path, kill_after_lines: int
) -> None:
    record = tmp_path / "record"
    jobs = {}
    for i in range(6):
        cmd = f'echo "j{i} $CLOWDER_ATTEMPT start" >> {record}; sleep 0.3; echo "j{i} $CLOWDER_ATTEMPT end" >> {record}'
        jobs[f"j{i}"] = f"command = '{cmd}'\n" + (f'needs = ["j{i - 1}"]\n' if i else "")
    make_pipeline("p", jobs)
    first = _clowder(root, "watch")
    wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= kill_after_lines, what="progress")
    first.kill()
    first.wait()
    second = _clowder(root, "run", "p")
    _out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    lines = record.read_text().splitlines()
    assert sorted(lines) == sorted(f"j{i} 1 {what}" for i in range(6) for what in ("start", "end"))
    for i in range(6):
        s = jstatus(root, "p", f"j{i}")
        assert s.state is JobState.SUCCEEDED and s.attempt == 1


def test_no_zombies_are_left(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {f"j{i}": 'command = ["true"]\n' for i in range(5)})
    Driver(root, only=["p"], log=lambda s: None).serve(until_done=True)
    me = os.getpid()
    zombies = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] == "Z" and int(stat[1]) == me:
                zombies.append(proc.name)
    assert zombies == []


def test_sigterm_stops_the_daemon_and_the_next_one_adopts_the_running_job(
    root: Root, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    gate = tmp_path / "gate"
    make_pipeline("p", {"a": f'command = "echo start >> {record}; while [ ! -f {gate} ]; do sleep 0.05; done"\n',
                        "b": f'command = "echo b >> {record}"\nneeds = ["a"]\n'})
    first = _clowder(root, "watch")
    wait_for(lambda: record.exists(), what="a started")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=20)
    assert first.returncode == 0
    assert "received SIGTERM: no new attempts" in err
    assert jstatus(root, "p", "a").state is JobState.RUNNING
    gate.touch()
    second = _clowder(root, "run", "p")
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "p/a: adopted running attempt 1" in err or "p/a succeeded" in err
    assert record.read_text().splitlines() == ["start", "b"]
    assert jstatus(root, "p", "a").attempt == 1


def test_an_attempt_that_vanished_while_no_daemon_ran_is_lost_and_retried(
    root: Root, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    wrapper = tmp_path / "wrapper.pid"
    make_pipeline("p", {"a": f'command = "if [ -f {wrapper} ]; then exit 0; fi; echo $PPID > {wrapper}; sleep 30"\n'
                              'retries = 1\nbackoff = { initial = "100ms" }\n'})
    first = _clowder(root, "watch")
    wait_for(lambda: wrapper.exists() and wrapper.read_text().strip() != "", what="job running")
    first.kill()
    first.wait()
    os.killpg(int(wrapper.read_text()), signal.SIGKILL)  # the wrapper and the job: no exit record
    result = _clowder(root, "run", "p")
    _, err = result.communicate(timeout=60)
    assert result.returncode == 0, err
    a = jstatus(root, "p", "a")
    assert [x.state for x in a.attempts] == [JobState.LOST, JobState.SUCCEEDED]
    assert a.attempts[0].message == "the process vanished without an exit record"


def test_logs_follow_prints_until_the_attempt_ends(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "for i in 1 2 3; do echo line $i; sleep 0.2; done"\n'})
    with daemon(root):
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a running")
        follow = _clowder(root, "logs", "p", "a", "-f")
        out, _ = follow.communicate(timeout=30)
    assert out == "line 1\nline 2\nline 3\n"
    assert follow.returncode == 0


def test_run_writes_the_decision_log_to_a_file(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                               tmp_path: Path) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n', "b": 'command = ["false"]\nneeds = ["a"]\n'})
    log = tmp_path / "decisions.log"
    assert cli("run", "p", "--log-file", str(log)).exit_code == 1
    lines = log.read_text().splitlines()
    assert any(line.endswith("p/a succeeded (attempt 1)") for line in lines)
    assert any(line.endswith("p/b failed: exit code 1") for line in lines)
    assert any(line.endswith("p: pipeline failed: failed: b") for line in lines)
    assert all(line[:4].isdigit() and "T" in line.split()[0] for line in lines)


def test_status_shows_states_attempts_and_durations(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "sleep 0.3"\n', "b": 'command = ["false"]\nneeds = ["a"]\nretries = 1\n'
                        'backoff = { initial = "10ms" }\n'})
    cli("run", "p")
    rows = {line.split()[0]: line.split() for line in cli("status", "p").output.splitlines()[2:]}
    assert rows["a"][2:4] == ["succeeded", "1"]
    assert rows["a"][4].endswith("ms") and int(rows["a"][4][:-2]) >= 300
    assert rows["b"][2:4] == ["failed", "2"]


def test_a_changed_prompt_blocks_the_pipeline_with_a_message(root: Root, make_pipeline: MakePipeline,
                                                            tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make_pipeline("p", {"a": f'command = "while [ ! -f {gate} ]; do sleep 0.05; done"\n',
                        "b": 'command = ["true"]\nneeds = ["a"]\n'})
    no_settle(root)
    with daemon(root):
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a running")
        spec = root.pipeline("p").spec_file
        spec.write_text(spec.read_text().replace("do it", "do something else"))
        gate.touch()
        wait_for(lambda: jstatus(root, "p", "a").state.terminal, what="a recorded")
        wait_for(lambda: pstate(root, "p") is PipelineState.BLOCKED, what="pipeline blocked")
        time.sleep(0.3)
    status = read_pipeline_status(root.pipeline("p").status_file)
    assert "prompt: changed after the pipeline was created" in status.message
    assert jstatus(root, "p", "b").state is JobState.PENDING


def test_the_polling_observer_sees_a_new_pipeline(root: Root, make_pipeline: MakePipeline) -> None:
    with daemon(root, poll=True):
        time.sleep(0.2)
        make_pipeline("late", {"a": 'command = ["true"]\n'})
        wait_for(lambda: root.pipeline("late").status_file.exists() and pstate(root, "late").terminal,
                 timeout=20, what="late pipeline ran")
    assert pstate(root, "late") is PipelineState.SUCCEEDED


def test_an_attempt_recorded_but_never_launched_is_started_afresh(root: Root, make_pipeline: MakePipeline,
                                                                  cli: Invoke, tmp_path: Path) -> None:
    from clowder.state import Attempt, JobStatus, job_status_to_toml, utcnow

    record = tmp_path / "record"
    make_pipeline("p", {"a": f'command = "echo ran >> {record}"\n'})
    # What a daemon killed between writing `running` and forking leaves behind: no log file.
    status = JobStatus("a", JobState.RUNNING, 1, attempts=(Attempt(1, JobState.RUNNING, utcnow()),))
    write(root.pipeline("p").job_status_file("a"), job_status_to_toml(status))
    t = time.monotonic()
    assert cli("run", "p").exit_code == 0
    assert time.monotonic() - t < 10  # not after the 30 s heartbeat timeout
    a = jstatus(root, "p", "a")
    assert [(x.number, x.state) for x in a.attempts] == [(1, JobState.SUCCEEDED)]
    assert record.read_text() == "ran\n"


# -- one pipeline Clowder fails on never stops the others ---------------------------------------

# Every input known to crash Clowder gets fixed, so the rule is also tested with a defect planted
# in Clowder itself (through sitecustomize, in the daemon's own process): scheduling pipeline
# `bad` raises while the file `defect` beside its spec exists.
PLANTED = """\
import json
import os
import clowder.scheduler.step as scheduler
import clowder.validate as validate
def planted(module, name, pipeline_name):
    real = getattr(module, name)
    def broken(first, *args, **kwargs):
        if pipeline_name(first) == "bad" and os.path.exists({marker!r}):
            raise RuntimeError("planted defect")
        return real(first, *args, **kwargs)
    setattr(module, name, broken)
if {where!r} == "scheduling":
    planted(scheduler, "step_job", lambda scope: scope.view.name)
else:  # reading: before clowder.driver imports it
    planted(validate, "check_pipeline", lambda paths: paths.name)
"""


def _plant_defect(root: Root, monkeypatch: pytest.MonkeyPatch, where: str) -> Path:
    marker = write(root.pipeline("bad").dir / "defect", "")
    site = root.path.parent / "site"
    write(site / "sitecustomize.py", PLANTED.format(marker=str(marker), where=where))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return marker


def _two_pipelines(root: Root, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch,
                   where: str = "scheduling") -> Path:
    for name in ("good", "bad"):
        make_pipeline(name, {"a": 'command = ["true"]\n', "b": 'command = ["true"]\nneeds = ["a"]\n'})
    return _plant_defect(root, monkeypatch, where)


@pytest.mark.parametrize("where", ["scheduling", "reading"])
def test_a_pipeline_clowder_fails_on_is_broken_and_watch_serves_the_others(
        root: Root, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    marker = _two_pipelines(root, make_pipeline, monkeypatch, where)
    watch = _clowder(root, "watch", "--sweep", "1s")
    try:
        wait_for(lambda: root.pipeline("good").status_file.exists() and pstate(root, "good").terminal,
                 what="the healthy pipeline to end")
        assert pstate(root, "good") is PipelineState.SUCCEEDED
        wait_for(lambda: root.pipeline("bad").status_file.exists() and pstate(root, "bad") is PipelineState.BROKEN,
                 what="the other to be marked broken")
        message = read_pipeline_status(root.pipeline("bad").status_file).message
        doing = "scheduling it" if where == "scheduling" else "reading its files"
        assert message.startswith(f"Clowder failed {doing}: RuntimeError: planted defect; traceback in ")
        crash_logs = list((root.state_dir / "crash").glob("*.log"))
        assert len(crash_logs) == 1 and f"traceback in {crash_logs[0]}" in message
        status = subprocess.run([sys.executable, "-m", "clowder", "status", "--root", str(root.path)],
                                capture_output=True, text=True, timeout=60)
        if status.returncode == 0:
            row = next(line for line in status.stdout.splitlines() if line.startswith("bad "))
            assert row.split()[1] == "broken" and "planted defect" in row
            assert row.split()[2:4] in (["2", "pending"], ["1", "pending,"])  # its jobs are still shown
        else:  # `clowder status` reads the same spec file and fails on it too, but as a crash should
            assert status.returncode == 3 and len(status.stderr.splitlines()) == 1, status.stderr
        logs = len(list((root.state_dir / "crash").glob("*.log")))
        time.sleep(1.5)  # a sweep tries it again: the same failure writes no second crash log
        assert len(list((root.state_dir / "crash").glob("*.log"))) == logs
        assert watch.poll() is None, "clowder watch died"
        marker.unlink()  # mended: the sweep tries it again
        wait_for(lambda: pstate(root, "bad") is PipelineState.SUCCEEDED, what="the mended pipeline to succeed")
    finally:
        watch.terminate()
        _, err = watch.communicate(timeout=30)
    assert "Traceback" not in err
    assert sum(" bad: broken: Clowder failed " in line for line in err.splitlines()) == 1
    assert watch.returncode == 0


def test_run_exits_three_when_clowder_fails_on_a_pipeline(root: Root, make_pipeline: MakePipeline,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _two_pipelines(root, make_pipeline, monkeypatch)
    result = subprocess.run([sys.executable, "-m", "clowder", "run", "--root", str(root.path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: bad is broken: Clowder failed scheduling it: RuntimeError: planted defect; " in result.stderr
    assert pstate(root, "good") is PipelineState.SUCCEEDED


def test_a_timed_out_attempt_whose_exit_record_is_lost_says_the_same_everywhere(
        root: Root, make_pipeline: MakePipeline) -> None:
    # On SIGTERM the command kills its wrapper (the attempt's recorder) first: the attempt was
    # killed for its timeout and left no exit record. Its status, its commit's trailer and its
    # error.json must tell one story.
    make_pipeline("p", {"a": """command = ["sh", "-c", "trap 'kill -9 $PPID; exit 1' TERM; sleep 30 & wait"]\n"""
                             'timeout = "500ms"\n'})
    Driver(root, only=["p"], log=lambda s: None).serve(until_done=True)
    a = jstatus(root, "p", "a")
    ws = root.pipeline("p").workspace("a")
    error = json.loads((ws / ".clowder" / "a" / "error.json").read_text())
    trailer = subprocess.run(["git", "log", "-1", "--format=%(trailers:key=Clowder-State,valueonly)"], cwd=ws,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert (a.attempts[0].state.value, a.attempts[0].message) == ("lost", "timed out after 500ms")
    assert a.message == "attempt 1 lost: timed out after 500ms"
    assert (trailer, error["reason"]) == ("lost", "timed out after 500ms")
