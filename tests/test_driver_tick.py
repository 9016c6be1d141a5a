"""The driver's decisions through its tick, with a made-up clock and the in-memory executor
(tests/memory_executor.py): the test decides when each attempt ends. Workspaces, commits and
status files are real; only the processes are not (test_driver.py runs real ones)."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clowder.driver import Driver
from clowder.driver.events import FilesChanged
from clowder.requests import drop
from clowder.state import JobState, JobStatus, PipelineState, Trigger, read_job_status, read_pipeline_status
from clowder.tree import Root
from tests.conftest import MakePipeline
from tests.memory_executor import MemoryExecutor

T0 = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def driver(root: Root, executor: MemoryExecutor, lines: list[str] | None = None) -> Driver:
    d = Driver(root, log=(lines if lines is not None else []).append, make_executor=executor.attach)
    d.discover()
    return d


def tick(d: Driver, now: datetime) -> datetime | None:
    d.drain()
    return d.tick(now)


def job(root: Root, name: str, p: str = "p") -> JobStatus:
    return read_job_status(root.pipeline(p).job_status_file(name), name)


def test_a_failed_attempt_is_retried_after_its_backoff_and_not_before(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["x"]\nretries = 2\nbackoff = { initial = "10s", factor = 2.0 }\n'})
    ex = MemoryExecutor()
    d = driver(root, ex)
    tick(d, at(0))
    ex.wait_started("p", "a", 1)
    ex.finish("p", "a", 1, 1, at(1))
    assert tick(d, at(1)) == at(11)
    a = job(root, "a")
    assert (a.state, a.message) == (JobState.RETRYING, "attempt 1 failed: exit code 1; retry 1 of 2 in 10.0s")
    tick(d, at(10.9))
    assert ("p", "a", 2) not in ex.attempts
    tick(d, at(11))
    ex.wait_started("p", "a", 2)
    ex.finish("p", "a", 2, 1, at(12))
    assert tick(d, at(12)) == at(32)  # the second retry waits twice as long
    tick(d, at(32))
    ex.wait_started("p", "a", 3)
    ex.finish("p", "a", 3, 0, at(33))
    tick(d, at(33))
    a = job(root, "a")
    assert a.state is JobState.SUCCEEDED
    assert [x.trigger for x in a.attempts] == [Trigger.START, Trigger.RETRY, Trigger.RETRY]
    assert read_pipeline_status(root.pipeline("p").status_file).state is PipelineState.SUCCEEDED


def _trailer(ws: Path) -> str:
    return subprocess.run(["git", "log", "-1", "--format=%(trailers:key=Clowder-State,valueonly)"], cwd=ws,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_timeout_sends_sigterm_then_sigkill_and_the_end_says_timed_out_everywhere(
        root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["x"]\ntimeout = "30s"\n'})
    ex = MemoryExecutor()
    d = driver(root, ex)
    tick(d, at(0))
    run = ex.wait_started("p", "a", 1)
    assert tick(d, at(29)) == at(30)
    assert run.signals == []
    tick(d, at(30))
    assert run.signals == [signal.SIGTERM]
    grace = d.limits.kill_grace
    tick(d, at(30 + grace))
    assert run.signals == [signal.SIGTERM, signal.SIGKILL]
    ex.finish("p", "a", 1, None, at(31 + grace))  # gone, and no exit record
    tick(d, at(31 + grace))
    a = job(root, "a")
    assert (a.state, a.message) == (JobState.FAILED, "attempt 1 lost: timed out after 30.0s")
    ws = root.pipeline("p").workspace("a")
    assert json.loads((ws / ".clowder" / "a" / "error.json").read_text())["reason"] == "timed out after 30.0s"
    assert _trailer(ws) == "lost"


def test_a_cancel_request_kills_the_running_job_and_cancels_the_rest(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["x"]\n', "b": 'command = ["x"]\nneeds = ["a"]\n'})
    ex = MemoryExecutor()
    d = driver(root, ex)
    tick(d, at(0))
    run = ex.wait_started("p", "a", 1)
    drop(root, root.pipeline("p"), "cancel")
    d.events.put(FilesChanged("p"))  # what the watcher says
    tick(d, at(1))
    assert run.signals == [signal.SIGTERM]
    assert job(root, "b").state is JobState.CANCELLED
    ex.finish("p", "a", 1, 143, at(2))
    tick(d, at(2))
    assert (job(root, "a").state, job(root, "a").message) == (JobState.CANCELLED, "cancelled by request")
    assert _trailer(root.pipeline("p").workspace("a")) == "cancelled"
    assert read_pipeline_status(root.pipeline("p").status_file).state is PipelineState.CANCELLED
    assert list(root.pipeline("p").requests_dir.iterdir()) == []


def test_a_spawn_request_writes_the_fixup_and_the_spawner_runs_again_from_its_work(
        root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"dev": 'command = ["x"]\n', "test": 'command = ["x"]\nneeds = ["dev"]\nmax_regressions = 1\n'})
    ex = MemoryExecutor()
    d = driver(root, ex)
    tick(d, at(0))
    ex.wait_started("p", "dev", 1)
    ex.finish("p", "dev", 1, 0, at(1))
    tick(d, at(1))
    ex.wait_started("p", "test", 1)
    paths = root.pipeline("p")
    drop(root, paths, "spawn", "dev", spawner="test", attempt=1, reason="add() is wrong", context="1 + 1 == 3")
    d.events.put(FilesChanged("p"))
    tick(d, at(2))
    ex.finish("p", "test", 1, 1, at(3))
    tick(d, at(3))
    assert (job(root, "test").state, job(root, "test").waiting_for) == (JobState.WAITING, ("dev.r1",))
    assert 'regression_of = "dev"' in paths.job_file("dev.r1").read_text()
    d.events.put(FilesChanged("p"))  # the new job file, as the watcher would say
    tick(d, at(4))
    ex.wait_started("p", "dev.r1", 1)
    ex.finish("p", "dev.r1", 1, 0, at(5))
    tick(d, at(5))
    ex.wait_started("p", "test", 2)
    assert job(root, "test").attempts[-1].trigger is Trigger.REGRESSION
    ex.finish("p", "test", 2, 0, at(6))
    tick(d, at(6))
    assert job(root, "test").state is JobState.SUCCEEDED
    assert read_pipeline_status(paths.status_file).state is PipelineState.SUCCEEDED


def test_a_restarted_driver_adopts_the_running_attempt_and_never_starts_it_twice(
        root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["x"]\ntimeout = "1h"\n'})
    ex = MemoryExecutor()
    first = driver(root, ex)
    tick(first, at(0))
    ex.wait_started("p", "a", 1)
    tick(first, at(30))  # it runs; now this daemon dies (nothing of it is stopped)
    first.launcher.shutdown()
    lines: list[str] = []
    second = driver(root, ex, lines)
    tick(second, at(40))
    assert "p/a: adopted running attempt 1 (pid 1000)" in lines
    ex.finish("p", "a", 1, 0, at(50))
    tick(second, at(50))
    assert job(root, "a").state is JobState.SUCCEEDED
    assert [k for k in ex.attempts if k[1] == "a"] == [("p", "a", 1)]


def test_a_restarted_driver_records_an_end_it_did_not_see(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["x"]\n'})
    ex = MemoryExecutor()
    first = driver(root, ex)
    tick(first, at(0))
    ex.wait_started("p", "a", 1)
    first.launcher.shutdown()
    ex.attach(lambda exited: None)  # no daemon: nobody hears of the end
    ex.finish("p", "a", 1, 3, at(5))
    second = driver(root, ex)
    tick(second, at(10))
    a = job(root, "a")
    assert (a.state, a.message, a.attempts[0].ended_at) == (JobState.FAILED, "attempt 1 failed: exit code 3", at(5))


def test_a_finished_pipeline_costs_no_tick_until_one_of_its_files_changes(root: Root,
                                                                          make_pipeline: MakePipeline) -> None:
    make_pipeline("done", {"a": 'command = ["x"]\n'})
    ex = MemoryExecutor()
    d = driver(root, ex)
    tick(d, at(0))
    ex.wait_started("done", "a", 1)
    ex.finish("done", "a", 1, 1, at(1))
    tick(d, at(1))
    assert read_pipeline_status(root.pipeline("done").status_file).state is PipelineState.FAILED
    assert d.live == set()  # ended for good: the ticks that follow do not look at it
    make_pipeline("p", {"a": 'command = ["x"]\n'})
    d.events.put(FilesChanged("p"))
    tick(d, at(2))
    ex.wait_started("p", "a", 1)
    assert d.live == {"p"}
    drop(root, root.pipeline("done"), "retry", "a")  # the request file wakes it: it runs again
    d.events.put(FilesChanged("done"))
    tick(d, at(3))
    ex.wait_started("done", "a", 2)
    assert d.live == {"p", "done"}
    assert job(root, "a", "done").state is JobState.RUNNING
