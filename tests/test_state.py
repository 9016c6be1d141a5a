"""Status files: the scheduler's own state is typed in the record and declared in the schema."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from clowder.errors import SpecError
from clowder.state import Killing, KillReason, Trigger, job_status_to_toml, read_job_status

# As Clowder wrote them before these keys were typed (they lived in an untyped `extra`).
OLD = """\
schema_version = 1
job = "a"
state = "running"
attempt = 2
message = ""
retry_request = "20260101T100000000000-1-retry"
spawn_refused = "spawn refused: unknown job 'x'"
future_key = "kept"

[killing]
reason = "timeout"
at = 2026-01-01T10:00:05Z
sigkill = true

[[attempts]]
number = 2
state = "running"
started_at = 2026-01-01T10:00:00Z
trigger = "manual"
"""


def test_an_older_status_file_reads_into_typed_fields_and_writes_back_the_same_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(OLD)
    status = read_job_status(path, "a")
    assert status.killing == Killing(KillReason.TIMEOUT, datetime(2026, 1, 1, 10, 0, 5, tzinfo=UTC), sigkill=True)
    assert status.retry_request == "20260101T100000000000-1-retry"
    assert status.spawn_refused == "spawn refused: unknown job 'x'"
    assert status.attempts[0].trigger is Trigger.MANUAL
    assert dict(status.extra) == {"future_key": "kept"}
    again = tmp_path / "again.toml"
    again.write_text(job_status_to_toml(status))
    assert read_job_status(again, "a") == status


@pytest.mark.parametrize(("table", "message"), [
    ('killing = { reason = "boredom", at = 2026-01-01T10:00:05Z }', "killing.reason"),
    ('killing = { reason = "cancel", at = 2026-01-01T10:00:05 }', "killing.at: expected a date-time with a UTC offset"),
    ('killing = { reason = "cancel" }', "killing"),
])
def test_a_hand_edited_kill_is_a_problem_naming_the_file_and_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "a.toml"
    path.write_text(f'state = "running"\nattempt = 1\n{table}\n')
    with pytest.raises(SpecError) as e:
        read_job_status(path, "a")
    assert f"{path}: {message}" in str(e.value)
