"""`clowder init` and `clowder new`: roots and pipelines made from templates."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from clowder.errors import SpecError, UsageError
from clowder.spec import NAME_RULE
from clowder.template import DEFAULT_CONFIG, _write_pipeline, dumps, new_pipeline, slugify
from clowder.tree import Root
from clowder.validate import check_config, load_pipeline
from tests.conftest import EXAMPLES, Invoke, write

TEMPLATE = """\
    description = "build then test"
    stages = ["build", "test"]

    [variables]
    greeting = { default = "hello" }
    target = { description = "no default: must be --set" }
    loud = { default = true }

    [roles.dev]
    instructions = "Say {{ greeting }} to {{ target }}."

    [jobs.build]
    stage = "build"
    command = ["sh", "-c", "echo {{ greeting }} {{ target }} > out.txt"]
    env = { LOUD = "{{ loud }}" }

    [jobs.test]
    stage = "test"
    agent = "dev"
    timeout = "5m"
    """


def read(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


@pytest.fixture
def template(root: Root) -> Path:
    return write(root.templates_dir / "greet.toml", TEMPLATE)


# -- init -------------------------------------------------------------------------------------

def test_init_creates_config_templates_and_pipelines(tmp_path: Path, cli: Invoke) -> None:
    target = tmp_path / "fresh"
    result = cli("init", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"created Clowder root at {target}\n"
        "next: add a template under templates/, then `clowder new TEMPLATE --prompt TEXT`\n"
    )
    assert (target / "clowder.toml").read_text() == DEFAULT_CONFIG
    assert (target / "templates").is_dir()
    assert (target / "pipelines").is_dir()
    assert sorted(p.name for p in (target / ".clowder" / "schemas").iterdir()) == [
        "clowder.schema.json", "job.schema.json", "pipeline.schema.json", "status.schema.json",
        "template.schema.json",
    ]


def test_init_defaults_to_the_current_directory(tmp_path: Path, cli: Invoke) -> None:
    (tmp_path / "here").mkdir()
    assert cli("init", cwd=tmp_path / "here").exit_code == 0
    assert (tmp_path / "here" / "clowder.toml").is_file()


def test_default_config_is_valid_and_its_values_are_the_defaults(root: Root) -> None:
    config, problems = check_config(root.config_file)
    assert problems == []
    assert config is not None
    assert (config.max_parallel, config.sweep_interval, config.heartbeat_timeout, config.kill_grace) == (4, 30, 30, 10)
    assert (config.retry.retries, config.retry.max_regressions) == (0, 3)
    assert (config.retry.backoff.initial, config.retry.backoff.factor, config.retry.backoff.max) == (2, 2, 300)
    assert DEFAULT_CONFIG.startswith("#:schema .clowder/schemas/clowder.schema.json\n")


def test_init_refuses_to_clobber_an_existing_root(root: Root, cli: Invoke) -> None:
    root.config_file.write_text("max_parallel = 9\n")
    result = cli("init", str(root.path))
    assert result.exit_code == 2
    assert result.stderr == f"error: {root.config_file}: already exists; not overwriting an existing root\n"
    assert root.config_file.read_text() == "max_parallel = 9\n"


def test_init_into_an_existing_directory_keeps_its_files(tmp_path: Path, cli: Invoke) -> None:
    write(tmp_path / "d" / "templates" / "mine.toml", '[jobs.a]\ncommand = "x"\n')
    assert cli("init", str(tmp_path / "d")).exit_code == 0
    assert (tmp_path / "d" / "templates" / "mine.toml").read_text() == '[jobs.a]\ncommand = "x"\n'


# -- new --------------------------------------------------------------------------------------

def test_new_instantiates_the_template(root: Root, template: Path, cli: Invoke) -> None:
    result = cli("new", "greet", "--prompt", "Greet the world", "--set", "target=world")
    assert result.exit_code == 0, result.output
    assert result.stdout == "greet-the-world\n"
    assert result.stderr == "created pipelines/greet-the-world/ from template greet\n"
    d = root.pipelines_dir / "greet-the-world"
    spec = read(d / "pipeline.toml")
    assert spec["prompt"] == "Greet the world"
    assert spec["template"] == "greet"
    assert spec["stages"] == ["build", "test"]
    assert spec["description"] == "build then test"
    assert spec["variables"] == {"greeting": "hello", "target": "world", "loud": "true"}
    assert spec["roles"] == {"dev": {"instructions": "Say hello to world."}}
    assert sorted(p.name for p in (d / "jobs").iterdir()) == ["build.toml", "test.toml"]
    assert read(d / "jobs" / "build.toml") == {
        "stage": "build", "command": ["sh", "-c", "echo hello world > out.txt"], "env": {"LOUD": "true"},
    }
    assert read(d / "jobs" / "test.toml") == {"stage": "test", "agent": "dev", "timeout": "5m"}


def test_new_pipeline_validates_clean_and_loads(root: Root, template: Path, cli: Invoke) -> None:
    name = cli("new", "greet", "-p", "x", "--set", "target=y").stdout.strip()
    result = cli("validate", f"pipelines/{name}")
    assert (result.exit_code, result.stdout) == (0, f"pipeline {name}: ok\n")
    pipeline = load_pipeline(root.pipeline(name))
    assert [n.job for n in pipeline.jobs["test"].needs] == ["build"]  # from the stage order
    assert pipeline.jobs["test"].timeout == 300


def test_generated_files_start_with_a_schema_line_that_resolves(root: Root, template: Path, cli: Invoke) -> None:
    name = cli("new", "greet", "-p", "x", "--set", "target=y").stdout.strip()
    d = root.pipelines_dir / name
    files = [d / "pipeline.toml", d / "jobs" / "build.toml", d / "jobs" / "test.toml"]
    firsts = [f.read_text().splitlines()[0] for f in files]
    assert firsts == [
        "#:schema ../../.clowder/schemas/pipeline.schema.json",
        "#:schema ../../../.clowder/schemas/job.schema.json",
        "#:schema ../../../.clowder/schemas/job.schema.json",
    ]
    for f, first in zip(files, firsts, strict=True):
        target = (f.parent / first.removeprefix("#:schema ")).resolve()
        assert target.is_file(), target
        assert target.parent == root.schemas_dir


def test_generated_files_round_trip_through_tomli_w(root: Root, template: Path, cli: Invoke) -> None:
    name = cli("new", "greet", "-p", 'say "hi"\nthen\tleave', "--set", "target=y").stdout.strip()
    for f in sorted((root.pipelines_dir / name).rglob("*.toml")):
        data = read(f)
        assert tomllib.loads(tomli_w.dumps(data)) == data
        assert tomllib.loads(tomli_w.dumps(data, multiline_strings=True)) == data


PROMPTS = [
    "one line",
    "several\nlines\n\nwith a blank one\n",
    "\nstarts with a newline",
    'double "quotes" and \'single\' ones and """triple""" and \'\'\'triple\'\'\'',
    "back\\slashes \\n \\u0041 \\\\ and a trailing backslash\\",
    "unicode: é ñ 漢字 🐈 \u200b",
    "{{ x }} and {{greeting}} are not template variables here",
    "windows\r\nline endings\r\n",
    "a lone \r carriage return and a tab\t and a NUL-free control \x1b[0m",
    "  leading and trailing spaces  ",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_is_stored_verbatim(root: Root, template: Path, cli: Invoke, prompt: str) -> None:
    result = cli("new", "greet", "--prompt", prompt, "--set", "target=y", "--name", "p")
    assert result.exit_code == 0, result.output
    assert read(root.pipelines_dir / "p" / "pipeline.toml")["prompt"].encode() == prompt.encode()
    assert load_pipeline(root.pipeline("p")).spec.prompt == prompt


def test_empty_prompt_is_refused(root: Root, template: Path, cli: Invoke) -> None:
    result = cli("new", "greet", "--prompt", "  \n", "--set", "target=y")
    assert (result.exit_code, result.stderr) == (2, "error: --prompt must not be empty\n")
    assert root.pipeline_names() == []


def test_slugs_are_unique(root: Root, template: Path, cli: Invoke) -> None:
    names = [cli("new", "greet", "-p", "Fix the login bug!", "--set", "target=y").stdout.strip() for _ in range(3)]
    assert names == ["fix-the-login-bug", "fix-the-login-bug-2", "fix-the-login-bug-3"]
    assert root.pipeline_names() == names


def test_slug_skips_taken_numbers(root: Root, template: Path, cli: Invoke) -> None:
    (root.pipelines_dir / "fix").mkdir()
    (root.pipelines_dir / "fix-2").mkdir()
    assert cli("new", "greet", "-p", "fix", "--set", "target=y").stdout == "fix-3\n"


@pytest.mark.parametrize(("prompt", "slug"), [
    ("Fix the login bug!", "fix-the-login-bug"),
    ("  MixedCase   and_underscores 42 ", "mixedcase-and-underscores-42"),
    ("!!! ???", "pipeline"),
    ("漢字だけ", "pipeline"),
    ("a" * 50, "a" * 40),
    ("implement the whole backend of the application in rust please", "implement-the-whole-backend-of-the"),
])
def test_slug_from_prompt(prompt: str, slug: str) -> None:
    assert slugify(prompt) == slug


def test_name_option_sets_the_pipeline_name(root: Root, template: Path, cli: Invoke) -> None:
    result = cli("new", "greet", "-p", "x", "--name", "mine", "--set", "target=y")
    assert (result.exit_code, result.stdout) == (0, "mine\n")
    assert root.pipeline_names() == ["mine"]


def test_invalid_name_option_is_refused(root: Root, template: Path, cli: Invoke) -> None:
    result = cli("new", "greet", "-p", "x", "--name", "../escape", "--set", "target=y")
    assert result.exit_code == 2
    assert result.stderr == f"error: invalid pipeline name '../escape': {NAME_RULE}\n"
    assert root.pipeline_names() == []
    assert not (root.path / "escape").exists()


def test_new_never_overwrites_an_existing_pipeline(root: Root, template: Path, cli: Invoke) -> None:
    d = write(root.pipelines_dir / "mine" / "pipeline.toml", 'prompt = "the original"\n').parent
    result = cli("new", "greet", "-p", "x", "--name", "mine", "--set", "target=y")
    assert result.exit_code == 2
    assert result.stderr == f"error: {d}: already exists; choose another --name\n"
    assert (d / "pipeline.toml").read_text() == 'prompt = "the original"\n'
    assert not (d / "jobs").exists()


def test_writing_a_pipeline_refuses_a_directory_that_appeared_meanwhile(root: Root) -> None:
    # The last guard: the staged directory is renamed into place, which fails on a non-empty
    # directory made after `new` checked the name.
    write(root.pipelines_dir / "slug" / "keep.txt", "mine")
    with pytest.raises(UsageError):
        _write_pipeline(root, root.pipeline("slug"), {"prompt": "x"}, {"a": {"command": "x"}})
    assert sorted(p.name for p in (root.pipelines_dir / "slug").iterdir()) == ["keep.txt"]
    assert list(root.tmp_dir.iterdir()) == []


def test_slug_avoids_a_stray_file_of_the_same_name(root: Root, template: Path, cli: Invoke) -> None:
    (root.pipelines_dir / "x").write_text("not a pipeline")
    result = cli("new", "greet", "-p", "x", "--set", "target=y")
    assert (result.exit_code, result.stdout) == (0, "x-2\n"), result.output


def test_set_overrides_defaults(root: Root, template: Path, cli: Invoke) -> None:
    cli("new", "greet", "-p", "x", "-n", "p", "--set", "target=y", "--set", "greeting=a=b c")
    assert read(root.pipelines_dir / "p" / "jobs" / "build.toml")["command"][2] == "echo a=b c y > out.txt"


def test_unknown_set_variable_is_refused(root: Root, template: Path, cli: Invoke) -> None:
    result = cli("new", "greet", "-p", "x", "--set", "target=y", "--set", "colour=red")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {template}: template has no variable 'colour' (it declares: greeting, loud, target)\n"
    )
    assert root.pipeline_names() == []


def test_malformed_set_is_refused(template: Path, cli: Invoke) -> None:
    result = cli("new", "greet", "-p", "x", "--set", "target")
    assert (result.exit_code, result.stderr) == (2, "error: --set expects KEY=VALUE, got 'target'\n")


def test_required_variable_without_set_is_refused(root: Root, template: Path, cli: Invoke) -> None:
    result = cli("new", "greet", "-p", "x")
    assert result.exit_code == 2
    assert result.stderr == (
        f"{template}: variables.target: template variable 'target' is unset; pass --set target=VALUE\n"
    )
    assert root.pipeline_names() == []


def test_unknown_template_is_refused(root: Root, template: Path, cli: Invoke) -> None:
    result = cli("new", "gret", "-p", "x")
    assert result.exit_code == 2
    assert result.stderr == f"error: {root.templates_dir}/gret.toml: no such template (templates here: greet)\n"


def test_broken_template_is_refused_with_its_problems(root: Root, cli: Invoke) -> None:
    t = write(root.templates_dir / "t.toml", '[jobs.a]\ncommand = "x"\nneeds = ["b"]\n')
    result = cli("new", "t", "-p", "x")
    assert result.exit_code == 2
    assert result.stderr == f"{t}: jobs.a.needs[0]: unknown job 'b'\n"
    assert root.pipeline_names() == []


def test_source_option_is_recorded(root: Root, template: Path, cli: Invoke) -> None:
    cli("new", "greet", "-p", "x", "-n", "p", "--set", "target=y", "--source", "/srv/repo.git", "--ref", "main")
    assert read(root.pipelines_dir / "p" / "pipeline.toml")["source"] == {"repo": "/srv/repo.git", "ref": "main"}
    assert load_pipeline(root.pipeline("p")).spec.source is not None


def test_new_works_from_a_subdirectory_of_the_root(root: Root, template: Path, cli: Invoke) -> None:
    result = cli("new", "greet", "-p", "x", "--set", "target=y", cwd=root.templates_dir)
    assert (result.exit_code, result.stdout) == (0, "x\n")
    assert root.pipeline_names() == ["x"]


def test_spec_error_leaves_nothing_behind(root: Root, cli: Invoke) -> None:
    write(root.templates_dir / "t.toml", '[variables]\nv = {}\n[jobs.a]\ncommand = "{{ v }}"\n')
    with pytest.raises(SpecError):
        new_pipeline(root, "t", "x")
    assert root.pipeline_names() == []
    assert list(root.tmp_dir.iterdir()) == []


# -- dumps ------------------------------------------------------------------------------------

def test_dumps_keeps_multiline_strings_readable() -> None:
    assert dumps({"prompt": "a\nb"}) == 'prompt = """\na\nb"""\n'


def test_dumps_falls_back_when_multiline_would_change_the_text() -> None:
    data = {"prompt": "a\r\nb"}
    assert tomllib.loads(dumps(data)) == data


# -- the examples -----------------------------------------------------------------------------

EXAMPLE_TEMPLATES = sorted(p.stem for p in (EXAMPLES / "templates").glob("*.toml"))


def test_there_are_at_least_three_example_templates() -> None:
    assert len(EXAMPLE_TEMPLATES) >= 3


@pytest.fixture
def example_root(tmp_path: Path) -> Root:
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target, ignore=shutil.ignore_patterns(".clowder", "*.sqlite"))
    for child in (target / "pipelines").iterdir():
        if child.is_dir():
            shutil.rmtree(child)
    return Root(target)


@pytest.mark.parametrize("name", EXAMPLE_TEMPLATES)
def test_every_example_template_instantiates_and_validates_clean(example_root: Root, cli: Invoke, name: str) -> None:
    result = cli("new", name, "--prompt", f"try {name}", "--name", "demo", cwd=example_root.path)
    assert result.exit_code == 0, result.output
    result = cli("validate", cwd=example_root.path)
    assert (result.exit_code, result.stdout) == (0, f"root {example_root.path}: ok\n"), result.output
    template = read(example_root.templates_dir / f"{name}.toml")
    jobs = example_root.pipeline("demo").jobs_dir
    assert sorted(p.stem for p in jobs.glob("*.toml")) == sorted(template["jobs"])
    for f in jobs.glob("*.toml"):
        assert "{{" not in f.read_text()
