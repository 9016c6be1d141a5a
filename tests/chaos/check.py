"""The promises, checked after a chaos run from the outside: the jobs' own record lines, the
status files, /proc, `clowder fsck`, a fresh `clowder reindex`, and the files beside the root."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.driver import Run, clowder, env

Snapshot = dict[str, tuple[str, int, str]]


def snapshot(directory: Path) -> Snapshot:
    """Every entry under `directory`: kind, mtime and content digest (directories: their listing)."""
    found: Snapshot = {}
    for path in [directory, *sorted(directory.rglob("*"))]:
        st = path.lstat()
        if path.is_dir() and not path.is_symlink():
            found[str(path)] = ("dir", st.st_mtime_ns, ",".join(sorted(os.listdir(path))))
        else:
            found[str(path)] = ("file", st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


@dataclass
class Figures:
    seed: int
    kills: Counter[str]
    pipelines: int = 0
    jobs: int = 0
    attempts: int = 0  # attempts Clowder recorded
    recorded_lost: int = 0  # of which Clowder recorded as `lost` (a wrapper killed: expected)
    started: int = 0  # attempts whose command wrote its start line
    lost: int = 0  # attempts that ran but that Clowder does not show ended, or jobs left unfinished
    duplicated: int = 0  # start lines written twice for one attempt
    overlaps: int = 0  # attempts of one job that ran at the same time
    processes_left: int = 0
    adopted: int = 0  # attempts a restarted daemon adopted still running (from the daemons' logs)
    fixups: int = 0  # fix-up jobs the regression loops spawned
    wrong_ends: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.overlaps or self.processes_left or self.wrong_ends
                    or self.problems)

    def report(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items()))
        lines = [
            f"chaos run, seed {self.seed}: {self.total_kills} kills ({kinds})",
            f"  {self.pipelines} pipelines, {self.jobs} jobs, {self.attempts} attempts "
            f"({self.recorded_lost} recorded lost after a kill, {self.started} wrote their start line, "
            f"{self.adopted} adopted by a restarted daemon, {self.fixups} fix-up jobs)",
            f"  lost {self.lost}, duplicated {self.duplicated}, overlapping {self.overlaps}, "
            f"processes left {self.processes_left}, wrong ends {len(self.wrong_ends)}",
            f"  promises: {'kept' if self.ok else 'BROKEN'}",
        ]
        lines += [f"  wrong end: {w}" for w in self.wrong_ends[:30]]
        lines += [f"  problem: {p}" for p in self.problems[:30]]
        return "\n".join(lines)


def _record(run: Run) -> list[tuple[str, int, str]]:
    lines = []
    for line in run.record.read_text().splitlines():
        job, number, what = line.split()
        lines.append((job, int(number), what))
    return lines


def _statuses(run: Run, pipeline: str) -> dict[str, dict[str, object]]:
    found = {}
    for f in sorted((run.root / "pipelines" / pipeline / "status").glob("*.toml")):
        found[f.stem] = tomllib.loads(f.read_text())
    return found


def check_attempts(run: Run, fig: Figures) -> None:
    """Ends as planned; each attempt that ran recorded, once, never beside another of its job."""
    recorded: dict[tuple[str, int], str] = {}  # (pipeline/job, attempt) -> state
    for name, plan in run.plans.items():
        statuses = _statuses(run, name)
        expected = plan.expected()
        state, ended = _pipeline(run, name)
        if not ended:
            fig.lost += 1
            fig.problems.append(f"{name}: pipeline did not end (state {state!r})")
        elif state != plan.expected_state():
            fig.wrong_ends.append(f"{name}: pipeline {state}, expected {plan.expected_state()}")
        for job, want in expected.items():
            got = str(statuses.get(job, {}).get("state", "pending"))
            if got != want:
                fig.wrong_ends.append(f"{name}/{job}: {got}, expected {want}")
        for job, status in statuses.items():
            fig.jobs += 1
            fig.fixups += job not in expected
            if job not in expected and status.get("state") != "succeeded":  # a fix-up must succeed
                fig.wrong_ends.append(f"{name}/{job} (fix-up): {status.get('state')}, expected succeeded")
            for attempt in status.get("attempts", []):  # type: ignore[attr-defined]
                recorded[(f"{name}/{job}", attempt["number"])] = attempt["state"]
    fig.pipelines = len(run.plans)
    fig.attempts = len(recorded)
    fig.recorded_lost = sum(1 for s in recorded.values() if s == "lost")
    lines = _record(run)
    starts = Counter((job, n) for job, n, what in lines if what == "start")
    ends = Counter((job, n) for job, n, what in lines if what == "end")
    fig.started = len(starts)
    for key in starts | ends:
        if starts[key] > 1 or ends[key] > 1:
            fig.duplicated += 1
            fig.problems.append(f"{key[0]} attempt {key[1]}: {starts[key]} start and {ends[key]} end lines")
    for key in starts:
        outcome = recorded.get(key)
        if outcome is None or outcome in ("running", "pending", "retrying"):
            fig.lost += 1
            fig.problems.append(f"{key[0]} attempt {key[1]} ran but Clowder shows it as {outcome}")
    for key, state in recorded.items():
        if state == "succeeded" and not ends[key]:
            fig.problems.append(f"{key[0]} attempt {key[1]} recorded succeeded but never wrote its end line")
    _overlaps(lines, fig)


def _pipeline(run: Run, name: str) -> tuple[str, bool]:
    try:
        data = tomllib.loads((run.root / "pipelines" / name / "status.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        return f"unreadable: {e}", False
    return str(data.get("state")), "ended_at" in data


def _overlaps(lines: list[tuple[str, int, str]], fig: Figures) -> None:
    """An attempt that wrote both its lines ran between them: no other attempt of its job may have
    written a line in between. (One killed before its end line cannot be placed, and is not.)"""
    by_job: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for index, (job, n, what) in enumerate(lines):
        by_job[job].append((index, n, what))
    for job, seq in by_job.items():
        span: dict[int, dict[str, int]] = {}
        for index, n, what in seq:
            span.setdefault(n, {})[what] = index
        for n, marks in span.items():
            if "start" in marks and "end" in marks:
                inside = {m for i, m, _ in seq if marks["start"] < i < marks["end"] and m != n}
                if inside:
                    fig.overlaps += 1
                    fig.problems.append(f"{job} attempt {n} ran while attempts {sorted(inside)} did")


def check_processes(run: Run, fig: Figures) -> None:
    """No process of any attempt of this root is alive (their environment carries the markers)."""
    needle = f"\0CLOWDER_ROOT={run.root}\0".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = b"\0" + f.read() + b"\0"
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in environ and b"\0CLOWDER_ATTEMPT_ID=" in environ:
            fig.processes_left += 1
            fig.problems.append(f"process {entry.name} of an attempt still runs: {cmdline[:120]}")
            with contextlib.suppress(OSError):  # counted: now it goes, so the run leaves nothing behind
                os.kill(int(entry.name), signal.SIGKILL)


def _tables(db: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        # freshness holds file signatures and schema_migrations times: bookkeeping, not content.
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"'), key=repr) for n in names
                if n not in ("freshness", "schema_migrations") and not n.startswith("sqlite_")}
    finally:
        conn.close()


def check_tree(run: Run, fig: Figures, outside_before: Snapshot) -> None:
    """`clowder fsck` clean; the index equal to a fresh `reindex`; nothing beside the root touched."""
    fsck = subprocess.run(clowder(run, "fsck"), env=env(run), capture_output=True, text=True, timeout=600)
    if fsck.returncode != 0:
        fig.problems.append(f"clowder fsck exit {fsck.returncode}: {(fsck.stdout + fsck.stderr)[-2000:]}")
    before = run.logs / "index.before.sqlite"
    with sqlite3.connect(run.root / ".clowder" / "index.sqlite") as src, sqlite3.connect(before) as dst:
        src.backup(dst)
    reindex = subprocess.run(clowder(run, "reindex"), env=env(run), capture_output=True, text=True, timeout=600)
    if reindex.returncode != 0:
        fig.problems.append(f"clowder reindex exit {reindex.returncode}: {reindex.stderr[-2000:]}")
    old, new = _tables(before), _tables(run.root / ".clowder" / "index.sqlite")
    for table in sorted(set(old) | set(new)):
        a, b = old.get(table, []), new.get(table, [])
        if a != b:
            gone = [r for r in a if r not in b][:3]
            added = [r for r in b if r not in a][:3]
            fig.problems.append(f"index table {table} differs from a fresh reindex: only before {gone}, "
                                f"only after {added}")
    after = snapshot(run.outside)
    for path in sorted(set(outside_before) | set(after)):
        if outside_before.get(path) != after.get(path):
            fig.problems.append(f"outside the root, {path} changed: {outside_before.get(path)} -> {after.get(path)}")
    top = sorted(os.listdir(run.work))
    if top != sorted(["root", "outside", "driver", "record.txt"]):
        fig.problems.append(f"beside the root: {top}")


def check(run: Run, outside_before: Snapshot) -> Figures:
    fig = Figures(run.seed, run.kills)
    if not run.finished:
        fig.problems.append("the pipelines did not all end before the deadline")
    if run.second_daemons:
        fig.problems.append(f"{run.second_daemons} second `clowder watch` served beside the first")
    check_attempts(run, fig)
    check_processes(run, fig)
    fig.adopted = sum(log.read_text(errors="replace").count("adopted running attempt")
                      for log in run.logs.glob("daemon-*.log"))
    check_tree(run, fig, outside_before)
    return fig
