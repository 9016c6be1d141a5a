"""The agent harness (DESIGN §7): what runs an `agent = "<role>"` job and what it leaves behind.

This module only names the run-metadata files; it imports nothing but clowder.metadata (which
imports nothing of Clowder's), because the scripted agent and the adapter runner import it on the
per-job path.
"""

from __future__ import annotations

from clowder.metadata import OUTPUT_FILE as OUTPUT_FILE
from clowder.metadata import metadata_dir as metadata_dir

PROMPT_FILE = "prompt.md"  # the composed prompt the agent reads
ACTIONS_FILE = "actions.jsonl"  # the action log: one JSON event per line (clowder.harness.actions)
SCRIPT_FILE = "script.json"  # the scripted agent's steps, when the job or its role has some
REGRESSION_FILE = "regression.json"  # a fix-up's regression context (written by the regression loop)
