"""`clowder status` and `clowder status --json` print the same bytes, read from the tree or from
the index, as the golden files made from them before the read path was cut for speed (issue 17):
a root of a few dozen pipelines in every state, with every kind of job and problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clowder.index.read import overview_rows, status_rows
from clowder.tree import Root
from clowder.views import reader
from clowder.views.records import status_line

GOLDEN = Path(__file__).resolve().parent / "golden"
OLD = 1_767_225_600  # 2026-01-01: every file and directory is stamped long before now (not racy)
T0 = "2026-01-01 10:00:00+00:00"
T1 = "2026-01-01 10:00:02.500000+00:00"
T2 = "2026-01-01 10:01:05.250000+00:00"

PIPELINE_STATES = ("pending", "running", "blocked", "broken", "succeeded", "failed", "cancelled")
JOB_STATES = ("pending", "queued", "running", "retrying", "waiting", "approval", "lost", "succeeded", "failed",
              "skipped", "cancelled")
ENDED_JOB = {"succeeded", "failed", "skipped", "cancelled", "lost", "retrying", "waiting"}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def pipeline_status(state: str, message: str = "", started: bool = True, ended: bool = False) -> str:
    text = f'schema_version = 1\nstate = "{state}"\n'
    if started:
        text += f"started_at = {T0}\n"
    if ended:
        text += f"ended_at = {T2}\n"
    return text + f'message = {json.dumps(message)}\nprompt_hash = "2d711642b726b044"\n'


def job_status(job: str, state: str, attempt: int = 1, message: str = "", approvals: int = 0) -> str:
    text = f'schema_version = 1\njob = "{job}"\nstate = "{state}"\nattempt = {attempt}\n'
    text += f"message = {json.dumps(message)}\n"
    if approvals and state == "approval":
        text += (f'\n[approval]\nverdict = "rejected"\nby = "ann"\nat = {T1}\ncomment = "not yet"\n'
                 'request = "r-reject"\n')
    for n in range(1, attempt + 1):
        last = n == attempt
        open_ = last and state == "running"
        a_state = state if last and state in ("running", "succeeded", "failed", "cancelled", "lost") else "failed"
        text += f'\n[[attempts]]\nnumber = {n}\nstate = "{a_state}"\nstarted_at = {T0}\n'
        if not open_:
            text += f"ended_at = {T1 if n == 1 else T2}\n"
        text += f'trigger = "start"\nmessage = "attempt {n} of {job}"\n'
        if approvals and n == 1:
            text += (f'\n[attempts.approval]\nverdict = "approved"\nby = "bo"\nat = {T0}\ncomment = "go ahead"\n'
                     'request = "r-approve"\n')
    return text


def build(root: Root) -> None:
    """Pipelines in every state, with jobs in every state and every kind of problem."""
    p = root.pipelines_dir

    def pipeline(name: str, jobs: dict[str, str],
                 spec: str = 'prompt = "do it"\nstages = ["design", "check", "s0", "s1", "s2", "ünï"]\n') -> Path:
        d = p / name
        write(d / "pipeline.toml", spec)
        for job, text in jobs.items():
            write(d / "jobs" / f"{job}.toml", text)
        return d

    chain = {"plan": 'command = ["/bin/true"]\nstage = "design"\n',
             "dev": 'command = ["/bin/true"]\nneeds = ["plan"]\n',
             "test": 'command = ["/bin/true"]\nneeds = ["dev", "plan"]\nstage = "check"\n'}
    n = 0
    for pstate in PIPELINE_STATES:  # each pipeline state, with its jobs in a few states
        for variant, states in enumerate((("succeeded", "succeeded", "succeeded"), ("succeeded", "failed", "skipped"),
                                          ("succeeded", "running", "pending"), ("cancelled", "lost", "queued"))):
            d = pipeline(f"p{n:02d}-{pstate}", chain)
            n += 1
            ended = pstate in ("succeeded", "failed", "cancelled")
            write(d / "status.toml", pipeline_status(pstate, f"{pstate} — variant {variant}" if variant else "",
                                                     started=pstate != "pending", ended=ended))
            for job, state in zip(chain, states, strict=True):
                if state != "pending" or variant % 2:
                    write(d / "status" / f"{job}.toml",
                          job_status(job, state, 2 if state == "failed" else 1, f"{job} is {state}"))
    d = pipeline(f"p{n:02d}-every-job-state", {s: f'command = ["/bin/true"]\nstage = "s{i % 3}"\n'
                                               for i, s in enumerate(JOB_STATES)})
    n += 1
    write(d / "status.toml", pipeline_status("running", "many things at once"))
    for s in JOB_STATES:
        write(d / "status" / f"{s}.toml", job_status(s, s, 0 if s in ("pending", "queued") else 1 + (s == "lost"),
                                                    f"it is {s}", approvals=1))
    pipeline(f"p{n:02d}-never-seen", chain)  # no status files at all
    n += 1
    pipeline(f"p{n:02d}-no-jobs", {})
    n += 1
    d = pipeline(f"p{n:02d}-invalid", {"a": 'command = "not a list"\n', "b": "this is not toml\n"})
    n += 1
    d = pipeline(f"p{n:02d}-blocked-by-spec", {"a": 'command = ["/bin/true"]\n', "b": "needs = [\n"})
    n += 1
    write(d / "status.toml", pipeline_status("blocked", "a spec file is invalid"))
    write(d / "status" / "a.toml", job_status("a", "succeeded"))
    d = pipeline(f"p{n:02d}-unreadable-status", chain)
    n += 1
    write(d / "status.toml", "state = [oops\n")
    d = pipeline(f"p{n:02d}-unreadable-job-status", chain)
    n += 1
    write(d / "status.toml", pipeline_status("running", "one job file is bad"))
    write(d / "status" / "plan.toml", job_status("plan", "succeeded"))
    write(d / "status" / "dev.toml", 'schema_version = 1\njob = "dev"\nstate = "flying"\n')
    d = pipeline(f"p{n:02d}-unknown-state", chain)
    n += 1
    write(d / "status.toml", pipeline_status("weird", "a state from elsewhere"))
    d = pipeline(f"p{n:02d}-job-file-added", {**chain, "extra": 'command = ["/bin/true"]\n'})
    n += 1
    write(d / "status.toml", pipeline_status("succeeded", "", ended=True))
    for job in chain:
        write(d / "status" / f"{job}.toml", job_status(job, "succeeded"))
    d = pipeline(f"p{n:02d}-unicode", {"only": 'command = ["/bin/true"]\nstage = "ünï"\n'})
    n += 1
    write(d / "status.toml", pipeline_status("failed", "échec: ünï — «quoted»", ended=True))
    write(d / "status" / "only.toml", job_status("only", "failed", 3, "trois fois « non »"))
    d = pipeline("Bad Name", chain)  # not a name: no one can address it
    for path in sorted(root.path.rglob("*"), reverse=True):
        os.utime(path, (OLD, OLD), follow_symlinks=False)


def clowder(root: Root, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "clowder", *args, "--root", str(root.path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    return done.stdout.replace(str(root.path), "<ROOT>")


def steady(text: str) -> str:
    """`--json` with the durations of running attempts (they count until now) blanked; the bytes
    must be json.dumps(indent=2)'s own."""
    data: list[dict[str, Any]] = json.loads(text)
    assert text == json.dumps(data, indent=2) + "\n"
    for pipeline in data:
        for job in pipeline["jobs"]:
            if job["state"] == "running":
                assert isinstance(job["duration"], float) and job["duration"] > 0
                job["duration"] = "<until now>"
    return json.dumps(data, indent=2) + "\n"


def outputs(root: Root) -> dict[str, str]:
    return {"status.txt": clowder(root, "status"), "status.json": steady(clowder(root, "status", "--json"))}


def check(name: str, got: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("STATUS_WRITE_GOLDEN") == "1":  # how the golden files were made: on main, before issue 17's cuts
        write(golden, got)
    assert got == golden.read_text(), f"{name} differs from {golden}"


@pytest.fixture(scope="module")
def golden_root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    from clowder.template import init_root

    root = init_root(tmp_path_factory.mktemp("golden") / "root")
    build(root)
    return root


def test_status_from_the_tree_prints_the_golden_bytes(golden_root: Root) -> None:
    for name, text in outputs(golden_root).items():
        check(name, text)


def test_status_from_the_index_prints_the_golden_bytes(golden_root: Root) -> None:
    done = subprocess.run([sys.executable, "-m", "clowder", "reindex", "--root", str(golden_root.path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = [d.name for d in golden_root.pipelines_dir.iterdir() if d.name != "Bad Name"]
    # The index holds every pipeline fresh (their files are old): both commands read it, not the tree.
    assert set(overview_rows(golden_root, names)) == set(names)
    assert set(status_rows(golden_root, names).pipelines) == set(names)
    for name, text in outputs(golden_root).items():
        check(name, text)
    # The table's own lines (made without entries) say what the entries say, read from the index or the tree.
    lines = reader.status_lines(golden_root)
    assert lines == [status_line(e) for e in reader.entries(golden_root, ended_from_status=True)]
    assert lines == [status_line(e) for e in reader.entries(golden_root, use_index=False)]
