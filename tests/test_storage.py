"""A root on shared storage: the daemon polls where file events cannot see other processes'
writes (forced here with --poll, the default with a Dask executor), and `clowder logs -f`
opens the log again as it follows, so a log another machine writes or replaces is followed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clowder.driver import Driver
from clowder.executor import LocalExecutor
from clowder.poller import Look, Poller, PollWatch
from clowder.state import JobState, PipelineState
from clowder.tree import Root
from clowder.watcher import Watcher
from tests.conftest import REPO, Invoke, MakePipeline, wait_for
from tests.test_driver import jstatus, pstate

GATE = "while [ ! -f {} ]; do sleep 0.05; done"


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def clowder(root: Root, *args: str) -> list[str]:
    return [sys.executable, "-m", "clowder", *args, "--root", str(root.path)]


@contextlib.contextmanager
def watching(root: Root, tmp_path: Path, *flags: str) -> Iterator[Path]:
    """A real `clowder watch FLAGS`, seen serving; killed at the end. Yields its log's path."""
    err = tmp_path / "watch.err"
    with err.open("wb") as f:
        proc = subprocess.Popen(clowder(root, "watch", *flags), stdout=subprocess.DEVNULL, stderr=f, env=_env())
    try:
        wait_for(lambda: "clowder watch serving" in err.read_text() or proc.poll() is not None, timeout=60,
                 what="clowder watch to serve")
        assert proc.poll() is None, err.read_text()
        yield err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def q_state(root: Root) -> PipelineState | None:
    return pstate(root, "q") if root.pipeline("q").status_file.exists() else None


def _set(root: Root, key: str, value: str) -> None:
    """Set a top-level key of clowder.toml, as a user would edit it."""
    lines = [line for line in root.config_file.read_text().splitlines() if not line.startswith(f"{key} =")]
    root.config_file.write_text(f"{key} = {value}\n" + "\n".join(lines) + "\n")


# -- the daemon polls ---------------------------------------------------------------------------

def test_a_spawn_made_just_before_its_attempt_ends_is_applied_when_the_daemon_polls(
        root: Root, make_pipeline: MakePipeline) -> None:
    # The fix-up is asked for a moment before the spawner exits: polled every second, the request
    # is seen after the end unless the end itself looks for it.
    make_pipeline("p", {
        # The fix-up (a copy of dev, with its regression context) makes the fix.
        "dev": 'command = "if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; then touch fixed.txt; fi"\n',
        "test": ('command = "if [ -f fixed.txt ]; then echo ok; else clowder spawn dev --reason broken; exit 1; fi"\n'
                 'needs = ["dev"]\n'),
    })
    result = subprocess.run(clowder(root, "run", "p", "--poll"), capture_output=True, text=True, timeout=300,
                            env=_env())
    assert result.returncode == 0, result.stderr
    assert "watching the tree by polling every 1.0s" in result.stderr
    test = jstatus(root, "p", "test")
    assert test.spawned == ("dev.r1",)
    assert [(a.number, a.state, a.trigger) for a in test.attempts] == [
        (1, JobState.FAILED, "start"), (2, JobState.SUCCEEDED, "regression")]


def test_a_cancel_from_another_process_reaches_a_polling_daemon(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    started = tmp_path / "started"
    make_pipeline("p", {"a": f"command = 'touch {started}; sleep 300'\n"})
    with watching(root, tmp_path, "--poll", "--sweep", "1h") as log:  # no sweep to catch what polling misses
        wait_for(started.exists, timeout=60, what="a to start")
        cancel = subprocess.run(clowder(root, "cancel", "p", "a"), capture_output=True, text=True, env=_env())
        assert cancel.returncode == 0, cancel.stderr
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.CANCELLED, timeout=60, what="a cancelled")
        assert "watching the tree by polling every 1.0s" in log.read_text()
        make_pipeline("q", {"b": 'command = "true"\n'})  # a new pipeline: seen in the listing of pipelines/
        wait_for(lambda: q_state(root) is PipelineState.SUCCEEDED, timeout=60, what="q to run")


def test_retries_of_a_finished_pipeline_wake_a_polling_daemon_each_time(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    # A finished pipeline is not watched: requests wake it through .clowder/wake/<pipeline>, a
    # file made by the first and only touched by the next (its time changes, not its name).
    runs = tmp_path / "runs"
    make_pipeline("p", {"a": f"command = 'echo x >> {runs}; [ $(wc -l < {runs}) -ge 3 ]'\n"})
    _set(root, "poll_interval", '"200ms"')
    with watching(root, tmp_path, "--poll", "--sweep", "1h") as log:  # no sweep to catch what polling misses
        for attempt in (1, 2):
            wait_for(lambda n=attempt: (pstate(root, "p") is PipelineState.FAILED  # type: ignore[misc]
                                        and jstatus(root, "p", "a").attempt == n),
                     timeout=60, what=f"attempt {attempt} failed")
            retry = subprocess.run(clowder(root, "retry", "p", "a"), capture_output=True, text=True, env=_env())
            assert retry.returncode == 0, retry.stderr
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, timeout=60, what="attempt 3 succeeded")
        assert "watching the tree by polling every 200ms" in log.read_text()
        # Taken once read: the poller opens every wake file at each look, and a root's would pile up.
        wait_for(lambda: not (root.state_dir / "wake" / "p").exists(), timeout=60, what="the wake file taken")
    assert jstatus(root, "p", "a").attempt == 3


def test_a_request_to_a_finished_pipeline_wakes_a_watching_daemon_and_its_wake_file_goes(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    make_pipeline("p", {"a": 'command = "true"\n'})
    with watching(root, tmp_path, "--sweep", "1h"):  # file events only: no sweep reads it again
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, timeout=60, what="p to succeed")
        rerun = subprocess.run(clowder(root, "rerun", "p", "a"), capture_output=True, text=True, env=_env())
        assert rerun.returncode == 0, rerun.stderr
        wait_for(lambda: jstatus(root, "p", "a").attempt == 2, timeout=60, what="the rerun to start attempt 2")
        wait_for(lambda: not (root.state_dir / "wake" / "p").exists(), timeout=60, what="the wake file taken")
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, timeout=60, what="p to succeed again")


def test_a_daemon_with_a_dask_executor_polls_by_default(root: Root, make_pipeline: MakePipeline,
                                                         tmp_path: Path) -> None:
    # No cluster here: the attempts run locally, but the daemon chooses as it would for Dask.
    text = root.config_file.read_text().replace('[executor]\nkind = "local"\n', "")
    root.config_file.write_text(text + '[executor]\nkind = "dask"\nscheduler = "tcp://127.0.0.1:1"\n')
    started = tmp_path / "started"
    make_pipeline("p", {"a": f"command = 'touch {started}; {GATE.format(tmp_path / 'go')}'\n"})
    lines: list[str] = []
    driver = Driver(root, log=lines.append, make_executor=LocalExecutor)
    assert driver.poll
    thread = threading.Thread(target=driver.serve, kwargs={"sweep": 3600}, daemon=True)  # only polling sees the cancel
    thread.start()
    try:
        wait_for(started.exists, timeout=60, what="a to start")
        assert "watching the tree by polling every 1.0s (poll_interval in clowder.toml)" in lines
        assert driver.watcher is not None and driver.watcher.how == "polling every 1.0s"
        cancel = subprocess.run(clowder(root, "cancel", "p", "a"), capture_output=True, text=True, env=_env())
        assert cancel.returncode == 0, cancel.stderr
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.CANCELLED, timeout=60, what="a cancelled")
    finally:
        (tmp_path / "go").touch()
        driver.stop()
        thread.join(timeout=30)
    assert not Driver(root, log=lines.append, make_executor=LocalExecutor, poll=False).poll  # --no-poll


def test_a_local_daemon_waits_for_file_events_unless_told_to_poll(root: Root) -> None:
    assert not Driver(root, log=lambda _: None).poll
    assert Driver(root, log=lambda _: None, poll=True).poll


def test_polling_a_root_of_many_pipelines_takes_one_thread(root: Root, make_pipeline: MakePipeline) -> None:
    # watchdog's PollingObserver ran a thread per watch (three per pipeline) and took minutes to
    # schedule 1,000 pipelines' watches.
    for i in range(300):
        (root.pipelines_dir / f"p{i}" / "jobs").mkdir(parents=True)
    before = set(threading.enumerate())  # threads of earlier tests may end meanwhile: count only new ones
    watcher = Watcher(root, lambda kind, name: None, poll=True, interval=0.05)
    watcher.start()
    try:
        for i in range(300):
            watcher.watch(f"p{i}")
        assert len(set(threading.enumerate()) - before) == 1
    finally:
        watcher.stop()


def test_the_poller_reports_what_the_daemon_acts_on_and_nothing_else(tmp_path: Path) -> None:
    d = tmp_path / "p"
    (d / "jobs").mkdir(parents=True)
    (d / "requests").mkdir()
    (d / "pipeline.toml").write_text('prompt = "x"\n')
    (d / "jobs" / "a.toml").write_text('command = "true"\n')
    seen: list[Path] = []
    poller = Poller(seen.append, interval=60)
    for watch in (PollWatch(d, Look.STAT, frozenset({"pipeline.toml"})), PollWatch(d / "jobs"),
                  PollWatch(d / "requests", Look.NAMES)):
        poller.schedule(watch)
    (d / "status.toml").write_text('state = "running"\n')  # the daemon's own writes: not news
    (d / "logs").mkdir()
    poller.look()
    assert seen == []
    with open(d / "jobs" / "a.toml", "a") as f:  # an edit in place: the same file, longer
        f.write('timeout = "1m"\n')
    (d / "requests" / "r1.toml").write_text('action = "cancel"\n')
    (d / "pipeline.toml").write_text('prompt = "y"\n')
    poller.look()
    assert sorted(seen) == [d / "jobs" / "a.toml", d / "pipeline.toml", d / "requests" / "r1.toml"]
    seen.clear()
    (d / "requests" / "r1.toml").unlink()
    poller.look()
    assert seen == [d / "requests" / "r1.toml"]


# -- poll_interval ------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "message"), [
    ('"10ms"', "poll_interval: must be from 50ms to 1m, got '10ms'"),
    ('"2m"', "poll_interval: must be from 50ms to 1m, got '2m'"),
    ("0", "poll_interval: must be >= 0.05, got 0"),
    ('"soon"', "poll_interval: invalid duration 'soon'"),
])
def test_a_bad_poll_interval_is_refused_naming_the_file_and_the_key(root: Root, cli: Invoke, value: str,
                                                                     message: str) -> None:
    _set(root, "poll_interval", value)
    result = cli("validate")
    assert result.exit_code == 2
    assert f"{root.config_file}: {message}" in result.output


def test_a_daemon_refuses_a_bad_poll_interval_naming_the_file_and_the_key(root: Root) -> None:
    _set(root, "poll_interval", '"10ms"')
    watch = subprocess.run(clowder(root, "watch", "--poll"), capture_output=True, text=True, env=_env(), timeout=60)
    assert watch.returncode == 2
    assert f"{root.config_file}: poll_interval: must be from 50ms to 1m, got '10ms'" in watch.stderr


def test_poll_interval_takes_a_duration(root: Root, cli: Invoke) -> None:
    from clowder.validate import load_config

    _set(root, "poll_interval", '"250ms"')
    assert cli("validate").exit_code == 0
    assert load_config(root).poll_interval == 0.25


# -- logs -f opens the log again ------------------------------------------------------------------

REPLACER = ('command = """\n'
            'log="$CLOWDER_ROOT/pipelines/$CLOWDER_PIPELINE/logs/$CLOWDER_JOB/$CLOWDER_ATTEMPT.log"\n'
            'echo one\n'
            '{gate}\n'
            # As a copy synced from another machine lands: a new file renamed over the log.
            '{{ cat "$log"; echo two; }} > "$log.new" && mv "$log.new" "$log"\n'
            'sleep 0.5\n'
            '{{ cat "$log"; echo three; }} > "$log.new" && mv "$log.new" "$log"\n'
            '"""\n')


def _follow(root: Root, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(clowder(root, "logs", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


def _follow_through_gate(root: Root, go: Path, printed: str) -> tuple[str, str, int]:
    """Once p/a's log reads `printed` (the job then waits at its gate), follow it with `clowder
    logs p a -f` from its first line, open the gate and take the rest: (all it printed, stderr,
    exit code)."""
    wait_for(lambda: root.pipeline("p").log_file("a", 1).exists()
             and root.pipeline("p").log_file("a", 1).read_text() == printed, timeout=60, what="a to print")
    follow = _follow(root, "p", "a", "-f")
    try:
        first = _first_line(follow)
        go.touch()
        out, err = follow.communicate(timeout=120)
    finally:
        go.touch()
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    return first + out, err, follow.returncode


def test_logs_follow_a_log_replaced_by_another_process(root: Root, make_pipeline: MakePipeline,
                                                       tmp_path: Path) -> None:
    go = tmp_path / "go"
    make_pipeline("p", {"a": REPLACER.format(gate=GATE.format(go))})
    with watching(root, tmp_path):
        wait_for(lambda: root.pipeline("p").log_file("a", 1).exists()
                 and root.pipeline("p").log_file("a", 1).read_text() == "one\n", timeout=60, what="a to print")
        followers = [_follow(root, "p", "a", "-f"), _follow(root, "p", "-f")]  # a job's log, a pipeline's
        try:
            firsts = [_first_line(f) for f in followers]  # they hold the log open now
            go.touch()
            ends = [f.communicate(timeout=120) for f in followers]
        finally:
            go.touch()
            for f in followers:
                if f.poll() is None:
                    f.kill()
                    f.wait()
    for prefix, first, (out, err), follow in zip(("", "a#1 | "), firsts, ends, followers, strict=True):
        assert (first + out).splitlines() == [f"{prefix}{word}" for word in ("one", "two", "three")], err
        assert follow.returncode == 0, err


def test_logs_follow_appends_written_by_another_process_through_its_own_opens(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    # Another machine's appends reach a reader on NFS only through a new open: each line here is
    # appended by its own short-lived process, and every one comes out once, in order.
    go = tmp_path / "go"
    make_pipeline("p", {"a": ('command = """\n'
                              'log="$CLOWDER_ROOT/pipelines/$CLOWDER_PIPELINE/logs/$CLOWDER_JOB/$CLOWDER_ATTEMPT.log"\n'
                              f'echo 0\n{GATE.format(go)}\n'
                              'for i in 1 2 3 4 5; do sh -c "echo $i >> $log"; sleep 0.1; done\n'
                              '"""\n')})
    with watching(root, tmp_path):
        out, err, code = _follow_through_gate(root, go, "0\n")
    assert out.splitlines() == [str(i) for i in range(6)], err
    assert code == 0, err


def test_a_followed_log_found_shorter_is_read_again_from_its_start(root: Root, make_pipeline: MakePipeline,
                                                                    tmp_path: Path) -> None:
    go = tmp_path / "go"
    make_pipeline("p", {"a": ('command = """\n'
                              'log="$CLOWDER_ROOT/pipelines/$CLOWDER_PIPELINE/logs/$CLOWDER_JOB/$CLOWDER_ATTEMPT.log"\n'
                              f'echo a long first line\n{GATE.format(go)}\n'
                              'echo new > "$log.new" && mv "$log.new" "$log"\n'
                              '"""\n')})
    with watching(root, tmp_path):
        out, err, _ = _follow_through_gate(root, go, "a long first line\n")
    assert out.splitlines() == ["a long first line", "new"], err


# -- the attempt's own loop reads its kill file by opening it -------------------------------------

def test_an_attempt_applies_a_kill_file_written_later_and_logs_nothing_while_there_is_none(tmp_path: Path) -> None:
    import re
    import signal

    from clowder.dask_executor import WRAPPER
    from clowder.fsio import atomic_write

    run, beat, kill, log = (tmp_path / f"1.{suffix}" for suffix in ("run", "beat", "kill", "log"))
    # The wrapper's own arguments before the command, as run_attempt passes them (their number
    # is the wrapper's `shift`).
    ours = [str(run), "", str(beat), str(kill), sys.executable, "p/a/1/test"]
    ours = ours[:int(re.search(r"shift (\d+)", WRAPPER)[1])]  # type: ignore[index]
    with log.open("wb") as out:
        argv = ["/bin/sh", "-c", WRAPPER, "clowder-attempt", *ours, "sh", "-c", "echo started; sleep 300"]
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: beat.exists() and log.read_text() == "started\n", timeout=30, what="the attempt's loop")
        time.sleep(2.2)  # two turns of its loop without a kill file: nothing said
        atomic_write(kill, "TERM\n")
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what a worker does once the wrapper has ended
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The shell may say the command was terminated; never that it could not open the kill file.
    assert log.read_text().startswith("started\n") and str(kill) not in log.read_text(), log.read_text()
    assert run.read_text().splitlines()[1] == "exit 143"  # the command ended by SIGTERM


def test_looking_at_a_record_never_opens_a_fifo_in_its_place(tmp_path: Path) -> None:
    # A FIFO where a status file belongs: opening it to read would let a writer blocked on it go on.
    from clowder.storage import fresh_stat

    fifo = tmp_path / "a.toml"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        with contextlib.suppress(OSError), open(fifo, "w"):
            opened.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.3)  # the writer waits in open() for a reader by now
    assert fresh_stat(fifo).st_ino == os.stat(fifo).st_ino
    assert not opened.wait(0.5)
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
    thread.join(timeout=10)


# -- the sweep ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [(), ("--sweep", "1s")], ids=["sweep_interval", "--sweep"])
def test_clowder_watch_sweeps_as_often_as_clowder_toml_or_its_flag_says(
        root: Root, tmp_path: Path, flags: tuple[str, ...]) -> None:
    # A sweep says again who serves the root: a watch.lock deleted by hand comes back at the next.
    _set(root, "sweep_interval", '"1s"' if not flags else '"1h"')
    with watching(root, tmp_path, *flags):
        wait_for(lambda: root.lock_file.exists() and root.lock_file.read_text().strip() != "", what="the lock file")
        root.lock_file.unlink()
        wait_for(root.lock_file.exists, timeout=20, what="a sweep to write watch.lock again (the default is 30 s)")
