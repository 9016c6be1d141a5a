"""Harness configuration: the built-in harnesses, clowder.toml's `[harnesses.<name>]`, which
one a job uses, and its command template expanded into the argv that runs."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import PurePath

from clowder.errors import ClowderError
from clowder.spec import Config, Harness, JobSpec, PipelineSpec

DEFAULT = "scripted"
ADAPTERS = ("actions", "claude", "codex", "aider")
PLACEHOLDERS = ("prompt_file", "prompt", "actions_file", "output_file", "workspace", "root", "pipeline", "job",
                "attempt", "role", "python", "model")
PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")
# The prompt goes into argv only through {prompt}; Linux caps one argument at 128 KiB.
MAX_PROMPT_ARG = 100_000

# Harnesses that work without any configuration. A `[harnesses.<name>]` table of the same
# name replaces one. The CLIs get the prompt on stdin (the adapter runner feeds it):
# - Claude Code: `claude -p` reads the prompt from stdin; `--output-format stream-json` prints one
#   JSON message per line and in print mode needs `--verbose`; `--permission-mode acceptEdits` with
#   `--allowedTools` lets it edit and run commands headless.
#   https://docs.anthropic.com/en/docs/claude-code/headless,
#   https://docs.anthropic.com/en/docs/claude-code/cli-reference
# - Codex: `codex exec` is the non-interactive mode, `--json` streams JSONL events, `--sandbox
#   workspace-write` lets it edit the workspace and run commands (`--full-auto` is gone since 0.171:
#   exit 2), and `-` reads the prompt from stdin.
#   https://github.com/openai/codex/blob/main/docs/exec.md
# - aider: `--message-file` sends one message and exits, `--yes-always` answers every question,
#   `--no-auto-commits` leaves commits to Clowder, `--no-stream --no-pretty` give plain text.
#   https://aider.chat/docs/scripting.html, https://aider.chat/docs/config/options.html
#   AIDER_QUIET skips its start-up checks and notices (a network call each, text that is not the
#   agent's; --no-gitignore: Clowder's workspace is no place to add .aider* to .gitignore), and
#   COLUMNS=1000 stops rich from wrapping its lines at 80 columns in a pipe (even with --no-pretty).
AIDER_QUIET = ("--no-check-update", "--no-analytics", "--no-show-release-notes", "--no-gitignore",
               "--no-show-model-warnings")
BUILTIN: Mapping[str, Harness] = {
    "scripted": Harness("scripted", ("{python}", "-m", "clowder.harness.scripted"), {}, "actions"),
    "claude": Harness("claude", ("claude", "-p", "--output-format", "stream-json", "--verbose",
                                 "--permission-mode", "acceptEdits", "--allowedTools",
                                 "Bash,Read,Edit,Write,Glob,Grep"), {}, "claude"),
    "codex": Harness("codex", ("codex", "exec", "--json", "--sandbox", "workspace-write", "-"), {}, "codex"),
    "aider": Harness("aider", ("aider", "--message-file", "{prompt_file}", "--yes-always", "--no-auto-commits",
                               "--no-stream", "--no-pretty", *AIDER_QUIET), {"COLUMNS": "1000"}, "aider"),
}


# What Clowder adds to a built-in CLI's argv when a job needs it, by adapter: the flag of each
# setting (see /work/shared/agent-captures/*-help.txt: `claude --help`, `codex exec --help`).
# Claude takes the schema as JSON text, Codex as a file.
FLAGS: Mapping[str, Mapping[str, str]] = {
    "claude": {"model": "--model", "max_budget_usd": "--max-budget-usd", "output_schema": "--json-schema"},
    "codex": {"model": "--model", "output_schema_file": "--output-schema"},
}


@dataclass(frozen=True)
class Extras:
    """Per-attempt settings passed to a CLI that supports them (see FLAGS); None: not passed."""

    model: str | None = None
    max_budget_usd: str | None = None
    output_schema: str | None = None  # the JSON Schema as JSON text
    output_schema_file: str | None = None


def available(config: Config) -> dict[str, Harness]:
    """Every harness a job may name: the built-in ones and clowder.toml's. A table without a
    `command` that names a built-in one sets its model or env and keeps its command."""
    configured = {
        name: replace(BUILTIN[name], env=h.env or BUILTIN[name].env, model=h.model)
        if not h.command and name in BUILTIN else h
        for name, h in config.harnesses.items()
    }
    return {**BUILTIN, **configured}


def harness_name(config: Config, pipeline: PipelineSpec, job: JobSpec) -> str:
    """The job's harness, else its role's, else clowder.toml's default_harness, else scripted."""
    role = pipeline.roles.get(job.agent or "")
    return job.harness or (role.harness if role else None) or config.default_harness or DEFAULT


def resolve(config: Config, pipeline: PipelineSpec, job: JobSpec) -> Harness:
    name = harness_name(config, pipeline, job)
    harnesses = available(config)
    if name not in harnesses:
        known = ", ".join(sorted(harnesses))
        raise ClowderError(f"job {job.name}: unknown harness {name!r} (clowder.toml [harnesses] and the "
                           f"built-in ones define: {known})")
    return harnesses[name]


def unknown_placeholders(command: tuple[str, ...] | str) -> list[str]:
    parts = [command] if isinstance(command, str) else list(command)
    return sorted({m for part in parts for m in PLACEHOLDER_RE.findall(part) if m not in PLACEHOLDERS})


def expand(text: str, values: Mapping[str, str], quote: bool = False) -> str:
    """`{placeholder}`s of `text` replaced by `values` (shell-quoted in a string command);
    anything else in braces is left as it is."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            return m.group(0)
        return shlex.quote(values[m.group(1)]) if quote else values[m.group(1)]

    return PLACEHOLDER_RE.sub(sub, text)


def flag_position(harness: Harness) -> int | None:
    """Where Clowder's flags go in the harness's argv: after `claude`, after `codex exec`; None
    for a command that does not run the adapter's CLI itself (a shell string, a wrapper)."""
    command = harness.command
    if isinstance(command, str) or not command or harness.adapter not in FLAGS:
        return None
    if PurePath(command[0]).name != harness.adapter:
        return None
    if harness.adapter == "codex":
        return 2 if len(command) > 1 and command[1] == "exec" else None
    return 1


def extra_args(harness: Harness, extras: Extras) -> tuple[str, ...]:
    """The flags of the settings `extras` gives that the harness's CLI supports."""
    flags = FLAGS.get(harness.adapter, {})
    settings = {"model": extras.model or harness.model, "max_budget_usd": extras.max_budget_usd,
                "output_schema": extras.output_schema, "output_schema_file": extras.output_schema_file}
    return tuple(part for key, flag in flags.items() if settings.get(key) is not None
                 for part in (flag, str(settings[key])))


def argv(harness: Harness, values: Mapping[str, str], extras: Extras = Extras()) -> tuple[str, ...]:
    """The argv that runs `harness`: its command template expanded (with the flags of `extras`
    a built-in CLI supports) and, for an adapted CLI, wrapped in the adapter runner that turns
    its output into the action log."""
    if "prompt" in values and len(values["prompt"]) > MAX_PROMPT_ARG and _uses(harness.command, "prompt"):
        raise ClowderError(f"harness {harness.name}: the prompt is too long to pass as {{prompt}} "
                           f"({len(values['prompt'])} characters); use {{prompt_file}} or stdin")
    if isinstance(harness.command, str):
        command: tuple[str, ...] = ("/bin/sh", "-c", expand(harness.command, values, quote=True))
    else:
        command = tuple(expand(part, values) for part in harness.command)
        at = flag_position(harness)
        if at is not None:
            command = (*command[:at], *extra_args(harness, extras), *command[at:])
    if not command:
        raise ClowderError(f"harness {harness.name}: empty command")
    if harness.adapter == "actions":
        return command
    return (values.get("python", sys.executable), "-m", "clowder.harness.adapters", harness.adapter, "--", *command)


def _uses(command: tuple[str, ...] | str, name: str) -> bool:
    parts = [command] if isinstance(command, str) else list(command)
    return any(name in PLACEHOLDER_RE.findall(part) for part in parts)


def env(harness: Harness, values: Mapping[str, str]) -> dict[str, str]:
    return {k: expand(v, values) for k, v in harness.env.items()}
