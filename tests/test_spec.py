"""Spec records: durations, names, and the builders that turn clean TOML into records."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clowder.errors import UsageError
from clowder.spec import (
    Backoff,
    Config,
    JobSpec,
    Need,
    RetryPolicy,
    When,
    check_name,
    config_from_dict,
    format_duration,
    is_name,
    job_from_dict,
    parse_assignment,
    parse_duration,
    pipeline_spec_from_dict,
    spec_hash,
    with_stage_needs,
)

# -- durations --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("2s", 2), ("5m", 300), ("1h30m", 5400), ("1d", 86400), ("1.5s", 1.5),
    ("1h1m1s1ms", 3661.001), (" 2s ", 2), ("0s", 0), (10, 10), (2.5, 2.5), (0, 0),
])
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert math.isclose(parse_duration(text), seconds)


@pytest.mark.parametrize("junk", [
    "", " ", "5", "s", "5x", "1h 30m", "-1s", "1.s", ".5s", "1e3s", "5mm", "1h30", "١s", True, None, [1], -1,
    math.nan, math.inf, "9" * 400 + "s",
])
def test_parse_duration_rejects_junk(junk: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(junk)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0ms"), (0.25, "250ms"), (1.5, "1.5s"), (59, "59.0s"), (90, "1m30s"), (3599, "59m59s"),
    (3600, "1h00m"), (5400, "1h30m"), (90000, "25h00m"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=200, deadline=None)
@given(seconds=st.floats(min_value=0, max_value=1e7))
def test_parse_duration_reads_what_format_duration_writes(seconds: float) -> None:
    # format_duration rounds to its coarsest unit: ms below 1 s, 0.1 s below 1 m, s, then m.
    tolerance = 0.0005 if seconds < 1 else 0.05 if seconds < 60 else 1 if seconds < 3600 else 60
    assert abs(parse_duration(format_duration(seconds)) - seconds) <= tolerance + 1e-9


def test_backoff_delay_grows_by_factor_up_to_max() -> None:
    b = Backoff(initial=2, factor=3, max=50)
    assert [b.delay(n) for n in range(0, 6)] == [2, 2, 6, 18, 50, 50]


def test_backoff_delay_of_many_retries_stays_at_max() -> None:
    # 100.0 ** 999 overflows a float: the delay is capped long before, never an OverflowError.
    assert Backoff(initial=0.001, factor=100, max=0.001).delay(1000) == 0.001


@pytest.mark.parametrize("text", ["1000000000d", "366d", 31536001, 1e12, "8761h"])
def test_durations_past_a_year_are_refused(text: str | float) -> None:
    with pytest.raises(ValueError, match="must be at most 365d"):
        parse_duration(text)


# -- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "0", "dev", "dev.r1", "a_b-c.d", "x" * 64])
def test_valid_names(name: str) -> None:
    assert is_name(name)
    assert check_name(name, "job") == name


@pytest.mark.parametrize("name", ["", "A", "-a", ".a", "_a", "a/b", "..", "a b", "x" * 65, "é", "a\n"])
def test_invalid_names(name: str) -> None:
    assert not is_name(name)
    with pytest.raises(UsageError, match=re.escape(f"invalid job name {name!r}")):
        check_name(name, "job")


def test_non_strings_are_not_names() -> None:
    assert not is_name(None)
    assert not is_name(5)


# -- --set ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "pair"), [
    ("k=v", ("k", "v")), ("k=", ("k", "")), ("k=a=b", ("k", "a=b")), (" k =v ", ("k", "v ")),
])
def test_parse_assignment(text: str, pair: tuple[str, str]) -> None:
    assert parse_assignment(text) == pair


@pytest.mark.parametrize("text", ["k", "=v", " =v", ""])
def test_parse_assignment_rejects_missing_key_or_equals(text: str) -> None:
    with pytest.raises(UsageError, match="--set expects KEY=VALUE"):
        parse_assignment(text)


# -- builders ---------------------------------------------------------------------------------

def test_job_from_dict_fills_defaults_from_the_retry_policy() -> None:
    policy = RetryPolicy(retries=2, backoff=Backoff(1, 2, 10), max_regressions=5)
    job = job_from_dict("a", {"command": "true"}, policy)
    assert job == JobSpec(
        name="a", command="true", retries=2, backoff=Backoff(1, 2, 10), max_regressions=5,
        spec_hash=spec_hash({"command": "true"}),
    )
    assert job.sources == ()


def test_job_from_dict_reads_every_key() -> None:
    data = {
        "stage": "test", "command": ["pytest", "-q"], "needs": ["dev", {"job": "lint", "when": "always"}],
        "from": ["dev"], "outputs": ["report.xml"], "retries": 1,
        "backoff": {"initial": "500ms", "factor": 3.0, "max": "1m"}, "timeout": "30m",
        "env": {"SEED": 0, "ON": True}, "allow_failure": True, "max_regressions": 0,
        "resources": {"llm": 1}, "description": "tests",
    }
    job = job_from_dict("test", data, RetryPolicy())
    assert job.command == ("pytest", "-q")
    assert job.needs == (Need("dev"), Need("lint", When.ALWAYS))
    assert job.explicit_needs
    assert job.from_ == ("dev",)
    assert job.sources == ("dev",)
    assert job.outputs == ("report.xml",)
    assert job.backoff == Backoff(0.5, 3.0, 60)
    assert job.timeout == 1800
    assert job.env == {"SEED": "0", "ON": "true"}
    assert (job.retries, job.allow_failure, job.max_regressions) == (1, True, 0)
    assert job.resources == {"llm": 1}


def test_sources_default_to_every_need() -> None:
    job = job_from_dict("c", {"command": "x", "needs": ["a", {"job": "b", "when": "failure"}]}, RetryPolicy())
    assert job.sources == ("a", "b")


def test_spec_hash_ignores_key_order_and_sees_values() -> None:
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})


def test_config_from_dict() -> None:
    config = config_from_dict({
        "max_parallel": 2, "sweep_interval": "1m", "kill_grace": 3,
        "retry": {"retries": 1, "backoff": {"initial": "1s"}},
        "resources": {"llm": 4},
        "harnesses": {"scripted": {"command": ["python", "-m", "x"], "env": {"A": "1"}}},
        "default_harness": "scripted",
        "git": {"author_name": "Bot"},
    })
    assert (config.max_parallel, config.sweep_interval, config.kill_grace) == (2, 60, 3)
    assert config.retry == RetryPolicy(retries=1, backoff=Backoff(1, 2, 300))
    assert config.resources == {"llm": 4}
    assert config.harnesses["scripted"].command == ("python", "-m", "x")
    assert config.default_harness == "scripted"
    assert (config.git_author_name, config.git_author_email) == ("Bot", "clowder@localhost")
    assert config_from_dict({}) == Config()


def test_pipeline_spec_from_dict() -> None:
    spec = pipeline_spec_from_dict("p", {
        "prompt": "do it", "stages": ["a", "b"], "source": {"repo": "/r"}, "variables": {"n": 3},
        "roles": {"dev": {"instructions": "be good"}},
    })
    assert spec.prompt == "do it"
    assert spec.stages == ("a", "b")
    assert spec.source is not None and (spec.source.repo, spec.source.ref) == ("/r", None)
    assert spec.variables == {"n": "3"}
    assert spec.roles["dev"].instructions == "be good"


# -- stages -----------------------------------------------------------------------------------

def _jobs(**tables: dict[str, object]) -> dict[str, JobSpec]:
    return {name: job_from_dict(name, {"command": "x", **t}, RetryPolicy()) for name, t in tables.items()}


def _needs(jobs: dict[str, JobSpec]) -> dict[str, list[str]]:
    return {name: [n.job for n in job.needs] for name, job in jobs.items()}


def test_staged_job_without_needs_needs_the_whole_previous_stage() -> None:
    jobs = _jobs(c1={"stage": "build"}, c2={"stage": "build"}, t={"stage": "test"}, d={"stage": "deploy"})
    assert _needs(with_stage_needs(jobs, ("build", "test", "deploy"))) == {
        "c1": [], "c2": [], "t": ["c1", "c2"], "d": ["t"],
    }


def test_empty_stage_is_skipped_over() -> None:
    jobs = _jobs(b={"stage": "build"}, d={"stage": "deploy"})
    assert _needs(with_stage_needs(jobs, ("build", "test", "deploy")))["d"] == ["b"]


def test_explicit_needs_replace_stage_order() -> None:
    jobs = _jobs(a={"stage": "build"}, b={"stage": "build"}, t={"stage": "test", "needs": ["a"]})
    assert _needs(with_stage_needs(jobs, ("build", "test")))["t"] == ["a"]


def test_empty_needs_list_opts_out_of_stage_order() -> None:
    jobs = _jobs(a={"stage": "build"}, t={"stage": "test", "needs": []})
    assert _needs(with_stage_needs(jobs, ("build", "test")))["t"] == []


def test_unstaged_jobs_are_untouched() -> None:
    jobs = _jobs(a={"stage": "build"}, loose={})
    assert _needs(with_stage_needs(jobs, ("build",)))["loose"] == []
