"""What the benchmarks share: DAG shapes, the real programs a job runs, running Clowder, make and
the peers on a DAG as a user would (their command lines, as subprocesses), and printing ratios.

Every figure a benchmark prints is a ratio to a reference measured in the same process (make -j2 on
the same DAG, an idle or empty root), medians of >= 3 runs, so that a machine shared with other work
moves both sides together. Clowder is driven only through its command line (`clowder init`, `run`,
`watch`, `status`): the benchmarks measure what a user gets, and survive changes to its internals.
The one exception is `init_root`, the function behind `clowder init`, called in-process: a root per
run, and a Python start each would make the smoke test slow.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from clowder import template  # noqa: E402 - this checkout's, whatever is installed

Dag = dict[str, list[str]]  # job -> the jobs it needs, in the order a user would write them


class Kind(Enum):
    """What each job of a benchmark runs: always a real program, never a shell builtin."""

    NOCHANGE = "nochange"  # /usr/bin/true: a process that changes nothing in its workspace
    WRITE = "write"  # /usr/bin/cp of a small file of its own: its commit adds a tree entry and a new blob
    CLOCK = "clock"  # /usr/bin/date +%s%N: changes nothing, and prints when it started, to the nanosecond


def program(name: str) -> str:
    """The absolute path of a real program, so no shell and no PATH search is measured."""
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"error: `{name}` is not installed; the benchmarks need coreutils and make")
    return found


def argv(kind: Kind, job: str, inputs: Path) -> list[str]:
    """The command a job runs, the same for Clowder and every peer; `inputs` holds each job's file."""
    if kind is Kind.NOCHANGE:
        return [program("true")]
    if kind is Kind.CLOCK:
        return [program("date"), "+%s%N"]
    return [program("cp"), str(inputs / f"{job}.txt"), f"{job}.txt"]


def chains(n_chains: int, length: int) -> Dag:
    return {f"c{c}-{i}": ([f"c{c}-{i - 1}"] if i else []) for c in range(n_chains) for i in range(length)}


def fan_out(width: int) -> Dag:
    """A start job, `width` jobs that need it, and a join of all of them: width + 2 jobs."""
    dag: Dag = {"start": []}
    dag.update({f"w{i}": ["start"] for i in range(width)})
    dag["join"] = [f"w{i}" for i in range(width)]
    return dag


class Scratch:
    """One directory for every tree a benchmark makes, deleted only at the end. On ext4, creating
    files soon after many were deleted costs several times more (the inode allocator skips recently
    freed inodes): deleting a 1,000-job tree between runs made the next run up to 50% slower."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"clowder-{prefix}-"))

    def new(self, name: str = "run") -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.path))

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def write_inputs(d: Path, dag: Dag) -> Path:
    """A small file of its own for each job to copy (its blob is new to the object store)."""
    d.mkdir(parents=True, exist_ok=True)
    for job in dag:
        (d / f"{job}.txt").write_text(f"the output of {job}\n" * 4)
    return d


# ---------------------------------------------------------------------------------------------
# Clowder, through its command line


def clowder_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "clowder", *args]


def clowder_env() -> dict[str, str]:
    """The benchmark's own checkout first on the path, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def init_root(path: Path) -> Path:
    """What `clowder init PATH` does."""
    return template.init_root(path).path


def write_pipeline(root: Path, name: str, dag: Dag, kind: Kind, inputs: Path) -> Path:
    """pipelines/<name>/ written elsewhere and renamed into place, so a daemon serving the root never
    sees half a pipeline (it would wait `settle` for the files to settle)."""
    staging = Path(tempfile.mkdtemp(dir=root / ".clowder"))
    (staging / "jobs").mkdir()
    (staging / "pipeline.toml").write_text('prompt = "benchmark"\n')
    for job, needs in dag.items():
        text = f"command = {json.dumps(argv(kind, job, inputs))}\n"
        if needs:
            text += f"needs = {json.dumps(needs)}\n"
        (staging / "jobs" / f"{job}.toml").write_text(text)
    final = root / "pipelines" / name
    final.parent.mkdir(exist_ok=True)
    os.rename(staging, final)
    return final


@dataclass(frozen=True)
class Run:
    """One measured process: its wall time and its peak resident memory."""

    seconds: float
    max_rss_mb: float


def timed(cmd: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None,
          log: Path | None = None) -> Run:
    """Run `cmd` to its end; wall time and the peak RSS of the process (wait4's ru_maxrss: the
    largest of it and the children it waited for, here the Python process)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        t = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log else ""
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... exited {proc.returncode}; the end of its output:\n{tail}")
    return Run(seconds, usage.ru_maxrss / 1024)


def clowder_run(root: Path, pipelines: Sequence[str], max_parallel: int) -> Run:
    """`clowder run PIPELINES --max-parallel N`, the whole command, as a user runs it."""
    cmd = clowder_argv("run", *pipelines, "--max-parallel", str(max_parallel), "--root", str(root))
    return timed(cmd, env=clowder_env(), log=root.parent / "clowder-run.log")


def run_dag(scratch: Scratch, dag: Dag, kind: Kind, max_parallel: int = 2, name: str = "p") -> tuple[Run, Path]:
    """A new root holding one pipeline of `dag`, run to its end; the run and the root."""
    base = scratch.new(name)
    root = init_root(base / "root")
    write_pipeline(root, name, dag, kind, write_inputs(base / "inputs", dag))
    return clowder_run(root, [name], max_parallel), root


def clowder_startup(repeat: int) -> float:
    """Median seconds of `clowder --version`: Python and imports, part of every command's time."""
    return statistics.median(timed(clowder_argv("--version"), env=clowder_env()).seconds for _ in range(repeat))


def job_clocks(root: Path, pipeline: str) -> dict[str, int]:
    """Each CLOCK job's start, in ns, as it printed it. File mtimes would not do: the kernel stamps
    them from a clock that ticks every few ms."""
    logs = root / "pipelines" / pipeline / "logs"
    return {d.name: int((d / "1.log").read_text().split()[0]) for d in logs.iterdir() if (d / "1.log").exists()}


def edge_latencies(clocks: dict[str, int], dag: Dag) -> list[float]:
    """ms from an upstream's start (a CLOCK job ends as it starts) to its single dependent's start."""
    return [(clocks[job] - clocks[needs[0]]) / 1e6 for job, needs in dag.items() if len(needs) == 1]


# ---------------------------------------------------------------------------------------------
# make -j2: the reference


def run_make(scratch: Scratch, dag: Dag, kind: Kind, jobs: int = 2) -> Run:
    """`make -jN` running the same programs on the same DAG. Each recipe is one simple command, so
    make execs it directly, without a shell: one process per job, as the jobs' own."""
    d = scratch.new("make")
    inputs = write_inputs(d / "inputs", dag) if kind is Kind.WRITE else d
    (d / "out").mkdir()
    lines = [".PHONY: all " + " ".join(dag), "all: " + " ".join(dag)]
    for job, needs in dag.items():
        lines += [f"{job}: {' '.join(needs)}", "\t@" + " ".join(argv(kind, job, inputs))]
    (d / "Makefile").write_text("\n".join(lines) + "\n")
    return timed([program("make"), "-s", f"-j{jobs}", "-C", str(d / "out"), "-f", str(d / "Makefile")])


# ---------------------------------------------------------------------------------------------
# Printing


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    """The median, and the range of the runs in brackets."""
    return f"{fmt.format(median(values) * scale)} [{fmt.format(min(values) * scale)}-{fmt.format(max(values) * scale)}]"


def verdict(ratio: float, limit: float) -> str:
    return f"target <= {limit:g}x: {'met' if ratio <= limit else 'missed'}"


def header(title: str) -> None:
    print(f"\n== {title}", flush=True)


def row(*cells: str, widths: Sequence[int] = (30, 26, 26, 9)) -> None:
    padded = [c.ljust(w) for c, w in zip(cells, widths, strict=False)] + list(cells[len(widths):])
    print("  " + " ".join(padded).rstrip(), flush=True)


def interleaved(repeat: int, *runs: Callable[[], float]) -> list[list[float]]:
    """Each run `repeat` times, taking turns, so a change in the machine's load hits each alike."""
    out: list[list[float]] = [[] for _ in runs]
    for _ in range(repeat):
        for i, f in enumerate(runs):
            out[i].append(f())
    return out

