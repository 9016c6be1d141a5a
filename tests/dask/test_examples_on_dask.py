"""The example pipelines run unchanged on the loopback cluster: the README's demo (fan-out, the
regression loop, agent-dev with its scripted agent and approval gate) and conditions, the
example root pointed at the cluster as the README's recipe does, by one line of clowder.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clowder.state import PipelineState, read_job_status, read_pipeline_status
from clowder.tree import Root
from tests.conftest import EXAMPLES
from tests.dask.conftest import Cluster, attempts_of
from tests.test_readme import check_demo

pytestmark = pytest.mark.dask


def clowder(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clowder", *args], cwd=root, capture_output=True, text=True,
                          timeout=300, check=check)


def _states(root: Root, pipeline: str) -> dict[str, str]:
    paths = root.pipeline(pipeline)
    return {f.stem: read_job_status(f, f.stem).state.value for f in sorted(paths.status_dir.glob("*.toml"))}


def test_the_demo_runs_every_example_on_the_cluster(dask_cluster: Cluster, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLES, examples)
    config = examples / "clowder.toml"
    text = config.read_text()
    assert '\nkind = "local"\n' in text
    config.write_text(text.replace('\nkind = "local"\n',
                                   f'\nkind = "dask"\nscheduler_file = "{dask_cluster.scheduler_file}"\n'))
    demo = tmp_path / "demo"
    check_demo(examples, demo)
    # conditions, which the demo leaves out: once as it is, once with its integration test failing.
    clowder(demo, "new", "conditions", "--name", "ok", "--prompt", "Ship it")
    clowder(demo, "new", "conditions", "--name", "bad", "--prompt", "Ship it", "--set", "flaky_exit=1")
    assert clowder(demo, "run", "ok", "bad", check=False).returncode == 1  # bad failed
    assert _states(Root(demo), "ok") == {
        "compile": "succeeded", "docs": "succeeded", "unit": "succeeded", "integration": "succeeded",
        "lint": "failed", "release": "succeeded", "rollback": "skipped", "cleanup": "succeeded"}
    assert _states(Root(demo), "bad") == {
        "compile": "succeeded", "docs": "succeeded", "unit": "succeeded", "integration": "failed",
        "lint": "failed", "release": "skipped", "rollback": "succeeded", "cleanup": "succeeded"}
    assert read_job_status(Root(demo).pipeline("bad").job_status_file("integration"), "integration").attempt == 2
    assert read_pipeline_status(Root(demo).pipeline("ok").status_file).state is PipelineState.SUCCEEDED
    claims = list((demo / "pipelines").glob("*/logs/*/*.claim"))  # each attempt ran on a worker
    runs = list((demo / "pipelines").glob("*/logs/*/*.run"))
    assert len(claims) == len(runs) > 10
    assert all(c.read_text().splitlines()[1].startswith("tcp://127.0.0.1:") for c in claims)
    assert not attempts_of(demo)
