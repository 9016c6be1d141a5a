"""Workspace benchmark: the git work on every attempt's path, prepare (before the process starts)
and finish (the commit after it ended), measured in-process without the scheduler.

Run: python tests/bench/bench_workspace.py [--jobs N]
Shapes: a chain of trivial attempts (nothing changed: the commit is written in-process), a chain
where each attempt adds a file (git add + commit, and a growing checkout), a retried attempt,
and a join of many upstreams. The wall time of whole pipelines is in bench_scheduler.py.

`--dir DIR` builds everything under DIR (a mount of another file system) instead of the temp dir.

Big repositories (`--files 10000,50000`, `--runs 3`; `--files 0` skips them): a source of that
many files, and a chain of 4 jobs starting from it, each writing one file. Printed: the first
job's prepare (a copy of the source), a downstream job's prepare by copy (forced with
CLOWDER_WORKSPACE_COPY=always: `auto` copies only where reflinks work) and by checkout, the new disk of the 4
workspaces (blocks counted once per inode: hard-linked objects are free) next to one working
tree, and, from the same run, a plain `git clone` (+ checkout) of the same repository.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clowder import workspace
from clowder.spec import Source
from clowder.workspace import Identity, Upstream, copy

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


def big_chain(src: Path, base: Path, jobs: int = 4) -> tuple[float, list[float], int, int]:
    """(first job's prepare, downstream prepares, new disk of the chain, one working tree)."""
    ups: tuple[Upstream, ...] = ()
    first, down = 0.0, []
    for i in range(jobs):
        ws = base / "workspaces" / f"j{i}"
        t = time.perf_counter()
        workspace.prepare(ws, "p", ws.name, 1, ups, identity=ME, source=Source(str(src)), root=base)
        (first := ms(t)) if i == 0 else down.append(ms(t))
        (ws / f"out{i}.txt").write_text(f"{i}\n")
        done = workspace.finish(ws, "p", ws.name, 1, "succeeded", identity=ME)
        ups = (Upstream(ws.name, ws, done.commit),)
    tree = disk(src) - disk(src / ".git")
    return first, down, disk(src, base / "workspaces") - disk(src), tree


def checkout_before(up: Upstream, base: Path) -> float:
    """A downstream's prepare by checkout (what ext4 gets; every file system before the copy)."""
    os.environ["CLOWDER_WORKSPACE_COPY"] = "never"
    try:
        ws = base / "workspaces" / "before"
        t = time.perf_counter()
        workspace.prepare(ws, "p", ws.name, 1, (up,), identity=ME)
        return ms(t)
    finally:
        os.environ["CLOWDER_WORKSPACE_COPY"] = "always"


def url_source(src: Path, base: Path) -> tuple[float, float]:
    """A first job's prepare from a file:// URL: the root's first pipeline (the cache is cloned)
    and its second (the cache is fetched, nothing new)."""
    out = []
    for name in ("p1", "p2"):
        ws = base / "pipelines" / name / "workspaces" / "j"
        t = time.perf_counter()
        workspace.prepare(ws, name, "j", 1, (), identity=ME, source=Source(f"file://{src}"), root=base)
        out.append(ms(t))
    return out[0], out[1]


def big(files: int, runs: int) -> None:
    top = Path(tempfile.mkdtemp(prefix="clowder-bench-big-"))
    try:
        src = top / "src"
        make_source(src, files)
        plain, cps, firsts, downs, news, tree, befores, urls = [], [], [], [], [], 0, [], []
        for r in range(runs):
            base = top / f"run{r}"
            base.mkdir()
            clone_ms, cp_ms = plain_clone(src, base)
            plain.append(clone_ms)
            cps.append(cp_ms)
            first, down, new, tree = big_chain(src, base)
            firsts.append(first)
            downs.append(statistics.median(down))
            news.append(new)
            befores.append(checkout_before(Upstream("j3", base / "workspaces" / "j3",
                                                    workspace.Repo(base / "workspaces" / "j3").head() or ""), base))
            urls.append(url_source(src, base))
            # Trees are deleted only at the end: ext4 skips recently freed inodes when it allocates
            # one, and files created right after a big delete cost several times more.
        mb = 1 << 20
        print(f"{files:>6} files: plain git clone+checkout {statistics.median(plain):7.0f} ms "
              f"(cp -a of its tree {statistics.median(cps):6.0f} ms) | "
              f"first job (from source) {statistics.median(firsts):7.0f} ms | "
              f"downstream job by copy {statistics.median(downs):7.0f} ms | "
              f"4-job chain new disk {statistics.median(news) / mb:6.1f} MB "
              f"(one working tree {tree / mb:.1f} MB, x{statistics.median(news) / tree:.2f})\n"
              f"{'':>12}downstream job by checkout {statistics.median(befores):7.0f} ms | "
              f"file:// URL source: first pipeline {statistics.median(u[0] for u in urls):7.0f} ms, "
              f"next pipeline {statistics.median(u[1] for u in urls):7.0f} ms")
    finally:
        shutil.rmtree(top)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--files", default="10000,50000", help="big-repository sizes; 0: skip them")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only-big", action="store_true")
    parser.add_argument("--dir", type=Path, help="where to build (e.g. a reflink mount); default: the temp dir")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(args.dir)
    os.environ.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    shapes: list[tuple[str, Callable[[Path], tuple[list[float], list[float]]]]] = [
        (f"chain of {args.jobs}, nothing changed", lambda b: chain(b, args.jobs, False)),
        (f"chain of {args.jobs}, a file each", lambda b: chain(b, args.jobs, True)),
        (f"{args.jobs // 5} attempts of one job", lambda b: retries(b, args.jobs // 5)),
        ("join of 100 upstreams", lambda b: join(b, 100)),
    ]
    # The chains copy (on ext4 too, where `auto` would check out), so both figures are printed.
    os.environ["CLOWDER_WORKSPACE_COPY"] = "always"
    probe = Path(tempfile.mkdtemp(prefix="clowder-bench-probe-"))
    print(f"FICLONE (reflinks) on {tempfile.gettempdir()}: {'yes' if copy._probe_clone(probe) else 'no'}")
    probe.rmdir()
    for files in (int(f) for f in args.files.split(",") if int(f) > 0):
        big(files, args.runs)
    os.environ.pop("CLOWDER_WORKSPACE_COPY")
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
