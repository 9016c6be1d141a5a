"""The chaos run: generated pipelines served by `clowder watch` / `clowder run` daemons that are
killed with SIGKILL at random moments, with the attempts' commands, wrappers and process groups,
and the lock file deleted under them; then every promise is checked (check.py)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.generate import KILL_BUDGET, PipelinePlan, plan_pipeline, write_pipeline

REPO = Path(__file__).resolve().parents[2]
KINDS = ["daemon", "command", "wrapper", "group", "lock"]
WEIGHTS = [25, 20, 20, 20, 15]
ENDED = {"succeeded", "failed", "cancelled"}


@dataclass
class Run:
    """What the driver did: the work directory's layout and the kills it made."""

    work: Path
    seed: int
    plans: dict[str, PipelinePlan] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    job_kills: Counter[tuple[str, str]] = field(default_factory=Counter)
    daemons_started: int = 0
    second_daemons: int = 0  # a second `watch` that served although one did (a broken promise)
    finished: bool = False  # every pipeline ended before the deadline

    @property
    def root(self) -> Path:
        return self.work / "root"

    @property
    def record(self) -> Path:
        return self.work / "record.txt"

    @property
    def outside(self) -> Path:
        return self.work / "outside"

    @property
    def logs(self) -> Path:
        return self.work / "driver"


def env(run: Run) -> dict[str, str]:
    """The environment of everything the driver starts: this checkout's Clowder, and a HOME and
    TMPDIR outside the root that the checks watch for writes."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CLOWDER_", "GIT_"))}
    return {**keep, "PYTHONPATH": str(REPO), "HOME": str(run.outside / "home"),
            "TMPDIR": str(run.outside / "tmp"), "GIT_CONFIG_NOSYSTEM": "1"}


def clowder(run: Run, *args: str) -> list[str]:
    return [sys.executable, "-m", "clowder", *args, "--root", str(run.root)]


def setup(run: Run) -> None:
    run.work.mkdir(parents=True, exist_ok=True)
    for d in ("home", "tmp", "data"):
        (run.outside / d).mkdir(parents=True)
    (run.outside / "data" / "keep.txt").write_text("a file next to the root that nobody may touch\n")
    (run.outside / "home" / ".profile").write_text("# untouched\n")
    run.logs.mkdir()
    run.record.touch()
    subprocess.run(clowder(run, "init", str(run.root))[:-2], env=env(run), check=True, capture_output=True,
                   timeout=120)


def add_pipeline(run: Run, rng: random.Random) -> None:
    """A new generated pipeline, built beside the root and renamed in whole, as `clowder new` would."""
    name = f"c{len(run.plans):03d}"
    plan = plan_pipeline(rng, name)
    staging = run.logs / f"new-{name}"
    write_pipeline(plan, staging, run.record)
    os.rename(staging, run.root / "pipelines" / name)
    run.plans[name] = plan


def pipeline_state(run: Run, name: str) -> tuple[str, bool]:
    """(state, ended) from status.toml as written; ('', False) when absent or unreadable."""
    try:
        data = tomllib.loads((run.root / "pipelines" / name / "status.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return "", False
    return str(data.get("state", "")), "ended_at" in data


def unfinished(run: Run) -> list[str]:
    return [p for p in run.plans if not pipeline_state(run, p)[1]]


@dataclass
class Attempt:
    """A running attempt found from its run file: logs/<job>/<n>.run, the wrapper's pid first."""

    pipeline: str
    job: str
    number: int
    wrapper: int


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"\0" + f.read()
    except OSError:
        return b""


def ours(run: Run, pid: int) -> bool:
    """Whether the process is an attempt of this root (never kill anything else)."""
    env_ = _environ(pid)
    return f"\0CLOWDER_ROOT={run.root}\0".encode() in env_ + b"\0" and b"\0CLOWDER_ATTEMPT_ID=" in env_


def running_attempts(run: Run) -> list[Attempt]:
    found = []
    for p in run.plans:
        for run_file in (run.root / "pipelines" / p / "logs").glob("*/*.run"):
            try:
                lines = run_file.read_text().splitlines()
                pid = int(lines[0])
            except (OSError, ValueError, IndexError):
                continue
            if any(line.startswith("exit") for line in lines[1:]) or not ours(run, pid):
                continue
            found.append(Attempt(p, run_file.parent.name, int(run_file.stem), pid))
    return sorted(found, key=lambda a: (a.pipeline, a.job, a.number))


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return sorted(kids)


class Daemons:
    """The daemon of the root (`clowder watch` or `clowder run`), restarted after each kill."""

    def __init__(self, run: Run, rng: random.Random) -> None:
        self.run = run
        self.rng = rng
        self.proc: subprocess.Popen[bytes] | None = None
        self.kind = ""
        self.err = run.logs / "daemon.log"

    def start(self, kind: str | None = None) -> None:
        self.kind = kind or self.rng.choice(["watch", "watch", "run"])
        self.run.daemons_started += 1
        err = self.err = self.run.logs / f"daemon-{self.run.daemons_started:04d}-{self.kind}.log"
        with err.open("wb") as f:
            self.proc = subprocess.Popen(clowder(self.run, self.kind), env=env(self.run), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=f)

    def ensure(self) -> None:
        """A daemon serving: a `run` that ended (its pipelines done) gives way to a `watch`."""
        if self.proc is None or self.proc.poll() is not None:
            self.start("watch" if self.proc is not None and self.kind == "run" else None)

    def serving(self) -> bool:
        """Whether a `watch` holds the root's lock (it says so only once it does)."""
        return (self.kind == "watch" and self.proc is not None and self.proc.poll() is None
                and "clowder watch serving" in self.err.read_text(errors="replace"))

    def kill(self) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        return self.kind

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=60)


def second_watch(run: Run) -> bool:
    """Start another `clowder watch` after the lock file was deleted: it must refuse to serve.
    True if it did serve (it is then killed)."""
    with (run.logs / "second-watch.log").open("ab") as f:
        proc = subprocess.Popen(clowder(run, "watch"), env=env(run), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=f)
    try:
        proc.wait(timeout=30)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=60)
        return True


def kill_one(run: Run, rng: random.Random, daemons: Daemons) -> None:
    kind = rng.choices(KINDS, WEIGHTS)[0]
    if kind in ("command", "wrapper", "group"):
        targets = [a for a in running_attempts(run) if run.job_kills[(a.pipeline, a.job)] < KILL_BUDGET]
        if not targets:
            kind = "daemon"  # nothing to aim at: the daemon it is
        else:
            attempt = rng.choice(targets)
            pids = {"wrapper": [attempt.wrapper], "command": children(attempt.wrapper)}.get(kind)
            try:
                if kind == "group":
                    os.killpg(attempt.wrapper, signal.SIGKILL)
                else:
                    for pid in pids or []:
                        if ours(run, pid):
                            os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            run.job_kills[(attempt.pipeline, attempt.job)] += 1
            run.kills[kind] += 1
            return
    if kind == "lock":
        (run.root / ".clowder" / "watch.lock").unlink(missing_ok=True)
        run.kills["lock"] += 1
        if rng.random() < 0.3 and daemons.serving():
            run.second_daemons += second_watch(run)
        return
    daemons.ensure()
    run.kills[f"daemon-{daemons.kill()}"] += 1
    time.sleep(rng.uniform(0, 0.5))
    daemons.start()


def drive(run: Run, kills: int, pace: float = 1.0, finish_timeout: float = 600.0) -> None:
    """Make `kills` kills at random moments while pipelines run (a new pipeline whenever fewer
    than two are unfinished; `pace`: the longest pause between two), then let a daemon finish them all."""
    rng = random.Random(run.seed)
    daemons = Daemons(run, rng)
    try:
        for _ in range(2):
            add_pipeline(run, rng)
        daemons.start()
        for _ in range(kills):
            if len(unfinished(run)) < 2:
                add_pipeline(run, rng)
            daemons.ensure()
            time.sleep(rng.uniform(0.1 * pace, pace))
            kill_one(run, rng, daemons)
        daemons.ensure()
        deadline = time.monotonic() + finish_timeout
        while unfinished(run) and time.monotonic() < deadline:
            daemons.ensure()
            time.sleep(0.2)
        run.finished = not unfinished(run)
    finally:
        daemons.stop()


def keep_or_remove(run: Run, keep: bool) -> None:
    if not keep:
        shutil.rmtree(run.work, ignore_errors=True)
