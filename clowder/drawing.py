"""Drawings of a pipeline's job graph for `clowder graph`: Graphviz dot and Mermaid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from clowder.graph import pipeline_deps, topo_order
from clowder.spec import Pipeline, When


def _edges(pipeline: Pipeline) -> Iterable[tuple[str, str, When]]:
    for name in topo_order(pipeline_deps(pipeline)):
        for need in pipeline.jobs[name].needs:
            yield need.job, name, need.when


def to_dot(pipeline: Pipeline, states: Mapping[str, str] | None = None) -> str:
    states = states or {}
    lines = [f'digraph "{pipeline.name}" {{', "  rankdir=LR;", "  node [shape=box];"]
    for name in topo_order(pipeline_deps(pipeline)):
        label = f"{name}\\n{states[name]}" if name in states else name
        lines.append(f'  "{name}" [label="{label}"];')
    for up, down, when in _edges(pipeline):
        attr = "" if when is When.SUCCESS else f' [label="{when.value}", style=dashed]'
        lines.append(f'  "{up}" -> "{down}"{attr};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_id(name: str) -> str:
    # Mermaid ids cannot hold '.', so map each name to a safe id and show the name as label.
    # Escape rather than replace ('_' too), so that `a.b` and `a_b` stay two nodes.
    return "j_" + "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in name)


def to_mermaid(pipeline: Pipeline, states: Mapping[str, str] | None = None) -> str:
    states = states or {}
    lines = ["flowchart LR"]
    for name in topo_order(pipeline_deps(pipeline)):
        label = f"{name}<br/>{states[name]}" if name in states else name
        lines.append(f'  {_mermaid_id(name)}["{label}"]')
    for up, down, when in _edges(pipeline):
        arrow = "-->" if when is When.SUCCESS else f"-.->|{when.value}|"
        lines.append(f"  {_mermaid_id(up)} {arrow} {_mermaid_id(down)}")
    return "\n".join(lines) + "\n"
