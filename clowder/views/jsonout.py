"""The read model's records as the JSON the CLI prints (`--json`); the API's JSON is FastAPI's
rendering of the same records."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from clowder.state import Usage
from clowder.views.records import ArtifactLine, GateDecision, PipelineReport


def _ts(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _usage(u: Usage | None) -> dict[str, Any]:  # present where an agent reported some
    return {"usage": asdict(u)} if u is not None else {}


def _approvals(decided: tuple[GateDecision, ...]) -> dict[str, Any]:  # present for a gated job decided on
    return {"approvals": [{**asdict(d), "at": _ts(d.at)} for d in decided]} if decided else {}


def reports_json(reports: list[PipelineReport]) -> list[dict[str, Any]]:
    """`clowder status --json`."""
    return [
        {
            "name": r.name,
            "state": r.state,
            "message": r.message,
            "started_at": _ts(r.started_at),
            "ended_at": _ts(r.ended_at),
            "problems": list(r.problems),
            **_usage(r.usage),
            "jobs": [
                {
                    "name": j.name, "state": j.state, "attempt": j.attempt, "stage": j.stage,
                    "needs": list(j.needs), "duration": j.duration, "message": j.message,
                    "started_at": _ts(j.started_at), "ended_at": _ts(j.ended_at), **_usage(j.usage),
                    **_approvals(j.approvals),
                    **({"outdated": asdict(j.outdated)} if j.outdated else {}),  # ended, its inputs changed since
                }
                for j in r.jobs
            ],
        }
        for r in reports
    ]


def artifacts_json(lines: list[ArtifactLine]) -> list[dict[str, Any]]:
    """`clowder artifacts --json`."""
    return [asdict(a) for a in lines]


def format_usage(usage: Usage) -> str:
    return f"${usage.cost_usd:.4f} ({usage.input_tokens:,} tokens in, {usage.output_tokens:,} out)"
