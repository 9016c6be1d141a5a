"""The scheduler's pure step: given what the tree says (specs, statuses, requests, observed
process ends) and the time, decide what to start, kill, skip, retry and record.

`reconcile` does no I/O, and this package imports nothing that does (a test checks it); the
driver (clowder.driver) feeds it and applies its actions.
"""

from clowder.scheduler.ending import attempt_ending, fail_or_retry, killed_why
from clowder.scheduler.ready import ReadyChange, ReadyQueue
from clowder.scheduler.records import (
    ACTIVE,
    NO_CHANGES,
    Action,
    Cancel,
    Candidate,
    DoneRequest,
    Ending,
    Invalid,
    JobStep,
    Kill,
    Limits,
    Outcome,
    PipelineView,
    Plan,
    Request,
    Retry,
    Reuse,
    SetJob,
    SetPipeline,
    Spawn,
    SpawnJob,
    Start,
    prompt_hash,
)
from clowder.scheduler.regression import fixup_name
from clowder.scheduler.step import reconcile

__all__ = [
    "ACTIVE", "NO_CHANGES", "Action", "Cancel", "Candidate", "DoneRequest", "Ending", "Invalid", "JobStep", "Kill",
    "Limits", "Outcome", "PipelineView", "Plan", "ReadyChange", "ReadyQueue", "Request", "Retry", "Reuse",
    "SetJob", "SetPipeline", "Spawn", "SpawnJob",
    "Start", "attempt_ending", "fail_or_retry", "fixup_name", "killed_why", "prompt_hash", "reconcile",
]
