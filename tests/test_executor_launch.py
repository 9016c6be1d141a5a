"""What the driver hands an executor, and how clowder.toml chooses it (issue 19, point 1 and 2):
an attempt carries the job's environment and resources, never the daemon's environment."""

from __future__ import annotations

import pytest

from clowder.driver import Driver
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline
from tests.memory_executor import MemoryExecutor


def test_an_attempt_carries_only_the_jobs_environment_and_its_resources(
        root: Root, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONLY_IN_THE_DAEMON", "secret")
    root.config_file.write_text(root.config_file.read_text().replace("[resources]", "[resources]\nllm = 2", 1))
    make_pipeline("p", {"a": 'command = ["x"]\nenv = { MINE = "1" }\nresources = { llm = 1 }\n'})
    ex = MemoryExecutor()
    d = Driver(root, log=[].append, make_executor=ex.attach)
    d.discover()
    d.tick()
    run = ex.wait_started("p", "a", 1).run
    d.launcher.shutdown()
    assert "ONLY_IN_THE_DAEMON" not in run.env  # the machine it runs on adds its own
    assert run.env["MINE"] == "1" and run.env["CLOWDER_JOB"] == "a" and run.env["CLOWDER_ATTEMPT"] == "1"
    assert dict(run.resources) == {"llm": 1}


def test_a_local_attempt_still_sees_the_machines_environment(
        root: Root, make_pipeline: MakePipeline, cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_THE_MACHINE", "here")
    make_pipeline("p", {"a": 'command = "echo $FROM_THE_MACHINE $MINE"\nenv = { MINE = "mine" }\n'})
    assert cli("run", "p").exit_code == 0
    assert cli("logs", "p", "a").output == "here mine\n"


def _executor(root: Root, table: str) -> None:
    text = root.config_file.read_text().replace('[executor]\nkind = "local"\n', "")
    root.config_file.write_text(text + f"[executor]\n{table}")


@pytest.mark.parametrize(("table", "message"), [
    ('kind = "dask"\n', 'executor: missing: give one of scheduler = "tcp://HOST:PORT" or scheduler_file = "FILE"'),
    ('kind = "dask"\nscheduler = "tcp://127.0.0.1:1"\nscheduler_file = "s.json"\n',
     'executor: give only one of scheduler = "tcp://HOST:PORT" or scheduler_file = "FILE"'),
    ('kind = "local"\nscheduler = "tcp://127.0.0.1:1"\n', 'executor.scheduler: only for kind = "dask"'),
])
def test_a_dask_executor_names_its_scheduler_once(root: Root, cli: Invoke, table: str, message: str) -> None:
    _executor(root, table)
    result = cli("validate")
    assert result.exit_code == 2
    assert f"{root.config_file}: {message}" in result.output


def test_an_unknown_executor_kind_is_bad_input(root: Root, cli: Invoke) -> None:
    _executor(root, 'kind = "slurm"\n')
    result = cli("validate")
    assert result.exit_code == 2
    assert str(root.config_file) in result.output and "executor.kind" in result.output


def test_an_unreachable_scheduler_file_is_said_before_anything_runs(
        root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    pytest.importorskip("distributed")
    _executor(root, 'kind = "dask"\nscheduler_file = "no-such-scheduler.json"\n')
    make_pipeline("p", {"a": 'command = ["true"]\n'})
    result = cli("run", "p")
    assert result.exit_code == 2
    assert f"error: {root.config_file}: executor: cannot reach the Dask scheduler at " in result.output
    assert not root.pipeline("p").job_status_file("a").exists()
