"""The remediator's log line of an AUDIT record says why a step was blocked, skipped or failed (the operator
reads the service log first: a drain `blocked` without its gate sent them to AUDIT for every line). A record
before the side effect (intent, started) carries no reason worth a log field. Real nats-server with the deployed
per-role authorization, the records written under the remediator role's credential."""

from __future__ import annotations

import logging

import pytest

from nodeheal.remediator.audit import AuditLog
from nodeheal.schemas.audit import RemediationPhase, RemediationRecord
from tests.integration.remediator.harness import Deployed

pytestmark = pytest.mark.nats


async def test_a_blocked_step_logs_its_reason(deployed: Deployed, caplog: pytest.LogCaptureFixture) -> None:
    """As deployed: the records written under the remediator role's credential (the only role that writes AUDIT)."""
    why = "over budget: rate: 10 disruptive starts in the last minute, limit 10"

    def rec(action_id: str, phase: RemediationPhase, reason: str) -> RemediationRecord:
        return RemediationRecord(
            cluster="c1", node="n-log", action_id=action_id, action="drain", phase=phase, reason=reason, actor="t"
        )

    nats = deployed.remediator
    async with deployed.remediator_connection() as nc:
        audit = AuditLog(nc.jetstream(), stream=f"{nats.stream_prefix}AUDIT", prefix=nats.prefix)
        with caplog.at_level(logging.INFO, logger="nodeheal.remediator.audit"):
            await audit.record(rec("act-log-1", "blocked", why))
            await audit.record(rec("act-log-2", "intent", "drain for the diagnosis"))
    lines = {r.action_id: r for r in caplog.records if r.getMessage() == "audit"}  # type: ignore[attr-defined]
    assert getattr(lines["act-log-1"], "reason", None) == why
    assert not hasattr(lines["act-log-2"], "reason")
    assert deployed.violations() == []
