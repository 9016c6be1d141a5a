"""The Dask executor on a real loopback cluster: the pipelines, processes and files are real."""

from __future__ import annotations

import pytest

from clowder.state import JobState, PipelineState, read_job_status, read_pipeline_status
from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline

pytestmark = pytest.mark.dask


def test_a_pipeline_runs_end_to_end_on_the_cluster(dask_root: Root, make_pipeline: MakePipeline,
                                                    cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ["sh", "-c", "echo hello from $CLOWDER_JOB attempt $CLOWDER_ATTEMPT > out.txt; cat out.txt"]\n',
                        "b": 'command = "cat out.txt; echo $GREETING; pwd"\nneeds = ["a"]\nenv = { GREETING = "hi" }\n'})
    result = cli("run", "p")
    assert result.exit_code == 0, result.output
    assert read_pipeline_status(dask_root.pipeline("p").status_file).state is PipelineState.SUCCEEDED
    a = read_job_status(dask_root.pipeline("p").job_status_file("a"), "a")
    assert a.state is JobState.SUCCEEDED and a.attempt == 1 and a.attempts[0].exit_code == 0
    assert cli("logs", "p", "a").output == "hello from a attempt 1\n"
    assert cli("logs", "p", "b").output.splitlines() == ["hello from a attempt 1", "hi",
                                                         str(dask_root.pipeline("p").workspace("b"))]
    claim = dask_root.pipeline("p").log_file("a", 1).with_suffix(".claim").read_text().splitlines()
    assert claim[1].startswith("tcp://127.0.0.1:")  # run on a worker, which said so
