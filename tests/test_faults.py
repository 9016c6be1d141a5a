"""Faults of the machine under a running Clowder: a disk that fills during every kind of write, a
root that turns read-only, a wall clock that jumps. Each ends with nothing lost once the fault
clears: the pipeline succeeds, each attempt ran once, fsck is clean and the index equals a reindex.
(tests/test_disk_full.py holds the disk-full basics; its helpers are reused here.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clowder import index
from clowder.executor import read_pid, run_file
from clowder.index import reindex
from clowder.state import JobState, PipelineState
from clowder.template import init_root
from clowder.tree import Root
from tests.test_disk_full import clowder, disk, gate_job, kept_full, make, stop
from tests.test_driver import jstatus, pstate, wait_for

__all__ = ["disk"]  # a fixture, used by name


@pytest.fixture
def small(disk: Path) -> Root:
    """A root on the small tmpfs."""
    return init_root(disk / "root")

def watch(root: Root, log: Path, env: dict[str, str] | None = None, *args: str) -> subprocess.Popen[str]:
    """`clowder watch` on the root; what it says goes to `log` (off the faulty disk)."""
    with log.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "clowder", "watch", *args, "--root", str(root.path)],
                                stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env={**os.environ, **(env or {})})


def nothing_lost(root: Root, once: str) -> None:
    """The pipeline succeeded, each job in `once` ran exactly one attempt, fsck is clean and the
    index the daemon kept equals one rebuilt from the tree."""
    assert pstate(root, "p") is PipelineState.SUCCEEDED
    for job in once:
        attempts = jstatus(root, "p", job).attempts
        assert [(a.number, a.state) for a in attempts] == [(1, JobState.SUCCEEDED)], job
        assert attempts[0].commit, job
    fsck = clowder(root, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    kept = index.dump_index(root)
    reindex.rebuild(root)
    assert kept == index.dump_index(root)


# -- a full disk during every kind of write ----------------------------------------------------

def test_every_kind_of_write_waits_out_a_full_disk(small: Root, disk: Path, tmp_path: Path) -> None:
    """While the disk is full: a's wrapper records its exit (run record), the daemon commits its
    workspace and writes its status, b and c build their workspaces from it, `out` writes its log,
    and every one of these changes goes to the index."""
    gate = tmp_path / "gate"
    make(small, {
        "a": gate_job(gate),
        "b": 'command = "echo b > b.txt"\nneeds = ["a"]\n',
        "c": 'command = "cat b.txt > c.txt"\nneeds = ["b"]\nfrom = ["b"]\n',
        # Its output fills the log while the disk is full: that attempt fails; the retry, held back
        # until space returns, writes it all.
        "out": (f'command = "while [ ! -e {gate} ]; do sleep 0.05; done; head -c 600000 /dev/zero | tr x y"\n'
                'retries = 3\nbackoff = { initial = "1s" }\n'),
    })
    log = tmp_path / "watch.log"
    daemon = watch(small, log)
    try:
        wait_for(lambda: all(read_pid(run_file(small.pipeline("p").log_file(j, 1))) is not None for j in ("a", "out")),
                 timeout=60, what="a and out running")
        with kept_full(disk / "filler"):
            gate.touch()
            wait_for(lambda: "no space left on device" in log.read_text(), what="the daemon saying the disk is full")
            time.sleep(2)  # every write above comes due while the disk stays full
            assert daemon.poll() is None, log.read_text()
        wait_for(lambda: pstate(small, "p") is PipelineState.SUCCEEDED, timeout=90, what="the pipeline to succeed")
        wait_for(lambda: "space is back" in log.read_text(), what="the daemon saying space is back")
    finally:
        stop(daemon)
        gate.touch()
    text = log.read_text()
    assert "Traceback" not in text, text
    nothing_lost(small, "abc")
    out = jstatus(small, "p", "out")
    assert out.state is JobState.SUCCEEDED and out.attempts[-1].state is JobState.SUCCEEDED
    assert small.pipeline("p").log_file("out", out.attempt).stat().st_size >= 600_000


# -- a read-only root ---------------------------------------------------------------------------

def remount(mnt: Path, mode: str) -> None:
    proc = subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot remount {mnt} {mode}: {proc.stderr.strip()}")


def test_the_daemon_says_a_root_is_read_only_and_carries_on_when_it_is_writable(small: Root, disk: Path,
                                                                               tmp_path: Path) -> None:
    # The root turns read-only under a daemon that has work to do. (Remounting it read-only under
    # a running attempt is refused by the kernel, "mount point is busy": its log is open for
    # writing; so the daemon starts on it read-only, the way it finds a root an operator froze.)
    make(small, {"a": 'command = "echo a > a.txt"\n', "b": 'command = "echo b > b.txt"\nneeds = ["a"]\n'})
    log = tmp_path / "watch.log"
    remount(disk, "ro")
    try:
        daemon = watch(small, log)
        try:
            wait_for(lambda: "read-only file system: " in log.read_text(), timeout=30,
                     what="the daemon saying the root is read-only")
            time.sleep(1)
            assert daemon.poll() is None, log.read_text()
        finally:
            remount(disk, "rw")
        wait_for(lambda: small.pipeline("p").status_file.exists() and pstate(small, "p") is PipelineState.SUCCEEDED,
                 timeout=60, what="the pipeline to succeed")
    finally:
        stop(daemon)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "the disk is writable again" in text, text
    nothing_lost(small, "ab")


def test_commands_on_a_read_only_root_say_what_they_can(small: Root, disk: Path) -> None:
    make(small, {"a": 'command = "true"\n'})
    assert clowder(small, "run", "p").returncode == 0
    make(small, {"a": 'command = "true"\n', "b": 'command = "true"\nneeds = ["a"]\n'})  # b: left to run
    remount(disk, "ro")
    try:
        validate = clowder(small, "validate")
        status = clowder(small, "status", "p")
        run = clowder(small, "run", "p")
    finally:
        remount(disk, "rw")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    assert "succeeded" in status.stdout
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: read-only file system"), run.stderr
    again = clowder(small, "run", "p")
    assert again.returncode == 0, again.stderr
    nothing_lost(small, "ab")


# -- a wall clock that jumps --------------------------------------------------------------------

# The system clock cannot be set safely here, and libfaketime (Debian's 0.9.10) makes Python's
# time.sleep fail with EINVAL when it leaves the monotonic clock alone. So the daemon runs under this
# shim instead: its wall clock (time.time, time.time_ns and Clowder's utcnow, which every decision
# reads) is the real one plus the offset in a file the test changes; the monotonic clock is untouched,
# as when an operator or NTP steps the clock.
SHIM = """
import os, time
from datetime import timedelta

_FILE = os.environ["FAULTS_CLOCK_FILE"]
_time, _time_ns = time.time, time.time_ns


def _offset():
    try:
        with open(_FILE) as f:
            return float(f.read())
    except (OSError, ValueError):
        return 0.0


time.time = lambda: _time() + _offset()
time.time_ns = lambda: _time_ns() + int(_offset() * 1e9)

import clowder.state as _state

_utcnow = _state.utcnow
_state.utcnow = lambda: _utcnow() + timedelta(seconds=_offset())
"""
DAY = 86400


@pytest.fixture
def clock(tmp_path: Path) -> Path:
    """A file holding the wall clock's offset in seconds for a daemon run under the shim."""
    offset = tmp_path / "clock"
    offset.write_text("0\n")
    return offset


def faked(offset: Path) -> dict[str, str]:
    shim = offset.parent / "clock-shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    return {"PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]),
            "FAULTS_CLOCK_FILE": str(offset)}


def jump(offset: Path, seconds: float) -> None:
    offset.write_text(f"{seconds}\n")


@pytest.mark.parametrize("to", [400 * DAY, -400 * DAY], ids=["forward", "backward"])
def test_a_clock_jump_neither_times_out_nor_loses_a_running_attempt(root: Root, tmp_path: Path, clock: Path,
                                                                     to: float) -> None:
    gate = tmp_path / "gate"
    make(root, {"a": gate_job(gate) + 'timeout = "10m"\n', "b": 'command = "echo b > b.txt"\nneeds = ["a"]\n'})
    # The shortest heartbeat timeout clowder.toml allows: the wait below is past it a few times over.
    (root.path / "clowder.toml").write_text("heartbeat_timeout = 1\nsweep_interval = 1\n")
    log = tmp_path / "watch.log"
    daemon = watch(root, log, faked(clock))
    try:
        wait_for(lambda: read_pid(run_file(root.pipeline("p").log_file("a", 1))) is not None, what="a running")
        jump(clock, to)
        time.sleep(4)  # past the heartbeat timeout and a few sweeps, on the real clock
        assert jstatus(root, "p", "a").state is JobState.RUNNING, log.read_text()
        assert "the system clock was stepped by" in log.read_text()
        gate.touch()
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, timeout=60, what="the pipeline to succeed")
        assert daemon.poll() is None, log.read_text()
    finally:
        stop(daemon)
        gate.touch()
    assert "Traceback" not in log.read_text(), log.read_text()
    nothing_lost(root, "ab")


def test_a_running_attempt_times_out_on_time_after_the_clock_is_set_back(root: Root, tmp_path: Path,
                                                                         clock: Path) -> None:
    gate = tmp_path / "gate"
    make(root, {"a": gate_job(gate) + 'timeout = "3s"\n'})
    (root.path / "clowder.toml").write_text("sweep_interval = 1\n")
    log = tmp_path / "watch.log"
    daemon = watch(root, log, faked(clock))
    try:
        wait_for(lambda: read_pid(run_file(root.pipeline("p").log_file("a", 1))) is not None, what="a running")
        started = time.monotonic()
        jump(clock, -400 * DAY)
        # Its deadline was 3 s after its start on the old clock: 400 days ahead of the new one.
        wait_for(lambda: pstate(root, "p") is PipelineState.FAILED, timeout=60, what="a to time out")
        assert time.monotonic() - started < 30
        assert jstatus(root, "p", "a").attempts[-1].message == "timed out after 3.0s", log.read_text()
        assert "the system clock was stepped by -400d" in log.read_text()
        assert daemon.poll() is None, log.read_text()
    finally:
        stop(daemon)
        gate.touch()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.mark.parametrize("to", [400 * DAY, -400 * DAY], ids=["forward", "backward"])
def test_a_clock_jump_neither_starts_a_retry_early_nor_holds_it_forever(root: Root, tmp_path: Path, clock: Path,
                                                                        to: float) -> None:
    # The backoff outlasts the moment between seeing t retrying and the jump, by far even under load.
    make(root, {"t": 'command = "[ $CLOWDER_ATTEMPT -gt 1 ]"\nretries = 1\nbackoff = { initial = "2s" }\n'})
    log = tmp_path / "watch.log"
    daemon = watch(root, log, faked(clock))
    try:
        wait_for(lambda: root.pipeline("p").job_status_file("t").exists()
                 and jstatus(root, "p", "t").state is JobState.RETRYING, what="t retrying")
        jump(clock, to)
        waited = time.monotonic()
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, timeout=60, what="the retry to run and succeed")
        # Forward, the retry may come at once (the wall clock says its backoff is over), never
        # years later; backward, it must not wait 400 days.
        assert time.monotonic() - waited < 30
        assert daemon.poll() is None, log.read_text()
    finally:
        stop(daemon)
    assert "Traceback" not in log.read_text(), log.read_text()
    assert [a.state for a in jstatus(root, "p", "t").attempts] == [JobState.FAILED, JobState.SUCCEEDED]
    fsck = clowder(root, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
