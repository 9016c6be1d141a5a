"""One chaos run, start to figures: set up a work directory, drive, check."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.chaos.check import Figures, check, snapshot
from tests.chaos.driver import Run, drive, keep_or_remove, setup


def run_chaos(kills: int, seed: int, work: Path | None = None, keep: bool = False) -> tuple[Figures, float]:
    """Run it; return the figures and the seconds it took. The work directory is removed unless
    `keep` or a promise was broken (then its path is in the report)."""
    work = work or Path(tempfile.mkdtemp(prefix=f"clowder-chaos-{seed}-"))
    run = Run(work=work / "w", seed=seed)
    began = time.monotonic()
    setup(run)
    before = snapshot(run.outside)
    drive(run, kills)
    figures = check(run, before)
    if not figures.ok:
        figures.problems.append(f"the run is kept in {run.work}")
    keep_or_remove(run, keep or not figures.ok)
    return figures, time.monotonic() - began
