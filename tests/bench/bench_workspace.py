"""Workspace benchmark: the git work on every attempt's path, prepare (before the process starts)
and finish (the commit after it ended), measured in-process without the scheduler.

Run: python tests/bench/bench_workspace.py [--jobs N]
Shapes: a chain of trivial attempts (nothing changed: the commit is written in-process), a chain
where each attempt adds a file (git add + commit, and a growing checkout), a retried attempt,
and a join of many upstreams. The wall time of whole pipelines is in bench_scheduler.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clowder import workspace
from clowder.workspace import Identity, Upstream

ME = Identity()


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def chain(base: Path, n: int, write: bool) -> tuple[list[float], list[float]]:
    prep, fin, ups = [], [], ()
    for i in range(n):
        ws = base / "workspaces" / f"j{i}"
        t = time.perf_counter()
        workspace.prepare(ws, "p", ws.name, 1, ups, identity=ME)
        prep.append(ms(t))
        if write:
            (ws / f"out{i}.txt").write_text(f"{i}\n")
        t = time.perf_counter()
        done = workspace.finish(ws, "p", ws.name, 1, "succeeded", identity=ME)
        fin.append(ms(t))
        ups = (Upstream(ws.name, ws, done.commit),)
    return prep, fin


def retries(base: Path, n: int) -> tuple[list[float], list[float]]:
    ws = base / "workspaces" / "flaky"
    prep, fin = [], []
    for attempt in range(1, n + 1):
        t = time.perf_counter()
        workspace.prepare(ws, "p", "flaky", attempt, (), identity=ME)
        prep.append(ms(t))
        (ws / "state.txt").write_text(f"{attempt}\n")
        t = time.perf_counter()
        workspace.finish(ws, "p", "flaky", attempt, "failed", identity=ME, error=workspace.ErrorContext("exit 1", 1))
        fin.append(ms(t))
    return prep, fin


def join(base: Path, width: int) -> tuple[list[float], list[float]]:
    ups = []
    for i in range(width):
        ws = base / "workspaces" / f"w{i}"
        workspace.prepare(ws, "p", ws.name, 1, (), identity=ME)
        (ws / f"w{i}.txt").write_text(f"{i}\n")
        ups.append(Upstream(ws.name, ws, workspace.finish(ws, "p", ws.name, 1, "succeeded", identity=ME).commit))
    ws = base / "workspaces" / "join"
    t = time.perf_counter()
    workspace.prepare(ws, "p", "join", 1, tuple(ups), identity=ME)
    prep = [ms(t)]
    t = time.perf_counter()
    workspace.finish(ws, "p", "join", 1, "succeeded", identity=ME)
    return prep, [ms(t)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    shapes: list[tuple[str, Callable[[Path], tuple[list[float], list[float]]]]] = [
        (f"chain of {args.jobs}, nothing changed", lambda b: chain(b, args.jobs, False)),
        (f"chain of {args.jobs}, a file each", lambda b: chain(b, args.jobs, True)),
        (f"{args.jobs // 5} attempts of one job", lambda b: retries(b, args.jobs // 5)),
        ("join of 100 upstreams", lambda b: join(b, 100)),
    ]
    for label, shape in shapes:
        base = Path(tempfile.mkdtemp(prefix="clowder-bench-ws-"))
        try:
            prep, fin = shape(base)
        finally:
            shutil.rmtree(base)
        print(f"{label:>36}: prepare median {statistics.median(prep):6.2f} ms   "
              f"finish median {statistics.median(fin):6.2f} ms")


if __name__ == "__main__":
    main()
