"""The one error family Clowder raises, and the exit codes the CLI maps it to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_WORK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CRASH = 3  # an error Clowder did not expect: a bug; the traceback is in a crash log
EXIT_INTERRUPTED = 130


class ClowderError(Exception):
    """Base of every error Clowder raises on purpose; `exit_code` is what the CLI returns."""

    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file: printed as `FILE: key.path: message`."""

    path: Path | str
    key: str
    message: str

    def __str__(self) -> str:
        key = self.key or "<file>"
        return f"{self.path}: {key}: {self.message}"


class SpecError(ClowderError):
    """One or more problems in hand-written files (clowder.toml, templates, specs)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def one(cls, path: Path | str, key: str, message: str) -> SpecError:
        return cls([Problem(path, key, message)])


class RootNotFound(ClowderError):
    pass


class UsageError(ClowderError):
    """Bad arguments that are not about a file: an unknown pipeline, a bad name."""


class LockHeld(ClowderError):
    pass


class DiskFull(ClowderError):
    """No space left on the device (ENOSPC) or the quota is used up (EDQUOT) where Clowder had
    to write: the work could not be done, and can be once space is freed."""

    exit_code = EXIT_WORK_FAILED


class WorkspaceError(ClowderError):
    """A git operation on a workspace failed (raised by clowder.workspace; defined here so that
    what tells failures apart, clowder.diskfull, does not import the workspace package)."""

    exit_code = EXIT_WORK_FAILED
