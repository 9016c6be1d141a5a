"""A real Dask cluster on 127.0.0.1 for the Dask executor's tests: `dask scheduler` and three
`dask worker` processes (the third has the only `gpu`), shared by the session, killed at its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clowder.tree import Root
from tests.conftest import REPO, wait_for

distributed = pytest.importorskip("distributed")

WORKER_THREADS = 16  # attempts mostly sleep: many may run at once on one worker


@dataclass
class Cluster:
    dir: Path
    scheduler_file: Path
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)  # worker pid -> its Dask name

    def _env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}

    def start_worker(self, resources: str = "", name: str = "") -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "distributed.cli.dask_worker", "--no-nanny", "--no-dashboard",
                "--host", "127.0.0.1", "--nthreads", str(WORKER_THREADS), "--scheduler-file", str(self.scheduler_file)]
        if resources:
            argv += ["--resources", resources]
        name = name or f"worker-{time.monotonic_ns()}"
        argv += ["--name", name]
        log = open(self.dir / f"worker-{len(self.workers)}.log", "ab")  # noqa: SIM115 (the worker holds it)
        proc = subprocess.Popen(argv, env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.workers.append(proc)
        self.names[proc.pid] = name
        return proc

    def address_of(self, worker: subprocess.Popen[bytes]) -> str:
        return next(a for a, w in self.addresses().items() if w.get("name") == self.names[worker.pid])

    def addresses(self) -> dict[str, dict]:  # type: ignore[type-arg]
        with distributed.Client(scheduler_file=str(self.scheduler_file), timeout="30s") as client:
            return dict(client.scheduler_info()["workers"])

    def wait_workers(self, n: int) -> None:
        wait_for(lambda: len(self.addresses()) == n, timeout=60, what=f"{n} Dask workers")

    def configure(self, root: Root) -> None:
        """Point the root's clowder.toml at this cluster."""
        text = root.config_file.read_text().replace('[executor]\nkind = "local"\n', "")
        root.config_file.write_text(text + f'\n[executor]\nkind = "dask"\nscheduler_file = "{self.scheduler_file}"\n')


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    d = tmp_path_factory.mktemp("dask")
    sched_file = d / "scheduler.json"
    log = open(d / "scheduler.log", "ab")  # noqa: SIM115
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(sched_file)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    cluster = Cluster(d, sched_file, scheduler)
    try:
        wait_for(sched_file.exists, timeout=60, what="the Dask scheduler")
        cluster.start_worker()
        cluster.start_worker()
        cluster.start_worker("gpu=1", name="gpu-worker")
        cluster.wait_workers(3)
        yield cluster
    finally:
        for proc in [*cluster.workers, scheduler]:
            _stop(proc)


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


@pytest.fixture
def dask_root(root: Root, dask_cluster: Cluster) -> Iterator[Root]:
    """A root whose attempts run on the cluster; what they leave running is killed at the end
    (attempts are the workers' children, not the test's)."""
    dask_cluster.configure(root)
    yield root
    deadline = time.monotonic() + 10
    while (left := attempts_of(root.path)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
