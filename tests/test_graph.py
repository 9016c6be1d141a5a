"""The job graph: cycles, ancestry, order, and `clowder graph` drawings."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from clowder.drawing import to_mermaid
from clowder.graph import ancestors, find_cycle, topo_order
from clowder.tree import Root
from clowder.validate import load_pipeline
from tests.conftest import Invoke, MakePipeline, write

# -- algorithms -------------------------------------------------------------------------------

def test_no_cycle_in_a_dag() -> None:
    assert find_cycle({"a": [], "b": ["a"], "c": ["a", "b"]}) is None


def test_cycle_reads_upstream_first_and_closes_on_its_start() -> None:
    # b needs a, c needs b, a needs c: work flows a -> b -> c -> a.
    assert find_cycle({"a": ["c"], "b": ["a"], "c": ["b"]}) == ["a", "b", "c", "a"]


def test_cycle_excludes_the_path_that_led_to_it() -> None:
    # z needs a, and the cycle is a <-> b: z is not part of it.
    assert find_cycle({"z": ["a"], "a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


def test_self_loop_is_a_cycle() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_unknown_names_are_ignored_by_graph_functions() -> None:
    deps = {"a": ["ghost"], "b": ["a"]}
    assert find_cycle(deps) is None
    assert ancestors(deps, "b") == {"a"}
    assert topo_order(deps) == ["a", "b"]


def test_ancestors_are_transitive_and_survive_cycles() -> None:
    assert ancestors({"a": [], "b": ["a"], "c": ["b"], "d": ["c", "a"]}, "d") == {"a", "b", "c"}
    assert ancestors({"a": ["b"], "b": ["a"]}, "a") == {"a", "b"}


def test_topo_order_puts_needs_first_and_breaks_ties_by_name() -> None:
    deps = {"join": ["x", "y"], "y": ["split"], "x": ["split"], "split": [], "alone": []}
    assert topo_order(deps) == ["alone", "split", "x", "y", "join"]


def test_deep_chains_do_not_hit_the_recursion_limit() -> None:
    # Sorted by name, each job needs the next: a depth-first walk goes 5,000 deep.
    deps = {f"j{i:05d}": [f"j{i + 1:05d}"] if i < 4999 else [] for i in range(5000)}
    assert topo_order(deps) == sorted(deps, reverse=True)
    assert find_cycle(deps) is None
    deps["j04999"] = ["j00000"]
    cycle = find_cycle(deps)
    assert cycle is not None and len(cycle) == 5001


NAMES = st.sampled_from("abcdefgh")


@settings(max_examples=200, deadline=None)
@given(deps=st.dictionaries(NAMES, st.lists(NAMES | st.just("ghost"), max_size=3), max_size=8))
def test_cycle_or_order(deps: dict[str, list[str]]) -> None:
    cycle = find_cycle(deps)
    if cycle is None:
        order = topo_order(deps)
        assert sorted(order) == sorted(deps)
        for name, needs in deps.items():
            assert all(order.index(n) < order.index(name) for n in needs if n in deps)
    else:
        # A real cycle, upstream first: each job is needed by the next one.
        assert cycle[0] == cycle[-1]
        assert len(set(cycle)) == len(cycle) - 1
        for up, down in itertools.pairwise(cycle):
            assert up in deps[down]


# -- drawings ---------------------------------------------------------------------------------

FAN = {
    "split": 'command = "x"\n',
    "left": 'command = "x"\nneeds = ["split"]\n',
    "right": 'command = "x"\nneeds = ["split"]\n',
    "join": 'command = "x"\nneeds = ["left", { job = "right", when = "always" }]\n',
    "undo": 'command = "x"\nneeds = [{ job = "join", when = "failure" }]\n',
}


def test_dependents_are_the_reverse_of_needs(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", FAN)
    assert load_pipeline(root.pipeline("p")).dependents == {
        "split": ("left", "right"), "left": ("join",), "right": ("join",), "join": ("undo",), "undo": (),
    }


def test_graph_dot(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", FAN)
    result = cli("graph", "p")
    assert result.exit_code == 0, result.output
    assert result.stdout == """\
digraph "p" {
  rankdir=LR;
  node [shape=box];
  "split" [label="split\\npending"];
  "left" [label="left\\npending"];
  "right" [label="right\\npending"];
  "join" [label="join\\npending"];
  "undo" [label="undo\\npending"];
  "split" -> "left";
  "split" -> "right";
  "left" -> "join";
  "right" -> "join" [label="always", style=dashed];
  "join" -> "undo" [label="failure", style=dashed];
}
"""


def test_graph_mermaid(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", FAN)
    result = cli("graph", "p", "--format", "mermaid")
    assert result.exit_code == 0, result.output
    assert result.stdout == """\
flowchart LR
  j_split["split<br/>pending"]
  j_left["left<br/>pending"]
  j_right["right<br/>pending"]
  j_join["join<br/>pending"]
  j_undo["undo<br/>pending"]
  j_split --> j_left
  j_split --> j_right
  j_left --> j_join
  j_right -.->|always| j_join
  j_join -.->|failure| j_undo
"""


def test_graph_shows_stage_edges_and_recorded_states(make_pipeline: MakePipeline, cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'stage = "one"\ncommand = "x"\n', "b": 'stage = "two"\ncommand = "x"\n'},
                      spec='prompt = "x"\nstages = ["one", "two"]\n')
    write(d / "status" / "a.toml", 'state = "succeeded"\nattempt = 1\n')
    assert cli("graph", "p", "--format", "mermaid").stdout == """\
flowchart LR
  j_a["a<br/>succeeded"]
  j_b["b<br/>pending"]
  j_a --> j_b
"""


def test_mermaid_ids_of_similar_names_stay_distinct(root: Root, make_pipeline: MakePipeline) -> None:
    make_pipeline("p", {"a.b": 'command = "x"\n', "a_b": 'command = "x"\nneeds = ["a.b"]\n',
                        "a-b": 'command = "x"\nneeds = ["a_b"]\n'})
    text = to_mermaid(load_pipeline(root.pipeline("p")))
    assert text == """\
flowchart LR
  j_a_2eb["a.b"]
  j_a_5fb["a_b"]
  j_a_2db["a-b"]
  j_a_2eb --> j_a_5fb
  j_a_5fb --> j_a_2db
"""


def test_graph_of_a_missing_pipeline(root: Root, cli: Invoke) -> None:
    result = cli("graph", "nope")
    assert (result.exit_code, result.stderr) == (2, f"error: {root.pipelines_dir}/nope: no such pipeline\n")


def test_graph_of_an_invalid_pipeline_lists_its_problems(root: Root, make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", {"a": 'command = "x"\nneeds = ["b"]\n'})
    result = cli("graph", "p")
    assert (result.exit_code, result.stderr) == (2, f"{root.pipelines_dir}/p/jobs/a.toml: needs[0]: unknown job 'b'\n")


def test_graph_unknown_format_is_a_usage_error(make_pipeline: MakePipeline, cli: Invoke) -> None:
    make_pipeline("p", FAN)
    result = cli("graph", "p", "--format", "svg")
    assert result.exit_code == 2
    assert "'svg' is not one of 'dot', 'mermaid'" in result.stderr
