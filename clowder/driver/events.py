"""What wakes the driver's loop: file events, attempt ends, and its own threads' news."""

from __future__ import annotations

from dataclasses import dataclass

from clowder.scheduler import Outcome


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Wake:
    """Tick again (the index was swapped: its specs are read there)."""


@dataclass(frozen=True)
class WriteFailed:
    """The writer thread could not write a file of the tree: see `_write_failures`."""


@dataclass(frozen=True)
class SpaceBack:
    """A full disk has room again: resume what it held back."""


@dataclass(frozen=True)
class Rescan:
    """A pipeline directory appeared or went."""


@dataclass(frozen=True)
class FilesChanged:
    """A spec or request file of the pipeline changed."""

    pipeline: str


@dataclass(frozen=True)
class SourceWarning:
    """Preparing a workspace found something to say about the pipeline's source."""

    pipeline: str


@dataclass(frozen=True)
class AttemptEnded:
    pipeline: str
    job: str
    attempt: int
    outcome: Outcome


Event = Stop | Wake | WriteFailed | SpaceBack | Rescan | FilesChanged | SourceWarning | AttemptEnded
