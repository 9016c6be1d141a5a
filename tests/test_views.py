"""The read model: one reader that answers from the index where it is fresh and from the tree
otherwise, with the same records either way."""

from __future__ import annotations

from clowder.index import reindex
from clowder.tree import Root
from clowder.views import indexed, reader
from tests.conftest import MakePipeline, write
from tests.test_index import JOBS, run, settle


def make_root(root: Root, make_pipeline: MakePipeline) -> list[str]:
    """A root a daemon has run: a finished pipeline with retries, failures and artifacts, one
    that never ran, and one whose spec is invalid."""
    make_pipeline("p", JOBS)
    run(root)
    make_pipeline("q", {"a": 'command = ["true"]\n'})
    make_pipeline("bad", {"a": "command = 3\n"})
    settle()  # a stamp taken as its files are written is racy, and never fresh
    reindex.rebuild(root)  # q and bad too, as `clowder watch` would have recorded them
    return ["bad", "p", "q"]


def test_the_same_records_come_from_a_fresh_index_and_from_the_tree(root: Root,
                                                                     make_pipeline: MakePipeline) -> None:
    names = make_root(root, make_pipeline)
    assert sorted(indexed.reports(root, names)) == names  # every pipeline is answered by the index
    assert sorted(indexed.entries(root, names, ended_from_status=False)) == names
    assert indexed.artifacts(root, "p", None, None) is not None

    assert reader.reports(root) == reader.reports(root, use_index=False)
    assert reader.reports(root, "p") == reader.reports(root, "p", use_index=False)
    for ended_from_status in (False, True):
        assert reader.entries(root, ended_from_status=ended_from_status) == reader.entries(root, use_index=False)
    by_state = {e.name: e.state for e in reader.entries(root)}
    assert by_state == {"bad": "invalid", "p": "succeeded", "q": "pending"}
    from_index = reader.artifacts(root, "p")
    root.index_file.unlink()
    assert indexed.artifacts(root, "p", None, None) is None
    assert reader.artifacts(root, "p") == from_index != []


def test_a_stale_or_missing_index_falls_back_to_the_tree(root: Root, make_pipeline: MakePipeline) -> None:
    names = make_root(root, make_pipeline)
    write(root.pipeline("q").job_file("b"), 'command = ["true"]\nneeds = ["a"]\n')  # q's rows are stale now
    settle()
    assert sorted(indexed.reports(root, names)) == ["bad", "p"]
    [q] = reader.reports(root, "q")
    assert [j.name for j in q.jobs] == ["a", "b"]
    assert reader.entries(root) == reader.entries(root, use_index=False)
    assert next(e for e in reader.entries(root) if e.name == "q").counts == {"pending": 2}

    root.index_file.unlink()
    assert indexed.reports(root, names) == {}
    assert reader.reports(root) == reader.reports(root, use_index=False)
    assert [e.name for e in reader.entries(root)] == names
