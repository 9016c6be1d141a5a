"""File events -> scheduler wake-ups. Watches directories, never trees: a root with many
pipelines keeps few watches (watchdog runs one thread per watch), and workspaces and .git are
never watched. Where file events cannot see every write (other machines'), it polls instead
(clowder.poller)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from clowder.poller import Look, Poller, PollWatch
from clowder.spec import format_duration
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
        if event.event_type == "modified" and event.is_directory and self._is_pipeline_dir(event.src_path):
            # What is in a pipeline's directory changed (the daemon wrote its status.toml, made its
            # logs/): not a pipeline appearing or going, which is all "pipelines" means. Each cost
            # a listing of pipelines/ (20-40 ms at 10,000 pipelines), 5-6 times per pipeline run.
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                self.classify(Path(raw if isinstance(raw, str) else raw.decode()))

    def _is_pipeline_dir(self, raw: str | bytes) -> bool:
        return Path(raw if isinstance(raw, str) else raw.decode()).parent == self._pipelines

    def classify(self, path: Path) -> None:
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
    (its directory, jobs/ and requests/). `poll`: look every `interval` seconds instead of
    waiting for file events (one thread, however many watches)."""

    def __init__(self, root: Root, notify: Notify, poll: bool = False, interval: float = 1.0) -> None:
        self._root = root
        self._handler = _Handler(root, notify)
        self._observer: BaseObserver | None = None if poll else Observer()
        self._poller = Poller(self._handler.classify, interval) if poll else None
        self._watches: dict[str, list[ObservedWatch | PollWatch]] = {}

    @property
    def how(self) -> str:
        """How it learns of changes, for the daemon's log."""
        if self._poller is not None:
            return f"polling every {format_duration(self._poller.interval)}"
        return "file events"

    def start(self) -> None:
        wake = self._root.state_dir / "wake"
        for d, look in ((wake, Look.OPEN), (self._root.pipelines_dir, Look.NAMES)):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError:  # a read-only root: the daemon says so and waits; the sweep finds what changes
                continue
            self._schedule(PollWatch(d, look))
        if self._observer is not None:
            self._observer.start()
        if self._poller is not None:
            self._poller.start()

    def _schedule(self, watch: PollWatch) -> ObservedWatch | PollWatch:
        if self._poller is not None:
            return self._poller.schedule(watch)
        assert self._observer is not None
        return self._observer.schedule(self._handler, str(watch.path))

    def watch(self, pipeline: str) -> None:
        if pipeline in self._watches:
            return
        d = self._root.pipelines_dir / pipeline
        watches = []
        # Polled: in a pipeline's directory only its spec matters (status files change there at
        # every step); requests arrive by rename, so which files there are says it all.
        for watch in (PollWatch(d, Look.STAT, frozenset({"pipeline.toml"})), PollWatch(d / "jobs"),
                      PollWatch(d / "requests", Look.NAMES)):
            try:
                watch.path.mkdir(exist_ok=True)
                watches.append(self._schedule(watch))
            except OSError:
                continue  # the pipeline went away; the next rescan forgets it
        self._watches[pipeline] = watches

    def unwatch(self, pipeline: str) -> None:
        for w in self._watches.pop(pipeline, []):
            if isinstance(w, PollWatch):
                if self._poller is not None:
                    self._poller.unschedule(w)
                continue
            try:
                if self._observer is not None:
                    self._observer.unschedule(w)
            except (KeyError, OSError):
                pass

    def watched(self) -> set[str]:
        return set(self._watches)

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
