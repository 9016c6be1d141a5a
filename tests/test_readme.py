"""The README's commands work: docs that cannot rot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from clowder.cli import main
from clowder.tree import Root
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
    check_demo(REPO / "example_pipelines", tmp_path / "demo")


def check_demo(examples: Path, where: Path) -> None:
    """Run EXAMPLES/demo.sh in `where` (the example root it copies is EXAMPLES'), and check what it shows."""
    assert shutil.which("clowder"), "the clowder command must be installed (pip install -e .)"
    result = subprocess.run(["bash", str(examples / "demo.sh"), str(where)],
                            capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "numbers: succeeded" in result.stderr and "calc: succeeded" in result.stderr
    assert "-    return a - b\n+    return a + b" in out
    assert "Clowder-State: failed" in out and "Clowder-Job: dev.r1" in out
    assert "agents: succeeded" in result.stderr and "spent: $0.0298" in out
    assert "waiting for approval: clowder approve agents dev" in out  # the gate, shown before it is approved
    assert ("\nwaiting_for_approval agents/dev: waiting for approval: clowder approve agents dev (or clowder reject)\n"
            in out)  # and told to the [[notify]] table, as the quickstart shows
    assert "agents/dev approved by " in out and "Clowder-Approval-Comment: the plan looks right" in out
    assert "Reason: test_add fails: add(2, 2) does not return 4" in out
    assert "\nfixup_spawned calc/test: waiting for fix-up dev.r1\npipeline_succeeded calc\n" in out  # [[notify]]
    assert "exported calc/test to branch clowder/calc of" in out and " calc/dev.r1: attempt 1 succeeded\n" in out


def test_every_command_in_the_readme_table_exists() -> None:
    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `clowder (\w+)", table, re.M))
    assert named, "the commands table is empty"
    assert named <= set(main.commands), named - set(main.commands)


# -- every command and every endpoint is documented ------------------------------------------------

def _table_rows(section: str, start: str) -> dict[str, str]:
    """The rows of the README section's tables whose first cell starts with `start`, by what that
    cell names before its first bracket, query or space (`clowder run`, `GET /api/pipelines`)."""
    text = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {m[1]: m[0] for m in re.finditer(r"^\| `(" + re.escape(start) + r"[^`\[?|]*?)[`\[? ].*$", text, re.M)}


def _commands(group: click.Group, prefix: str) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")


def _undocumented_options(command: click.Command, row: str) -> list[str]:
    """Options of `command` its README row does not name (--root and --help are the same for all)."""
    return ["/".join(p.opts) for p in command.params if isinstance(p, click.Option)
            and p.name not in ("root_dir", "help") and not any(opt in row for opt in p.opts + p.secondary_opts)]


def test_every_command_and_its_options_are_in_the_readme() -> None:
    rows = _table_rows("Commands", "clowder ")
    missing = [name for name, _ in _commands(main, "clowder") if name not in rows]
    assert not missing, f"commands without a row in the README's Commands table: {missing}"
    options = {name: gaps for name, command in _commands(main, "clowder")
               if (gaps := _undocumented_options(command, rows[name]))}
    assert not options, f"options missing from their command's README row: {options}"
    assert "`--root DIR`" in README
    for param in main.params:  # the group's own (--version)
        assert any(f"`clowder {opt}`" in README for opt in param.opts), f"clowder {param.opts} is not in the README"


def test_the_documentation_check_names_what_is_missing() -> None:
    @click.command()
    @click.option("--fast", "-q")
    def zap(fast: str) -> None: ...

    assert _undocumented_options(zap, "| `clowder zap [--fast X]` |") == []
    assert _undocumented_options(zap, "| `clowder zap [-q X]` |") == []
    assert _undocumented_options(zap, "| `clowder zap` |") == ["--fast/-q"]


def _endpoints() -> Iterator[tuple[str, str, list[str]]]:
    """(method, path, query parameters) of every route of `clowder serve`'s app."""
    pytest.importorskip("fastapi")
    from fastapi.routing import APIRoute
    from starlette.routing import Mount, Route

    from clowder import server

    app = server.create_app(Root(REPO), token="t")
    for route in app.routes:
        if isinstance(route, APIRoute):
            params = [p.alias for p in route.dependant.query_params]
            yield from ((m, route.path, params) for m in sorted(route.methods) if m != "HEAD")
        elif isinstance(route, Route):
            yield from ((m, route.path, []) for m in sorted(route.methods or ()) if m != "HEAD")
        elif isinstance(route, Mount):
            yield "GET", f"{route.path}/{{file}}", []


def test_every_api_endpoint_and_its_parameters_are_in_the_readme() -> None:
    section = "Monitoring with clowder serve"
    rows = {**_table_rows(section, "GET /"), **_table_rows(section, "POST /")}
    endpoints = list(_endpoints())
    assert ("GET", "/api/pipelines", ["state"]) in endpoints
    missing = [f"{m} {p}" for m, p, _ in endpoints if f"{m} {p}" not in rows]
    assert not missing, f"endpoints without a row in the README's endpoint table: {missing}"
    params = {f"{m} {p}": gaps for m, p, names in endpoints if (gaps := [n for n in names
                                                                          if f"{n}=" not in rows[f"{m} {p}"]])}
    assert not params, f"query parameters missing from their endpoint's README row: {params}"


def architecture_section() -> str:
    start = README.index("\n## Architecture\n")
    return README[start:README.index("\n## ", start + 1)]


def modules_missing_from(section: str, package: Path) -> list[str]:
    """Each module of the package (as `sub/module`, packages' __init__ aside) not named in the section."""
    named = set(re.findall(r"`([\w/]+)`", section))
    modules = (p.relative_to(package).with_suffix("").as_posix() for p in package.rglob("*.py"))
    return sorted(m for m in modules if not m.endswith("__init__") and m not in named)


def test_the_architecture_section_names_every_module() -> None:
    assert modules_missing_from(architecture_section(), REPO / "clowder") == []


def test_the_architecture_check_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "sub/c.py"):
        (tmp_path / name).write_text("")
    assert modules_missing_from("- `a` and `sub/b`", tmp_path) == ["sub/c"]
