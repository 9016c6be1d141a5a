"""Specs: the hand-written files (clowder.toml, templates, pipeline.toml, jobs/*.toml) as records.

Builders here assume their input passed the validator (`clowder.validate`); they never see
raw user mistakes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Any

from clowder.errors import UsageError
from clowder.graph import topo_order
from clowder.state import FailureKind
from clowder.tree import NAME_PATTERN as NAME_PATTERN
from clowder.tree import NAME_RE as NAME_RE
from clowder.tree import NAME_RULE as NAME_RULE
from clowder.tree import check_name as check_name
from clowder.tree import is_name as is_name

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_RULE = "use a number of seconds or e.g. 500ms, 2s, 5m, 1h30m"
# Every duration is added to a datetime somewhere (a deadline, a retry time): past a year it is a
# mistake, and past ~10^13 s it overflows datetime arithmetic in the daemon.
MAX_DURATION = 365 * 86400.0


def parse_duration(value: object) -> float:
    """Seconds in a duration: a number of seconds, or a string like "500ms", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: {DURATION_RULE}")
    if isinstance(value, int | float):
        seconds = float(value) if abs(value) < 1e300 else math.inf
        if not math.isfinite(seconds):
            raise ValueError(f"invalid duration {value!r}: must be a finite number")
        if seconds < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return _bounded(value, seconds)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: {DURATION_RULE}")
    return _parse_duration_text(value)


@lru_cache(maxsize=256)
def _parse_duration_text(value: str) -> float:
    """A duration string's seconds. Cached: `clowder reindex` parses three per job, nearly all alike
    (1.3 µs each, 0.2 µs cached)."""
    text = value.strip()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}: {DURATION_RULE}")
    return _bounded(value, total)


def _bounded(value: object, seconds: float) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"invalid duration {value!r}: must be at most 365d")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class When(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    ALWAYS = "always"
    MANUAL = "manual"  # as `success`, then wait for `clowder approve` (GitLab's `when: manual`)


@dataclass(frozen=True)
class Need:
    job: str
    when: When = When.SUCCESS


@dataclass(frozen=True)
class Backoff:
    initial: float = 2.0
    factor: float = 2.0
    max: float = 300.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before the retry that follows the `failures`-th failed attempt."""
        try:
            grown = self.initial * self.factor ** max(0, failures - 1)
        except OverflowError:  # many retries of a large factor: the cap applies long before
            grown = math.inf
        return float(min(self.max, grown))


# A transient failure (a rate limit, a server error, a lost connection) is retried this many times
# even when `retries` is smaller, unless `retry_on` leaves `transient` out. A wrong key (`config`)
# is never retried unless asked for: a retry only burns time.
TRANSIENT_RETRIES = 3
RETRY_ON = (FailureKind.TRANSIENT, FailureKind.AGENT, FailureKind.COMMAND)
# An agent that printed nothing for this long is stuck (a CLI waiting on a dead connection).
AGENT_IDLE_TIMEOUT = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    max_regressions: int = 3


@dataclass(frozen=True)
class Source:
    repo: str
    ref: str | None = None
    worktree: bool = False  # start from the checkout's working tree as it is (a snapshot commit)


def is_url(repo: str) -> bool:
    """A source named by URL (`https://...`, `file://...`, `git@host:path`), not a path."""
    return "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo) is not None


@dataclass(frozen=True)
class Harness:
    name: str
    command: tuple[str, ...] | str
    env: Mapping[str, str] = field(default_factory=dict)
    adapter: str = "actions"
    model: str | None = None  # the model it runs: passed to a built-in CLI, and the key of its price


@dataclass(frozen=True)
class Price:
    """USD per million tokens of one model (clowder.toml `[prices."<model>"]`); cache reads and
    writes cost as much as input unless priced."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class ExecutorSpec:
    """clowder.toml's `executor`: where attempts run. `dask` names its scheduler by address or
    by the file `dask scheduler --scheduler-file` writes."""

    kind: str = "local"
    scheduler: str | None = None
    scheduler_file: str | None = None


@dataclass(frozen=True)
class Config:
    """clowder.toml."""

    max_parallel: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    resources: Mapping[str, int] = field(default_factory=dict)
    harnesses: Mapping[str, Harness] = field(default_factory=dict)
    default_harness: str | None = None
    prices: Mapping[str, Price] = field(default_factory=dict)
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    git_author_name: str = "Clowder"
    git_author_email: str = "clowder@localhost"
    sweep_interval: float = 30.0
    heartbeat_timeout: float = 30.0
    kill_grace: float = 10.0
    # A spec file found invalid that changed less than this ago is being written: read it again
    # once it has been quiet this long before blocking its pipeline.
    settle: float = 2.0
    # How often the daemon looks for changes when it polls (`--poll`, or a Dask executor: file
    # events never see what other machines write).
    poll_interval: float = 1.0
    notify: tuple[NotifyTarget, ...] = ()  # [[notify]]: told of every pipeline's events


@dataclass(frozen=True)
class JobSpec:
    name: str
    command: tuple[str, ...] | str | None = None
    agent: str | None = None
    stage: str | None = None
    needs: tuple[Need, ...] = ()
    # `needs = []` written out means "start at once", as in GitLab CI: no stage edges either.
    explicit_needs: bool = False
    from_: tuple[str, ...] | None = None
    outputs: tuple[str, ...] = ()
    # Paths its workspace holds (a sparse checkout); empty: the whole tree. Its commits carry the whole tree.
    sparse_checkout: tuple[str, ...] = ()
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float | None = None
    retry_on: tuple[FailureKind, ...] = RETRY_ON
    idle_timeout: float | None = None  # no output to its log for this long: killed (agent jobs: 10m)
    env: Mapping[str, str] = field(default_factory=dict)
    allow_failure: bool = False
    max_regressions: int = 3
    resources: Mapping[str, int] = field(default_factory=dict)
    harness: str | None = None
    max_cost_usd: float | None = None
    parent: str | None = None
    regression_of: str | None = None
    regression_context: Mapping[str, Any] | None = None
    script: tuple[Mapping[str, Any], ...] = ()  # steps for the scripted agent (clowder.harness.scripted)
    description: str = ""
    output_schema: Mapping[str, Any] | str | None = None  # JSON Schema of output.json: inline, or a file under the root
    cache: bool = False  # a command job: reuse an earlier successful attempt with the same inputs
    spec_hash: str = ""

    def retries_for(self, kind: FailureKind) -> int:
        """How many automatic retries a failure of this kind gets in a row."""
        if kind not in self.retry_on:
            return 0
        return max(self.retries, TRANSIENT_RETRIES) if kind is FailureKind.TRANSIENT else self.retries

    @property
    def sources(self) -> tuple[str, ...]:
        """The jobs whose final commits this job's workspace starts from."""
        if self.from_ is not None:
            return self.from_
        return tuple(n.job for n in self.needs)


@dataclass(frozen=True)
class Role:
    name: str
    instructions: str = ""
    harness: str | None = None
    script: tuple[Mapping[str, Any], ...] = ()  # the scripted agent's steps for jobs of this role
    output_schema: Mapping[str, Any] | str | None = None


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    prompt: str
    template: str | None = None
    stages: tuple[str, ...] = ()
    source: Source | None = None
    max_parallel: int | None = None
    priority: int = 0  # tilts the pipeline's fair share of the slots: each step up doubles it
    variables: Mapping[str, str] = field(default_factory=dict)
    roles: Mapping[str, Role] = field(default_factory=dict)
    created_at: datetime | None = None
    max_cost_usd: float | None = None
    export_exclude: tuple[str, ...] = ()  # `export = { exclude = [...] }`: gitignore patterns clowder export leaves out
    notify: tuple[NotifyTarget, ...] = ()  # [[notify]]: told of this pipeline's events


@dataclass(frozen=True)
class Pipeline:
    """A pipeline as the scheduler sees it: its spec and its jobs, stage edges made explicit."""

    spec: PipelineSpec
    jobs: Mapping[str, JobSpec]

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def order(self) -> tuple[str, ...]:
        """Job names, each after everything it needs; computed once per loaded spec."""
        return tuple(topo_order({n: [x.job for x in j.needs] for n, j in self.jobs.items()}))

    @cached_property
    def position(self) -> Mapping[str, int]:
        return {name: i for i, name in enumerate(self.order)}

    @cached_property
    def dependents(self) -> Mapping[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {n: [] for n in self.jobs}
        for name in self.order:
            for need in self.jobs[name].needs:
                if need.job in out:
                    out[need.job].append(name)
        return {n: tuple(d) for n, d in out.items()}

    @cached_property
    def consumers(self) -> Mapping[str, int]:
        """How many jobs' workspaces start from each job: once per loaded spec, not a walk of
        every job at each start (quadratic in a pipeline's size)."""
        return Counter(source for job in self.jobs.values() for source in set(job.sources))


def spec_hash(data: Mapping[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _backoff(data: Mapping[str, Any] | None, default: Backoff) -> Backoff:
    if not data:
        return default
    return Backoff(
        initial=parse_duration(data.get("initial", default.initial)),
        factor=float(data.get("factor", default.factor)),
        max=parse_duration(data.get("max", default.max)),
    )


def env_value(value: object) -> str:
    """An `env` value as the job sees it: a string as written, any other value as TOML writes
    it (`B = true` is `true`, not Python's `True`; `N = 1.5` is `1.5`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # 1.5, 1e+20: TOML's own spelling (nan and inf are refused by validate)
    return str(value)


def _command(value: object) -> tuple[str, ...] | str | None:
    if value is None or isinstance(value, str):
        return value
    assert isinstance(value, list)
    return tuple(value)


def _need(item: str | Mapping[str, Any]) -> Need:
    if isinstance(item, str):
        return Need(item)
    return Need(item["job"], When(item.get("when", "success")))


def config_from_dict(data: Mapping[str, Any]) -> Config:
    retry = data.get("retry", {})
    default = RetryPolicy()
    policy = RetryPolicy(
        retries=retry.get("retries", default.retries),
        backoff=_backoff(retry.get("backoff"), default.backoff),
        max_regressions=retry.get("max_regressions", default.max_regressions),
    )
    git = data.get("git", {})
    harnesses = {
        name: Harness(name, _command(h.get("command")) or (), dict(h.get("env", {})),
                      h.get("adapter", "actions"), h.get("model"))
        for name, h in data.get("harnesses", {}).items()
    }
    prices = {model: Price(p["input"], p["output"], p.get("cache_read"), p.get("cache_write"))
              for model, p in data.get("prices", {}).items()}
    return Config(
        max_parallel=data.get("max_parallel", Config.max_parallel),
        retry=policy,
        resources=dict(data.get("resources", {})),
        harnesses=harnesses,
        default_harness=data.get("default_harness"),
        prices=prices,
        executor=ExecutorSpec(**data.get("executor", {})),
        git_author_name=git.get("author_name", Config.git_author_name),
        git_author_email=git.get("author_email", Config.git_author_email),
        sweep_interval=parse_duration(data.get("sweep_interval", Config.sweep_interval)),
        heartbeat_timeout=parse_duration(data.get("heartbeat_timeout", Config.heartbeat_timeout)),
        kill_grace=parse_duration(data.get("kill_grace", Config.kill_grace)),
        settle=parse_duration(data.get("settle", Config.settle)),
        poll_interval=parse_duration(data.get("poll_interval", Config.poll_interval)),
        notify=notify_targets(data.get("notify", [])),
    )


def _idle_timeout(data: Mapping[str, Any]) -> float | None:
    """The job's idle timeout: `idle_timeout = 0` turns it off; agent jobs have one by default."""
    value = data.get("idle_timeout")
    if value is None:
        return AGENT_IDLE_TIMEOUT if "agent" in data else None
    seconds = parse_duration(value)
    return seconds or None


def job_from_dict(name: str, data: Mapping[str, Any], policy: RetryPolicy) -> JobSpec:
    timeout = data.get("timeout")
    return JobSpec(
        name=name,
        command=_command(data.get("command")),
        agent=data.get("agent"),
        stage=data.get("stage"),
        needs=tuple(_need(n) for n in data.get("needs", [])),
        explicit_needs="needs" in data,
        from_=tuple(data["from"]) if "from" in data else None,
        outputs=tuple(data.get("outputs", [])),
        sparse_checkout=tuple(data.get("sparse_checkout", [])),
        retries=data.get("retries", policy.retries),
        backoff=_backoff(data.get("backoff"), policy.backoff),
        timeout=parse_duration(timeout) if timeout is not None else None,
        retry_on=tuple(FailureKind(k) for k in data["retry_on"]) if "retry_on" in data else RETRY_ON,
        idle_timeout=_idle_timeout(data),
        env={k: env_value(v) for k, v in data.get("env", {}).items()},
        allow_failure=data.get("allow_failure", False),
        max_regressions=data.get("max_regressions", policy.max_regressions),
        resources=dict(data.get("resources", {})),
        harness=data.get("harness"),
        max_cost_usd=data.get("max_cost_usd"),
        parent=data.get("parent"),
        regression_of=data.get("regression_of"),
        regression_context=data.get("regression_context"),
        script=tuple(data.get("script", ())),
        description=data.get("description", ""),
        output_schema=data.get("output_schema"),
        cache=data.get("cache") is True,
        # `cache` says whether to run, not what to compute: turning it on leaves the job up to date.
        spec_hash=spec_hash({k: v for k, v in data.items() if k != "cache"}),
    )


def pipeline_spec_from_dict(name: str, data: Mapping[str, Any]) -> PipelineSpec:
    source = data.get("source")
    roles = {
        role: Role(role, r.get("instructions", ""), r.get("harness"), tuple(r.get("script", ())),
                   r.get("output_schema"))
        for role, r in data.get("roles", {}).items()
    }
    created = data.get("created_at")
    return PipelineSpec(
        name=name,
        prompt=data["prompt"],
        template=data.get("template"),
        stages=tuple(data.get("stages", [])),
        source=Source(source["repo"], source.get("ref"), source.get("worktree") is True) if source else None,
        max_parallel=data.get("max_parallel"),
        priority=data.get("priority", 0),
        variables={k: str(v) for k, v in data.get("variables", {}).items()},
        roles=roles,
        created_at=created if isinstance(created, datetime) else None,
        max_cost_usd=data.get("max_cost_usd"),
        export_exclude=tuple(data.get("export", {}).get("exclude", ())),
        notify=notify_targets(data.get("notify", [])),
    )


def with_stage_needs(jobs: Mapping[str, JobSpec], stages: tuple[str, ...]) -> dict[str, JobSpec]:
    """Make stage ordering explicit: a staged job without `needs` needs (success) every job
    of the nearest earlier stage that has jobs, as in GitLab CI (where `needs = []` opts out)."""
    by_stage: dict[str, list[str]] = {}
    for job in jobs.values():
        if job.stage is not None:
            by_stage.setdefault(job.stage, []).append(job.name)
    result: dict[str, JobSpec] = {}
    for name, job in jobs.items():
        if job.stage is None or job.needs or job.explicit_needs or job.stage not in stages:
            result[name] = job
            continue
        earlier = [s for s in stages[: stages.index(job.stage)] if by_stage.get(s)]
        if not earlier:
            result[name] = job
            continue
        needs = tuple(Need(n) for n in sorted(by_stage[earlier[-1]]))
        result[name] = replace(job, needs=needs)
    return result


def parse_assignment(text: str) -> tuple[str, str]:
    """`K=V` from `--set K=V`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set expects KEY=VALUE, got {text!r}")
    return key.strip(), value


# -- notifications ----------------------------------------------------------------------------

class NotifyEvent(StrEnum):
    """What a `[[notify]]` table can ask to be told of (`on = [...]`)."""

    PIPELINE_SUCCEEDED = "pipeline_succeeded"
    PIPELINE_FAILED = "pipeline_failed"
    PIPELINE_BLOCKED = "pipeline_blocked"
    JOB_FAILED = "job_failed"
    WAITING_FOR_APPROVAL = "waiting_for_approval"  # a job reached its `when = "manual"` gate
    BUDGET_SPENT = "budget_spent"
    FIXUP_SPAWNED = "fixup_spawned"


NOTIFY_TIMEOUT = 10.0


@dataclass(frozen=True)
class NotifyTarget:
    """One `[[notify]]` table: the events it wants, and a command (argv) or a webhook URL."""

    on: tuple[NotifyEvent, ...]
    command: tuple[str, ...] = ()
    webhook: str = ""
    timeout: float = NOTIFY_TIMEOUT
    index: int = 0  # its place among the file's tables: `notify[0]` in log lines

    @property
    def name(self) -> str:
        return f"notify[{self.index}]"


def notify_targets(tables: list[Mapping[str, Any] | None]) -> tuple[NotifyTarget, ...]:
    """The `[[notify]]` tables the validator found sound; it puts None in place of a broken one,
    which is left out (never an error: a notification must not stop a pipeline)."""
    return tuple(
        NotifyTarget(on=tuple(NotifyEvent(e) for e in t["on"]), command=tuple(t.get("command", ())),
                     webhook=t.get("webhook", ""), timeout=parse_duration(t.get("timeout", NOTIFY_TIMEOUT)), index=i)
        for i, t in enumerate(tables) if t is not None)
