"""Finished pipelines: what a root full of them costs the daemon and `clowder status`.

Run: python tests/bench/bench_root.py [--repeat 3] [--finished 1000] [--many 10000] [--big] [--smoke]

One real 10-job pipeline is run to its end by `clowder run`; its files (specs, status files, logs;
not its workspaces) are copied as --finished (1,000) and --many (10,000) finished pipelines, each
with its own name. Against an empty root, in the same process, interleaved:

- `clowder watch` (started, then left until it idles) runs a new 200-job pipeline (2 chains of 100,
  /usr/bin/true) dropped into the root: from its directory's rename into pipelines/ to its status
  saying succeeded. Target: within 10% of the empty root (<= 1.10x). --big does it at --many too.
- `clowder status` (the whole command, after `clowder reindex`) at --many pipelines against
  --finished: target <= 2x. `clowder reindex` is printed per pipeline alongside.
- `clowder watch` starting on each root until it idles (the daemon reading the root).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    Dag,
    Kind,
    Scratch,
    chains,
    clowder_argv,
    clowder_env,
    clowder_run,
    header,
    init_root,
    interleaved,
    median,
    row,
    spread,
    timed,
    verdict,
    write_inputs,
    write_pipeline,
)

FINISHED_DAG: Dag = {"plan": [], "dev": ["plan"], "test": ["dev"], "lint": ["dev"],
                     "w1": ["test"], "w2": ["test"], "w3": ["test"], "w4": ["test"],
                     "join": ["w1", "w2", "w3", "w4", "lint"], "report": ["join"]}
@dataclass(frozen=True)
class Size:
    chain: int  # the new pipeline's two chains' length
    idle_window: float  # seconds without CPU that say the daemon has settled


SUCCEEDED = re.compile(r'^state = "succeeded"$', re.MULTILINE)


def model_pipeline(scratch: Scratch) -> Path:
    """One real 10-job pipeline run to its end by `clowder run`, without its workspaces (nothing reads
    a finished pipeline's workspaces unless asked for its artifacts)."""
    base = scratch.new("model")
    root = init_root(base / "root")
    write_pipeline(root, "model", FINISHED_DAG, Kind.NOCHANGE, write_inputs(base / "inputs", {}))
    clowder_run(root, ["model"], 2)
    shutil.rmtree(root / "pipelines" / "model" / "workspaces")
    return root / "pipelines" / "model"


def finished_root(scratch: Scratch, count: int, model: Path) -> Path:
    """A root of `count` finished pipelines, each a copy of `model` under its own name."""
    root = init_root(scratch.new(f"root{count}") / "root")
    for i in range(count):
        shutil.copytree(model, root / "pipelines" / f"done{i:05d}")
    return root


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, window: float, timeout: float = 600.0) -> None:
    """Until the process used no CPU for a whole `window`: the daemon has read the root."""
    deadline = time.monotonic() + timeout
    last = cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu_ticks(pid)
        if now == last:
            return
        last = now
    raise SystemExit(f"error: the daemon (pid {pid}) never became idle")


def watched_run(root: Path, scratch: Scratch, number: int, size: Size, timeout: float = 600.0) -> float:
    """Start `clowder watch`, let it idle, drop a pipeline of 2 chains in, time it to its end, stop."""
    log = open(root.parent / "watch.log", "ab")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(clowder_argv("watch", "--max-parallel", "2", "--root", str(root)), env=clowder_env(),
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_idle(daemon.pid, size.idle_window)
        name = f"new{number}"
        status = root / "pipelines" / name / "status.toml"
        inputs = write_inputs(scratch.new("inputs"), {})
        t = time.perf_counter()
        write_pipeline(root, name, chains(2, size.chain), Kind.NOCHANGE, inputs)
        while time.perf_counter() - t < timeout:
            if status.exists() and SUCCEEDED.search(status.read_text()):
                return time.perf_counter() - t
            if daemon.poll() is not None:
                raise SystemExit(f"error: clowder watch exited {daemon.returncode}; see {log.name}")
            time.sleep(0.01)
        raise SystemExit(f"error: {name} did not succeed within {timeout:.0f} s; see {log.name}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()


def started(root: Path, size: Size) -> float:
    """`clowder watch` from its start until it idles: what reading the root costs the daemon."""
    log = open(root.parent / "watch.log", "ab")  # noqa: SIM115 - closed below
    t = time.perf_counter()
    daemon = subprocess.Popen(clowder_argv("watch", "--root", str(root)), env=clowder_env(),
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_idle(daemon.pid, size.idle_window)
        return time.perf_counter() - t - size.idle_window
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()


def startup_cost(roots: dict[int, Path], size: Size, repeat: int) -> None:
    """`roots`: pipelines -> root, the empty one first. Finished pipelines should cost a start
    little: the daemon leaves them unread (clowder.driver.dormant)."""
    runs = interleaved(repeat, *[lambda r=r: started(r, size) for r in roots.values()])
    header(f"`clowder watch` starting until it idles (s, within {size.idle_window:g} s; median [range] of {repeat})")
    row("empty root", spread(runs[0]))
    for n, times in zip(list(roots)[1:], runs[1:], strict=True):
        row(f"root of {n} finished pipelines", spread(times), f"{median(times) - median(runs[0]):+.2f} s")


def daemon_cost(scratch: Scratch, roots: dict[int, Path], size: Size, repeat: int) -> None:
    """`roots`: pipelines -> root, the empty one first."""
    finished = list(roots)[1:]
    counter = iter(range(10**6))
    runs = interleaved(repeat, *[lambda r=r: watched_run(r, scratch, next(counter), size) for r in roots.values()])
    header(f"`clowder watch` running a {2 * size.chain}-job pipeline (2 chains of {size.chain}, --max-parallel 2) "
           f"(s, median [range] of {repeat})")
    empty = runs[0]
    row("empty root", spread(empty))
    for n, times in zip(finished, runs[1:], strict=True):
        ratio = median(times) / median(empty)
        row(f"root of {n} finished pipelines", spread(times), f"{ratio:.2f}x empty", "", verdict(ratio, 1.1))


def status_cost(roots: dict[int, Path], few: int, many: int, repeat: int) -> None:
    roots_ = [roots[few], roots[many]]
    reindex = [timed(clowder_argv("reindex", "--root", str(r)), env=clowder_env()).seconds for r in roots_]
    small, large = interleaved(repeat, *[lambda r=r: timed(clowder_argv("status", "--root", str(r)),
                                                            env=clowder_env()).seconds for r in roots_])
    header(f"`clowder status` (whole command, every pipeline; ms, median [range] of {repeat})")
    row("", f"{few} pipelines", f"{many} pipelines", "ratio")
    ratio = median(large) / median(small)
    row("clowder status", spread(small, 1000, "{:.0f}"), spread(large, 1000, "{:.0f}"), f"{ratio:.2f}x",
        verdict(ratio, 2))
    row("reindex (once), ms a pipeline", f"{reindex[0] / few * 1000:.2f}",
        f"{reindex[1] / many * 1000:.2f}", f"{reindex[1] / many / (reindex[0] / few):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (medians; default 3)")
    parser.add_argument("--finished", type=int, default=1000, help="the smaller root (default 1,000)")
    parser.add_argument("--many", type=int, default=10000, help="the larger root, for status (default 10,000)")
    parser.add_argument("--big", action="store_true", help="run the daemon on the larger root too")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run: checks the script works")
    args = parser.parse_args()
    few, many, repeat = (2, 4, 1) if args.smoke else (args.finished, args.many, args.repeat)
    size = Size(3, 0.3) if args.smoke else Size(100, 1.0)
    scratch = Scratch("bench-root")
    print(f"trees under {scratch.path}; {os.cpu_count()} cores", flush=True)
    try:
        model = model_pipeline(scratch)
        t = time.perf_counter()
        roots = {n: finished_root(scratch, n, model) for n in (0, few, many)}
        print(f"wrote {few + many} finished pipelines in {time.perf_counter() - t:.0f} s", flush=True)
        status_cost(roots, few, many, repeat)  # first: the daemon's runs add a pipeline to the root each
        startup_cost(roots, size, repeat)
        daemon_cost(scratch, {n: roots[n] for n in (0, few, many) if n != many or args.big}, size, repeat)
    finally:
        scratch.close()


if __name__ == "__main__":
    main()
