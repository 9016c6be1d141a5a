"""A job's `output_schema`: the JSON Schema its structured output (`.clowder/<job>/output.json`)
must match. Written inline (a table) or as a .json file relative to the root; the job's own
wins over its role's. Checked when the attempt ends: a missing or non-matching output fails it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clowder import fsio
from clowder.errors import ClowderError
from clowder.spec import JobSpec, PipelineSpec

SCHEMA_FILE = "output-schema.json"  # the schema as the CLI reads it (Codex's --output-schema), in .clowder/<job>/


def declared(pipeline: PipelineSpec, job: JobSpec) -> Mapping[str, Any] | str | None:
    """The job's output_schema as written, else its role's."""
    role = pipeline.roles.get(job.agent or "")
    return job.output_schema if job.output_schema is not None else (role.output_schema if role else None)


def load(value: Mapping[str, Any] | str, root: Path) -> dict[str, Any]:
    """The schema itself: an inline one, or the file's; a valid JSON Schema, or ClowderError."""
    if isinstance(value, str):
        path = resolve(value, root)
        try:
            data = json.loads(fsio.read_input(path))  # a regular file under the root, never a FIFO
        except OSError as e:
            raise ClowderError(f"output_schema {value!r}: cannot read {path}: {e.strerror or e}") from e
        except ValueError as e:
            raise ClowderError(f"output_schema {value!r}: {path} is not JSON ({e})") from e
    else:
        data = dict(value)
    problem = schema_problem(data)
    if problem:
        raise ClowderError(f"output_schema {value if isinstance(value, str) else '(inline)'}: {problem}")
    return data


def resolve(value: str, root: Path) -> Path:
    """A schema file's path: relative to the root and inside it (no `..` out, no absolute path)."""
    if "\0" in value:
        raise ClowderError(f"output_schema {value!r}: contains a NUL character, which no path can hold")
    if Path(value).is_absolute():
        raise ClowderError(f"output_schema {value!r}: must be a path relative to the root")
    path = (root / value).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ClowderError(f"output_schema {value!r}: leaves the root {root}")
    return path


def schema_problem(data: object) -> str:
    """Why `data` is not a usable JSON Schema, or ""."""
    import jsonschema  # only agent jobs with a schema pay for it

    if not isinstance(data, dict):
        return f"a JSON Schema must be an object, got {type(data).__name__}"
    try:
        jsonschema.validators.validator_for(data).check_schema(data)
    except jsonschema.SchemaError as e:
        return f"not a valid JSON Schema: {e.message}"
    return ""


def check(schema: Mapping[str, Any], output: Path) -> str:
    """Why the output at `output` does not match `schema` (naming the key), or ""."""
    import jsonschema

    if not output.is_file():
        return f"{output.name}: missing; the job's output_schema requires a structured output"
    try:
        value = json.loads(output.read_bytes())
    except ValueError as e:
        return f"{output.name}: not JSON ({e})"
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return ""
    return f"{output.name} does not match output_schema: at {error.json_path}: {error.message}"
