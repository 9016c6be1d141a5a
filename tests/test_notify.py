"""Notifications with real commands, a real HTTP server and real daemons killed with SIGKILL."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from clowder.driver import Driver
from clowder.notify import notifier
from clowder.notify.events import Event, job_events, pipeline_events
from clowder.notify.outbox import Delivery, Outbox, Record, Send
from clowder.schema import load_schema
from clowder.spec import NotifyEvent, NotifyTarget
from clowder.state import Approval, JobState, JobStatus, PipelineState, PipelineStatus, Verdict
from clowder.tree import Root
from tests.conftest import REPO, Invoke, MakePipeline, wait_for
from tests.test_driver import jstatus, pstate

ONE_JOB = {"a": 'command = ["true"]\n'}


def recorder(out: Path) -> str:
    """A [[notify]] command that appends the event's JSON (one line) and its variables to `out`."""
    script = (f'printf "%s|%s|%s|%s|%s|%s\\n" "$CLOWDER_EVENT" "$CLOWDER_PIPELINE" "$CLOWDER_JOB" '
              f'"$CLOWDER_ATTEMPT" "$CLOWDER_STATE" "$CLOWDER_MESSAGE" >> {out}.env; cat >> {out}; echo >> {out}')
    return json.dumps(["sh", "-c", script])


def notify_config(root: Root, table: str) -> None:
    root.config_file.write_text(root.config_file.read_text() + "\n[[notify]]\n" + table)


def received(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def records(root: Root) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((root.state_dir / "notify").rglob("*.json"))]


def run(root: Root, **kw: Any) -> tuple[bool, list[str]]:
    lines: list[str] = []
    ok = Driver(root, log=lines.append, **kw).serve(until_done=True)
    return ok, lines


# -- a command --------------------------------------------------------------------------------

def test_a_command_is_told_each_event_as_json_on_stdin_and_in_its_variables(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    out = tmp_path / "events"
    notify_config(root, f'on = ["job_failed", "pipeline_failed", "pipeline_succeeded"]\ncommand = {recorder(out)}\n')
    make_pipeline("p", {"a": 'command = ["sh", "-c", "exit 3"]\n', "b": 'command = ["true"]\n'})
    make_pipeline("q", ONE_JOB)
    assert cli("run", "p", "q").exit_code == 1
    events = received(out)
    assert sorted((e["event"], e["pipeline"], e["job"]) for e in events) == [
        ("job_failed", "p", "a"), ("pipeline_failed", "p", ""), ("pipeline_succeeded", "q", "")]
    failed = next(e for e in events if e["event"] == "job_failed")
    assert failed["attempt"] == 1 and failed["state"] == "failed"
    assert failed["message"] == "attempt 1 failed: exit code 3"
    assert failed["text"] == "Clowder: p/a failed (attempt 1): exit code 3"
    assert failed["root"] == str(root.path)
    assert next(e for e in events if e["event"] == "pipeline_failed")["text"] == "Clowder: pipeline p failed: a"
    variables = sorted(Path(f"{out}.env").read_text().splitlines())
    assert variables == ["job_failed|p|a|1|failed|attempt 1 failed: exit code 3",
                         "pipeline_failed|p||2|failed|failed: a",
                         "pipeline_succeeded|q||1|succeeded|"]
    # Each is recorded as sent, with the table it went to.
    assert [s["state"] for r in records(root) for s in r["sends"]] == ["sent"] * 3


def test_only_the_events_a_table_asks_for_are_sent_and_a_pipeline_has_its_own_tables(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    root_out, own_out = tmp_path / "root-events", tmp_path / "own-events"
    notify_config(root, f'on = ["pipeline_failed"]\ncommand = {recorder(root_out)}\n')
    make_pipeline("p", ONE_JOB, spec=f'prompt = "x"\n\n[[notify]]\non = ["pipeline_succeeded"]\n'
                                     f'command = {recorder(own_out)}\n')
    make_pipeline("q", ONE_JOB)
    assert cli("run", "p", "q").exit_code == 0
    assert not root_out.exists()  # nothing failed
    assert [(e["event"], e["pipeline"]) for e in received(own_out)] == [("pipeline_succeeded", "p")]


def test_a_spawned_fixup_and_a_spent_budget_are_told(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "events"
    notify_config(root, f'on = ["fixup_spawned", "budget_spent"]\ncommand = {recorder(out)}\n')
    fixed = 'if [ -n \\"$(ls .clowder/*/regression.json 2>/dev/null)\\" ]; then touch fixed.txt; fi'
    make_pipeline("fix", {
        "dev": f'command = "{fixed}"\n',
        "test": ('command = "if [ -f fixed.txt ]; then echo ok; else clowder spawn dev --reason \'no fix yet\'; '
                 'exit 1; fi"\nneeds = ["dev"]\n')})
    priced = '[harnesses.scripted]\nmodel = "m1"\n\n[prices.m1]\ninput = 1000.0\noutput = 2000.0\n'
    root.config_file.write_text(root.config_file.read_text() + "\n" + priced)
    make_pipeline("money", {"a": (
        'agent = "dev"\nretries = 5\nbackoff = { initial = 0, factor = 1 }\nmax_cost_usd = 1.0\n'
        '[[script]]\nusage = { input_tokens = 1000, output_tokens = 100 }\n[[script]]\nexit = 1\n')})
    assert cli("run", "fix", "money").exit_code == 1
    assert pstate(root, "fix") is PipelineState.SUCCEEDED
    events = {e["event"]: e for e in received(out)}
    assert sorted(events) == ["budget_spent", "fixup_spawned"]
    spawned = events["fixup_spawned"]
    assert (spawned["pipeline"], spawned["job"], spawned["attempt"], spawned["fixup"]) == ("fix", "test", 1, "dev.r1")
    assert spawned["text"].startswith("Clowder: fix/test spawned the fix-up dev.r1")
    spent = events["budget_spent"]
    assert (spent["pipeline"], spent["job"]) == ("money", "a")
    assert spent["message"].startswith("budget spent: a has cost $1.2000 of its max_cost_usd $1.00")


def test_a_blocked_pipeline_is_told_once_and_not_again_by_the_next_daemon(root: Root, make_pipeline: MakePipeline,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "events"
    # Blocked at once, not after the file has settled.
    root.config_file.write_text(root.config_file.read_text().replace('settle = "2s"', "settle = 0"))
    notify_config(root, f'on = ["pipeline_blocked"]\ncommand = {recorder(out)}\n')
    make_pipeline("p", {"a": 'command = ["true"]\nneeds = ["nope"]\n'})
    ok, _ = run(root, only=["p"])
    assert not ok
    ok, _ = run(root, only=["p"])  # still blocked, for the same reason: told already
    (events,) = received(out)
    assert events["event"] == "pipeline_blocked"
    assert "unknown job 'nope'" in events["message"]


# -- a webhook --------------------------------------------------------------------------------

class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server: Any = self.server
        server.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def webhook(status: int = 200) -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received, server.status = [], status
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_a_webhook_receives_the_event_as_json_with_a_slack_text(root: Root, make_pipeline: MakePipeline,
                                                                cli: Invoke) -> None:
    with webhook() as (url, posts):
        make_pipeline("p", {"a": 'command = ["false"]\n'},
                      spec=f'prompt = "x"\n\n[[notify]]\non = ["pipeline_failed"]\nwebhook = "{url}"\n')
        assert cli("run", "p").exit_code == 1
        ((content_type, body),) = posts
    assert content_type == "application/json"
    assert body["text"] == "Clowder: pipeline p failed: a"
    assert (body["event"], body["pipeline"], body["state"]) == ("pipeline_failed", "p", "failed")


# -- failures never touch the pipeline --------------------------------------------------------

def test_failing_and_hanging_notifications_are_logged_and_the_pipeline_is_unaffected(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    out, pid_file = tmp_path / "events", tmp_path / "hung.pid"
    hang = json.dumps(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; sleep 60"])
    with webhook(status=500) as (url, posts):
        notify_config(root, 'on = ["pipeline_succeeded"]\ncommand = ["sh", "-c", "echo boom >&2; exit 3"]\n')
        notify_config(root, f'on = ["pipeline_succeeded"]\ncommand = {hang}\ntimeout = "1s"\n')
        notify_config(root, f'on = ["pipeline_succeeded"]\nwebhook = "{url}"\n')
        notify_config(root, 'on = ["pipeline_succeeded"]\ncommand = ["/nonexistent/notify"]\n')
        notify_config(root, f'on = ["pipeline_succeeded"]\ncommand = {recorder(out)}\n')
        make_pipeline("p", ONE_JOB)
        started = time.monotonic()
        ok, lines = run(root, only=["p"])
        assert len(posts) == 1
    assert ok and pstate(root, "p") is PipelineState.SUCCEEDED
    assert time.monotonic() - started < 20  # the hanging command had 1s
    said = "p: notification pipeline_succeeded to clowder.toml"
    assert f"{said} notify[0] failed: exit code 3: boom" in [line for line in lines if "notify[0]" in line]
    assert f"{said} notify[1] failed: timed out after 1.0s; killed" in lines
    assert f"{said} notify[2] failed: HTTP 500 Internal Server Error" in lines
    assert f"{said} notify[3] failed: cannot run /nonexistent/notify: No such file or directory" in lines
    assert "p: notified pipeline_succeeded to clowder.toml notify[4]" in lines
    assert [e["event"] for e in received(out)] == ["pipeline_succeeded"]
    (record,) = records(root)
    assert [(s["state"], s["reason"]) for s in record["sends"]][:2] == [
        ("failed", "exit code 3: boom"), ("failed", "timed out after 1.0s; killed")]
    background = int(pid_file.read_text())  # what the hanging command started died with it
    wait_for(lambda: not _alive(background), timeout=10, what="the hung command's child to die")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- restarts -----------------------------------------------------------------------------------

def _clowder(root: Root, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "clowder", *args, "--root", str(root.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_notification_cut_short_by_kill_9_is_sent_once_after_the_restart(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    out, gate, pid_file = tmp_path / "events", tmp_path / "gate", tmp_path / "hung.pid"
    # The first time it hangs (the daemon is killed meanwhile); once the gate exists it records.
    script = f"if [ ! -f {gate} ]; then echo $$ > {pid_file}; exec sleep 60; fi; cat >> {out}; echo >> {out}"
    notify_config(root, f'on = ["pipeline_succeeded"]\ncommand = {json.dumps(["sh", "-c", script])}\n'
                        'timeout = "1h"\n')
    make_pipeline("p", ONE_JOB)
    first = _clowder(root, "watch")
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="the notify command to start")
    finally:
        first.kill()
        first.communicate()
    hung = int(pid_file.read_text())
    assert _alive(hung)  # in a session of its own: SIGKILL to the daemon does not reach it
    gate.touch()
    second = _clowder(root, "watch")
    try:
        wait_for(lambda: len(received(out)) >= 1, what="the notification sent after the restart")
        assert not _alive(hung)  # the new daemon ended what the killed one left
        time.sleep(0.5)  # time for a second send, if there were one
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
    assert "killed 1 notify process(es) an earlier daemon left running" in err
    assert [e["event"] for e in received(out)] == ["pipeline_succeeded"]


def test_a_restart_that_derives_an_event_again_does_not_send_it_twice(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    out, gate = tmp_path / "events", tmp_path / "gate"
    notify_config(root, f'on = ["job_failed", "pipeline_failed"]\ncommand = {recorder(out)}\n')
    make_pipeline("p", {"a": f'command = "while [ ! -f {gate} ]; do sleep 0.05; done; exit 1"\n'})
    paths = root.pipeline("p")
    with serving(root):
        wait_for(lambda: paths.job_status_file("a").exists() and jstatus(root, "p", "a").state is JobState.RUNNING
                 and pstate(root, "p") is PipelineState.RUNNING, what="a running")
        # The status files as a daemon killed right after the end was recorded could leave them:
        # the outbox has the events, the status writes did not reach the disk.
        before = {f: f.read_bytes() for f in (paths.status_file, paths.job_status_file("a"))}
        gate.touch()
        wait_for(lambda: [s["state"] for r in records(root) for s in r["sends"]] == ["sent", "sent"],
                 what="both events sent and recorded so")
    for f, data in before.items():
        f.write_bytes(data)
    ok, lines = run(root, only=["p"])
    assert not ok
    assert "p/a failed: exit code 1" in lines  # derived again from the attempt's exit record
    assert sorted(e["event"] for e in received(out)) == ["job_failed", "pipeline_failed"]


@contextmanager
def serving(root: Root) -> Iterator[list[str]]:
    """A daemon in a thread, as `clowder watch`; stopped (SIGTERM's way) at the end."""
    lines: list[str] = []
    driver = Driver(root, log=lines.append)
    thread = threading.Thread(target=driver.serve, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        driver.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


# -- validation ---------------------------------------------------------------------------------

def test_validate_names_the_file_and_key_of_a_broken_table_and_the_daemon_leaves_it_out(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, tmp_path: Path) -> None:
    out = tmp_path / "events"
    notify_config(root, 'on = ["pipeline_suceeded"]\ncommand = ["true"]\nwebhook = "ftp://host/x"\ncolour = 1\n')
    notify_config(root, f'on = ["pipeline_succeeded"]\ncommand = {recorder(out)}\n')
    make_pipeline("p", ONE_JOB, spec='prompt = "x"\n\n[[notify]]\non = []\ntimeout = "forever"\n')
    result = cli("validate")
    assert result.exit_code == 2
    config, spec = root.config_file, root.pipeline("p").spec_file
    assert result.output.splitlines()[:-1] == [
        f"{config}: notify[0].colour: unknown key 'colour'; known keys: command, on, timeout, webhook",
        f"{config}: notify[0].command: a [[notify]] table needs exactly one of 'command' and 'webhook'; it has both",
        f"{config}: notify[0].on[0]: unknown event 'pipeline_suceeded' (did you mean 'pipeline_succeeded'?); the "
        "events are pipeline_succeeded, pipeline_failed, pipeline_blocked, job_failed, waiting_for_approval, "
        "budget_spent, fixup_spawned",
        f"{config}: notify[0].webhook: must be an http:// or https:// URL, got 'ftp://host/x'",
        f"{spec}: notify[0].command: a [[notify]] table needs exactly one of 'command' and 'webhook'; it has neither",
        f"{spec}: notify[0].on: must not be empty",
        f"{spec}: notify[0].timeout: invalid duration 'forever': use a number of seconds or e.g. 500ms, 2s, 5m, 1h30m",
    ]
    # The daemon runs the pipeline, says which tables it left out, and sends through the sound one.
    ok, lines = run(root, only=["p"])
    assert ok
    assert f"notify table left out: {config}: notify[0].webhook: must be an http:// or https:// URL, got " \
           "'ftp://host/x'" in lines
    assert f"notify table left out: {spec}: notify[0].on: must not be empty" in lines
    assert [e["event"] for e in received(out)] == ["pipeline_succeeded"]


# -- the events, as a pure function of two statuses ---------------------------------------------

NOW = datetime(2026, 11, 30, tzinfo=UTC)
STARTED = PipelineStatus(PipelineState.RUNNING, started_at=NOW)


def test_a_pipeline_failing_again_after_a_retry_is_a_new_event() -> None:
    failed = PipelineStatus(PipelineState.FAILED, started_at=NOW, message="failed: a")
    first = pipeline_events("p", STARTED, failed, [JobStatus("a", JobState.FAILED, 1)], NOW)
    again = pipeline_events("p", STARTED, failed, [JobStatus("a", JobState.FAILED, 2)], NOW)
    assert [e.kind for e in first] == [NotifyEvent.PIPELINE_FAILED]
    assert first[0].id != again[0].id
    assert pipeline_events("p", failed, failed, [], NOW) == []  # no change, no event


def test_a_job_event_is_the_same_event_when_derived_again() -> None:
    old = JobStatus("a", JobState.RUNNING, 2)
    new = JobStatus("a", JobState.FAILED, 2, message="attempt 2 failed: exit code 1", spawned=("dev.r1",))
    first = job_events("p", STARTED, old, new, NOW)
    later = job_events("p", STARTED, old, new, datetime(2027, 1, 1, tzinfo=UTC))
    assert [e.kind for e in first] == [NotifyEvent.JOB_FAILED, NotifyEvent.FIXUP_SPAWNED]
    assert [e.id for e in first] == [e.id for e in later]
    assert first[0].id == "p/20261130T000000.000000Z/a@2.job_failed"
    assert job_events("p", STARTED, new, new, NOW) == []


def test_the_outbox_is_under_the_state_directory(root: Root, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    notify_config(root, f'on = ["pipeline_succeeded"]\ncommand = {recorder(tmp_path / "events")}\n')
    make_pipeline("p", ONE_JOB)
    assert run(root, only=["p"])[0]
    (path,) = (root.state_dir / "notify").rglob("*.json")
    assert path.relative_to(root.state_dir).parts[:2] == ("notify", "p")
    assert path.name == "_pipeline@1.pipeline_succeeded.json"
    shutil.rmtree(root.state_dir / "notify")  # gone: nothing is sent again, nothing breaks
    assert run(root, only=["p"])[0]
    assert len(received(tmp_path / "events")) == 1


def test_the_readme_example_is_valid_and_its_command_runs(root: Root, make_pipeline: MakePipeline,
                                                           cli: Invoke) -> None:
    readme = (REPO / "README.md").read_text().split("## Notifications", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```toml\n(.*?)```", readme, re.S)
    root.config_file.write_text(root.config_file.read_text() + "\n" + example.replace(
        "https://hooks.slack.com/services/T000/B000/XXXX", "http://127.0.0.1:9/"))  # nothing listens there
    make_pipeline("p", {"test": 'command = ["false"]\n'})
    result = cli("validate")
    assert result.exit_code == 0, result.output
    ok, lines = run(root, only=["p"])
    assert not ok
    (event,) = received(root.path / "notifications.jsonl")
    assert (event["event"], event["job"]) == ("job_failed", "test")
    assert any(line.startswith("p: notification pipeline_failed to clowder.toml notify[0] failed: cannot reach")
               for line in lines)


def test_clowder_toml_and_pipeline_toml_share_one_notify_schema() -> None:
    # The validator checks both files' tables against clowder.toml's; editors read each file's own.
    assert load_schema("clowder")["properties"]["notify"] == load_schema("pipeline")["properties"]["notify"]
    events = load_schema("clowder")["properties"]["notify"]["items"]["properties"]["on"]["items"]["enum"]
    assert events == [e.value for e in NotifyEvent]


def test_a_daemon_stopping_kills_a_hanging_command_and_the_next_one_sends_it(
        root: Root, make_pipeline: MakePipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifier, "DRAIN_SECONDS", 0.5)  # the hanging command has an hour; stopping waits this
    out, gate, pid_file = tmp_path / "events", tmp_path / "gate", tmp_path / "hung.pid"
    script = f"if [ ! -f {gate} ]; then echo $$ > {pid_file}; exec sleep 60; fi; cat >> {out}; echo >> {out}"
    notify_config(root, f'on = ["pipeline_succeeded"]\ncommand = {json.dumps(["sh", "-c", script])}\n'
                        'timeout = "1h"\n')
    make_pipeline("p", ONE_JOB)
    with serving(root) as lines:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="the notify command to start")
    assert not _alive(int(pid_file.read_text()))  # it did not outlive the daemon
    assert "p: notification pipeline_succeeded to clowder.toml notify[0] left to the next daemon" in lines
    assert [s["state"] for r in records(root) for s in r["sends"]] == ["pending"]
    gate.touch()
    assert run(root, only=["p"])[0]
    assert [e["event"] for e in received(out)] == ["pipeline_succeeded"]
    assert [s["state"] for r in records(root) for s in r["sends"]] == ["sent"]


def test_records_done_a_month_ago_are_deleted_and_pending_ones_kept(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "notify", tmp_path)
    target = NotifyTarget((NotifyEvent.JOB_FAILED,), ("true",))
    old = Event(NotifyEvent.JOB_FAILED, "p", "", NOW, "a", 1, "failed")
    done = Record(old, (Send(target, "clowder.toml", Delivery.SENT),))
    waiting = Record(replace(old, job="b"), (Send(target, "clowder.toml"),))
    box.save(done)
    box.save(waiting)
    assert box.pending(NOW + timedelta(days=1)) == ([waiting], [])
    assert box.has(old)
    assert box.pending(NOW + timedelta(days=31)) == ([waiting], [])
    assert not box.has(old) and box.has(waiting.event)


def test_a_record_read_back_is_the_same_event_with_its_decision(tmp_path: Path) -> None:
    """A rejection, and a wait for approval after one, survive a restart in the outbox: the
    event read back has the same id (it is found sent, not sent again) and says the same."""
    box = Outbox(tmp_path / "notify", tmp_path)
    target = NotifyTarget((NotifyEvent.JOB_FAILED,), ("true",))
    rejected = Approval(Verdict.REJECTED, "alice", NOW, "not yet", "20261130T000000000000-1-reject")
    event = Event(NotifyEvent.JOB_FAILED, "p", "", NOW, "dev", 0, "failed", "rejected by alice: not yet",
                  decided=rejected.request, rejection=rejected)
    box.save(Record(event, (Send(target, "clowder.toml"),)))
    ((back,), bad) = box.pending(NOW)
    assert (back.event, back.event.id, bad) == (event, event.id, [])
    assert back.event.payload("/r")["text"] == "Clowder: p/dev was rejected by alice: not yet"
