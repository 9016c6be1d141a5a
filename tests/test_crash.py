"""An error Clowder did not expect: exit 3, one line naming a crash log that holds the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from clowder.tree import Root


def clowder_with_a_bug(where: str, args: list[str], cwd: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """The real `clowder` command line in a subprocess, with `where` (module.function) made to
    raise what no code path expects: a stand-in for any bug."""
    module, function = where.rsplit(".", 1)
    code = textwrap.dedent(f"""
        import sys
        import {module} as target

        def bug(*args, **kwargs):
            raise KeyError("a key nobody expected")

        target.{function} = bug
        from clowder.cli import main
        sys.argv = ["clowder", *{args!r}]
        main()
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TMPDIR": str(tmp)})


def test_a_crash_exits_three_with_one_line_and_a_crash_log_under_the_root(root: Root, tmp_path: Path) -> None:
    result = clowder_with_a_bug("clowder.views.reader.status_lines", ["status"], root.path, tmp_path)
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    logs = list((root.state_dir / "crash").iterdir())
    assert len(logs) == 1
    assert lines[0] == (f"error: Clowder failed unexpectedly: KeyError: 'a key nobody expected'; "
                        f"the traceback is in {logs[0]} (please report it)")
    text = logs[0].read_text()
    assert "context: clowder status" in text
    assert "Traceback (most recent call last):" in text and 'in bug\nKeyError: \'a key nobody expected\'' in text


def test_a_crash_outside_a_root_writes_its_log_in_the_temp_dir(tmp_path: Path) -> None:
    result = clowder_with_a_bug("clowder.template.init_root", ["init", "here"], tmp_path, tmp_path)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    logs = list(tmp_path.glob("clowder-crash-*/*.log"))
    assert len(logs) == 1 and f"the traceback is in {logs[0]}" in result.stderr


def test_expected_errors_keep_their_exit_codes(root: Root, tmp_path: Path) -> None:
    usage = subprocess.run([sys.executable, "-m", "clowder", "status", "--no-such-option"], cwd=root.path,
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "No such option" in usage.stderr
    missing = subprocess.run([sys.executable, "-m", "clowder", "status", "nope"], cwd=root.path,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "no such pipeline" in missing.stderr
    assert not (root.state_dir / "crash").exists()
