"""`clowder doctor`: whether the agent CLIs the root's harnesses run would work here. For each
harness the root uses (default_harness, and every role's and job's `harness` in its templates
and pipelines): is its program on PATH, which version it is and whether Clowder is tested with
it, whether its `--help` lists every flag Clowder passes, and whether its API key is set."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clowder import schema
from clowder.harness import config as harness_config
from clowder.harness.tested import TESTED
from clowder.spec import Config, Harness
from clowder.tree import Root

RUN_TIMEOUT = 30.0  # seconds for `--version` or `--help` (aider imports a lot before answering)
VERSION_RE = re.compile(r"\d+\.\d+\.\d+")

# The variables each CLI reads its API key from (any one will do). aider's depends on its
# model; these are the providers it is most often run with.
KEYS: Mapping[str, tuple[str, ...]] = {
    "claude": ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"),
    "codex": ("OPENAI_API_KEY", "CODEX_API_KEY"),
    "aider": ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY", "OPENROUTER_API_KEY"),
}


@dataclass(frozen=True)
class Check:
    """One harness's row: each column's text, and whether it would make the harness fail."""

    harness: str
    program: str
    found: str = "-"
    version: str = "-"
    tested: str = "-"
    flags: str = "-"
    key: str = "-"
    failing: bool = False

    def row(self) -> list[str]:
        return [self.harness, self.program, self.found, self.version, self.tested, self.flags, self.key]


HEADERS = ("HARNESS", "PROGRAM", "FOUND", "VERSION", "TESTED", "FLAGS", "KEY")


def used_harnesses(root: Root, config: Config) -> list[str]:
    """The harnesses the root names, default_harness (else the built-in default) first. Read
    from the raw TOML: a broken spec is `clowder validate`'s to report, not a reason to stop."""
    names: list[object] = [config.default_harness or harness_config.DEFAULT]
    for path in _spec_files(root):
        data, _ = schema.load_toml(path)
        names += _named(data) if isinstance(data, dict) else []
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))


def _spec_files(root: Root) -> Iterable[Path]:
    for name in root.template_names():
        yield root.templates_dir / f"{name}.toml"
    for name in root.pipeline_names():
        paths = root.pipeline(name)
        yield paths.spec_file
        yield from sorted(paths.jobs_dir.glob("*.toml"))


def _named(data: Mapping[str, Any]) -> list[object]:
    """Every `harness` of a spec file: its own (a job file), its roles' and its jobs'."""
    tables = [data]
    for key in ("roles", "jobs"):
        if isinstance(data.get(key), dict):
            tables += [t for t in data[key].values() if isinstance(t, dict)]
    return [t["harness"] for t in tables if "harness" in t]


def check(name: str, config: Config, environ: Mapping[str, str]) -> Check:
    harness = harness_config.available(config).get(name)
    if harness is None:
        return Check(name, "-", "unknown harness", failing=True)
    if harness.adapter == "actions" and harness.command == harness_config.BUILTIN["scripted"].command:
        return Check(name, "(clowder's scripted agent)", "built in")
    words = shlex.split(harness.command) if isinstance(harness.command, str) else list(harness.command)
    program = words[0] if words else ""
    key, key_ok = _key(harness, environ) if harness.adapter in KEYS else ("-", True)
    where = _which(program, {**environ, **harness.env})
    if where is None:
        return Check(name, program or "-", "not found", key=key, failing=True)
    if harness.adapter not in TESTED or isinstance(harness.command, str) or Path(program).name != harness.adapter:
        # A custom command (a shell string, an unknown program): found is all there is to say.
        return Check(name, program, where, tested="not a known CLI", key=key, failing=not key_ok)
    version, runs = _version(where, environ)
    tested = TESTED[harness.adapter].version
    flags, flags_ok = _flags(harness, where, environ) if runs else ("-", False)
    return Check(name, program, where, version, ("yes" if version == tested else f"no (tested: {tested})") if runs
                 else "-", flags, key, failing=not (runs and flags_ok and key_ok))


def _which(program: str, environ: Mapping[str, str]) -> str | None:
    if not program or "{" in program:
        return None
    return shutil.which(program, path=environ.get("PATH", ""))


def _run(argv: list[str], environ: Mapping[str, str]) -> tuple[int | None, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=RUN_TIMEOUT,
                              env={**environ, "NO_COLOR": "1", "COLUMNS": "200"}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"no answer in {RUN_TIMEOUT:.0f}s"
    except OSError as e:
        return None, str(e.strerror or e)
    return done.returncode, done.stdout + done.stderr


def _version(program: str, environ: Mapping[str, str]) -> tuple[str, bool]:
    code, out = _run([program, "--version"], environ)
    match = VERSION_RE.search(out) if code == 0 else None
    if match is None:
        last = out.strip().splitlines()[-1:] or [f"exit {code}"]
        return f"cannot run: {last[0][:80]}", False
    return match.group(0), True


def passed_flags(harness: Harness) -> list[str]:
    """The options Clowder passes to the harness's CLI: those of its command and those it may
    add (its budget, output schema, model)."""
    command = harness.command if isinstance(harness.command, tuple) else ()
    own = [w.split("=", 1)[0] for w in command[1:] if w.startswith("-") and w != "-" and "{" not in w]
    added = list(harness_config.FLAGS.get(harness.adapter, {}).values())
    if harness_config.flag_position(harness) is None:
        added = []
    return list(dict.fromkeys(own + added))


def help_argv(harness: Harness, program: str) -> list[str]:
    """`<program> [subcommand...] --help`: the words before the first option are subcommands
    (`codex exec`), whose help lists their own options."""
    command = harness.command if isinstance(harness.command, tuple) else ()
    subcommands = []
    for word in command[1:]:
        if word.startswith("-") or "{" in word:
            break
        subcommands.append(word)
    return [program, *subcommands, "--help"]


def _flags(harness: Harness, program: str, environ: Mapping[str, str]) -> tuple[str, bool]:
    code, out = _run(help_argv(harness, program), environ)
    if code != 0:
        return f"--help failed (exit {code})", False
    missing = [f for f in passed_flags(harness) if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", out)]
    if missing:
        return "unknown: " + " ".join(missing), False
    return "ok", True


def _key(harness: Harness, environ: Mapping[str, str]) -> tuple[str, bool]:
    names = KEYS.get(harness.adapter, ())
    env = {**environ, **harness.env}
    set_ = [n for n in names if env.get(n)]
    if set_:
        return f"{set_[0]} set", True
    login = _login_file(harness.adapter, environ)
    if login is not None:
        return f"logged in ({login})", True
    return f"not set: {' or '.join(names)}", False


def _login_file(adapter: str, environ: Mapping[str, str]) -> str | None:
    """The credentials a CLI's own login stored (`claude login`, `codex login`), if any."""
    home = Path(environ.get("HOME", "~")).expanduser()
    files = {"claude": [home / ".claude" / ".credentials.json"],
             "codex": [Path(environ.get("CODEX_HOME", home / ".codex")) / "auth.json"]}
    return next((str(f) for f in files.get(adapter, []) if f.is_file()), None)


def doctor(root: Root, config: Config, environ: Mapping[str, str] | None = None) -> list[Check]:
    env = dict(os.environ if environ is None else environ)
    return [check(name, config, env) for name in used_harnesses(root, config)]
