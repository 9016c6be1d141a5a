"""The one reader of a root: every face asks it, and it reads the index where the index holds a
pipeline fresh and the tree otherwise (see clowder.index.fresh), through the one status parser.
What it returns are the records of clowder.views.records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from clowder import known
from clowder.errors import UsageError
from clowder.state import Approval, Inputs, JobState, JobStatus, Usage, read_job_status
from clowder.tree import NAME_RE, PipelinePaths, Root
from clowder.views import indexed, tree
from clowder.views.records import (
    REPORT_STATES,
    ApprovalView,
    ArtifactLine,
    ArtifactView,
    AttemptView,
    Consumer,
    Edge,
    InputsView,
    JobDetail,
    JobNode,
    PipelineDetail,
    PipelineEntry,
    PipelineReport,
    Regression,
    StatusLine,
    report_state,
    status_line,
)


def pipeline_names(root: Root) -> list[str]:
    """The pipelines a user can name: a directory with an invalid name cannot be addressed
    (`clowder validate` reports it)."""
    fullmatch = NAME_RE.fullmatch  # is_name, without a call of it a pipeline of the root
    return [name for name in root.pipeline_names() if fullmatch(name)]


def _entry(r: PipelineReport) -> PipelineEntry:
    return PipelineEntry(r.name, report_state(r.state), r.message, r.started_at, r.ended_at, len(r.jobs),
                         dict(r.counts()), list(r.problems))


def entries(root: Root, state: str | None = None, ended_from_status: bool = False,
            use_index: bool = True) -> list[PipelineEntry]:
    """Every pipeline as a line of a list (with `state`, only those in it). `ended_from_status`:
    a pipeline that has ended is fresh in the index while its status files are, whatever its spec
    files say since (the table of `clowder status`, which shows nothing a spec could change then)."""
    if state is not None and state not in REPORT_STATES:
        raise UsageError(f"unknown state {state!r}: one of {', '.join(REPORT_STATES)}")
    names = pipeline_names(root)
    fresh = indexed.entries(root, names, ended_from_status) if use_index else {}
    out = [fresh.get(name) or _entry(tree.pipeline_report(root, root.pipeline(name))) for name in names]
    return out if state is None else [e for e in out if e.state == state]


def status_lines(root: Root) -> list[StatusLine]:
    """`clowder status`'s table: a line of every pipeline, as `entries(root, ended_from_status=True)`
    would give it."""
    names = pipeline_names(root)
    fresh = indexed.status_lines(root, names)
    return [fresh.get(name) or status_line(_entry(tree.pipeline_report(root, root.pipeline(name)))) for name in names]


def reports(root: Root, pipeline: str | None = None, use_index: bool = True) -> list[PipelineReport]:
    """Reports of every pipeline (or of one): `clowder status [PIPELINE]` and its `--json`. One
    pipeline's report shows what its agents spent."""
    if pipeline is not None:
        known.pipeline(root, pipeline, with_spec=False)  # a missing pipeline.toml is a problem to show
        names = [pipeline]
    else:
        names = pipeline_names(root)
    fresh = indexed.reports(root, names) if use_index else {}
    out = [fresh.get(name) or tree.pipeline_report(root, root.pipeline(name)) for name in names]
    if pipeline is not None:
        from clowder.views import outdated

        paths = root.pipeline(pipeline)
        out = [outdated.with_marks(with_spending(r, tree.spending(paths)), outdated.marks(root, paths)) for r in out]
    return out


def with_spending(report: PipelineReport, spent: Mapping[str, Usage]) -> PipelineReport:
    return replace(report, jobs=tuple(replace(j, usage=spent.get(j.name)) for j in report.jobs))


def artifacts(root: Root, pipeline: str, job: str | None = None, sha: str | None = None) -> list[ArtifactLine]:
    """Every recorded artifact of the pipeline (or of one job), oldest attempt first; with `sha`,
    only those whose blob id starts with it."""
    paths = known.pipeline(root, pipeline)
    if sha is not None and (len(sha) < 4 or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise UsageError(f"--sha {sha!r}: give at least 4 hex digits of a blob id")
    if job is not None:
        known.job(paths, job)
    found = indexed.artifacts(root, pipeline, job, sha)
    if found is not None:
        return found
    jobs = [job] if job is not None else sorted(f.stem for f in paths.status_dir.glob("*.toml"))
    out = []
    for name in jobs:
        for a in read_job_status(paths.job_status_file(name), name).attempts:
            out += [ArtifactLine(name, a.number, a.state.value, a.commit or "", x.path, x.blob, x.size, x.kind)
                    for x in a.artifacts if sha is None or x.blob.startswith(sha.lower())]
    return out


# -- what the web page shows ----------------------------------------------------------------------

def attempts(status: JobStatus) -> list[AttemptView]:
    return [
        AttemptView(
            number=a.number, state=a.state.value, trigger=a.trigger, started_at=a.started_at, ended_at=a.ended_at,
            duration=a.duration, exit_code=a.exit_code, signal=a.signal, message=a.message,
            base_commit=a.base_commit, commit=a.commit, consumed=dict(a.consumed),
            artifacts=[ArtifactView(x.path, x.blob, x.size, x.kind) for x in a.artifacts],
            approval=approval_view(a.approval), inputs=inputs_view(a.inputs), reused_from=a.reused_from,
        )
        for a in status.attempts
    ]


def inputs_view(i: Inputs | None) -> InputsView | None:
    return InputsView(i.spec, i.role, i.source, i.env, dict(i.upstreams)) if i is not None else None


def approval_view(a: Approval | None) -> ApprovalView | None:
    return ApprovalView(a.verdict.value, a.by, a.at, a.comment) if a is not None else None


def _levels(deps: Mapping[str, list[str]]) -> dict[str, int]:
    from clowder.graph import topo_order

    level: dict[str, int] = {}
    for name in topo_order(deps):
        level[name] = 1 + max((level[d] for d in deps[name] if d in level), default=-1)
    return level


def pipeline_detail(root: Root, name: str) -> PipelineDetail:
    """A pipeline's jobs with their states and attempts, the edges between them and each job's
    level in the graph (for drawing it). Read once from the tree: its specs and status files give
    the report, the attempts and the edges alike."""
    from clowder import requests
    from clowder.views import outdated

    paths = known.pipeline(root, name)
    head = tree.pipeline_report(root, paths)
    marks = outdated.marks(root, paths)
    pipeline, _ = tree.load_specs(root, paths)
    levels = _levels({j.name: list(j.needs) for j in head.jobs})
    retries = requests.retries_waiting(paths)
    jobs = []
    for j in head.jobs:
        spec = pipeline.jobs.get(j.name) if pipeline else None
        status = tree.read_job(paths, j.name)
        jobs.append(JobNode(
            name=j.name, state=j.state, attempt=j.attempt, stage=j.stage, needs=list(j.needs),
            level=levels.get(j.name, 0), duration=j.duration, message=j.message, started_at=j.started_at,
            ended_at=j.ended_at, regression_of=spec.regression_of if spec else None,
            parent=spec.parent if spec else None,
            attempts=attempts(status), actions=requests.job_actions(status.state, j.name in retries),
            outdated=marks.get(j.name),
        ))
    edges = [Edge(n.job, job.name, n.when.value) for job in (pipeline.jobs.values() if pipeline else ())
             for n in job.needs]
    return PipelineDetail(
        name=head.name, state=report_state(head.state), message=head.message, started_at=head.started_at,
        ended_at=head.ended_at, problems=list(head.problems), prompt=pipeline.spec.prompt if pipeline else None,
        jobs=jobs, edges=sorted(edges, key=lambda e: (e.target, e.source)),
        actions=requests.pipeline_actions_now(paths, retries),
    )


def _consumers(paths: PipelinePaths, job: str, commits: set[str], jobs: list[str]) -> list[Consumer]:
    out = []
    for other in jobs:
        if other == job:
            continue
        for a in tree.read_job(paths, other).attempts:
            commit = a.consumed.get(job)
            if commit and commit in commits:
                out.append(Consumer(other, a.number, commit))
    return out


def job_detail(root: Root, pipeline: str, job: str) -> JobDetail:
    """One job: its spec as written, its status with every attempt's artifacts and the upstream
    commits it consumed, which jobs consumed its commits, and its regression lineage."""
    from clowder import requests
    from clowder.export import command_line
    from clowder.schema import load_toml
    from clowder.views import outdated

    paths = known.pipeline(root, pipeline)
    known.job(paths, job)
    raw, problems = load_toml(paths.job_file(job)) if paths.job_file(job).is_file() else (None, [])
    loaded, _ = tree.load_specs(root, paths)
    spec = loaded.jobs.get(job) if loaded else None
    status = tree.read_job(paths, job)
    names = sorted(set(paths.job_names()) | {p.stem for p in paths.status_dir.glob("*.toml")})
    commits = {a.commit for a in status.attempts if a.commit}
    regression = None
    if spec is not None and (spec.regression_of or spec.parent):
        regression = Regression(spec.regression_of, spec.parent, dict(spec.regression_context or {}))
    return JobDetail(
        pipeline=pipeline, name=job, state=status.state.value, attempt=status.attempt, message=status.message,
        spec=raw or {}, spec_problems=[str(p) for p in problems],
        needs=[Edge(n.job, job, n.when.value) for n in spec.needs] if spec else [],
        dependents=list(loaded.dependents.get(job, ())) if loaded else [],
        attempts=attempts(status), consumers=_consumers(paths, job, commits, names), regression=regression,
        spawned=list(status.spawned), waiting_for=list(status.waiting_for), retry_at=status.retry_at,
        actions=requests.job_actions(status.state, job in requests.retries_waiting(paths)),
        export_command=command_line(pipeline, job) if status.state is JobState.SUCCEEDED else "",
        approval=approval_view(status.approval), outdated=outdated.marks(root, paths).get(job),
    )
