"""Commands that make and check pipelines: init, new, validate, graph."""

from __future__ import annotations

from pathlib import Path

import click

from clowder.commands.common import root_option
from clowder.errors import (
    EXIT_BAD_INPUT,
    ClowderError,
)
from clowder.tree import Root, find_root

# Commands import what they use: `clowder status` over a thousand pipelines must not pay for
# jsonschema, rich or git it does not need (see README, "The index at scale").


@click.command()
@click.argument("directory", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a Clowder root in DIRECTORY (default: here): clowder.toml with defaults,
    templates/ and pipelines/. Refuses to overwrite an existing root."""
    from clowder.template import init_root

    root = init_root(directory)
    click.echo(f"created Clowder root at {root.path}")
    click.echo("next: add a template under templates/, then `clowder new TEMPLATE --prompt TEXT`")


@click.command()
@click.argument("template")
@click.option("--prompt", "-p", required=True, help="The pipeline's prompt, stored verbatim and never changed.")
@click.option("--name", "-n", help="Pipeline name (default: a unique slug of the prompt).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a template variable (repeatable).")
@click.option("--source", help="Git repository (path or URL) the first jobs start from.")
@click.option("--ref", help="Branch, tag or commit of --source (default: its HEAD).")
@root_option
def new(template: str, prompt: str, name: str | None, sets: tuple[str, ...], source: str | None,
        ref: str | None, root_dir: Path | None) -> None:
    """Create a pipeline from TEMPLATE (templates/TEMPLATE.toml) under pipelines/.

    Prints the new pipeline's name. Never overwrites an existing pipeline."""
    from clowder.spec import parse_assignment
    from clowder.template import new_pipeline

    root = find_root(root_dir)
    values = dict(parse_assignment(s) for s in sets)
    src = {"repo": source, **({"ref": ref} if ref else {})} if source else None
    paths = new_pipeline(root, template, prompt, name, values, src)
    click.echo(f"created {paths.dir.relative_to(root.path)}/ from template {template}", err=True)
    click.echo(paths.name)


@click.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@root_option
def validate(path: Path | None, root_dir: Path | None) -> None:
    """Check a root, pipeline directory, template or spec file (default: the whole root).

    Prints every problem as `FILE: key.path: message`; exits 2 if there is any."""
    from clowder.validate import validate_path

    root: Root | None
    if path is None:
        root = find_root(root_dir)
        path = root.path
    else:
        try:
            root = find_root(root_dir, cwd=path.resolve() if path.is_dir() else path.resolve().parent)
        except ClowderError:
            root = None
    what, problems = validate_path(path, root)
    for problem in problems:
        click.echo(str(problem))
    if problems:
        click.echo(f"{what}: {len(problems)} problem(s)", err=True)
        click.get_current_context().exit(EXIT_BAD_INPUT)
    click.echo(f"{what}: ok")


@click.command()
@click.argument("pipeline")
@click.option("--format", "fmt", type=click.Choice(["dot", "mermaid"]), default="dot", show_default=True,
              help="Graphviz dot or a Mermaid flowchart.")
@root_option
def graph(pipeline: str, fmt: str, root_dir: Path | None) -> None:
    """Print PIPELINE's job graph with each job's state. Dashed edges are `failure`/`always`."""
    from clowder import drawing, known
    from clowder.validate import load_config, load_pipeline
    from clowder.views import tree

    root = find_root(root_dir)
    paths = known.pipeline(root, pipeline, with_spec=False)  # a missing pipeline.toml is a problem to show
    loaded = load_pipeline(paths, load_config(root))
    states = {j.name: j.state for j in tree.pipeline_report(root, paths).jobs}
    render = drawing.to_dot if fmt == "dot" else drawing.to_mermaid
    click.echo(render(loaded, states), nl=False)


COMMANDS = (init, new, validate, graph,)
