"""Random pipelines whose every job's end is known in advance, from a seeded generator.

Each job's command appends `<pipeline>/<job> <attempt> start` and `... end` to the record file
(outside the root) around a sleep, so the checks see from the jobs' own words which attempts ran
and when. A kill of an attempt's processes costs that job one attempt; every job that must
succeed has `retries` enough for the kills the driver may aim at it (KILL_BUDGET), so its end
does not depend on where the kills land."""

from __future__ import annotations

import random
import shlex
import sys
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

# The driver aims at most this many kills at one job; jobs that must succeed get that many spare retries.
KILL_BUDGET = 4
BACKOFF = 'backoff = { initial = "100ms", factor = 1.0, max = "100ms" }'


class Kind(Enum):
    OK = "ok"  # exits 0
    FLAKY = "flaky"  # exits 1 before attempt `succeed_at`, then 0
    FAIL = "fail"  # always exits 1
    DEV = "dev"  # the job a regression loop fixes: its fix-ups write the file the tester looks for
    TESTER = "tester"  # spawns a fix-up of dev until the fix is there, then exits 0


@dataclass(frozen=True)
class Need:
    job: str
    when: str  # success | failure | always


@dataclass(frozen=True)
class JobPlan:
    name: str
    kind: Kind
    needs: tuple[Need, ...]
    retries: int
    sleep: float
    allow_failure: bool = False
    succeed_at: int = 1
    background: bool = False  # leaves a `sleep 600 &` behind, which must die with its attempt

    @property
    def must_succeed(self) -> bool:
        return self.kind is not Kind.FAIL


@dataclass
class PipelinePlan:
    name: str
    jobs: list[JobPlan] = field(default_factory=list)

    def expected(self) -> dict[str, str]:
        """Each job's end state, as the scheduler's rules give it (`when` after GitLab CI; a failed
        job with allow_failure passes a `success` condition)."""
        ends: dict[str, str] = {}
        allowed = {j.name: j.allow_failure for j in self.jobs}
        for job in self.jobs:  # generated in dependency order
            runs = True
            for need in job.needs:
                dep = ends[need.job]
                passed = dep == "succeeded" or (dep == "failed" and allowed[need.job])
                if (need.when == "success" and not passed) or (need.when == "failure" and dep != "failed"):
                    runs = False
            ends[job.name] = ("succeeded" if job.must_succeed else "failed") if runs else "skipped"
        return ends

    def expected_state(self) -> str:
        ends = self.expected()
        failed = any(ends[j.name] == "failed" and not j.allow_failure for j in self.jobs)
        return "failed" if failed else "succeeded"


def _sleep(rng: random.Random) -> float:
    # Mostly short; some long, so that daemons die while attempts run and the next one adopts them.
    return round(rng.uniform(2.0, 5.0) if rng.random() < 0.15 else rng.uniform(0.05, 0.6), 2)


def plan_pipeline(rng: random.Random, name: str) -> PipelinePlan:
    plan = PipelinePlan(name)
    for i in range(rng.randint(3, 8)):
        earlier = [j.name for j in plan.jobs]
        needs: list[Need] = []
        if earlier and rng.random() < 0.75:  # chains and fan-outs; joins when it takes several
            for up in rng.sample(earlier, min(len(earlier), rng.choice([1, 1, 1, 2, 3]))):
                needs.append(Need(up, rng.choices(["success", "always", "failure"], [70, 15, 15])[0]))
        kind = rng.choices([Kind.OK, Kind.FLAKY, Kind.FAIL], [55, 25, 20])[0]
        if kind is Kind.FAIL:
            job = JobPlan(f"j{i}", kind, tuple(needs), rng.randint(0, 2), _sleep(rng), rng.random() < 0.5)
        elif kind is Kind.FLAKY:
            at = rng.randint(2, 3)
            job = JobPlan(f"j{i}", kind, tuple(needs), at - 1 + KILL_BUDGET, _sleep(rng), succeed_at=at)
        else:
            job = JobPlan(f"j{i}", kind, tuple(needs), KILL_BUDGET, _sleep(rng))
        if rng.random() < 0.2:
            job = replace(job, background=True)
        plan.jobs.append(job)
    if rng.random() < 0.5:  # a regression loop: the tester spawns a fix-up of dev, then passes
        plan.jobs.append(JobPlan("dev", Kind.DEV, (), KILL_BUDGET, _sleep(rng)))
        plan.jobs.append(JobPlan("test", Kind.TESTER, (Need("dev", "success"),), KILL_BUDGET, _sleep(rng)))
    return plan


def _command(job: JobPlan, record: Path) -> str:
    rec = shlex.quote(str(record))
    say = 'echo "$CLOWDER_PIPELINE/$CLOWDER_JOB $CLOWDER_ATTEMPT'
    lines = [f'{say} start" >> {rec}', f"sleep {job.sleep}", "code=0"]
    if job.background:
        lines.insert(1, "sleep 600 &")
    if job.kind is Kind.FLAKY:
        lines.append(f'if [ "$CLOWDER_ATTEMPT" -lt {job.succeed_at} ]; then code=1; fi')
    elif job.kind is Kind.FAIL:
        lines.append("code=1")
    elif job.kind is Kind.DEV:  # a fix-up (dev.r1, ...) runs this same spec under its own name
        lines.append(f'if [ "$CLOWDER_JOB" != {job.name} ]; then echo fixed > fixed.txt; fi')
    elif job.kind is Kind.TESTER:
        spawn = f"{shlex.quote(sys.executable)} -m clowder spawn dev --reason 'fixed.txt is missing'"
        lines.append(f"if [ ! -f fixed.txt ]; then {spawn} || exit 3; code=1; fi")
    lines += [f'{say} end" >> {rec}', 'exit "$code"']
    return "\n".join(lines) + "\n"


def job_toml(job: JobPlan, record: Path) -> str:
    needs = ", ".join(f'{{ job = "{n.job}", when = "{n.when}" }}' for n in job.needs)
    text = f"command = '''\n{_command(job, record)}'''\nneeds = [{needs}]\nretries = {job.retries}\n{BACKOFF}\n"
    if job.allow_failure:
        text += "allow_failure = true\n"
    if job.kind is Kind.TESTER:
        text += "max_regressions = 20\n"
    return text


def write_pipeline(plan: PipelinePlan, directory: Path, record: Path) -> None:
    """pipeline.toml and jobs/*.toml under `directory` (the driver renames it into the root whole)."""
    (directory / "jobs").mkdir(parents=True)
    (directory / "pipeline.toml").write_text(f'prompt = "chaos {plan.name}"\n')
    for job in plan.jobs:
        (directory / "jobs" / f"{job.name}.toml").write_text(job_toml(job, record))
