"""Polling: what the daemon's poller costs on a root of many unfinished pipelines (issue 19).

Run: python tests/bench/bench_poll.py [--pipelines 1000] [--jobs 10] [--watchdog 200] [--smoke]

Builds a root of --pipelines pipelines of --jobs job files each, all watched as the daemon watches
unfinished ones (their directory, jobs/ and requests/), and measures, in this process:

- Clowder's poller: the CPU of one look at every watched directory (median of 5), and how long a
  request file dropped into one pipeline takes to be reported at a 1 s interval;
- watchdog's PollingObserver (what `--poll` used before) at --watchdog pipelines: the CPU it uses
  over 5 s at a 1 s interval, and how long scheduling its watches took (a thread per watch).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from watchdog.events import FileSystemEventHandler
from watchdog.observers.polling import PollingObserver

from clowder.tree import Root
from clowder.watcher import Watcher


def build(base: Path, pipelines: int, jobs: int) -> Root:
    (base / "clowder.toml").write_text("")
    for i in range(pipelines):
        d = base / "pipelines" / f"p{i:05d}"
        for sub in ("jobs", "requests", "status", "logs"):
            (d / sub).mkdir(parents=True)
        (d / "pipeline.toml").write_text('prompt = "x"\n')
        (d / "status.toml").write_text('state = "running"\n')
        for j in range(jobs):
            (d / "jobs" / f"j{j}.toml").write_text('command = ["true"]\n')
            (d / "status" / f"j{j}.toml").write_text('state = "running"\n')
    return Root(base)


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def clowder_poller(root: Root, pipelines: int) -> None:
    seen: list[str] = []
    watcher = Watcher(root, lambda kind, name: seen.append(name), poll=True, interval=1.0)
    began = time.perf_counter()
    for i in range(pipelines):
        watcher.watch(f"p{i:05d}")
    scheduled = time.perf_counter() - began
    assert watcher._poller is not None
    looks = []
    for _ in range(5):
        before = cpu()
        watcher._poller.look()
        looks.append(cpu() - before)
    watcher.start()
    time.sleep(1.5)
    seen.clear()
    began = time.perf_counter()
    (root.pipelines_dir / f"p{pipelines // 2:05d}" / "requests" / "r.toml").write_text('action = "cancel"\n')
    while not seen:
        time.sleep(0.01)
    latency = time.perf_counter() - began
    watcher.stop()
    print(f"clowder poller, {pipelines} pipelines: scheduling {scheduled:.2f} s, one look "
          f"{statistics.median(looks) * 1000:.0f} ms of CPU ({statistics.median(looks) * 100:.0f}% of a core at 1s), "
          f"a request reported after {latency:.2f} s")


def watchdog_poller(root: Root, pipelines: int) -> None:
    observer = PollingObserver(timeout=1.0)
    handler = FileSystemEventHandler()
    observer.start()
    began = time.perf_counter()
    for i in range(pipelines):
        d = root.pipelines_dir / f"p{i:05d}"
        for sub in (d, d / "jobs", d / "requests"):
            observer.schedule(handler, str(sub))
    scheduled = time.perf_counter() - began
    time.sleep(2)
    before, t0 = cpu(), time.perf_counter()
    time.sleep(5)
    used = (cpu() - before) / (time.perf_counter() - t0)
    observer.stop()
    observer.join(timeout=30)
    print(f"watchdog PollingObserver, {pipelines} pipelines: scheduling {scheduled:.2f} s "
          f"({3 * pipelines} threads), {used * 100:.0f}% of a core at 1s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--watchdog", type=int, default=200, help="pipelines for watchdog's observer (0: skip)")
    parser.add_argument("--smoke", action="store_true", help="a tiny size, to check the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.pipelines, args.jobs, args.watchdog = 5, 2, 0
    base = Path(tempfile.mkdtemp(prefix="bench-poll-"))
    try:
        root = build(base, max(args.pipelines, args.watchdog), args.jobs)
        clowder_poller(root, args.pipelines)
        if args.watchdog:
            watchdog_poller(root, args.watchdog)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
