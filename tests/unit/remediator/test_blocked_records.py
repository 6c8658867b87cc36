"""A step held back by capacity says in AUDIT what it waits for now: a new `blocked` record when the failed
checks change (the rate, then the rack budget), at most one a minute (without that bound a drain in a 300-node
chaos demo wrote one on every 15 s retry for six minutes), none when a retry meets the same block again."""

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


LATER = NOW + timedelta(minutes=5)


def test_the_first_block_is_recorded_and_the_same_block_again_is_not() -> None:
    assert _run().newly_blocked("act-drain", _checks("rate"), now=NOW)
    run = _run(_blocked(0, "rate"))
    assert not run.newly_blocked("act-drain", _checks("rate"), now=LATER)
    assert run.newly_blocked("act-other", _checks("rate"), now=NOW)  # another step's first block


def test_a_block_for_another_reason_is_recorded_at_most_once_a_minute() -> None:
    run = _run(_blocked(0, "rate"))
    assert run.newly_blocked("act-drain", _checks("budget.rack"), now=LATER)  # the rack budget holds it now
    assert not run.newly_blocked("act-drain", _checks("budget.rack"), now=NOW + timedelta(seconds=15))
    run = _run(_blocked(20, "budget.rack"), _blocked(0, "rate"))  # history out of time order
    assert not run.newly_blocked("act-drain", _checks("budget.rack"), now=LATER)
    assert run.newly_blocked("act-drain", _checks("budget.rack", "rate"), now=LATER)
