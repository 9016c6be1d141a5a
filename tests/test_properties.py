"""Property tests: whatever TOML a user writes, the loaders and the validator answer with
problems (or the project's own errors), never a traceback."""

from __future__ import annotations

import json
import math
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from clowder.errors import ClowderError, Problem
from clowder.scheduler import Limits, Outcome, PipelineView, Plan, ReadyQueue, SetJob, SetPipeline, reconcile
from clowder.spec import MAX_DURATION, Config, Pipeline, parse_duration
from clowder.state import JobState, JobStatus, PipelineStatus, check_status_file
from clowder.template import DEFAULT_CONFIG, new_pipeline
from clowder.tree import PipelinePaths, Root
from clowder.validate import build_pipeline, check_config, check_pipeline, check_template, validate_path
from clowder.views.jsonout import reports_json as to_json
from clowder.views.reader import reports as collect
from clowder.views.records import summarize

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JOB_KEYS = [
    "command", "agent", "needs", "from", "stage", "retries", "timeout", "backoff", "env", "outputs",
    "allow_failure", "max_regressions", "resources", "harness", "parent", "regression_of",
    "regression_context", "description", "schema_version", "max_cost_usd",
]
PIPELINE_KEYS = [
    "prompt", "template", "stages", "source", "max_parallel", "variables", "roles", "created_at",
    "description", "schema_version", "max_cost_usd",
]
CONFIG_KEYS = [
    "schema_version", "max_parallel", "sweep_interval", "heartbeat_timeout", "kill_grace", "retry",
    "resources", "git", "executor", "harnesses", "default_harness",
]
TEMPLATE_KEYS = ["jobs", "variables", "roles", "stages", "source", "description", "max_parallel", "schema_version"]
NESTED_KEYS = [
    "job", "when", "initial", "factor", "max", "retries", "backoff", "max_regressions", "repo", "ref",
    "command", "env", "adapter", "default", "instructions", "harness", "kind", "llm",
]
JOB_NAMES = ["a", "b", "c", "dev", "test", "Bad", "x y", "-lead"]

scalars = (
    st.text(max_size=12)
    | st.sampled_from(["", "a", "b", "dev", "success", "failure", "always", "2s", "1h30m", "5x", "{{ v }}"])
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.booleans()
)
keys = st.sampled_from(JOB_KEYS + PIPELINE_KEYS + CONFIG_KEYS + TEMPLATE_KEYS + NESTED_KEYS) | st.text(max_size=8)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(keys, toml_values, max_size=6)


def durations_text() -> st.SearchStrategy[str]:
    return st.sampled_from(["1s", "500ms", "5m", "1h30m", "2d", "0s", "1.5s", "", "-1s", "1q", "s", "1 s"])


def need_items() -> st.SearchStrategy[Any]:
    name = st.sampled_from([*JOB_NAMES, "zz"])
    when = st.sampled_from(["success", "failure", "always", "never"]) | scalars
    return name | st.fixed_dictionaries({"job": name}, optional={"when": when}) | scalars


job_tables = st.fixed_dictionaries(
    {},
    optional={
        "command": st.sampled_from([["true"], "true", "", [], [1], 5]),
        "agent": st.sampled_from(["dev", "", 3]),
        "needs": st.lists(need_items(), max_size=3) | scalars,
        "from": st.lists(st.sampled_from([*JOB_NAMES, "zz"]) | scalars, max_size=3) | scalars,
        "stage": st.sampled_from(["build", "test", "deploy", "nope"]) | scalars,
        "retries": st.integers(min_value=-3, max_value=3) | scalars,
        "timeout": durations_text() | scalars,
        "backoff": st.fixed_dictionaries(
            {}, optional={"initial": durations_text() | scalars, "factor": scalars, "max": durations_text()}
        ) | scalars,
        "env": st.dictionaries(st.text(max_size=4), scalars, max_size=2),
        "resources": st.dictionaries(st.sampled_from(["llm", "gpu"]), scalars, max_size=2),
        "allow_failure": scalars,
        "max_regressions": scalars,
        "parent": st.sampled_from(JOB_NAMES) | scalars,
        "outputs": st.lists(scalars, max_size=2) | scalars,
    },
)


@contextmanager
def fresh_root() -> Iterator[Root]:
    # Function-scoped fixtures are shared by every example, so each example gets its own root.
    # A plain write instead of `clowder init`: its fsyncs would dominate the run time.
    with tempfile.TemporaryDirectory() as tmp:
        root = Root(Path(tmp))
        root.templates_dir.mkdir()
        root.pipelines_dir.mkdir()
        root.config_file.write_text(DEFAULT_CONFIG)
        yield root


def dump(data: dict[str, Any]) -> str:
    return tomli_w.dumps(data)


def assert_problems(problems: list[Problem]) -> None:
    assert all(isinstance(p, Problem) for p in problems)
    for p in problems:
        assert str(p).startswith(f"{p.path}: ")


def write_pipeline(root: Root, spec: dict[str, Any], jobs: dict[str, dict[str, Any]]) -> PipelinePaths:
    paths = root.pipeline("p")
    paths.jobs_dir.mkdir(parents=True)
    paths.spec_file.write_text(dump(spec))
    for name, table in jobs.items():
        (paths.jobs_dir / f"{name}.toml").write_text(dump(table))
    return paths


def check_everything(root: Root, paths: PipelinePaths | None = None) -> None:
    """Every entry point over the tree: each returns problems or raises a ClowderError."""
    config, problems = check_config(root.config_file)
    assert_problems(problems)
    assert (config is None) == bool(problems)
    if paths is not None:
        pipeline, problems = check_pipeline(paths, config)
        assert_problems(problems)
        assert (pipeline is None) == bool(problems)
    for name in root.template_names():
        data, problems = check_template(root.templates_dir / f"{name}.toml", config)
        assert_problems(problems)
        assert (data is None) == bool(problems)
    try:
        reports = collect(root)
    except ClowderError:
        return
    json.dumps(to_json(reports))
    for report in reports:
        summarize(report.counts())


@SETTINGS
@given(doc=documents, name=st.sampled_from(JOB_NAMES))
def test_random_job_files_give_problems_not_exceptions(doc: dict[str, Any], name: str) -> None:
    with fresh_root() as root:
        paths = write_pipeline(root, {"prompt": "p"}, {name: doc})
        check_everything(root, paths)
        assert_problems(validate_path(root.path, root)[1])
        assert_problems(validate_path(paths.jobs_dir / f"{name}.toml", root)[1])


@SETTINGS
@given(doc=documents)
def test_random_pipeline_files_give_problems_not_exceptions(doc: dict[str, Any]) -> None:
    with fresh_root() as root:
        paths = write_pipeline(root, doc, {"a": {"command": ["true"]}})
        check_everything(root, paths)


@SETTINGS
@given(doc=documents)
def test_random_config_files_give_problems_not_exceptions(doc: dict[str, Any]) -> None:
    with fresh_root() as root:
        root.config_file.write_text(dump(doc))
        paths = write_pipeline(root, {"prompt": "p"}, {"a": {"command": ["true"], "resources": {"llm": 1}}})
        check_everything(root, paths)


@SETTINGS
@given(doc=documents, jobs=st.dictionaries(st.sampled_from(JOB_NAMES), documents | job_tables, max_size=3))
def test_random_templates_give_problems_not_exceptions(doc: dict[str, Any], jobs: dict[str, Any]) -> None:
    if jobs:
        doc = {**doc, "jobs": jobs}
    with fresh_root() as root:
        (root.templates_dir / "t.toml").write_text(dump(doc))
        check_everything(root)
        assert_problems(validate_path(root.templates_dir / "t.toml", root)[1])
        _data, problems = check_template(root.templates_dir / "t.toml")
        assert_problems(problems)


@SETTINGS
@given(
    jobs=st.dictionaries(st.sampled_from(JOB_NAMES), job_tables, min_size=1, max_size=5),
    stages=st.lists(st.sampled_from(["build", "test", "deploy"]), max_size=3, unique=True),
)
def test_random_job_tables_give_problems_not_exceptions(jobs: dict[str, dict[str, Any]], stages: list[str]) -> None:
    with fresh_root() as root:
        paths = write_pipeline(root, {"prompt": "p", "stages": stages}, jobs)
        check_everything(root, paths)
        (root.templates_dir / "t.toml").write_text(dump({"stages": stages, "jobs": jobs}))
        assert_problems(check_template(root.templates_dir / "t.toml")[1])


@SETTINGS
@given(text=st.binary(max_size=60))
def test_arbitrary_bytes_as_spec_files_give_problems(text: bytes) -> None:
    with fresh_root() as root:
        paths = write_pipeline(root, {"prompt": "p"}, {"a": {"command": ["true"]}})
        (paths.jobs_dir / "b.toml").write_bytes(text)
        (root.templates_dir / "t.toml").write_bytes(text)
        check_everything(root, paths)
        root.config_file.write_bytes(text)
        paths.spec_file.write_bytes(text)
        check_everything(root, paths)


@st.composite
def plausible_templates(draw: st.DrawFn) -> dict[str, Any]:
    """Templates that are mostly right, so that many of them instantiate."""
    stages = draw(st.lists(st.sampled_from(["build", "test", "deploy"]), max_size=3, unique=True))
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "d.r1", "e_2"]), min_size=1, max_size=4, unique=True))
    text = st.sampled_from(["x", "{{ v }}", "{{w}} and {{ v }}", "{{ .Go }}", "{ {v} }", "a\r\nb"])
    jobs = {}
    for i, name in enumerate(names):
        job: dict[str, Any] = draw(st.sampled_from([{"command": ["sh", "-c", draw(text)]}, {"command": draw(text)},
                                                    {"agent": draw(text)}]))
        earlier = names[:i]
        if earlier and draw(st.booleans()):
            job["needs"] = draw(st.lists(
                st.sampled_from(earlier) | st.fixed_dictionaries(
                    {"job": st.sampled_from(earlier), "when": st.sampled_from(["success", "failure", "always"])}),
                max_size=2))
        if stages and draw(st.booleans()):
            job["stage"] = draw(st.sampled_from(stages))
        needed = [n if isinstance(n, str) else n["job"] for n in job.get("needs", [])]
        if needed and draw(st.booleans()):
            job["from"] = draw(st.lists(st.sampled_from(needed), max_size=2))
        optional = {
            "retries": st.integers(min_value=0, max_value=3), "timeout": st.sampled_from(["1s", "2m", 5, "1h30m"]),
            "env": st.dictionaries(st.sampled_from(["A", "B"]), text, max_size=2),
            "backoff": st.fixed_dictionaries(
                {}, optional={"initial": st.sampled_from(["1s", 2]), "factor": st.just(2.0)}),
            "allow_failure": st.booleans(), "outputs": st.lists(text, max_size=2), "description": text,
        }
        for key, strategy in optional.items():
            if draw(st.integers(0, 3)) == 0:
                job[key] = draw(strategy)
        jobs[name] = job
    variables = {
        name: {"default": draw(st.sampled_from(["1", 2, 2.5, True, "{{ v }}"]))} if draw(st.integers(0, 3)) else {}
        for name in ("v", "w")
    }
    roles = {"dev": {"instructions": draw(text)}} if draw(st.booleans()) else {}
    return {"stages": stages, "variables": variables, "roles": roles, "jobs": jobs}


@SETTINGS
@given(
    template=plausible_templates(),
    sets=st.dictionaries(st.sampled_from(["v", "w"]), st.text(max_size=5), max_size=2),
)
def test_a_clean_template_instantiates_into_a_clean_pipeline(template: dict[str, Any], sets: dict[str, str]) -> None:
    with fresh_root() as root:
        (root.templates_dir / "t.toml").write_text(dump(template))
        template_ok = not check_template(root.templates_dir / "t.toml")[1]
        try:
            paths = new_pipeline(root, "t", "prompt", "p", sets)
        except ClowderError:
            event("refused")
            return
        event("instantiated")
        assert template_ok
        pipeline, problems = check_pipeline(paths)
        assert problems == []
        assert pipeline is not None and pipeline.spec.prompt == "prompt"


STATES = ["pending", "queued", "running", "retrying", "waiting", "lost", "succeeded", "failed", "skipped",
          "cancelled"]
times = st.datetimes(timezones=st.none() | st.just(UTC)) | st.dates() | scalars
attempt_tables = st.fixed_dictionaries(
    {"number": st.integers(min_value=0, max_value=3) | scalars, "state": st.sampled_from(STATES) | scalars},
    optional={"started_at": times, "ended_at": times, "exit_code": scalars, "commit": scalars,
              "artifacts": st.lists(st.dictionaries(st.sampled_from(["path", "blob", "size", "kind"]), scalars))},
)
status_tables = st.fixed_dictionaries(
    {"state": st.sampled_from(STATES) | scalars},
    optional={"attempt": st.integers(min_value=0, max_value=3) | scalars, "message": scalars,
              "attempts": st.lists(attempt_tables, max_size=2) | scalars, "started_at": times, "ended_at": times,
              "retry_at": times, "waiting_for": toml_values, "spawned": toml_values},
)


@SETTINGS
@given(job_status=documents | status_tables, pipeline_status=documents | status_tables)
def test_random_status_files_give_problems_not_exceptions(
    job_status: dict[str, Any], pipeline_status: dict[str, Any]
) -> None:
    with fresh_root() as root:
        paths = write_pipeline(root, {"prompt": "p"}, {"a": {"command": ["true"]}})
        paths.status_dir.mkdir()
        paths.job_status_file("a").write_text(dump(job_status))
        check_everything(root, paths)
        assert_problems(check_status_file(paths.job_status_file("a"))[1])
        paths.status_file.write_text(dump(pipeline_status))
        check_everything(root, paths)


@settings(max_examples=60, deadline=None)
@given(prompt=st.text(min_size=1), value=st.text())
def test_any_prompt_and_variable_value_are_stored_verbatim(prompt: str, value: str) -> None:
    # A NUL can never reach a command: `clowder new` refuses it like `clowder validate` does.
    assume(prompt.strip() and "{{" not in value and "\0" not in value)
    with fresh_root() as root:
        (root.templates_dir / "t.toml").write_text(
            '[variables]\nv = {}\n[jobs.a]\ncommand = ["echo", "<{{ v }}>"]\n'
        )
        paths = new_pipeline(root, "t", prompt, "p", {"v": value})
        with paths.spec_file.open("rb") as f:
            assert tomllib.load(f)["prompt"] == prompt
        with paths.job_file("a").open("rb") as f:
            assert tomllib.load(f)["command"] == ["echo", f"<{value}>"]


# -- durations ------------------------------------------------------------------------------

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
duration_parts = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=10_000) | st.decimals(min_value=0, max_value=1000, places=3),
        st.sampled_from(sorted(UNITS)),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(parts=duration_parts)
def test_any_valid_duration_string_parses_to_the_sum_of_its_parts(parts: list[tuple[Any, str]]) -> None:
    text = "".join(f"{number}{unit}" for number, unit in parts)
    expected = sum(float(number) * UNITS[unit] for number, unit in parts)
    if expected > MAX_DURATION:
        with pytest.raises(ValueError, match="must be at most 365d"):
            parse_duration(text)
        return
    assert math.isclose(parse_duration(text), expected, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(min_value=0, max_value=10**9) | st.floats(min_value=0, max_value=1e9))
def test_non_negative_numbers_are_seconds(seconds: float) -> None:
    if seconds > MAX_DURATION:
        with pytest.raises(ValueError, match="must be at most 365d"):
            parse_duration(seconds)
        return
    assert parse_duration(seconds) == float(seconds)


@settings(max_examples=200, deadline=None)
@given(junk=st.text(max_size=10))
def test_junk_durations_raise_value_error(junk: str) -> None:
    try:
        seconds = parse_duration(junk)
    except ValueError:
        return
    # Anything accepted is a well-formed duration: digits and units all the way through.
    assert seconds >= 0
    assert junk.strip() and junk.strip()[0].isdigit()


@settings(max_examples=100, deadline=None)
@given(value=st.none() | st.booleans() | st.lists(st.integers(), max_size=2) | st.integers(max_value=-1)
       | st.floats(max_value=-1e-9) | st.just(math.nan) | st.just(math.inf))
def test_non_durations_raise_value_error(value: Any) -> None:
    try:
        parse_duration(value)
    except ValueError:
        return
    raise AssertionError(f"parse_duration({value!r}) did not raise")


@SETTINGS
@given(doc=documents | job_tables | status_tables,
       kind=st.sampled_from(["job", "pipeline", "clowder", "template", "status"]))
@example(doc={"command": ["x"], "retries": 0.0}, kind="job")  # jsonschema-rs alone takes it: failed 1 run in ~10
def test_the_fast_validator_agrees_with_jsonschema(doc: dict[str, Any], kind: str) -> None:
    """schema.check trusts jsonschema-rs when it says a file is valid: it must never accept
    what jsonschema, whose errors Clowder shows, would refuse (nor the other way round)."""
    from clowder import schema

    slow = not any(True for _ in schema._validator(kind).iter_errors(doc))
    try:
        fast = schema.fast_valid(kind, doc)
    except ValueError:  # a value JSON has no type for: check() asks jsonschema instead
        return
    event(f"{kind}: {'valid' if slow else 'invalid'}")
    # A whole float's second look (made 2.5 for 2.0) may fail at its key's bound: then
    # jsonschema judges, so only "fast says valid" must always be right there.
    assert fast == slow or (not fast and schema._has_whole_float(doc)), doc


# -- the scheduler: an incremental step answers as a full pass does ---------------------------

@st.composite
def scheduled_roots(draw: st.DrawFn) -> list[Pipeline]:
    """One to three pipelines of up to eight jobs, with needs on earlier jobs (every `when`), an
    allowed failure, a resource pool, and each pipeline's own share and priority."""
    pipelines = []
    for p in range(draw(st.integers(1, 3))):
        jobs: dict[str, dict[str, Any]] = {}
        for i in range(draw(st.integers(1, 8))):
            job: dict[str, Any] = {"command": ["x"]}
            needs = draw(st.lists(st.sampled_from(list(jobs)), unique=True, max_size=2)) if jobs else []
            if needs:
                job["needs"] = [{"job": n, "when": draw(st.sampled_from(["success", "failure", "always"]))}
                                for n in needs]
            if draw(st.integers(0, 4)) == 0:
                job["resources"] = {"gpu": 1}
            if draw(st.integers(0, 4)) == 0:
                job["allow_failure"] = True
            jobs[f"j{i}"] = job
        spec: dict[str, Any] = {"prompt": "x", "priority": draw(st.integers(-1, 1))}
        if draw(st.booleans()):
            spec["max_parallel"] = draw(st.integers(1, 2))
        pipelines.append(build_pipeline(f"p{p}", spec, jobs, Config()))
    return pipelines


@dataclass
class Simulated:
    """A pipeline as the driver keeps it between steps."""

    pipeline: Pipeline
    status: PipelineStatus = dataclass_field(default_factory=PipelineStatus)
    jobs: dict[str, JobStatus] = dataclass_field(default_factory=dict)
    ready: ReadyQueue = dataclass_field(default_factory=ReadyQueue)
    outcomes: dict[str, Outcome] = dataclass_field(default_factory=dict)

    def view(self, full: bool) -> PipelineView:
        running = {j for j, s in self.jobs.items() if s.state is JobState.RUNNING}
        active = {j for j, s in self.jobs.items() if not s.state.terminal and s.state is not JobState.PENDING}
        return PipelineView(self.pipeline.name, self.pipeline, (), self.status, dict(self.jobs),
                            outcomes=dict(self.outcomes), alive=dict.fromkeys(running, True),
                            focus=None if full else frozenset(active | set(self.outcomes)),
                            ready=() if full else self.ready)


def queues_after(plan: Plan, sims: dict[str, Simulated], start_empty: bool) -> dict[str, list[str]]:
    queues = {name: ReadyQueue() if start_empty else ReadyQueue.of(list(s.ready), s.pipeline.position)
              for name, s in sims.items()}
    for change in plan.ready:
        queues[change.pipeline].apply(change)
    return {name: list(q) for name, q in queues.items()}


@settings(max_examples=80, deadline=None)
@given(root=scheduled_roots(), max_parallel=st.integers(1, 4), data=st.data())
def test_an_incremental_step_decides_what_a_full_pass_decides(root: list[Pipeline], max_parallel: int,
                                                                data: st.DataObject) -> None:
    """Driven as the driver drives it (a full pass first, then steps that look only at the jobs
    that are active or just ended and at the ready queues kept between steps), every step's
    actions, wake-up and ready queues are those of a full pass over the same tree."""
    limits = Limits(max_parallel=max_parallel, resources={"gpu": 1})
    sims = {p.name: Simulated(p) for p in root}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    full = reconcile([s.view(True) for s in sims.values()], now, limits)
    for step in range(40):
        if step:
            full = reconcile([s.view(True) for s in sims.values()], now, limits)
            plan = reconcile([s.view(False) for s in sims.values()], now, limits)
            assert plan.actions == full.actions
            assert plan.wake_at == full.wake_at
            assert queues_after(plan, sims, False) == queues_after(full, sims, True)
        else:
            plan = full
        for action in plan.actions:
            if isinstance(action, SetJob):
                sims[action.pipeline].jobs[action.status.job] = action.status
            elif isinstance(action, SetPipeline):
                sims[action.pipeline].status = action.status
        for change in plan.ready:
            sims[change.pipeline].ready.apply(change)
        now += timedelta(seconds=1)
        for sim in sims.values():
            sim.outcomes = {}
            for job, status in sim.jobs.items():
                if status.state is JobState.RUNNING and data.draw(st.booleans(), label=f"{job} ends"):
                    sim.outcomes[job] = Outcome(data.draw(st.sampled_from([0, 0, 1])), now)
        if all(s.status.state.terminal for s in sims.values()):
            return
