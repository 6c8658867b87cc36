"""Whose is a cordoned node? The audit-trail reading behind the slot rule (docs/remediator.md, "Budget
slots"): a slot is given back only when the node is uncordoned or handed to a person."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nodeheal.remediator.leases import Lease
from nodeheal.remediator.runner import _Run
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.diagnosis import Diagnosis

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def rec(s: float, action: str, phase: str, episode: str, target: str | None = None) -> RemediationRecord:
    return RemediationRecord(
        cluster="c", node="n1", time=T0 + timedelta(seconds=s), action_id=f"{episode}-{action}-{s}",
        action=action, phase=phase, reason="r", actor="x", episode_id=episode, target=target,
    )  # type: ignore[arg-type]  # fmt: skip


def run(episode: str, *history: RemediationRecord) -> _Run:
    d = Diagnosis(
        cluster="c", node="n1", anomaly_ids=(episode,), episode_id=episode, category="software",
        cause="kubelet_down", confidence=0.9, identified_at=T0,
    )  # fmt: skip
    return _Run(diagnosis=d, lease=Lease(key="k", node="n1", holder="x", revision=1), history=list(history))


def test_a_cordon_still_out_is_held_until_an_uncordon_or_a_hand_over() -> None:
    cordon = rec(1, "cordon", "succeeded", "a")
    assert run("b", cordon).held_take() == cordon
    assert run("b", cordon).others_hold() == ("held", "a")
    assert run("b", cordon, rec(5, "uncordon", "succeeded", "a")).held_take() is None
    handed = run("b", cordon, rec(5, "escalate", "succeeded", "a"))
    assert handed.held_take() is None and handed.others_hold() == ("handed", "a")
    assert run("b", cordon, rec(5, "retire", "succeeded", "a")).held_take() is None
    # a storm's escalation, recorded on this node's trail, hands a domain over, not this node
    storm = run("b", cordon, rec(5, "escalate", "succeeded", "a", target="storm:zone:z1"))
    assert storm.held_take() == cordon and storm.others_hold() == ("held", "a")
    # cordoned again after the hand-over (a host event's drain): held again, until handed over once more
    again = rec(9, "drain", "succeeded", "cloud:e1")
    assert run("a", cordon, rec(5, "escalate", "succeeded", "a"), again).held_take() == again
    # this episode's own cordon is its own to give back, not another's
    assert run("a", cordon).others_hold() is None
