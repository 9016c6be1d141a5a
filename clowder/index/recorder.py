"""The daemon's side of the index: each change the scheduler makes, recorded as it makes it —
collected during a tick, handed over at its end, and written in one transaction by a thread
of its own — and never a reason for the scheduler to stop. The rows come from
clowder.snapshot, as a rebuild's do."""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clowder import snapshot
from clowder.errors import Problem
from clowder.index.db import Index
from clowder.index.errors import IndexUnavailable
from clowder.index.rows import ArtifactRow
from clowder.snapshot import JobRows
from clowder.spec import Pipeline, is_name
from clowder.stamp import RACY_NS, Stamp, signature, status_signature
from clowder.state import JobStatus, PipelineStatus
from clowder.tree import PipelinePaths, Root

RETRY_AFTER = 30.0  # seconds between attempts to recreate an index that failed
# Seconds the thread lets steps gather before a transaction: one write then covers many steps,
# and a job that started and ended meanwhile is written once. Well within the 50 ms in which
# a change must reach the index; it keeps the index's work off the moments jobs start.
GATHER = 0.01
CHECK_EVERY = 1.0  # seconds between looks at whether the file was swapped (a stat per tick adds up)


@dataclass(frozen=True)
class _Loaded:
    """The statuses the driver holds of a pipeline (`status` None: read status.toml here)."""

    paths: PipelinePaths
    jobs: dict[str, JobStatus]
    status: PipelineStatus | None


@dataclass(frozen=True)
class _SpecRead:
    """What the spec files gave, stamped before they were read."""

    paths: PipelinePaths
    pipeline: Pipeline | None
    problems: list[Problem]
    stamp: Stamp


@dataclass
class _Outputs:
    """Artifacts written in a transaction, whose model outputs the index may lack."""

    paths: PipelinePaths
    artifacts: list[ArtifactRow]


@dataclass
class _Batch:
    """What one tick changed."""

    forgets: set[str]
    loads: dict[str, _Loaded]
    specs: dict[str, _SpecRead]
    statuses: dict[str, PipelineStatus]
    jobs: dict[tuple[str, str], JobStatus]
    handover: bool  # carries every pipeline again, after the index was recreated


class Recorder:
    """Keeps `.clowder/index.sqlite` in step with what one driver writes. Inactive (every call a
    no-op) until `start()`. The driver's loop only collects and hands over; SQLite work (and
    the GIL waits of its system calls) happens on the recorder's thread, as status files are
    written by fsio.Writer's. When the index fails, the failure is logged, the file removed
    (so nobody reads it as current), and a fresh one made later; `flush()` then asks the
    driver to hand over every pipeline again."""

    def __init__(self, root: Root, log: Callable[[str], None], wake: Callable[[], None] | None = None) -> None:
        self.root = root
        self.log = log
        self._wake = wake  # makes the driver tick, so that it sees a hand-over request soon
        self.active = False
        self._queue: queue.SimpleQueue[_Batch | threading.Event | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._handover = threading.Event()  # set by the thread: the driver must hand over everything
        self._handing_over = False
        self._clear()
        # The thread's own state.
        self.index: Index | None = None
        self._retry_at = 0.0
        self._checked = 0.0
        self._awaiting = False  # batches are dropped until a hand-over arrives
        # What the index holds for each job, by pipeline: a scan of every job's key per pipeline
        # loaded made a daemon's start at 10,000 pipelines quadratic (minutes).
        self._recorded: dict[str, dict[str, JobRows]] = {}
        self._live: dict[str, PipelinePaths] = {}  # pipelines this daemon keeps live

    def retry_now(self) -> None:
        """Make an index that failed (a full disk) again at the next look, not after RETRY_AFTER."""
        if self._retry_at != math.inf:
            self._retry_at = 0.0

    def _clear(self) -> None:
        self._forgets: set[str] = set()
        self._loads: dict[str, _Loaded] = {}
        self._specs: dict[str, _SpecRead] = {}
        self._statuses: dict[str, PipelineStatus] = {}
        self._jobs: dict[tuple[str, str], JobStatus] = {}

    def start(self) -> None:
        self.active = True
        self._thread = threading.Thread(target=self._run, daemon=True, name="clowder-index")
        self._thread.start()

    def _open(self) -> bool:
        try:
            self.index = Index.open(self.root)
            return True
        except IndexUnavailable as e:  # a newer schema: leave it alone
            self.log(f"index: {e}; not updating it")
            self._retry_at = math.inf
        except Exception as e:
            self.log(f"index: cannot open {self.root.index_file}: {e}; retrying in {RETRY_AFTER:.0f} s")
            self._retry_at = time.monotonic() + RETRY_AFTER
        self.index = None
        return False

    # -- what the driver tells ------------------------------------------------------------------

    def loaded(self, paths: PipelinePaths, jobs: Mapping[str, JobStatus], status: PipelineStatus | None = None) -> None:
        """The driver read (or, after a resync, holds) these statuses of a pipeline; a status
        file it could not read is read here again, and recorded as the rebuild would. `status`
        None: read status.toml from the tree."""
        if self.active:
            self._forgets.discard(paths.name)
            self._loads[paths.name] = _Loaded(paths, dict(jobs), status)
            self._statuses.pop(paths.name, None)
            for key in [k for k in self._jobs if k[0] == paths.name]:
                del self._jobs[key]

    def spec(self, paths: PipelinePaths, pipeline: Pipeline | None, problems: list[Problem], stamp: Stamp) -> None:
        """The spec files, stamped `stamp` before they were read, gave this pipeline (or these problems)."""
        if self.active:
            self._specs[paths.name] = _SpecRead(paths, pipeline, problems, stamp)

    def pipeline_status(self, pipeline: str, status: PipelineStatus) -> None:
        if self.active:
            self._statuses[pipeline] = status

    def job(self, pipeline: str, status: JobStatus) -> None:
        if self.active:
            self._jobs[(pipeline, status.job)] = status

    def forget(self, pipeline: str) -> None:
        """The pipeline's directory is gone."""
        if self.active:
            self._loads.pop(pipeline, None)
            self._specs.pop(pipeline, None)
            self._statuses.pop(pipeline, None)
            for key in [k for k in self._jobs if k[0] == pipeline]:
                del self._jobs[key]
            self._forgets.add(pipeline)

    # -- writing --------------------------------------------------------------------------------

    def _pending(self) -> bool:
        return bool(self._forgets or self._loads or self._specs or self._statuses or self._jobs)

    def flush(self) -> bool:
        """Hand what was collected since the last flush to the recorder's thread, which writes it
        in one transaction. True means the index was recreated or swapped (`clowder reindex`):
        hand over every pipeline again (`loaded`, and `spec` as the specs are read again)."""
        if not self.active:
            return False
        if self._handover.is_set():
            self._handover.clear()
            self._clear()  # superseded by the hand-over
            self._handing_over = True
            return True
        if not self._pending():
            return False
        self._queue.put(_Batch(self._forgets, self._loads, self._specs, self._statuses, self._jobs,
                               self._handing_over))
        self._handing_over = False
        self._clear()
        return False

    # -- the recorder's thread ------------------------------------------------------------------

    def sync(self, timeout: float = 10.0) -> None:
        """Wait until the thread has written what was flushed and looked at the file (opening an
        index that failed, if its time has come: then `flush` asks for a hand-over). The driver
        calls it as it stops, to hand a just-made index what it ran rather than leave it empty."""
        if not self.active:
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _look(self) -> None:
        try:
            self._usable()  # notice a swapped or removed file while nothing happens
        except Exception as e:
            self._fail(e)

    def _run(self) -> None:
        self._open()
        while True:
            try:
                batch = self._queue.get(timeout=CHECK_EVERY)
            except queue.Empty:
                self._look()
                continue
            if isinstance(batch, threading.Event):  # sync(): earlier batches are written by now
                self._checked = 0.0
                self._look()
                batch.set()
                continue
            stop = batch is None
            batches = [] if batch is None else [batch]
            if not stop:
                time.sleep(GATHER)
            synced: threading.Event | None = None
            while not stop:  # what queued up meanwhile goes in the same transaction
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(more, threading.Event):  # set once what came before it is written
                    synced = more
                    break
                stop = more is None
                batches += [] if more is None else [more]
            try:
                if batches and self._usable():
                    if self._awaiting:  # only a hand-over, and what follows it, is written
                        first = next((i for i, b in enumerate(batches) if b.handover), len(batches))
                        batches = batches[first:]
                    if batches:
                        self._write(self.index, _merged(batches))  # type: ignore[arg-type]
                        self._awaiting = False
            except Exception as e:  # the scheduler goes on whatever the index does
                self._fail(e)
            if synced is not None:
                self._checked = 0.0
                self._look()
                synced.set()
            if stop:
                break
        self._finish()

    def _usable(self) -> bool:
        """Whether the open index is still the file at its path; if not (a reindex swapped it, it
        was removed, or it failed and its retry time has come), open the file there now and ask
        the driver for a hand-over, dropping batches until it comes."""
        now = time.monotonic()
        if self.index is not None:
            if now - self._checked < CHECK_EVERY:
                return True
            self._checked = now
            if not self.index.replaced():
                return True
            self.log("index: the file was replaced or removed; recording every pipeline again")
            self._close_quietly()
        elif now < self._retry_at:
            return False
        self._reset()
        if self._open():
            self._awaiting = True
            self._handover.set()
            if self._wake is not None:
                self._wake()
        return False

    def _reset(self) -> None:
        self._recorded.clear()
        self._live.clear()

    def _fail(self, e: Exception) -> None:
        self.log(f"index: {type(e).__name__}: {e}; removing it (status reads the tree meanwhile), "
                 f"recreating it in {RETRY_AFTER:.0f} s; `clowder reindex` repairs it at once")
        self._close_quietly()
        for suffix in ("", "-wal", "-shm"):
            try:
                Path(f"{self.root.index_file}{suffix}").unlink(missing_ok=True)
            except OSError:
                pass
        self._reset()
        self._awaiting = True
        self._retry_at = time.monotonic() + RETRY_AFTER

    def _close_quietly(self) -> None:
        if self.index is not None:
            try:
                self.index.close()
            except Exception:
                pass
            self.index = None

    def _write(self, index: Index, batches: list[_Batch]) -> None:
        outputs: dict[str, _Outputs] = {}
        dropped = False
        with index.transaction():
            for batch in batches:
                dropped = self._apply(index, batch, outputs) or dropped
            self._put_outputs(index, outputs)
            if dropped:
                index.drop_unused_outputs()

    def _apply(self, index: Index, batch: _Batch, outputs: dict[str, _Outputs]) -> bool:
        """Write one batch; True if a model output may no longer be used."""
        dropped = False
        for name in sorted(batch.forgets):
            index.forget(name)
            self._live.pop(name, None)
            self._recorded.pop(name, None)
        for name, loaded in batch.loads.items():
            outputs.setdefault(name, _Outputs(loaded.paths, [])).artifacts.extend(self._put_loaded(index, loaded))
            dropped = True
        for name, read in batch.specs.items():
            head, job_specs, edges = snapshot.spec_rows(read.paths, read.pipeline, read.problems, self.root.path)
            index.put_spec(name, head, job_specs, edges)
            index.set_spec_fresh(name, signature(read.stamp))
        for name, pstatus in batch.statuses.items():
            index.put_status(name, snapshot.pipeline_status_row(pstatus, None))
        changes = []
        for (name, job), jstatus in batch.jobs.items():
            new = snapshot.job_rows(name, jstatus)
            recorded = self._recorded.setdefault(name, {})
            changes.append((new, recorded.get(job)))
            recorded[job] = new
        changed = index.put_jobs(changes)
        index.derive(changed)
        moved = set(changed)
        for new, old in changes:
            if (new.job.pipeline, new.job.job) in moved:
                name = new.job.pipeline
                outputs.setdefault(name, _Outputs(self.root.pipeline(name), [])).artifacts.extend(new.artifacts)
                dropped = dropped or _has_output(old)
        return dropped

    def _put_loaded(self, index: Index, loaded: _Loaded) -> list[ArtifactRow]:
        paths, jobs, status = loaded.paths, loaded.jobs, loaded.status
        name, root = paths.name, self.root.path
        problem = None
        if status is None:
            status, problem = snapshot.pipeline_status_or_problem(paths.status_file, root)
        on_disk = set(snapshot.stems(paths.status_dir))
        rows = []
        for job in sorted(set(jobs) | {j for j in on_disk if is_name(j)}):
            if job in jobs:
                rows.append(snapshot.job_rows(name, jobs[job]))
            else:
                read, why = snapshot.job_status_or_problem(paths.job_status_file(job), job, root)
                rows.append(snapshot.job_rows(name, read, why))
        self._recorded[name] = {r.job.job: r for r in rows}
        index.put_statuses(name, snapshot.pipeline_status_row(status, problem), rows)
        index.set_fresh(name, None, pid=os.getpid(), spec=False)
        self._live[name] = paths
        return [a for r in rows for a in r.artifacts]

    def _put_outputs(self, index: Index, outputs: Mapping[str, _Outputs]) -> None:
        blobs = [a.blob for o in outputs.values() for a in o.artifacts if a.kind == snapshot.MODEL_OUTPUT]
        if not blobs:
            return
        known = index.known_outputs(blobs)
        for o in outputs.values():
            index.put_outputs(snapshot.model_outputs(o.paths, o.artifacts, dict.fromkeys(known)))

    def close(self) -> None:
        """Write what is left and mark the pipelines this daemon kept live as read now: call it
        after the last status file is on disk."""
        if not self.active:
            return
        self.flush()
        self.active = False
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def _finish(self) -> None:
        if self.index is None:
            return
        try:
            signed = {name: status_signature(str(paths.dir)) for name, paths in self._live.items()}
            if not all(signed.values()):
                # Written too recently to sign (clowder.stamp): this daemon wrote the last of
                # them and writes no more, so what the files hold then is what they hold now.
                time.sleep(RACY_NS / 1e9)
                signed.update((name, status_signature(str(self._live[name].dir)))
                              for name, sig in signed.items() if not sig)
            with self.index.transaction():
                for name, sig in sorted(signed.items()):
                    self.index.set_fresh(name, sig, spec=False)
        except Exception as e:
            self.log(f"index: {type(e).__name__}: {e}")
        self._close_quietly()


def _merged(batches: list[_Batch]) -> list[_Batch]:
    """The same changes in fewer batches: a batch that only sets specs and statuses is folded
    into the one before it (its newer values win). One that forgets or loads a pipeline, or
    hands everything over, stays apart, since it must come after what precedes it."""
    out: list[_Batch] = []
    for b in batches:
        if out and not (b.forgets or b.loads or b.handover):
            prev = out[-1]
            prev.specs.update(b.specs)
            prev.statuses.update(b.statuses)
            prev.jobs.update(b.jobs)
        else:
            out.append(b)
    return out


def _has_output(rows: JobRows | None) -> bool:
    return rows is not None and any(a.kind == snapshot.MODEL_OUTPUT for a in rows.artifacts)
