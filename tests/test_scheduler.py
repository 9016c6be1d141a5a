"""The pure scheduling step, driven with a made-up clock: no processes, no files."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clowder.scheduler import (
    Cancel,
    DoneRequest,
    Ending,
    Kill,
    Limits,
    Outcome,
    PipelineView,
    Plan,
    ReadyQueue,
    Retry,
    SetJob,
    SetPipeline,
    Spawn,
    SpawnJob,
    Start,
    attempt_ending,
    prompt_hash,
    reconcile,
)
from clowder.spec import Config, Pipeline
from clowder.state import (
    Attempt,
    FailureKind,
    JobState,
    JobStatus,
    KillReason,
    PipelineState,
    PipelineStatus,
    Usage,
)
from clowder.template import init_root
from clowder.validate import build_pipeline, check_pipeline

T0 = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
LIMITS = Limits(max_parallel=4, resources={"gpu": 1}, heartbeat_timeout=30, kill_grace=10)


def pipeline(jobs: dict[str, dict[str, Any]], stages: list[str] | None = None, name: str = "p") -> Pipeline:
    spec: dict[str, Any] = {"prompt": "do it"}
    if stages:
        spec["stages"] = stages
    return build_pipeline(name, spec, jobs, Config())


def running(job: str, number: int = 1, started: datetime = T0, **extra: Any) -> JobStatus:
    failed = [Attempt(n, JobState.FAILED, T0, T0, exit_code=1) for n in range(1, number)]
    attempts = (*failed, Attempt(number, JobState.RUNNING, started))
    return JobStatus(job, JobState.RUNNING, number, attempts=attempts, extra=extra)


def ended(job: str, state: JobState) -> JobStatus:
    return JobStatus(job, state, 1, attempts=(Attempt(1, state, T0, T0, exit_code=0 if state is JobState.SUCCEEDED
                                                        else 1),))


def view(p: Pipeline, jobs: dict[str, JobStatus] | None = None, **kw: Any) -> PipelineView:
    status = kw.pop("status", PipelineStatus(PipelineState.RUNNING, T0, prompt_hash=prompt_hash(p.spec.prompt)))
    return PipelineView(p.name, p, kw.pop("problems", ()), status, jobs or {}, **kw)


def ready_after(plan: Plan, p: Pipeline, before: tuple[str, ...] = ("j1", "j2")) -> list[str]:
    """The pipeline's ready queue once the driver has applied the step's changes to it."""
    queue = ReadyQueue.of(before, p.position)
    for change in plan.ready:
        if change.pipeline == p.name:
            queue.apply(change)
    return list(queue)


def starts(plan_actions: list[Any]) -> list[str]:
    return [a.job for a in plan_actions if isinstance(a, Start)]


def job_states(plan_actions: list[Any]) -> dict[str, JobState]:
    return {a.status.job: a.status.state for a in plan_actions if isinstance(a, SetJob)}


def test_jobs_without_needs_start_at_once_and_dependents_wait() -> None:
    p = pipeline({"a": {"command": ["true"]}, "b": {"command": ["true"]}, "c": {"command": ["true"], "needs": ["a"]}})
    plan = reconcile([view(p)], T0, LIMITS)
    assert starts(plan.actions) == ["a", "b"]
    assert "c" not in job_states(plan.actions)  # pending, as a job without a status file reads


@pytest.mark.parametrize(
    ("when", "upstream", "expected"),
    [
        ("success", JobState.SUCCEEDED, "start"),
        ("success", JobState.FAILED, JobState.SKIPPED),
        ("success", JobState.SKIPPED, JobState.SKIPPED),
        ("success", JobState.CANCELLED, JobState.SKIPPED),
        ("failure", JobState.SUCCEEDED, JobState.SKIPPED),
        ("failure", JobState.FAILED, "start"),
        ("failure", JobState.SKIPPED, JobState.SKIPPED),
        ("failure", JobState.CANCELLED, JobState.SKIPPED),
        ("always", JobState.SUCCEEDED, "start"),
        ("always", JobState.FAILED, "start"),
        ("always", JobState.SKIPPED, "start"),
        ("always", JobState.CANCELLED, "start"),
    ],
)
def test_when_matrix(when: str, upstream: JobState, expected: Any) -> None:
    p = pipeline({"up": {"command": ["true"]}, "down": {"command": ["true"], "needs": [{"job": "up", "when": when}]}})
    plan = reconcile([view(p, {"up": ended("up", upstream)})], T0, LIMITS)
    if expected == "start":
        assert starts(plan.actions) == ["down"]
    else:
        assert starts(plan.actions) == []
        assert job_states(plan.actions)["down"] is expected


def test_skip_propagates_down_a_chain_in_one_step() -> None:
    p = pipeline({"a": {"command": ["x"]}, "b": {"command": ["x"], "needs": ["a"]},
                  "c": {"command": ["x"], "needs": ["b"]}})
    plan = reconcile([view(p, {"a": ended("a", JobState.FAILED)})], T0, LIMITS)
    assert job_states(plan.actions) == {"b": JobState.SKIPPED, "c": JobState.SKIPPED}
    final = [a for a in plan.actions if isinstance(a, SetPipeline)][-1]
    assert final.status.state is PipelineState.FAILED
    assert final.status.message == "failed: a"


def test_allowed_failure_does_not_fail_the_pipeline_and_counts_as_passed() -> None:
    p = pipeline({"lint": {"command": ["x"], "allow_failure": True}, "next": {"command": ["x"], "needs": ["lint"]}})
    plan = reconcile([view(p, {"lint": ended("lint", JobState.FAILED), "next": ended("next", JobState.SUCCEEDED)})],
                     T0, LIMITS)
    final = [a for a in plan.actions if isinstance(a, SetPipeline)][-1]
    assert final.status.state is PipelineState.SUCCEEDED


def test_stages_order_jobs_without_needs() -> None:
    p = pipeline({"build": {"command": ["x"], "stage": "b"}, "test1": {"command": ["x"], "stage": "t"},
                  "test2": {"command": ["x"], "stage": "t"}, "ship": {"command": ["x"], "stage": "d"}},
                 stages=["b", "t", "d"])
    assert [n.job for n in p.jobs["ship"].needs] == ["test1", "test2"]
    plan = reconcile([view(p)], T0, LIMITS)
    assert starts(plan.actions) == ["build"]
    plan = reconcile([view(p, {"build": ended("build", JobState.SUCCEEDED)})], T0, LIMITS)
    assert starts(plan.actions) == ["test1", "test2"]


def test_max_parallel_is_never_exceeded_and_the_rest_wait_pending() -> None:
    p = pipeline({f"j{i}": {"command": ["x"]} for i in range(5)})
    plan = reconcile([view(p, {"j0": running("j0")})], T0, Limits(max_parallel=2))
    assert starts(plan.actions) == ["j1"]
    states = job_states(plan.actions)
    assert [states.get(f"j{i}", JobState.PENDING) for i in (2, 3, 4)] == [JobState.PENDING] * 3
    assert not {"j2", "j3", "j4"} & set(states)  # left pending: no status file written for them


def test_a_job_left_pending_without_a_status_file_starts_when_a_slot_frees() -> None:
    """Jobs that got no slot have no status file; an incremental step (a focus, not every job)
    still finds them through the ready list when a running job ends."""
    p = pipeline({f"j{i}": {"command": ["x"]} for i in range(3)})
    first = reconcile([view(p)], T0, Limits(max_parallel=1))
    assert starts(first.actions) == ["j0"] and set(job_states(first.actions)) == {"j0"}
    ended_j0 = ended("j0", JobState.SUCCEEDED)
    plan = reconcile([view(p, {"j0": ended_j0}, focus=frozenset({"j0"}), ready=("j1", "j2"))], T0,
                     Limits(max_parallel=1))
    assert starts(plan.actions) == ["j1"]


def test_a_pipeline_share_below_max_parallel_is_respected() -> None:
    p = build_pipeline("p", {"prompt": "x", "max_parallel": 1}, {f"j{i}": {"command": ["x"]} for i in range(3)},
                       Config())
    other = pipeline({"a": {"command": ["x"]}}, name="q")
    plan = reconcile([view(p), view(other)], T0, Limits(max_parallel=4))
    assert [(a.pipeline, a.job) for a in plan.actions if isinstance(a, Start)] == [("p", "j0"), ("q", "a")]


def test_resource_pools_are_never_oversubscribed() -> None:
    p = pipeline({"a": {"command": ["x"], "resources": {"gpu": 1}}, "b": {"command": ["x"], "resources": {"gpu": 1}},
                  "c": {"command": ["x"]}})
    plan = reconcile([view(p)], T0, LIMITS)
    assert starts(plan.actions) == ["a", "c"]
    b = [a.status for a in plan.actions if isinstance(a, SetJob) and a.status.job == "b"][-1]
    assert b.state is JobState.QUEUED
    assert b.message == "waiting for resources: gpu (1 of 1 in use)"


def test_failed_attempt_with_retries_left_waits_its_backoff_then_retries() -> None:
    p = pipeline({"a": {"command": ["x"], "retries": 2, "backoff": {"initial": "2s", "factor": 3, "max": "1m"}}})
    out = Outcome(1, T0 + timedelta(seconds=1))
    plan = reconcile([view(p, {"a": running("a")}, outcomes={"a": out})], T0 + timedelta(seconds=1), LIMITS)
    a = [x.status for x in plan.actions if isinstance(x, SetJob)][-1]
    assert a.state is JobState.RETRYING
    assert a.retry_at == T0 + timedelta(seconds=3)
    assert plan.wake_at == T0 + timedelta(seconds=3)
    # Before the backoff has passed, nothing starts; after, attempt 2 starts as a retry.
    assert starts(reconcile([view(p, {"a": a})], T0 + timedelta(seconds=2), LIMITS).actions) == []
    plan = reconcile([view(p, {"a": a})], T0 + timedelta(seconds=3), LIMITS)
    assert starts(plan.actions) == ["a"]
    started = [x.status for x in plan.actions if isinstance(x, SetJob)][-1]
    assert started.attempts[-1].trigger == "retry"
    assert started.attempt == 2


def test_backoff_grows_by_factor_up_to_max() -> None:
    p = pipeline({"a": {"command": ["x"], "retries": 5, "backoff": {"initial": "1s", "factor": 2, "max": "5s"}}})
    delays = []
    status = running("a")
    now = T0
    for _ in range(5):
        plan = reconcile([view(p, {"a": status}, outcomes={"a": Outcome(1, now)})], now, LIMITS)
        status = [x.status for x in plan.actions if isinstance(x, SetJob)][-1]
        assert status.retry_at is not None
        delays.append((status.retry_at - now).total_seconds())
        now = status.retry_at
        plan = reconcile([view(p, {"a": status})], now, LIMITS)
        status = [x.status for x in plan.actions if isinstance(x, SetJob)][-1]
    assert delays == [1, 2, 4, 5, 5]
    plan = reconcile([view(p, {"a": status}, outcomes={"a": Outcome(1, now)})], now, LIMITS)
    assert [x.status for x in plan.actions if isinstance(x, SetJob)][-1].state is JobState.FAILED


def test_timeout_sends_sigterm_then_sigkill_after_the_grace() -> None:
    p = pipeline({"a": {"command": ["x"], "timeout": "5s"}})
    plan = reconcile([view(p, {"a": running("a")})], T0 + timedelta(seconds=4), LIMITS)
    assert not [x for x in plan.actions if isinstance(x, Kill)]
    assert plan.wake_at == T0 + timedelta(seconds=5)
    plan = reconcile([view(p, {"a": running("a")})], T0 + timedelta(seconds=5), LIMITS)
    assert [(x.signal, x.reason) for x in plan.actions if isinstance(x, Kill)] == [
        (signal.SIGTERM, KillReason.TIMEOUT)]
    killing = [x.status for x in plan.actions if isinstance(x, SetJob)][-1]
    plan = reconcile([view(p, {"a": killing})], T0 + timedelta(seconds=15), LIMITS)
    assert [x.signal for x in plan.actions if isinstance(x, Kill)] == [signal.SIGKILL]
    # The executor reports the end with the reason it was killed for (the Kill said it).
    out = Outcome(143, T0 + timedelta(seconds=6), 15, killed_for=KillReason.TIMEOUT)
    plan = reconcile([view(p, {"a": killing}, outcomes={"a": out})], T0 + timedelta(seconds=6), LIMITS)
    done = [x.status for x in plan.actions if isinstance(x, SetJob)][-1]
    assert done.state is JobState.FAILED
    assert done.attempts[-1].message == "timed out after 5.0s"


def test_a_process_gone_without_exit_record_is_lost_and_retried() -> None:
    p = pipeline({"a": {"command": ["x"], "retries": 1}})
    plan = reconcile([view(p, {"a": running("a")}, alive={"a": False})], T0 + timedelta(seconds=1), LIMITS)
    a = [x.status for x in plan.actions if isinstance(x, SetJob)][-1]
    assert a.state is JobState.RETRYING
    assert a.attempts[-1].state is JobState.LOST


def test_unknown_process_becomes_lost_only_after_the_heartbeat_timeout() -> None:
    p = pipeline({"a": {"command": ["x"]}})
    plan = reconcile([view(p, {"a": running("a")}, alive={"a": None})], T0 + timedelta(seconds=29), LIMITS)
    assert not [x for x in plan.actions if isinstance(x, SetJob)]
    assert plan.wake_at == T0 + timedelta(seconds=30)
    plan = reconcile([view(p, {"a": running("a")}, alive={"a": None})], T0 + timedelta(seconds=30), LIMITS)
    assert [x.status for x in plan.actions if isinstance(x, SetJob)][-1].state is JobState.FAILED


def test_cancelling_a_pipeline_kills_running_and_cancels_pending() -> None:
    p = pipeline({"a": {"command": ["x"]}, "b": {"command": ["x"], "needs": ["a"]}})
    req = Cancel("r1")
    plan = reconcile([view(p, {"a": running("a")}, requests=(req,))], T0, LIMITS)
    assert [(x.job, x.signal, x.reason) for x in plan.actions if isinstance(x, Kill)] == [
        ("a", signal.SIGTERM, KillReason.CANCEL)]
    assert job_states(plan.actions)["b"] is JobState.CANCELLED
    assert [x.request for x in plan.actions if isinstance(x, DoneRequest)] == ["r1"]
    killing = [x.status for x in plan.actions if isinstance(x, SetJob) and x.status.job == "a"][-1]
    plan = reconcile([view(p, {"a": killing, "b": JobStatus("b", JobState.CANCELLED)},
                           outcomes={"a": Outcome(143, T0, 15, killed_for=KillReason.CANCEL)})], T0, LIMITS)
    assert job_states(plan.actions)["a"] is JobState.CANCELLED
    assert [x.status.state for x in plan.actions if isinstance(x, SetPipeline)] == [PipelineState.CANCELLED]


def test_retry_request_reruns_a_failed_job_and_what_it_gated() -> None:
    p = pipeline({"a": {"command": ["x"]}, "b": {"command": ["x"], "needs": ["a"]}})
    jobs = {"a": ended("a", JobState.FAILED), "b": JobStatus("b", JobState.SKIPPED, message="needs a")}
    status = PipelineStatus(PipelineState.FAILED, T0, T0, prompt_hash=prompt_hash("do it"))
    plan = reconcile([view(p, jobs, status=status, requests=(Retry("r1", "a"),))], T0, LIMITS)
    assert starts(plan.actions) == ["a"]
    a = [x.status for x in plan.actions if isinstance(x, SetJob) and x.status.job == "a"][-1]
    assert a.attempt == 2 and a.attempts[-1].trigger == "manual" and a.attempts[-1].request == "r1"
    assert job_states(plan.actions)["b"] is JobState.PENDING
    assert [x.status.state for x in plan.actions if isinstance(x, SetPipeline)] == [PipelineState.RUNNING]
    # The same request seen again (a crash before it was consumed) does nothing more.
    plan = reconcile([view(p, {"a": a, "b": JobStatus("b")}, requests=(Retry("r1", "a"),))], T0, LIMITS)
    assert starts(plan.actions) == []


def test_a_changed_prompt_blocks_the_pipeline_with_a_message() -> None:
    p = pipeline({"a": {"command": ["x"]}})
    status = PipelineStatus(PipelineState.RUNNING, T0, prompt_hash=prompt_hash("the original prompt"))
    plan = reconcile([view(p, status=status)], T0, LIMITS)
    assert starts(plan.actions) == []
    final = [x.status for x in plan.actions if isinstance(x, SetPipeline)][-1]
    assert final.state is PipelineState.BLOCKED and final.ended_at is None
    assert "prompt: changed after the pipeline was created" in final.message


def test_an_invalid_spec_starts_nothing_and_names_the_problem() -> None:
    p = pipeline({"a": {"command": ["x"]}})
    plan = reconcile([view(p, problems=("jobs/a.toml: <toml>: syntax error",))], T0, LIMITS)
    assert starts(plan.actions) == []
    final = [x.status for x in plan.actions if isinstance(x, SetPipeline)][-1]
    assert final.state is PipelineState.BLOCKED and not final.state.terminal
    assert final.message == "invalid spec: jobs/a.toml: <toml>: syntax error"


def test_a_spec_being_written_starts_nothing_and_changes_no_state() -> None:
    p = pipeline({"a": {"command": ["x"]}, "b": {"command": ["x"], "needs": ["a"]}})
    plan = reconcile([view(p, {"a": ended("a", JobState.SUCCEEDED)}, problems=("jobs/b.toml: <toml>: syntax error",),
                           settling=True)], T0, LIMITS)
    assert plan.actions == []


def test_a_blocked_pipeline_starts_no_regression_attempt() -> None:
    # The spawner's fix-up succeeded while a job file was broken: it waits for the fix.
    p = pipeline({"dev": {"command": ["x"]}, "test": {"command": ["x"], "needs": ["dev"]},
                  "dev.r1": {"command": ["x"], "needs": [], "parent": "test", "regression_of": "dev"}})
    waiting = JobStatus("test", JobState.WAITING, 1, attempts=(Attempt(1, JobState.FAILED, T0, T0, exit_code=1),),
                        waiting_for=("dev.r1",), spawned=("dev.r1",))
    jobs = {"dev": ended("dev", JobState.SUCCEEDED), "test": waiting, "dev.r1": running("dev.r1")}
    plan = reconcile([view(p, jobs, outcomes={"dev.r1": Outcome(0, T0)}, problems=("jobs/x.toml: <toml>: bad",),
                           focus=frozenset({"test", "dev.r1"}))], T0, LIMITS)
    assert starts(plan.actions) == []
    assert job_states(plan.actions) == {"dev.r1": JobState.SUCCEEDED}
    assert [x.status.state for x in plan.actions if isinstance(x, SetPipeline)] == [PipelineState.BLOCKED]


def test_a_blocked_pipeline_starts_nothing_from_its_backlog() -> None:
    p = pipeline({f"j{i}": {"command": ["x"]} for i in range(3)})
    plan = reconcile([view(p, {"j0": running("j0")}, alive={"j0": True}, problems=("jobs/x.toml: <toml>: bad",),
                           focus=frozenset({"j0"}), ready=("j1", "j2"))], T0, LIMITS)
    assert starts(plan.actions) == [] and ready_after(plan, p) == []


def test_a_broken_pipeline_does_not_stop_another() -> None:
    good = pipeline({"a": {"command": ["x"]}}, name="good")
    bad = pipeline({"a": {"command": ["x"]}}, name="bad")
    plan = reconcile([view(bad, problems=("broken",)), view(good)], T0, LIMITS)
    assert [(x.pipeline, x.job) for x in plan.actions if isinstance(x, Start)] == [("good", "a")]


def test_a_waiting_job_runs_again_when_its_fixups_succeed_and_fails_if_one_fails() -> None:
    p = pipeline({"test": {"command": ["x"]}, "test.r1": {"command": ["x"]}})
    waiting = JobStatus("test", JobState.WAITING, 1, attempts=(Attempt(1, JobState.FAILED, T0, T0, exit_code=1),),
                        waiting_for=("test.r1",))
    plan = reconcile([view(p, {"test": waiting, "test.r1": ended("test.r1", JobState.SUCCEEDED)})], T0, LIMITS)
    assert starts(plan.actions) == ["test"]
    plan = reconcile([view(p, {"test": waiting, "test.r1": ended("test.r1", JobState.FAILED)})], T0, LIMITS)
    assert job_states(plan.actions)["test"] is JobState.FAILED


def test_unchanged_state_writes_nothing() -> None:
    p = pipeline({"a": {"command": ["x"]}})
    plan = reconcile([view(p, {"a": running("a")}, alive={"a": True})], T0, LIMITS)
    assert plan.actions == []


def spawn_request(rid: str, target: str, spawner: str = "test", attempt: int = 1) -> Spawn:
    return Spawn(rid, target, spawner, attempt, "bug in add()", "assert 1 + 1 == 3")


def regression_pipeline(**test: Any) -> Pipeline:
    return pipeline({"dev": {"command": ["x"]}, "test": {"command": ["x"], "needs": ["dev"], **test},
                     "ship": {"command": ["x"], "needs": ["test"]}})


def test_a_spawn_request_waits_for_the_spawners_attempt_to_end() -> None:
    p = regression_pipeline()
    plan = reconcile([view(p, {"dev": ended("dev", JobState.SUCCEEDED), "test": running("test")},
                           alive={"test": True}, requests=(spawn_request("r1", "dev"),))], T0, LIMITS)
    assert not [a for a in plan.actions if isinstance(a, DoneRequest | SpawnJob)]


def test_a_spawner_whose_attempt_failed_writes_the_fixup_and_waits() -> None:
    p = regression_pipeline()
    out = Outcome(1, T0, commit="c" * 40)
    plan = reconcile([view(p, {"dev": ended("dev", JobState.SUCCEEDED), "test": running("test")},
                           outcomes={"test": out}, requests=(spawn_request("r1", "dev"),))], T0, LIMITS)
    spawned = [a for a in plan.actions if isinstance(a, SpawnJob)]
    assert [(a.name, a.target, a.spawner, a.attempt, a.commit, a.reason) for a in spawned] == [
        ("dev.r1", "dev", "test", 1, "c" * 40, "bug in add()")]
    test = [a.status for a in plan.actions if isinstance(a, SetJob) and a.status.job == "test"][-1]
    assert test.state is JobState.WAITING
    assert test.waiting_for == ("dev.r1",) and test.spawned == ("dev.r1",)
    assert test.attempts[-1].state is JobState.FAILED and test.attempts[-1].message == "spawned dev.r1"
    assert [a.request for a in plan.actions if isinstance(a, DoneRequest)] == ["r1"]
    # The pipeline does not fail for the spawner's exit code.
    assert all(a.status.state is not PipelineState.FAILED for a in plan.actions if isinstance(a, SetPipeline))


def test_the_spawner_reruns_from_its_fixups_when_they_succeed() -> None:
    p = pipeline({"dev": {"command": ["x"]}, "test": {"command": ["x"], "needs": ["dev"]},
                  "dev.r1": {"command": ["x"], "needs": [], "parent": "test", "regression_of": "dev"}})
    waiting = JobStatus("test", JobState.WAITING, 1, attempts=(Attempt(1, JobState.FAILED, T0, T0, exit_code=1),),
                        waiting_for=("dev.r1",), spawned=("dev.r1",))
    plan = reconcile([view(p, {"dev": ended("dev", JobState.SUCCEEDED), "test": waiting,
                               "dev.r1": ended("dev.r1", JobState.SUCCEEDED)})], T0, LIMITS)
    start = [a for a in plan.actions if isinstance(a, Start)]
    assert [(a.job, a.attempt, a.sources) for a in start] == [("test", 2, ("dev.r1",))]
    test = [a.status for a in plan.actions if isinstance(a, SetJob) and a.status.job == "test"][-1]
    assert test.attempts[-1].trigger == "regression" and test.waiting_for == ()


def test_the_spawner_starts_in_the_step_its_fixup_ends_even_when_visited_first() -> None:
    # `dev-test` sorts before `dev.r1`, so the step looks at the spawner before its fix-up ends.
    p = pipeline({"dev": {"command": ["x"]}, "dev-test": {"command": ["x"], "needs": ["dev"]},
                  "dev.r1": {"command": ["x"], "needs": [], "parent": "dev-test", "regression_of": "dev"}})
    assert p.position["dev-test"] < p.position["dev.r1"]
    waiting = JobStatus("dev-test", JobState.WAITING, 1, waiting_for=("dev.r1",), spawned=("dev.r1",),
                        attempts=(Attempt(1, JobState.FAILED, T0, T0, exit_code=1),))
    plan = reconcile([view(p, {"dev": ended("dev", JobState.SUCCEEDED), "dev-test": waiting,
                               "dev.r1": running("dev.r1")}, outcomes={"dev.r1": Outcome(0, T0)},
                           focus=frozenset({"dev-test", "dev.r1"}))], T0, LIMITS)
    assert starts(plan.actions) == ["dev-test"]
    assert job_states(plan.actions) == {"dev.r1": JobState.SUCCEEDED, "dev-test": JobState.RUNNING}


def test_max_regressions_refuses_a_spawn_and_says_so() -> None:
    p = regression_pipeline(max_regressions=1)
    test = replace_status(running("test", 2), spawned=("dev.r1",))
    plan = reconcile([view(p, {"dev": ended("dev", JobState.SUCCEEDED), "test": test},
                           outcomes={"test": Outcome(1, T0)}, requests=(spawn_request("r2", "dev", attempt=2),))],
                     T0, LIMITS)
    assert not [a for a in plan.actions if isinstance(a, SpawnJob)]
    final = [a.status for a in plan.actions if isinstance(a, SetJob) and a.status.job == "test"][-1]
    assert final.state is JobState.FAILED
    assert "spawn refused: test has spawned 1 fix-up(s), its max_regressions (1) is reached" in final.message
    assert job_states(plan.actions)["ship"] is JobState.SKIPPED


def test_a_replayed_spawn_request_reuses_the_fixup_already_written() -> None:
    p = pipeline({"dev": {"command": ["x"]}, "test": {"command": ["x"], "needs": ["dev"]},
                  "dev.r1": {"command": ["x"], "needs": [], "parent": "test", "regression_of": "dev",
                             "regression_context": {"request": "r1", "reason": "x"}}})
    plan = reconcile([view(p, {"dev": ended("dev", JobState.SUCCEEDED), "test": running("test")},
                           outcomes={"test": Outcome(1, T0)}, requests=(spawn_request("r1", "dev"),))], T0, LIMITS)
    assert not [a for a in plan.actions if isinstance(a, SpawnJob)]
    test = [a.status for a in plan.actions if isinstance(a, SetJob) and a.status.job == "test"][-1]
    assert test.waiting_for == ("dev.r1",)


def test_cancelling_a_waiting_spawner_cancels_its_fixups() -> None:
    p = pipeline({"dev": {"command": ["x"]}, "test": {"command": ["x"], "needs": ["dev"]},
                  "dev.r1": {"command": ["x"], "needs": [], "parent": "test", "regression_of": "dev"}})
    waiting = JobStatus("test", JobState.WAITING, 1, attempts=(Attempt(1, JobState.FAILED, T0, T0, exit_code=1),),
                        waiting_for=("dev.r1",), spawned=("dev.r1",))
    plan = reconcile([view(p, {"dev": ended("dev", JobState.SUCCEEDED), "test": waiting, "dev.r1": running("dev.r1")},
                           requests=(Cancel("c1", "test"),))], T0, LIMITS)
    assert [(a.job, a.signal) for a in plan.actions if isinstance(a, Kill)] == [("dev.r1", signal.SIGTERM)]
    assert job_states(plan.actions)["test"] is JobState.CANCELLED


def replace_status(status: JobStatus, **changes: Any) -> JobStatus:
    return replace(status, **changes)


# -- budgets (max_cost_usd) ---------------------------------------------------------------------

def spent(job: str, state: JobState, *costs: float) -> JobStatus:
    attempts = tuple(Attempt(n, JobState.FAILED, T0, T0, exit_code=1, usage=Usage(100, 10, c))
                     for n, c in enumerate(costs, 1))
    attempts = (*attempts[:-1], replace(attempts[-1], state=state))
    return JobStatus(job, state, len(costs), attempts=attempts, retry_at=T0 if state is JobState.RETRYING else None)


def test_an_agents_reported_usage_is_recorded_on_its_attempt() -> None:
    p = pipeline({"a": {"agent": "dev"}})
    out = Outcome(0, T0, usage=Usage(1200, 300, 0.25))
    plan = reconcile([view(p, {"a": running("a")}, outcomes={"a": out})], T0, LIMITS)
    a = [x.status for x in plan.actions if isinstance(x, SetJob)][-1]
    assert a.state is JobState.SUCCEEDED and a.attempts[-1].usage == Usage(1200, 300, 0.25)


def test_a_spent_job_budget_stops_further_retries_with_a_message() -> None:
    p = pipeline({"a": {"agent": "dev", "retries": 5, "max_cost_usd": 1.0}})
    plan = reconcile([view(p, {"a": spent("a", JobState.RETRYING, 0.6, 0.5)})], T0, LIMITS)
    assert starts(plan.actions) == []
    a = [x.status for x in plan.actions if isinstance(x, SetJob)][-1]
    assert a.state is JobState.FAILED
    assert a.message == ("budget spent: a has cost $1.1000 of its max_cost_usd $1.00; no further attempts or "
                         "fix-ups (raise max_cost_usd to go on)")
    # Under its budget, the same job retries.
    assert starts(reconcile([view(p, {"a": spent("a", JobState.RETRYING, 0.6)})], T0, LIMITS).actions) == ["a"]


def test_a_spent_pipeline_budget_starts_no_further_job() -> None:
    p = build_pipeline("p", {"prompt": "do it", "max_cost_usd": 2.0},
                       {"a": {"agent": "dev"}, "b": {"agent": "test", "needs": ["a"]}}, Config())
    plan = reconcile([view(p, {"a": spent("a", JobState.SUCCEEDED, 2.5)})], T0, LIMITS)
    assert starts(plan.actions) == []
    b = [x.status for x in plan.actions if isinstance(x, SetJob) and x.status.job == "b"][-1]
    assert b.state is JobState.FAILED and b.message.startswith("budget spent: the pipeline has cost $2.5000 of its")
    assert [x.status.state for x in plan.actions if isinstance(x, SetPipeline)] == [PipelineState.FAILED]


def test_a_budget_spent_by_the_spawners_attempt_refuses_its_spawn() -> None:
    p = regression_pipeline(max_cost_usd=1.0)
    out = Outcome(1, T0, usage=Usage(10, 10, 1.5))
    plan = reconcile([view(p, {"dev": ended("dev", JobState.SUCCEEDED), "test": running("test")},
                           outcomes={"test": out}, requests=(spawn_request("r1", "dev"),))], T0, LIMITS)
    assert not [a for a in plan.actions if isinstance(a, SpawnJob)]
    test = [a.status for a in plan.actions if isinstance(a, SetJob) and a.status.job == "test"][-1]
    assert test.state is JobState.FAILED and test.attempts[-1].usage == Usage(10, 10, 1.5)
    assert "spawn refused: budget spent: test has cost $1.5000 of its max_cost_usd $1.00" in test.message


def test_jobs_ready_beyond_the_free_slots_stay_ready_for_the_next_step() -> None:
    p = pipeline({f"j{i}": {"command": ["x"]} for i in range(6)})
    plan = reconcile([view(p)], T0, Limits(max_parallel=2))
    assert starts(plan.actions) == ["j0", "j1"]
    assert ready_after(plan, p, ()) == [f"j{i}" for i in range(2, 6)]


# -- failure kinds and retry_on ---------------------------------------------------------------

def ended_with(p: Pipeline, status: JobStatus, out: Outcome, now: datetime) -> JobStatus:
    plan = reconcile([view(p, {status.job: status}, outcomes={status.job: out})], now, LIMITS)
    return [x.status for x in plan.actions if isinstance(x, SetJob)][-1]


def test_a_transient_failure_is_retried_three_times_with_backoff_even_without_retries() -> None:
    p = pipeline({"a": {"agent": "dev"}})
    out = Outcome(1, T0, failure_kind=FailureKind.TRANSIENT, failure_text="429 rate limited")
    status, now, messages = running("a"), T0, []
    for _ in range(4):
        status = ended_with(p, status, out, now)
        messages.append(status.message)
        if status.state is not JobState.RETRYING:
            break
        assert status.retry_at is not None
        now = status.retry_at
        status = [x.status for x in reconcile([view(p, {"a": status})], now, LIMITS).actions
                  if isinstance(x, SetJob)][-1]
    assert messages == [
        "attempt 1 failed (transient: 429 rate limited); retry 1 of 3 in 2.0s",
        "attempt 2 failed (transient: 429 rate limited); retry 2 of 3 in 4.0s",
        "attempt 3 failed (transient: 429 rate limited); retry 3 of 3 in 8.0s",
        "attempt 4 failed (transient: 429 rate limited)",
    ]
    assert status.state is JobState.FAILED
    assert [a.failure_kind for a in status.attempts] == [FailureKind.TRANSIENT] * 4


def test_a_config_failure_is_never_retried_by_default() -> None:
    p = pipeline({"a": {"agent": "dev", "retries": 2}})
    out = Outcome(1, T0, failure_kind=FailureKind.CONFIG, failure_text="401 Incorrect API key")
    status = ended_with(p, running("a"), out, T0)
    assert status.state is JobState.FAILED
    assert status.message == "attempt 1 failed (config: 401 Incorrect API key); not retried: retry_on has no config"
    assert status.attempts[-1].failure_kind is FailureKind.CONFIG


def test_retry_on_says_which_kinds_retries_apply_to() -> None:
    only_transient = pipeline({"a": {"agent": "dev", "retries": 2, "retry_on": ["transient"]}})
    status = ended_with(only_transient, running("a"), Outcome(1, T0), T0)  # no kind reported: the agent's
    assert (status.state, status.attempts[-1].failure_kind) == (JobState.FAILED, FailureKind.AGENT)
    assert status.message == "attempt 1 failed: exit code 1; not retried: retry_on has no agent"
    never = pipeline({"a": {"agent": "dev", "retry_on": []}})
    out = Outcome(1, T0, failure_kind=FailureKind.TRANSIENT, failure_text="503")
    assert ended_with(never, running("a"), out, T0).state is JobState.FAILED
    config = pipeline({"a": {"agent": "dev", "retries": 1, "retry_on": ["config"]}})
    out = Outcome(1, T0, failure_kind=FailureKind.CONFIG, failure_text="401")
    assert ended_with(config, running("a"), out, T0).message == "attempt 1 failed (config: 401); retry 1 of 1 in 2.0s"


def test_a_command_jobs_failure_is_recorded_as_before() -> None:
    p = pipeline({"a": {"command": ["x"], "retries": 1, "retry_on": ["command"]}})
    status = ended_with(p, running("a"), Outcome(1, T0), T0)
    assert status.message == "attempt 1 failed: exit code 1; retry 1 of 1 in 2.0s"
    assert status.attempts[-1].failure_kind is None
    agent_only = pipeline({"a": {"command": ["x"], "retries": 1, "retry_on": ["agent"]}})
    assert ended_with(agent_only, running("a"), Outcome(1, T0), T0).state is JobState.FAILED


# -- idle_timeout -----------------------------------------------------------------------------

def test_an_agent_job_quiet_for_ten_minutes_is_killed_as_idle() -> None:
    p = pipeline({"a": {"agent": "dev"}})
    alive = {"a": True}
    plan = reconcile([view(p, {"a": running("a")}, alive=alive)], T0 + timedelta(minutes=9), LIMITS)
    assert not [x for x in plan.actions if isinstance(x, Kill)]
    assert plan.wake_at == T0 + timedelta(minutes=10)
    # Its log was written at minute 5: it is quiet only from then.
    later = {"a": T0 + timedelta(minutes=5)}
    plan = reconcile([view(p, {"a": running("a")}, alive=alive, output_at=later)], T0 + timedelta(minutes=10), LIMITS)
    assert not [x for x in plan.actions if isinstance(x, Kill)]
    assert plan.wake_at == T0 + timedelta(minutes=15)
    now = T0 + timedelta(minutes=15)
    plan = reconcile([view(p, {"a": running("a")}, alive=alive, output_at=later)], now, LIMITS)
    assert [x.signal for x in plan.actions if isinstance(x, Kill)] == [signal.SIGTERM]
    [killing] = [x for x in plan.actions if isinstance(x, SetJob)]
    assert killing.event == "a idle: no output for 10m00s (SIGTERM)"
    done = ended_with(p, killing.status, Outcome(143, now, 15, killed_for=KillReason.IDLE), now)
    assert (done.state, done.message) == (JobState.FAILED, "attempt 1 failed: idle: no output for 10m00s")


def test_command_jobs_have_no_idle_timeout_unless_asked() -> None:
    p = pipeline({"a": {"command": ["x"]}, "b": {"command": ["x"], "idle_timeout": "1m"},
                  "c": {"agent": "dev", "idle_timeout": 0}})
    jobs = {n: running(n) for n in "abc"}
    plan = reconcile([view(p, jobs, alive=dict.fromkeys("abc", True))], T0 + timedelta(hours=1), LIMITS)
    assert [x.job for x in plan.actions if isinstance(x, Kill)] == ["b"]


def test_an_attempt_killed_for_its_timeout_without_an_exit_record_is_lost_for_its_timeout() -> None:
    # One decision: the commit trailer, error.json and the status all take it from attempt_ending.
    spec = pipeline({"a": {"command": ["x"], "timeout": "5s"}}).jobs["a"]
    end = attempt_ending(Outcome(None, T0, killed_for=KillReason.TIMEOUT), spec)
    assert (end.state, end.reason) == (JobState.LOST, "timed out after 5.0s")
    vanished = Ending(JobState.LOST, "the process vanished without an exit record")
    assert attempt_ending(Outcome(None, T0), spec) == vanished
    assert attempt_ending(Outcome(0, T0, killed_for=KillReason.CANCEL), spec) == Ending(JobState.SUCCEEDED, "")
    assert attempt_ending(Outcome(143, T0, 15, killed_for=KillReason.CANCEL), spec).state is JobState.CANCELLED
    assert attempt_ending(Outcome(143, T0, 15), spec) == Ending(JobState.FAILED, "killed by signal 15 (SIGTERM)")


def test_the_pure_scheduler_imports_nothing_that_does_io() -> None:
    # A fresh interpreter: what importing the scheduler loads, and nothing a test loaded before.
    code = "import clowder.scheduler, sys; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(ast.literal_eval(out))
    io = {"jsonschema", "tomli_w", "subprocess", "fsio", "clowder.fsio", "clowder.validate", "clowder.template",
          "clowder.requests", "clowder.schema", "watchdog", "git"}
    assert "clowder.scheduler.step" in loaded
    assert loaded & io == set()


# -- fairness across pipelines ----------------------------------------------------------------

def fan(name: str, width: int, priority: int = 0) -> Pipeline:
    spec: dict[str, Any] = {"prompt": "do it", "priority": priority}
    return build_pipeline(name, spec, {f"w{i:04}": {"command": ["x"]} for i in range(width)}, Config())


def started(plan: Plan) -> list[tuple[str, str]]:
    return [(a.pipeline, a.job) for a in plan.actions if isinstance(a, Start)]


def test_a_pipeline_is_running_in_the_step_its_first_attempt_starts() -> None:
    """It said `pending` until its next event: for an agent's first attempt, many minutes."""
    p = pipeline({"a": {"command": ["x"]}, "b": {"command": ["x"], "needs": ["a"]}})
    plan = reconcile([view(p, status=PipelineStatus())], T0, LIMITS)
    assert [x.status.state for x in plan.actions if isinstance(x, SetPipeline)] == [PipelineState.RUNNING]


def test_a_free_slot_goes_to_the_pipeline_with_fewer_running_not_the_first_by_name() -> None:
    """A pipeline fanning out 1,000 jobs, three running and the rest in its ready queue, beside two
    chains whose next job got no slot earlier: the slot that frees goes to the chains."""
    big = fan("a-fan", 1000)
    chains = pipeline({"c0": {"command": ["x"]}, "c1": {"command": ["x"], "needs": ["c0"]},
                       "d0": {"command": ["x"]}}, name="b-chains")
    running_w = {f"w{i:04}": running(f"w{i:04}") for i in range(3)}
    plan = reconcile([
        view(big, running_w, alive=dict.fromkeys(running_w, True), focus=frozenset(running_w),
             ready=tuple(f"w{i:04}" for i in range(3, 1000))),
        view(chains, {"c0": ended("c0", JobState.SUCCEEDED), "d0": running("d0")}, alive={"d0": True},
             focus=frozenset({"d0"}), ready=("c1",)),
    ], T0, Limits(max_parallel=5))
    assert started(plan) == [("b-chains", "c1")]


def test_ready_jobs_of_two_pipelines_start_in_turn() -> None:
    plan = reconcile([view(fan("a", 10)), view(fan("b", 10))], T0, Limits(max_parallel=4))
    assert started(plan) == [("a", "w0000"), ("b", "w0000"), ("a", "w0001"), ("b", "w0001")]


def test_a_higher_priority_tilts_the_share_without_starving_the_other() -> None:
    """priority 1 weighs twice priority 0: of six slots, four and two."""
    plan = reconcile([view(fan("a", 10)), view(fan("b", 10, priority=1))], T0, Limits(max_parallel=6))
    assert [p for p, _ in started(plan)] == ["b", "a", "b", "b", "a", "b"]


def test_fair_share_respects_a_pipelines_own_max_parallel_and_the_pools() -> None:
    capped = build_pipeline("a", {"prompt": "x", "max_parallel": 1}, {f"w{i}": {"command": ["x"]} for i in range(5)},
                            Config())
    gpus = pipeline({f"g{i}": {"command": ["x"], "resources": {"gpu": 1}} for i in range(3)}, name="b")
    plan = reconcile([view(capped), view(gpus), view(fan("c", 5))], T0, LIMITS)
    assert started(plan) == [("a", "w0"), ("b", "g0"), ("c", "w0000"), ("c", "w0001")]
    assert job_states(plan.actions)["g1"] is JobState.QUEUED


def test_ready_jobs_start_in_dependency_order_whichever_step_found_them() -> None:
    """A job found ready by this step and jobs queued by earlier ones are served in one order."""
    p = pipeline({"j0": {"command": ["x"]}, "j1": {"command": ["x"]}, "j2": {"command": ["x"]},
                  "k": {"command": ["x"], "needs": ["j0"]}})
    plan = reconcile([view(p, {"j0": running("j0")}, outcomes={"j0": Outcome(0, T0)}, focus=frozenset({"j0"}),
                           ready=("j1", "j2"))], T0, Limits(max_parallel=2))
    assert starts(plan.actions) == ["j1", "j2"]
    assert ready_after(plan, p) == ["k"]


@pytest.mark.parametrize("priority", ["11", "-11", "1.5", '"high"'])
def test_a_priority_out_of_bounds_or_not_an_integer_is_a_problem_naming_the_key(
        tmp_path: Path, priority: str) -> None:
    root = init_root(tmp_path / "root")
    d = root.pipelines_dir / "p"
    (d / "jobs").mkdir(parents=True)
    (d / "pipeline.toml").write_text(f'prompt = "x"\npriority = {priority}\n')
    (d / "jobs" / "a.toml").write_text('command = ["x"]\n')
    pipeline_, problems = check_pipeline(root.pipeline("p"))
    assert pipeline_ is None
    assert [str(x).split(": ")[:2] for x in problems] == [[str(d / "pipeline.toml"), "priority"]]
