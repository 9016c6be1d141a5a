"""The README's commands work: docs that cannot rot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from clowder.cli import main
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_the_quickstart_has_the_demo_then_the_tests() -> None:
    demo, tests = quickstart_commands()[:2]
    assert demo == "python3 -m pip install . pytest && bash example_pipelines/demo.sh"
    assert tests == "python3 -m pip install -e '.[test]' && python3 -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text()
    assert "python3 -m pytest -q" in ci


def test_the_demo_runs_both_examples_to_the_end(tmp_path: Path) -> None:
    assert shutil.which("clowder"), "the clowder command must be installed (pip install -e .)"
    result = subprocess.run(["bash", str(REPO / "example_pipelines" / "demo.sh"), str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "numbers: succeeded" in result.stderr and "calc: succeeded" in result.stderr
    assert "-    return a - b\n+    return a + b" in out
    assert "Clowder-State: failed" in out and "Clowder-Job: dev.r1" in out
    assert "agents: succeeded" in result.stderr and "spent: $0.0298" in out
    assert "Reason: test_add fails: add(2, 2) does not return 4" in out
    assert "\nfixup_spawned calc/test: waiting for fix-up dev.r1\npipeline_succeeded calc\n" in out  # [[notify]]
    assert "exported calc/test to branch clowder/calc of" in out and " calc/dev.r1: attempt 1 succeeded\n" in out


def test_every_command_in_the_readme_table_exists() -> None:
    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `clowder (\w+)", table, re.M))
    assert named, "the commands table is empty"
    assert named <= set(main.commands), named - set(main.commands)
