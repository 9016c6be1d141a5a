"""An agent job's attempt, as the driver sees it: before the process starts, its prompt, script,
argv and environment; after it ended, its structured output and usage, from the action log."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clowder.artifacts import metadata_path, write_metadata
from clowder.harness import ACTIONS_FILE, OUTPUT_FILE, PROMPT_FILE, SCRIPT_FILE
from clowder.harness import config as harness_config
from clowder.harness.actions import read_log
from clowder.harness.prompt import Context, compose
from clowder.spec import Config, JobSpec, Pipeline
from clowder.state import FailureKind, JobStatus, Usage, total_usage


@dataclass(frozen=True)
class Launch:
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
    return Context(pipeline, job, attempt, workspace, spawned=len(own.spawned) if own else 0,
                   job_spent_usd=job_usage.cost_usd if job_usage else 0.0,
                   pipeline_spent_usd=sum(u.cost_usd for u in spent))


def start(config: Config, ctx: Context, root: Path) -> Launch:
    """Write the attempt's prompt (and script) into the prepared workspace, clear what the last
    attempt logged, and say how to run the job's harness."""
    job, ws = ctx.job, ctx.workspace
    meta = metadata_path(ws, job.name)
    for stale in [meta / ACTIONS_FILE, meta / OUTPUT_FILE, meta / SCRIPT_FILE, *meta.glob("raw.*")]:
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
    }
    env = harness_config.env(harness, values)
    env.update({"CLOWDER_PROMPT_FILE": values["prompt_file"], "CLOWDER_ACTIONS_FILE": values["actions_file"],
                "CLOWDER_OUTPUT_FILE": values["output_file"], "CLOWDER_HARNESS": harness.name})
    if script:
        env["CLOWDER_SCRIPT_FILE"] = str((meta / SCRIPT_FILE).resolve())
    if job.regression_of or job.regression_context:
        env["CLOWDER_REGRESSION_OF"] = job.regression_of or job.name
    env["PATH"] = _with_clowder(env.get("PATH", os.environ.get("PATH", "")))
    return Launch(harness_config.argv(harness, values), env)


def _with_clowder(path: str) -> str:
    """PATH with the directory of this Python (where the `clowder` script is installed) at the
    end, so an agent can run `clowder spawn` even when Clowder runs from an unactivated venv."""
    bindir = str(Path(sys.executable).parent)
    parts = path.split(os.pathsep) if path else []
    return path if bindir in parts else os.pathsep.join([*parts, bindir])


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
