"""python -m tests.chaos --kills 500 --seed N: a chaos run, its figures, exit 1 if a promise broke."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from tests.chaos.run import run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--kills", type=int, default=500, help="SIGKILLs (and lock deletions) to make")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generator of pipelines and kills")
    parser.add_argument("--dir", type=Path, help="work directory (default: a new one under $TMPDIR)")
    parser.add_argument("--pace", type=float, default=1.0, help="longest pause between two kills, in seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    # SIGTERM ends the run as Ctrl-C does: its daemons stopped, its attempts' processes killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    figures, seconds = run_chaos(args.kills, args.seed, args.dir, args.keep, args.pace)
    print(figures.report())
    pace = f" --pace {args.pace:g}" if args.pace != 1.0 else ""
    print(f"  {seconds:.0f} s; reproduce: python -m tests.chaos --kills {args.kills} --seed {args.seed}{pace}")
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
