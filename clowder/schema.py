"""The JSON Schemas of Clowder's TOML files, and their errors turned into one-line problems."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli as tomllib  # the standard library's parser, compiled with mypyc: twice as fast

from clowder.errors import Problem
from clowder.fsio import MAX_SPEC_BYTES, read_input

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

KINDS = ("clowder", "template", "pipeline", "job", "status")
NOT_AN_OPTION = "^(?!-)"  # the schemas' pattern for text git receives: never an option
_TYPE_NAMES = {
    "string": "a string", "integer": "an integer", "number": "a number",
    "boolean": "true or false", "array": "an array", "object": "a table",
}


def schemas_dir() -> Path:
    """Schemas ship inside the wheel as clowder/schemas; a source checkout has them at the top."""
    here = Path(__file__).resolve().parent
    packaged = here / "schemas"
    return packaged if packaged.is_dir() else here.parent / "schemas"


@cache
def load_schema(kind: str) -> dict[str, Any]:
    with (schemas_dir() / f"{kind}.schema.json").open() as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def _is_integer(checker: Any, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@cache
def _strict() -> Any:
    """jsonschema's validator class, imported only to explain a problem jsonschema-rs found: the
    import costs ~50 ms, which every `clowder reindex` paid before it forked its readers.
    JSON Schema counts 1000.0 as an integer (JSON has one number type); TOML tells `1e3` from
    `1000`, and a float where a count belongs (max_parallel = 1e3) is a mistake to report."""
    import jsonschema

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))


@cache
def _validator(kind: str) -> Any:
    return _strict()(load_schema(kind))


@cache
def _fast(kind: str) -> Any:
    """jsonschema-rs's validator: it says whether data is valid a hundred times faster than
    jsonschema, which `clowder reindex` needs (a check per spec and status file of the
    root); jsonschema explains what is wrong, in the words `_translate` knows."""
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(load_schema(kind))


def load_toml(path: Path, missing_ok: bool = False,
              limit: int = MAX_SPEC_BYTES) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Parse a TOML file; a syntax error becomes a problem with its line and column. With
    `missing_ok`, a file that does not exist has no data and no problems.
    Only a regular file of at most `limit` bytes is read (clowder.fsio.read_input)."""
    try:
        text = read_input(path, limit).decode()
    except UnicodeDecodeError as e:
        return None, [Problem(path, "<toml>", f"not UTF-8 text: {e.reason}")]
    except OSError as e:
        if missing_ok and isinstance(e, FileNotFoundError):
            return None, []
        return None, [Problem(path, "<file>", f"cannot read: {e.strerror}")]
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as e:
        return None, [Problem(path, "<toml>", f"syntax error: {_toml_message(e, text)}")]
    except RecursionError:  # tomli recurses per level of nesting: hundreds of `[` exhaust the stack
        return None, [Problem(path, "<toml>", TOO_DEEP)]


TOO_DEEP = "syntax error: arrays or tables nested too deeply"


def _toml_message(e: tomllib.TOMLDecodeError, text: str) -> str:
    # tomllib says "Invalid value (at line 3, column 7)" or "... (at end of document)";
    # lead with the position, and give the end of the document one too.
    m = re.match(r"(.*) \(at line (\d+), column (\d+)\)$", str(e), re.DOTALL)
    if m:
        return f"line {m.group(2)}, column {m.group(3)}: {m.group(1)}"
    m = re.match(r"(.*) \(at end of document\)$", str(e), re.DOTALL)
    if m:
        lines = text.split("\n")
        return f"line {len(lines)}, column {len(lines[-1]) + 1} (end of file): {m.group(1)}"
    return str(e)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(parts: Iterable[str | int]) -> str:
    """A TOML-style path to a value: `jobs."dev.r1".needs[0]`. Keys that are not bare TOML
    keys are quoted, so a job named `dev.r1` does not read as two tables."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
            continue
        key = p if _BARE_KEY.fullmatch(p) else json.dumps(p, ensure_ascii=False)
        out += f".{key}" if out else key
    return out


def check(kind: str, data: Any, path: Path | str, prefix: Sequence[str | int] = ()) -> list[Problem]:
    """Every schema problem in `data`, as one-line problems sorted by key. In hand-written kinds,
    every number must also be finite and fit in 64 bits (TOML has nan, inf and endless integers;
    JSON Schema's bounds let nan through)."""
    odd = [] if kind == "status" else _odd_numbers(data, path, tuple(prefix))
    try:
        if not odd and fast_valid(kind, data):
            return []
    except ValueError:  # a value JSON has no type for: let jsonschema judge it
        pass
    # nan passes every bound, so "not finite" is the one thing to say of such a key; an integer
    # past 64 bits is better described by the key's own bound, where it has one.
    infinite = [p for p in odd if p.message.startswith(_NOT_FINITE)]
    problems = list(infinite)
    for error in _validator(kind).iter_errors(data):
        problems.extend(p for p in _translate(error, path, prefix) if p.key not in {q.key for q in infinite})
    said = {p.key for p in problems}
    problems += [p for p in odd if p.key not in said]
    return sorted(set(problems), key=lambda p: (p.key, p.message))


def fast_valid(kind: str, data: Any) -> bool:
    """jsonschema-rs's verdict, as jsonschema would give it: jsonschema-rs takes a whole float
    (`retries = 0.0`) for an integer, jsonschema does not, so hand-written kinds are checked again
    with their whole floats made ints (valid only if that changes nothing). Raises ValueError for
    a value JSON has no type for."""
    if not _fast(kind).is_valid(data):
        return False
    return kind == "status" or not _has_whole_float(data) or _fast(kind).is_valid(_unwhole(data))


_INT64 = 2**63
_NOT_FINITE = "must be a finite number"


def _odd_numbers(value: Any, path: Path | str, parts: tuple[str | int, ...]) -> list[Problem]:
    """Numbers no bound can judge: nan, infinities, and integers past 64 bits."""
    if isinstance(value, float) and not math.isfinite(value):
        return [Problem(path, key_path(parts), f"{_NOT_FINITE}, got {show(value)}")]
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        return [Problem(path, key_path(parts), f"must fit in 64 bits, got {show(value)}")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _odd_numbers(v, path, (*parts, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _odd_numbers(v, path, (*parts, i))]
    return []


def _has_whole_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_has_whole_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_whole_float(v) for v in value)
    return False


def _unwhole(value: Any) -> Any:
    """`value` with each float that is a whole number moved off it (2.0 -> 2.5): jsonschema-rs
    takes 2.0 for an integer, so `factor = 2.0` must pass and `retries = 2.0` fail in a second
    look. That look may also fail a float at its key's bound; jsonschema then judges, rightly."""
    if isinstance(value, float) and value.is_integer():
        return value + 0.5
    if isinstance(value, dict):
        return {k: _unwhole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwhole(v) for v in value]
    return value


def _translate(e: ValidationError, path: Path | str, prefix: Sequence[str | int]) -> list[Problem]:
    where = [*prefix, *e.absolute_path]
    key = key_path(where)
    v = e.validator
    if v == "additionalProperties" and isinstance(e.instance, dict):
        node: Any = e.schema
        known = sorted(node.get("properties", {}))
        return [
            Problem(path, key_path([*where, extra]), _unknown_key(extra, known))
            for extra in e.instance
            if extra not in known
        ]
    if v in ("anyOf", "oneOf"):
        return _translate_any_of(e, path, prefix)
    return [Problem(path, key, _message(e))]


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key '{key}' (did you mean '{close[0]}'?)"
    return f"unknown key '{key}'; known keys: {', '.join(known)}"


def _translate_any_of(e: ValidationError, path: Path | str, prefix: Sequence[str | int]) -> list[Problem]:
    branches: Any = e.validator_value
    # Pick the branch whose type matches the value, and report that branch's own errors.
    for i, branch in enumerate(branches):
        if _type_matches(branch.get("type"), e.instance):
            sub = [c for c in (e.context or []) if c.relative_schema_path[0] == i]
            if sub:
                return [p for c in sub for p in _translate(c, path, prefix)]
    wanted = " or ".join(_describe(b) for b in branches)
    return [Problem(path, key_path([*prefix, *e.absolute_path]),
                    f"expected {wanted}, got {show(e.instance)}")]


def _describe(branch: dict[str, Any]) -> str:
    t = branch.get("type")
    if t == "array" and branch.get("items", {}).get("type") == "string":
        return "an array of strings"
    if t == "object" and "job" in branch.get("properties", {}):
        return "a table {job = ..., when = ...}"
    return _TYPE_NAMES.get(t, str(t)) if isinstance(t, str) else "a value"


def _type_matches(t: Any, value: Any) -> bool:
    if isinstance(t, list):
        return any(_type_matches(x, value) for x in t)
    checks = {
        "string": isinstance(value, str),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }
    return checks.get(t, False)


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()  # as TOML writes it, not as Python's repr does
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(e: ValidationError) -> str:
    v = e.validator
    want: Any = e.validator_value
    got: Any = e.instance
    if v == "type":
        types = want if isinstance(want, list) else [want]
        return f"expected {' or '.join(_TYPE_NAMES.get(t, str(t)) for t in types)}, got {show(got)}"
    if v == "enum":
        if want == [1] and e.absolute_path and e.absolute_path[-1] == "schema_version":
            return f"unsupported schema_version {show(got)}; this Clowder reads version 1"
        return f"must be one of {', '.join(str(w) for w in want)}; got {show(got)}"
    if v == "required":
        missing = [k for k in want if k not in got]
        return f"missing required key '{missing[0]}'" if missing else e.message
    if v == "minimum":
        return f"must be >= {want}, got {show(got)}"
    if v == "maximum":
        return f"must be <= {want}, got {show(got)}"
    if v == "pattern" and want == NOT_AN_OPTION:
        return "must not start with '-' (git would read it as an option)"
    if v == "minItems":
        return "must not be empty"
    if v == "minLength":
        return "must not be empty"
    if v == "minProperties":
        return "must not be empty"
    if v == "uniqueItems":
        return "must not repeat an entry"
    if v == "pattern":
        return f"{show(got)} does not match {want}"
    return e.message
