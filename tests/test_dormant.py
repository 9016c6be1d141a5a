"""A daemon leaves finished pipelines unread until their files change (clowder.driver.dormant),
and they still answer every request, edit and sweep as before."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from clowder.driver import Driver
from clowder.driver.cache import PipelineCache
from clowder.driver.events import FilesChanged
from clowder.index import reindex
from clowder.runner import request
from clowder.stamp import RACY_NS
from clowder.state import JobState, PipelineState, read_job_status, read_pipeline_status
from clowder.tree import Root
from tests.conftest import MakePipeline, write
from tests.memory_executor import MemoryExecutor
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


@dataclass(frozen=True)
class CountedRoot(Root):
    """A root that counts the listings of its pipelines/ directory: each costs a daemon a look at
    every pipeline of the root (~20-40 ms at 10,000 pipelines)."""

    listings: list[int] = field(default_factory=list, compare=False)

    def pipeline_names(self) -> list[str]:
        self.listings.append(1)
        return super().pipeline_names()


def test_a_running_pipeline_s_writes_do_not_make_the_daemon_list_the_root_again(
        root: Root, make_pipeline: MakePipeline) -> None:
    """The daemon lists pipelines/ when a pipeline appears or goes, not each time it writes in a
    running pipeline's directory (its status.toml, its status/, logs/ and workspaces/ made): on a
    root of 10,000 finished pipelines each listing was paid 5-6 times per pipeline run."""
    finished(root, make_pipeline, "done")
    counted = CountedRoot(root.path)
    with daemon(counted) as driver:
        wait_for(lambda: "done" in driver.pipelines, what="the daemon to start")
        before = len(counted.listings)
        staging = root.path / "staging"  # written elsewhere and moved in, as a user's `mv` would
        write(staging / "pipeline.toml", 'prompt = "do it"\n')
        for name, text in JOBS.items():
            write(staging / "jobs" / f"{name}.toml", text)
        os.rename(staging, root.pipelines_dir / "new")
        wait_for(lambda: read_pipeline_status(root.pipeline("new").status_file).state is PipelineState.SUCCEEDED
                 if root.pipeline("new").status_file.exists() else False, what="the new pipeline to succeed")
        assert len(counted.listings) - before == 1  # its arrival


class CountedScans(dict[str, PipelineCache]):
    """The driver's pipelines, counting each walk over all of them."""

    def __init__(self, pipelines: dict[str, PipelineCache]) -> None:
        super().__init__(pipelines)
        self.scans = 0
        self.lock = threading.Lock()

    def _scan(self) -> None:
        with self.lock:
            self.scans += 1

    def __iter__(self) -> Iterator[str]:
        self._scan()
        return super().__iter__()

    def keys(self) -> KeysView[str]:
        self._scan()
        return super().keys()

    def values(self) -> ValuesView[PipelineCache]:
        self._scan()
        return super().values()

    def items(self) -> ItemsView[str, PipelineCache]:
        self._scan()
        return super().items()


def test_a_tick_walks_only_the_pipelines_in_play_not_every_finished_one(root: Root,
                                                                         make_pipeline: MakePipeline) -> None:
    """Each tick walked every pipeline of the root (to drop those a rescan removed): at 10,000
    finished pipelines that was ~0.3 ms a tick, ~0.1 s of a 200-job pipeline's run."""
    t0 = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
    make_pipeline("done", {"a": 'command = ["x"]\n'})
    ex = MemoryExecutor()
    d = Driver(root, log=[].append, make_executor=ex.attach)
    d.discover()
    d.tick(t0)
    ex.wait_started("done", "a", 1)
    ex.finish("done", "a", 1, 0, t0 + timedelta(seconds=1))
    d.drain()
    d.tick(t0 + timedelta(seconds=1))
    assert read_pipeline_status(root.pipeline("done").status_file).state is PipelineState.SUCCEEDED
    make_pipeline("p", {"a": 'command = ["x"]\n', "b": 'command = ["x"]\nneeds = ["a"]\n'})
    d.events.put(FilesChanged("p"))
    d.pipelines = counted = CountedScans(d.pipelines)
    for second, job in ((2, "a"), (3, "b")):
        d.drain()
        d.tick(t0 + timedelta(seconds=second))
        ex.wait_started("p", job, 1)
        ex.finish("p", job, 1, 0, t0 + timedelta(seconds=second + 0.5))
    d.drain()
    d.tick(t0 + timedelta(seconds=4))
    assert read_pipeline_status(root.pipeline("p").status_file).state is PipelineState.SUCCEEDED
    assert counted.scans == 0
