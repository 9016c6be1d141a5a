"""A real Dask cluster on 127.0.0.1 for the Dask executor's tests: `dask scheduler` and three
`dask worker` processes (the third has the only `gpu`), shared by the session, killed at its end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from clowder.state import JobStatus, read_job_status
from clowder.tree import Root
from tests.conftest import REPO, wait_for

distributed = pytest.importorskip("distributed")

WORKER_THREADS = 16  # attempts mostly sleep: many may run at once on one worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    dir: Path
    scheduler_file: Path
    port: int = field(default_factory=_free_port)  # fixed: a scheduler started again listens where the first did
    scheduler: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)  # worker pid -> its Dask name

    def _env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}

    def _log(self, what: str) -> IO[bytes]:
        return open(self.dir / f"{what}-{time.monotonic_ns()}.log", "ab")

    def start_scheduler(self) -> None:
        """`dask scheduler` on 127.0.0.1:<port>, once it has written its scheduler file."""
        self.scheduler_file.unlink(missing_ok=True)
        log = self._log("scheduler")
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard", "--scheduler-file", str(self.scheduler_file)],
            env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(self.scheduler_file.exists, timeout=60, what="the Dask scheduler")

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        _stop(self.scheduler)

    def start_worker(self, resources: str = "", name: str = "", nanny: bool = False,
                     preload: Path | None = None) -> subprocess.Popen[bytes]:
        """A `dask worker` (with its nanny, the worker then being the nanny's child, in the same
        process group); `preload`: a Python file the worker runs first (`dask worker --preload`)."""
        argv = [sys.executable, "-m", "distributed.cli.dask_worker", "--nanny" if nanny else "--no-nanny",
                "--no-dashboard", "--host", "127.0.0.1", "--nthreads", str(WORKER_THREADS),
                "--scheduler-file", str(self.scheduler_file)]
        if resources:
            argv += ["--resources", resources]
        if preload:
            argv += ["--preload", str(preload)]
        name = name or f"worker-{time.monotonic_ns()}"
        argv += ["--name", name]
        log = self._log("worker")
        proc = subprocess.Popen(argv, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.workers.append(proc)
        self.names[proc.pid] = name
        return proc

    def kill_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker and, where it has one, its nanny (the whole process group): the
        attempts it started run on, in sessions of their own."""
        _stop(worker)
        self.workers.remove(worker)

    def address_of(self, worker: subprocess.Popen[bytes]) -> str:
        return next(a for a, w in self.addresses().items() if w.get("name") == self.names[worker.pid])

    def addresses(self) -> dict[str, dict]:  # type: ignore[type-arg]
        with distributed.Client(scheduler_file=str(self.scheduler_file), timeout="30s") as client:
            return dict(client.scheduler_info(n_workers=-1)["workers"])

    def wait_workers(self, n: int) -> None:
        wait_for(lambda: len(self.addresses()) == n, timeout=60, what=f"{n} Dask workers")

    def configure(self, root: Root) -> None:
        """Point the root's clowder.toml at this cluster."""
        text = root.config_file.read_text().replace('[executor]\nkind = "local"\n', "")
        root.config_file.write_text(text + f'\n[executor]\nkind = "dask"\nscheduler_file = "{self.scheduler_file}"\n')

    def stop(self) -> None:
        for proc in [*self.workers, *([self.scheduler] if self.scheduler else [])]:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The cluster tests share where they do not disturb it: a scheduler and three workers."""
    d = tmp_path_factory.mktemp("dask")
    cluster = Cluster(d, d / "scheduler.json")
    try:
        cluster.start_scheduler()
        cluster.start_worker()
        cluster.start_worker()
        cluster.start_worker("gpu=1", name="gpu-worker")
        cluster.wait_workers(3)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of the test's own, for the tests that kill its parts: a scheduler, no worker yet
    (the test starts those it needs). Everything of it is killed at the end."""
    d = tmp_path / "cluster"
    d.mkdir()
    cluster = Cluster(d, d / "scheduler.json")
    try:
        cluster.start_scheduler()
        yield cluster
    finally:
        cluster.stop()


def attempts_of(root: Path) -> list[int]:
    """Live processes started for attempts under `root` (their environment names it)."""
    needle = f"\0CLOWDER_ROOT={root}\0".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = b"\0" + f.read() + b"\0"
        except OSError:
            continue
        if needle in env:
            found.append(int(entry.name))
    return found


def end_attempts(root: Root) -> None:
    deadline = time.monotonic() + 10
    while (left := attempts_of(root.path)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


@pytest.fixture
def dask_root(root: Root, dask_cluster: Cluster) -> Iterator[Root]:
    """A root whose attempts run on the shared cluster; what they leave running is killed at the
    end (attempts are the workers' children, not the test's)."""
    dask_cluster.configure(root)
    yield root
    end_attempts(root)


@pytest.fixture
def fresh_root(root: Root, fresh_cluster: Cluster) -> Iterator[Root]:
    """A root whose attempts run on the test's own cluster."""
    fresh_cluster.configure(root)
    yield root
    end_attempts(root)


# -- what the tests do, as a user would ----------------------------------------------------------

def clowder_process(root: Root, *args: str) -> subprocess.Popen[str]:
    """`clowder ARGS` as its own process (so that it can be killed), on this checkout's code. A
    daemon's decisions go to .clowder/test-<pid>.log (a pipe nobody reads would stop it)."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
    argv = [sys.executable, "-m", "clowder", *args, "--root", str(root.path)]
    if args[0] != "watch":
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with open(root.path / ".clowder" / f"watch-{time.monotonic_ns()}.log", "w") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


def daemon_logs(root: Root) -> str:
    return "".join(f.read_text() for f in sorted((root.path / ".clowder").glob("watch-*.log")))


def set_key(root: Root, key: str, value: str) -> None:
    """Set a top-level key of clowder.toml, as a user would edit it."""
    lines = [line for line in root.config_file.read_text().splitlines() if not line.startswith(f"{key} =")]
    root.config_file.write_text(f"{key} = {value}\n" + "\n".join(lines) + "\n")


def declare_pool(root: Root, name: str, units: int) -> None:
    """Declare a resource pool in clowder.toml's [resources]."""
    text = root.config_file.read_text()
    root.config_file.write_text(text.replace("[resources]", f"[resources]\n{name} = {units}", 1))


def job_status(root: Root, job: str, pipeline: str = "p") -> JobStatus:
    return read_job_status(root.pipeline(pipeline).job_status_file(job), job)
