"""The audit stream: every decision as a `RemediationRecord`, the intent acknowledged before acting.

`record()` returns only when the AUDIT stream acknowledged the record (PubAck); if it cannot, it raises
`AuditUnavailableError` and the caller does not act: no audit, no action — `AuditRefusedError` when
AUDIT refuses the record for good (not a passing failure such as a time-out, no stream leader, a lost
connection: e.g. over AUDIT's `max_msg_size`, not permitted), which the caller keeps in the DLQ with its
reason (`reason`, and the record itself in `record`). The Nats-Msg-Id is
`<action_id>:<phase>`, so a retried or redelivered step never writes its record twice within the
duplicate window, and `history()` lets a replica see what was already done before acting (after the
window too). An `intent` or `started` that AUDIT already holds (a duplicate PubAck) raises
`AlreadyRecordedError`: an earlier attempt began the step, and only a caller whose history shows that
record may go on (runner.py `_record`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from nodeheal.runtime.consumer import TRANSIENT, describe
from nodeheal.runtime.jetstream import IncompleteReadError, publish_model, read_stream
from nodeheal.runtime.telemetry import inject_headers
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.subjects import audit_subject

log = logging.getLogger("nodeheal.remediator.audit")

_NOT_READ: tuple[type[BaseException], ...] = (IncompleteReadError, *TRANSIENT)
"""A history read that failed for now: the caller does not act, and reads it again later."""


class AuditUnavailableError(RuntimeError):
    """The audit stream did not acknowledge the record; the action must not start."""


class AuditRefusedError(AuditUnavailableError):
    """AUDIT refused the record for good: trying it again cannot store it. `reason` names the record (action id,
    node, phase) and the server's error; `record` is the record, for the DLQ."""

    def __init__(self, reason: str, record: RemediationRecord) -> None:
        super().__init__(reason)
        self.reason = reason
        self.record = record


class AlreadyRecordedError(AuditUnavailableError):
    """AUDIT already holds this `intent` or `started` (its Nats-Msg-Id `<action_id>:<phase>`, within the
    duplicate window: the PubAck says duplicate, and this attempt's record was dropped). An earlier attempt
    began the step; a caller whose history did not show that must not act (`seq`: the stored record)."""

    def __init__(self, rec: RemediationRecord, seq: int) -> None:
        super().__init__(
            f"audit record {rec.phase} of action {rec.action_id} ({rec.action}) on {rec.cluster}/{rec.node} is "
            f"already in AUDIT (sequence {seq}): an earlier attempt began this step"
        )
        self.action_id = rec.action_id
        self.phase = rec.phase
        self.seq = seq


_ACTING: frozenset[str] = frozenset({"intent", "started"})
"""The phases recorded before a side effect: a duplicate of one means the step was begun before."""


class AuditLog:
    def __init__(
        self, js: JetStreamContext, *, stream: str, prefix: str, timeout_s: float = 5.0, readers: int = 16
    ) -> None:
        """`readers`: the most history readers (ephemeral consumers) open at once."""
        self.js = js
        self.readers = asyncio.Semaphore(readers)
        self.stream = stream
        self.prefix = prefix
        self.timeout_s = timeout_s

    async def record(self, rec: RemediationRecord) -> int:
        subject = audit_subject(rec.cluster, rec.node, prefix=self.prefix)
        try:
            ack = await publish_model(
                self.js,
                subject,
                rec,
                # a dry run's record never dedups the live one of the same step (dry run on, then off)
                msg_id=f"{rec.action_id}:{rec.phase}" + (":dry" if rec.dry_run else ""),
                # traceparent of the current span: whoever reads AUDIT continues the incident's trace
                headers=inject_headers({"Nats-Expected-Stream": self.stream}),
                timeout_s=self.timeout_s,
            )
        except Exception as exc:
            if not isinstance(exc, TRANSIENT):
                reason = (
                    f"audit record {rec.phase} of action {rec.action_id} ({rec.action}) on {rec.cluster}/{rec.node} "
                    f"refused by {self.stream}: {describe(exc)}"
                )
                raise AuditRefusedError(reason, rec) from exc
            msg = f"audit stream {self.stream} did not acknowledge {rec.phase} of {rec.action_id}: {exc}"
            raise AuditUnavailableError(msg) from exc
        if ack.duplicate and rec.phase in _ACTING:
            raise AlreadyRecordedError(rec, ack.seq)
        log.info(
            "audit",
            extra={
                "node": rec.node,
                "action_id": rec.action_id,
                "action": rec.action,
                "phase": rec.phase,
                # why a step was blocked, skipped or failed, in the log an operator reads first (AUDIT has it whole)
                **({"reason": rec.reason[:300]} if rec.reason and rec.phase not in ("intent", "started") else {}),
            },
        )
        return ack.seq

    async def history(self, *, cluster: str, node: str, since: datetime) -> list[RemediationRecord]:
        """The node's audit records since `since`, oldest first (read once with an ordered consumer): all of them
        through the node's last record, or `AuditUnavailableError` — a history read in part (a fetch that timed
        out while the server recovers from a restart) would make what was done look undone, and be done again."""
        subject = audit_subject(cluster, node, prefix=self.prefix)
        try:
            last = await self.js.get_last_msg(self.stream, subject)
        except NotFoundError:
            return []
        except TRANSIENT as exc:
            raise AuditUnavailableError(f"audit history of {cluster}/{node} not read: {describe(exc)}") from exc
        out: list[RemediationRecord] = []
        async with self.readers:
            try:
                msgs = await read_stream(
                    self.js, stream=self.stream, subject=subject, start=since, through_seq=last.seq or 0
                )
            except _NOT_READ as exc:
                why = f"audit history of {cluster}/{node} not read in full: {describe(exc)}"
                raise AuditUnavailableError(why) from exc
        for msg in msgs:
            try:
                out.append(RemediationRecord.model_validate_json(msg.data))
            except ValidationError:
                log.warning("unreadable audit record skipped", extra={"node": node, "subject": subject})
        return out
