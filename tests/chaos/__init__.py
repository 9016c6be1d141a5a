"""The chaos suite: `python -m tests.chaos --kills 500 --seed N` (see run.py)."""
