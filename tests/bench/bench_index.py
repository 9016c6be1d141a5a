"""Index benchmark at scale: a root of 1,000 pipelines / 10,000 jobs / 30,000 artifacts.

Run: python tests/bench/bench_index.py [--repeat N] [--keep DIR] [--pipelines 1000] [--smoke]
Prints medians over N runs (default 5) of: `clowder reindex`, `clowder status` over every
pipeline, the transitive-consumer query, `clowder watch` idling on the root (RSS, threads,
inotify watches), and how soon an edited job file shows in the index. Each figure is printed
next to its target; these targets are absolute (the README's), so they move with the machine's
load: `clowder --version` (Python and imports) is printed beside them as the floor of every command.
The scaling figures as ratios (status at 1,000 vs 10,000 pipelines) are bench_root.py's.

The generator writes status files with clowder.state.job_status_to_toml, as the scheduler
does. 990 pipelines have ended; 10 wait (a job retrying after a one-hour backoff), so the
daemon keeps watching them. Two pipelines (20 jobs) have real git repositories whose objects
and model outputs fsck and the index read; the other jobs' commits and blobs are made up, and
fsck reports their workspaces missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clowder import index
from clowder.state import (
    Artifact,
    Attempt,
    JobState,
    JobStatus,
    PipelineState,
    PipelineStatus,
    job_status_to_toml,
    pipeline_status_to_toml,
)
from clowder.template import init_root
from clowder.tree import Root
from clowder.views import reader

PIPELINES = 1000
JOBS = 10  # per pipeline: a chain of 4, a fan-out of 4, a join, a report
ARTIFACTS = 3  # per attempt
WAITING = 10  # pipelines left unfinished
REAL = 2  # pipelines with real git repositories
T0 = datetime(2026, 1, 1, tzinfo=UTC)
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "b@x", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}

CONSUMERS = """
WITH RECURSIVE hit(pipeline, job, attempt) AS (
    SELECT pipeline, job, attempt FROM consumption WHERE blob = :blob
    UNION
    SELECT c.pipeline, c.job, c.attempt
    FROM hit h
    JOIN attempts u ON u.pipeline = h.pipeline AND u.job = h.job AND u.number >= h.attempt
    JOIN consumed c ON c.pipeline = u.pipeline AND c.upstream = u.job AND c."commit" = u."commit"
)
SELECT DISTINCT pipeline, job FROM hit ORDER BY pipeline, job
"""


def dag() -> dict[str, list[str]]:
    return {"plan": [], "dev": ["plan"], "test": ["dev"], "lint": ["dev"],
            "w1": ["test"], "w2": ["test"], "w3": ["test"], "w4": ["test"],
            "join": ["w1", "w2", "w3", "w4", "lint"], "report": ["join"]}


def fake(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


def git(cwd: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, input=stdin, capture_output=True, text=True,
                          check=True).stdout.strip()


def real_attempt(ws: Path, job: str, upstream: Path | None) -> tuple[str, str | None, list[Artifact]]:
    """A real workspace: cloned from its upstream (or new), three files and a model output committed."""
    if upstream is not None:
        git(ws.parent, "clone", "-q", "--local", str(upstream), ws.name)
    else:
        ws.mkdir(parents=True)
        git(ws, "init", "-q")
    base = git(ws, "rev-parse", "HEAD") if upstream is not None else None
    files = {f"{job}/file{k}.txt": f"{job} output {k}\n" * (k + 1) for k in range(ARTIFACTS - 1)}
    files[f".clowder/{job}/output.json"] = json.dumps({"job": job, "verdict": "pass" if job != "lint" else "fail",
                                                       "score": len(job)}) + "\n"
    for path, text in files.items():
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text(text)
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", f"{job}: attempt 1 succeeded")
    commit = git(ws, "rev-parse", "HEAD")
    blobs = git(ws, "ls-tree", "-r", "HEAD").splitlines()
    ids = {line.split("\t")[1]: line.split()[2] for line in blobs}
    artifacts = [Artifact(p, ids[p], len(t.encode()), "model_output" if p.endswith("output.json") else "file")
                 for p, t in sorted(files.items())]
    return commit, base, artifacts


def write_root(base: Path, pipelines: int = PIPELINES) -> Root:
    root = init_root(base)
    (root.config_file).write_text(root.config_file.read_text())
    now = datetime.now(UTC)
    for p in range(pipelines):
        name = f"p{p:04d}"
        d = root.pipelines_dir / name
        (d / "jobs").mkdir(parents=True)
        (d / "status").mkdir()
        (d / "pipeline.toml").write_text(f'prompt = "benchmark pipeline {p}"\n')
        waiting = p >= pipelines - WAITING
        commits: dict[str, str] = {}
        for j, (job, needs) in enumerate(dag().items()):
            spec = 'command = ["true"]\nretries = 3\nbackoff = { initial = "1h" }\n'
            (d / "jobs" / f"{job}.toml").write_text(spec + (f"needs = {json.dumps(needs)}\n" if needs else ""))
            started = T0 + timedelta(minutes=p, seconds=j * 10)
            if waiting and j >= 2:  # test is retrying in an hour; what follows it waits
                if job == "test":
                    failed = Attempt(1, JobState.FAILED, started, started + timedelta(seconds=3), exit_code=1,
                                     commit=fake(name, job, "c"), consumed={"dev": commits["dev"]})
                    status = JobStatus(job, JobState.RETRYING, 1, "attempt 1 failed: exit code 1; retry 1 of 3",
                                       (failed,), retry_at=now + timedelta(hours=1))
                else:
                    status = JobStatus(job)
                (d / "status" / f"{job}.toml").write_text(job_status_to_toml(status))
                continue
            consumed = {n: commits[n] for n in needs}
            if p < REAL:
                up = d / "workspaces" / needs[0] if needs else None
                (d / "workspaces").mkdir(exist_ok=True)
                commit, base_commit, artifacts = real_attempt(d / "workspaces" / job, job, up)
                consumed = {needs[0]: commits[needs[0]]} if needs else {}
            else:
                commit, base_commit = fake(name, job, "c"), commits[needs[0]] if needs else None
                artifacts = [Artifact(f"{job}/file{k}.txt", fake(name, job, k), 100 + k) for k in range(ARTIFACTS - 1)]
                artifacts.append(Artifact(f".clowder/{job}/output.json", fake(name, job, "out"), 40, "model_output"))
            commits[job] = commit
            attempt = Attempt(1, JobState.SUCCEEDED, started, started + timedelta(seconds=5 + j), exit_code=0,
                              pid=10000 + j, spec_hash=fake(job)[:16], base_commit=base_commit, commit=commit,
                              consumed=consumed, artifacts=tuple(artifacts))
            (d / "status" / f"{job}.toml").write_text(
                job_status_to_toml(JobStatus(job, JobState.SUCCEEDED, 1, "", (attempt,))))
        end = T0 + timedelta(minutes=p, seconds=120)
        pstatus = (PipelineStatus(PipelineState.RUNNING, T0 + timedelta(minutes=p)) if waiting else
                   PipelineStatus(PipelineState.SUCCEEDED, T0 + timedelta(minutes=p), end))
        (d / "status.toml").write_text(pipeline_status_to_toml(pstatus))
    return root


def clowder(root: Root, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clowder", *args, "--root", str(root.path)],
                          capture_output=True, text=True, check=False)
    return time.perf_counter() - t, proc


def ms(seconds: float) -> str:
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def line(label: str, value: str, target: str, ok: bool) -> None:
    print(f"{label:<48} {value:<34} target {target:<10} {'met' if ok else 'missed'}")


def watches(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            count += sum(1 for ln in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                         if ln.startswith("inotify wd:"))
        except OSError:
            continue
    return count


def proc_status(pid: int, key: str) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith(key + ":"):
            return int(ln.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, timeout: float = 120.0) -> float:
    """Seconds until the process used no CPU for a whole second."""
    start = time.monotonic()
    last = cpu_ticks(pid)
    while time.monotonic() - start < timeout:
        time.sleep(1.0)
        now = cpu_ticks(pid)
        if now == last:
            return time.monotonic() - start - 1.0
        last = now
    raise RuntimeError("the daemon never became idle")


def edit_latency(root: Root, repeat: int, pipelines: int) -> list[float]:
    """Write a job file of a waiting pipeline; time until the index shows the new command."""
    name = f"p{pipelines - 1:04d}"
    job_file = root.pipeline(name).job_file("report")
    conn = sqlite3.connect(root.index_file.as_uri() + "?mode=ro", uri=True)
    out = []
    for i in range(repeat):
        word = f"edit-{i}-{time.time_ns()}"
        # As a careful editor saves: a reader (the daemon) never sees half a file, which would
        # be an invalid spec and fail the pipeline.
        tmp = root.tmp_dir / "edit.toml"
        tmp.write_text(f'command = ["echo", "{word}"]\nneeds = ["join"]\n')
        t = time.perf_counter()
        os.replace(tmp, job_file)
        while time.perf_counter() - t < 5:
            row = conn.execute("SELECT command FROM job_specs WHERE pipeline = ? AND job = 'report'",
                               (name,)).fetchone()
            if row and word in (row[0] or ""):
                break
            time.sleep(0.0005)
        out.append(time.perf_counter() - t)
        time.sleep(0.05)
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="Write the root here and keep it.")
    parser.add_argument("--pipelines", type=int, default=PIPELINES, help=f"default {PIPELINES}")
    parser.add_argument("--smoke", action="store_true", help="a tiny root, one run: checks the script works")
    args = parser.parse_args()
    pipelines, repeat, samples = (WAITING + REAL + 1, 1, 2) if args.smoke else (args.pipelines, args.repeat, 20)
    middle = f"p{max(REAL, (pipelines - WAITING) // 2):04d}"  # an ended pipeline of made-up commits
    tmp = Path(tempfile.mkdtemp(prefix="clowder-bench-index-"))
    base = args.keep or tmp / "root"
    if base.exists():
        shutil.rmtree(base)
    t = time.perf_counter()
    root = write_root(base, pipelines)
    print(f"generated {pipelines} pipelines / {pipelines * JOBS} jobs in {time.perf_counter() - t:.1f} s at {base}")

    runs = [clowder(root, "reindex") for _ in range(repeat)]
    assert all(p.returncode == 0 for _, p in runs), runs[-1][1].stderr
    print(f"  {runs[-1][1].stdout.strip()}")
    arts = index.query(root, "SELECT count(*) FROM artifacts").rows[0][0]
    wall = statistics.median(t for t, _ in runs)
    line("clowder reindex (whole command)", ms(wall), "<= 2 s", wall <= 2.0)

    status = [clowder(root, "status") for _ in range(repeat)]
    assert all(p.returncode == 0 for _, p in status)
    wall = statistics.median(t for t, _ in status)
    line("clowder status, all pipelines (whole command)", ms(wall), "<= 150 ms", wall <= 0.15)
    overview, detail = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        rows = reader.entries(root, ended_from_status=True)
        overview.append(time.perf_counter() - t)
        t = time.perf_counter()
        reports = reader.reports(root)
        detail.append(time.perf_counter() - t)
    assert len(rows) == pipelines and all(r.summary for r in rows)
    assert len(reports) == pipelines and sum(len(r.jobs) for r in reports) == pipelines * JOBS
    baseline = statistics.median(t for t, _ in (clowder(root, "--version") for _ in range(repeat)))
    print(f"  of which reading the index (freshness checks included): {ms(statistics.median(overview))} "
          f"in-process; python + imports (`clowder --version`): {ms(baseline)}")
    wall = statistics.median(t for t, _ in (clowder(root, "status", "--json") for _ in range(repeat)))
    print(f"  `clowder status --json` (every job of every pipeline): {ms(wall)}; "
          f"of which reading the index: {ms(statistics.median(detail))} in-process")
    tree = []
    for _ in range(2):
        t = time.perf_counter()
        reader.reports(root, use_index=False)
        tree.append(time.perf_counter() - t)
    print(f"  the same from the tree, without the index: {ms(statistics.median(tree))} in-process")

    blob = index.query(root, "SELECT blob FROM artifacts WHERE pipeline = :pipeline AND job = 'plan' "
                             "AND kind = 'file' ORDER BY path LIMIT 1", {"pipeline": middle}).rows[0][0]
    times, hits = [], []
    for _ in range(max(samples, repeat)):
        t = time.perf_counter()
        hits = index.query(root, CONSUMERS, {"blob": blob}).rows
        times.append(time.perf_counter() - t)
    assert len(hits) == JOBS - 1, hits
    q = statistics.median(times)
    line(f"transitive consumers of a blob ({len(hits)} jobs)", ms(q), "<= 50 ms", q <= 0.05)

    t = time.perf_counter()
    _, fsck = clowder(root, "fsck")
    elapsed = time.perf_counter() - t
    lines = fsck.stdout.splitlines()
    unchecked = sum("no workspace repository" in x for x in lines)
    print(f"{'clowder fsck':<48} {ms(elapsed):<34} (no target) {len(lines)} differences, {unchecked} of them "
          f"objects of the {(pipelines - REAL) * JOBS} made-up jobs' missing workspaces; {arts} artifacts")
    assert len(lines) == unchecked, [x for x in lines if "no workspace repository" not in x][:5]

    daemon = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        settle = wait_idle(daemon.pid)
        rss = proc_status(daemon.pid, "VmRSS") / 1024
        threads = proc_status(daemon.pid, "Threads")
        count = watches(daemon.pid)
        print(f"clowder watch: idle {settle:.1f} s after start; {threads} threads")
        line("clowder watch idling: RSS", f"{rss:.0f} MB", "< 150 MB", rss < 150)
        line("clowder watch idling: inotify watches", f"{count} ({WAITING} unfinished pipelines)",
             "~pipelines", count <= 3 * pipelines)
        lat = edit_latency(root, max(samples, repeat), pipelines)
        med = statistics.median(lat)
        line("job file edit -> index (waiting pipeline)", f"median {ms(med)}, max {ms(max(lat))}",
             "<= 50 ms", med <= 0.05)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    if args.keep is None:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
