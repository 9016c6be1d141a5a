"""Prompt composition: what an agent job reads in `.clowder/<job>/prompt.md` — the pipeline's
prompt verbatim, its role's instructions, the structured outputs of the jobs before it, the
regression context of a fix-up, and how to ask for a fix-up and report back."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clowder.fsio import Unreadable, read_input
from clowder.harness import OUTPUT_FILE, REGRESSION_FILE, metadata_dir
from clowder.spec import JobSpec, Pipeline

UPSTREAM_LIMIT = 20_000  # characters of one upstream output shown in full; the file has the rest
WORKSPACE_FILE_LIMIT = 16 * 1024 * 1024  # a larger output.json is not read at all
REGRESSION_HEADING = "# Regression context"
_FIRST_KEYS = ("reason", "spawner", "attempt", "spawner_attempt")
_BLOCK_KEYS = ("context", "log_tail")
# Bookkeeping of the regression loop, or said in the section's first sentence already.
_HIDDEN_KEYS = ("request", "parent", "regression_of")


@dataclass(frozen=True)
class Context:
    """What the prompt of one attempt is made from, besides the files in its workspace."""

    pipeline: Pipeline
    job: JobSpec
    attempt: int
    workspace: Path
    spawned: int = 0  # fix-ups this job has asked for so far
    job_spent_usd: float = 0.0
    pipeline_spent_usd: float = 0.0
    fixups: tuple[tuple[str, str], ...] = ()  # (fix-up, how its last attempt ended) of a regression attempt


def compose(ctx: Context) -> str:
    """The prompt.md of `ctx`'s attempt."""
    sections = [_task(ctx), _role(ctx), _upstream(ctx), _regression(ctx), _fixups(ctx), _spawning(ctx),
                _reporting(ctx)]
    header = (f"<!-- Composed by Clowder: pipeline {ctx.pipeline.name}, job {ctx.job.name}, "
              f"attempt {ctx.attempt}. -->\n\n")
    return header + "\n\n".join(s.rstrip("\n") for s in sections if s) + "\n"


def _task(ctx: Context) -> str:
    return f"# Task\n\n{ctx.pipeline.spec.prompt}"


def _role(ctx: Context) -> str:
    name = ctx.job.agent or ""
    role = ctx.pipeline.spec.roles.get(name)
    text = role.instructions.strip() if role else ""
    return f"# Your role: {name}\n\n{text or '(no instructions for this role)'}"


def upstream_outputs(ctx: Context) -> list[tuple[str, Path]]:
    """(job, output.json) of every other job whose output is in this workspace — the jobs this
    one starts from and theirs in turn — in pipeline order. Symbolic links are listed (and
    refused when read), not followed: a committed link must not lead out of the workspace."""
    meta = ctx.workspace / ".clowder"
    if meta.is_symlink():
        return [(".clowder", meta)]
    found = [(d.name, d / OUTPUT_FILE) for d in sorted(meta.iterdir())
             if d.name != ctx.job.name and (d.is_symlink() or (d / OUTPUT_FILE).exists() or
                                            (d / OUTPUT_FILE).is_symlink())] if meta.is_dir() else []
    position = ctx.pipeline.position
    return sorted(found, key=lambda item: (position.get(item[0], len(position)), item[0]))


def read_workspace_file(workspace: Path, path: Path, limit: int = WORKSPACE_FILE_LIMIT) -> str:
    """The text of `path`, a file in `workspace`, read only as a regular file that is really
    there: a symbolic link on the way (which a job may commit, pointing anywhere) is refused, as
    are FIFOs and devices (clowder.fsio.read_input). Raises OSError with the reason."""
    here = workspace
    for part in path.relative_to(workspace).parts:
        here = here / part
        if here.is_symlink():
            raise Unreadable(here, "a symbolic link")
    return read_input(path, limit).decode(errors="replace")


def _unreadable(workspace: Path, path: Path, e: OSError) -> str:
    return f"({path.relative_to(workspace)} is unreadable: {e.strerror}; not shown)"


def _upstream(ctx: Context) -> str:
    outputs = upstream_outputs(ctx)
    if not outputs:
        return ""
    direct = set(ctx.job.sources)
    parts = ["# Results of the jobs before you\n\nEach job's structured output, from its "
             "`.clowder/<job>/output.json` in this workspace."]
    for job, path in outputs:
        how = "you start from its work" if job in direct else "an earlier job"
        try:
            text = read_workspace_file(ctx.workspace, path).strip()
        except OSError as e:
            parts.append(f"## {job} ({how})\n\n{_unreadable(ctx.workspace, path, e)}")
            continue
        if len(text) > UPSTREAM_LIMIT:
            text = text[:UPSTREAM_LIMIT] + f"\n... (cut; read {metadata_dir(job)}/{OUTPUT_FILE} for the rest)"
        parts.append(f"## {job} ({how})\n\n{fence(text, 'json')}")
    return "\n\n".join(parts)


def regression_context(ctx: Context) -> dict[str, Any]:
    """The fix-up's context: `.clowder/<job>/regression.json` if present, with the job spec's
    `[regression_context]` over it."""
    merged: dict[str, Any] = {}
    path = ctx.workspace / metadata_dir(ctx.job.name) / REGRESSION_FILE
    try:
        data = json.loads(read_workspace_file(ctx.workspace, path))
    except FileNotFoundError:
        data = None
    except OSError as e:
        data = {"note": _unreadable(ctx.workspace, path, e).strip("()")}
    except ValueError:
        data = None
    if isinstance(data, dict):
        merged.update(data)
    merged.update(ctx.job.regression_context or {})
    return merged


def _regression(ctx: Context) -> str:
    context = regression_context(ctx)
    if not context and not ctx.job.regression_of:
        return ""
    target = ctx.job.regression_of or ctx.job.name
    spawner = context.get("spawner") or ctx.job.parent or "a later job"
    number = context.get("spawner_attempt", context.get("attempt"))
    attempt = f" (attempt {number})" if number is not None else ""
    parts = [f"{REGRESSION_HEADING}\n\nThis job is a fix-up of `{target}`: `{spawner}`{attempt} found a "
             "problem and asked for it. Your workspace starts from that job's work, so its code and "
             "findings are here. Fix the problem; when you succeed, the job that asked runs again on your result."]
    if "reason" in context:
        parts.append(f"Reason: {context['reason']}")
    rest = [f"- {k}: {v}" for k, v in context.items()
            if k not in (*_FIRST_KEYS, *_BLOCK_KEYS, *_HIDDEN_KEYS) and not isinstance(v, dict | list)]
    if rest:
        parts.append("\n".join(rest))
    for key in _BLOCK_KEYS:
        value = context.get(key)
        if isinstance(value, list):
            value = "\n".join(str(v) for v in value)
        if value:
            parts.append(f"{key.replace('_', ' ').capitalize()}:\n\n{fence(str(value).rstrip())}")
    return "\n\n".join(parts)


def _fixups(ctx: Context) -> str:
    """For the attempt that runs again after its fix-ups: what each of them did, so a fix-up that
    changed nothing (and used up one of max_regressions) is seen as such."""
    if not ctx.fixups:
        return ""
    lines = [f"- `{name}`: {how}" for name, how in ctx.fixups]
    return ("# Your fix-ups\n\nThis attempt runs again on the work of the fix-ups you asked for:\n\n"
            + "\n".join(lines))


def _spawning(ctx: Context) -> str:
    job = ctx.job
    if job.max_regressions <= 0:
        return ""
    before = spawn_targets(ctx.pipeline, job.name)
    left = max(0, job.max_regressions - ctx.spawned)
    if left:
        quota = (f"You may ask for {left} more fix-up(s) (max_regressions = {job.max_regressions}, "
                 f"{ctx.spawned} used).")
    else:
        quota = (f"You have asked for all {job.max_regressions} fix-up(s) this job may (max_regressions); "
                 "another request would be refused.")
    targets = f", usually one before you: {', '.join(before)}" if before else ""
    return ("# Asking for a fix-up\n\nIf you find a problem that another job should fix, ask for a fix-up "
            "job and then exit non-zero:\n\n"
            "    clowder spawn JOB --reason \"what is wrong\" [--context-file FILE]\n\n"
            f"JOB is the job that should fix it{targets}. The fix-up starts from your workspace as you leave "
            "it, so it sees your findings (put details in the context file); when it succeeds, this job runs "
            f"again on its result. {quota}{_budget(ctx)}")


def _budget(ctx: Context) -> str:
    parts = []
    if ctx.job.max_cost_usd is not None:
        parts.append(f"this job has spent ${ctx.job_spent_usd:.4f} of its ${ctx.job.max_cost_usd:.2f}")
    if ctx.pipeline.spec.max_cost_usd is not None:
        parts.append(f"the pipeline ${ctx.pipeline_spent_usd:.4f} of its ${ctx.pipeline.spec.max_cost_usd:.2f}")
    if not parts:
        return ""
    return f" Budget: {'; '.join(parts)}. Once a budget is spent, no further attempt or fix-up starts."


def _reporting(ctx: Context) -> str:
    meta = metadata_dir(ctx.job.name)
    outputs = ", ".join(f"`{o}`" for o in ctx.job.outputs)
    declared = f" and the files this job must produce ({outputs})" if outputs else ""
    return ("# How your work is checked\n\n"
            "- Work in this directory, a git repository. Clowder commits everything in it when you exit; "
            "do not commit yourself.\n"
            f"- Success is your exit code (0: done){declared}. Clowder checks those itself; what you say "
            "about your work is not taken as proof.\n"
            f"- Give your structured output as one JSON object: write it to `{meta}/{OUTPUT_FILE}` "
            "(`$CLOWDER_OUTPUT_FILE`), or end your final message with a ```json block. The jobs after you "
            "read it." + _schema_note(ctx, meta))


def _schema_note(ctx: Context, meta: str) -> str:
    from clowder.harness.output_schema import SCHEMA_FILE, declared

    if declared(ctx.pipeline.spec, ctx.job) is None:
        return ""
    return (f" It must match the JSON Schema in `{meta}/{SCHEMA_FILE}`: a missing or non-matching output fails "
            "the attempt.")


def _ancestors(pipeline: Pipeline, job: str) -> set[str]:
    out: set[str] = set()
    frontier = [job]
    while frontier:
        spec = pipeline.jobs.get(frontier.pop())
        for need in spec.needs if spec else ():
            if need.job not in out:
                out.add(need.job)
                frontier.append(need.job)
    return out


def fence(text: str, lang: str = "") -> str:
    """`text` in a fenced code block whose fence is longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def spawn_targets(pipeline: Pipeline, job: str) -> list[str]:
    """The jobs before `job`, in pipeline order: where a fix-up usually goes."""
    before = _ancestors(pipeline, job)
    return [n for n in pipeline.order if n in before]
