"""`clowder run` beside a real `clowder watch`: it follows the daemon's decisions, shows the table
it shows when it schedules itself, and takes over when the daemon is killed."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clowder.state import JobState, PipelineState
from clowder.tree import Root
from tests.conftest import MakePipeline
from tests.test_driver import _alive, jstatus, pstate, wait_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
GATE = "while [ ! -f {} ]; do sleep 0.02; done"


def clowder(root: Root, *args: str) -> list[str]:
    return [sys.executable, "-m", "clowder", *args, "--root", str(root.path)]


@contextlib.contextmanager
def watching(root: Root, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `clowder watch`, started and seen serving; killed (-9 if need be) at the end."""
    err = tmp_path / "watch.err"
    with err.open("wb") as f:
        proc = subprocess.Popen(clowder(root, "watch"), stdout=subprocess.DEVNULL, stderr=f)
    try:
        wait_for(lambda: "clowder watch serving" in err.read_text() or proc.poll() is not None, timeout=30,
                 what="clowder watch to serve")
        assert proc.poll() is None, err.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


class Terminal:
    """A command run on a real pseudo-terminal, as a user runs it: what it printed, ANSI stripped."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     env={**os.environ, "COLUMNS": "160", "LINES": "50"})
        os.close(slave)
        self.raw = b""

    def read(self, timeout: float = 0.1) -> None:
        while select.select([self.master], [], [], timeout)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the other end is closed
                return
            if not chunk:
                return
            self.raw += chunk
            timeout = 0

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def wait_for(self, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.text:
            assert time.monotonic() < deadline, f"no {what!r} in:\n{self.text}"
            self.read()

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running after {timeout}s:\n{self.text}"
            self.read()
        self.read()
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for t in started:
        t.close()


def table_rows(text: str) -> list[list[str]]:
    """The rows of the last table the command drew (rich redraws it in place: the last header on)."""
    last = text[text.rindex("PIPELINE  JOB  STATE"):].splitlines()[1:]
    return [line.split() for line in last if line.strip() and not re.match(r"^\d{4}-", line)]


def end_job(root: Root, pipeline: str, job: str, gate: Path) -> None:
    """Let a gated job end, and make sure nothing of it is left running."""
    gate.touch()
    run = root.pipeline(pipeline).log_file(job, 1).with_suffix(".run")
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(run.read_text().split()[0])
        wait_for(lambda: not _alive(pid), timeout=10, what=f"{job} to end")


def test_run_beside_a_daemon_shows_its_decisions_and_the_final_table(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path, terminal: list[Terminal]) -> None:
    gate = tmp_path / "gate"
    make_pipeline("p", {"a": f'command = "{GATE.format(gate)}"\n',
                        "b": 'command = ["false"]\nneeds = ["a"]\nallow_failure = true\n',
                        "c": 'command = ["true"]\nneeds = ["b"]\n'})
    with watching(root, tmp_path):
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a running")
        t = Terminal(clowder(root, "run", "p"))
        terminal.append(t)
        try:
            t.wait_for("a clowder daemon is serving this root; following its decisions")
            t.wait_for("p/a started attempt 1")
            gate.touch()
            assert t.finish() == 0, t.text
        finally:
            end_job(root, "p", "a", gate)
    lines = [line.split(" ", 1)[1] for line in re.findall(r"\d{4}-\d\d-\d\dT\S+ [^\n]*", t.text)]
    assert lines == [
        "a clowder daemon is serving this root; following its decisions",
        "p: pipeline running",
        "p/a started attempt 1",
        "p/a succeeded (attempt 1)",
        "p/b started attempt 1",
        "p/b failed: exit code 1",
        "p/c started attempt 1",
        "p/c succeeded (attempt 1)",
        "p: pipeline succeeded",
        "p: succeeded",
    ], t.text
    rows = table_rows(t.text)
    assert [r[:3] for r in rows] == [["p", "succeeded"], ["a", "succeeded", "1"], ["b", "failed", "1"],
                                     ["c", "succeeded", "1"]], t.text


def test_run_takes_over_when_the_daemon_is_killed(root: Root, make_pipeline: MakePipeline, tmp_path: Path,
                                                  terminal: list[Terminal]) -> None:
    gate = tmp_path / "gate"
    make_pipeline("p", {"a": f'command = "{GATE.format(gate)}"\n', "b": 'command = ["true"]\nneeds = ["a"]\n'})
    with watching(root, tmp_path) as watch:
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a running")
        t = Terminal(clowder(root, "run", "p"))
        terminal.append(t)
        try:
            t.wait_for("following its decisions")
            watch.send_signal(signal.SIGKILL)
            watch.wait(timeout=30)
            t.wait_for("the clowder daemon is gone; running the pipelines here")
            t.wait_for("adopted running attempt 1")
            gate.touch()
            assert t.finish() == 0, t.text
        finally:
            end_job(root, "p", "a", gate)
    assert pstate(root, "p") is PipelineState.SUCCEEDED
    assert [a.state for a in jstatus(root, "p", "a").attempts] == [JobState.SUCCEEDED]  # the same attempt
    assert "p: succeeded" in t.text
    assert [r[:3] for r in table_rows(t.text)] == [["p", "succeeded"], ["a", "succeeded", "1"],
                                                   ["b", "succeeded", "1"]], t.text


def test_run_beside_a_daemon_ends_when_its_pipeline_is_blocked(root: Root, make_pipeline: MakePipeline,
                                                               tmp_path: Path) -> None:
    # A job file that stays invalid past `settle` blocks the pipeline: nothing more happens there
    # without a human, so `clowder run` following the daemon ends, as it does when it schedules.
    config = root.path / "clowder.toml"
    config.write_text(config.read_text().replace('settle = "2s"', 'settle = "0s"'))
    make_pipeline("p", {"a": 'command = ["true"]\n', "b": 'command = ["true"\n'})
    with watching(root, tmp_path):
        result = subprocess.run(clowder(root, "run", "p"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "error: p is blocked: " in result.stderr and "jobs/b.toml" in result.stderr
