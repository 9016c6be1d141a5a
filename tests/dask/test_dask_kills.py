"""Parts of a real loopback cluster killed mid-run (a worker, a worker and its nanny, the
scheduler): no attempt runs twice, none is lost, and the pipeline ends. Each test has its own
cluster, since it breaks it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from clowder.executor import read_pid
from clowder.state import JobState, PipelineState, read_pipeline_status
from clowder.tree import Root
from tests.conftest import MakePipeline, wait_for, write
from tests.dask.conftest import Cluster, attempts_of, clowder_process, daemon_logs, job_status, set_key

pytestmark = pytest.mark.dask

# Planted in one worker (`dask worker --preload`): it claims the attempt of job `held`, then
# never starts it, as a worker killed between the two would leave it.
HOLD = """\
import time
import clowder.dask_executor as dask_executor
def planted(claim):
    def held(path, text):
        made = claim(path, text)
        while made and path.parent.name == "held":
            time.sleep(60)
        return made
    held.planted = True
    return held
if not hasattr(dask_executor.claim, "planted"):  # Dask may run a preload twice
    dask_executor.claim = planted(dask_executor.claim)
"""


def clowder(root: Root, *args: str) -> list[str]:
    return [sys.executable, "-m", "clowder", *args, "--root", str(root.path)]


def _succeeded(root: Root, pipeline: str = "p") -> bool:
    status = root.pipeline(pipeline).status_file
    return status.exists() and read_pipeline_status(status).state is PipelineState.SUCCEEDED


def _wait(cond: Callable[[], bool], what: str, root: Root, cluster: Cluster, timeout: float = 120) -> None:
    """wait_for, and what the daemon and the cluster said when it times out."""
    try:
        wait_for(cond, timeout=timeout, what=what)
    except AssertionError:
        print(daemon_logs(root))
        for pid in attempts_of(root.path):  # what of the attempts still runs
            with contextlib.suppress(OSError):
                print(pid, Path(f"/proc/{pid}/stat").read_text()[:50], Path(f"/proc/{pid}/cmdline").read_bytes()[:200])
        for log in sorted(cluster.dir.glob("*.log")):
            print(f"== {log.name}\n{log.read_text()[-3000:]}")
        raise


@pytest.mark.parametrize("nanny", [False, True], ids=["worker", "worker-and-nanny"])
def test_a_worker_killed_with_sigkill_mid_run_runs_no_attempt_twice_and_loses_none(
        fresh_root: Root, fresh_cluster: Cluster, make_pipeline: MakePipeline, tmp_path: Path, nanny: bool) -> None:
    root, record, marker = fresh_root, tmp_path / "record", tmp_path / "orphan-ran"
    set_key(root, "max_parallel", "8")
    set_key(root, "heartbeat_timeout", '"5s"')
    jobs = {f"run{i}": f"command = 'echo \"$CLOWDER_JOB start\" >> {record}; sleep 8; "
                       f"echo \"$CLOWDER_JOB end\" >> {record}'\n" for i in range(4)}
    jobs["held"] = f"command = 'echo \"held $CLOWDER_ATTEMPT\" >> {record}'\n"
    # Its process dies with the worker (nothing of it is left to record its end): lost, then retried.
    jobs["orphan"] = (f"command = 'if [ -f {marker} ]; then echo \"orphan $CLOWDER_ATTEMPT\" >> {record}; exit 0; fi; "
                      f"touch {marker}; sleep 60'\nretries = 1\nbackoff = {{ initial = \"100ms\" }}\n")
    make_pipeline("p", jobs)
    victim = fresh_cluster.start_worker(nanny=nanny, preload=write(tmp_path / "hold.py", HOLD))
    fresh_cluster.wait_workers(1)
    logs = root.pipeline("p").logs_dir
    watch = clowder_process(root, "watch")
    try:
        _wait(lambda: record.exists() and record.read_text().count(" start") == 4 and marker.exists()
              and (logs / "held" / "1.claim").exists(), "every attempt claimed by the victim", root, fresh_cluster)
        survivor = fresh_cluster.start_worker()
        fresh_cluster.wait_workers(2)
        orphan = read_pid(logs / "orphan" / "1.run")
        assert orphan is not None
        fresh_cluster.kill_worker(victim)
        os.killpg(orphan, signal.SIGKILL)  # the orphan's wrapper, its command and its heartbeat
        _wait(lambda: _succeeded(root), "the pipeline to succeed", root, fresh_cluster)
    finally:
        watch.kill()
        watch.wait()
    lines = record.read_text().splitlines()
    assert sorted(lines) == sorted([*(f"run{i} {w}" for i in range(4) for w in ("start", "end")),
                                    "held 1", "orphan 2"])
    assert all(job_status(root, f"run{i}").attempts[-1].number == 1 for i in range(4))
    held = job_status(root, "held")
    assert [(a.number, a.state) for a in held.attempts] == [(1, JobState.SUCCEEDED)]  # the same attempt
    assert (logs / "held" / "1.claim").read_text().splitlines()[1] == fresh_cluster.address_of(survivor)
    orphan_status = job_status(root, "orphan")
    assert [(a.number, a.state) for a in orphan_status.attempts] == [(1, JobState.LOST), (2, JobState.SUCCEEDED)]


def test_the_scheduler_killed_and_started_again_mid_run(
        fresh_root: Root, fresh_cluster: Cluster, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    root, record = fresh_root, tmp_path / "record"
    set_key(root, "max_parallel", "8")
    jobs = {f"run{i}": f"command = 'echo \"$CLOWDER_JOB start\" >> {record}; sleep 6; "
                       f"echo \"$CLOWDER_JOB end\" >> {record}'\n" for i in range(4)}
    jobs["after"] = f"command = 'echo after >> {record}'\nneeds = {[f'run{i}' for i in range(4)]}\n".replace("'", '"')
    make_pipeline("p", jobs)
    for _ in range(2):
        fresh_cluster.start_worker()
    fresh_cluster.wait_workers(2)
    watch = clowder_process(root, "watch")
    try:
        _wait(lambda: record.exists() and record.read_text().count(" start") == 4, "every attempt running",
              root, fresh_cluster)
        fresh_cluster.kill_scheduler()
        for worker in list(fresh_cluster.workers):  # a killed scheduler takes its workers down with it
            fresh_cluster.kill_worker(worker)
        fresh_cluster.start_scheduler()
        for _ in range(2):
            fresh_cluster.start_worker()
        _wait(lambda: _succeeded(root), "the pipeline to succeed", root, fresh_cluster)
        assert watch.poll() is None, daemon_logs(root)
    finally:
        watch.kill()
        watch.wait()
    assert sorted(record.read_text().splitlines()) == sorted(
        [*(f"run{i} {w}" for i in range(4) for w in ("start", "end")), "after"])
    assert all([a.number for a in job_status(root, job).attempts] == [1] for job in [*jobs])


def test_a_scheduler_down_longer_than_the_clients_patience_is_reconnected_to(
        fresh_root: Root, fresh_cluster: Cluster, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    # Dask's client gives up after its timeout (10 s) and closes: the daemon must neither hang nor
    # fail what it starts meanwhile, and must carry on once the scheduler is back.
    root, record = fresh_root, tmp_path / "record"
    jobs = {"run": f"command = 'echo run start >> {record}; sleep 12; echo run end >> {record}'\n",
            "after": f"command = 'echo after >> {record}'\nneeds = [\"run\"]\n"}
    make_pipeline("p", jobs)
    fresh_cluster.start_worker()
    fresh_cluster.wait_workers(1)
    watch = clowder_process(root, "watch")
    try:
        _wait(lambda: record.exists() and "run start" in record.read_text(), "run running", root, fresh_cluster)
        fresh_cluster.kill_scheduler()
        for worker in list(fresh_cluster.workers):
            fresh_cluster.kill_worker(worker)
        make_pipeline("q", {"x": f"command = 'echo x >> {record}'\n"})  # the loop goes on: it starts x
        _wait(lambda: job_status(root, "x", "q").state is JobState.RUNNING, "q/x started", root, fresh_cluster)
        _wait(lambda: "dask: lost the Dask scheduler" in daemon_logs(root), "the daemon to say the scheduler is gone",
              root, fresh_cluster)
        # `run` ends after the client gave up (10 s): `after` is started on a client Dask closed.
        _wait(lambda: "p/after/1/" in daemon_logs(root).partition("Failed to reconnect to scheduler")[2]
              and "waits for the Dask scheduler" in daemon_logs(root), "after to wait for the scheduler",
              root, fresh_cluster, timeout=60)
        assert job_status(root, "after").state is JobState.RUNNING
        assert watch.poll() is None, daemon_logs(root)
        fresh_cluster.start_scheduler()
        fresh_cluster.start_worker()
        _wait(lambda: _succeeded(root) and _succeeded(root, "q"), "the pipelines to succeed", root, fresh_cluster)
        assert watch.poll() is None, daemon_logs(root)
    finally:
        watch.kill()
        watch.wait()
    assert sorted(record.read_text().splitlines()) == ["after", "run end", "run start", "x"]
    assert all([a.number for a in job_status(root, job).attempts] == [1] for job in [*jobs])
    assert "the Dask scheduler is back" in daemon_logs(root)


def test_cancel_ends_the_whole_process_tree_of_an_attempt_whose_worker_is_dead(
        fresh_root: Root, fresh_cluster: Cluster, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    root, started = fresh_root, tmp_path / "started"
    set_key(root, "kill_grace", '"2s"')
    # A child in the group, one that left it (setsid), and one that ignores SIGTERM.
    make_pipeline("p", {"a": f"command = 'sleep 300 & setsid sleep 301 & (trap \"\" TERM; sleep 302) & "
                             f"touch {started}; wait'\n"})
    victim = fresh_cluster.start_worker(nanny=True)
    fresh_cluster.wait_workers(1)
    watch = clowder_process(root, "watch")
    try:
        _wait(lambda: started.exists() and len(attempts_of(root.path)) >= 5, "the attempt running", root, fresh_cluster)
        fresh_cluster.kill_worker(victim)  # its attempt runs on, on this machine
        time.sleep(1)
        assert len(attempts_of(root.path)) >= 5
        assert subprocess.run(clowder(root, "cancel", "p", "a"), capture_output=True).returncode == 0
        _wait(lambda: job_status(root, "a").state is JobState.CANCELLED, "a cancelled", root, fresh_cluster, timeout=60)
        _wait(lambda: not attempts_of(root.path), "every process of the attempt gone", root, fresh_cluster, timeout=30)
    finally:
        watch.kill()
        watch.wait()
    assert [(a.number, a.state) for a in job_status(root, "a").attempts] == [(1, JobState.CANCELLED)]
