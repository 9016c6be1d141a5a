"""One chaos run, start to figures: set up a work directory, drive, check."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.chaos.check import Figures, check, check_processes, snapshot
from tests.chaos.driver import Run, drive, keep_or_remove, setup


def run_chaos(kills: int, seed: int, work: Path | None = None, keep: bool = False,
              pace: float = 1.0) -> tuple[Figures, float]:
    """Run it; return the figures and the seconds it took. The work directory is removed unless
    `keep` or a promise was broken (then its path is in the report)."""
    work = work or Path(tempfile.mkdtemp(prefix=f"clowder-chaos-{seed}-"))
    run = Run(work=work / "w", seed=seed)
    began = time.monotonic()
    setup(run)
    before = snapshot(run.outside)
    try:
        drive(run, kills, pace)
    except BaseException:  # interrupted: what the attempts left (a `sleep 600 &`) must not outlive the run
        check_processes(run, Figures(seed, run.kills))
        raise
    figures = check(run, before)
    if not figures.ok:
        figures.problems.append(f"the run is kept in {run.work}")
    keep_or_remove(run, keep or not figures.ok)
    return figures, time.monotonic() - began
