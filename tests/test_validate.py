"""`clowder validate`: every problem, one line each as `FILE: key.path: message`, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import Result

from clowder.errors import SpecError
from clowder.spec import DURATION_RULE, NAME_RULE
from clowder.tree import Root
from clowder.validate import load_config, load_pipeline
from tests.conftest import EXAMPLES, Invoke, MakePipeline, write

OK = 'command = ["true"]\n'
UNSET = "(set it with `clowder new ... --set {0}=VALUE`)"


def problems(result: Result) -> list[str]:
    """The problem lines of a failed `clowder validate`, after checking its exit code."""
    assert result.exit_code == 2, result.output
    return result.stdout.splitlines()


def job(root: Root, name: str, pipeline: str = "p") -> str:
    return f"{root.path}/pipelines/{pipeline}/jobs/{name}.toml"


def spec(root: Root, pipeline: str = "p") -> str:
    return f"{root.path}/pipelines/{pipeline}/pipeline.toml"


# -- TOML syntax ------------------------------------------------------------------------------

def test_syntax_error_in_a_job_names_line_and_column(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\nretries = = 2\n'})
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: <toml>: syntax error: line 2, column 11: Invalid value",
    ]


def test_syntax_error_at_end_of_file_still_has_a_position(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", {"a": OK}, spec='prompt = """never closed\n')
    assert problems(cli("validate")) == [
        f"{spec(root)}: <toml>: syntax error: line 2, column 1 (end of file): Unterminated string",
    ]


def test_syntax_errors_in_config_and_templates(root: Root, cli: Invoke) -> None:
    write(root.templates_dir / "t.toml", "[jobs.a]\ncommand = 'x'\n[jobs.a]\n")
    root.config_file.write_text("max_parallel = 4\nmax_parallel = 5\n")
    assert problems(cli("validate")) == [
        f"{root.path}/clowder.toml: <toml>: syntax error: line 2, column 17: Cannot overwrite a value",
        f"{root.path}/templates/t.toml: <toml>: syntax error: line 3, column 8: Cannot declare ('jobs', 'a') twice",
    ]


def test_file_that_is_not_utf8_is_a_problem(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    d = make_pipeline("p", {"a": OK})
    (d / "jobs" / "b.toml").write_bytes(b"command = '\xff'\n")
    assert problems(cli("validate")) == [f"{job(root, 'b')}: <toml>: not UTF-8 text: invalid start byte"]


def test_unparsable_job_is_not_also_reported_as_unknown_by_its_dependents(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", {"a": "command = \n", "b": 'command = "true"\nneeds = ["a"]\nfrom = ["a"]\n'})
    assert problems(cli("validate")) == [f"{job(root, 'a')}: <toml>: syntax error: line 1, column 11: Invalid value"]


# -- unknown keys and wrong types -----------------------------------------------------------

def test_unknown_key_suggests_the_closest_known_one(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'comand = ["true"]\nagent = "x"\n'}, spec='promt = "x"\nprompt = "y"\n')
    assert problems(cli("validate")) == [
        f"{spec(root)}: promt: unknown key 'promt' (did you mean 'prompt'?)",
        f"{job(root, 'a')}: comand: unknown key 'comand' (did you mean 'command'?)",
    ]


def test_unknown_key_without_a_close_match_lists_the_known_keys(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", {"a": OK}, spec='prompt = "x"\nzzz = 1\n')
    assert problems(cli("validate")) == [
        f"{spec(root)}: zzz: unknown key 'zzz'; known keys: created_at, description, export, max_cost_usd, "
        "max_parallel, notify, priority, prompt, roles, schema_version, source, stages, template, variables",
    ]


def test_unknown_keys_in_nested_tables_have_their_full_key_path(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", {"a": 'command = "x"\nbackoff = { intial = "1s" }\n', "b": OK,
                        "c": 'command = "x"\nneeds = [{ job = "b", wen = "always" }]\n'})
    root.config_file.write_text("max_paralel = 2\n[retry]\nretires = 1\n")
    assert problems(cli("validate")) == [
        f"{root.path}/clowder.toml: max_paralel: unknown key 'max_paralel' (did you mean 'max_parallel'?)",
        f"{root.path}/clowder.toml: retry.retires: unknown key 'retires' (did you mean 'retries'?)",
        f"{job(root, 'a')}: backoff.intial: unknown key 'intial' (did you mean 'initial'?)",
        f"{job(root, 'c')}: needs[0].wen: unknown key 'wen' (did you mean 'when'?)",
    ]


def test_wrong_types_name_the_expected_type(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {
        "a": 'command = 5\nretries = "two"\nallow_failure = "yes"\nneeds = "b"\nenv = { X = [1] }\n',
        "b": 'command = ["true", 3]\ntimeout = true\nfrom = "a"\noutputs = [1]\n',
        "c": 'agent = "x"\nneeds = [3, { when = "always" }]\n',
    }, spec="prompt = 5\nstages = 'x'\n")
    assert problems(cli("validate")) == [
        f"{spec(root)}: prompt: expected a string, got 5",
        f"{spec(root)}: stages: expected an array, got 'x'",
        f"{job(root, 'a')}: allow_failure: expected true or false, got 'yes'",
        f"{job(root, 'a')}: command: expected a string or an array of strings, got 5",
        f"{job(root, 'a')}: env.X: expected a string or an integer or a number or true or false, got an array",
        f"{job(root, 'a')}: needs: expected an array, got 'b'",
        f"{job(root, 'a')}: retries: expected an integer, got 'two'",
        f"{job(root, 'b')}: command[1]: expected a string, got 3",
        f"{job(root, 'b')}: from: expected an array, got 'a'",
        f"{job(root, 'b')}: outputs[0]: expected a string, got 1",
        f"{job(root, 'b')}: timeout: expected a string or a number, got true",
        f"{job(root, 'c')}: needs[0]: expected a string or a table {{job = ..., when = ...}}, got 3",
        f"{job(root, 'c')}: needs[1]: missing required key 'job'",
    ]


def test_missing_prompt_is_reported_even_for_an_empty_pipeline_toml(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", {"a": OK}, spec="")
    assert problems(cli("validate")) == [f"{spec(root)}: <file>: missing required key 'prompt'"]


def test_unsupported_schema_version(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'schema_version = 2\ncommand = "x"\n'})
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: schema_version: unsupported schema_version 2; this Clowder reads version 1",
    ]


# -- names ------------------------------------------------------------------------------------

def test_invalid_pipeline_name(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("Bad Pipe", {"a": OK})
    assert problems(cli("validate")) == [
        f"{root.path}/pipelines/Bad Pipe: <name>: invalid pipeline name 'Bad Pipe': {NAME_RULE}",
    ]


def test_invalid_job_name(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"Dev": OK, "-x": OK})
    assert problems(cli("validate")) == [
        f"{job(root, '-x')}: <name>: invalid job name '-x': {NAME_RULE}",
        f"{job(root, 'Dev')}: <name>: invalid job name 'Dev': {NAME_RULE}",
    ]


def test_invalid_job_name_in_a_template_is_reported_at_its_table(root: Root, cli: Invoke) -> None:
    write(root.templates_dir / "t.toml", '[jobs."Not OK"]\ncommand = "x"\n')
    assert problems(cli("validate")) == [
        f"{root.path}/templates/t.toml: jobs.\"Not OK\": invalid job name 'Not OK': {NAME_RULE}",
    ]


def test_key_paths_quote_keys_that_are_not_bare(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    write(root.templates_dir / "t.toml", '[jobs."dev.r1"]\ncommand = "x"\nneeds = ["zz"]\n')
    make_pipeline("p", {"a": 'command = "x"\nenv = { "A.B" = [], "ü" = {} }\n'})
    assert problems(cli("validate")) == [
        f"{root.path}/templates/t.toml: jobs.\"dev.r1\".needs[0]: unknown job 'zz'",
        f"{job(root, 'a')}: env.\"A.B\": expected a string or an integer or a number or true or false, got an array",
        f"{job(root, 'a')}: env.\"ü\": expected a string or an integer or a number or true or false, got a table",
    ]


def test_invalid_template_name(root: Root, cli: Invoke) -> None:
    write(root.templates_dir / "My_Template.toml", '[jobs.a]\ncommand = "x"\n')
    assert problems(cli("validate")) == [
        f"{root.path}/templates/My_Template.toml: <name>: invalid template name 'My_Template': {NAME_RULE}",
    ]


def test_name_rule_allows_dots_dashes_underscores_and_64_characters(
    make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("p", {"a.b_c-d": OK, "0" * 64: OK})
    assert cli("validate").exit_code == 0


def test_name_longer_than_64_characters_is_invalid(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a" * 65: OK})
    assert problems(cli("validate")) == [
        f"{job(root, 'a' * 65)}: <name>: invalid job name '{'a' * 65}': {NAME_RULE}",
    ]


# -- needs, cycles, when, from ----------------------------------------------------------------

def test_needs_naming_a_missing_job(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {
        "build": OK,
        "test": 'command = "x"\nneeds = ["buidl", { job = "zzz", when = "always" }]\n',
        "self": 'command = "x"\nneeds = ["self"]\n',
    })
    assert problems(cli("validate")) == [
        f"{job(root, 'self')}: needs[0]: job 'self' cannot need itself",
        f"{job(root, 'test')}: needs[0]: unknown job 'buidl' (did you mean 'build'?)",
        f"{job(root, 'test')}: needs[1].job: unknown job 'zzz'",
    ]


def test_dependency_cycle_names_the_whole_cycle(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {
        "a": 'command = "x"\nneeds = ["c"]\n',
        "b": 'command = "x"\nneeds = ["a"]\n',
        "c": 'command = "x"\nneeds = [{ job = "b", when = "always" }]\n',
        "d": 'command = "x"\nneeds = ["a"]\n',
    })
    assert problems(cli("validate")) == [f"{job(root, 'a')}: needs: dependency cycle: a -> b -> c -> a"]


def test_two_job_cycle(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"x": 'command = "x"\nneeds = ["y"]\n', "y": 'command = "x"\nneeds = ["x"]\n'})
    assert problems(cli("validate")) == [f"{job(root, 'x')}: needs: dependency cycle: x -> y -> x"]


def test_cycle_through_stage_order_is_found(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    # `deploy` has no needs, so it waits for the whole test stage, which needs deploy.
    make_pipeline("p", {
        "unit": 'stage = "test"\ncommand = "x"\nneeds = ["deploy"]\n',
        "deploy": 'stage = "deploy"\ncommand = "x"\n',
    }, spec='prompt = "x"\nstages = ["test", "deploy"]\n')
    assert problems(cli("validate")) == [
        f"{job(root, 'deploy')}: needs: dependency cycle: deploy -> unit -> deploy",
    ]


def test_when_must_be_success_failure_always_or_manual(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": OK, "b": 'command = "x"\nneeds = [{ job = "a", when = "sometimes" }]\n'})
    assert problems(cli("validate")) == [
        f"{job(root, 'b')}: needs[0].when: must be one of success, failure, always, manual; got 'sometimes'",
    ]


def test_every_when_condition_is_accepted(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": OK, "b": 'command = "x"\nneeds = [{ job = "a", when = "success" }, '
                        '{ job = "c", when = "failure" }, { job = "d", when = "always" }, '
                        '{ job = "e", when = "manual" }]\n', "c": OK, "d": OK, "e": OK})
    assert cli("validate").exit_code == 0


def test_from_must_name_an_upstream_job(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {
        "a": OK,
        "b": 'command = "x"\nneeds = ["a"]\n',
        "c": 'command = "x"\nneeds = ["b"]\nfrom = ["a", "b", "d", "zz"]\n',  # a is upstream through b
        "d": OK,
    })
    assert problems(cli("validate")) == [
        f"{job(root, 'c')}: from[2]: 'd' is not upstream of 'c': `from` may name only jobs it needs, "
        "directly or through other jobs",
        f"{job(root, 'c')}: from[3]: 'zz' is not upstream of 'c': `from` may name only jobs it needs, "
        "directly or through other jobs",
    ]


def test_from_through_stage_order_is_upstream(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'stage = "one"\ncommand = "x"\n', "b": 'stage = "two"\ncommand = "x"\nfrom = ["a"]\n'},
                  spec='prompt = "x"\nstages = ["one", "two"]\n')
    assert cli("validate").exit_code == 0


def test_from_is_checked_even_when_there_is_a_cycle(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {
        "a": 'command = "x"\nneeds = ["b"]\n',
        "b": 'command = "x"\nneeds = ["a"]\n',
        "c": 'command = "x"\nfrom = ["a"]\n',
    })
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: needs: dependency cycle: a -> b -> a",
        f"{job(root, 'c')}: from[0]: 'a' is not upstream of 'c': `from` may name only jobs it needs, "
        "directly or through other jobs",
    ]


def test_parent_and_regression_of_must_name_jobs(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"dev.r1": 'command = "x"\nparent = "test"\nregression_of = "dev"\n'})
    assert problems(cli("validate")) == [
        f"{job(root, 'dev.r1')}: parent: unknown job 'test'",
        f"{job(root, 'dev.r1')}: regression_of: unknown job 'dev'",
    ]


# -- stages -----------------------------------------------------------------------------------

def test_stage_missing_from_the_stage_list(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'stage = "qa"\ncommand = "x"\n'}, spec='prompt = "x"\nstages = ["build", "test"]\n')
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: stage: stage 'qa' is not in the pipeline's stages: [build, test]",
    ]


def test_stage_without_any_stage_list(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'stage = "qa"\ncommand = "x"\n'})
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: stage: stage 'qa' is not in the pipeline's stages: none (no `stages` list)",
    ]


def test_stage_list_must_not_repeat(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": OK}, spec='prompt = "x"\nstages = ["a", "a"]\n')
    assert problems(cli("validate")) == [f"{spec(root)}: stages: must not repeat an entry"]


def test_template_stage_missing_from_its_stage_list(root: Root, cli: Invoke) -> None:
    write(root.templates_dir / "t.toml", 'stages = ["a"]\n[jobs.x]\nstage = "b"\ncommand = "x"\n')
    assert problems(cli("validate")) == [
        f"{root.path}/templates/t.toml: jobs.x.stage: stage 'b' is not in the pipeline's stages: [a]",
    ]


# -- durations, retries -----------------------------------------------------------------------

def test_bad_durations_in_jobs(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {
        "a": 'command = "x"\ntimeout = "5x"\nbackoff = { initial = "1q", max = -3 }\n',
        "b": 'command = "x"\ntimeout = "1h 30m"\n',
        "c": 'command = "x"\ntimeout = nan\n',
    })
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: backoff.max: must be >= 0, got -3",
        f"{job(root, 'a')}: timeout: invalid duration '5x': {DURATION_RULE}",
        f"{job(root, 'a')}: backoff.initial: invalid duration '1q': {DURATION_RULE}",
        f"{job(root, 'b')}: timeout: invalid duration '1h 30m': {DURATION_RULE}",
        f"{job(root, 'c')}: timeout: must be a finite number, got nan",
    ]


def test_bad_durations_in_clowder_toml(root: Root, cli: Invoke) -> None:
    root.config_file.write_text(
        'sweep_interval = "soon"\nkill_grace = -1\n[retry]\nbackoff = { initial = "2zz", max = "1d" }\n'
    )
    assert problems(cli("validate")) == [
        f"{root.path}/clowder.toml: kill_grace: must be >= 0, got -1",
        f"{root.path}/clowder.toml: sweep_interval: invalid duration 'soon': {DURATION_RULE}",
        f"{root.path}/clowder.toml: retry.backoff.initial: invalid duration '2zz': {DURATION_RULE}",
    ]


def test_bad_default_backoff_is_a_spec_error_for_loaders(root: Root) -> None:
    root.config_file.write_text('[retry]\nbackoff = { max = "forever" }\n')
    with pytest.raises(SpecError) as e:
        load_config(root)
    assert str(e.value) == f"{root.path}/clowder.toml: retry.backoff.max: invalid duration 'forever': {DURATION_RULE}"


def test_negative_retries(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "x"\nretries = -1\nmax_regressions = -2\n'})
    root.config_file.write_text("[retry]\nretries = -3\n")
    assert problems(cli("validate")) == [
        f"{root.path}/clowder.toml: retry.retries: must be >= 0, got -3",
        f"{job(root, 'a')}: max_regressions: must be >= 0, got -2",
        f"{job(root, 'a')}: retries: must be >= 0, got -1",
    ]


def test_backoff_factor_below_one(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "x"\nbackoff = { factor = 0.5 }\n'})
    assert problems(cli("validate")) == [f"{job(root, 'a')}: backoff.factor: must be >= 1, got 0.5"]


# -- template variables -----------------------------------------------------------------------

def test_template_variables_left_unset_in_a_pipeline(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ["sh", "-c", "echo {{ greeting }}"]\nenv = { A = "{{foo}}" }\n'},
                  spec='prompt = "keep {{ this }} verbatim"\ndescription = "{{ what }}"\n')
    assert problems(cli("validate")) == [
        f"{spec(root)}: description: template variable 'what' is unset {UNSET.format('what')}",
        f"{job(root, 'a')}: command[2]: template variable 'greeting' is unset {UNSET.format('greeting')}",
        f"{job(root, 'a')}: env.A: template variable 'foo' is unset {UNSET.format('foo')}",
    ]


def test_template_must_declare_the_variables_it_uses(root: Root, cli: Invoke) -> None:
    write(root.templates_dir / "t.toml", """\
        [variables]
        known = { default = "1" }
        [roles.dev]
        instructions = "use {{ tool }}"
        [jobs.a]
        command = ["echo", "{{ known }}", "{{ unknown }}"]
        """)
    t = f"{root.path}/templates/t.toml"
    assert problems(cli("validate")) == [
        f"{t}: jobs.a.command[2]: template variable 'unknown' is not declared in [variables]",
        f"{t}: roles.dev.instructions: template variable 'tool' is not declared in [variables]",
    ]


# -- command / agent --------------------------------------------------------------------------

def test_job_with_both_command_and_agent(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "x"\nagent = "dev"\n'})
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: command: a job needs exactly one of 'command' and 'agent'; it has both",
    ]


def test_job_with_neither_command_nor_agent(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'retries = 1\n'})
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: command: a job needs exactly one of 'command' and 'agent'; it has neither",
    ]


def test_empty_command(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ""\n', "b": "command = []\n"})
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: command: must not be empty",
        f"{job(root, 'b')}: command: must not be empty",
    ]


# -- the rest of a root -----------------------------------------------------------------------

def test_pipeline_without_pipeline_toml(root: Root, cli: Invoke) -> None:
    (root.pipelines_dir / "p" / "jobs").mkdir(parents=True)
    assert problems(cli("validate")) == [
        f"{spec(root)}: <file>: missing: every pipeline directory needs a pipeline.toml",
    ]


def test_pipeline_without_jobs(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {})
    assert problems(cli("validate")) == [
        f"{root.path}/pipelines/p/jobs: <dir>: no jobs: add at least one jobs/<job>.toml",
    ]


def test_unknown_resource_pool(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    root.config_file.write_text("[resources]\nllm = 2\n")
    make_pipeline("p", {"a": 'command = "x"\nresources = { llm = 1, gpu = 1 }\n'})
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: resources.gpu: unknown resource pool 'gpu'; clowder.toml [resources] defines: llm",
    ]


def test_unknown_default_harness(root: Root, cli: Invoke) -> None:
    root.config_file.write_text('default_harness = "claud"\n[harnesses.claude]\ncommand = "c"\n')
    assert problems(cli("validate")) == [
        f"{root.path}/clowder.toml: default_harness: unknown harness 'claud' (did you mean 'claude'?)",
    ]


def test_broken_status_file_is_reported(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    d = make_pipeline("p", {"a": OK})
    write(d / "status" / "a.toml", 'state = "sleeping"\n')
    assert problems(cli("validate")) == [
        f"{d}/status/a.toml: state: must be one of pending, queued, running, retrying, waiting, approval, lost, "
        "succeeded, failed, skipped, cancelled, blocked, broken; got 'sleeping'",
    ]


def test_every_problem_is_reported_in_one_run(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {
        "a": 'command = "x"\nneeds = ["b"]\ntimeout = "soon"\n',
        "b": 'command = "x"\nneeds = ["a"]\nretries = -1\n',
        "c": 'agent = "x"\ncommand = "y"\nstage = "nope"\n',
        "d": "oops",
    }, spec='prompt = "x"\nmax_parallel = 0\n')
    make_pipeline("q", {"a": 'command = "x"\nwhen = "always"\n'})
    result = cli("validate")
    assert sorted(problems(result)) == sorted([
        f"{spec(root)}: max_parallel: must be >= 1, got 0",
        f"{job(root, 'a')}: timeout: invalid duration 'soon': {DURATION_RULE}",
        f"{job(root, 'b')}: retries: must be >= 0, got -1",
        f"{job(root, 'c')}: command: a job needs exactly one of 'command' and 'agent'; it has both",
        f"{job(root, 'c')}: stage: stage 'nope' is not in the pipeline's stages: none (no `stages` list)",
        f"{job(root, 'd')}: <toml>: syntax error: line 1, column 5 (end of file): Expected '=' after a key "
        "in a key/value pair",
        f"{job(root, 'a')}: needs: dependency cycle: a -> b -> a",
        f"{job(root, 'a', 'q')}: when: unknown key 'when'; known keys: agent, allow_failure, backoff, cache, command, "
        "description, env, from, harness, idle_timeout, max_cost_usd, max_regressions, needs, output_schema, "
        "outputs, parent, regression_context, regression_of, resources, retries, retry_on, schema_version, script, "
        "sparse_checkout, stage, timeout",
    ])
    assert result.stderr == f"root {root.path}: 8 problem(s)\n"


# -- clean input and what PATH can be ---------------------------------------------------------

def test_clean_root_exits_zero(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": OK, "b": 'command = "x"\nneeds = ["a"]\n'})
    result = cli("validate")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"root {root.path}: ok\n"


def test_freshly_initialised_root_is_clean(root: Root, cli: Invoke) -> None:
    assert cli("validate").exit_code == 0


def test_validate_a_single_template_file(root: Root, cli: Invoke) -> None:
    t = write(root.templates_dir / "t.toml", '[jobs.a]\ncommand = "x"\n')
    write(root.templates_dir / "broken.toml", "[jobs.a]\nneeds = 1\n")
    result = cli("validate", str(t))
    assert (result.exit_code, result.stdout) == (0, "template t: ok\n")
    assert problems(cli("validate", "templates/broken.toml")) == [
        f"{root.path}/templates/broken.toml: jobs.a.needs: expected an array, got 1",
        f"{root.path}/templates/broken.toml: jobs.a.command: a job needs exactly one of 'command' and 'agent'; "
        "it has neither",
    ]


def test_validate_a_template_outside_any_root(tmp_path: Path, cli: Invoke) -> None:
    t = write(tmp_path / "elsewhere" / "t.toml", '[jobs.a]\ncommand = "x"\nresources = { llm = 1 }\n')
    result = cli("validate", str(t), cwd=tmp_path)
    assert (result.exit_code, result.stdout) == (0, "template t: ok\n")


def test_validate_a_pipeline_directory_checks_only_that_pipeline(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    make_pipeline("good", {"a": OK})
    make_pipeline("bad", {"a": "retries = 1\n"})
    result = cli("validate", "pipelines/good")
    assert (result.exit_code, result.stdout) == (0, "pipeline good: ok\n")
    result = cli("validate", str(root.pipelines_dir / "bad"))
    assert problems(result) == [
        f"{job(root, 'a', 'bad')}: command: a job needs exactly one of 'command' and 'agent'; it has neither",
    ]
    assert result.stderr == "pipeline bad: 1 problem(s)\n"


def test_validate_a_job_file_checks_its_pipeline(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    d = make_pipeline("p", {"a": OK, "b": 'command = "x"\nneeds = ["zz"]\n'})
    result = cli("validate", str(d / "jobs" / "a.toml"))
    assert problems(result) == [f"{job(root, 'b')}: needs[0]: unknown job 'zz'"]
    result = cli("validate", "pipeline.toml", cwd=d)
    assert problems(result) == [f"{job(root, 'b')}: needs[0]: unknown job 'zz'"]


def test_validate_the_settings_file_alone(root: Root, cli: Invoke) -> None:
    result = cli("validate", "clowder.toml")
    assert (result.exit_code, result.stdout) == (0, f"settings {root.config_file}: ok\n")


def test_validate_a_path_that_does_not_exist(root: Root, cli: Invoke) -> None:
    assert problems(cli("validate", "nowhere.toml")) == [
        f"{root.path}/nowhere.toml: <file>: no such file or directory",
    ]


def test_validate_a_directory_that_is_nothing_clowder_knows(root: Root, tmp_path: Path, cli: Invoke) -> None:
    (tmp_path / "plain").mkdir()
    assert problems(cli("validate", str(tmp_path / "plain"))) == [
        f"{tmp_path}/plain: <file>: not a Clowder root, pipeline, template or spec file",
    ]


def test_examples_validate_clean(cli: Invoke) -> None:
    result = cli("validate", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"root {EXAMPLES}: ok\n"


# -- loaders ----------------------------------------------------------------------------------

def test_load_pipeline_raises_spec_error_with_every_problem(root: Root, make_pipeline: MakePipeline) -> None:
    d = make_pipeline("p", {"a": "retries = -1\n"})
    with pytest.raises(SpecError) as e:
        load_pipeline(root.pipeline("p"))
    assert [str(p) for p in e.value.problems] == [
        f"{d}/jobs/a.toml: retries: must be >= 0, got -1",
        f"{d}/jobs/a.toml: command: a job needs exactly one of 'command' and 'agent'; it has neither",
    ]


def test_template_job_problems_are_reported_once(root: Root, cli: Invoke) -> None:
    write(root.templates_dir / "t.toml", '[jobs.a]\ncommand = "x"\nretry = 1\n')
    assert problems(cli("validate")) == [
        f"{root.path}/templates/t.toml: jobs.a.retry: unknown key 'retry' (did you mean 'retry_on'?)",
    ]


def test_template_variable_names_must_be_usable_as_placeholders(root: Root, cli: Invoke) -> None:
    write(root.templates_dir / "t.toml", '[variables]\nmy-var = {}\n1st = {}\nok_2 = {}\n[jobs.a]\ncommand = "x"\n')
    t = f"{root.path}/templates/t.toml"
    rule = "use letters, digits and '_', not starting with a digit"
    assert problems(cli("validate")) == [
        f"{t}: variables.1st: invalid variable name '1st': {rule}",
        f"{t}: variables.my-var: invalid variable name 'my-var': {rule}",
    ]


def test_validate_anything_inside_a_pipeline_checks_that_pipeline(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    d = make_pipeline("p", {"a": 'command = "x"\nretries = -1\n'})
    write(d / "status.toml", 'state = "pending"\n')
    write(d / "workspaces" / "a" / "pyproject.toml", "[project]\n")
    expected = [f"{job(root, 'a')}: retries: must be >= 0, got -1"]
    for target in ("status.toml", "jobs", "status", "workspaces/a/pyproject.toml"):
        result = cli("validate", target, cwd=d)
        assert problems(result) == expected, target
        assert result.stderr == "pipeline p: 1 problem(s)\n"


def test_validate_the_templates_or_pipelines_directory(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    write(root.templates_dir / "t.toml", '[jobs.a]\ncommand = "x"\nretries = -1\n')
    make_pipeline("p", {"a": 'command = "x"\nretries = -2\n'})
    result = cli("validate", "templates")
    assert problems(result) == [f"{root.path}/templates/t.toml: jobs.a.retries: must be >= 0, got -1"]
    assert result.stderr == f"templates {root.templates_dir}: 1 problem(s)\n"
    assert problems(cli("validate", "pipelines")) == [f"{job(root, 'a')}: retries: must be >= 0, got -2"]


def test_a_root_inside_a_directory_named_pipelines_is_still_a_root(tmp_path: Path, cli: Invoke) -> None:
    nested = tmp_path / "pipelines" / "myroot"
    assert cli("init", str(nested)).exit_code == 0
    t = write(nested / "templates" / "t.toml", '[jobs.a]\ncommand = "x"\n')
    result = cli("validate", str(t), cwd=nested)
    assert (result.exit_code, result.stdout) == (0, "template t: ok\n")
    result = cli("validate", cwd=nested)
    assert (result.exit_code, result.stdout) == (0, f"root {nested}: ok\n")


def test_validate_a_missing_pipeline(root: Root, cli: Invoke) -> None:
    assert problems(cli("validate", "pipelines/nope")) == [
        f"{root.pipelines_dir}/nope: <file>: no such file or directory",
    ]


def test_builtin_harnesses_need_no_configuration(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    root.config_file.write_text('default_harness = "codex"\n')
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "claude"\n'},
                  spec='prompt = "x"\n[roles.dev]\nharness = "aider"\n')
    assert cli("validate").exit_code == 0


def test_unknown_harness_of_a_job_or_role_and_unknown_placeholders(
    root: Root, make_pipeline: MakePipeline, cli: Invoke
) -> None:
    root.config_file.write_text('default_harness = "nope"\n[harnesses.mine]\ncommand = ["my-agent", "{prompt_fil}"]\n')
    assert problems(cli("validate")) == [
        f"{root.path}/clowder.toml: default_harness: unknown harness 'nope'; known: aider, claude, codex, mine, "
        "scripted",
        f"{root.path}/clowder.toml: harnesses.mine.command: unknown placeholder {{prompt_fil}}; known: {{prompt_file}} "
        "{prompt} {actions_file} {output_file} {workspace} {root} {pipeline} {job} {attempt} {role} {python} {model}",
    ]
    root.config_file.write_text('[harnesses.mine]\ncommand = ["my-agent"]\n')
    make_pipeline("p", {"a": 'agent = "dev"\nharness = "min"\n'}, spec='prompt = "x"\n[roles.dev]\nharness = "zz"\n')
    assert problems(cli("validate")) == [
        f"{job(root, 'a')}: harness: unknown harness 'min' (did you mean 'mine'?)",
        f"{spec(root)}: roles.dev.harness: unknown harness 'zz'; clowder.toml [harnesses] and the built-in ones "
        "define: aider, claude, codex, mine, scripted",
    ]
