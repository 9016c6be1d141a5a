"""An agent job's attempt, as the driver sees it: before the process starts, its prompt, script,
argv and environment; after it ended, its structured output and usage, from the action log."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from clowder.errors import ClowderError
from clowder.harness import ACTIONS_FILE, OUTPUT_FILE, PROMPT_FILE, SCRIPT_FILE, output_schema, prices
from clowder.harness import config as harness_config
from clowder.harness.actions import read_log
from clowder.harness.prompt import Context, compose
from clowder.metadata import metadata_path, write_metadata
from clowder.spec import Config, JobSpec, Pipeline
from clowder.state import FailureKind, JobStatus, Usage, total_usage


@dataclass(frozen=True)
class AgentCommand:
    """How to run an agent job's harness: what the executor's Launch gets as argv, and adds to its env."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True)
class Collected:
    """What an ended attempt's action log adds up to."""

    usage: Usage | None = None
    problem: str = ""  # the log or output.json is malformed: the attempt fails with this
    output: bool = False  # .clowder/<job>/output.json exists
    failure_kind: FailureKind | None = None  # the kind and text of the last failure the agent reported
    failure_text: str = ""


def context(pipeline: Pipeline, job: JobSpec, attempt: int, workspace: Path,
            statuses: Mapping[str, JobStatus]) -> Context:
    """The prompt context of an attempt about to start, from the job statuses of its pipeline."""
    own = statuses.get(job.name)
    job_usage = total_usage(own.attempts) if own else None
    spent = [u for s in statuses.values() if (u := total_usage(s.attempts)) is not None]
    last = own.last if own else None
    fixups = _fixups(own, statuses) if own and last and last.trigger == "regression" else ()
    return Context(pipeline, job, attempt, workspace, spawned=len(own.spawned) if own else 0,
                   job_spent_usd=job_usage.cost_usd if job_usage else 0.0,
                   pipeline_spent_usd=sum(u.cost_usd for u in spent), fixups=fixups)


def _fixups(own: JobStatus, statuses: Mapping[str, JobStatus]) -> tuple[tuple[str, str], ...]:
    """How each fix-up this job waited for ended: its state, and the note of its last attempt
    ("no changes" for one that changed no file)."""
    out = []
    for name in own.spawned:
        fixup = statuses.get(name)
        if fixup is None or fixup.last is None:
            continue
        note = fixup.last.message
        out.append((name, f"{fixup.state.value}" + (f" ({note})" if note else "")))
    return tuple(out)


def start(config: Config, ctx: Context, root: Path) -> AgentCommand:
    """Write the attempt's prompt (and script) into the prepared workspace, clear what the last
    attempt logged, and say how to run the job's harness."""
    job, ws = ctx.job, ctx.workspace
    meta = metadata_path(ws, job.name)
    for stale in [meta / ACTIONS_FILE, meta / OUTPUT_FILE, meta / SCRIPT_FILE, meta / output_schema.SCHEMA_FILE,
                  *meta.glob("raw.*")]:
        stale.unlink(missing_ok=True)
    text = compose(ctx)
    write_metadata(ws, job.name, PROMPT_FILE, text)
    role = ctx.pipeline.spec.roles.get(job.agent or "")
    script = job.script or (role.script if role else ())
    if script:
        write_metadata(ws, job.name, SCRIPT_FILE, json.dumps(list(script), indent=2, default=str) + "\n")
    harness = harness_config.resolve(config, ctx.pipeline.spec, job)
    files = {"prompt_file": meta / PROMPT_FILE, "actions_file": meta / ACTIONS_FILE, "output_file": meta / OUTPUT_FILE}
    values = {
        **{k: str(v.resolve()) for k, v in files.items()},
        "prompt": text, "workspace": str(ws.resolve()), "root": str(root), "pipeline": ctx.pipeline.name,
        "job": job.name, "attempt": str(ctx.attempt), "role": job.agent or "", "python": sys.executable,
        "model": harness.model or "",
    }
    env = harness_config.env(harness, values)
    env.update({"CLOWDER_PROMPT_FILE": values["prompt_file"], "CLOWDER_ACTIONS_FILE": values["actions_file"],
                "CLOWDER_OUTPUT_FILE": values["output_file"], "CLOWDER_HARNESS": harness.name})
    if script:
        env["CLOWDER_SCRIPT_FILE"] = str((meta / SCRIPT_FILE).resolve())
    if job.regression_of or job.regression_context:
        env["CLOWDER_REGRESSION_OF"] = job.regression_of or job.name
    env["PATH"] = _with_clowder(env.get("PATH", os.environ.get("PATH", "")))
    return AgentCommand(harness_config.argv(harness, values, _extras(ctx, root)), env)


def remaining_budget(ctx: Context) -> float | None:
    """What the attempt may still spend: the least of what its job's and its pipeline's
    `max_cost_usd` leave; None when neither sets one."""
    left = []
    if ctx.job.max_cost_usd is not None:
        left.append(ctx.job.max_cost_usd - ctx.job_spent_usd)
    if ctx.pipeline.spec.max_cost_usd is not None:
        left.append(ctx.pipeline.spec.max_cost_usd - ctx.pipeline_spent_usd)
    return max(min(left), 0.0) if left else None


def _extras(ctx: Context, root: Path) -> harness_config.Extras:
    """The budget and output schema of the attempt, for a CLI that takes them as flags. The
    schema is also written to .clowder/<job>/output-schema.json (Codex reads it from a file)."""
    budget = remaining_budget(ctx)
    declared = output_schema.declared(ctx.pipeline.spec, ctx.job)
    schema_text = schema_file = None
    if declared is not None:
        schema_text = json.dumps(output_schema.load(declared, root), ensure_ascii=False)
        write_metadata(ctx.workspace, ctx.job.name, output_schema.SCHEMA_FILE, schema_text + "\n")
        schema_file = str((metadata_path(ctx.workspace, ctx.job.name) / output_schema.SCHEMA_FILE).resolve())
    # Claude stops at the budget; a cent's fraction is the least it is given (0 would mean none).
    money = f"{max(budget, 0.0001):.4f}" if budget is not None else None
    return harness_config.Extras(max_budget_usd=money, output_schema=schema_text, output_schema_file=schema_file)


def _with_clowder(path: str) -> str:
    """PATH with the directory of this Python (where the `clowder` script is installed) at the
    end, so an agent can run `clowder spawn` even when Clowder runs from an unactivated venv."""
    bindir = str(Path(sys.executable).parent)
    parts = path.split(os.pathsep) if path else []
    return path if bindir in parts else os.pathsep.join([*parts, bindir])


def settle(config: Config, pipeline: Pipeline, job: JobSpec, workspace: Path, root: Path,
           collected: Collected) -> Collected:
    """The collected attempt with what clowder.toml and the spec add to it: the cost of usage
    reported as tokens only, at `[prices]`; and the check of output.json against the job's
    `output_schema` (a missing or non-matching output is the attempt's problem)."""
    meta = metadata_path(workspace, job.name)
    problem = collected.problem
    usage = collected.usage
    try:
        model = harness_config.resolve(config, pipeline.spec, job).model
    except ClowderError:
        model = None
    try:
        priced = prices.price_log(meta / ACTIONS_FILE, model, config.prices)
    except OSError:  # collect() has said why the log cannot be read
        priced = prices.Priced()
    if usage is not None and priced.cost_usd:
        usage = replace(usage, cost_usd=usage.cost_usd + priced.cost_usd)
    declared = output_schema.declared(pipeline.spec, job)
    if declared is not None and not problem:
        try:
            problem = output_schema.check(output_schema.load(declared, root), meta / OUTPUT_FILE)
        except (ClowderError, OSError) as e:
            problem = str(e)
    return replace(collected, usage=usage, problem=problem)


def collect(workspace: Path, job: str) -> Collected:
    """Sum up the attempt's action log and extract its structured output into output.json
    (unless the agent wrote that file itself). Safe to call again for the same attempt."""
    meta = metadata_path(workspace, job)  # the agent may have left a link there: never write through it
    summary = read_log(meta / ACTIONS_FILE)
    usage = Usage(summary.input_tokens, summary.output_tokens, summary.cost_usd) if summary.usage_lines else None
    problem = summary.problem
    out = meta / OUTPUT_FILE
    if out.is_symlink():
        out.unlink()
        problem = problem or f"{OUTPUT_FILE}: a symbolic link, not the agent's output"
    if out.is_file():
        try:
            json.loads(out.read_bytes())
        except ValueError as e:
            problem = problem or f"{OUTPUT_FILE}: not JSON ({e})"
    elif summary.has_result:
        write_metadata(workspace, job, OUTPUT_FILE, json.dumps(summary.output, indent=2, ensure_ascii=False) + "\n")
    kind = FailureKind(summary.failure_kind) if summary.failure_kind else None
    return Collected(usage, problem, out.is_file(), kind, summary.failure_text)
