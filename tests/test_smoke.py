from pathlib import Path

from clowder.tree import Root
from tests.conftest import Invoke, MakePipeline


def test_status_of_a_new_pipeline_is_all_pending(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = ["true"]\n', "b": 'command = "true"\nneeds = ["a"]\n'})
    result = cli("status", "p")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "pipeline p: pending"
    assert [line.split()[0] for line in lines[2:]] == ["a", "b"]
    assert all(line.split()[2] == "pending" for line in lines[2:])


def test_examples_validate_clean(cli: Invoke) -> None:
    examples = Path(__file__).resolve().parent.parent / "example_pipelines"
    result = cli("validate", str(examples))
    assert result.exit_code == 0, result.output
