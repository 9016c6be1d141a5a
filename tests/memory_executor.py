"""A second executor for testing the driver's decisions: attempts live in memory and the test
decides when each ends. It implements clowder.executor.Executor, as a remote executor would; the
workspaces, commits and status files around it stay real."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from clowder.executor import Exited, ExitRecord, OnExit, Probe, Run
from clowder.state import KillReason

Key = tuple[str, str, int]


@dataclass
class Attempt:
    run: Run
    pid: int
    record: ExitRecord | None = None
    ended: bool = False  # its processes are gone (with or without a record)
    killed_for: KillReason | None = None
    signals: list[int] = field(default_factory=list)


class MemoryExecutor:
    """Outlives the drivers attached to it, as processes outlive a daemon."""

    def __init__(self) -> None:
        self.attempts: dict[Key, Attempt] = {}
        self._on_exit: OnExit | None = None
        self._changed = threading.Condition()

    def attach(self, on_exit: OnExit) -> MemoryExecutor:
        """Driver(make_executor=executor.attach): the driver's exit callback."""
        self._on_exit = on_exit
        return self

    # -- the protocol ---------------------------------------------------------------------------

    def start(self, launch: Run) -> int:
        launch.log_file.parent.mkdir(parents=True, exist_ok=True)
        launch.log_file.write_text(f"{' '.join(launch.argv)}\n")
        with self._changed:
            attempt = Attempt(launch, 1000 + len(self.attempts))
            self.attempts[_key(launch)] = attempt
            self._changed.notify_all()
        return attempt.pid

    def probe(self, launch: Run) -> Probe:
        attempt = self.attempts.get(_key(launch))
        if attempt is None:
            return Probe.LOST
        if attempt.record is not None:
            return Probe.ENDED
        return Probe.RUNNING

    def exit_record(self, launch: Run) -> ExitRecord | None:
        attempt = self.attempts.get(_key(launch))
        return attempt.record if attempt is not None else None

    def adopt(self, launch: Run, killed_for: KillReason | None = None) -> int | None:
        attempt = self.attempts[_key(launch)]
        attempt.killed_for = killed_for or attempt.killed_for
        if attempt.ended:  # gone without a record while no driver watched: its end is reported now
            assert self._on_exit is not None
            self._on_exit(Exited(launch.pipeline, launch.job, launch.attempt, attempt.killed_for))
        return attempt.pid

    def kill(self, launch: Run, sig: int, reason: KillReason) -> None:
        attempt = self.attempts[_key(launch)]
        attempt.killed_for = reason
        attempt.signals.append(sig)

    def end(self, launch: Run) -> None:
        pass

    def shutdown(self) -> None:
        pass

    # -- the test's side ------------------------------------------------------------------------

    def wait_started(self, pipeline: str, job: str, attempt: int, timeout: float = 30.0) -> Attempt:
        """The attempt, once the driver's launcher has started it (it launches off the loop)."""
        with self._changed:
            if not self._changed.wait_for(lambda: (pipeline, job, attempt) in self.attempts, timeout):
                raise AssertionError(f"{pipeline}/{job} attempt {attempt} was not started")
            return self.attempts[(pipeline, job, attempt)]

    def finish(self, pipeline: str, job: str, attempt: int, exit_code: int | None, at: datetime) -> None:
        """The attempt's process ends (`exit_code` None: without an exit record); the driver is
        told as the local executor's waiter thread tells it (here, in the test's thread)."""
        run = self.attempts[(pipeline, job, attempt)]
        run.ended = True
        run.record = ExitRecord(exit_code, at) if exit_code is not None else None
        assert self._on_exit is not None
        self._on_exit(Exited(pipeline, job, attempt, run.killed_for))


def _key(launch: Run) -> Key:
    return (launch.pipeline, launch.job, launch.attempt)
