"""The checks of a job's table, wherever it is written (its own file, or a template's
`jobs.<name>`), and the helpers every check uses: where a key lives, the strings in a value,
did-you-mean. clowder.validate runs them with the file-level checks."""


from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clowder import graph, schema
from clowder.errors import Problem
from clowder.spec import (
    NAME_RULE,
    is_name,
    parse_duration,
)
from clowder.state import FailureKind

VARIABLE_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keys whose text is the user's verbatim words, never a template.
_VERBATIM_KEYS = frozenset({"prompt", "regression_context"})


@dataclass(frozen=True)
class Where:
    """Where a job's keys live: its own file, or a `jobs.<name>` table of a template."""

    path: Path
    prefix: tuple[str, ...] = ()

    def key(self, *parts: str | int) -> str:
        return schema.key_path([*self.prefix, *parts])


def strings(value: Any, parts: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string inside a TOML value, with its key path; verbatim keys are skipped."""
    if isinstance(value, str):
        yield parts, value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in _VERBATIM_KEYS:
                yield from strings(v, (*parts, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, (*parts, i))


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _need_names(data: Mapping[str, Any]) -> list[tuple[int, str]]:
    out = []
    for i, item in enumerate(data.get("needs", []) if isinstance(data.get("needs"), list) else []):
        if isinstance(item, str):
            out.append((i, item))
        elif isinstance(item, dict) and isinstance(item.get("job"), str):
            out.append((i, item["job"]))
    return out


def _raw_deps(jobs: Mapping[str, Mapping[str, Any]], stages: list[str]) -> dict[str, list[str]]:
    """Dependencies from raw job tables, stage edges included, for cycle and ancestry checks."""
    by_stage: dict[str, list[str]] = {}
    for name, data in jobs.items():
        if isinstance(data.get("stage"), str):
            by_stage.setdefault(data["stage"], []).append(name)
    deps: dict[str, list[str]] = {}
    for name, data in jobs.items():
        # A job needing itself is reported on its own; it is not also a cycle.
        needs = [n for _, n in _need_names(data) if n != name]
        stage = data.get("stage")
        if not needs and "needs" not in data and stage in stages:
            earlier = [s for s in stages[: stages.index(stage)] if by_stage.get(s)]
            needs = sorted(by_stage[earlier[-1]]) if earlier else []
        deps[name] = needs
    return deps


def check_jobs(
    jobs: Mapping[str, Any],
    stages: list[str],
    where: Callable[[str], Where],
    resources: Mapping[str, int] | None,
    variables: set[str] | None,
    unreadable: frozenset[str] = frozenset(),
) -> list[Problem]:
    """Problems of a set of jobs, each alone and as a graph. `variables` is the set of
    declared template variables (a template), or None where none may be left (a pipeline).
    `unreadable` jobs exist but did not parse: naming them is no error of its own."""
    problems: list[Problem] = []
    names = sorted(jobs)
    known = sorted({*jobs, *unreadable})
    tables = {n: d for n, d in jobs.items() if isinstance(d, dict)}
    for name in names:
        w = where(name)
        data = jobs[name]
        if not is_name(name):
            problems.append(Problem(w.path, w.key() or "<name>", f"invalid job name {name!r}: {NAME_RULE}"))
        problems += schema.check("job", data, w.path, w.prefix)
        if not isinstance(data, dict):
            continue
        problems += _check_job(name, data, w, _Around(known, stages, resources, variables))
    deps = _raw_deps(tables, stages)
    cycle = graph.find_cycle(deps)
    if cycle:
        w = where(cycle[0])
        problems.append(Problem(w.path, w.key("needs"), "dependency cycle: " + " -> ".join(cycle)))
    for name, data in tables.items():
        problems += _check_from(name, data, graph.ancestors(deps, name), where(name), unreadable)
    return problems


def _check_from(name: str, data: Mapping[str, Any], upstream: set[str], w: Where,
                unreadable: frozenset[str]) -> list[Problem]:
    problems = []
    froms = data.get("from", [])
    for i, src in enumerate(froms if isinstance(froms, list) else []):
        if isinstance(src, str) and src not in upstream and src not in unreadable:
            problems.append(Problem(
                w.path, w.key("from", i),
                f"'{src}' is not upstream of '{name}': `from` may name only jobs it "
                "needs, directly or through other jobs",
            ))
    return problems


@dataclass(frozen=True)
class _Around:
    """What a job's table is checked against: its pipeline's (or template's) other jobs and
    stages, the root's resource pools (None: not known here) and the declared variables."""

    names: list[str]
    stages: list[str]
    resources: Mapping[str, int] | None
    variables: set[str] | None


def _check_job(name: str, data: Mapping[str, Any], w: Where, around: _Around) -> list[Problem]:
    names, stages, resources, variables = around.names, around.stages, around.resources, around.variables
    problems: list[Problem] = []
    has_command, has_agent = "command" in data, "agent" in data
    if has_command == has_agent:
        which = "both" if has_command else "neither"
        problems.append(Problem(w.path, w.key("command"),
                                f"a job needs exactly one of 'command' and 'agent'; it has {which}"))
    if has_agent and data.get("cache") is True:  # an agent's work is not a function of its inputs
        problems.append(Problem(w.path, w.key("cache"),
                                "cache = true is for command jobs only: an agent does not do the same work twice"))
    for i, need in _need_names(data):
        key = w.key("needs", i) if isinstance(data["needs"][i], str) else w.key("needs", i, "job")
        if need == name:
            problems.append(Problem(w.path, key, f"job '{name}' cannot need itself"))
        elif need not in names:
            problems.append(Problem(w.path, key, f"unknown job '{need}'{did_you_mean(need, names)}"))
    for ref in ("parent", "regression_of"):
        target = data.get(ref)
        if isinstance(target, str) and target not in names:
            problems.append(Problem(w.path, w.key(ref), f"unknown job '{target}'"))
    stage = data.get("stage")
    if isinstance(stage, str) and stage not in stages:
        listed = f"[{', '.join(stages)}]" if stages else "none (no `stages` list)"
        problems.append(Problem(w.path, w.key("stage"),
                                f"stage '{stage}' is not in the pipeline's stages: {listed}"))
    problems += check_durations(data, [("timeout",), ("backoff", "initial"), ("backoff", "max")], w)
    problems += check_durations(data, [("idle_timeout",)], w)
    problems += _check_retry_on(data, w)
    problems += check_process_text(data, w)
    problems += _check_sparse_checkout(data, w)
    if resources is not None and isinstance(data.get("resources"), dict):
        for pool in data["resources"]:
            if pool not in resources:
                defined = ", ".join(sorted(resources)) or "none"
                problems.append(Problem(w.path, w.key("resources", pool),
                                        f"unknown resource pool '{pool}'; clowder.toml "
                                        f"[resources] defines: {defined}"))
    problems += check_variables(data, w, variables)
    return problems


def _check_retry_on(data: Mapping[str, Any], w: Where) -> list[Problem]:
    """Unknown failure kinds in `retry_on` (the schema checks only that they are strings)."""
    items = data.get("retry_on")
    if items is None:  # most jobs; listing the kinds cost 1.8 µs a job in `clowder reindex`
        return []
    kinds = [k.value for k in FailureKind]
    return [Problem(w.path, w.key("retry_on", i), f"unknown failure kind '{kind}'{did_you_mean(kind, kinds)}; "
                    f"the kinds are {', '.join(kinds)}")
            for i, kind in enumerate(items if isinstance(items, list) else [])
            if isinstance(kind, str) and kind not in kinds]


def _check_sparse_checkout(data: Mapping[str, Any], w: Where) -> list[Problem]:
    """`sparse_checkout` entries git can take as paths inside the workspace (the schema checks types)."""
    items = data.get("sparse_checkout")
    return [Problem(w.path, w.key("sparse_checkout", i), problem)
            for i, entry in enumerate(items if isinstance(items, list) else [])
            if isinstance(entry, str) and (problem := sparse_path_problem(entry))]


def check_durations(data: Mapping[str, Any], keys: list[tuple[str, ...]], w: Where) -> list[Problem]:
    """Duration strings that do not parse or are out of bounds (the schema bounds numbers)."""
    problems = []
    for dkey in keys:
        value: Any = data
        for part in dkey:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            try:
                parse_duration(value)
            except ValueError as e:
                problems.append(Problem(w.path, w.key(*dkey), str(e)))
    return problems


NUL_MESSAGE = "contains a NUL character, which no command, path or environment can hold"
ENV_NAME_MESSAGE = "an environment variable's name cannot be empty or hold '=' or a NUL character"
# Keys whose text becomes a process's argument or environment, or a path the daemon looks up.
_PROCESS_KEYS = ("command", "env", "outputs", "agent", "harness")


def sparse_path_problem(entry: str) -> str:
    """Why a `sparse_checkout` entry cannot be a path inside the workspace; "" if it can."""
    parts = entry.rstrip("/").split("/")
    if "\0" in entry:
        return NUL_MESSAGE
    if entry.startswith("/"):
        return f"{entry!r} must be relative to the repository's top (no leading '/')"
    if any(c in entry for c in "\n\r\\"):
        return f"{entry!r}: a path cannot hold a line break or a backslash (write directories with '/')"
    if ".." in parts:
        return f"{entry!r} leads out of the workspace ('..')"
    if any(p.lower() == ".git" for p in parts):
        return f"{entry!r} names git's own directory (.git)"
    if entry.startswith("!") or any(p in ("", ".") for p in parts):
        return f"{entry!r} is not a path (an empty part, '.' or a leading '!')"
    return ""


def check_process_text(data: Mapping[str, Any], w: Where) -> list[Problem]:
    """Text a process would be given that no process can take: exec and Popen refuse a NUL in
    an argument or an environment value and '=' in a variable's name, so the attempt could
    never start."""
    problems = [Problem(w.path, w.key(*parts), NUL_MESSAGE)
                for key in _PROCESS_KEYS if key in data
                for parts, text in strings(data[key], (key,)) if "\0" in text]
    problems += _check_env_names(data.get("env"), w, ("env",))
    return sorted(problems, key=lambda p: p.key)


def _check_env_names(env: object, w: Where, prefix: tuple[str, ...]) -> list[Problem]:
    if not isinstance(env, dict):
        return []
    return [Problem(w.path, w.key(*prefix, name), ENV_NAME_MESSAGE) for name in env
            if not name or "=" in name or "\0" in name]


def check_variables(data: Any, w: Where, declared: set[str] | None) -> list[Problem]:
    problems = []
    for parts, text in strings(data):
        for var in VARIABLE_RE.findall(text):
            if declared is None:
                problems.append(Problem(w.path, w.key(*parts),
                                        f"template variable '{var}' is unset (set it with "
                                        f"`clowder new ... --set {var}=VALUE`)"))
            elif var not in declared:
                problems.append(Problem(w.path, w.key(*parts),
                                        f"template variable '{var}' is not declared in [variables]"))
    return problems


def check_stages(data: Mapping[str, Any]) -> list[str]:
    stages = data.get("stages", [])
    return [s for s in stages if isinstance(s, str)] if isinstance(stages, list) else []


