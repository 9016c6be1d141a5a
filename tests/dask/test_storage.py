"""Shared storage on the loopback cluster: the daemon of a Dask root polls by default, so what a
job writes into the tree from a worker (a `clowder spawn`) reaches it as it would from another
machine, where inotify never sees it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from clowder.state import JobState, PipelineState, read_job_status, read_pipeline_status
from clowder.tree import Root
from tests.conftest import REPO, MakePipeline, wait_for

pytestmark = pytest.mark.dask


@contextmanager
def _watch(root: Root, tmp_path: Path, *flags: str) -> Iterator[Path]:
    """`clowder watch FLAGS` as its own process, seen serving; killed at the end. Yields its log."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
    log = tmp_path / f"watch-{time.monotonic_ns()}.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "clowder", "watch", *flags, "--root", str(root.path)],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "clowder watch serving" in log.read_text() or proc.poll() is not None, timeout=60,
                 what="clowder watch to serve")
        assert proc.poll() is None, log.read_text()
        yield log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_a_spawn_from_a_job_on_a_worker_reaches_the_daemon_which_polls_by_default(
        dask_root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    make_pipeline("p", {
        "dev": 'command = "if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; then touch fixed.txt; fi"\n',
        "test": ('command = "if [ -f fixed.txt ]; then echo ok; else clowder spawn dev --reason broken; exit 1; fi"\n'
                 'needs = ["dev"]\n'),
    })
    paths = dask_root.pipeline("p")
    with _watch(dask_root, tmp_path) as log:
        wait_for(lambda: read_pipeline_status(paths.status_file).state.terminal, timeout=120, what="p to end")
        assert "watching the tree by polling every 1.0s" in log.read_text()
    assert read_pipeline_status(paths.status_file).state is PipelineState.SUCCEEDED
    test = read_job_status(paths.job_status_file("test"), "test")
    assert test.spawned == ("dev.r1",)
    assert [(a.number, a.state, a.trigger) for a in test.attempts] == [
        (1, JobState.FAILED, "start"), (2, JobState.SUCCEEDED, "regression")]
    # The spawn ran on a worker, as the claim of the spawner's first attempt says.
    assert paths.log_file("test", 1).with_suffix(".claim").read_text().splitlines()[1].startswith("tcp://127.0.0.1:")


def test_no_poll_makes_a_dask_daemon_wait_for_file_events(dask_root: Root, make_pipeline: MakePipeline,
                                                          tmp_path: Path) -> None:
    make_pipeline("p", {"a": 'command = "true"\n'})
    with _watch(dask_root, tmp_path, "--no-poll") as log:
        wait_for(lambda: read_pipeline_status(dask_root.pipeline("p").status_file).state is PipelineState.SUCCEEDED,
                 timeout=120, what="p to succeed")
        assert "polling" not in log.read_text()
