"""Dispatch through Dask next to the local executor, in the same run, on a loopback cluster this
script starts (`dask scheduler` and 3 `dask worker` processes on 127.0.0.1, killed at its end).

- dispatch: from the executor's start() to the command running (`date +%s%N`, its first output),
  and the round trip to the executor reporting its end; one attempt at a time, medians.
- N trivial jobs (`true`) run by `clowder run` with each executor: wall time.

    python3 tests/bench/bench_dask.py [--attempts 50] [--jobs 1000] [--smoke]

Target (issue 19): median dispatch <= 50 ms through Dask on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from clowder.dask_executor import DaskExecutor  # noqa: E402 - this checkout's
from clowder.executor import LocalExecutor, OnExit, Run, run_file  # noqa: E402
from clowder.template import init_root  # noqa: E402

DATE = shutil.which("date") or "/bin/date"
TRUE = shutil.which("true") or "/bin/true"
# Not counted: each worker imports Clowder on its first attempt (~0.2 s, once per worker process).
WARM_UP = 3


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


@contextmanager
def cluster(d: Path) -> Iterator[Path]:
    """A scheduler and 3 workers on 127.0.0.1; yields the scheduler file."""
    sched = d / "scheduler.json"
    py = [sys.executable, "-m"]
    procs = [subprocess.Popen([*py, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched)], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        while not sched.exists():
            time.sleep(0.05)
        for _ in range(3):
            procs.append(subprocess.Popen([*py, "distributed.cli.dask_worker", "--no-nanny", "--no-dashboard",
                                           "--host", "127.0.0.1", "--nthreads", "8", "--scheduler-file", str(sched)],
                                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        from distributed import Client
        with Client(scheduler_file=str(sched), timeout="60s") as client:
            client.wait_for_workers(3, timeout=120)
        yield sched
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def dispatch(make: Callable[[OnExit], object], d: Path, n: int) -> tuple[float, float]:
    """Median ms from start() to the command running, and to its end being reported."""
    ended = threading.Event()
    executor = make(lambda _e: ended.set())
    to_run, round_trip = [], []
    try:
        for i in range(n + WARM_UP):
            log = d / "logs" / f"{i}.log"
            run = Run("bench", "j", i + 1, (DATE, "+%s%N"), d / "ws", {}, log, run_file(log))
            ended.clear()
            began = time.time_ns()
            executor.start(run)  # type: ignore[attr-defined]
            if not ended.wait(60):
                raise SystemExit(f"attempt {i} did not end")
            done = time.time_ns()
            to_run.append((int(log.read_text().split()[0]) - began) / 1e6)
            round_trip.append((done - began) / 1e6)
    finally:
        executor.shutdown()  # type: ignore[attr-defined]
    return statistics.median(to_run[WARM_UP:]), statistics.median(round_trip[WARM_UP:])


def jobs_wall(d: Path, n: int, sched: Path | None) -> float:
    """Seconds for `clowder run` of a pipeline of n independent `true` jobs."""
    root = init_root(d / "root")
    if sched is not None:
        text = root.config_file.read_text().replace('[executor]\nkind = "local"\n', "")
        root.config_file.write_text(text + f'[executor]\nkind = "dask"\nscheduler_file = "{sched}"\n')
    p = root.pipelines_dir / "p"
    (p / "jobs").mkdir(parents=True)
    (p / "pipeline.toml").write_text('prompt = "bench"\n')
    for i in range(n):
        (p / "jobs" / f"j{i:04}.toml").write_text(f'command = ["{TRUE}"]\n')
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "clowder", "run", "p", "--max-parallel", "8", "--root", str(root.path)],
                   env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: only that it runs")
    args = parser.parse_args()
    attempts, jobs = (5, 10) if args.smoke else (args.attempts, args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with cluster(d) as sched:
            from distributed import Client
            client = Client(scheduler_file=str(sched), set_as_default=False)

            def dask(on_exit: OnExit) -> DaskExecutor:
                return DaskExecutor(on_exit, client, poll_interval=1.0)

            local = dispatch(lambda on_exit: LocalExecutor(on_exit), d / "local", attempts)
            remote = dispatch(dask, d / "dask", attempts)
            print(f"dispatch, median of {attempts} (ms)   to running   round trip")
            print(f"  local executor                  {local[0]:8.1f}   {local[1]:8.1f}")
            print(f"  dask executor (loopback)        {remote[0]:8.1f}   {remote[1]:8.1f}   target <= 50 to running")
            local_wall = jobs_wall(d / "wl", jobs, None)
            dask_wall = jobs_wall(d / "wd", jobs, sched)
            print(f"{jobs} trivial jobs, clowder run --max-parallel 8 (s)")
            print(f"  local {local_wall:7.2f}   dask {dask_wall:7.2f}   ratio {dask_wall / local_wall:.2f}")


if __name__ == "__main__":
    main()
