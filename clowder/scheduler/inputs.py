"""What an attempt is made from (its `Inputs`), and the two decisions taken on them: a job that
ended is outdated when its current inputs differ from its last attempt's, and a `cache = true`
job reuses an earlier successful attempt whose inputs are the same. Pure: `clowder status`,
`clowder why`, `clowder run --outdated` and the step all ask these functions."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from clowder.spec import JobSpec, Pipeline
from clowder.state import Attempt, Inputs, JobState, JobStatus

# A job in one of these states ran (or was cancelled running) and may be out of date; a skipped
# job's last attempt is an older run it was not asked to redo.
_ENDED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class InputKind(StrEnum):
    SPEC = "spec"
    ROLE = "role"
    ENV = "env"
    SOURCE = "source"
    UPSTREAM = "upstream"


@dataclass(frozen=True)
class Changed:
    """One input that differs from the last attempt's: `subject` names the upstream."""

    kind: InputKind
    subject: str = ""

    @property
    def words(self) -> str:
        match self.kind:
            case InputKind.UPSTREAM:
                return f"upstream {self.subject} has a new commit"
            case InputKind.ROLE:
                return "role instructions changed"
            case InputKind.SOURCE:
                return "source changed"
            case _:
                return f"{self.kind.value} changed"


@dataclass(frozen=True)
class Outdated:
    """A job whose last attempt was made from other inputs than it would be now."""

    job: str
    attempt: int  # the attempt whose inputs differ
    changed: tuple[Changed, ...]

    @property
    def reason(self) -> str:
        return f"outdated: {', '.join(c.words for c in self.changed)} since attempt {self.attempt}"

    @property
    def upstreams(self) -> tuple[str, ...]:
        return tuple(c.subject for c in self.changed if c.kind is InputKind.UPSTREAM)


def _hash(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return _text_hash(canonical)


@functools.lru_cache(maxsize=1024)
def _text_hash(text: str) -> str:
    # Cached: every ready job's candidate records its inputs, and a long role's instructions would
    # be hashed again at each step.
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def final_commit(status: JobStatus | None) -> str | None:
    """A job's final commit: that of its last attempt that made one (what its downstreams start from)."""
    if status is None:
        return None
    return next((a.commit for a in reversed(status.attempts) if a.commit), None)


def current_inputs(pipeline: Pipeline, spec: JobSpec, jobs: Mapping[str, JobStatus]) -> Inputs:
    """What an attempt of `spec` starting now would be made from."""
    role = pipeline.spec.roles.get(spec.agent) if spec.agent else None
    upstreams = {n.job: c for n in spec.needs if (c := final_commit(jobs.get(n.job))) is not None}
    source = pipeline.spec.source
    # A job that needs nothing (and is no fix-up) starts from the source: its repo and ref as
    # written; the commit they name is pinned once per pipeline (workspaces/.source.json).
    from_source = source is not None and not spec.needs and spec.parent is None
    return Inputs(
        spec=spec.spec_hash,
        role=_text_hash(role.instructions) if role is not None else "",
        upstreams=upstreams,
        source=_hash([source.repo, source.ref, source.worktree]) if from_source and source is not None else "",
        env=_hash(dict(spec.env)) if spec.env else "",
    )


def changes(recorded: Inputs, now: Inputs) -> tuple[Changed, ...]:
    """The inputs that differ, in the order a person looks for them."""
    out = []
    if recorded.env != now.env:
        out.append(Changed(InputKind.ENV))
    if recorded.spec != now.spec and not out:  # `env` is in the spec too: name the narrower change
        out.append(Changed(InputKind.SPEC))
    if recorded.role != now.role:
        out.append(Changed(InputKind.ROLE))
    if recorded.source != now.source:
        out.append(Changed(InputKind.SOURCE))
    for job in sorted(set(recorded.upstreams) | set(now.upstreams)):
        if recorded.upstreams.get(job) != now.upstreams.get(job):
            out.append(Changed(InputKind.UPSTREAM, job))
    return tuple(out)


def _last_ran(status: JobStatus) -> Attempt | None:
    return status.attempts[-1] if status.attempts else None


def outdated(pipeline: Pipeline, job: str, jobs: Mapping[str, JobStatus]) -> Outdated | None:
    """The job, if it ended and its last attempt was made from other inputs than it would be now.
    A mark only: nothing is started for it unless someone asks (`clowder run --outdated`)."""
    spec = pipeline.jobs.get(job)
    status = jobs.get(job)
    if spec is None or status is None or status.state not in _ENDED:
        return None
    last = _last_ran(status)
    if last is None or last.inputs is None:  # never ran, or ran before inputs were recorded
        return None
    changed = changes(last.inputs, current_inputs(pipeline, spec, jobs))
    return Outdated(job, last.number, changed) if changed else None


def outdated_jobs(pipeline: Pipeline, jobs: Mapping[str, JobStatus]) -> dict[str, Outdated]:
    """Every outdated job of the pipeline, in dependency order."""
    return {n: o for n in pipeline.order if (o := outdated(pipeline, n, jobs)) is not None}


def same_for_cache(a: Inputs, b: Inputs) -> bool:
    """Whether two attempts of a command job were made from the same inputs (a command has no role)."""
    return (a.spec, a.upstreams, a.source, a.env) == (b.spec, b.upstreams, b.source, b.env)


def reusable(spec: JobSpec, status: JobStatus, inputs: Inputs) -> Attempt | None:
    """The latest successful attempt of a `cache = true` job made from these inputs, or None."""
    if not spec.cache or spec.agent:
        return None
    return next((a for a in reversed(status.attempts) if a.state is JobState.SUCCEEDED and a.commit
                 and a.inputs is not None and same_for_cache(a.inputs, inputs)), None)


def first_reused(status: JobStatus, attempt: Attempt) -> int:
    """The attempt that really ran, for an attempt reused from a reused one."""
    by_number = {a.number: a for a in status.attempts}
    while attempt.reused_from is not None and attempt.reused_from in by_number:
        attempt = by_number[attempt.reused_from]
    return attempt.number


def rerun_roots(pipeline: Pipeline, found: Mapping[str, Outdated]) -> tuple[str, ...]:
    """The outdated jobs that no other outdated job is upstream of: re-running each with its
    downstream (`clowder run --outdated`) re-runs every outdated job once, and what follows them."""
    below: set[str] = set()
    for job in found:
        frontier = list(pipeline.dependents.get(job, ()))
        while frontier:
            cur = frontier.pop()
            if cur not in below:
                below.add(cur)
                frontier += pipeline.dependents.get(cur, ())
    return tuple(j for j in found if j not in below)


def trailers(inputs: Inputs | None) -> str:
    """The commit trailers that say what the attempt was made from (`git log` shows it)."""
    if inputs is None:
        return ""
    named = [("Spec", inputs.spec), ("Role", inputs.role), ("Source", inputs.source), ("Env", inputs.env)]
    lines = [f"Clowder-Input-{k}: {v}\n" for k, v in named if v]
    return "".join(lines) + "".join(f"Clowder-Input-Upstream: {j} {c}\n" for j, c in sorted(inputs.upstreams.items()))
