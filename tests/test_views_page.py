"""The read model for the page: a pipeline's and a job's views, logs and their follower, and the change
scanner, without the web extra."""

from __future__ import annotations

import os
import shutil

import pytest

from clowder.driver import Driver
from clowder.errors import UsageError
from clowder.executor import run_file
from clowder.known import NotFound
from clowder.state import JobState, JobStatus, job_status_to_toml
from clowder.tree import Root
from clowder.views import reader
from clowder.views.changes import Scanner
from clowder.views.logs import LogChunk, LogFollower, locate
from clowder.views.records import Change
from tests.conftest import MakePipeline, write


def run_to_end(root: Root) -> None:
    Driver(root, log=lambda s: None).serve(until_done=True)


def test_the_first_scan_is_a_baseline_and_later_ones_report_what_changed(root: Root,
                                                                         make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n', "b": 'command = ["true"]\nneeds = ["a"]\n'})
    scanner = Scanner(root)
    assert scanner.scan() == []
    run_to_end(root)
    changes = scanner.scan()
    # Jobs first: whoever sees the pipeline end has seen how its jobs ended.
    assert changes == [Change("p", "a", "succeeded", 1), Change("p", "b", "succeeded", 1),
                       Change("p", None, "succeeded")]
    assert scanner.scan() == []


def test_a_rewritten_status_file_is_seen_even_within_one_mtime_tick(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n'})
    status = root.pipeline("p").job_status_file("a")
    write(status, job_status_to_toml(JobStatus("a", JobState.RUNNING, 1)))
    scanner = Scanner(root)
    scanner.scan()
    before = status.parent.stat()
    write(status, job_status_to_toml(JobStatus("a", JobState.FAILED, 1)))
    # As if the write had landed in the same tick of the coarse file-system clock as the scan.
    os.utime(status.parent, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert scanner.scan() == [Change("p", "a", "failed", 1)]


def test_new_and_removed_pipelines_are_changes(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n'})
    scanner = Scanner(root)
    scanner.scan()
    make_pipeline("q", {"a": 'command = ["true"]\n'})
    assert scanner.scan() == [Change("q", None, "pending")]
    shutil.rmtree(root.pipeline("p").dir)
    assert scanner.scan() == [Change("p", None, "removed")]


def test_pipelines_are_filtered_by_a_known_state(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n'})
    make_pipeline("bad", {"a": 'command = 3\n'})
    assert [(p.name, p.state) for p in reader.entries(root)] == [("bad", "invalid"), ("p", "pending")]
    assert [p.name for p in reader.entries(root, "invalid")] == ["bad"]
    with pytest.raises(UsageError, match="unknown state 'sideways'"):
        reader.entries(root, "sideways")


def test_unknown_names_are_not_found_and_bad_ones_refused(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n'})
    with pytest.raises(NotFound, match="pipelines/q: no such pipeline"):
        reader.pipeline_detail(root, "q")
    with pytest.raises(NotFound, match=r"'b': not a job of p \(jobs: a\)"):
        reader.job_detail(root, "p", "b")
    with pytest.raises(UsageError, match=r"invalid job name '\.\./x'"):
        reader.job_detail(root, "p", "../x")
    with pytest.raises(NotFound, match=r"p/a has not run yet \(it is pending\)"):
        locate(root, "p", "a", None)


def test_a_finished_attempts_log_is_over(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "echo hi"\n'})
    run_to_end(root)
    ref = locate(root, "p", "a", None)
    assert (ref.attempt, ref.file.read_text(), ref.over()) == (1, "hi\n", True)
    with pytest.raises(NotFound, match="no log for attempt 2 of p/a"):
        locate(root, "p", "a", 2)


def test_the_log_follower_reads_as_the_log_grows_until_the_attempt_records_its_end(
        root: Root, make_pipeline: MakePipeline) -> None:
    """The one follower behind `clowder logs -f` and the server's stream: what is written arrives
    in order, a character split between two writes arrives whole, and the end is the exit record."""
    make_pipeline("p", {"a": 'command = ["true"]\n'})
    paths = root.pipeline("p")
    write(paths.job_status_file("a"), job_status_to_toml(JobStatus("a", JobState.RUNNING, 1)))
    log_file = paths.log_file("a", 1)
    log_file.parent.mkdir(parents=True)
    log_file.write_bytes(b"one\n\xc3")  # the first byte of an é
    run_file(log_file).write_text("4242\n")
    follower = iter(LogFollower(locate(root, "p", "a", None)))
    assert next(follower) == LogChunk("one\n", 5)
    assert next(follower) is None  # nothing new yet: the caller waits
    with log_file.open("ab") as f:
        f.write(b"\xa9t\xc3\xa9\n")
    assert next(follower) == LogChunk("été\n", 10)
    assert next(follower) is None
    run_file(log_file).write_text("4242\nexit 0\n")
    assert list(follower) == []  # ended: nothing more, and no waiting
