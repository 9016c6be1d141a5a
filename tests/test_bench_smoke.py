"""The benchmarks under tests/bench/ still run: each script at a tiny size (--smoke), all at once.

Benchmarks are not tests (pytest does not collect tests/bench/); this only keeps them from rotting
as the code they drive changes. Their figures mean nothing at these sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench"

# script -> its arguments, and a line each must print (a table it would otherwise not reach)
SCRIPTS = {
    "bench_scheduler.py": (["--smoke"], "target <= 2x"),  # the deep-chain memory table, printed last
    "bench_fairness.py": (["--smoke"], "beside a 20-job fan-out"),
    "bench_root.py": (["--smoke"], "root of 2 finished pipelines"),
    # Only Clowder against make: what drives doit and Snakemake does not change with Clowder's code,
    # and they take seconds to start (nor does CI have them).
    "bench_peers.py": (["--smoke", "--kinds", "write", "--dags", "fan-out", "--peers", "clowder"],
                       "clowder run --max-parallel 2"),
    "bench_index.py": (["--smoke"], "job file edit -> index"),
    "bench_workspace.py": (["--smoke"], "join of 3 upstreams"),  # after the big-repository figures
    "bench_tick.py": (["--smoke"], "chains"),
    "bench_poll.py": (["--smoke"], "clowder poller, 5 pipelines"),
    "bench_floor.py": (["--smoke"], "chains / cp a file"),  # its last table
}


@pytest.mark.slow
def test_every_benchmark_runs_at_a_tiny_size() -> None:
    procs = {name: subprocess.Popen([sys.executable, str(BENCH / name), *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
             for name, (args, _) in SCRIPTS.items()}
    failed = []
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        expected = SCRIPTS[name][1]
        if proc.returncode != 0 or expected not in out:
            failed.append(f"{name} exited {proc.returncode}, expected {expected!r} in:\n{out[-3000:]}")
    assert not failed, "\n\n".join(failed)


def test_pytest_does_not_collect_the_benchmarks() -> None:
    """Benchmark files are not named test_*.py: a plain `pytest` never runs them."""
    assert sorted(p.name for p in BENCH.glob("test_*.py")) == []
