"""Templates and roots: `clowder init` lays out a root, `clowder new` turns a template into a
pipeline directory."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli as tomllib  # the standard library's parser, compiled with mypyc: twice as fast
import tomli_w

from clowder import schema
from clowder.errors import Problem, SpecError, UsageError
from clowder.fsio import atomic_write
from clowder.jobchecks import VARIABLE_RE
from clowder.spec import check_name, is_name
from clowder.state import utcnow
from clowder.tree import PipelinePaths, Root
from clowder.validate import check_config, check_pipeline_data, check_template

DEFAULT_CONFIG = """\
#:schema .clowder/schemas/clowder.schema.json
# Clowder root settings. Every key is optional; the values below are the defaults.
schema_version = 1

# Attempts running at once under this root (`clowder run/watch --max-parallel` overrides).
max_parallel = 4
# How often the daemon re-reads the whole tree to repair a missed file event.
sweep_interval = "30s"
# A running job whose process is gone this long without an exit record becomes `lost`.
heartbeat_timeout = "30s"
# Between SIGTERM and SIGKILL when a job is cancelled or times out.
kill_grace = "10s"
# A spec file found invalid that changed less than this ago is being saved: it is read again
# then, and only an invalid file that stayed so this long blocks its pipeline.
settle = "2s"
# How often the daemon looks for changed files when it polls: with `--poll`, and by default with
# a Dask executor (file events never see what other machines write).
poll_interval = "1s"

# Agent jobs (`agent = "<role>"`) run a harness: `scripted` (the deterministic agent of the
# examples: no model, no network) unless a job, its role or default_harness names another.
# Built in: scripted, claude (Claude Code), codex (OpenAI Codex CLI), aider. A table here adds
# one or replaces a built-in one; its command may use {prompt_file} {prompt} {actions_file}
# {output_file} {workspace} {root} {pipeline} {job} {attempt} {role} {python}. `adapter` says
# how it reports: actions (it writes $CLOWDER_ACTIONS_FILE itself), claude, codex or aider.
# default_harness = "claude"
# [harnesses.claude]
# command = ["claude", "-p", "--output-format", "stream-json", "--verbose", "--model", "sonnet",
#            "--permission-mode", "acceptEdits", "--allowedTools", "Bash,Read,Edit,Write,Glob,Grep"]
# adapter = "claude"
# env = { DISABLE_AUTOUPDATER = "1" }

[retry]  # defaults for jobs that do not set their own
retries = 0
max_regressions = 3
backoff = { initial = "2s", factor = 2.0, max = "5m" }

[resources]  # named pools, never oversubscribed; a job takes units with `resources = { llm = 1 }`
# llm = 4

[git]  # author and committer of every workspace commit
author_name = "Clowder"
author_email = "clowder@localhost"

[executor]
kind = "local"
"""

PIPELINE_HEADER = "#:schema ../../.clowder/schemas/pipeline.schema.json\n"
JOB_HEADER = "#:schema ../../../.clowder/schemas/job.schema.json\n"
_VERBATIM = frozenset({"prompt", "regression_context"})


def install_schemas(root: Root) -> None:
    """Copy the JSON Schemas to .clowder/schemas/, where `#:schema` lines of generated files
    point, so TOML editors complete and check them offline."""
    for kind in schema.KINDS:
        source = schema.schemas_dir() / f"{kind}.schema.json"
        target = root.schemas_dir / source.name
        text = source.read_text()
        if not target.is_file() or target.read_text() != text:
            atomic_write(target, text, root.tmp_dir)


def init_root(directory: Path) -> Root:
    """Create a root in `directory` (made if missing); refuse if one is already there."""
    root = Root(directory.resolve())
    if root.config_file.exists():
        raise UsageError(f"{root.config_file}: already exists; not overwriting an existing root")
    root.path.mkdir(parents=True, exist_ok=True)
    root.templates_dir.mkdir(exist_ok=True)
    root.pipelines_dir.mkdir(exist_ok=True)
    root.tmp_dir.mkdir(parents=True, exist_ok=True)
    install_schemas(root)
    atomic_write(root.config_file, DEFAULT_CONFIG, root.tmp_dir)
    return root


def slugify(text: str, limit: int = 40) -> str:
    """A pipeline name from a prompt: lowercase words joined by '-', cut at a word boundary."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > limit:
            break
        slug = candidate
    if not slug and words:
        slug = words[0][:limit]
    return slug or "pipeline"


def unique_name(root: Root, base: str) -> str:
    # Any entry takes a name, not only pipeline directories: a stray file would make the
    # final rename fail.
    taken = {p.name for p in root.pipelines_dir.iterdir()} if root.pipelines_dir.is_dir() else set()
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def substitute(value: Any, values: Mapping[str, str]) -> Any:
    """Replace `{{ var }}` in every string of a TOML value, except the user's verbatim text."""
    if isinstance(value, str):
        return VARIABLE_RE.sub(lambda m: values.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: v if k in _VERBATIM else substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, values) for v in value]
    return value


def _variable_values(path: Path, data: Mapping[str, Any], sets: Mapping[str, str]) -> dict[str, str]:
    declared: Mapping[str, Any] = data.get("variables", {})
    unknown = sorted(set(sets) - set(declared))
    if unknown:
        names = ", ".join(sorted(declared)) or "none"
        raise UsageError(f"{path}: template has no variable '{unknown[0]}' (it declares: {names})")
    values: dict[str, str] = {}
    problems = []
    for name, decl in declared.items():
        if name in sets:
            values[name] = sets[name]
        elif "default" in decl:
            default = decl["default"]
            values[name] = str(default).lower() if isinstance(default, bool) else str(default)
        else:
            problems.append(Problem(path, f"variables.{name}",
                                    f"template variable '{name}' is unset; pass --set {name}=VALUE"))
    if problems:
        raise SpecError(problems)
    return values


def new_pipeline(
    root: Root,
    template: str,
    prompt: str,
    name: str | None = None,
    sets: Mapping[str, str] | None = None,
    source: Mapping[str, str] | None = None,
) -> PipelinePaths:
    """Instantiate `template` as pipelines/<name>/ and return its paths. Never overwrites."""
    path = root.template_file(template)
    if not path.is_file():
        known = ", ".join(root.template_names()) or "none"
        raise UsageError(f"{path}: no such template (templates here: {known})")
    if not prompt.strip():
        raise UsageError("--prompt must not be empty")
    config, problems = check_config(root.config_file)
    data, template_problems = check_template(path, config)
    if problems or template_problems:
        raise SpecError(problems + template_problems)
    assert data is not None
    values = _variable_values(path, data, sets or {})
    if name is not None:
        check_name(name, "pipeline")
        if (root.pipelines_dir / name).exists():
            raise UsageError(f"{root.pipelines_dir / name}: already exists; choose another --name")
    else:
        name = unique_name(root, slugify(prompt))
    paths = root.pipeline(name)
    spec, jobs = _instantiate(template, data, prompt, values, source)
    problems = check_pipeline_data(paths, spec, jobs, config)
    if problems:
        raise SpecError(problems)
    install_schemas(root)
    _write_pipeline(root, paths, spec, jobs)
    return paths


def _instantiate(
    template: str, data: Mapping[str, Any], prompt: str, values: Mapping[str, str],
    source: Mapping[str, str] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    spec: dict[str, Any] = {
        "schema_version": 1, "prompt": prompt, "template": template, "created_at": utcnow().replace(microsecond=0),
    }
    for key in ("description", "stages", "max_parallel", "priority", "max_cost_usd"):
        if key in data:
            spec[key] = data[key]
    src = source or data.get("source")
    if src:
        spec["source"] = substitute(dict(src), values)
    if values:
        spec["variables"] = dict(values)
    if data.get("roles"):
        spec["roles"] = substitute(data["roles"], values)
    jobs = {job: substitute(table, values) for job, table in data["jobs"].items()}
    return spec, jobs


def dumps(data: Mapping[str, Any]) -> str:
    """TOML text of `data`, multi-line strings where that reads better. tomli-w writes "\r\n"
    inside a multi-line string as a bare newline, which reads back as "\n": fall back to
    one-line strings whenever the multi-line text would not read back identical."""
    text = tomli_w.dumps(data, multiline_strings=True)
    if tomllib.loads(text) == data:
        return text
    return tomli_w.dumps(data)


def _write_pipeline(root: Root, paths: PipelinePaths, spec: dict[str, Any], jobs: dict[str, Any]) -> None:
    # Build the whole directory aside and rename it into place, so a watching scheduler never
    # sees a pipeline.toml without its jobs; rename() also refuses to replace a non-empty dir.
    root.tmp_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"new-{paths.name}.", dir=root.tmp_dir))
    try:
        atomic_write(staging / "pipeline.toml", PIPELINE_HEADER + dumps(spec))
        for job, table in jobs.items():
            atomic_write(staging / "jobs" / f"{job}.toml", JOB_HEADER + dumps(table))
        root.pipelines_dir.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(paths.dir)
        except OSError as e:
            raise UsageError(f"{paths.dir}: already exists; not overwriting it") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_job_spec(root: Root, paths: PipelinePaths, name: str, table: Mapping[str, Any]) -> Path:
    """Write jobs/<name>.toml atomically (used by spawned jobs)."""
    if not is_name(name):
        raise UsageError(f"invalid job name {name!r}")
    target = paths.job_file(name)
    atomic_write(target, JOB_HEADER + dumps(table), root.tmp_dir)
    return target

