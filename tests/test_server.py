"""`clowder serve`: the JSON API, its live streams and the page, against a real uvicorn server
on a loopback port and a real daemon running real jobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx

from clowder import server
from clowder.driver import Driver
from clowder.state import Artifact, Attempt, JobState, JobStatus, job_status_to_toml, utcnow
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline, write
from tests.test_driver import _alive, daemon, jstatus, pstate, wait_for

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def serving(root: Root) -> Iterator[server.Prepared]:
    """`clowder serve` on a free loopback port, in a thread."""
    p = server.prepare(root, "127.0.0.1", 0)
    thread = threading.Thread(target=p.run, daemon=True)
    thread.start()
    wait_for(lambda: p.server.started, timeout=10, what="server start")
    try:
        yield p
    finally:
        p.server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def client(root: Root) -> Iterator[tuple[httpx.Client, server.Prepared]]:
    with serving(root) as p, httpx.Client(base_url=p.url, timeout=10) as c:
        yield c, p


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    event, data = "message", ""
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


def run_to_end(root: Root) -> None:
    Driver(root, log=lambda s: None).serve(until_done=True)


# -- reading --------------------------------------------------------------------------------------

def test_pipelines_are_listed_with_their_states_and_filtered(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("done", {"a": 'command = ["true"]\n'})
    run_to_end(root)
    make_pipeline("fresh", {"a": 'command = ["true"]\n', "b": 'command = ["true"]\nneeds = ["a"]\n'})
    with client(root) as (c, _):
        listed = c.get("/api/pipelines").json()
        assert [(p["name"], p["state"], p["counts"]) for p in listed] == [
            ("done", "succeeded", {"succeeded": 1}), ("fresh", "pending", {"pending": 2}),
        ]
        assert [p["name"] for p in c.get("/api/pipelines", params={"state": "succeeded"}).json()] == ["done"]
        assert c.get("/api/pipelines", params={"state": "running"}).json() == []
        bad = c.get("/api/pipelines", params={"state": "sideways"})
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/json"
        assert c.get("/api/info").json()["root"] == str(root.path)


def test_a_pipeline_shows_jobs_edges_levels_and_attempts(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "sleep 0.2"\n', "b": 'command = ["false"]\nneeds = ["a"]\n',
                        "c": 'command = ["true"]\nneeds = [{ job = "b", when = "always" }, "a"]\n'},
                  spec='prompt = "build it"\n')
    run_to_end(root)
    with client(root) as (c, _):
        d = c.get("/api/pipelines/p").json()
    assert (d["state"], d["prompt"]) == ("failed", "build it")
    jobs = {j["name"]: j for j in d["jobs"]}
    assert [j["name"] for j in d["jobs"]] == ["a", "b", "c"]
    assert {n: (j["state"], j["level"]) for n, j in jobs.items()} == {
        "a": ("succeeded", 0), "b": ("failed", 1), "c": ("succeeded", 2)}
    assert jobs["a"]["duration"] >= 0.2
    assert jobs["b"]["attempts"][0]["exit_code"] == 1
    assert d["edges"] == [{"source": "a", "target": "b", "when": "success"},
                          {"source": "a", "target": "c", "when": "success"},
                          {"source": "b", "target": "c", "when": "always"}]


def test_a_job_shows_its_spec_artifacts_consumers_and_regression_context(root: Root,
                                                                          make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {
        "dev": 'command = ["true"]\n',
        "test": 'command = ["true"]\nneeds = ["dev"]\n',
        "test.r1": 'command = ["true"]\nparent = "test"\nregression_of = "test"\n'
                   '[regression_context]\nreason = "flaky assert"\nattempt = 1\ncontext = "AssertionError"\n',
    })
    paths = root.pipeline("p")
    now = utcnow()
    statuses = [
        JobStatus("dev", JobState.SUCCEEDED, 1, attempts=(Attempt(
            1, JobState.SUCCEEDED, now, now, 0, commit="c" * 40,
            artifacts=(Artifact("app.py", "b" * 40, 12), Artifact(".clowder/dev/output.json", "d" * 40, 5,
                                                                  "model_output"))),)),
        JobStatus("test", JobState.WAITING, 1, waiting_for=("test.r1",), spawned=("test.r1",), attempts=(
            Attempt(1, JobState.FAILED, now, now, 1, base_commit="c" * 40, commit="e" * 40,
                    consumed={"dev": "c" * 40}),)),
    ]
    for s in statuses:
        write(paths.job_status_file(s.job), job_status_to_toml(s))
    with client(root) as (c, _):
        dev = c.get("/api/pipelines/p/jobs/dev").json()
        fix = c.get("/api/pipelines/p/jobs/test.r1").json()
        test = c.get("/api/pipelines/p/jobs/test").json()
        jobs = c.get("/api/pipelines/p").json()["jobs"]
    assert {j["name"]: (j["regression_of"], j["parent"]) for j in jobs} == {
        "dev": (None, None), "test": (None, None), "test.r1": ("test", "test")}
    assert dev["spec"] == {"command": ["true"]}
    assert dev["dependents"] == ["test"]
    assert dev["attempts"][0]["artifacts"] == [
        {"path": "app.py", "blob": "b" * 40, "size": 12, "kind": "file"},
        {"path": ".clowder/dev/output.json", "blob": "d" * 40, "size": 5, "kind": "model_output"}]
    assert dev["consumers"] == [{"job": "test", "attempt": 1, "commit": "c" * 40}]
    assert test["attempts"][0]["consumed"] == {"dev": "c" * 40}
    assert (test["state"], test["spawned"], test["waiting_for"]) == ("waiting", ["test.r1"], ["test.r1"])
    assert fix["regression"] == {"of": "test", "parent": "test",
                                 "context": {"reason": "flaky assert", "attempt": 1, "context": "AssertionError"}}
    assert fix["state"] == "pending"


def test_the_diff_between_attempts_is_what_clowder_diff_shows(root: Root, make_pipeline: MakePipeline,
                                                               cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "echo $CLOWDER_ATTEMPT > n.txt; test $CLOWDER_ATTEMPT = 2"\nretries = 1\n'
                             'backoff = { initial = "10ms" }\n'})
    run_to_end(root)
    with client(root) as (c, _):
        between = c.get("/api/pipelines/p/diff", params={"a": "a@1", "b": "a@2"})
        first = c.get("/api/pipelines/p/diff", params={"a": "a@1"}).text
    assert between.headers["content-type"].startswith("text/plain")
    assert between.text == cli("diff", "p", "a@1", "a@2").output
    assert "-1\n+2\n" in between.text
    assert "+++ b/n.txt\n@@ -0,0 +1 @@\n+1\n" in first


# -- live -----------------------------------------------------------------------------------------

def test_states_change_as_jobs_run_and_the_events_stream_reports_them(root: Root, make_pipeline: MakePipeline,
                                                                      tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make_pipeline("p", {"a": f'command = "while [ ! -f {gate} ]; do sleep 0.02; done"\n',
                        "b": 'command = ["true"]\nneeds = ["a"]\n'})
    seen: list[tuple[str, str | None, str]] = []
    with client(root) as (c, _), daemon(root):
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a running")
        assert {j["name"]: j["state"] for j in c.get("/api/pipelines/p").json()["jobs"]} == {
            "a": "running", "b": "pending"}
        with c.stream("GET", "/api/events", params={"pipeline": "p"}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for event, data in sse_events(r.iter_lines()):
                if event == "hello":
                    gate.touch()
                    continue
                seen.append((event, data["job"], data["state"]))
                if event == "pipeline" and data["state"] == "succeeded":
                    break
        assert c.get("/api/pipelines/p").json()["state"] == "succeeded"
    assert ("job", "a", "succeeded") in seen
    assert seen.index(("job", "a", "succeeded")) < seen.index(("job", "b", "succeeded"))


def test_a_running_attempts_log_streams_lines_as_they_are_written(root: Root, make_pipeline: MakePipeline,
                                                                  tmp_path: Path) -> None:
    g1, g2 = tmp_path / "g1", tmp_path / "g2"
    make_pipeline("p", {"a": f'command = "echo one; while [ ! -f {g1} ]; do sleep 0.02; done; echo two; '
                             f'while [ ! -f {g2} ]; do sleep 0.02; done; echo three"\n'})
    texts: list[str] = []
    with client(root) as (c, _), daemon(root):
        wait_for(lambda: jstatus(root, "p", "a").state is JobState.RUNNING, what="a running")
        with c.stream("GET", "/api/pipelines/p/jobs/a/logs", params={"follow": "true"}) as r:
            for event, data in sse_events(r.iter_lines()):
                if event == "end":
                    assert data["offset"] == len("one\ntwo\nthree\n")
                    break
                texts.append(data["text"])
                # Each line arrives while the job still waits for its next gate: it is streamed.
                joined = "".join(texts)
                if joined == "one\n":
                    g1.touch()
                elif joined == "one\ntwo\n":
                    g2.touch()
        assert c.get("/api/pipelines/p/jobs/a/logs", params={"attempt": 1}).text == "one\ntwo\nthree\n"
        resumed = c.get("/api/pipelines/p/jobs/a/logs", params={"follow": "true"}, headers={"Last-Event-ID": "4"})
        assert [d["text"] for e, d in sse_events(iter(resumed.text.splitlines())) if e == "log"] == ["two\nthree\n"]
    assert "".join(texts) == "one\ntwo\nthree\n"


def test_a_pipelines_log_stream_carries_every_jobs_prefixed_lines_until_it_ends(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    tried = tmp_path / "tried"
    make_pipeline("p", {"a": 'command = "for i in 1 2 3; do echo a $i; sleep 0.2; done"\n',
                        "b": 'command = "for i in 1 2 3; do echo b $i; sleep 0.2; done"\n',
                        "flaky": f'command = "if [ -f {tried} ]; then echo again; else touch {tried}; echo once; '
                                 f'exit 1; fi"\nretries = 1\nbackoff = {{ initial = "200ms" }}\nneeds = ["a"]\n'})
    with client(root) as (c, _):
        with c.stream("GET", "/api/pipelines/p/logs", params={"follow": "true"}, timeout=60) as r, daemon(root):
            events = []
            for event, data in sse_events(r.iter_lines()):
                events.append((event, data))
                if event == "end":
                    break
        texts = [d["text"] for e, d in events if e == "log"]
        a_lines = [f"a#1     | a {i}\n" for i in (1, 2, 3)]
        b_lines = [f"b#1     | b {i}\n" for i in (1, 2, 3)]
        assert sorted(texts) == [*a_lines, *b_lines, "flaky#1 | once\n", "flaky#2 | again\n"]
        assert [t for t in texts if t.startswith("b")] == b_lines  # each job's lines in its order
        assert [t for t in texts if t.startswith("a")] == a_lines
        assert texts.index("flaky#1 | once\n") < texts.index("flaky#2 | again\n")
        assert events[-1] == ("end", {"state": "succeeded"})
        # Without follow: each job's latest attempt, in the order the jobs started (a and b at once).
        assert c.get("/api/pipelines/p/logs").text in (
            "".join([*a_lines, *b_lines, "flaky#2 | again\n"]), "".join([*b_lines, *a_lines, "flaky#2 | again\n"]))
        assert c.get("/api/pipelines/nope/logs").status_code == 404


def test_cancel_through_the_api_needs_the_token_and_kills_the_job(root: Root, make_pipeline: MakePipeline,
                                                                  tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    make_pipeline("p", {"a": f'command = "echo $$ > {pidfile}; exec sleep 100"\n',
                        "b": 'command = ["true"]\nneeds = ["a"]\n'})
    with client(root) as (c, p), daemon(root):
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "", what="job pid")
        pid = int(pidfile.read_text())
        assert c.post("/api/pipelines/p/jobs/a/cancel").status_code == 401
        wrong = c.post("/api/pipelines/p/jobs/a/cancel", headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.headers["www-authenticate"]) == (401, "Bearer")
        assert not any(root.pipeline("p").requests_dir.glob("*.toml"))
        r = c.post("/api/pipelines/p/jobs/a/cancel", headers={"Authorization": f"Bearer {p.token}"})
        assert r.status_code == 202
        assert r.json()["action"] == "cancel" and r.json()["job"] == "a"
        wait_for(lambda: pstate(root, "p").terminal, what="pipeline end")
        wait_for(lambda: not _alive(pid), timeout=5, what="job to die")
    assert jstatus(root, "p", "a").state is JobState.CANCELLED
    assert jstatus(root, "p", "b").state is JobState.SKIPPED


def test_retry_through_the_api_runs_a_new_attempt(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    make_pipeline("p", {"a": f'command = "test -f {marker}"\n'})
    run_to_end(root)
    marker.touch()
    with client(root) as (c, p):
        auth = {"Authorization": f"Bearer {p.token}"}
        assert c.post("/api/pipelines/p/jobs/a/retry", headers=auth).status_code == 202
        assert c.post("/api/pipelines/p/jobs/nope/retry", headers=auth).status_code == 404
    run_to_end(root)
    assert [a.state for a in jstatus(root, "p", "a").attempts] == [JobState.FAILED, JobState.SUCCEEDED]


def test_cancel_and_retry_that_cannot_apply_are_409_with_the_reason(root: Root, make_pipeline: MakePipeline,
                                                                     tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    make_pipeline("p", {"a": 'command = ["true"]\n', "b": 'command = ["false"]\nneeds = ["a"]\n'})
    make_pipeline("q", {"slow": f'command = "while [ ! -f {gate} ]; do sleep 0.02; done"\n'})
    with client(root) as (c, p), daemon(root), _touched_at_exit(gate):
        auth = {"Authorization": f"Bearer {p.token}"}
        wait_for(lambda: pstate(root, "p").terminal and jstatus(root, "q", "slow").state is JobState.RUNNING,
                 what="p to end and q/slow to run")
        refused = {
            "/api/pipelines/p/jobs/a/retry": "p/a has succeeded; only a failed or cancelled job can be retried",
            "/api/pipelines/p/jobs/a/cancel": "p/a has succeeded; only a job that has not ended can be cancelled",
            "/api/pipelines/p/cancel": "p has failed; only a pipeline that has not ended can be cancelled",
            "/api/pipelines/q/jobs/slow/retry": "q/slow is running; only a failed or cancelled job can be retried",
        }
        for url, reason in refused.items():
            r = c.post(url, headers=auth)
            assert (r.status_code, r.json()) == (409, {"detail": reason}), url
        assert not any(root.pipeline("p").requests_dir.glob("*.toml"))
        assert {j["name"]: j["actions"] for j in c.get("/api/pipelines/p").json()["jobs"]} == {
            "a": ["rerun"], "b": ["retry", "rerun"]}
        assert c.get("/api/pipelines/p").json()["actions"] == []
        assert c.get("/api/pipelines/q").json()["actions"] == ["cancel"]
        assert c.get("/api/pipelines/q/jobs/slow").json()["actions"] == ["cancel"]
        assert c.post("/api/pipelines/p/jobs/b/retry", headers=auth).status_code == 202
        gate.touch()
        wait_for(lambda: pstate(root, "q").terminal, what="q to end")


@contextmanager
def _touched_at_exit(gate: Path) -> Iterator[None]:
    """Whatever happens in the test, the job waiting for `gate` ends."""
    try:
        yield
    finally:
        gate.touch()


# -- safety ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "status"), [
    ("/api/pipelines/nope", 404),
    ("/api/pipelines/Upper", 422),
    ("/api/pipelines/-dash", 422),
    ("/api/pipelines/%2e%2e", 422),
    ("/api/pipelines/p/jobs/%2e%2e%2fclowder.toml", 404),
    ("/api/pipelines/p/jobs/nope", 404),
    ("/api/pipelines/p/jobs/a/logs", 404),
    ("/api/pipelines/p/jobs/a/logs?attempt=0", 422),
    ("/api/pipelines/p/jobs/a/logs?attempt=7", 404),
    ("/api/pipelines/p/jobs/a/logs?offset=-1", 422),
    ("/api/events?pipeline=..", 422),
    ("/api/pipelines/p/diff", 422),
    ("/api/pipelines/p/diff?a=-x", 422),
    ("/api/pipelines/p/diff?a=a%20--output=x", 422),
    ("/api/pipelines/p/diff?a=nope", 404),
    ("/api/pipelines/p/diff?a=a", 404),
    ("/api/pipelines/p/diff?a=a&b=a@3", 404),
    ("/api/nothing", 404),
])
def test_bad_requests_get_a_4xx_json_error(root: Root, make_pipeline: MakePipeline, path: str, status: int) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n'})
    with client(root) as (c, _):
        r = c.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert "detail" in r.json()


def test_a_missing_pipeline_or_job_is_404_in_the_words_of_the_cli(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("alpha", {"dev": 'command = ["true"]\n'})
    no_pipeline = f"{root.pipelines_dir}/alpa: no such pipeline; did you mean alpha?"
    no_job = "'dve': not a job of alpha; did you mean dev? (jobs: dev)"
    token = server.load_token(root)
    with client(root) as (c, _):
        for method, path, words in [
            ("GET", "/api/pipelines/alpa", no_pipeline), ("GET", "/api/pipelines/alpa/jobs/dev", no_pipeline),
            ("GET", "/api/pipelines/alpa/jobs/dev/logs", no_pipeline),
            ("GET", "/api/pipelines/alpa/diff?a=dev", no_pipeline), ("POST", "/api/pipelines/alpa/cancel", no_pipeline),
            ("POST", "/api/pipelines/alpa/jobs/dev/retry", no_pipeline),
            ("GET", "/api/pipelines/alpha/jobs/dve", no_job),
            ("GET", "/api/pipelines/alpha/jobs/dve/logs", no_job), ("GET", "/api/pipelines/alpha/diff?a=dve", no_job),
            ("POST", "/api/pipelines/alpha/jobs/dve/cancel", no_job),
        ]:
            r = c.request(method, path, headers={"Authorization": f"Bearer {token}"})
            assert (r.status_code, r.json()) == (404, {"detail": words}), path


def test_requests_for_another_host_name_are_refused(root: Root) -> None:
    with client(root) as (c, _):
        r = c.get("/api/pipelines", headers={"Host": "attacker.example:8765"})
        assert (r.status_code, r.json()["detail"]) == (400, "unexpected Host header: use the address clowder serve "
                                                            "printed")
        assert c.get("/api/pipelines", headers={"Host": "localhost:1"}).status_code == 200


@pytest.mark.parametrize("offset", ["9223372036854775807", "99999999999999999999", "9223372036854775808",
                                    "-9223372036854775809", "1e3", "0x10", ""])
def test_an_offset_out_of_range_is_a_4xx_not_a_server_error(root: Root, make_pipeline: MakePipeline,
                                                            offset: str) -> None:
    make_pipeline("p", {"a": 'command = "echo hi"\n'})
    run_to_end(root)
    with client(root) as (c, _):
        for follow in ("false", "true"):
            r = c.get("/api/pipelines/p/jobs/a/logs", params={"offset": offset, "follow": follow})
            assert 400 <= r.status_code < 500, r.text
            assert "detail" in r.json()
        past_the_end = c.get("/api/pipelines/p/jobs/a/logs", params={"offset": 1 << 30})
        assert (past_the_end.status_code, past_the_end.text) == (200, "")
        resumed = c.get("/api/pipelines/p/jobs/a/logs", params={"follow": "true"},
                        headers={"Last-Event-ID": "999999999999999999"})
        assert resumed.status_code == 200 and "event: end" in resumed.text


@pytest.mark.parametrize("where", ["file", "job dir", "logs dir"])
def test_a_log_that_is_a_symlink_out_of_the_pipeline_is_not_served(root: Root, make_pipeline: MakePipeline,
                                                                    tmp_path: Path, where: str) -> None:
    make_pipeline("p", {"a": 'command = "echo hi"\n'})
    run_to_end(root)
    paths = root.pipeline("p")
    secret = tmp_path / "outside" / "a" / "1.log"
    secret.parent.mkdir(parents=True)
    secret.write_text("root:x:0:0:secret\n")
    link = {"file": paths.log_file("a", 1), "job dir": paths.log_file("a", 1).parent, "logs dir": paths.logs_dir}
    target = {"file": secret, "job dir": secret.parent, "logs dir": secret.parent.parent}
    moved = tmp_path / "moved"
    link[where].rename(moved)
    link[where].symlink_to(target[where])
    with client(root) as (c, _):
        for follow in ("false", "true"):
            r = c.get("/api/pipelines/p/jobs/a/logs", params={"attempt": 1, "follow": follow})
            assert "secret" not in r.text
            assert r.status_code == 404, r.text
            assert "outside" in r.json()["detail"]


def test_a_hand_broken_status_file_is_named_not_taken_for_a_job_that_never_ran(root: Root,
                                                                              make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "echo hi"\n'})
    run_to_end(root)
    status = root.pipeline("p").job_status_file("a")
    status.write_text(status.read_text().replace("+00:00\n", "\n", 1))  # a time without its UTC offset
    with client(root) as (c, _):
        r = c.get("/api/pipelines/p/jobs/a/logs")
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith(f"{status}: attempts[0].started_at: expected a date-time with a UTC offset")


def test_a_log_that_is_a_fifo_is_not_read(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a": 'command = "echo hi"\n'})
    run_to_end(root)
    log = root.pipeline("p").log_file("a", 1)
    log.unlink()
    os.mkfifo(log)
    with client(root) as (c, _):
        for follow in ("false", "true"):
            r = c.get("/api/pipelines/p/jobs/a/logs", params={"attempt": 1, "follow": follow})
            assert r.status_code == 404, r.text


@pytest.mark.parametrize("host", [
    "127.0.0.1:{port}@evil.com", "127.0.0.1@evil.com", "localhost:{port}@evil.com", "127.0.0.1:{port}:80",
    "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1: 80", "[::1", "[::1]x",
    "[::1]:{port}@evil.com", "::1:{port}", "127.0.0.1.evil.com", "evil.com#127.0.0.1", "", " ",
])
def test_a_host_header_that_only_starts_like_loopback_is_refused(root: Root, host: str) -> None:
    with serving(root) as p:
        port = p.socket.getsockname()[1]
        r = raw_get(port, "/api/pipelines", host.format(port=port))
    assert r.startswith("HTTP/1.1 400 "), r
    assert "unexpected Host header" in r


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LOCALHOST:{port}",
                                  "[::1]:{port}", "[::1]"])
def test_loopback_host_headers_are_served(root: Root, host: str) -> None:
    with serving(root) as p:
        port = p.socket.getsockname()[1]
        r = raw_get(port, "/api/pipelines", host.format(port=port))
    assert r.startswith("HTTP/1.1 200 "), r


def raw_get(port: int, path: str, host: str) -> str:
    """A GET with exactly this Host header, as a hostile page or tool would send it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_the_token_is_owner_only_and_kept_across_restarts(root: Root) -> None:
    first = server.load_token(root)
    path = root.state_dir / "serve.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert server.load_token(root) == first
    path.chmod(0o644)
    fresh = server.load_token(root)
    assert fresh != first and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_page_loads_nothing_from_elsewhere(root: Root) -> None:
    with client(root) as (c, _):
        page = c.get("/")
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert page.headers["referrer-policy"] == "no-referrer"
        assert c.get("/static/app.js").status_code == 200
    for f in (REPO / "clowder" / "web").iterdir():
        assert "http://" not in f.read_text().replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in f.read_text()


# -- the command ----------------------------------------------------------------------------------

def test_serve_prints_the_address_with_the_token_and_serves(root: Root) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "clowder", "serve", "--port", "0", "--root", str(root.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"clowder serve: {root.path}\n"
        url = proc.stdout.readline().split()[1]
        assert url.endswith("?token=" + (root.state_dir / "serve.token").read_text().strip())
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 130


def test_serve_without_the_web_extra_says_how_to_install_it(cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    import clowder

    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "clowder.server")
    monkeypatch.delattr(clowder, "server")
    result = cli("serve")
    assert result.exit_code == 2
    assert result.stderr == ("error: clowder serve needs the web extra (fastapi is missing): "
                             "pip install 'clowder[web]'\n")


def test_serve_refuses_a_port_in_use(root: Root, cli: Invoke) -> None:
    with serving(root) as p:
        port = p.socket.getsockname()[1]
        result = cli("serve", "--port", str(port))
    assert result.exit_code == 2
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


# -- layers ---------------------------------------------------------------------------------------

def test_the_server_drops_requests_without_loading_the_scheduler_or_rich() -> None:
    """A face never imports another face: dropping a cancel needs clowder.requests, not the runner
    (which brings rich, the driver and watchdog)."""
    code = ("import sys, clowder.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich' "
            "or m in ('clowder.runner', 'clowder.driver', 'watchdog')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


# -- the OpenAPI document, tested by schemathesis -------------------------------------------------

def test_the_openapi_document_describes_every_api_route(root: Root) -> None:
    with client(root) as (c, _):
        doc = c.get("/openapi.json").json()
    assert sorted(doc["paths"]) == [
        "/api/events", "/api/info", "/api/pipelines", "/api/pipelines/{pipeline}",
        "/api/pipelines/{pipeline}/cancel", "/api/pipelines/{pipeline}/diff", "/api/pipelines/{pipeline}/jobs/{job}",
        "/api/pipelines/{pipeline}/jobs/{job}/approve",
        "/api/pipelines/{pipeline}/jobs/{job}/cancel", "/api/pipelines/{pipeline}/jobs/{job}/logs",
        "/api/pipelines/{pipeline}/jobs/{job}/reject", "/api/pipelines/{pipeline}/jobs/{job}/rerun",
        "/api/pipelines/{pipeline}/jobs/{job}/retry",
        "/api/pipelines/{pipeline}/jobs/{job}/why", "/api/pipelines/{pipeline}/logs",
    ]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_generated_requests_never_get_a_server_error(root: Root, make_pipeline: MakePipeline) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    make_pipeline("p", {"a": 'command = "echo hi"\n', "b": 'command = ["false"]\nneeds = ["a"]\n',
                        "c": 'command = ["true"]\nneeds = [{ job = "b", when = "always" }]\n'})
    make_pipeline("q", {"a": 'command = ["true"]\n'})
    run_to_end(root)
    with serving(root) as p:
        schema = schemathesis.openapi.from_url(p.url + "openapi.json")
        # The events stream never ends by itself; its behaviour is tested above.
        operations = schema.exclude(path="/api/events").get_all_operations()
        auth = {"Authorization": f"Bearer {p.token}"}
        checked = 0
        for result in operations:
            operation = result.ok()
            for mode, known in ((GenerationMode.POSITIVE, False), (GenerationMode.NEGATIVE, False),
                                (GenerationMode.POSITIVE, True)):
                strategy = operation.as_strategy(generation_mode=mode)
                if known:  # names that exist, so that the generated queries reach the code that reads files
                    strategy = strategy.map(_with_existing_names)

                @settings(max_examples=20 if known else 10, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def check(case: Any) -> None:
                    case.call_and_validate(headers=auth, timeout=10)

                try:
                    check()
                except Unsatisfiable:  # no parameters (GET /api/info): nothing to get wrong
                    assert mode is GenerationMode.NEGATIVE
            checked += 1
    assert checked == 14


def _with_existing_names(case: Any) -> Any:
    params = case.path_parameters or {}
    if "pipeline" in params:
        params["pipeline"] = "p"
    if "job" in params:
        params["job"] = "a"
    return case


# -- the page in a real browser -------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_the_page_follows_a_job_from_running_to_succeeded_without_reloading(
    root: Root, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    build_gate, test_gate = tmp_path / "build-gate", tmp_path / "test-gate"
    wait = "while [ ! -f {} ]; do sleep 0.02; done"
    make_pipeline("web-app", {
        "plan": 'command = "echo planning the work"\n',
        "build": f'command = "echo compiling; {wait.format(build_gate)}; echo build ok"\nneeds = ["plan"]\n',
        "lint": 'command = "echo 2 warnings; exit 1"\nneeds = ["plan"]\nallow_failure = true\n',
        "test": f'command = "echo running tests; {wait.format(test_gate)}"\nneeds = ["build"]\n',
        "docs": 'command = ["true"]\nneeds = ["plan"]\n',
        "deploy": 'command = ["true"]\nneeds = ["test", "docs"]\n',
        "notify": 'command = ["true"]\nneeds = [{ job = "test", when = "always" }]\n',
    }, spec='prompt = "Add a dark mode to the settings page"\n')
    make_pipeline("nightly", {"a": 'command = ["true"]\n'})
    shot = tmp_path / "serve.png"
    with serving(root) as p, daemon(root), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"{p.url}?token={p.token}#/p/web-app/build")
            node = page.locator('g.node[data-job="build"]')
            sync_api.expect(node).to_have_attribute("data-state", "running", timeout=15_000)
            sync_api.expect(page.locator("#log")).to_have_text("compiling\n", timeout=10_000)
            page.evaluate("window.notReloaded = true")
            assert "token" not in page.url  # taken out of the address bar, kept in sessionStorage
            build_gate.touch()
            sync_api.expect(node).to_have_attribute("data-state", "succeeded", timeout=15_000)
            sync_api.expect(page.locator("#log")).to_have_text("compiling\nbuild ok\n", timeout=10_000)
            sync_api.expect(page.locator('g.node[data-job="test"]')).to_have_attribute("data-state", "running")
            sync_api.expect(page.locator("#job-state")).to_have_text("succeeded")
            sync_api.expect(page.locator('#pipeline-list li[data-pipeline="nightly"]')).to_have_attribute(
                "data-state", "succeeded")
            assert page.evaluate("window.notReloaded") is True
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
                page.screenshot(path=str(REPO / "docs" / "serve.png"), full_page=True)
            page.locator('g.node[data-job="test"]').click()
            sync_api.expect(page.locator("#job-name")).to_have_text("test")
            sync_api.expect(page.locator("#retry-job")).to_be_hidden()  # only what applies to a running job
            sync_api.expect(page.locator("#cancel-pipeline")).to_be_visible()
            page.locator("#cancel-job").click()  # with the token the address gave
            sync_api.expect(page.locator("#toast")).to_have_text("cancel of test requested")
            sync_api.expect(page.locator('g.node[data-job="test"]')).to_have_attribute(
                "data-state", "cancelled", timeout=15_000)
            sync_api.expect(page.locator("#cancel-job")).to_be_hidden()
            sync_api.expect(page.locator("#retry-job")).to_be_visible()
            sync_api.expect(page.locator("#pipeline-state")).not_to_have_text("running", timeout=15_000)
            sync_api.expect(page.locator("#cancel-pipeline")).to_be_hidden()
            page.locator("#retry-job").click()
            sync_api.expect(page.locator("#toast")).to_have_text("retry of test requested")
            sync_api.expect(page.locator("#retry-job")).to_be_hidden()  # asked once; not twice
            page.locator('g.node[data-job="build"]').click()
            sync_api.expect(page.locator("#job-name")).to_have_text("build")
            sync_api.expect(page.locator("#cancel-job")).to_be_hidden()
            sync_api.expect(page.locator("#retry-job")).to_be_hidden()
            assert page.evaluate("window.notReloaded") is True
        finally:
            browser.close()
            test_gate.touch()
        wait_for(lambda: pstate(root, "web-app").terminal, what="pipeline end")
    assert shot.stat().st_size > 10_000
