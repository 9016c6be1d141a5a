"""Budgets inside an attempt: Claude is given what is left of max_cost_usd, and token usage a
harness reports without a cost is priced from clowder.toml's [prices], so max_cost_usd stops
any harness (Codex reports tokens only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from clowder.harness import agent, prices
from clowder.harness.config import BUILTIN, Extras, argv, available
from clowder.spec import Config, Harness, Price
from clowder.state import Attempt, JobState, JobStatus, Usage, read_job_status
from clowder.tree import Root
from clowder.validate import build_pipeline, check_config
from tests.conftest import Invoke, MakePipeline


def start(tmp_path: Path, harness: str, job: dict[str, Any], spent: float = 0.0,
          pipeline_max: float | None = None, config: Config | None = None) -> tuple[str, ...]:
    spec: dict[str, Any] = {"prompt": "do it"}
    if pipeline_max is not None:
        spec["max_cost_usd"] = pipeline_max
    p = build_pipeline("p", spec, {"a": {"agent": "dev", "harness": harness, **job}, "b": {"command": "true"}},
                       config or Config())
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    statuses = {"a": JobStatus("a", JobState.RUNNING, 2, attempts=(
        Attempt(1, JobState.FAILED, usage=Usage(10, 10, spent)), Attempt(2, JobState.RUNNING))),
        "b": JobStatus("b", JobState.SUCCEEDED, 1, attempts=(Attempt(1, JobState.SUCCEEDED, usage=Usage(0, 0, 0.25)),))}
    return agent.start(config or Config(), agent.context(p, p.jobs["a"], 2, ws, statuses), tmp_path).argv


def cli_part(full: tuple[str, ...]) -> tuple[str, ...]:
    """The CLI's own argv, after the adapter runner's `--`."""
    return full[full.index("--") + 1:]


# -- the remaining budget reaches Claude --------------------------------------------------------

def test_claude_gets_what_is_left_of_the_jobs_budget(tmp_path: Path) -> None:
    got = cli_part(start(tmp_path, "claude", {"max_cost_usd": 2.0}, spent=0.75))
    assert got[:3] == ("claude", "--max-budget-usd", "1.2500")
    assert got[3:] == BUILTIN["claude"].command[1:]


def test_the_pipelines_budget_counts_when_it_leaves_less(tmp_path: Path) -> None:
    got = cli_part(start(tmp_path, "claude", {"max_cost_usd": 2.0}, spent=0.75, pipeline_max=1.5))
    assert got[1:3] == ("--max-budget-usd", "0.5000")  # 1.5 - (0.75 + 0.25 of job b)


def test_without_a_budget_claude_gets_no_budget_flag(tmp_path: Path) -> None:
    assert cli_part(start(tmp_path, "claude", {}, spent=0.75)) == BUILTIN["claude"].command


def test_codex_gets_no_budget_flag_it_does_not_have(tmp_path: Path) -> None:
    assert cli_part(start(tmp_path, "codex", {"max_cost_usd": 2.0})) == BUILTIN["codex"].command


def test_a_custom_claude_wrapper_gets_no_flags_it_may_not_pass_on() -> None:
    wrapper = Harness("claude", ("my-wrapper", "claude", "-p"), {}, "claude")
    assert argv(wrapper, {"python": "/py"}, Extras(max_budget_usd="1.0000"))[-3:] == ("my-wrapper", "claude", "-p")


def test_a_harness_model_is_passed_as_model_and_a_model_only_table_keeps_the_builtin_command(tmp_path: Path) -> None:
    config = Config(harnesses={"codex": Harness("codex", (), {}, "actions", "gpt-5-codex")})
    assert available(config)["codex"].command == BUILTIN["codex"].command
    got = cli_part(start(tmp_path, "codex", {}, config=config))
    assert got[:4] == ("codex", "exec", "--model", "gpt-5-codex")


# -- prices ---------------------------------------------------------------------------------------

def log(tmp_path: Path, *events: dict[str, Any]) -> Path:
    path = tmp_path / "actions.jsonl"
    path.write_text("".join(json.dumps({"type": "usage", **e}) + "\n" for e in events) + "not json\n")
    return path


def test_tokens_without_a_cost_are_priced_at_their_models_price(tmp_path: Path) -> None:
    table = {"m": Price(input=2.0, output=10.0, cache_read=0.5), "n": Price(input=1.0, output=1.0)}
    path = log(tmp_path,
               {"input_tokens": 1_000_000, "cached_input_tokens": 400_000, "output_tokens": 100_000},  # harness's m
               {"input_tokens": 1_000_000, "model": "n"},  # its own model
               {"input_tokens": 5_000_000, "cost_usd": 0.01},  # reported its cost: not priced again
               {"input_tokens": 7, "model": "unknown"})
    got = prices.price_log(path, "m", table)
    assert got.cost_usd == pytest.approx(600_000 * 2e-6 + 400_000 * 0.5e-6 + 100_000 * 10e-6 + 1.0)
    assert got.unpriced == ("unknown",)


def test_a_cache_price_defaults_to_the_input_price() -> None:
    assert prices.cost(Price(3.0, 15.0), 1_000_000, 0, cached=500_000, cache_write=500_000) == pytest.approx(3.0)


def test_prices_are_checked_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "clowder.toml"
    path.write_text('[prices."gpt-5"]\ninput = 1.25\n\n[prices.m]\ninput = -1\noutput = 1\n')
    config, problems = check_config(path)
    assert config is None
    assert [str(p) for p in problems] == [f"{path}: prices.gpt-5: missing required key 'output'",
                                          f"{path}: prices.m.input: must be >= 0, got -1"]


def test_a_table_without_command_must_name_a_builtin_harness(tmp_path: Path) -> None:
    path = tmp_path / "clowder.toml"
    path.write_text('[harnesses.codex]\nmodel = "gpt-5"\n\n[harnesses.mine]\nmodel = "x"\n')
    _, problems = check_config(path)
    assert [str(p) for p in problems] == [f"{path}: harnesses.mine.command: missing: only a built-in harness "
                                          "may leave out its command"]


# -- end to end: a budget stops an agent that reports tokens only ------------------------------

PRICED = '[harnesses.scripted]\nmodel = "m1"\n\n[prices.m1]\ninput = 1000.0\noutput = 2000.0\n'


def test_a_budget_stops_the_second_attempt_of_an_agent_that_reports_tokens_without_cost(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    root.config_file.write_text(root.config_file.read_text() + "\n" + PRICED)
    make_pipeline("p", {"a": (
        'agent = "dev"\nretries = 5\nbackoff = { initial = 0, factor = 1 }\nmax_cost_usd = 1.0\n'
        '[[script]]\nusage = { input_tokens = 1000, output_tokens = 100 }\n'  # 1.0 + 0.2 dollars
        '[[script]]\nexit = 1\n')})
    assert cli("run", "p").exit_code == 1
    status = read_job_status(root.pipeline("p").job_status_file("a"), "a")
    assert [a.usage for a in status.attempts] == [Usage(1000, 100, pytest.approx(1.2))]
    assert status.state is JobState.FAILED
    assert status.message == ("budget spent: a has cost $1.2000 of its max_cost_usd $1.00; no further attempts or "
                              "fix-ups (raise max_cost_usd to go on)")


def test_a_usage_lines_own_model_is_priced(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    line = json.dumps({"type": "usage", "input_tokens": 500000, "output_tokens": 500000, "model": "m2"})
    root.config_file.write_text(root.config_file.read_text() + "\n" + PRICED + "\n[prices.m2]\ninput = 1.0\n"
                                "output = 1.0\n\n[harnesses.tokens]\nmodel = \"m1\"\ncommand = [\"sh\", \"-c\", "
                                + json.dumps(f"echo '{line}' > $CLOWDER_ACTIONS_FILE") + "]\n")
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "tokens"\n'})
    assert cli("run", "p").exit_code == 0
    status = read_job_status(root.pipeline("p").job_status_file("a"), "a")
    assert status.attempts[0].usage == Usage(500000, 500000, pytest.approx(1.0))  # m2's price, not m1's


def test_claude_is_run_with_the_remaining_budget(root: Root, make_pipeline: MakePipeline, cli: Invoke,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake `claude` on PATH records its argv and reports a cost; the second attempt is given
    what the first left."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude"
    record = tmp_path / "argv.txt"
    result = {"type": "result", "subtype": "success", "is_error": False, "result": "done", "total_cost_usd": 0.3,
              "usage": {"input_tokens": 10, "output_tokens": 5}}
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    f"print(json.dumps({result!r}))\nsys.exit(1)\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "claude"\nretries = 1\nbackoff = { initial = 0, factor = 1 }\n'
                             'max_cost_usd = 1.0\n'})
    assert cli("run", "p").exit_code == 1
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    budgets = [r[r.index("--max-budget-usd") + 1] for r in runs]
    assert budgets == ["1.0000", "0.7000"]
