"""`nodeheal batch` reads each node's state from its episode's AUDIT records alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from nodeheal.cli.batch import NodeState, batch_started, new_batch_id, node_status, wait_for_change
from nodeheal.schemas.audit import RemediationRecord

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _rec(action: str, phase: str, i: int, reason: str = "r") -> RemediationRecord:
    return RemediationRecord(
        cluster="c", node="n1", time=T0 + timedelta(seconds=i), action_id=f"act-{action}", action=action,
        phase=phase, reason=reason, actor="r1",
    )  # type: ignore[arg-type]  # fmt: skip


def _status(action: str, *records: tuple[str, str] | tuple[str, str, str]) -> str:
    recs = [_rec(r[0], r[1], i, *(r[2:] or ("r",))) for i, r in enumerate(records)]
    return node_status(action, NodeState("n1", recs, submitted=True))[0]


def test_a_reboot_is_done_only_once_verified_and_given_back() -> None:
    steps = [("cordon", "succeeded"), ("drain", "succeeded"), ("reboot", "succeeded")]
    assert _status("reboot", *steps) == "running"
    assert _status("reboot", *steps, ("reboot", "verified")) == "running"
    assert _status("reboot", *steps, ("reboot", "verified"), ("uncordon", "succeeded")) == "done"
    assert _status("cordon", ("cordon", "succeeded")) == "done"


def test_failed_waiting_blocked_and_skipped() -> None:
    escalated = ("escalate", "succeeded", "escalated to a person: drain timed out")
    assert _status("drain", ("cordon", "succeeded"), ("drain", "failed"), escalated) == "failed"
    assert _status("retire", ("cordon", "awaiting_approval")) == "waiting_approval"
    assert _status("reboot", ("cordon", "blocked")) == "blocked"
    assert _status("reboot", ("none", "skipped", "diagnosis refused: stale")) == "skipped"
    # a storm escalation recorded under this episode is the storm's page, not this node's failure
    assert _status("cordon", ("escalate", "succeeded", "storm in zone z1: 4 of 10"), ("cordon", "blocked")) == "blocked"
    assert node_status("cordon", NodeState("n1"))[0] == "pending"


def test_batch_ids_carry_their_start_time() -> None:
    before = datetime.now(tz=UTC) - timedelta(seconds=1)
    assert before <= batch_started(new_batch_id()) <= datetime.now(tz=UTC)
    with pytest.raises(ValueError, match="not a batch id"):
        batch_started("act-123")


def test_a_request_refused_after_waiting_for_a_budget_is_skipped() -> None:
    refused = ("none", "skipped", "diagnosis refused: identified 301s ago, bound 300s")
    assert _status("reboot", ("cordon", "blocked"), refused) == "skipped"
    # a reboot whose uncordon waits for a due host event is still done
    kept = ("uncordon", "skipped", "kept cordoned: cloud reboot e-1 is due")
    assert _status("reboot", ("reboot", "succeeded"), ("reboot", "verified"), kept) == "done"


def test_a_replace_waits_for_each_approval_and_is_done_when_replaced() -> None:
    steps = [("cordon", "succeeded"), ("drain", "succeeded"), ("retire", "succeeded")]
    assert _status("replace", *steps) == "running"  # retired is not the end of a replace
    assert _status("replace", *steps, ("replace", "awaiting_approval")) == "waiting_approval"
    assert _status("replace", *steps, ("replace", "awaiting_approval"), ("replace", "succeeded")) == "done"


async def test_a_ctrl_c_that_lands_as_a_record_arrives_stops_the_batch() -> None:
    """The batch's loop waits for its AUDIT follower's next record. A Ctrl-C (the task's cancellation) in
    the loop turn in which that record is announced was dropped by Python 3.11's `wait_for` (CPython
    gh-86296): the loop went on submitting nodes."""
    changed = asyncio.Event()
    waiting = asyncio.create_task(wait_for_change(changed, timeout_s=30.0))
    await asyncio.sleep(0)  # it waits
    changed.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
