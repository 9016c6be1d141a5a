"""`clowder fsck`: every way the index disagrees with a fresh reading of the tree, and every
artifact or attempt commit the status files record that the workspaces do not hold."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clowder import index, snapshot
from clowder.index import reindex
from clowder.tree import Root


@dataclass(frozen=True)
class Difference:
    kind: str  # missing | extra | changed
    what: str  # the row or object, e.g. `jobs p/dev` or `object p/dev@1 src/app.py`
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.what}: {self.detail}"


def fsck(root: Root) -> list[Difference]:
    """Every difference, rows first (in table order), then git objects."""
    root.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fsck-", dir=root.state_dir) as tmp:
        fresh = Path(tmp) / "tree.sqlite"
        reindex.build(root, fresh)
        return [*_rows(root, fresh), *_objects(root, fresh)]


def _rows(root: Root, fresh: Path) -> Iterator[Difference]:
    try:
        differences = index.compare(root, fresh)
    except index.IndexUnavailable as e:
        yield Difference("missing", "index", str(e))
        return
    for d in differences:
        what = f"{d.table} {'/'.join(str(k) for k in d.key)}"
        if d.index is None:
            yield Difference("missing", what, "in the tree, not in the index")
        elif d.tree is None:
            yield Difference("extra", what, "in the index, not in the tree")
        else:
            changed = [f"{c} is {_show(a)} in the index, {_show(b)} in the tree"
                       for c, a, b in zip(d.columns, d.index, d.tree, strict=True) if a != b]
            yield Difference("changed", what, "; ".join(changed))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _objects(root: Root, fresh: Path) -> list[Difference]:
    artifacts, commits = index.recorded_objects(fresh)
    wanted: dict[tuple[str, str], dict[str, tuple[str, int | None]]] = {}
    labels: dict[tuple[str, str, str], list[str]] = {}
    for pipeline, job, attempt, path, blob, size in artifacts:
        wanted.setdefault((pipeline, job), {})[blob] = ("blob", size)
        labels.setdefault((pipeline, job, blob), []).append(f"object {pipeline}/{job}@{attempt} {path} (blob {blob})")
    for pipeline, job, number, commit in commits:
        wanted.setdefault((pipeline, job), {})[commit] = ("commit", None)
        labels.setdefault((pipeline, job, commit), []).append(f"object {pipeline}/{job}@{number} (commit {commit})")

    def check(key: tuple[str, str]) -> list[Difference]:
        ws = root.pipeline(key[0]).workspace(key[1])
        problems = snapshot.check_objects(ws, wanted[key])
        kind = "missing"
        return [Difference(kind if "missing" in why or "no workspace" in why else "changed", label, why)
                for oid, why in sorted(problems.items()) for label in labels[(*key, oid)]]

    # Each repository costs one git process; a few at once keep both cores busy.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [d for found in pool.map(check, sorted(wanted)) for d in found]
