"""`RemediationRecord`: the audit stream. Every decision of the remediator lands here, the intent
before the action starts."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from nodeheal.schemas.base import Frozen, Message, UtcDatetime
from nodeheal.schemas.diagnosis import ActionName

AUDIT_SCHEMA: Final = "nodeheal.audit/v1"

RemediationPhase = Literal[
    "intent", "started", "succeeded", "failed", "skipped", "blocked", "awaiting_approval", "verified"
]


class PolicyCheck(Frozen):
    name: str = Field(description="e.g. pause, dry_run, budget.zone, storm_guard, lease, stale_diagnosis")
    passed: bool
    detail: str = ""


class RemediationRecord(Message):
    schema_: Literal["nodeheal.audit/v1"] = Field(default=AUDIT_SCHEMA, alias="schema")
    action_id: str = Field(description="deterministic from (diagnosis, rung, action)")
    action: ActionName
    target: str | None = None
    phase: RemediationPhase
    reason: str
    checks: tuple[PolicyCheck, ...] = ()
    dry_run: bool = False
    actor: str = Field(description="remediator replica identity")
    lease_revision: int | None = None
    diagnosis_id: str | None = None
    cause: str | None = None
    rung: int | None = Field(default=None, ge=0, description="position on the diagnosis's ladder")
    trace_id: str | None = None
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    error: str | None = None
    episode_id: str | None = Field(
        default=None, description="the fault episode (Diagnosis.episode) or `cloud:<cloud>:<event id>`"
    )
    boot_id: str | None = Field(
        default=None,
        description="the node's boot id the record relies on: before the action (intent), after it (verified)",
    )
