"""The agent CLI versions Clowder is tested with: the conformance suite (tests/agents) runs
these, as pinned in .ci/agent-versions (a test checks that the two agree). `clowder doctor`
reports any other version as untested."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Tested:
    registry: str
    package: str
    version: str


TESTED: Mapping[str, Tested] = {
    "claude": Tested("npm", "@anthropic-ai/claude-code", "2.1.197"),
    "codex": Tested("npm", "@openai/codex", "0.171.0"),
    "aider": Tested("pypi", "aider-chat", "0.86.2"),
}
