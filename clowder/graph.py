"""The dependency graph of a pipeline's jobs: cycles, ancestry, order. Pure functions of a
mapping from each job to what it needs, so that clowder.spec can order a pipeline's jobs without
an import cycle (the drawings, which need the spec's types, are clowder.drawing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clowder.spec import Pipeline

Deps = Mapping[str, Sequence[str]]


def find_cycle(deps: Deps) -> list[str] | None:
    """One dependency cycle as [a, b, ..., a], or None. Unknown names are ignored."""
    # Depth-first with an explicit stack: a chain of a few thousand jobs would overflow
    # Python's recursion limit.
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    for start in sorted(deps):
        if color[start] != white:
            continue
        color[start] = grey
        path, todo = [start], [iter(deps[start])]
        while path:
            for dep in todo[-1]:
                if dep not in color:
                    continue
                if color[dep] == grey:
                    # Read it in the direction work flows: upstream first.
                    return list(reversed([*path[path.index(dep):], dep]))
                if color[dep] == white:
                    color[dep] = grey
                    path.append(dep)
                    todo.append(iter(deps[dep]))
                    break
            else:
                color[path.pop()] = black
                todo.pop()
    return None


def ancestors(deps: Deps, job: str) -> set[str]:
    seen: set[str] = set()
    todo = list(deps.get(job, ()))
    while todo:
        node = todo.pop()
        if node in seen or node not in deps:
            continue
        seen.add(node)
        todo.extend(deps[node])
    return seen


def topo_order(deps: Deps) -> list[str]:
    """Jobs ordered so that every job comes after what it needs (ties by name). Assumes no cycle."""
    order: list[str] = []
    done: set[str] = set()
    for start in sorted(deps):
        if start in done:
            continue
        done.add(start)
        stack = [(start, iter(sorted(deps[start])))]  # explicit stack: see find_cycle
        while stack:
            node, todo = stack[-1]
            for dep in todo:
                if dep in deps and dep not in done:
                    done.add(dep)
                    stack.append((dep, iter(sorted(deps[dep]))))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


def pipeline_deps(pipeline: Pipeline) -> dict[str, list[str]]:
    return {name: [n.job for n in job.needs] for name, job in pipeline.jobs.items()}
