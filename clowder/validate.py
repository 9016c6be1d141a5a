"""Validation: every problem in a root, a template or a pipeline, found in one pass, and the
loaders that turn clean files into spec records."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from clowder import schema
from clowder.errors import ClowderError, Problem, SpecError
from clowder.harness import config as harness_config
from clowder.jobchecks import (
    NUL_MESSAGE,
    VARIABLE_NAME,
    Where,
    check_durations,
    check_jobs,
    check_process_text,
    check_stages,
    check_variables,
    did_you_mean,
    strings,
)
from clowder.spec import (
    NAME_RULE,
    Config,
    NotifyEvent,
    Pipeline,
    config_from_dict,
    is_name,
    is_url,
    job_from_dict,
    parse_duration,
    pipeline_spec_from_dict,
    with_stage_needs,
)
from clowder.state import check_status_file
from clowder.tree import CONFIG_FILE, PipelinePaths, Root

# -- clowder.toml ---------------------------------------------------------------------------

def check_config(path: Path) -> tuple[Config | None, list[Problem]]:
    data, problems = schema.load_toml(path)
    if data is None:
        return None, problems
    problems = schema.check("clowder", without_notify(data), path)
    durations: list[tuple[str, ...]] = [
        ("sweep_interval",), ("heartbeat_timeout",), ("kill_grace",), ("settle",), ("poll_interval",),
        ("retry", "backoff", "initial"), ("retry", "backoff", "max"),
    ]
    problems += check_durations(data, durations, Where(path))
    problems += _check_at_least_a_second(data, path)
    problems += _check_poll_interval(data, path)
    harnesses = data.get("harnesses", {})
    if isinstance(harnesses, dict):
        problems += _check_harnesses(path, harnesses, data.get("default_harness"))
    if isinstance(data.get("executor"), dict):
        problems += _check_executor(path, data["executor"])
    if problems:
        return None, problems
    return config_from_dict(sound_notify(data)), []


# Below a second, a sweep (which re-reads every pipeline) would keep the daemon busy, and a
# running attempt would be declared lost before its wrapper could record its pid.
_AT_LEAST_A_SECOND = ("sweep_interval", "heartbeat_timeout")


def _check_at_least_a_second(data: Mapping[str, Any], path: Path) -> list[Problem]:
    """Durations written as strings that must be at least 1s (the schema bounds numbers)."""
    problems = []
    for key in _AT_LEAST_A_SECOND:
        value = data.get(key)
        try:
            short = isinstance(value, str) and parse_duration(value) < 1
        except ValueError:  # reported by check_durations
            continue
        if short:
            problems.append(Problem(path, key, f"must be at least 1s, got {value!r}"))
    return problems


# Polling more often than this costs CPU (and on NFS, a round trip per file) for little; less
# often than this, a request or a spawn waits longer than anyone would.
POLL_INTERVAL_BOUNDS = (0.05, 60.0)


def _check_poll_interval(data: Mapping[str, Any], path: Path) -> list[Problem]:
    """poll_interval written as a string: from 50ms to 1m (the schema bounds numbers)."""
    value = data.get("poll_interval")
    try:
        seconds = parse_duration(value) if isinstance(value, str) else None
    except ValueError:  # reported by check_durations
        return []
    low, high = POLL_INTERVAL_BOUNDS
    if seconds is not None and not low <= seconds <= high:
        return [Problem(path, "poll_interval", f"must be from 50ms to 1m, got {value!r}")]
    return []


def _check_harnesses(path: Path, harnesses: Mapping[str, Any], default: object) -> list[Problem]:
    """The default harness exists, and command templates use only known placeholders."""
    problems = []
    known = sorted({*harnesses, *harness_config.BUILTIN})
    if isinstance(default, str) and default not in known:
        hint = did_you_mean(default, known) or f"; known: {', '.join(known)}"
        problems.append(Problem(path, "default_harness", f"unknown harness '{default}'{hint}"))
    for name, table in harnesses.items():
        if isinstance(table, dict):
            problems += check_process_text(table, Where(path, ("harnesses", name)))
        if isinstance(table, dict) and "command" not in table and name not in harness_config.BUILTIN:
            problems.append(Problem(path, schema.key_path(["harnesses", name, "command"]),
                                    "missing: only a built-in harness may leave out its command"))
        command = table.get("command") if isinstance(table, dict) else None
        if isinstance(command, str) or (isinstance(command, list) and all(isinstance(c, str) for c in command)):
            for unknown in harness_config.unknown_placeholders(command if isinstance(command, str) else tuple(command)):
                problems.append(Problem(path, schema.key_path(["harnesses", name, "command"]),
                                        f"unknown placeholder {{{unknown}}}; known: "
                                        + " ".join(f"{{{p}}}" for p in harness_config.PLACEHOLDERS)))
    return problems


def _check_executor(path: Path, table: Mapping[str, Any]) -> list[Problem]:
    """A Dask executor names its scheduler once, by address or by file; the local one names none."""
    given = [k for k in ("scheduler", "scheduler_file") if k in table]
    if table.get("kind", "local") == "dask" and len(given) != 1:
        why = "give only one of" if given else "missing: give one of"
        return [Problem(path, "executor", f"{why} scheduler = \"tcp://HOST:PORT\" or scheduler_file = \"FILE\"")]
    if table.get("kind", "local") != "dask" and given:
        return [Problem(path, f"executor.{given[0]}", 'only for kind = "dask"')]
    return []


def load_config(root: Root) -> Config:
    config, problems = check_config(root.config_file)
    if problems:
        raise SpecError(problems)
    assert config is not None
    return config


# -- templates ------------------------------------------------------------------------------

def check_template(path: Path, config: Config | None = None) -> tuple[dict[str, Any] | None, list[Problem]]:
    data, problems = schema.load_toml(path)
    if data is None:
        return None, problems
    if not is_name(path.stem):
        problems.append(Problem(path, "<name>", f"invalid template name {path.stem!r}: {NAME_RULE}"))
    problems += schema.check("template", data, path)
    jobs = data.get("jobs")
    if isinstance(jobs, dict):
        declared = set(data.get("variables", {})) if isinstance(data.get("variables"), dict) else set()
        for var in sorted(declared):
            # `{{ my-var }}` is not a placeholder, so such a variable could never be used.
            if not VARIABLE_NAME.fullmatch(var):
                problems.append(Problem(path, schema.key_path(["variables", var]),
                                        f"invalid variable name {var!r}: use letters, digits and '_', "
                                        "not starting with a digit"))
        problems += check_jobs(
            jobs, check_stages(data),
            lambda name: Where(path, ("jobs", name)),
            config.resources if config else None,
            declared,
        )
        roles = data.get("roles")
        if isinstance(roles, dict):
            problems += check_variables(roles, Where(path, ("roles",)), declared)
        problems += _check_harness_names(jobs, roles, config, lambda name: Where(path, ("jobs", name)),
                                         Where(path, ("roles",)))
        problems += _check_output_schemas(jobs, roles, lambda name: Where(path, ("jobs", name)),
                                          Where(path, ("roles",)), path.parent.parent)
    # The template schema checks its job tables too (editors use it), and so does check_jobs.
    problems = list(dict.fromkeys(problems))
    return (None if problems else data), problems


# -- pipelines ------------------------------------------------------------------------------

def check_pipeline(paths: PipelinePaths, config: Config | None = None) -> tuple[Pipeline | None, list[Problem]]:
    """The pipeline as records if its files are clean, and every problem found otherwise."""
    problems: list[Problem] = []
    if not is_name(paths.name):
        problems.append(Problem(paths.dir, "<name>", f"invalid pipeline name {paths.name!r}: {NAME_RULE}"))
    if not paths.spec_file.is_file():
        problems.append(Problem(paths.spec_file, "<file>", "missing: every pipeline directory needs a pipeline.toml"))
        return None, problems
    spec_data, toml_problems = schema.load_toml(paths.spec_file)
    problems += toml_problems
    jobs: dict[str, Any] = {}
    unreadable: set[str] = set()
    names = paths.job_names()
    jobs_dir = paths.jobs_dir
    for name in names:
        data, job_problems = schema.load_toml(jobs_dir / f"{name}.toml")
        problems += job_problems
        if data is None:
            unreadable.add(name)
        else:
            jobs[name] = data
    if not names:
        problems.append(Problem(paths.jobs_dir, "<dir>", "no jobs: add at least one jobs/<job>.toml"))
    problems += check_pipeline_data(paths, spec_data, jobs, config, frozenset(unreadable))
    if problems or spec_data is None:
        return None, problems
    return build_pipeline(paths.name, spec_data, jobs, config or Config()), []


def check_pipeline_data(
    paths: PipelinePaths, spec_data: Mapping[str, Any] | None, jobs: Mapping[str, Any], config: Config | None,
    unreadable: frozenset[str] = frozenset(),
) -> list[Problem]:
    """Problems of a pipeline's parsed files, reported against the paths they live (or will live) at.
    `spec_data` is None when pipeline.toml did not parse (its syntax error is reported already)."""
    problems: list[Problem] = []
    if spec_data is not None:
        problems += schema.check("pipeline", without_notify(spec_data), paths.spec_file)
        problems += check_variables(
            {k: v for k, v in spec_data.items() if k not in ("roles", "notify")}, Where(paths.spec_file), None)
        problems += [Problem(paths.spec_file, schema.key_path(parts), NUL_MESSAGE)  # clowder export's git arguments
                     for parts, text in strings(spec_data.get("export"), ("export",)) if "\0" in text]
        problems += _check_source(paths.spec_file, spec_data.get("source"))
    jobs_dir = paths.jobs_dir

    @cache
    def where(name: str) -> Where:
        return Where(jobs_dir / f"{name}.toml")

    problems += check_jobs(jobs, check_stages(spec_data or {}), where,
                           config.resources if config else None, None, unreadable)
    problems += _check_harness_names(jobs, (spec_data or {}).get("roles"), config, where,
                                     Where(paths.spec_file, ("roles",)))
    problems += _check_output_schemas(jobs, (spec_data or {}).get("roles"), where,
                                      Where(paths.spec_file, ("roles",)), paths.dir.parent.parent)
    return problems


def _check_source(path: Path, source: object) -> list[Problem]:
    """`worktree = true` snapshots a checkout's files: a URL has none on this machine."""
    if not isinstance(source, dict) or source.get("worktree") is not True or not isinstance(source.get("repo"), str):
        return []
    if is_url(source["repo"]):
        return [Problem(path, schema.key_path(["source", "worktree"]),
                        f"a URL ({source['repo']}) has no working tree here; "
                        "worktree = true needs the path of a checkout")]
    return []


def _check_harness_names(jobs: Mapping[str, Any], roles: object, config: Config | None,
                         where: Callable[[str], Where], roles_where: Where) -> list[Problem]:
    """Every `harness` a job or role names is configured in clowder.toml or built in."""
    if config is None:
        return []
    known = sorted(harness_config.available(config))
    named = [(where(n), d.get("harness")) for n, d in jobs.items() if isinstance(d, dict)]
    if isinstance(roles, dict):
        named += [(Where(roles_where.path, (*roles_where.prefix, r)), d.get("harness")) for r, d in roles.items()
                  if isinstance(d, dict)]
    return [Problem(w.path, w.key("harness"), f"unknown harness '{h}'" + (did_you_mean(h, known) or
                    f"; clowder.toml [harnesses] and the built-in ones define: {', '.join(known)}"))
            for w, h in named if isinstance(h, str) and h not in known]


def _check_output_schemas(jobs: Mapping[str, Any], roles: object, where: Callable[[str], Where],
                          roles_where: Where, root: Path) -> list[Problem]:
    """Every `output_schema` is a valid JSON Schema: inline, or a readable file under the root
    (checked only when `root` is a Clowder root: a lone spec file has none to look in)."""
    from clowder.harness import output_schema

    tables = [(where(n), d.get("output_schema")) for n, d in jobs.items() if isinstance(d, dict)]
    if isinstance(roles, dict):
        tables += [(Where(roles_where.path, (*roles_where.prefix, r)), d.get("output_schema"))
                   for r, d in roles.items() if isinstance(d, dict)]
    problems = []
    for w, value in tables:
        if isinstance(value, dict):
            problem = output_schema.schema_problem(value)
        elif isinstance(value, str) and (root / CONFIG_FILE).is_file():
            try:
                output_schema.load(value, root)
                problem = ""
            except ClowderError as e:
                problem = str(e).removeprefix(f"output_schema {value!r}: ")
        else:
            continue
        if problem:
            problems.append(Problem(w.path, w.key("output_schema"), problem))
    return problems


def build_pipeline(name: str, spec_data: Mapping[str, Any], jobs: Mapping[str, Any], config: Config) -> Pipeline:
    spec = pipeline_spec_from_dict(name, sound_notify(spec_data))
    records = {n: job_from_dict(n, d, config.retry) for n, d in jobs.items()}
    return Pipeline(spec, with_stage_needs(records, spec.stages))


def load_pipeline(paths: PipelinePaths, config: Config | None = None) -> Pipeline:
    pipeline, problems = check_pipeline(paths, config)
    if problems:
        raise SpecError(problems)
    assert pipeline is not None
    return pipeline


def check_status_files(paths: PipelinePaths) -> list[Problem]:
    files = [paths.status_file] if paths.status_file.is_file() else []
    files += sorted(paths.status_dir.glob("*.toml")) if paths.status_dir.is_dir() else []
    return [p for f in files for p in check_status_file(f)[1]]


# -- any path -------------------------------------------------------------------------------

def validate_root(root: Root) -> list[Problem]:
    config, problems = check_config(root.config_file)
    problems += notify_problems(root.config_file)
    for name in root.template_names():
        problems += check_template(root.templates_dir / f"{name}.toml", config)[1]
    for name in root.pipeline_names():
        paths = PipelinePaths(root.pipelines_dir / name)
        problems += check_pipeline(paths, config)[1]
        problems += check_status_files(paths) + notify_problems(paths.spec_file)
    return problems


def validate_path(path: Path, root: Root | None) -> tuple[str, list[Problem]]:
    """Validate whatever `path` is: a root, a pipeline directory or anything in one, the
    templates or pipelines directory, a template or clowder.toml.
    Returns what was checked (for the summary line) and the problems."""
    path = path.resolve()
    config = None
    if root is not None and root.config_file.is_file():
        config, _ = check_config(root.config_file)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return f"root {path}", validate_root(Root(path))
    if path.is_file() and path.name == CONFIG_FILE:
        return f"settings {path}", check_config(path)[1] + notify_problems(path)
    pipeline = _enclosing_pipeline(path)
    if pipeline is not None:
        paths = PipelinePaths(pipeline)
        return f"pipeline {pipeline.name}", (check_pipeline(paths, config)[1] + check_status_files(paths)
                                             + notify_problems(paths.spec_file))
    if path.is_dir() and path.name in ("templates", "pipelines") and (path.parent / CONFIG_FILE).is_file():
        r = Root(path.parent)
        problems: list[Problem] = []
        if path.name == "templates":
            for name in r.template_names():
                problems += check_template(r.templates_dir / f"{name}.toml", config)[1]
        for name in r.pipeline_names() if path.name == "pipelines" else []:
            paths = PipelinePaths(r.pipelines_dir / name)
            problems += check_pipeline(paths, config)[1] + check_status_files(paths) + notify_problems(paths.spec_file)
        return f"{path.name} {path}", problems
    if path.is_file() and path.suffix == ".toml":
        return f"template {path.stem}", check_template(path, config)[1]
    if not path.exists():
        return str(path), [Problem(path, "<file>", "no such file or directory")]
    return str(path), [Problem(path, "<file>", "not a Clowder root, pipeline, template or spec file")]


def _enclosing_pipeline(path: Path) -> Path | None:
    """The pipeline directory `path` is or lies in: a directory holding pipeline.toml, or any
    directory right under a `pipelines/` directory (whose missing pipeline.toml is a problem)."""
    if path.is_dir() and (path / "pipeline.toml").is_file():
        return path
    for candidate in (path, *path.parents):
        if (candidate / CONFIG_FILE).is_file():
            return None  # reached the root: a root may itself live in a directory named pipelines
        if candidate.parent.name == "pipelines" and candidate.is_dir():
            return candidate
    return None


# -- [[notify]] tables ----------------------------------------------------------------------
# A broken table is left out where files are loaded (the daemon logs why: a notification must
# never stop a pipeline) and reported here, for `clowder validate`.

_EVENTS = [e.value for e in NotifyEvent]
MAX_NOTIFY_TIMEOUT = 3600.0


def notify_problems(path: Path) -> list[Problem]:
    """Every problem of the `[[notify]]` tables in clowder.toml or a pipeline.toml (a file that
    does not parse has none of its own: its syntax error is reported where it is loaded)."""
    data, _ = schema.load_toml(path, missing_ok=True)
    return check_notify(path, data.get("notify")) if data is not None else []


def check_notify(path: Path, value: object) -> list[Problem]:
    if value is None:
        return []
    problems = schema.check("clowder", {"notify": value}, path)
    own: list[Problem] = []
    for i, table in enumerate(value if isinstance(value, list) else []):
        if isinstance(table, dict):
            own += _check_notify_table(path, i, table)
    # An unknown event is said once, with a did-you-mean, not also as the schema's enum.
    said = {p.key for p in own}
    return sorted({*[p for p in problems if p.key not in said], *own}, key=lambda p: (p.key, p.message))


def _check_notify_table(path: Path, i: int, table: Mapping[str, Any]) -> list[Problem]:
    def key(*parts: str | int) -> str:
        return schema.key_path(["notify", i, *parts])

    events = table.get("on")
    problems = [Problem(path, key("on", j), f"unknown event '{e}'{did_you_mean(e, _EVENTS)}; "
                        f"the events are {', '.join(_EVENTS)}")
                for j, e in enumerate(events if isinstance(events, list) else [])
                if isinstance(e, str) and e not in _EVENTS]
    has_command, has_webhook = "command" in table, "webhook" in table
    if has_command == has_webhook:
        which = "both" if has_command else "neither"
        problems.append(Problem(path, key("command"),
                                f"a [[notify]] table needs exactly one of 'command' and 'webhook'; it has {which}"))
    problems += [Problem(path, key(*parts), NUL_MESSAGE)
                 for parts, text in strings(table.get("command"), ("command",)) if "\0" in text]
    webhook = table.get("webhook")
    if isinstance(webhook, str) and webhook and not _is_http_url(webhook):
        problems.append(Problem(path, key("webhook"),
                                f"must be an http:// or https:// URL, got {schema.show(webhook)}"))
    timeout = table.get("timeout")
    if isinstance(timeout, str):  # the schema bounds a number
        try:
            if not 0 < parse_duration(timeout) <= MAX_NOTIFY_TIMEOUT:
                problems.append(Problem(path, key("timeout"), f"must be more than 0 and at most 1h, got {timeout!r}"))
        except ValueError as e:
            problems.append(Problem(path, key("timeout"), str(e)))
    return problems


def _is_http_url(text: str) -> bool:
    try:
        url = urllib.parse.urlsplit(text)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.netloc) and not any(c.isspace() or c == "\0" for c in text)


def without_notify(data: Mapping[str, Any]) -> dict[str, Any]:
    """The file's data for its schema check: `[[notify]]` tables are judged on their own."""
    return {k: v for k, v in data.items() if k != "notify"}


def sound_notify(data: Mapping[str, Any]) -> dict[str, Any]:
    """The file's data with each broken `[[notify]]` table replaced by None, for the builders."""
    value = data.get("notify")
    if value is None:
        return dict(data)
    tables = value if isinstance(value, list) else []
    problems = check_notify(Path(), value)
    if any(p.key == "notify" for p in problems):
        tables = []
    broken = {p.key.split("]", 1)[0] + "]" for p in problems}
    sound = [t if f"notify[{i}]" not in broken else None for i, t in enumerate(tables)]
    return {**data, "notify": sound}
