"""File events -> scheduler wake-ups. Watches directories, never trees: a root with many
pipelines keeps few watches (watchdog runs one thread per watch), and workspaces and .git are
never watched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from clowder.tree import Root

# (kind, pipeline): kind is "pipelines" (a pipeline appeared or went), "spec" or "request".
Notify = Callable[[str, str], None]
_IGNORED = {"status.toml"}


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Root, notify: Notify) -> None:
        self._pipelines = root.pipelines_dir
        self._wake = root.state_dir / "wake"
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                self._classify(Path(raw if isinstance(raw, str) else raw.decode()))

    def _classify(self, path: Path) -> None:
        if path.parent == self._wake:
            self._notify("request", path.name)
            return
        try:
            rel = path.relative_to(self._pipelines).parts
        except ValueError:
            return
        if len(rel) == 1:
            self._notify("pipelines", rel[0])
        elif (len(rel) == 2 and rel[1] == "pipeline.toml") or (len(rel) >= 2 and rel[1] == "jobs"):
            self._notify("spec", rel[0])
        elif len(rel) >= 2 and rel[1] == "requests":
            self._notify("request", rel[0])


class Watcher:
    """Keeps one watch on pipelines/ and .clowder/wake/, and three on each active pipeline
    (its directory, jobs/ and requests/)."""

    def __init__(self, root: Root, notify: Notify, poll: bool = False) -> None:
        self._root = root
        self._handler = _Handler(root, notify)
        self._observer: BaseObserver = PollingObserver(timeout=1.0) if poll else Observer()
        self._watches: dict[str, list[ObservedWatch]] = {}

    def start(self) -> None:
        wake = self._root.state_dir / "wake"
        for d in (wake, self._root.pipelines_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError:  # a read-only root: the daemon says so and waits; the sweep finds what changes
                continue
            self._observer.schedule(self._handler, str(d))
        self._observer.start()

    def watch(self, pipeline: str) -> None:
        if pipeline in self._watches:
            return
        d = self._root.pipelines_dir / pipeline
        watches = []
        for sub in (d, d / "jobs", d / "requests"):
            try:
                sub.mkdir(exist_ok=True)
                watches.append(self._observer.schedule(self._handler, str(sub)))
            except OSError:
                continue  # the pipeline went away; the next rescan forgets it
        self._watches[pipeline] = watches

    def unwatch(self, pipeline: str) -> None:
        for w in self._watches.pop(pipeline, []):
            try:
                self._observer.unschedule(w)
            except (KeyError, OSError):
                pass

    def watched(self) -> set[str]:
        return set(self._watches)

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
