"""Scheduler benchmark: dispatch latency, and 1,000 trivial jobs next to `make -j2`.

Run: python tests/bench/bench_scheduler.py [--repeat N]
Prints medians over N runs (default 3) and the ratio to make -j2 measured in the same run.

Every run's tree is deleted only at the end. On ext4, creating a file soon after many were
deleted costs several times more (the inode allocator skips recently freed inodes, reading
each one's block): deleting a 1,000-job tree between runs made the next run up to 50% slower.
Let the disk settle a minute after a test suite for the same reason.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clowder.driver import Driver
from clowder.template import init_root
from clowder.tree import Root

TRUE = ["true"]
CLOCK = ["date", "+%s%N"]  # as trivial as `true`, and prints when it ran, to the nanosecond


def write_pipeline(root: Root, name: str, jobs: dict[str, list[str]], command: list[str]) -> None:
    d = root.pipelines_dir / name
    (d / "jobs").mkdir(parents=True)
    (d / "pipeline.toml").write_text('prompt = "benchmark"\n')
    for job, needs in jobs.items():
        text = f"command = {json.dumps(command)}\n" + (f"needs = {json.dumps(needs)}\n" if needs else "")
        (d / "jobs" / f"{job}.toml").write_text(text)


def chains(n_chains: int, length: int) -> dict[str, list[str]]:
    return {f"c{c}-{i}": ([f"c{c}-{i - 1}"] if i else []) for c in range(n_chains) for i in range(length)}


def fan(width: int) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {"start": []}
    jobs.update({f"w{i}": ["start"] for i in range(width)})
    jobs["join"] = [f"w{i}" for i in range(width)]
    return jobs


SCRATCH = Path(tempfile.mkdtemp(prefix="clowder-bench-"))


def run_clowder(dag: dict[str, list[str]], max_parallel: int, command: list[str] = TRUE) -> tuple[float, Root]:
    tmp = Path(tempfile.mkdtemp(dir=SCRATCH))
    root = init_root(tmp / "root")
    write_pipeline(root, "p", dag, command)
    t = time.perf_counter()
    ok = Driver(root, max_parallel=max_parallel, only=["p"], log=lambda s: None).serve(until_done=True)
    elapsed = time.perf_counter() - t
    assert ok, "benchmark pipeline failed"
    return elapsed, root


def run_make(dag: dict[str, list[str]], jobs: int) -> float:
    tmp = Path(tempfile.mkdtemp(dir=SCRATCH))
    lines = [".PHONY: all " + " ".join(dag), "all: " + " ".join(dag)]
    for job, needs in dag.items():
        lines += [f"{job}: {' '.join(needs)}", "\t@true"]
    (tmp / "Makefile").write_text("\n".join(lines) + "\n")
    t = time.perf_counter()
    subprocess.run(["make", "-s", f"-j{jobs}", "-C", str(tmp)], check=True, capture_output=True)
    return time.perf_counter() - t


def dispatch_latencies(root: Root, dag: dict[str, list[str]]) -> list[float]:
    """Upstream's end -> dependent's start, in ms, from the nanosecond clocks the jobs printed
    (`date +%s%N` as each job's command: it prints as it starts and exits at once). File
    mtimes would not do: the kernel stamps them from a clock that ticks every few ms."""
    logs = root.pipelines_dir / "p" / "logs"
    out = []
    for job, needs in dag.items():
        if len(needs) != 1:
            continue
        started = int((logs / job / "1.log").read_text().split()[0])
        ended = int((logs / needs[0] / "1.log").read_text().split()[0])
        out.append((started - ended) / 1e6)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    lat_med, lat_p99 = [], []
    for _ in range(args.repeat):
        dag = chains(2, 101)  # 200 edges, never waiting for a slot at max_parallel=2
        _, root = run_clowder(dag, 2, CLOCK)
        lat = dispatch_latencies(root, dag)
        lat_med.append(statistics.median(lat))
        lat_p99.append(pct(lat, 0.99))
    print(f"dispatch latency over {len(lat)} edges: median {statistics.median(lat_med):.2f} ms, "
          f"p99 {statistics.median(lat_p99):.2f} ms (medians of {args.repeat} runs)")

    for label, dag in (("10 chains x 100", chains(10, 100)), ("fan-out 1000 + join", fan(1000))):
        ours, makes = [], []
        for _ in range(args.repeat):
            elapsed, _ = run_clowder(dag, 2)
            ours.append(elapsed)
            makes.append(run_make(dag, 2))
        c, m = statistics.median(ours), statistics.median(makes)
        print(f"{label:>20}: clowder {c:6.2f} s ({c / len(dag) * 1000:.2f} ms/job)   make -j2 {m:6.2f} s   "
              f"ratio {c / m:5.1f}x")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(SCRATCH)
