"""The chaos run at CI size: tens of SIGKILLs, with a fixed seed, and every promise checked.
`python -m tests.chaos --kills 500 --seed N` runs a big one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.run import run_chaos

pytestmark = pytest.mark.chaos

CI_KILLS = 40
CI_SEED = 20261130


def test_no_promise_breaks_under_random_kills(tmp_path: Path) -> None:
    figures, seconds = run_chaos(CI_KILLS, CI_SEED, tmp_path)
    print(figures.report(), f"\n  {seconds:.0f} s")
    assert figures.total_kills == CI_KILLS
    assert figures.ok, figures.report()
