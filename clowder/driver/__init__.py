"""The scheduler's driver: its loop (clowder.driver.loop), the cache of each pipeline it serves
(cache), the launcher that starts attempts and records their ends (launcher), and the events
that wake it (events)."""

from clowder.driver.loop import Driver, Log, stderr_log

__all__ = ["Driver", "Log", "stderr_log"]
