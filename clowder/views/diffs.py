"""What `clowder serve` shows of `clowder diff`: the same git diff, for a page."""

from __future__ import annotations

from clowder import known
from clowder.errors import UsageError
from clowder.known import NotFound
from clowder.spec import NAME_PATTERN
from clowder.tree import Root

POINT_PATTERN = NAME_PATTERN[:-1] + r"(@[0-9]{1,6})?$"  # `dev` (its final commit) or `test@2`
DIFF_LIMIT = 2_000_000  # characters: a page cannot show more anyway


def diff_text(root: Root, pipeline: str, a: str, b: str | None) -> str:
    """`clowder diff PIPELINE A [B]`: git diff from A to B, or what A changed from its base."""
    from clowder import workspace

    paths = known.pipeline(root, pipeline)
    for point in (a, b):
        if point is not None:
            known.job(paths, point.split("@", 1)[0])
    # Resolved first: workspace.diff would take an unknown B for a path to limit the diff to.
    try:
        for point in (a, b):
            if point is not None:
                workspace.resolve(paths, point)
    except UsageError as e:
        raise NotFound(str(e)) from e
    text = workspace.diff(paths, a, [b] if b else []).stdout
    if len(text) > DIFF_LIMIT:
        rerun = " ".join(["clowder diff", pipeline, a, *([b] if b else [])])
        return text[:DIFF_LIMIT] + f"\n… cut at {DIFF_LIMIT:,} characters: run `{rerun}`\n"
    return text
