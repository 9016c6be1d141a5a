"""Clowder's layers, checked on its source: no import cycles, git only in clowder/workspace/, each
constant defined once. Read with `ast`, so what the checks see is what Python would import."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "clowder"


@dataclass(frozen=True)
class Module:
    name: str  # dotted: clowder.workspace.repo
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


@functools.cache  # the sources do not change during a run
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import under `node`, at module level or in a function, except those only a type
    checker runs (`if TYPE_CHECKING:`)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _imports(other)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _imports(child)


def _imported(module: Module, node: ast.Import | ast.ImportFrom, known: dict[str, Module]) -> set[str]:
    """The clowder modules an import statement loads: a package's `__init__` counts as a module, and
    importing `clowder.workspace.objects` loads `clowder.workspace` too."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.name.split(".")
            package = package if module.is_package else package[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    return {p for t in targets if t in known for p in _with_packages(t, module.name) if p in known}


def _with_packages(target: str, importer: str) -> list[str]:
    """`target` and the packages Python imports before it (their `__init__` runs first), less
    those the importer is inside of (already being imported when it runs)."""
    parts = target.split(".")
    chain = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [p for p in chain if not importer.startswith(p + ".")]


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set().union(*(_imported(m, node, known) for node in _imports(m.tree))) - {name}
            for name, m in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm),
    each written as a path that comes back to where it started."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no cycle in {component}")


def test_the_cycle_finder_finds_a_cycle_and_names_it() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_function_level_imports_and_skips_type_checking_ones() -> None:
    sources = {
        "clowder.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from clowder import b\n"
                     "def f():\n    from clowder.pkg.c import x\n",
        "clowder.b": "import clowder.a\nfrom . import pkg\n",
        "clowder.pkg": "",
        "clowder.pkg.c": "from .. import b\nx = 1\n",
    }
    known = {name: Module(name, Path(name.replace(".", "/") + (".py" if name != "clowder.pkg" else "/__init__.py")),
                          ast.parse(code)) for name, code in sources.items()}
    graph = {name: set().union(*(_imported(m, node, known) for node in _imports(m.tree))) - {name}
             for name, m in known.items()}
    # a function-level import is an edge, and it loads the package's __init__ first; a TYPE_CHECKING one is not
    assert graph["clowder.a"] == {"clowder.pkg", "clowder.pkg.c"}
    assert graph["clowder.b"] == {"clowder.a", "clowder.pkg"}
    assert graph["clowder.pkg.c"] == {"clowder.b"}
    assert cycles(graph) == [["clowder.a", "clowder.pkg.c", "clowder.b", "clowder.a"]]


def test_clowder_has_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def definitions(name: str) -> list[str]:
    """The modules that define `name` at their top level (a def, a class or an assignment)."""
    found = []
    for module in modules().values():
        for node in module.tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
                found.append(module.name)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(module.name)
    return found


def test_the_run_metadata_names_are_defined_once() -> None:
    for name in ("metadata_dir", "metadata_path", "write_metadata", "kind_of", "OUTPUT_FILE", "ERROR_FILE",
                 "MODEL_OUTPUT", "ERROR_CONTEXT"):
        assert definitions(name) == ["clowder.metadata"], f"{name} is defined in {definitions(name)}"


def _git_argv(node: ast.AST) -> bool:
    """Whether `node` starts a git command line: `["git", ...]`, `("git", ...)`, or "git" given
    to a call that runs or finds a program (subprocess.*, os.exec*, shutil.which)."""
    def is_git(value: ast.AST) -> bool:
        return isinstance(value, ast.Constant) and isinstance(value.value, str) and (
            value.value == "git" or value.value.endswith("/git"))

    if isinstance(node, ast.List | ast.Tuple):
        return bool(node.elts) and is_git(node.elts[0])
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        runs = name in {"run", "Popen", "call", "check_call", "check_output", "which"} or name.startswith(("exec",
                                                                                                            "spawn"))
        return runs and is_git(node.args[0])
    return False


GIT_RUNNER = "clowder.workspace.repo"  # `git` and `read_git`: the one environment policy


def git_command_lines() -> list[str]:
    """Where a module other than GIT_RUNNER starts git itself (module:line)."""
    return [f"{m.name}:{node.lineno}" for m in modules().values() if m.name != GIT_RUNNER
            for node in ast.walk(m.tree) if _git_argv(node)]


def test_the_git_finder_sees_an_argv() -> None:
    def finds(code: str) -> bool:
        return any(_git_argv(node) for node in ast.walk(ast.parse(code)))

    assert finds('subprocess.run(["git", "-c", "x", *args], cwd=ws)')
    assert finds('shutil.which("git")') and finds('os.execvp("/usr/bin/git", argv)')
    assert not finds('data.get("git", {})')
    assert any(_git_argv(node) for node in ast.walk(modules()[GIT_RUNNER].tree))


def test_git_runs_only_in_the_workspace_package_through_one_policy() -> None:
    """One place in clowder/workspace/ runs git, with one environment policy (which GIT_*
    variables are cleared, the config that is turned off, the identity); everything else calls it."""
    found = git_command_lines()
    assert not found, f"git started at {found}: call {GIT_RUNNER}.git (or read_git for bytes)"
