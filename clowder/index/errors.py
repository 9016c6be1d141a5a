"""The index's errors."""

from __future__ import annotations

from clowder.errors import EXIT_BAD_INPUT, ClowderError


class IndexUnavailable(ClowderError):
    """The index cannot be used (missing, from a newer clowder, or a refused query)."""


class QueryError(ClowderError):
    exit_code = EXIT_BAD_INPUT
