"""The scripted agent: a deterministic stand-in for a coding agent — no model, no network — that
follows the steps of its job's (or role's) `script` and logs what it does like a real one.

    python -m clowder.harness.scripted

Steps (TOML tables; each does one thing, and runs only if every condition in its `if` holds):

    { message = "..." }                              log a message
    { write = "calc.py", content = "..." }           write a file (inside the workspace)
    { run = "pytest -q", check = false }             run a command (argv list, or a /bin/sh -c string);
                                                     with check (the default) a failure ends the agent
    { spawn = "dev", reason = "...", context_file = "report.txt" }   `clowder spawn` a fix-up
    { output = { summary = "..." } }                 set the structured output
    { usage = { input_tokens = 10, cost_usd = 0.01 } }   report usage, as a model would
    { exit = 1 }                                     stop with this exit code
    if = { attempt = 1, regression = true, exists = "f", missing = "f", failed = true, prompt_contains = "..." }

It runs on the per-job path, so it imports only the standard library and clowder.harness.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from clowder.harness.actions import ActionLog, describe, tail

ACTIONS = ("message", "write", "run", "spawn", "output", "usage", "exit")
_UNSET = object()


class ScriptError(Exception):
    """A step the agent cannot carry out as written."""


class Agent:
    def __init__(self, log: ActionLog, prompt: str, attempt: int, regression: bool, cwd: Path) -> None:
        self.log = log
        self.prompt = prompt
        self.attempt = attempt
        self.regression = regression
        self.cwd = cwd
        self.last_failed = False
        self.output: Any = _UNSET

    def emit(self, event: dict[str, Any]) -> None:
        self.log.emit(event)
        print(describe(event), flush=True)

    def run(self, steps: list[Any]) -> int:
        """Carry out the steps; the exit code of the agent."""
        for number, step in enumerate(steps, 1):
            if not isinstance(step, dict):
                raise ScriptError(f"step {number}: expected a table, got {step!r}")
            if not self.holds(step.get("if", {}), number):
                continue
            code = self.step(step, number)
            if code is not None:
                return self.finish(code)
        return self.finish(0)

    def finish(self, code: int) -> int:
        if self.output is not _UNSET:
            self.emit({"type": "result", "output": self.output})
        return code

    def holds(self, cond: Any, number: int) -> bool:
        if not isinstance(cond, dict):
            raise ScriptError(f"step {number}: `if` must be a table")
        checks = {
            "attempt": lambda v: self.attempt == v,
            "regression": lambda v: self.regression == v,
            "exists": lambda v: (self.cwd / v).exists(),
            "missing": lambda v: not (self.cwd / v).exists(),
            "failed": lambda v: self.last_failed == v,
            "prompt_contains": lambda v: str(v) in self.prompt,
        }
        unknown = sorted(set(cond) - set(checks))
        if unknown:
            raise ScriptError(f"step {number}: unknown condition {unknown[0]!r} (known: {', '.join(checks)})")
        return all(checks[k](v) for k, v in cond.items())

    def step(self, step: dict[str, Any], number: int) -> int | None:
        """Do one step; an exit code if the agent stops here."""
        kinds = [k for k in ACTIONS if k in step]
        if len(kinds) != 1:
            raise ScriptError(f"step {number}: needs exactly one of {', '.join(ACTIONS)}; it has "
                              f"{', '.join(kinds) or 'none'}")
        kind = kinds[0]
        if kind == "message":
            self.emit({"type": "message", "role": "assistant", "text": str(step["message"])})
        elif kind == "write":
            self.write(str(step["write"]), str(step.get("content", "")), number)
        elif kind in ("run", "spawn"):
            return self.command(step, number)
        elif kind == "output":
            self.output = step["output"]
        elif kind == "usage":
            if not isinstance(step["usage"], dict):
                raise ScriptError(f"step {number}: `usage` must be a table")
            self.emit({"type": "usage", **step["usage"]})
        else:
            return int(step["exit"])
        return None

    def write(self, name: str, content: str, number: int) -> None:
        path = (self.cwd / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(self.cwd.resolve()):
            raise ScriptError(f"step {number}: write {name!r}: only paths inside the workspace")
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        self.emit({"type": "file_changed", "path": name, "change": "update" if existed else "add"})

    def command(self, step: dict[str, Any], number: int) -> int | None:
        if "spawn" in step:
            argv = [sys.executable, "-m", "clowder", "spawn", str(step["spawn"]), "--reason",
                    str(step.get("reason", "asked for by a scripted agent"))]
            if "context_file" in step:
                argv += ["--context-file", str(step["context_file"])]
            shown: str | list[str] = f"clowder spawn {step['spawn']}"
        else:
            run = step["run"]
            argv = ["/bin/sh", "-c", run] if isinstance(run, str) else [str(a) for a in run]
            shown = run if isinstance(run, str) else argv
        try:
            proc = subprocess.run(argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace", check=False)
            code, output = proc.returncode, proc.stdout
        except OSError as e:
            code, output = 127, f"{argv[0]}: {e.strerror}\n"
        sys.stdout.write(output)
        self.emit({"type": "command", "command": shown, "exit_code": code, "output": tail(output)})
        if "run" in step:
            self.last_failed = code != 0
        if code != 0 and step.get("check", True):
            self.emit({"type": "message", "role": "assistant", "text": f"step {number} failed (exit code {code})"})
            return code
        return None


def load_script(path: str | None) -> list[Any]:
    if not path:
        raise ScriptError("this job has no script: the built-in `scripted` harness (no model) follows the "
                          "`script` of the job or of its role; give it one, or set `harness` (or clowder.toml's "
                          "default_harness) to a real agent CLI such as claude, codex or aider")
    steps = json.loads(Path(path).read_text())
    if not isinstance(steps, list):
        raise ScriptError(f"{path}: expected a list of steps")
    return steps


def main() -> int:
    env = os.environ
    try:
        steps = load_script(env.get("CLOWDER_SCRIPT_FILE"))
        prompt = Path(env["CLOWDER_PROMPT_FILE"]).read_text()
        log = ActionLog(env["CLOWDER_ACTIONS_FILE"])
    except (ScriptError, KeyError, OSError, ValueError) as e:
        what = f"{e} is not set (run agent jobs through clowder)" if isinstance(e, KeyError) else str(e)
        print(f"clowder scripted agent: {what}", file=sys.stderr)
        return 2
    attempt = int(env.get("CLOWDER_ATTEMPT", "1") or 1)
    agent = Agent(log, prompt, attempt, bool(env.get("CLOWDER_REGRESSION_OF")), Path.cwd())
    agent.emit({"type": "message", "role": "system",
                "text": f"scripted agent: job {env.get('CLOWDER_JOB', '?')}, attempt {attempt}, "
                        f"{len(steps)} step(s), prompt of {len(prompt)} characters"})
    try:
        return agent.run(steps)
    except ScriptError as e:
        agent.emit({"type": "message", "role": "error", "text": str(e)})
        print(f"clowder scripted agent: {e}", file=sys.stderr)
        return 2
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
