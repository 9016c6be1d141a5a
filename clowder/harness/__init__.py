"""The agent harness (DESIGN §7): what runs an `agent = "<role>"` job and what it leaves behind.

This module only names the run-metadata files; it imports nothing, because the scripted agent
and the adapter runner import it on the per-job path.
"""

from __future__ import annotations

PROMPT_FILE = "prompt.md"  # the composed prompt the agent reads
ACTIONS_FILE = "actions.jsonl"  # the action log: one JSON event per line (clowder.harness.actions)
OUTPUT_FILE = "output.json"  # the structured output extracted from the log
SCRIPT_FILE = "script.json"  # the scripted agent's steps, when the job or its role has some
REGRESSION_FILE = "regression.json"  # a fix-up's regression context (written by the regression loop)


def metadata_dir(job: str) -> str:
    """The job's run-metadata directory, relative to its workspace."""
    return f".clowder/{job}"
