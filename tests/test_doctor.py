"""`clowder doctor`: the agent CLIs of the harnesses a root uses, checked on this machine —
found, version (tested or not), the flags Clowder passes, the API key — as a user runs it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from clowder.harness.tested import TESTED
from clowder.tree import Root
from tests.agents.conftest import cli_path, pinned
from tests.conftest import Invoke, MakePipeline

NODE = shutil.which("node")  # before a test's clean PATH
KEY_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "OPENAI_API_KEY", "CODEX_API_KEY",
            "GEMINI_API_KEY", "DEEPSEEK_API_KEY", "OPENROUTER_API_KEY")


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No API key, no CLI login, and PATH an empty directory (the test adds what it wants)."""
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CODEX_HOME", str(home / ".codex"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def uses(root: Root, make_pipeline: MakePipeline, *harnesses: str) -> None:
    """A root whose default harness is the first and whose roles and jobs name the others."""
    root.config_file.write_text(f'default_harness = "{harnesses[0]}"\n' + root.config_file.read_text())
    roles = "".join(f'[roles.r{i}]\nharness = "{h}"\n' for i, h in enumerate(harnesses[1:2]))
    make_pipeline("p", {f"j{i}": f'agent = "dev"\nharness = "{h}"\n' for i, h in enumerate(harnesses[2:])},
                  spec='prompt = "x"\n' + roles)


def rows(output: str) -> dict[str, dict[str, str]]:
    """The plain table, cut at the header's columns: {harness: {column: text}}."""
    lines = output.splitlines()
    headers = lines[0].split()
    assert headers == ["HARNESS", "PROGRAM", "FOUND", "VERSION", "TESTED", "FLAGS", "KEY"]
    starts = [lines[0].index(h) for h in headers]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    table = [{h: line[a:b].strip() for h, (a, b) in zip(headers, bounds, strict=True)} for line in lines[1:]]
    return {row["HARNESS"]: row for row in table}


def test_the_tested_versions_are_the_ones_ci_pins() -> None:
    assert {name: (t.package, t.version) for name, t in TESTED.items()} == pinned()


def test_without_the_clis_each_is_not_found_and_doctor_exits_1(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, clean_env: Path
) -> None:
    uses(root, make_pipeline, "codex", "claude", "aider")
    result = cli("doctor")
    assert result.exit_code == 1
    table = rows(result.stdout)
    assert list(table) == ["codex", "claude", "aider"]  # default_harness, the role's, the job's
    for name, row in table.items():
        assert (row["PROGRAM"], row["FOUND"], row["VERSION"]) == (name, "not found", "-")
    assert table["codex"]["KEY"] == "not set: OPENAI_API_KEY or CODEX_API_KEY"
    assert "would fail: codex, claude, aider" in result.stderr


def test_a_root_of_scripted_agents_needs_nothing(root: Root, cli: Invoke, clean_env: Path) -> None:
    result = cli("doctor")
    assert result.exit_code == 0
    assert rows(result.stdout)["scripted"]["FOUND"] == "built in"


def test_the_real_clis_are_found_in_the_tested_versions_and_accept_the_flags(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exes = {name: cli_path(name) for name in ("claude", "codex", "aider")}
    missing = [name for name, exe in exes.items() if exe is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run .ci/install-agents)")
    node = NODE
    if node is None:
        pytest.skip("node is not on PATH")
    dirs = [str(exe.parent) for exe in exes.values() if exe is not None]
    monkeypatch.setenv("PATH", os.pathsep.join([*dict.fromkeys(dirs), str(Path(node).parent)]))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    uses(root, make_pipeline, "codex", "claude", "aider")
    result = cli("doctor")
    table = rows(result.stdout)
    for name in ("claude", "codex", "aider"):
        row = table[name]
        assert (row["FOUND"], row["VERSION"], row["TESTED"], row["FLAGS"]) == (
            str(exes[name]), TESTED[name].version, "yes", "ok"), result.stdout
    assert result.exit_code == 0, result.output


def test_a_cli_whose_help_lacks_a_flag_clowder_passes_is_reported(
    root: Root, make_pipeline: MakePipeline, cli: Invoke, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old codex: --full-auto and no --sandbox in `codex exec --help`."""
    fake = clean_env / "codex"
    fake.write_text(f"""#!{sys.executable}
import sys
if sys.argv[1:] == ["--version"]:
    print("codex-cli 0.160.0")
elif sys.argv[1:] == ["exec", "--help"]:
    print("Usage: codex exec [OPTIONS] [PROMPT]\\n  --json\\n  --full-auto\\n  -m, --model <MODEL>\\n"
          "  --output-schema <FILE>")
else:
    sys.exit(2)
""")
    fake.chmod(0o755)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    uses(root, make_pipeline, "codex")
    result = cli("doctor")
    assert result.exit_code == 1
    row = rows(result.stdout)["codex"]
    assert row == {"HARNESS": "codex", "PROGRAM": "codex", "FOUND": str(fake), "VERSION": "0.160.0",
                   "TESTED": f"no (tested: {TESTED['codex'].version})", "FLAGS": "unknown: --sandbox",
                   "KEY": "OPENAI_API_KEY set"}
    assert "would fail: codex" in result.stderr
