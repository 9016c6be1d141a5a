"""Fuzzing every file kind a user or a tool can put in a root: TOML generated from its schema
(schemas/*.json), then mutated (wrong types, huge numbers and strings, NUL, bytes that are not
UTF-8, deep nesting, truncation) or replaced by a special file. `clowder validate` accepts each
or refuses it (exit 2) naming the file and the key; a daemon serving that root finishes a healthy
pipeline beside it. CLOWDER_FUZZ_EXAMPLES=2000 runs a big campaign (the everyday suite runs few)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clowder.cli import main
from clowder.driver import Driver
from clowder.errors import ClowderError
from clowder.state import PipelineState, read_pipeline_status
from clowder.template import init_root
from clowder.tree import Root
from tests.conftest import REPO, write

EXAMPLES = int(os.environ.get("CLOWDER_FUZZ_EXAMPLES", "0"))
# The everyday suite: few examples per kind, always the same ones (derandomized), so that it is
# fast and never flaky; the big campaign draws many.
VALIDATE_EXAMPLES = EXAMPLES or 40
DAEMON_EXAMPLES = max(EXAMPLES // 10, 3) if EXAMPLES else 3
FUZZ = dict(deadline=None, derandomize=not EXAMPLES, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])

# Request files have no JSON schema (only Clowder writes them); this is what `requests.drop` writes.
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["action"],
    "properties": {
        "action": {"enum": ["cancel", "retry", "spawn"]},
        "job": {"type": "string"}, "spawner": {"type": "string"},
        "attempt": {"type": "integer", "minimum": 1, "maximum": 9}, "reason": {"type": "string"},
        "context": {"type": "string"}, "created_at": {},
    },
}


@dataclass(frozen=True)
class Kind:
    """A file kind: its schema and where a fuzzed one goes in a root."""

    name: str
    schema: dict[str, Any]
    where: str


def _schema(name: str) -> dict[str, Any]:
    return json.loads((REPO / "schemas" / f"{name}.schema.json").read_text())


KINDS = [
    Kind("clowder.toml", _schema("clowder"), "clowder.toml"),
    Kind("template", _schema("template"), "templates/fz.toml"),
    Kind("pipeline.toml", _schema("pipeline"), "pipelines/f/pipeline.toml"),
    Kind("job", _schema("job"), "pipelines/f/jobs/j.toml"),
    Kind("job status", _schema("status"), "pipelines/f/status/j.toml"),
    Kind("pipeline status", _schema("status"), "pipelines/f/status.toml"),
    Kind("request", REQUEST_SCHEMA, "pipelines/f/requests/20260101T000000000000-1-x.toml"),
]
KIND_IDS = [k.name for k in KINDS]

# -- TOML from a schema ---------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True)
DURATIONS = st.one_of(st.sampled_from(["1s", "2s", "500ms", "1m", "1h30m", "0s", "365d", "10y", "-1s"]),
                      st.integers(-2, 100), st.floats(0, 100, allow_nan=False))
# The daemon runs job commands: generated ones are chosen from these, never random shell text.
COMMANDS = st.sampled_from([["true"], "true", ["false"], "exit 3", ["sh", "-c", "exit 1"], ["/nonexistent"],
                            "sleep 0.1"])
TIMES = st.datetimes(min_value=datetime(1, 1, 2), timezones=st.just(UTC))
ANY_SCALAR = st.one_of(st.text(max_size=8), st.integers(), TIMES, st.booleans())


def from_schema(s: dict[str, Any], key: str = "") -> st.SearchStrategy[Any]:
    """Values that (mostly) match JSON schema `s`; `key` is the property holding them."""
    if key in ("command",):
        return COMMANDS
    if "seconds, or a string like" in s.get("description", ""):
        return DURATIONS
    if "enum" in s:
        return st.sampled_from(s["enum"])
    if "anyOf" in s:
        rest = {k: v for k, v in s.items() if k != "anyOf"}
        return st.one_of([from_schema({**rest, **alt}, key) for alt in s["anyOf"]])
    kind = s.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**s, "type": t}, key) for t in kind])
    if kind is None:
        return ANY_SCALAR
    return _typed(s, kind, key)


def _typed(s: dict[str, Any], kind: str, key: str) -> st.SearchStrategy[Any]:
    if kind == "object":
        return _object(s)
    if kind == "array":
        items = from_schema(s.get("items", {}), key)
        unique = s.get("uniqueItems", False) and s.get("items", {}).get("type") == "string"
        return st.lists(items, min_size=s.get("minItems", 0), max_size=4, unique=unique)
    if kind == "string":
        if "pattern" in s:
            return st.from_regex(s["pattern"], fullmatch=True)
        return st.one_of(NAMES, st.text(max_size=12)).filter(lambda t: len(t) >= s.get("minLength", 0))
    if kind == "integer":
        return st.integers(s.get("minimum", -(2**63)), s.get("maximum", 2**63 - 1))
    if kind == "number":
        low, high = s.get("minimum", -1e9), s.get("maximum", 1e9)
        return st.one_of(st.integers(int(low), int(high)), st.floats(low, high, allow_nan=False))
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"no strategy for type {kind!r}")


def _object(s: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props: dict[str, Any] = s.get("properties", {})
    required = s.get("required", [])
    fixed = st.fixed_dictionaries({k: from_schema(props[k], k) for k in required},
                                  optional={k: from_schema(v, k) for k, v in props.items() if k not in required})
    extra = s.get("additionalProperties", True)
    if isinstance(extra, dict):
        more = st.dictionaries(NAMES, from_schema(extra), min_size=s.get("minProperties", 0), max_size=3)
        return st.builds(lambda a, b: {**b, **a}, fixed, more)
    return fixed


# -- mutations --------------------------------------------------------------------------------

HOSTILE = st.one_of(
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400, float("inf"), float("-inf"), float("nan"), 1e308,
                     -1, 0, "", "a\x00b", "\x00", "-rf", "../../etc", [], {}, [[]], {"x": {"y": {}}},
                     True, "\u202e\ufeff", "x" * 300_000, ["x"] * 10_000]),
    TIMES, st.integers(), st.text(max_size=6),
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """`value` with one value somewhere inside (or a key) replaced by something hostile."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: draw(mutated(value[key]))}
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], draw(mutated(value[i])), *value[i + 1:]]
    if isinstance(value, dict) and draw(st.booleans()):
        return {**value, draw(st.sampled_from(["unknown", "a\x00", "", "stat e", "x" * 1000])): draw(HOSTILE)}
    return draw(HOSTILE)


def _deep(depth: int) -> bytes:
    return b"x = " + b"[" * depth + b"]" * depth + b"\n"


DAMAGES = ["truncate", "not utf-8", "nul", "deep", "deep table", "bom", "crlf"]


@st.composite
def broken_bytes(draw: st.DrawFn, text: bytes, how: str | None = None) -> bytes:
    """The file's bytes damaged below the TOML level."""
    how = how or draw(st.sampled_from(DAMAGES))
    at = draw(st.integers(0, len(text)))
    if how == "truncate":
        return text[:at]
    if how == "not utf-8":
        return text[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"])) + text[at:]
    if how == "nul":
        return text[:at] + b"\x00" + text[at:]
    if how == "deep":
        return text + _deep(draw(st.sampled_from([100_000, 5000, 300, 10])))  # the first is tried first
    if how == "deep table":
        return text + b"y = " + b"{a = " * 2000 + b"1" + b"}" * 2000 + b"\n"
    if how == "bom":
        return b"\xef\xbb\xbf" + text
    return text.replace(b"\n", b"\r\n")


# One strategy per kind, built once: a strategy made anew for each example spent most of the fuzz
# tests' time (hypothesis checks each new strategy object whole before drawing from it); the values
# drawn are the same either way.
_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {}


def schema_values(kind: Kind) -> st.SearchStrategy[Any]:
    if kind.name not in _STRATEGIES:
        _STRATEGIES[kind.name] = from_schema(kind.schema)
    return _STRATEGIES[kind.name]


@st.composite
def document(draw: st.DrawFn, kind: Kind) -> bytes:
    """A file of `kind`: as its schema says, or mutated, or damaged."""
    value = draw(schema_values(kind))
    how = draw(st.sampled_from(["valid", "value", "value", "bytes"]))
    if how == "value":
        value = draw(mutated(value))
        value = value if isinstance(value, dict) else {"state": value}  # a TOML document is a table
    try:
        text = tomli_w.dumps(value).encode()
    except (TypeError, ValueError, AttributeError):  # tomli_w cannot write it: write the text by hand
        text = f"x = {json.dumps(repr(value))[:1000]}\n".encode()
    return draw(broken_bytes(text)) if how == "bytes" else text


# -- roots --------------------------------------------------------------------------------------

HEALTHY = {"a": 'command = ["true"]\n', "b": 'command = "echo b > b.txt"\nneeds = ["a"]\n'}


def make_root(base: Path) -> Root:
    """A root with a healthy pipeline `h` and a pipeline `f` whose files are fuzzed."""
    root = init_root(base / "root")
    write(root.pipelines_dir / "h" / "pipeline.toml", 'prompt = "healthy"\n')
    for job, text in HEALTHY.items():
        write(root.pipelines_dir / "h" / "jobs" / f"{job}.toml", text)
    write(root.pipelines_dir / "f" / "pipeline.toml", 'prompt = "fuzzed"\n')
    write(root.pipelines_dir / "f" / "jobs" / "j.toml", 'command = ["true"]\n')
    return root


@contextmanager
def fresh_root() -> Iterator[Root]:
    with tempfile.TemporaryDirectory(prefix="clowder-fuzz-") as d:
        yield make_root(Path(d))


@contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    """Fail (not hang) if the block takes longer than `seconds`."""
    def expired(signum: int, frame: object) -> None:
        raise AssertionError(f"{what} hung for {seconds}s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def validate(root: Root) -> tuple[int, str]:
    """`clowder validate` in-process, from the root; an exception escapes (a crash fails the test)."""
    old = os.getcwd()
    os.chdir(root.path)
    try:
        with time_limit(30, "clowder validate"):
            result = CliRunner().invoke(main, ["validate"], catch_exceptions=False, prog_name="clowder")
    finally:
        os.chdir(old)
    return result.exit_code, result.output


def check_verdict(code: int, output: str, path: Path) -> None:
    """Accepted, or refused naming the file and a key."""
    assert code in (0, 2), f"exit {code}:\n{output}"
    if code == 2:
        named = [line for line in output.splitlines() if line.startswith(f"{path}: ")]
        assert named, f"the problem does not name {path}:\n{output}"
        for line in named:
            key = line[len(f"{path}: "):].split(": ", 1)[0]
            assert key and len(line.split(": ", 2)) == 3, f"no key in {line!r}"


def serve_until_healthy_done(root: Root, timeout: float = 60) -> list[str]:
    """Run a daemon (in-process) on the whole root until the healthy pipeline ends; its log."""
    lines: list[str] = []
    try:
        driver = Driver(root, log=lines.append)
    except ClowderError as e:  # a clowder.toml it refuses: it must say so, not start
        return [f"refused: {e}"]
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            driver.serve()
        except BaseException as e:  # reported by the test
            failure.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    h = root.pipeline("h").status_file
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and thread.is_alive():
            if h.exists() and read_pipeline_status(h).state.terminal:
                break
            time.sleep(0.02)
    finally:
        driver.stop()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the daemon did not stop"
    assert not failure, f"the daemon died: {failure[0]!r}\n" + "\n".join(lines)
    assert h.exists() and read_pipeline_status(h).state is PipelineState.SUCCEEDED, "\n".join(lines)
    crashes = list((root.state_dir / "crash").glob("*")) if (root.state_dir / "crash").is_dir() else []
    assert not crashes, crashes[0].read_text()
    return lines


# -- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_validate_accepts_or_names_the_file_and_key_of_any_generated_file(kind: Kind) -> None:
    @settings(max_examples=VALIDATE_EXAMPLES, **FUZZ)
    @given(data=document(kind))
    def check(data: bytes) -> None:
        with fresh_root() as root:
            path = root.path / kind.where
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            check_verdict(*validate(root), path)

    check()


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_daemon_finishes_a_healthy_pipeline_beside_any_generated_file(kind: Kind) -> None:
    @settings(max_examples=DAEMON_EXAMPLES, **FUZZ)
    @given(data=document(kind))
    def check(data: bytes) -> None:
        with fresh_root() as root:
            path = root.path / kind.where
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            code, output = validate(root)
            lines = serve_until_healthy_done(root)
            if lines[:1] and lines[0].startswith("refused: "):
                assert kind.name == "clowder.toml" and code == 2, (lines, output)

    check()


# A valid file of each kind, for the damages every everyday run must try (the generated ones may miss one).
MINIMAL = {"clowder.toml": "max_parallel = 2\n", "template": 'jobs = { a = { command = ["true"] } }\n',
           "pipeline.toml": 'prompt = "p"\n', "job": 'command = ["true"]\nneeds = []\n',
           "job status": 'state = "pending"\n', "pipeline status": 'state = "pending"\n',
           "request": 'action = "cancel"\n'}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_every_damage_to_every_kind_is_accepted_or_named(kind: Kind, damage: str) -> None:
    @settings(max_examples=3, **FUZZ)
    @given(data=broken_bytes(MINIMAL[kind.name].encode(), damage))
    def check(data: bytes) -> None:
        with fresh_root() as root:
            path = root.path / kind.where
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            check_verdict(*validate(root), path)

    check()


SPECIALS = ["directory", "fifo", "link out", "link in", "dangling link", "link loop", "/dev/zero", "/dev/null"]


def make_special(root: Root, path: Path, special: str, outside: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    was = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    if path.exists() or path.is_symlink():
        path.unlink()
    match special:
        case "directory":
            path.mkdir()
        case "fifo":
            os.mkfifo(path)
        case "link out":
            path.symlink_to(outside)
        case "link in":
            target = root.path / "shared" / path.name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(was)
            path.symlink_to(target)
        case "dangling link":
            path.symlink_to(root.path / "nowhere")
        case "link loop":
            path.symlink_to(path)
        case _:
            path.symlink_to(special)


@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_special_files_are_refused_or_read_and_never_hang(kind: Kind, special: str, tmp_path: Path) -> None:
    root = make_root(tmp_path)
    path = root.path / kind.where
    outside = write(tmp_path / "outside.toml", 'x = 1\n')
    make_special(root, path, special, outside)
    code, output = validate(root)
    if kind.name == "clowder.toml" and special not in ("link in", "link out"):
        # Only a file marks a root, as only a .git marks a repository: this is no root.
        assert (code, output) == (2, f"error: no clowder.toml found in {root.path} or any parent directory; run "
                                     "`clowder init` to create a root, or pass --root / set CLOWDER_ROOT\n")
        return
    check_verdict(code, output, path)


def test_a_daemon_finishes_a_healthy_pipeline_among_special_files_of_every_kind(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    outside = write(tmp_path / "outside.toml", 'command = ["true"]\n')
    d = root.pipelines_dir / "f"
    for i, special in enumerate(SPECIALS):
        make_special(root, d / "jobs" / f"s{i}.toml", special, outside)
        make_special(root, d / "status" / f"s{i}.toml", special, outside)
        make_special(root, d / "requests" / f"20260101T00000000000{i}-1-x.toml", special, outside)
        make_special(root, root.templates_dir / f"s{i}.toml", special, outside)
        write(root.pipelines_dir / f"g{i}" / "jobs" / "a.toml", 'command = ["true"]\n')
        make_special(root, root.pipelines_dir / f"g{i}" / "pipeline.toml", special, outside)
    make_special(root, d / "status.toml", "fifo", outside)
    with time_limit(120, "the daemon"):
        serve_until_healthy_done(root)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_the_validate_command_agrees_in_a_real_process(kind: Kind, tmp_path: Path) -> None:
    """A spot-check that the in-process verdicts are those of the real command."""
    samples = [b"\xff\xfe", _deep(100_000), b"schema_version = 99999999999999999999999\n",
               tomli_w.dumps({"state": "a\x00", "command": "x" * 300_000}).encode()]
    for data in samples:
        root = make_root(tmp_path / str(len(data)))
        path = root.path / kind.where
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        code, output = validate(root)
        real = subprocess.run([sys.executable, "-m", "clowder", "validate", "--root", str(root.path)],
                              capture_output=True, text=True, timeout=60)
        assert real.returncode == code, real.stderr
        assert set(real.stdout.splitlines()) <= set(output.splitlines()), (real.stdout, output)
        assert "Traceback" not in real.stderr
        check_verdict(code, output, path)


def test_special_file_kinds_cover_what_the_issue_lists() -> None:
    assert {"directory", "fifo", "link out", "link in", "/dev/zero"} <= set(SPECIALS)
    assert {k.name for k in KINDS} >= {"clowder.toml", "template", "pipeline.toml", "job", "job status", "request"}

