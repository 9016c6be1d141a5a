"""A daemon leaves finished pipelines unread until their files change (clowder.driver.dormant),
and they still answer every request, edit and sweep as before."""

from __future__ import annotations

import os
import time

from clowder.driver import Driver
from clowder.index import reindex
from clowder.runner import request
from clowder.stamp import RACY_NS
from clowder.state import JobState, PipelineState, read_job_status, read_pipeline_status
from clowder.tree import Root
from tests.conftest import MakePipeline, write
from tests.test_driver import daemon, wait_for

JOBS = {"a": 'command = "echo a > a.txt"\n', "b": 'command = "cat a.txt"\nneeds = ["a"]\n'}


def finished(root: Root, make_pipeline: MakePipeline, *names: str) -> None:
    for name in names:
        make_pipeline(name, JOBS)
        assert Driver(root, only=[name], log=lambda s: None).serve(until_done=True)


def job(root: Root, pipeline: str, name: str) -> tuple[JobState, int]:
    s = read_job_status(root.pipeline(pipeline).job_status_file(name), name)
    return s.state, s.attempt


def test_a_daemon_leaves_finished_pipelines_unread_and_a_rerun_wakes_one(root: Root,
                                                                          make_pipeline: MakePipeline) -> None:
    finished(root, make_pipeline, "done1", "done2")
    make_pipeline("new", JOBS)
    with daemon(root) as driver:
        wait_for(lambda: job(root, "new", "b") == (JobState.SUCCEEDED, 1), what="the new pipeline to run")
        assert not driver.pipelines["done1"].loaded and not driver.pipelines["done2"].loaded
        request(root, "done1", "rerun", "a")  # what `clowder rerun done1 a` does: the request, and a wake-up
        wait_for(lambda: job(root, "done1", "a") == (JobState.SUCCEEDED, 2), timeout=15,
                 what="the re-run to run (well before the 30 s sweep)")
        assert not driver.pipelines["done2"].loaded


def test_a_finished_pipeline_is_read_when_the_index_cannot_vouch_for_it(root: Root,
                                                                         make_pipeline: MakePipeline) -> None:
    """A prompt changed before a reindex, a job file added since, a status file put back by hand,
    no index at all: each pipeline is read at the daemon's start, as before."""
    finished(root, make_pipeline, "edited", "restored", "prompt", "kept")
    spec = root.pipeline("prompt").spec_file
    write(spec, spec.read_text().replace('prompt = "do it"', 'prompt = "do something else"'))
    reindex.rebuild(root)  # the index now holds the edited spec as current
    write(root.pipeline("edited").job_file("c"), 'command = "true"\nneeds = ["b"]\n')
    status = root.pipeline("restored").job_status_file("b")  # a backup put back, by rename as Clowder writes
    os.replace(write(root.path / "b.toml", status.read_text().replace('state = "succeeded"', 'state = "failed"', 1)),
               status)
    with daemon(root) as driver:
        wait_for(lambda: job(root, "edited", "c") == (JobState.SUCCEEDED, 1), what="the added job to run")
        wait_for(lambda: read_pipeline_status(spec.parent / "status.toml").state is PipelineState.BLOCKED,
                 what="the changed prompt to block its pipeline")
        wait_for(lambda: driver.pipelines["restored"].loaded, what="the restored pipeline to be read")
        assert not driver.pipelines["kept"].loaded
    (root.state_dir / "index.sqlite").unlink()
    with daemon(root) as driver:
        wait_for(lambda: driver.pipelines.get("kept") is not None and driver.pipelines["kept"].loaded,
                 what="every pipeline to be read without an index")
    assert read_pipeline_status(root.pipeline("kept").status_file).state is PipelineState.SUCCEEDED


def test_the_sweep_reads_a_finished_pipeline_whose_files_changed(root: Root, make_pipeline: MakePipeline) -> None:
    """A finished pipeline is not watched: a job file added to it is seen by the sweep."""
    config = root.config_file
    write(config, config.read_text().replace('sweep_interval = "30s"', 'sweep_interval = "1s"'))
    finished(root, make_pipeline, "done", "other")
    with daemon(root) as driver:
        wait_for(lambda: "done" in driver.pipelines, what="the daemon to start")
        write(root.pipeline("done").job_file("c"), 'command = "true"\nneeds = ["b"]\n')
        wait_for(lambda: job(root, "done", "c") == (JobState.SUCCEEDED, 1), what="the sweep to run the added job")
        assert not driver.pipelines["other"].loaded


def test_a_finished_pipeline_whose_inbox_cannot_be_read_does_not_stop_the_daemon(
        root: Root, make_pipeline: MakePipeline) -> None:
    finished(root, make_pipeline, "done")
    requests = root.pipeline("done").requests_dir
    requests.mkdir(exist_ok=True)
    requests.rmdir()
    write(requests, "not a directory\n")
    time.sleep(2 * RACY_NS / 1e9)  # so that the rebuild can vouch for the pipeline's files
    reindex.rebuild(root)
    make_pipeline("new", JOBS)
    with daemon(root):
        wait_for(lambda: job(root, "new", "b") == (JobState.SUCCEEDED, 1), what="the new pipeline to run")
