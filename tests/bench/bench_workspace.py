"""Workspace benchmark: the git work on every attempt's path, prepare (before the process starts)
and finish (the commit after it ended), measured in-process without the scheduler.

Run: python tests/bench/bench_workspace.py [--jobs N] [--smoke]
Shapes: a chain of trivial attempts (nothing changed: the commit is written in-process), a chain
where each attempt adds a file (git add + commit, and a growing checkout), a retried attempt,
and a join of many upstreams. The wall time of whole pipelines is in bench_scheduler.py.

`--dir DIR` builds everything under DIR (a mount of another file system) instead of the temp dir.

Big repositories (`--files 10000,50000`, `--runs 3`; `--files 0` skips them): a source of that
many files, and chains of 4 jobs starting from it, each writing one file. Printed, with a plain
`git clone` (+ checkout) of the same repository and a `cp -a` of its tree from the same run: the
first job's prepare, a downstream's prepare in a chain (its upstream's files handed on) and
under a fan-out (`auto`: a reflink copy where the file system shares data, else a checkout),
a copy and a checkout forced (CLOWDER_WORKSPACE_COPY=always / never), the new disk of each
chain's 4 workspaces next to one working tree, a file:// URL source, and jobs with a sparse checkout
of a tenth of the tree (`sparse_checkout`: 10 of its 100 top-level directories), a first job and a
downstream under a fan-out. New disk is given two
ways: blocks counted once per inode (hard-linked objects are free, but a reflinked file's
shared blocks count again), and how far the file system's free space went down (exact on a
file system of our own, e.g. a loop mount; noisy on one shared with other writers).

`--sparse-only`: of the big-repository figures, only the sparse ones and a plain clone (quick).
`--smoke`: every shape at a tiny size (3 jobs, 100 files, one run), to check the script still runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clowder import workspace
from clowder.spec import Source
from clowder.workspace import Identity, Upstream, copy

ME = Identity()
SYNC = [True]  # free() syncs first; not in --smoke: a sync waits for every other writer on a shared disk


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def chain(base: Path, n: int, write: bool) -> tuple[list[float], list[float]]:
    prep, fin, ups = [], [], ()
    for i in range(n):
        ws = base / "workspaces" / f"j{i}"
        t = time.perf_counter()
        workspace.prepare(workspace.AttemptRef(ws, "p", ws.name, 1), ups, workspace.Start(ME))
        prep.append(ms(t))
        if write:
            (ws / f"out{i}.txt").write_text(f"{i}\n")
        t = time.perf_counter()
        done = workspace.finish(workspace.AttemptRef(ws, "p", ws.name, 1), workspace.End("succeeded", ME))
        fin.append(ms(t))
        ups = (Upstream(ws.name, ws, done.commit),)
    return prep, fin


def retries(base: Path, n: int) -> tuple[list[float], list[float]]:
    ws = base / "workspaces" / "flaky"
    prep, fin = [], []
    for attempt in range(1, n + 1):
        t = time.perf_counter()
        workspace.prepare(workspace.AttemptRef(ws, "p", "flaky", attempt), (), workspace.Start(ME))
        prep.append(ms(t))
        (ws / "state.txt").write_text(f"{attempt}\n")
        t = time.perf_counter()
        workspace.finish(workspace.AttemptRef(ws, "p", "flaky", attempt),
                         workspace.End("failed", ME, error=workspace.ErrorContext("exit 1", 1)))
        fin.append(ms(t))
    return prep, fin


def join(base: Path, width: int) -> tuple[list[float], list[float]]:
    ups = []
    for i in range(width):
        ws = base / "workspaces" / f"w{i}"
        workspace.prepare(workspace.AttemptRef(ws, "p", ws.name, 1), (), workspace.Start(ME))
        (ws / f"w{i}.txt").write_text(f"{i}\n")
        done = workspace.finish(workspace.AttemptRef(ws, "p", ws.name, 1), workspace.End("succeeded", ME))
        ups.append(Upstream(ws.name, ws, done.commit))
    ws = base / "workspaces" / "join"
    t = time.perf_counter()
    workspace.prepare(workspace.AttemptRef(ws, "p", "join", 1), tuple(ups), workspace.Start(ME))
    prep = [ms(t)]
    t = time.perf_counter()
    workspace.finish(workspace.AttemptRef(ws, "p", "join", 1), workspace.End("succeeded", ME))
    return prep, [ms(t)]


SPARSE = tuple(f"d{i:02d}/" for i in range(10))  # a sparse job's paths: 10 of make_source's 100 top directories


def make_source(path: Path, files: int) -> None:
    """A repository of `files` files of ~200 bytes in 2,000 directories, one commit."""
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-C", str(path)]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    for i in range(files):
        d = path / f"d{i % 100:02d}" / f"e{(i // 100) % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_text(f"file {i}\n" * 20)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "source"], check=True)


def disk(*paths: Path) -> int:
    """Bytes of blocks under `paths`, each inode counted once (hard links share their blocks)."""
    seen, total = set(), 0
    for top in paths:
        for dirpath, _, files in os.walk(top):
            for name in [".", *files]:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def plain_clone(src: Path, base: Path) -> tuple[float, float]:
    """A plain `git clone` (with its checkout) and a `cp -a` of the clone's working tree: the
    floor of any way of making a job's files as files of its own on this disk."""
    t = time.perf_counter()
    subprocess.run(["git", "clone", "-q", str(src), str(base / "plain")], check=True)
    took = ms(t)
    shutil.rmtree(base / "plain" / ".git")
    t = time.perf_counter()
    subprocess.run(["cp", "-a", "--reflink=auto", str(base / "plain"), str(base / "plain-cp")], check=True)
    return took, ms(t)


def free(path: Path) -> int:
    """Free bytes of the file system (after a sync: delayed allocation)."""
    if SYNC[0]:
        os.sync()
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def big_chain(src: Path, base: Path, hand_on: bool, jobs: int = 4) -> tuple[float, list[float], int, int]:
    """(first job's prepare, downstream prepares, new disk of the chain counted per inode, and as
    the file system's free space went down): each job the only one starting from the previous
    (`hand_on`: what the scheduler says then), or not (as under a fan-out). Per inode counts a
    reflinked file's shared blocks again; the free space is exact on a file system of our own."""
    ups: tuple[Upstream, ...] = ()
    first, down = 0.0, []
    base.mkdir(parents=True, exist_ok=True)
    before = free(base)
    for i in range(jobs):
        ws = base / "workspaces" / f"j{i}"
        t = time.perf_counter()
        workspace.prepare(workspace.AttemptRef(ws, "p", ws.name, 1), ups, workspace.Start(ME, Source(str(src)), base))
        (first := ms(t)) if i == 0 else down.append(ms(t))
        (ws / f"out{i}.txt").write_text(f"{i}\n")
        done = workspace.finish(workspace.AttemptRef(ws, "p", ws.name, 1), workspace.End("succeeded", ME))
        ups = (Upstream(ws.name, ws, done.commit, hand_on),)
    return first, down, disk(src, base / "workspaces") - disk(src), before - free(base)


def forced(up: Upstream, base: Path, mode: str) -> float:
    """A downstream's prepare with CLOWDER_WORKSPACE_COPY=mode (always: copied, never: checked out)."""
    os.environ["CLOWDER_WORKSPACE_COPY"] = mode
    try:
        ws = base / "workspaces" / mode
        t = time.perf_counter()
        workspace.prepare(workspace.AttemptRef(ws, "p", ws.name, 1),
                          (Upstream(up.job, up.path, up.commit),), workspace.Start(ME))
        return ms(t)
    finally:
        os.environ.pop("CLOWDER_WORKSPACE_COPY")


def sparse(src: Path, up: Upstream, base: Path) -> tuple[float, float]:
    """Prepares of jobs with a sparse checkout (SPARSE): a first job (from the source) and a
    downstream of a fan-out (its upstream has other downstreams: nothing handed on)."""
    out = []
    for name, ups in (("sparse-first", ()), ("sparse-down", (Upstream(up.job, up.path, up.commit),))):
        ws = base / "workspaces" / name
        t = time.perf_counter()
        workspace.prepare(workspace.AttemptRef(ws, "p", name, 1), ups,
                          workspace.Start(ME, Source(str(src)), base, SPARSE))
        out.append(ms(t))
    return out[0], out[1]


def url_source(src: Path, base: Path) -> tuple[float, float]:
    """A first job's prepare from a file:// URL: the root's first pipeline (the cache is cloned)
    and its second (the cache is fetched, nothing new)."""
    out = []
    for name in ("p1", "p2"):
        ws = base / "pipelines" / name / "workspaces" / "j"
        t = time.perf_counter()
        workspace.prepare(workspace.AttemptRef(ws, name, "j", 1),
                          (), workspace.Start(ME, Source(f"file://{src}"), base))
        out.append(ms(t))
    return out[0], out[1]


@dataclass
class BigRun:
    """One run's figures (ms, bytes)."""

    clone: float
    cp: float
    first: float
    hand_on: float  # a downstream's prepare, its upstream's files handed on (a chain)
    moved_disk: int
    moved_df: int
    auto: float  # a downstream's prepare when its upstream has other downstreams (auto: copy or checkout)
    auto_disk: int
    auto_df: int
    copy: float
    checkout: float
    url_first: float
    url_next: float
    sparse_first: float  # a first job's prepare with a sparse checkout of a tenth of the tree
    sparse_down: float  # a fan-out downstream's prepare, the same sparse checkout


def big_run(src: Path, base: Path) -> BigRun:
    clone, cp = plain_clone(src, base)
    first, handed, moved_disk, moved_df = big_chain(src, base / "chain", True)
    _, auto, auto_disk, auto_df = big_chain(src, base / "fan-out", False)
    last = base / "fan-out" / "workspaces" / "j3"
    up = Upstream("j3", last, workspace.Repo(last).head() or "")
    copy_ms, checkout_ms = forced(up, base / "fan-out", "always"), forced(up, base / "fan-out", "never")
    url_first, url_next = url_source(src, base)
    sparse_first, sparse_down = sparse(src, up, base / "fan-out")
    return BigRun(clone, cp, first, statistics.median(handed), moved_disk, moved_df, statistics.median(auto),
                  auto_disk, auto_df, copy_ms, checkout_ms, url_first, url_next, sparse_first, sparse_down)


def sparse_only(files: int, runs: int) -> None:
    """The sparse figures alone (`--sparse-only`), beside a plain clone: a first job and its
    downstream under a fan-out, both with a sparse checkout of a tenth (the upstream's commit
    carries the whole tree). Quick where the full set writes a dozen whole trees per run."""
    top = Path(tempfile.mkdtemp(prefix="clowder-bench-sparse-"))
    try:
        src = top / "src"
        make_source(src, files)
        clones, firsts, downs = [], [], []
        for r in range(runs):
            base = top / f"run{r}"
            base.mkdir()
            t = time.perf_counter()
            subprocess.run(["git", "clone", "-q", str(src), str(base / "plain")], check=True)
            clones.append(ms(t))
            ws = base / "workspaces" / "up"
            t = time.perf_counter()
            workspace.prepare(workspace.AttemptRef(ws, "p", "up", 1), (), workspace.Start(ME, Source(str(src)), base,
                                                                                         SPARSE))
            firsts.append(ms(t))
            done = workspace.finish(workspace.AttemptRef(ws, "p", "up", 1), workspace.End("succeeded", ME))
            down = base / "workspaces" / "down"
            t = time.perf_counter()
            workspace.prepare(workspace.AttemptRef(down, "p", "down", 1), (Upstream("up", ws, done.commit),),
                              workspace.Start(ME, sparse_checkout=SPARSE))
            downs.append(ms(t))
        print(f"{files:>6} files, medians of {runs}: plain git clone+checkout {statistics.median(clones):7.0f} ms\n"
              f"  sparse checkout of a tenth: first job {statistics.median(firsts):7.0f} ms, "
              f"downstream, fan-out {statistics.median(downs):7.0f} ms")
    finally:
        shutil.rmtree(top)


def big(files: int, runs: int) -> None:
    top = Path(tempfile.mkdtemp(prefix="clowder-bench-big-"))
    try:
        src = top / "src"
        make_source(src, files)
        tree = disk(src) - disk(src / ".git")
        results = []
        for r in range(runs):
            (top / f"run{r}").mkdir()
            results.append(big_run(src, top / f"run{r}"))
            # Trees are deleted only at the end: ext4 skips recently freed inodes when it allocates
            # one, and files created right after a big delete cost several times more.

        def med(name: str) -> float:
            return float(statistics.median(getattr(r, name) for r in results))

        mb = 1 << 20
        print(f"{files:>6} files (one working tree {tree / mb:.1f} MB), medians of {runs}:\n"
              f"  plain git clone+checkout {med('clone'):7.0f} ms | cp -a of its tree {med('cp'):7.0f} ms\n"
              f"  first job (from the source)                  {med('first'):7.0f} ms\n"
              f"  downstream, chain (files handed on)          {med('hand_on'):7.0f} ms "
              f"| 4-job chain new disk {med('moved_disk') / mb:6.1f} MB (x{med('moved_disk') / tree:.2f}), "
              f"df {med('moved_df') / mb:6.1f} MB (x{med('moved_df') / tree:.2f})\n"
              f"  downstream, fan-out (auto: copy or checkout) {med('auto'):7.0f} ms "
              f"| 4 such jobs new disk {med('auto_disk') / mb:6.1f} MB (x{med('auto_disk') / tree:.2f}), "
              f"df {med('auto_df') / mb:6.1f} MB (x{med('auto_df') / tree:.2f})\n"
              f"  downstream, copy forced / checkout forced    {med('copy'):7.0f} / {med('checkout'):.0f} ms\n"
              f"  file:// URL source: first pipeline {med('url_first'):7.0f} ms, next {med('url_next'):7.0f} ms\n"
              f"  sparse checkout of a tenth: first job {med('sparse_first'):7.0f} ms, "
              f"downstream, fan-out {med('sparse_down'):7.0f} ms")
    finally:
        shutil.rmtree(top)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--files", default="10000,50000", help="big-repository sizes; 0: skip them")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only-big", action="store_true")
    parser.add_argument("--dir", type=Path, help="where to build (e.g. a reflink mount); default: the temp dir")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that the script runs")
    parser.add_argument("--sparse-only", action="store_true", help="big repositories: only the sparse figures")
    args = parser.parse_args()
    if args.smoke:
        args.jobs, args.files, args.runs, SYNC[0] = 3, "100", 1, False
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(args.dir)
    os.environ.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    shapes: list[tuple[str, Callable[[Path], tuple[list[float], list[float]]]]] = [
        (f"chain of {args.jobs}, nothing changed", lambda b: chain(b, args.jobs, False)),
        (f"chain of {args.jobs}, a file each", lambda b: chain(b, args.jobs, True)),
        (f"{max(1, args.jobs // 5)} attempts of one job", lambda b: retries(b, max(1, args.jobs // 5))),
        (f"join of {min(100, args.jobs)} upstreams", lambda b: join(b, min(100, args.jobs))),
    ]
    probe = Path(tempfile.mkdtemp(prefix="clowder-bench-probe-"))
    print(f"FICLONE (reflinks) on {tempfile.gettempdir()}: {'yes' if copy._probe_clone(probe) else 'no'}")
    probe.rmdir()
    for files in (int(f) for f in args.files.split(",") if int(f) > 0):
        (sparse_only if args.sparse_only else big)(files, args.runs)
    for label, shape in ([] if args.only_big else shapes):
        base = Path(tempfile.mkdtemp(prefix="clowder-bench-ws-"))
        try:
            prep, fin = shape(base)
        finally:
            shutil.rmtree(base)
        print(f"{label:>36}: prepare median {statistics.median(prep):6.2f} ms   "
              f"finish median {statistics.median(fin):6.2f} ms")


if __name__ == "__main__":
    main()
