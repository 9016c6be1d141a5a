"""Scheduler benchmark: the per-job path against `make -j2`, flat cost as a DAG grows, a wide join's
start, a deep chain's memory, and dispatch latency.

Run: python tests/bench/bench_scheduler.py [--repeat 3] [--big] [--smoke]

Every job is a real program (never a shell builtin), in two kinds: /usr/bin/true, which changes
nothing, and /usr/bin/cp of a small file of its own, whose commit adds a new blob. Clowder runs as a
user runs it (`clowder run P --max-parallel 2`, the whole command); `make -j2` runs the same programs
on the same DAG, interleaved with it in the same process. Every figure is a median of --repeat runs
with the range in brackets, printed as a ratio to its reference, against issue 17's targets:

- the per-job path: 1,000 jobs (10 chains of 100; a 1,000-wide fan-out and join) <= 3x make -j2;
- flat cost: ms per job at 5,000 jobs within 15% of 1,000 (by default 200 -> 1,000; --big: 1,000 -> 5,000;
  chains are at least 10 side by side, so that no size waits on one chain's dispatch latency);
- a wide join (1,000; --big: 5,000) starts <= 1 s after its last upstream;
- a 500-deep chain's peak RSS (the `clowder run` process) <= 2x a 5-deep one's.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    Dag,
    Kind,
    Scratch,
    chains,
    clowder_startup,
    edge_latencies,
    fan_out,
    header,
    interleaved,
    job_clocks,
    median,
    row,
    run_dag,
    run_make,
    spread,
    verdict,
)

KINDS = (Kind.NOCHANGE, Kind.WRITE)
LABEL = {Kind.NOCHANGE: "true", Kind.WRITE: "cp a file"}


@dataclass(frozen=True)
class Sizes:
    small: int  # jobs of the smaller DAG of the flat-cost pair
    large: int  # jobs of the larger one, and of the per-job path against make
    chain_length: int
    join: int
    deep: int
    shallow: int
    min_chains: int = 10  # so that ready work always waits for the 2 slots: no chain waits on its own latency
    one_shape: bool = False  # --smoke: chains only (fan_out runs in the join's measure)


DEFAULT = Sizes(small=200, large=1000, chain_length=100, join=1000, deep=500, shallow=5)
BIG = Sizes(small=1000, large=5000, chain_length=100, join=5000, deep=500, shallow=5)
SMOKE = Sizes(small=6, large=6, chain_length=3, join=4, deep=3, shallow=2, min_chains=2, one_shape=True)


def shapes(sizes: Sizes, jobs: int) -> dict[str, Dag]:
    n_chains = max(sizes.min_chains, jobs // sizes.chain_length)  # 200 jobs: 10 x 20; 1,000: 10 x 100
    dags = {"chains": chains(n_chains, jobs // n_chains), "fan-out + join": fan_out(jobs - 2)}
    return {"chains": dags["chains"]} if sizes.one_shape else dags


def per_job(scratch: Scratch, sizes: Sizes, repeat: int) -> None:
    """Against make -j2, and ms per job at both sizes; one table."""
    header(f"the per-job path: clowder run --max-parallel 2 vs make -j2, same programs, same DAG "
           f"(s, median [range] of {repeat})")
    row("DAG / job", "clowder", "make -j2", "ratio", "ms/job")
    per_ms: dict[tuple[str, Kind, int], float] = {}
    for jobs in sorted({sizes.small, sizes.large}):  # one size when --smoke
        for shape, dag in shapes(sizes, jobs).items():
            for kind in KINDS:
                ours, makes = interleaved(repeat, lambda d=dag, k=kind: run_dag(scratch, d, k)[0].seconds,
                                          lambda d=dag, k=kind: run_make(scratch, d, k).seconds)
                ratios = [c / m for c, m in zip(ours, makes, strict=True)]
                per_ms[(shape, kind, jobs)] = median(ours) / len(dag) * 1000
                target = f"   {verdict(median(ratios), 3)}" if jobs == sizes.large else ""
                roots = sum(1 for needs in dag.values() if not needs)
                name = f"{roots}x{len(dag) // roots} chains" if shape == "chains" else f"{len(dag)} fan-out+join"
                row(f"{name} / {LABEL[kind]}", spread(ours), spread(makes),
                    f"{median(ratios):.1f}x", f"{per_ms[(shape, kind, jobs)]:.2f}{target}")
    # What a run costs whatever its size (Python, imports, the index, the daemon's start and stop),
    # measured as a 1-job pipeline and taken off, so that the smaller DAG is not charged more of it.
    fixed = {kind: median([run_dag(scratch, chains(1, 1), kind)[0].seconds for _ in range(repeat)]) for kind in KINDS}
    header(f"flat cost: ms per job at {sizes.large} jobs / at {sizes.small}, a 1-job run's time taken off "
           f"(true: {fixed[Kind.NOCHANGE]:.2f} s, cp: {fixed[Kind.WRITE]:.2f} s) (target: within 15%, <= 1.15x)")
    for shape in shapes(sizes, sizes.large):
        for kind in KINDS:
            small, large = (marginal(per_ms[(shape, kind, n)], n, fixed[kind]) for n in (sizes.small, sizes.large))
            row(f"{shape} / {LABEL[kind]}", f"{small:.2f} -> {large:.2f} ms", f"{large / small:.2f}x", "",
                verdict(large / small, 1.15))


def marginal(ms_per_job: float, jobs: int, fixed: float) -> float:
    """ms per job once a 1-job run's time is taken off."""
    return (ms_per_job * jobs - fixed * 1000) / max(1, jobs - 1)


def latency(scratch: Scratch, repeat: int, length: int) -> float:
    """Dispatch latency: an upstream's start to its dependent's start over two chains of `length`
    side by side (never waiting for a slot at --max-parallel 2); each job is `date +%s%N`."""
    dag = chains(2, length)
    medians, worst = [], []
    for _ in range(repeat):
        _, root = run_dag(scratch, dag, Kind.CLOCK)
        lat = edge_latencies(job_clocks(root, "p"), dag)
        medians.append(median(lat))
        worst.append(max(lat))
    header(f"dispatch latency over {len(dag) - 2} edges of 2 chains (ms, median [range] of {repeat})")
    row("median edge", spread(medians, fmt="{:.1f}"))
    row("worst edge", spread(worst, fmt="{:.1f}"))
    return median(medians)


def wide_join(scratch: Scratch, repeat: int, width: int, edge_ms: float) -> None:
    """From the last upstream's start to the join's start (its upstreams are `date +%s%N`)."""
    dag = fan_out(width)
    delays = []
    for _ in range(repeat):
        _, root = run_dag(scratch, dag, Kind.CLOCK)
        clocks = job_clocks(root, "p")
        delays.append((clocks["join"] - max(clocks[u] for u in dag["join"])) / 1e6)
    header(f"a {width}-wide join: its start after its last upstream's (ms, median [range] of {repeat})")
    row("join delay", spread(delays, fmt="{:.0f}"), f"{median(delays) / edge_ms:.1f}x one chain edge",
        "", f"target <= 1 s at 5,000: {'met' if median(delays) <= 1000 else 'missed'}")


def memory(scratch: Scratch, sizes: Sizes, repeat: int) -> None:
    """Peak RSS of `clowder run` on a deep chain against a shallow one, interleaved."""
    deep, shallow = interleaved(repeat, lambda: run_dag(scratch, chains(1, sizes.deep), Kind.NOCHANGE)[0].max_rss_mb,
                                lambda: run_dag(scratch, chains(1, sizes.shallow), Kind.NOCHANGE)[0].max_rss_mb)
    header(f"memory: peak RSS of `clowder run` on one chain (MB, median [range] of {repeat})")
    ratio = median(deep) / median(shallow)
    row(f"{sizes.deep}-deep / {sizes.shallow}-deep", f"{spread(deep, fmt='{:.0f}')}", spread(shallow, fmt="{:.0f}"),
        f"{ratio:.2f}x", verdict(ratio, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (medians; default 3)")
    parser.add_argument("--big", action="store_true", help="1,000 -> 5,000 jobs and a 5,000-wide join")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run: checks the script works")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else BIG if args.big else DEFAULT
    repeat = 1 if args.smoke else args.repeat
    scratch = Scratch("bench-scheduler")
    try:
        print(f"clowder startup (`clowder --version`, part of every run below): "
              f"{clowder_startup(repeat) * 1000:.0f} ms; trees under {scratch.path}")
        edge = latency(scratch, repeat, 3 if args.smoke else 101)
        per_job(scratch, sizes, repeat)
        wide_join(scratch, repeat, sizes.join, edge)
        memory(scratch, sizes, repeat)
    finally:
        scratch.close()


if __name__ == "__main__":
    main()
