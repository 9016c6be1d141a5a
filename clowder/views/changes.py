"""State changes for live pages: a cheap scan of the status files that changed since the last."""

from __future__ import annotations

import os
import time
from pathlib import Path

from clowder.tree import Root, is_name
from clowder.views.cache import FileKey, file_key, racy
from clowder.views.records import Change
from clowder.views.tree import pipeline_state, read_job


class Scanner:
    """Finds the status files that changed since the last scan. Each scan costs two stats per
    pipeline; status files are read only where their directory changed."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self._dirs: dict[str, tuple[FileKey | None, ...]] = {}
        self._files: dict[str, FileKey | None] = {}
        self._started = False

    def scan(self) -> list[Change]:
        """Changes since the previous scan; the first scan only takes the baseline."""
        names = [n for n in self.root.pipeline_names() if is_name(n)]
        changes: list[Change] = []
        now_ns = time.time_ns()
        for name in names:
            changes += self._scan_pipeline(name, now_ns)
        for gone in set(self._dirs) - set(names):
            del self._dirs[gone]
            prefix = str(self.root.pipeline(gone).dir) + os.sep
            for f in [f for f in self._files if f.startswith(prefix)]:
                del self._files[f]
            changes.append(Change(gone, None, "removed"))
        first, self._started = not self._started, True
        return [] if first else changes

    @property
    def started(self) -> bool:
        return self._started

    def _scan_pipeline(self, name: str, now_ns: int) -> list[Change]:
        paths = self.root.pipeline(name)
        dirs = (file_key(paths.dir), file_key(paths.status_dir))
        old = self._dirs.get(name)
        if old == dirs and not racy(dirs, now_ns):
            return []
        self._dirs[name] = dirs
        changes = []
        try:
            entries = [e.name for e in os.scandir(paths.status_dir) if e.name.endswith(".toml")]
        except OSError:
            entries = []
        for entry in sorted(entries):
            job = entry[: -len(".toml")]
            if is_name(job) and self._changed(paths.status_dir / entry):
                status = read_job(paths, job)
                changes.append(Change(name, job, status.state.value, status.attempt))
        # After its jobs: a client that sees the pipeline end has seen how its jobs ended.
        if self._changed(paths.status_file) or old is None:
            changes.append(Change(name, None, pipeline_state(paths)))
        return changes

    def _changed(self, path: Path) -> bool:
        key = file_key(path)
        if self._files.get(str(path), ()) == key:
            return False
        self._files[str(path)] = key
        return True
