"""Tick benchmark: what one step of the daemon's loop costs as a pipeline grows, in-process.

Run: python tests/bench/bench_tick.py [--repeat 3] [--smoke]

The one benchmark that drives internals rather than the command line: the driver's per-tick work on
the scheduler's side (`PipelineCache.view()`, `reconcile`, applying the plan to the cache and its
ready queues), with no processes, files or git, so that what grows with the pipeline is not hidden
in the per-job path's milliseconds. A 1,000- and a 5,000-job pipeline (a fan-out, and 10 chains) run
at `max_parallel` 2, one attempt ending per tick, as `clowder run` would see them. Issue 17's target:
a tick's cost per job at 5,000 jobs within 15% of its cost at 1,000 (it was 124 and 462 µs a job).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import header, interleaved, median, row, spread, verdict

from clowder.driver.cache import PipelineCache
from clowder.scheduler import Limits, Outcome, SetJob, SetPipeline, reconcile
from clowder.spec import Config, Pipeline
from clowder.state import JobState
from clowder.tree import Root
from clowder.validate import build_pipeline


def pipeline(shape: str, jobs: int) -> Pipeline:
    if shape == "fan-out":
        specs = {f"w{i:05}": {"command": ["x"]} for i in range(jobs)}
    else:  # 10 chains side by side
        specs = {f"c{c}-{i:05}": {"command": ["x"], **({"needs": [f"c{c}-{i - 1:05}"]} if i else {})}
                 for c in range(10) for i in range(jobs // 10)}
    return build_pipeline("p", {"prompt": "x"}, specs, Config())


def per_job_us(p: Pipeline) -> float:
    """CPU microseconds of ticks per job, running the pipeline to its end. CPU time, not wall
    time: on a machine shared with other work, the wall time of a step this short is mostly the
    time the process waited for a core."""
    cache = PipelineCache(Root(Path("/nonexistent")).pipeline("p"))  # nothing is read or written
    cache.pipeline, cache.loaded = p, True
    limits, now, spent = Limits(max_parallel=2), datetime(2026, 1, 1, tzinfo=UTC), 0.0
    running: list[str] = []
    while True:
        t = time.process_time()
        plan = reconcile([cache.view()], now, limits)
        cache.full = False
        for change in plan.ready:
            cache.ready.apply(change)
        for action in plan.actions:
            if isinstance(action, SetJob):
                cache.set_job(action.status)
                if action.status.state is JobState.RUNNING:
                    cache.alive[action.status.job] = True
                    running.append(action.status.job)
            elif isinstance(action, SetPipeline):
                cache.status = action.status
        cache.outcomes = {}
        spent += time.process_time() - t
        if not running:
            break
        now += timedelta(seconds=1)
        job = running.pop(0)
        cache.outcomes[job] = (cache.jobs[job].attempt, Outcome(0, now))
    assert cache.status.state.value == "succeeded", cache.status
    return spent / len(p.jobs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (medians; default 3)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run: checks the script works")
    args = parser.parse_args()
    small, large, repeat = (20, 100, 1) if args.smoke else (1000, 5000, args.repeat)
    header(f"a tick's CPU time per job, --max-parallel 2 (µs, median [range] of {repeat}), at {large} against {small}")
    row("pipeline", f"at {small}", f"at {large}", "ratio")
    for shape in ("fan-out", "chains"):
        few, many = pipeline(shape, small), pipeline(shape, large)
        at_small, at_large = interleaved(repeat, lambda p=few: per_job_us(p), lambda p=many: per_job_us(p))
        ratio = median(at_large) / median(at_small)
        row(shape, spread(at_small, fmt="{:.0f}"), spread(at_large, fmt="{:.0f}"), f"{ratio:.2f}x",
            verdict(ratio, 1.15))


if __name__ == "__main__":
    main()
