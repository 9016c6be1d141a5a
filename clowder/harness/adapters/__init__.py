"""Adapters for real agent CLIs run non-interactively. Each one's Translator turns its tool's
output, line by line, into action-log events (clowder.harness.actions); the runner
(`python -m clowder.harness.adapters NAME -- COMMAND...`) runs the tool, keeps its raw output
beside the action log, and writes the events."""

from __future__ import annotations

import importlib
from typing import Any, Protocol

NAMES = ("claude", "codex", "aider")


class Translator(Protocol):
    raw_name: str  # the raw stream's file name in .clowder/<job>/
    echo_raw: bool  # the raw lines are readable text worth copying to the attempt's log

    def feed(self, line: str) -> list[dict[str, Any]]:
        """The events one line of the tool's stdout means (often none)."""

    def finish(self, exit_code: int) -> list[dict[str, Any]]:
        """The events left once the tool has exited: its final result, usage not yet reported."""


def translator(name: str) -> Translator:
    if name not in NAMES:
        raise ValueError(f"unknown adapter {name!r} (known: {', '.join(NAMES)})")
    module = importlib.import_module(f"clowder.harness.adapters.{name}")
    made: Translator = module.Translator()
    return made
