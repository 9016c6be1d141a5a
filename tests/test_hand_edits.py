"""Job files saved by hand while the daemon runs, the way real editors and shells save them:
a file caught half-written never fails or blocks its pipeline; one left invalid blocks it,
with the file and the key named, until it is fixed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from clowder.driver import Driver
from clowder.state import JobState, PipelineState, read_pipeline_status
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline
from tests.test_driver import jstatus, pstate, wait_for

OLD_B = 'command = "echo old >> {record}"\nneeds = ["a"]\n'
NEW_B = 'command = "echo new >> {record}"\nneeds = ["a"]\n'


@contextmanager
def serving(root: Root, gate: Path) -> Iterator[list[str]]:
    """A daemon serving the root in a thread, as `clowder watch` does; yields its decision log.
    Opens the gate when done, so no job waits on it after the test."""
    lines: list[str] = []
    driver = Driver(root, log=lines.append)
    thread = threading.Thread(target=driver.serve, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        gate.touch()
        driver.stop()
        thread.join(timeout=10)


def gated(make_pipeline: MakePipeline, tmp_path: Path, b: str | None = OLD_B) -> tuple[Path, Path, Path]:
    """Pipeline p: `a` runs until the gate file exists; `b` (needs a) is the job edited by hand."""
    gate, record = tmp_path / "gate", tmp_path / "record"
    jobs = {"a": f'command = "while [ ! -f {gate} ]; do sleep 0.05; done"\n'}
    if b is not None:
        jobs["b"] = b.format(record=record)
    d = make_pipeline("p", jobs)
    return gate, record, d / "jobs" / "b.toml"


def run_to_the_end(root: Root, lines: list[str], gate: Path) -> None:
    gate.touch()
    wait_for(lambda: pstate(root, "p").terminal, timeout=30, what="pipeline end")
    assert pstate(root, "p") is PipelineState.SUCCEEDED, "\n".join(lines)


def never_stopped(lines: list[str]) -> None:
    """No decision line says the pipeline failed or was blocked, even for a moment."""
    bad = [line for line in lines if "pipeline failed" in line or "pipeline blocked" in line or "invalid spec:" in line]
    assert bad == [], "\n".join(lines)


def a_running(root: Root) -> None:
    wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a running")


def write_with_a_pause(path: Path, text: str, pause: float = 0.3) -> None:
    """Truncate, write half (cut inside a string: not valid TOML), flush, wait, write the rest."""
    cut = text.index('"') + 4
    with path.open("w") as f:
        f.write(text[:cut])
        f.flush()
        time.sleep(pause)
        f.write(text[cut:])


def test_a_new_job_file_written_in_place_with_a_pause_runs(root: Root, make_pipeline: MakePipeline,
                                                           tmp_path: Path) -> None:
    gate, record, job_b = gated(make_pipeline, tmp_path, b=None)
    with serving(root, gate) as lines:
        a_running(root)
        write_with_a_pause(job_b, NEW_B.format(record=record))
        time.sleep(0.3)
        run_to_the_end(root, lines, gate)
    never_stopped(lines)
    assert record.read_text() == "new\n"


def test_a_job_file_rewritten_by_a_shell_with_a_pause_runs_its_new_command(root: Root, make_pipeline: MakePipeline,
                                                                          tmp_path: Path) -> None:
    gate, record, job_b = gated(make_pipeline, tmp_path)
    with serving(root, gate) as lines:
        a_running(root)
        # `{ ...; sleep; ...; } > file`: the shell truncates the file, then writes it in two goes.
        script = (f"{{ printf 'command = \"echo ne'; sleep 0.3; printf 'w >> {record}\"\\nneeds = [\"a\"]\\n'; }}"
                  f" > {job_b}")
        subprocess.run(["sh", "-c", script], check=True, timeout=10)
        time.sleep(0.3)
        run_to_the_end(root, lines, gate)
    never_stopped(lines)
    assert record.read_text() == "new\n"


@pytest.mark.skipif(shutil.which("vim") is None, reason="vim is not installed")
def test_a_job_file_saved_by_vim_runs_its_new_command(root: Root, make_pipeline: MakePipeline,
                                                      tmp_path: Path) -> None:
    gate, record, job_b = gated(make_pipeline, tmp_path)
    with serving(root, gate) as lines:
        a_running(root)
        # Vim's own save: a backup by rename (b.toml~), a new file written, the backup removed.
        subprocess.run(["vim", "-Nu", "NONE", "-i", "NONE", "-n", "-es", "-c", "%s/echo old/echo new/", "-c", "wq",
                        str(job_b)], check=True, timeout=30, stdin=subprocess.DEVNULL)
        time.sleep(0.3)
        run_to_the_end(root, lines, gate)
    never_stopped(lines)
    assert record.read_text() == "new\n"


def test_a_job_file_written_to_a_temp_file_and_renamed_runs_its_new_command(root: Root, make_pipeline: MakePipeline,
                                                                           tmp_path: Path) -> None:
    gate, record, job_b = gated(make_pipeline, tmp_path)
    with serving(root, gate) as lines:
        a_running(root)
        # Write-temp-then-rename, as vim with `backupcopy=no` and most IDEs do; then as `sed -i` does.
        temp = job_b.with_name(".b.toml.swx")
        write_with_a_pause(temp, f'command = "echo mid >> {record}"\nneeds = ["a"]\n')
        os.replace(temp, job_b)
        subprocess.run(["sed", "-i", "s/echo mid/echo new/", str(job_b)], check=True, timeout=10)
        time.sleep(0.3)
        run_to_the_end(root, lines, gate)
    never_stopped(lines)
    assert record.read_text() == "new\n"


def test_a_job_file_saved_emacs_style_runs_its_new_command(root: Root, make_pipeline: MakePipeline,
                                                           tmp_path: Path) -> None:
    gate, record, job_b = gated(make_pipeline, tmp_path)
    with serving(root, gate) as lines:
        a_running(root)
        # Emacs keeps a backup by renaming the original to b.toml~, then writes a new b.toml.
        os.rename(job_b, job_b.with_name("b.toml~"))
        time.sleep(0.2)
        write_with_a_pause(job_b, NEW_B.format(record=record))
        # perl -i~ does the same: rename to the backup, write a new file in its place.
        subprocess.run(["perl", "-i~", "-pe", "s/echo new/echo newer/", str(job_b)], check=True, timeout=10)
        time.sleep(0.3)
        run_to_the_end(root, lines, gate)
    never_stopped(lines)
    assert record.read_text() == "newer\n"


def test_two_writers_saving_in_place_never_stop_the_pipeline(root: Root, make_pipeline: MakePipeline,
                                                             tmp_path: Path) -> None:
    gate, record, job_b = gated(make_pipeline, tmp_path)
    texts = [NEW_B.format(record=record), f'command = "echo other >> {record}"\nneeds = ["a"]\n']

    def writer(text: str) -> None:
        for _ in range(25):
            write_with_a_pause(job_b, text, pause=0.02)
            time.sleep(0.03)

    with serving(root, gate) as lines:
        a_running(root)
        threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        job_b.write_text(texts[0])  # the two may have left each other's halves mixed up
        time.sleep(0.3)
        run_to_the_end(root, lines, gate)
    never_stopped(lines)
    assert record.read_text() == "new\n"


def _clowder(root: Root, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clowder", *args, "--root", str(root.path)],
                          capture_output=True, text=True, timeout=timeout)


def test_a_job_file_left_invalid_blocks_its_pipeline_until_it_is_fixed(root: Root, make_pipeline: MakePipeline,
                                                                      tmp_path: Path) -> None:
    config = root.config_file
    config.write_text(config.read_text().replace('settle = "2s"', 'settle = "1s"'))
    gate, record, job_b = gated(make_pipeline, tmp_path)
    watch = subprocess.Popen([sys.executable, "-m", "clowder", "watch", "--root", str(root.path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        a_running(root)
        job_b.write_text(OLD_B.format(record=record) + 'retries = "two"\n')
        written = time.monotonic()
        wait_for(lambda: pstate(root, "p") is PipelineState.BLOCKED, what="pipeline blocked")
        assert time.monotonic() - written >= 0.9  # not before the file had time to settle
        status = _clowder(root, "status")
        assert status.returncode == 0
        row = next(line for line in status.stdout.splitlines() if line.startswith("p "))
        assert row.split()[1] == "blocked"
        assert f"invalid spec: {job_b}: retries: " in row
        detail = _clowder(root, "status", "p").stdout
        assert detail.startswith(f"pipeline p: blocked — invalid spec: {job_b}: retries: ")
        # Running attempts go on; nothing new starts.
        gate.touch()
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.SUCCEEDED, what="a recorded")
        time.sleep(0.3)
        assert jstatus(root, "p", "b").state is JobState.PENDING and not record.exists()
        assert pstate(root, "p") is PipelineState.BLOCKED
        job_b.write_text(NEW_B.format(record=record))
        wait_for(lambda: pstate(root, "p") is PipelineState.SUCCEEDED, timeout=30, what="pipeline resumed")
        assert watch.poll() is None
    finally:
        gate.touch()
        watch.terminate()
        _, err = watch.communicate(timeout=30)
    assert f"p: pipeline blocked: invalid spec: {job_b}: retries: " in err
    assert "pipeline failed" not in err
    assert record.read_text() == "new\n"
    assert read_pipeline_status(root.pipeline("p").status_file).message == ""


def test_run_on_a_pipeline_with_an_invalid_job_file_exits_two(root: Root, make_pipeline: MakePipeline,
                                                              cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'command = ["true"]\nretries = -1\n', "b": 'command = ["true"]\nneeds = ["a"]\n'})
    job_a = d / "jobs" / "a.toml"
    os.utime(job_a, (time.time() - 60, time.time() - 60))  # written a while ago: nothing to wait for
    started = time.monotonic()
    result = _clowder(root, "run", "p")
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 20
    assert f"error: p is blocked: invalid spec: {job_a}: retries: " in result.stderr
    assert "Traceback" not in result.stderr
    assert pstate(root, "p") is PipelineState.BLOCKED
    assert jstatus(root, "p", "a").state is JobState.PENDING
    job_a.write_text('command = ["true"]\n')
    row = cli("status").output.splitlines()[1]
    assert row.split()[:2] == ["p", "blocked"]
    assert row.endswith("(fixed since: it resumes when `clowder watch` or `clowder run` reads it)")
    assert cli("run", "p").exit_code == 0
    assert pstate(root, "p") is PipelineState.SUCCEEDED


def test_the_server_lists_a_blocked_pipeline_with_its_problem(root: Root, make_pipeline: MakePipeline) -> None:
    pytest.importorskip("fastapi")
    from tests.test_server import client

    d = make_pipeline("p", {"a": 'command = ["true"]\nretries = -1\n'})
    job_a = d / "jobs" / "a.toml"
    os.utime(job_a, (time.time() - 60, time.time() - 60))
    assert _clowder(root, "run", "p").returncode == 2
    with client(root) as (c, _):
        listed = c.get("/api/pipelines", params={"state": "blocked"}).json()
        assert [(p["name"], p["state"]) for p in listed] == [("p", "blocked")]
        assert listed[0]["message"].startswith(f"invalid spec: {job_a}: retries: ")


def test_the_settle_window_is_a_checked_setting(root: Root, cli: Invoke) -> None:
    assert 'settle = "2s"' in root.config_file.read_text()  # `clowder init` writes the default
    root.config_file.write_text(root.config_file.read_text().replace('settle = "2s"', 'settle = "a moment"'))
    result = cli("validate")
    assert result.exit_code == 2
    assert f"{root.config_file}: settle: " in result.output
