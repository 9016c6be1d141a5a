"""Fairness benchmark: two pipelines side by side. A pipeline of two short chains runs next to a
pipeline fanning out 1,000 jobs, and its dispatch latency is set against the same pipeline alone.

Run: python tests/bench/bench_fairness.py [--repeat 3] [--width 1000] [--length 50] [--smoke]

Both run under one `clowder run a-fan b-chains --max-parallel 4` (the idle reference: `clowder run
b-chains --max-parallel 4` on a root of its own), interleaved in the same process. The fan-out is
named to sort first, so a scheduler serving ready jobs in name order starves the chains. Every job
is `/usr/bin/date +%s%N`: a latency is one chain job's start to the next one's, as the jobs printed
it. Only the edges that started while the fan-out still had jobs waiting count as "beside" it.
Issue 17's target: the chains' median beside the fan-out <= 2x their idle median, worst <= 250 ms.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    Kind,
    Scratch,
    chains,
    clowder_run,
    edge_latencies,
    fan_out,
    header,
    init_root,
    job_clocks,
    median,
    row,
    spread,
    verdict,
    write_inputs,
    write_pipeline,
)

FAN, CHAINS = "a-fan", "b-chains"
MAX_PARALLEL = 4


@dataclass(frozen=True)
class Latencies:
    median_ms: float
    worst_ms: float
    edges: int  # how many edges counted
    of: int  # of how many in the pipeline


def run(scratch: Scratch, width: int, length: int, beside: bool) -> Latencies:
    base = scratch.new("beside" if beside else "idle")
    root = init_root(base / "root")
    inputs = write_inputs(base / "inputs", {})
    small = chains(2, length)
    write_pipeline(root, CHAINS, small, Kind.CLOCK, inputs)
    names = [CHAINS]
    if beside:
        write_pipeline(root, FAN, fan_out(width), Kind.CLOCK, inputs)
        names.insert(0, FAN)
    clowder_run(root, names, MAX_PARALLEL)
    clocks = job_clocks(root, CHAINS)
    edges = [(job, needs[0]) for job, needs in small.items() if needs]
    if beside:  # only what ran while the fan-out's ready jobs waited: from its start to its last worker's
        fan = job_clocks(root, FAN)
        last_worker = max(t for job, t in fan.items() if job.startswith("w"))
        edges = [(job, up) for job, up in edges if fan["start"] <= clocks[job] <= last_worker]
    lat = edge_latencies(clocks, {job: [up] for job, up in edges})
    if not lat:
        raise SystemExit("error: no chain job ran while the fan-out waited; use a wider --width")
    return Latencies(median(lat), max(lat), len(lat), len(small) - 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (medians; default 3)")
    parser.add_argument("--width", type=int, default=1000, help="jobs the fan-out starts at once (default 1,000)")
    parser.add_argument("--length", type=int, default=50, help="length of each of the two chains (default 50)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run: checks the script works")
    args = parser.parse_args()
    width, length, repeat = (20, 3, 1) if args.smoke else (args.width, args.length, args.repeat)
    scratch = Scratch("bench-fairness")
    try:
        idle, beside = [], []
        for _ in range(repeat):
            idle.append(run(scratch, width, length, beside=False))
            beside.append(run(scratch, width, length, beside=True))
        header(f"dispatch latency of 2 chains of {length} (ms, median [range] of {repeat} runs), "
               f"--max-parallel {MAX_PARALLEL}")
        row("", "alone (idle)", f"beside a {width}-job fan-out", "ratio")
        ratio = median([b.median_ms for b in beside]) / median([i.median_ms for i in idle])
        row("median edge", spread([i.median_ms for i in idle], fmt="{:.1f}"),
            spread([b.median_ms for b in beside], fmt="{:.1f}"), f"{ratio:.2f}x", verdict(ratio, 2))
        worst = max(b.worst_ms for b in beside)
        row("worst edge", spread([i.worst_ms for i in idle], fmt="{:.1f}"),
            spread([b.worst_ms for b in beside], fmt="{:.1f}"),
            f"{worst / median([i.median_ms for i in idle]):.1f}x",
            f"target: worst <= 250 ms: {'met' if worst <= 250 else 'missed'} ({worst:.0f} ms)")
        counted = ", ".join(f"{b.edges}/{b.of}" for b in beside)
        print(f"  edges that ran while the fan-out had jobs waiting, per run: {counted}")
    finally:
        scratch.close()


if __name__ == "__main__":
    main()
