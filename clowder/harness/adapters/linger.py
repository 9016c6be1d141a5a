"""What the adapter runner watches in a CLI's events: its final answer, after which it has a short
grace period to exit (Claude Code and Codex are known to hang there), and retry lines, which are
not progress (an unreachable API makes Codex 0.171 print "waiting for network" forever: shown
once, they leave the attempt's log quiet, so the job's `idle_timeout` ends it)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

RESULT_GRACE = 30.0  # seconds; CLOWDER_RESULT_GRACE in the job's environment sets another
KILL_AFTER = 5.0  # seconds between the SIGTERM that ends a lingering CLI and a SIGKILL


def result_grace() -> float:
    try:
        grace = float(os.environ.get("CLOWDER_RESULT_GRACE", RESULT_GRACE))
    except ValueError:
        return RESULT_GRACE
    return grace if grace >= 0 else RESULT_GRACE


class Watch:
    def __init__(self, proc: subprocess.Popen[bytes], translator: object, grace: float) -> None:
        self.proc = proc
        self.translator = translator
        self.grace = grace
        self.failed = False  # a `failure` event was logged
        self.ended = False  # the CLI lingered after its answer and was ended
        self._retry: str | None = None  # the retry line shown last, if nothing else came since
        self._timer: threading.Timer | None = None

    def shows(self, event: dict[str, Any]) -> bool:
        """Note an event; whether the attempt's log shows it (a retry repeated with no progress
        between is logged in the action log only)."""
        self.failed = self.failed or event["type"] == "failure"
        if event["type"] == "result" or getattr(self.translator, "answered", False):
            self._answered()
        if event["type"] == "message" and event.get("role") == "retry":
            repeated = event.get("text") == self._retry
            self._retry = event.get("text")
            return not repeated
        self._retry = None
        return True

    def _answered(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.grace, self._end)
            self._timer.daemon = True
            self._timer.start()

    def _end(self) -> None:
        if self.proc.poll() is not None:
            return
        self.ended = True
        print(f"clowder adapter: the agent answered but was still running {self.grace:g}s later: ending it",
              file=sys.stderr, flush=True)
        self.proc.terminate()
        try:
            self.proc.wait(KILL_AFTER)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def exit_code(self, code: int) -> int:
        """The CLI's exit code, or, if it was ended after answering, that of a CLI that answered:
        0 unless it reported a failure."""
        if self._timer is not None:
            self._timer.cancel()
        if self.ended:
            return 1 if self.failed else 0
        return code
