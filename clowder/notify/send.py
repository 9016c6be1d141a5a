"""Sending one notification: run a command (argv, the event as JSON on stdin) or POST it to a
webhook, within a timeout. Never raises: what went wrong is the result's `reason`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clowder.processes import AttemptProcesses
from clowder.spec import format_duration

_REASON_CHARS = 300  # of what a failed command printed, in the log and the outbox


@dataclass(frozen=True)
class Sent:
    ok: bool
    reason: str = ""


class Senders:
    """The notify commands this daemon runs, marked so that all of them (and what they start) can
    be ended: at their timeout, when the daemon stops, and at the next start after a kill -9."""

    def __init__(self, marker: str) -> None:
        self.processes = AttemptProcesses(marker, None)  # found by marker: they never join a cgroup
        self._lock = threading.Lock()
        self._running: subprocess.Popen[bytes] | None = None

    def run(self, argv: tuple[str, ...], body: bytes, env: Mapping[str, str], cwd: Path, timeout: float) -> Sent:
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as output:
            # Files, not pipes: a command that never reads its stdin, or leaves a child holding
            # its stdout, cannot make the daemon wait past the timeout.
            stdin.write(body)
            stdin.seek(0)
            try:
                proc = subprocess.Popen(argv, stdin=stdin, stdout=output, stderr=subprocess.STDOUT, cwd=cwd,
                                        env={**env, **self.processes.env(env)}, start_new_session=True)
            except (OSError, ValueError) as e:
                return Sent(False, f"cannot run {argv[0]}: {getattr(e, 'strerror', None) or e}")
            with self._lock:
                self._running = proc
            try:
                code = _wait_unreaped(proc.pid, timeout)
            finally:
                self._end(proc)
            if code is None:
                return Sent(False, f"timed out after {format_duration(timeout)}; killed")
            if code != 0:
                output.seek(0)
                said = output.read()[-_REASON_CHARS:].decode(errors="replace").strip()
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                return Sent(False, how + (f": {said}" if said else ""))
            return Sent(True)

    def _end(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill the command's process group and anything else it started, then reap it: until
        then its pid cannot be reused, so the group killed is the command's."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.processes.end(group=proc.pid, timeout=5.0)
        proc.wait()
        with self._lock:
            self._running = None

    def kill(self) -> None:
        """End the command running now, if any (the daemon is stopping and cannot wait for it)."""
        with self._lock:
            proc = self._running
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def end_leftovers(self) -> int:
        """Kill what an earlier daemon of this root left running (it was killed mid-send); how many."""
        found = self.processes.members()
        if found:
            self.processes.end(timeout=5.0)
        return len(found)


def _wait_unreaped(pid: int, timeout: float) -> int | None:
    """The command's exit code (negative: the signal that killed it), or None at the timeout; it
    is left unreaped (WNOWAIT) so its process group is still its own when it is killed."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == pid:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        if time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def post(url: str, body: bytes, timeout: float) -> Sent:
    """POST the event as JSON. `timeout` bounds the connection and each read (urllib's own)."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "clowder-notify"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(64 * 1024)
    except urllib.error.HTTPError as e:
        return Sent(False, f"HTTP {e.code} {e.reason}")
    except urllib.error.URLError as e:
        return Sent(False, f"cannot reach {url}: {e.reason}")
    except TimeoutError:
        return Sent(False, f"timed out after {format_duration(timeout)}")
    except (OSError, ValueError) as e:
        return Sent(False, f"cannot post to {url}: {e}")
    return Sent(True)
