"""Shared fixtures: keep every test away from the user's home and git config, and build small
roots from TOML strings."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from clowder.cli import main
from clowder.template import init_root
from clowder.tree import Root

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_pipelines"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("CLOWDER_")]:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Root:
    """An empty root made by `clowder init`."""
    return init_root(tmp_path / "root")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


MakePipeline = Callable[..., Path]


@pytest.fixture
def make_pipeline(root: Root) -> MakePipeline:
    """Write pipelines/<name>/ from a pipeline.toml string and {job: toml string}."""

    def make(name: str = "p", jobs: dict[str, str] | None = None, spec: str = 'prompt = "do it"\n') -> Path:
        d = root.pipelines_dir / name
        write(d / "pipeline.toml", spec)
        for job, text in (jobs or {}).items():
            write(d / "jobs" / f"{job}.toml", text)
        return d

    return make


Invoke = Callable[..., Result]


@pytest.fixture
def cli(root: Root) -> Invoke:
    """Run the clowder CLI against `root` in-process, as a user would from the root."""

    def invoke(*args: str, cwd: Path | None = None) -> Result:
        runner = CliRunner()
        old = os.getcwd()
        os.chdir(cwd or root.path)
        try:
            return runner.invoke(main, list(args), catch_exceptions=False, prog_name="clowder")
        finally:
            os.chdir(old)

    return invoke
