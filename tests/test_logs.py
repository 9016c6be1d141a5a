"""`clowder logs` over a whole pipeline and across a job's attempts, with a real daemon
(`clowder watch`), real jobs writing slowly, and `clowder logs -f` as its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clowder.driver import Driver
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline, wait_for

SLOW = 'command = "for i in 1 2 3; do echo {name} $i; sleep 0.3; done"\n'
# A line written in two writes, and an é whose two bytes are written apart: both come out whole.
SPLIT = ("command = \"printf 'half'; sleep 0.4; printf ' a line\\\\n'; "
         "printf '\\\\303'; sleep 0.4; printf '\\\\251t\\\\n'\"\n")


def flaky(marker: Path) -> str:
    """Fails its first attempt, then succeeds: a retry."""
    return (f'command = "if [ -f {marker} ]; then echo second try; else touch {marker}; echo first try; exit 1; fi"\n'
            'retries = 1\nbackoff = { initial = "300ms" }\n')


def clowder(root: Root, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "clowder", *args], cwd=root.path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@contextmanager
def watching(root: Root) -> Iterator[subprocess.Popen[str]]:
    """The real daemon, stopped (SIGTERM) when the block ends."""
    daemon = clowder(root, "watch")
    try:
        yield daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)


def by_label(out: str) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for line in out.splitlines():
        label, text = line.split(" | ", 1)
        lines.setdefault(label.strip(), []).append(text)
    return lines


def test_following_a_pipeline_prints_every_jobs_lines_prefixed_until_it_has_ended(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    make_pipeline("p", {"a": SLOW.format(name="a"), "b": SLOW.format(name="b"), "split": SPLIT,
                        "flaky": flaky(tmp_path / "tried"), "last": 'command = "echo done"\nneeds = ["a", "b"]\n'})
    follow = clowder(root, "logs", "p", "-f")  # before anything runs: it waits for the jobs to start
    with watching(root):
        out, err = follow.communicate(timeout=120)
    assert follow.returncode == 0, err
    assert by_label(out) == {"a#1": ["a 1", "a 2", "a 3"], "b#1": ["b 1", "b 2", "b 3"],
                             "split#1": ["half a line", "ét"], "flaky#1": ["first try"],
                             "flaky#2": ["second try"], "last#1": ["done"]}
    assert {line.index(" | ") for line in out.splitlines()} == {len("flaky#1")}  # aligned
    lines = out.splitlines()
    assert lines.index("a#1     | a 3") < lines.index("last#1  | done")  # as written: last ran after a


def test_following_a_pipeline_that_fails_exits_one(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"ok": 'command = "echo fine"\n', "bad": 'command = "echo oops; exit 3"\n'})
    with watching(root):
        follow = clowder(root, "logs", "p", "-f")
        out, err = follow.communicate(timeout=120)
    assert follow.returncode == 1, err
    assert sorted(out.splitlines()) == ["bad#1 | oops", "ok#1  | fine"]


def test_a_pipelines_logs_are_each_jobs_latest_attempt_in_the_order_they_started(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    make_pipeline("p", {"first": 'command = "echo one; echo two"\n', "flaky": flaky(tmp_path / "tried") +
                        'needs = ["first"]\n', "third": 'command = "printf no-newline"\nneeds = ["flaky"]\n'})
    Driver(root, log=lambda s: None).serve(until_done=True)
    result = cli("logs", "p")
    assert (result.exit_code, result.output) == (0, "first#1 | one\nfirst#1 | two\nflaky#2 | second try\n"
                                                    "third#1 | no-newline\n")
    assert (cli("logs", "p", "--attempt", "1").exit_code, cli("logs", "p", "--attempt", "1").stderr) == (
        2, "error: --attempt needs a JOB\n")


def gated(go: Path, last: str) -> str:
    """Prints its attempt, waits for `go`, then fails its first attempt and ends with `last` after.
    Nothing else is written before `go`: a test's readline() buffers nothing communicate() would miss."""
    return (f'command = "echo try $CLOWDER_ATTEMPT; while [ ! -f {go} ]; do sleep 0.05; done; '
            f'[ $CLOWDER_ATTEMPT -gt 1 ] && exit {last}; exit 1"\nretries = 1\nbackoff = {{ initial = "100ms" }}\n')


def test_following_a_job_goes_on_into_its_retry_until_it_has_ended(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    make_pipeline("p", {"flaky": gated(tmp_path / "go", last="0")})
    with watching(root):
        wait_for(lambda: root.pipeline("p").log_file("flaky", 1).exists(), what="the first attempt running")
        follow = clowder(root, "logs", "p", "flaky", "-f")
        pinned = clowder(root, "logs", "p", "flaky", "--attempt", "1", "-f")  # that attempt only
        assert follow.stdout is not None and follow.stdout.readline() == "try 1\n"
        (tmp_path / "go").touch()
        out, err = follow.communicate(timeout=120)
        assert (follow.returncode, out) == (0, "--- flaky attempt 2 (retry) ---\ntry 2\n"), err
        out, err = pinned.communicate(timeout=120)
        assert (pinned.returncode, out) == (1, "try 1\n"), err  # it failed


def test_following_a_job_that_fails_exits_one(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    make_pipeline("p", {"bad": gated(tmp_path / "go", last="3")})
    with watching(root):
        wait_for(lambda: root.pipeline("p").log_file("bad", 1).exists(), what="the first attempt running")
        follow = clowder(root, "logs", "p", "bad", "-f")
        assert follow.stdout is not None and follow.stdout.readline() == "try 1\n"
        (tmp_path / "go").touch()
        out, err = follow.communicate(timeout=120)
    assert (follow.returncode, out) == (1, "--- bad attempt 2 (retry) ---\ntry 2\n"), err


def test_a_pipeline_that_does_not_exist_is_exit_two(root: Root, cli: Invoke) -> None:
    assert not os.path.exists(root.pipelines_dir / "nope")
    result = cli("logs", "nope", "-f")
    assert result.exit_code == 2 and "no such pipeline" in result.stderr


def test_a_regression_loop_is_followed_into_the_fixup_job_and_the_spawners_next_attempt(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make_pipeline("p", {
        "dev": 'command = "case $CLOWDER_JOB in *.r*) echo fixing; touch fixed.txt;; *) echo dev;; esac"\n',
        "test": 'command = "if [ -f fixed.txt ]; then echo ok; else echo broken; '
                f'clowder spawn dev --reason no >/dev/null; while [ ! -f {gate} ]; do sleep 0.05; done; exit 1; fi"\n'
                'needs = ["dev"]\n'})
    whole = clowder(root, "logs", "p", "-f")
    with watching(root):
        wait_for(lambda: root.pipeline("p").log_file("test", 1).exists(), what="the test's first attempt")
        one = clowder(root, "logs", "p", "test", "-f")
        assert one.stdout is not None and one.stdout.readline() == "broken\n"
        gate.touch()
        out, err = one.communicate(timeout=120)
        assert (one.returncode, out) == (0, "--- test attempt 2 (regression) ---\nok\n"), err
        out, err = whole.communicate(timeout=120)
    assert whole.returncode == 0, err
    assert by_label(out) == {"dev#1": ["dev"], "test#1": ["broken"], "dev.r1#1": ["fixing"], "test#2": ["ok"]}
