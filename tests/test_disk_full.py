"""A full disk on a real small tmpfs: the daemon pauses, loses nothing and carries on by itself
when space returns; `clowder run`, `fsck` and `reindex` stop with one clear line."""

from __future__ import annotations

import errno
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

from clowder.diskfull import Space
from clowder.executor import read_exit, read_pid, run_file
from clowder.fsio import Writer
from clowder.state import JobState, PipelineState
from clowder.template import init_root
from clowder.tree import Root
from tests.conftest import write
from tests.test_driver import jstatus, pstate, wait_for


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs mounted for this test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def root(disk: Path) -> Root:
    return init_root(disk / "root")


def fill(path: Path) -> None:
    """Write `path` until the file system has not one page left."""
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break


@contextmanager
def kept_full(path: Path) -> Iterator[None]:
    """Fill the disk, and keep it full (as another program would) until the block ends: what
    Clowder frees, such as an index it gives up, is taken again at once. Then free it all."""
    done = threading.Event()

    def keep() -> None:
        with open(path, "ab", buffering=0) as f:
            while not done.wait(0.001):
                try:
                    f.write(bytes(4096))
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise

    fill(path)
    thread = threading.Thread(target=keep, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        path.unlink()


def clowder(root: Root, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clowder", *args, "--root", str(root.path)],
                          capture_output=True, text=True, timeout=timeout)


def gate_job(gate: Path) -> str:
    return f'command = "while [ ! -e {gate} ]; do sleep 0.05; done"\n'


FANOUT = {
    "b": 'command = "echo $CLOWDER_JOB > $CLOWDER_JOB.txt"\nneeds = ["a"]\n',
    "c": 'command = "echo $CLOWDER_JOB > $CLOWDER_JOB.txt"\nneeds = ["a"]\n',
    "d": 'command = "echo $CLOWDER_JOB > $CLOWDER_JOB.txt"\nneeds = ["a"]\n',
    "e": 'command = "cat b.txt c.txt d.txt > e.txt"\nneeds = ["b", "c", "d"]\n',
    # Fails its first attempt before the disk fills; its retry (a status write and a workspace
    # update) comes while the disk is full.
    "t": 'command = "[ $CLOWDER_ATTEMPT -gt 1 ]"\nretries = 1\nbackoff = { initial = "1s" }\n',
}


def make(root: Root, jobs: dict[str, str]) -> None:
    d = root.pipelines_dir / "p"
    write(d / "pipeline.toml", 'prompt = "fill the disk"\n')
    for job, text in jobs.items():
        write(d / "jobs" / f"{job}.toml", text)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_daemon_waits_out_a_full_disk_and_loses_nothing(root: Root, disk: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make(root, {"a": gate_job(gate), **FANOUT})
    log = tmp_path / "watch.log"  # off the full disk, to read what the daemon said
    with log.open("w") as err:
        daemon = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)],
                                  stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        wait_for(lambda: read_pid(run_file(root.pipeline("p").log_file("a", 1))) is not None
                 and jstatus(root, "p", "t").state is JobState.RETRYING, what="a running, t retrying")
        with kept_full(disk / "filler"):
            # t's retry comes due: its status and its workspace need space.
            wait_for(lambda: "no space left on device" in log.read_text(), what="the daemon saying the disk is full")
            gate.touch()  # a ends: its commit needs space too
            run = run_file(root.pipeline("p").log_file("a", 1))
            wait_for(lambda: read_exit(run) is not None, what="a's process to end")
            time.sleep(0.5)
            assert daemon.poll() is None, log.read_text()
            assert jstatus(root, "p", "a").state is not JobState.FAILED
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, timeout=60, what="the pipeline to succeed")
        assert daemon.poll() is None
    finally:
        stop(daemon)
        gate.touch()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert text.count("no space left on device") >= 1
    assert "space is back" in text, text
    for job in "abcde":
        attempts = jstatus(root, "p", job).attempts
        assert [(a.number, a.state) for a in attempts] == [(1, JobState.SUCCEEDED)], (job, text)
        assert attempts[0].commit
    assert [a.state for a in jstatus(root, "p", "t").attempts] == [JobState.FAILED, JobState.SUCCEEDED]
    assert (root.pipeline("p").workspace("e") / "e.txt").read_text() == "b\nc\nd\n"
    fsck = clowder(root, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert not [p.name for p in root.pipeline("p").workspaces_dir.iterdir() if p.name.endswith(".tmp")]


def test_run_stops_with_one_line_on_a_full_disk_and_the_next_run_finishes(root: Root, disk: Path,
                                                                           tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make(root, {"a": gate_job(gate), "b": 'command = "echo b > b.txt"\nneeds = ["a"]\n'})
    run = subprocess.Popen([sys.executable, "-m", "clowder", "run", "p", "--root", str(root.path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: read_pid(run_file(root.pipeline("p").log_file("a", 1))) is not None, what="a running")
        with kept_full(disk / "filler"):
            gate.touch()
            _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: no space left on device"), err
    assert "Traceback" not in err
    again = clowder(root, "run", "p")
    assert again.returncode == 0, again.stderr
    assert [(a.number, a.state) for a in jstatus(root, "p", "a").attempts] == [(1, JobState.SUCCEEDED)]
    assert jstatus(root, "p", "b").state is JobState.SUCCEEDED


@pytest.mark.parametrize("command", ["reindex", "fsck"])
def test_index_commands_stop_with_one_line_on_a_full_disk(root: Root, disk: Path, command: str) -> None:
    make(root, {"a": 'command = "true"\n'})
    assert clowder(root, "run", "p").returncode == 0
    fill(disk / "filler")
    done = clowder(root, command)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: no space left on device"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_status_writer_retries_a_write_until_space_returns(disk: Path) -> None:
    lines: list[str] = []
    space = Space(disk, lines.append, interval=0.05)
    writer = Writer(disk, on_full=space.wait_for_space)
    try:
        fill(disk / "filler")
        writer.write(disk / "status.toml", "state = 'running'\n")
        wait_for(lambda: space.full, what="the writer to find the disk full")
        writer.write(disk / "status.toml", "state = 'succeeded'\n")  # queued behind it, not an error
        writer.write(disk / "other.toml", "x = 1\n")
        assert not (disk / "status.toml").exists()
        (disk / "filler").unlink()
        writer.flush()
    finally:
        writer.close()
        space.close()
    assert (disk / "status.toml").read_text() == "state = 'succeeded'\n"
    assert (disk / "other.toml").read_text() == "x = 1\n"
    assert [line.split(":")[0] for line in lines] == ["no space left on device", "space is back"], lines


def test_a_daemon_stopped_while_the_disk_is_full_leaves_the_work_to_the_next(root: Root, disk: Path,
                                                                              tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make(root, {"a": gate_job(gate), "b": 'command = "echo b > b.txt"\nneeds = ["a"]\n'})
    log = tmp_path / "watch.log"
    with log.open("w") as err:
        daemon = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)],
                                  stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        wait_for(lambda: read_pid(run_file(root.pipeline("p").log_file("a", 1))) is not None, what="a running")
        with kept_full(disk / "filler"):
            gate.touch()
            wait_for(lambda: "no space left on device" in log.read_text(), what="the daemon saying the disk is full")
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=20) == 0, log.read_text()
    finally:
        stop(daemon)
        gate.touch()
    assert "Traceback" not in log.read_text()
    again = clowder(root, "run", "p")
    assert again.returncode == 0, again.stderr
    assert [(a.number, a.state) for a in jstatus(root, "p", "a").attempts] == [(1, JobState.SUCCEEDED)]
    assert jstatus(root, "p", "b").state is JobState.SUCCEEDED
