"""The Dask executor on a real loopback cluster: the pipelines, processes and files are real."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clowder.state import JobState, PipelineState, read_job_status, read_pipeline_status
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline, wait_for
from tests.dask.conftest import Cluster, attempts_of, clowder_process, declare_pool, job_status, set_key

pytestmark = pytest.mark.dask


def test_a_pipeline_runs_end_to_end_on_the_cluster(dask_root: Root, make_pipeline: MakePipeline,
                                                    cli: Invoke) -> None:
    make_pipeline("p", {
        "a": 'command = ["sh", "-c", "echo hello from $CLOWDER_JOB attempt $CLOWDER_ATTEMPT > out.txt; cat out.txt"]\n',
        "b": 'command = "cat out.txt; echo $GREETING; pwd"\nneeds = ["a"]\nenv = { GREETING = "hi" }\n'})
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    assert read_pipeline_status(dask_root.pipeline("p").status_file).state is PipelineState.SUCCEEDED
    a = read_job_status(dask_root.pipeline("p").job_status_file("a"), "a")
    assert a.state is JobState.SUCCEEDED and a.attempt == 1 and a.attempts[0].exit_code == 0
    assert cli("logs", "p", "a").output == "hello from a attempt 1\n"
    assert cli("logs", "p", "b").output.splitlines() == ["hello from a attempt 1", "hi",
                                                         str(dask_root.pipeline("p").workspace("b"))]
    claim = dask_root.pipeline("p").log_file("a", 1).with_suffix(".claim").read_text().splitlines()
    assert claim[1].startswith("tcp://127.0.0.1:")  # run on a worker, which said so


def _max_running(events: list[str]) -> int:
    running = most = 0
    for line in events:
        running += 1 if line.endswith(" start") else -1
        most = max(most, running)
    return most


def test_two_hundred_attempts_each_run_exactly_once_and_max_parallel_holds(
        dask_root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    set_key(dask_root, "max_parallel", "12")
    record = tmp_path / "record"
    make_pipeline("p", {f"j{i:03}": f"command = 'echo \"$CLOWDER_JOB start\" >> {record}; sleep 0.1; "
                                     f"echo \"$CLOWDER_JOB end\" >> {record}'\n" for i in range(200)})
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    lines = record.read_text().splitlines()
    assert sorted(lines) == sorted(f"j{i:03} {what}" for i in range(200) for what in ("start", "end"))
    assert 1 < _max_running(lines) <= 12
    assert all(job_status(dask_root, f"j{i:03}").attempt == 1 for i in range(200))
    claims = list(dask_root.pipeline("p").logs_dir.glob("*/*.claim"))
    assert len(claims) == 200 and len({c.read_text().splitlines()[1] for c in claims}) >= 2  # spread out


def test_a_job_that_needs_a_resource_only_one_worker_has_runs_there(
        dask_root: Root, dask_cluster: Cluster, make_pipeline: MakePipeline, cli: Invoke) -> None:
    declare_pool(dask_root, "gpu", 1)
    make_pipeline("p", {f"g{i}": 'command = "echo on the gpu"\nresources = { gpu = 1 }\n' for i in range(3)})
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    gpu = next(a for a, w in dask_cluster.addresses().items() if w.get("name") == "gpu-worker")
    for i in range(3):
        claim = dask_root.pipeline("p").log_file(f"g{i}", 1).with_suffix(".claim").read_text().splitlines()
        assert claim[1] == gpu


def test_cancel_ends_the_whole_process_tree_on_a_live_worker(
        dask_root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    started = tmp_path / "started"
    # A child in the group, one that left it (setsid), and one that ignores SIGTERM.
    make_pipeline("p", {"a": f"command = 'sleep 300 & setsid sleep 301 & (trap \"\" TERM; sleep 302) & "
                             f"touch {started}; wait'\n"})
    set_key(dask_root, "kill_grace", '"2s"')
    watch = clowder_process(dask_root, "watch")
    try:
        wait_for(started.exists, timeout=60, what="the attempt started on a worker")
        wait_for(lambda: len(attempts_of(dask_root.path)) >= 5, what="its processes")
        began = time.monotonic()
        assert cli("cancel", "p", "a").exit_code == 0
        wait_for(lambda: job_status(dask_root, "a").state is JobState.CANCELLED, timeout=30, what="a cancelled")
        wait_for(lambda: not attempts_of(dask_root.path), timeout=30, what="every process of the attempt gone")
        assert time.monotonic() - began < 15
    finally:
        watch.kill()
        watch.wait()


def test_a_daemon_killed_with_sigkill_leaves_its_attempts_to_the_next_one(
        dask_root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    record = tmp_path / "record"
    make_pipeline("p", {f"j{i}": f"command = 'echo \"$CLOWDER_JOB start\" >> {record}; sleep 8; "
                                 f"echo \"$CLOWDER_JOB end\" >> {record}'\n" for i in range(4)})
    first = clowder_process(dask_root, "watch")
    wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 4, timeout=60, what="all running")
    first.kill()
    first.wait()
    second = clowder_process(dask_root, "run", "p")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "adopted running attempt 1" in err
    assert sorted(record.read_text().splitlines()) == sorted(f"j{i} {w}" for i in range(4) for w in ("start", "end"))
    assert all(job_status(dask_root, f"j{i}").attempt == 1 for i in range(4))


def test_an_attempt_queued_in_the_engine_across_a_daemon_restart_is_not_lost(
        dask_root: Root, dask_cluster: Cluster, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    set_key(dask_root, "heartbeat_timeout", '"1s"')
    declare_pool(dask_root, "tpu", 1)
    make_pipeline("p", {"t": 'command = "echo on the tpu"\nresources = { tpu = 1 }\n'})
    first = clowder_process(dask_root, "watch")
    log = dask_root.pipeline("p").log_file("t", 1)
    wait_for(log.exists, timeout=60, what="the attempt submitted")
    first.kill()
    first.wait()
    time.sleep(2)  # past the heartbeat timeout: still queued in Dask (no worker has a tpu)
    second = clowder_process(dask_root, "watch")
    try:
        time.sleep(4)  # the second daemon has looked at it, past its heartbeat timeout
        assert job_status(dask_root, "t").state is JobState.RUNNING and job_status(dask_root, "t").attempt == 1
        worker = dask_cluster.start_worker("tpu=1")
        try:
            wait_for(lambda: job_status(dask_root, "t").state is JobState.SUCCEEDED, timeout=60, what="t ran")
        finally:
            worker.kill()
            worker.wait()
            dask_cluster.workers.remove(worker)
    finally:
        second.kill()
        second.wait()
    assert job_status(dask_root, "t").attempt == 1
    assert log.read_text() == "on the tpu\n"


def test_a_regression_loop_whose_spawn_runs_on_a_worker(dask_root: Root, make_pipeline: MakePipeline,
                                                        cli: Invoke) -> None:
    # `clowder spawn` runs in the tester's attempt, on a worker. On this loopback cluster inotify
    # sees its request. A polling daemon (the default with Dask once branch poll19 is in: inotify
    # never sees what other machines write) must read the requests again at an attempt's end:
    # before poll19, `--poll` failed the tester here, local executor or Dask, since a spawn made
    # less than a poll before the attempt ended was never seen.
    make_pipeline("p", {
        "dev": 'command = "if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; then touch fixed.txt; fi"\n',
        "test": 'command = "if [ -f fixed.txt ]; then echo ok; else clowder spawn dev --reason \'no fix yet\'; '
                'exit 1; fi"\nneeds = ["dev"]\n'})
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    test = job_status(dask_root, "test")
    assert [(a.number, a.state, a.trigger) for a in test.attempts] == [
        (1, JobState.FAILED, "start"), (2, JobState.SUCCEEDED, "regression")]
    assert test.spawned == ("dev.r1",) and test.attempts[0].message == "spawned dev.r1"
    assert job_status(dask_root, "dev.r1").state is JobState.SUCCEEDED
    assert (dask_root.pipeline("p").workspace("dev.r1") / "fixed.txt").exists()
    logs = dask_root.pipeline("p").logs_dir
    for job, attempt in (("test", 1), ("dev.r1", 1), ("test", 2)):  # each ran on a worker
        assert (logs / job / f"{attempt}.claim").read_text().splitlines()[1].startswith("tcp://127.0.0.1:")


def test_an_attempt_whose_wrapper_died_on_a_live_worker_is_recorded_at_once(
        dask_root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    # Its worker saw the wrapper end (without an exit record): no need to wait for the heartbeat
    # timeout (30 s) to know it is over, as the local executor knows at once.
    make_pipeline("p", {"a": 'command = "kill -9 $PPID; sleep 60"\n'})
    began = time.monotonic()
    assert cli("run", "p").exit_code == 1
    assert time.monotonic() - began < 20
    a = job_status(dask_root, "a")
    assert [(x.state, x.message) for x in a.attempts] == [
        (JobState.LOST, "the process vanished without an exit record")]
