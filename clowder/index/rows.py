"""One named record per table of the index, its fields the table's columns in order (as the
migrations in clowder.index.schema made them; tests/test_index.py checks that they agree). The
tree's rows (clowder.snapshot) and the daemon's (clowder.index.recorder) are built as these."""

from __future__ import annotations

from typing import NamedTuple


class PipelineStatusCols(NamedTuple):
    """The `pipelines` columns that status.toml gives (migration 1)."""

    state: str  # status.toml's state, or 'broken' when it cannot be read
    message: str
    started_at: str | None
    ended_at: str | None
    prompt_hash: str | None
    problem: str | None  # why status.toml cannot be read: JSON [path, key, message]


class PipelineSpecCols(NamedTuple):
    """The `pipelines` columns that pipeline.toml and jobs/*.toml give (migration 1)."""

    template: str | None
    stages: str | None  # JSON
    valid: int  # 1 if the spec validates
    problems: str | None  # JSON list of [path, key, message]


class PipelineRow(NamedTuple):
    """`pipelines` (migration 1): the pipeline, then its status and spec columns."""

    pipeline: str
    state: str
    message: str
    started_at: str | None
    ended_at: str | None
    prompt_hash: str | None
    problem: str | None
    template: str | None
    stages: str | None
    valid: int
    problems: str | None

    @classmethod
    def of(cls, pipeline: str, status: PipelineStatusCols, spec: PipelineSpecCols) -> PipelineRow:
        return cls(pipeline, *status, *spec)


class JobSpecRow(NamedTuple):
    """`job_specs` (migration 1)."""

    pipeline: str
    job: str
    position: int  # dependency order (by name when the spec is invalid)
    stage: str | None
    kind: str | None  # command | agent
    command: str | None  # JSON: an argv list or a shell string
    agent: str | None
    sources: str | None  # JSON
    outputs: str | None  # JSON
    retries: int | None
    allow_failure: int | None
    timeout: float | None
    parent: str | None
    regression_of: str | None
    spec_hash: str | None


class EdgeRow(NamedTuple):
    """`edges` (migration 1): `job` needs `upstream`."""

    pipeline: str
    job: str
    upstream: str
    condition: str  # success | failure | always
    ord: int


class JobRow(NamedTuple):
    """`jobs` (migration 1)."""

    pipeline: str
    job: str
    state: str
    attempt: int
    message: str
    retry_at: str | None
    waiting_for: str | None  # JSON
    spawned: str | None  # JSON
    extra: str | None  # JSON: other keys of the status file
    problem: str | None  # why the status file cannot be read: JSON [path, key, message]
    started_at: str | None
    ended_at: str | None
    duration: float | None
    open_started: str | None  # JSON


class AttemptRow(NamedTuple):
    """`attempts` (migration 1; the spending columns from migration 3; inputs and reuse from 4)."""

    pipeline: str
    job: str
    number: int
    state: str
    started_at: str | None
    ended_at: str | None
    duration: float | None
    exit_code: int | None
    signal: int | None
    pid: int | None
    spec_hash: str | None
    base_commit: str | None
    commit: str | None
    message: str
    trigger: str | None
    request: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    inputs: str | None  # JSON: what the attempt was made from
    reused_from: int | None


class ArtifactRow(NamedTuple):
    """`artifacts` (migration 1)."""

    pipeline: str
    job: str
    attempt: int
    path: str
    blob: str
    size: int
    kind: str  # file | model_output | error_context


class ConsumedRow(NamedTuple):
    """`consumed` (migration 1): the upstream commit an attempt started from."""

    pipeline: str
    job: str
    attempt: int
    upstream: str
    commit: str


class ConsumptionRow(NamedTuple):
    """`consumption` (migration 1), derived in SQL from consumed, attempts and artifacts."""

    pipeline: str
    job: str
    attempt: int
    upstream: str
    upstream_attempt: int
    artifact_attempt: int
    path: str
    blob: str


class ApprovalRow(NamedTuple):
    """`approvals` (migration 4): a decision on a job's approval gate (clowder.state.decisions)."""

    pipeline: str
    job: str
    request: str
    verdict: str  # approved | rejected
    by: str
    at: str
    comment: str
    attempt: int | None  # the first attempt it let start


class ModelOutputRow(NamedTuple):
    """`model_outputs` (migration 1)."""

    blob: str
    content: str | None  # the JSON document
    error: str | None  # why content is NULL


class FreshnessRow(NamedTuple):
    """`freshness` (migration 1): bookkeeping, not data."""

    pipeline: str
    status_sig: str | None  # NULL: kept live by a daemon
    spec_sig: str | None
    pid: int | None


class JobCountRow(NamedTuple):
    """`job_counts` (migration 4): derived by triggers, never written by Clowder itself."""

    pipeline: str
    state: str
    n: int


# Each table's record: what tests check against the migrated schema.
RECORDS: dict[str, type[tuple[object, ...]]] = {
    "pipelines": PipelineRow, "job_specs": JobSpecRow, "edges": EdgeRow, "jobs": JobRow, "attempts": AttemptRow,
    "artifacts": ArtifactRow, "consumed": ConsumedRow, "consumption": ConsumptionRow,
    "model_outputs": ModelOutputRow, "freshness": FreshnessRow, "approvals": ApprovalRow,
    "job_counts": JobCountRow,
}
