"""A step held back by capacity says in AUDIT what it waits for now: a new `blocked` record when the failed
checks change (the rate, then the rack budget), none when a retry meets the same block again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nodeheal.remediator.leases import Lease
from nodeheal.remediator.runner import _Run
from nodeheal.schemas.audit import PolicyCheck, RemediationRecord
from nodeheal.schemas.diagnosis import Diagnosis

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _checks(*failed: str) -> list[PolicyCheck]:
    names = ("budget.rack", "budget.node_pool", "rate", "storm_guard")
    return [PolicyCheck(name=n, passed=n not in failed) for n in names]


def _blocked(at_s: float, *failed: str) -> RemediationRecord:
    return RemediationRecord(
        cluster="c",
        node="n1",
        time=NOW + timedelta(seconds=at_s),
        action_id="act-drain",
        action="drain",
        phase="blocked",
        reason="over budget",
        checks=tuple(_checks(*failed)),
        actor="r0",
    )


def _run(*history: RemediationRecord) -> _Run:
    d = Diagnosis(
        id="d1",
        cluster="c",
        node="n1",
        anomaly_ids=("a",),
        category="hardware",
        cause="power_loss",
        confidence=0.9,
        identified_at=NOW,
    )
    return _Run(diagnosis=d, lease=Lease(key="k", node="n1", holder="r0", revision=1), history=list(history))


def test_the_first_block_is_recorded_and_the_same_block_again_is_not() -> None:
    assert _run().newly_blocked("act-drain", _checks("rate"))
    run = _run(_blocked(0, "rate"))
    assert not run.newly_blocked("act-drain", _checks("rate"))
    assert run.newly_blocked("act-other", _checks("rate"))  # another step's first block


def test_a_block_for_another_reason_is_recorded_against_the_latest_one() -> None:
    run = _run(_blocked(0, "rate"))
    assert run.newly_blocked("act-drain", _checks("budget.rack"))  # the rate passed, the rack budget holds it now
    run = _run(_blocked(20, "budget.rack"), _blocked(0, "rate"))  # history out of time order
    assert not run.newly_blocked("act-drain", _checks("budget.rack"))
    assert run.newly_blocked("act-drain", _checks("budget.rack", "rate"))
