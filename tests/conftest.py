"""Shared fixtures: keep every test away from the user's home and git config, and build small
roots from TOML strings."""

from __future__ import annotations

import os
import signal
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from clowder.cli import main
from clowder.template import init_root
from clowder.tree import Root

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_pipelines"

# Every process the suite starts inherits this variable (its value says which test started it), so
# a test's teardown can end what it left running and the end of the run can prove nothing is left.
# Not a CLOWDER_ name: `isolated_env` clears those.
SUITE_VAR = "PYTEST_CLOWDER_SUITE"
SUITE_ID = uuid.uuid4().hex


def _marked(prefix: str) -> list[tuple[int, str]]:
    """Live processes (pid, command line) whose environment holds SUITE_VAR=<prefix>..."""
    needle = f"\0{SUITE_VAR}={prefix}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = b"\0" + f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone, or a zombie (its environment reads empty: it runs no more)
            continue
        if needle in env:
            found.append((int(entry.name), cmdline))
    return found


def _kill_marked(prefix: str, timeout: float = 10.0) -> list[tuple[int, str]]:
    """SIGKILL every process marked with `prefix` until none is left; return those found first."""
    first = _marked(prefix)
    deadline = time.monotonic() + timeout
    left = first
    while left and time.monotonic() < deadline:
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
        left = _marked(prefix)
    return first


def pytest_configure(config: pytest.Config) -> None:
    os.environ[SUITE_VAR] = f"{SUITE_ID}:session"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The run fails if any process started by the suite outlived the test that started it."""
    left = _kill_marked(f"{SUITE_ID}:")
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["processes started by the test suite were still running at its end (now killed):"]
        lines += [f"  pid {pid}: {cmdline[:200]}" for pid, cmdline in left]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def processes_die_with_their_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a test starts (daemons, attempts, their children) is killed when it ends: a
    daemon stopped by the test leaves its running attempts behind, by design."""
    mark = f"{SUITE_ID}:{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(SUITE_VAR, mark)
    yield
    _kill_marked(mark)


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
    # The pytest a job runs (the regression-loop example's test) is a user's plain pytest, not one
    # that loads the plugins installed for this suite (schemathesis, hypothesis, ...): those cost
    # ~2.5 s per run here, and the README's demo installs pytest alone.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture
def root(tmp_path: Path) -> Root:
    """An empty root made by `clowder init`."""
    return init_root(tmp_path / "root")


def no_settle(root: Root) -> None:
    """settle = 0 in clowder.toml: a spec found invalid blocks its pipeline at once, instead of after
    the 2 s a file still being written is given (tests/test_hand_edits.py tests that window)."""
    config = root.config_file
    assert 'settle = "2s"' in config.read_text()
    config.write_text(config.read_text().replace('settle = "2s"', "settle = 0"))


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


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `cond` until it holds; generous by default, since the suite runs beside other loads."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
