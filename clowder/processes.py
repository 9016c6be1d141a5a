"""The processes of an attempt: everything it started, found through a cgroup of its own where
the machine allows one, else through a marker in their environment, and ended together."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

# Every attempt runs with CLOWDER_ATTEMPT_ID=<pipeline>/<job>/<n>/<digest of its log path> in its
# environment, and so does everything it starts unless it clears its environment. Reading
# /proc/*/environ finds them: ~0.6 ms for 80 processes (measured), and it works as well for an
# attempt an earlier daemon started.
MARKER = "CLOWDER_ATTEMPT_ID"
CGROUP_DIR = "clowder"
# A process that SIGKILL cannot end at once is in the kernel (disk, NFS): wait for it that long.
END_TIMEOUT = 60.0


def _cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a
    hybrid v1 machine."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


_probing = threading.Lock()


def cgroup_base() -> Path | None:
    with _probing:
        return _probe_cgroups()


def _own_cgroup(mount: Path) -> Path | None:
    """This process's cgroup v2 directory, if it is an attempt's (a Clowder run inside a job)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), "")
    return mount / path.lstrip("/") if path.startswith(f"/{CGROUP_DIR}/") else None


@functools.cache
def _probe_cgroups() -> Path | None:
    """<cgroup2 mount>/clowder, where each attempt gets a cgroup, if this process may make one
    there and move a process into it (root, a writable hierarchy, cgroup.kill: Linux 5.14);
    else None, and attempts are found by their environment marker alone. Probed once.
    Inside an attempt (Clowder run by a job), attempts nest in that attempt's cgroup, so that
    ending the outer attempt ends them too."""
    mount = _cgroup2_mount()
    if mount is None:
        return None
    base = _own_cgroup(mount) or mount / CGROUP_DIR
    probe = base / f"probe-{os.getpid()}"
    try:
        base.mkdir(exist_ok=True)
        probe.mkdir(exist_ok=True)
        if not (probe / "cgroup.kill").exists():
            return None
        # A child joins it as an attempt's wrapper does: mkdir can be allowed where moving is not.
        joined = subprocess.run(["/bin/sh", "-c", 'echo $$ > "$1"', "probe", str(probe / "cgroup.procs")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return base if joined.returncode == 0 else None
    except OSError:
        return None
    finally:
        _rmdir(probe)


def _rmdir(cgroup: Path) -> None:
    """Remove a cgroup and those nested in it (an inner Clowder's attempts), deepest first."""
    with contextlib.suppress(OSError):  # scandir: d_type, not a stat of each of the cgroup's ~20 files
        for sub in [Path(e.path) for e in os.scandir(cgroup) if e.is_dir(follow_symlinks=False)]:
            _rmdir(sub)
    # A cgroup whose last process just died can be busy for a moment before it may go.
    for _ in range(50):
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.002)


@dataclass(frozen=True)
class Proc:
    pid: int
    pgid: int
    started: int  # clock ticks after boot


def _stat(pid: int | str, zombies: bool = False) -> Proc | None:
    """The process if it runs (a zombie does not: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or (fields[0] in (b"Z", b"X") and not zombies):
        return None
    return Proc(int(pid), int(fields[2]), int(fields[19]))


def _live() -> Iterator[Proc]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (proc := _stat(entry.name)) is not None:
            yield proc


_MARKER_KEY = f"\0{MARKER}=".encode()


def _has_marker(pid: int, attempt_id: bytes) -> bool:
    """Whether the process carries the attempt's marker. Its value lists the attempts it runs
    under, outermost first (a Clowder run by a job adds its own), separated by spaces."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = b"\0" + f.read()
    except OSError:  # gone, or not ours to read
        return False
    start = env.find(_MARKER_KEY)
    if start < 0:
        return False
    start += len(_MARKER_KEY)
    end = env.find(b"\0", start)
    return attempt_id in env[start:end if end >= 0 else len(env)].split()


@dataclass(frozen=True)
class AttemptProcesses:
    """What identifies an attempt's processes: its marker, and its cgroup where there is one."""

    id: str
    cgroup: Path | None

    @classmethod
    def of(cls, attempt_id: str) -> AttemptProcesses:
        base = cgroup_base()
        return cls(attempt_id, base / attempt_id.replace("/", ":") if base is not None else None)

    def env(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The marker for the attempt's environment, under that of an attempt it runs in."""
        outer = inherited.get(MARKER, "").split()
        return {MARKER: " ".join([*outer, self.id])}

    def prepare(self) -> str:
        """Make the attempt's cgroup; the path its wrapper joins first thing, or '' without one."""
        if self.cgroup is None:
            return ""
        self.cgroup.mkdir(exist_ok=True)
        return str(self.cgroup)

    def _needle(self) -> bytes:
        return self.id.encode()

    def _in_cgroup(self) -> list[int]:
        """The live processes in the attempt's cgroup and those nested in it (zombies are not listed)."""
        if self.cgroup is None:
            return []
        pids = []
        for directory, _subdirs, _files in os.walk(self.cgroup):
            try:
                pids += [int(p) for p in Path(directory, "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                continue
        return pids

    def members(self, group: int | None = None, since: int = 0) -> list[Proc]:
        """The attempt's live processes: with a cgroup, those in it; without, those in process
        group `group` or carrying the attempt's marker (one pass over /proc; the environments
        of processes started before `since`, which cannot be the attempt's, are not read)."""
        if self.cgroup is not None:
            return [proc for pid in self._in_cgroup() if (proc := _stat(pid)) is not None]
        needle = self._needle()
        return [proc for proc in _live()
                if proc.pgid == group or (proc.started >= since and _has_marker(proc.pid, needle))]

    def running(self) -> bool:
        """Whether anything of the attempt runs, looked for by every means: a wrapper forked
        by a daemon that died may not have joined its cgroup yet."""
        needle = self._needle()
        return bool(self._in_cgroup()) or any(_has_marker(proc.pid, needle) for proc in _live())

    def signal(self, sig: int, group: int | None) -> None:
        """Send `sig` to the attempt's processes outside its process group `group` (which the
        caller signals as one): children that called setsid, double-forked daemons."""
        for proc in self.members():
            if proc.pgid != group:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)

    def end(self, group: int | None = None, timeout: float = END_TIMEOUT) -> list[Proc]:
        """SIGKILL everything of the attempt and wait until none of it runs; then remove its
        cgroup. `group`: its process group, given only while the group's leader is not reaped
        (so the id cannot have been reused). Returns what still ran after `timeout`: nothing,
        but for a process stuck in the kernel."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        # `since` spares reading the environment of older processes: a cgroup needs no such scan.
        leader = _stat(group, zombies=True) if group is not None and self.cgroup is None else None
        since = leader.started if leader is not None else 0
        while True:
            if group is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
            if self.cgroup is not None:  # kills forks racing with it too
                with contextlib.suppress(OSError):
                    (self.cgroup / "cgroup.kill").write_text("1")
            left = self.members(group, since)
            if not left:
                break
            for proc in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return left
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        if self.cgroup is not None:
            _rmdir(self.cgroup)
        return []
