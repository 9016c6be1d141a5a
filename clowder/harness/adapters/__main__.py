"""The adapter runner: `python -m clowder.harness.adapters NAME -- COMMAND...`.

Runs an agent CLI with the prompt file on its stdin, keeps its raw stdout in
`.clowder/<job>/raw.*`, translates it line by line into the action log, and exits with the
CLI's exit code. Its stderr goes to the attempt's log unchanged. A SIGTERM sent to the job's
process group reaches the CLI as well; the runner itself waits for the CLI to end so the
events it printed last are still logged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from clowder.harness.actions import ActionLog, describe
from clowder.harness.adapters import NAMES, translator
from clowder.harness.adapters.linger import Watch, result_grace

EXIT_USAGE = 2
EXIT_NOT_FOUND = 127
EXIT_FAILED = 1  # the CLI exited 0 but reported a failure (a `failure` event: aider after an API error)


def _ignore(signum: int, frame: object) -> None:
    """A handler, not SIG_IGN: an ignored signal would stay ignored in the CLI after exec."""


def _relative(event: dict[str, Any]) -> dict[str, Any]:
    """A changed file's path relative to the workspace (the CLIs report absolute paths)."""
    path = event.get("path")
    if event["type"] == "file_changed" and isinstance(path, str) and os.path.isabs(path):
        rel = os.path.relpath(path)
        if not rel.startswith(".." + os.sep) and rel != "..":
            return {**event, "path": rel}
    return event


def main(args: list[str]) -> int:
    if len(args) < 3 or args[0] not in NAMES or args[1] != "--":
        print(f"usage: python -m clowder.harness.adapters {{{','.join(NAMES)}}} -- COMMAND...", file=sys.stderr)
        return EXIT_USAGE
    try:
        actions, prompt = os.environ["CLOWDER_ACTIONS_FILE"], os.environ["CLOWDER_PROMPT_FILE"]
    except KeyError as e:
        print(f"clowder adapter: {e} is not set (run agent jobs through clowder)", file=sys.stderr)
        return EXIT_USAGE
    tr = translator(args[0])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    log = ActionLog(actions)
    prepare = getattr(tr, "prepare", None)
    if prepare is not None:  # a translator may ready the workspace for its CLI (aider: .git/info/exclude)
        prepare()
    try:
        with open(prompt, "rb") as stdin:
            proc = subprocess.Popen(args[2:], stdin=stdin, stdout=subprocess.PIPE)
    except OSError as e:
        print(f"clowder adapter: cannot run {args[2]!r}: {e.strerror} (install it, or set the harness "
              "command in clowder.toml [harnesses])", file=sys.stderr)
        return EXIT_NOT_FOUND
    assert proc.stdout is not None
    failure: dict[str, Any] | None = None  # the last `failure` event: said on stderr, fails a run that exited 0
    watch = Watch(proc, tr, result_grace())
    with (Path(actions).parent / tr.raw_name).open("ab") as raw:
        for data in proc.stdout:
            raw.write(data)
            raw.flush()
            line = data.decode(errors="replace").rstrip("\r\n")
            if tr.echo_raw or not line.lstrip().startswith("{"):
                print(line, flush=True)
            for event in tr.feed(line):
                failure = event if event["type"] == "failure" else failure
                logged = log.emit(_relative(event))
                if watch.shows(logged):
                    print(describe(logged), flush=True)
    code = watch.exit_code(proc.wait())
    for event in tr.finish(code):
        failure = event if event["type"] == "failure" else failure
        print(describe(log.emit(_relative(event))), flush=True)
    log.close()
    if failure is not None:
        print(f"clowder adapter: {args[2]} failed ({failure.get('kind')}): {failure.get('text')}", file=sys.stderr)
        if code == 0:
            return EXIT_FAILED
    return code if code >= 0 else 128 - code  # killed by signal N: report it as a shell would


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
