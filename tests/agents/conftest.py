"""The conformance suite's fixtures: the real agent CLIs pinned in .ci/agent-versions, installed
by .ci/install-agents under .cache/agents/. A CLI that is not installed skips its tests with a reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "agents"
VERSIONS = REPO / ".ci" / "agent-versions"


def pinned() -> dict[str, tuple[str, str]]:
    """NAME -> (package, version), as .ci/agent-versions pins them."""
    out = {}
    for line in VERSIONS.read_text().splitlines():
        words = line.split()
        if len(words) == 4 and not words[0].startswith("#"):
            out[words[0]] = (words[2], words[3])
    return out


def cli_path(name: str) -> Path | None:
    """The installed executable of a pinned CLI, or None when it is not installed."""
    package, version = pinned()[name]
    stamp = CACHE / f"{name}.installed"
    if not stamp.is_file() or stamp.read_text().strip() != f"{package} {version}":
        return None
    exe = CACHE / name / "bin" / name if name == "aider" else CACHE / "npm" / "node_modules" / ".bin" / name
    return exe if exe.exists() else None


def require_cli(name: str) -> Path:
    exe = cli_path(name)
    if exe is None:
        package, version = pinned()[name]
        pytest.skip(f"{package} {version} is not installed: run .ci/install-agents")
    if name != "aider" and shutil.which("node") is None:
        pytest.skip("node is not on PATH")
    return exe


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.agents)
