"""From a diagnosis, the policy and the node's cloud events to a plan: the ordered ladder of steps.

Pure: no NATS, no Kubernetes. The diagnoser recommends a ladder; the planner keeps its order, gives
every step a deterministic action id, marks which steps need approval, and rewrites the ladder when the
cloud already has plans for the machine:

- a scheduled Redeploy / Stop / Terminate: cordon and drain first, then let the cloud do it (accept it
  early when the provider allows, else wait for it) instead of a reboot or redeploy of our own;
- a host Reboot minutes away (`host_reboot_guard_s`): no reboot of our own; accept the event early
  when possible, else wait for it, and verify after it executed;
- an event in progress: wait for it, then verify.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from nodeheal.remediator.policy import CAPACITY, DISRUPTIVE, FIXES
from nodeheal.remediator.settings import PolicySettings
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import ActionName, Diagnosis, RecommendedAction
from nodeheal.schemas.ids import ActionId, deterministic_id

_HOST_DISRUPTING = frozenset({"redeploy", "stop", "terminate"})


@dataclass(frozen=True, slots=True)
class Step:
    rung: int
    action: ActionName
    action_id: ActionId
    reason: str
    target: str | None = None
    timeout_s: float | None = None
    needs_approval: bool = False
    cloud_event: CloudSystemEvent | None = None

    @property
    def disruptive(self) -> bool:
        return self.action in DISRUPTIVE

    @property
    def capacity(self) -> bool:
        return self.action in CAPACITY

    @property
    def is_fix(self) -> bool:
        return self.action in FIXES


@dataclass(frozen=True, slots=True)
class Plan:
    diagnosis_id: str
    node: str
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()


def action_id(*, diagnosis_id: str, rung: int, action: str, target: str | None) -> ActionId:
    """Same diagnosis, rung and action → same id: a redelivered diagnosis never acts twice."""
    return ActionId(deterministic_id(diagnosis_id, rung, action, target or "", prefix="act-"))


def pending_cloud_events(events: Sequence[CloudSystemEvent]) -> list[CloudSystemEvent]:
    """The latest state of each provider event, keeping those not finished yet."""
    latest: dict[tuple[str, str], CloudSystemEvent] = {}
    for ev in sorted(events, key=lambda e: e.observed_at):
        key = (ev.cloud, ev.provider_event_id)
        if key in latest and latest[key].is_terminal:
            continue  # a terminal phase is never overwritten by a late non-terminal one
        latest[key] = ev
    return [e for e in latest.values() if not e.is_terminal]


def _starts_at(ev: CloudSystemEvent) -> datetime | None:
    return ev.not_before or ev.started_at or ev.deadline


def plan(
    *,
    diagnosis: Diagnosis,
    cloud_events: Sequence[CloudSystemEvent],
    policy: PolicySettings,
    now: datetime,
) -> Plan:
    ladder: list[RecommendedAction] = [r for r in diagnosis.recommended if r.action != "none"]
    notes: list[str] = []
    pending = pending_cloud_events(cloud_events)
    host_disrupting = [e for e in pending if e.action in _HOST_DISRUPTING]
    host_reboots = [
        e
        for e in pending
        if e.action == "reboot"
        and (
            e.phase == "in_progress"
            or (s := _starts_at(e)) is None
            or s - now <= timedelta(seconds=policy.host_reboot_guard_s)
        )
    ]
    cloud_step: tuple[ActionName, CloudSystemEvent] | None = None
    candidates = host_disrupting or host_reboots
    event = candidates[0] if candidates else None
    if event is not None:
        can_ack = bool(event.ack) and event.phase in ("scheduled", "pending_approval")
        cloud_action: ActionName = "accept_cloud_event" if can_ack else "wait_for_cloud_event"
        cloud_step = (cloud_action, event)
        cloud_rec = RecommendedAction(action=cloud_action, reason=f"cloud {event.action} {event.provider_event_id}")
        rewritten: list[RecommendedAction] = []
        for rec in ladder:
            if rec.action in ("reboot", "redeploy"):
                if cloud_rec not in rewritten:
                    rewritten.append(cloud_rec)  # the cloud event takes the place of our own reboot
                continue
            if rec.action == "escalate" and cloud_rec not in rewritten:
                rewritten.append(cloud_rec)
            rewritten.append(rec)
        if cloud_rec not in rewritten:
            rewritten.append(cloud_rec)
        ladder = rewritten
        if event in host_disrupting:
            notes.append(f"cloud {event.action} {event.provider_event_id} scheduled: drain ahead, then let it run")
            present = {r.action for r in ladder}
            prep: list[ActionName] = [a for a in ("cordon", "drain") if a not in present]
            ladder = [RecommendedAction(action=a, reason=f"ahead of cloud {event.action}") for a in prep] + ladder
        else:
            notes.append(f"host reboot {event.provider_event_id} is near: no reboot of our own")
    if not ladder or ladder[-1].action != "escalate":
        ladder.append(RecommendedAction(action="escalate", reason="the ladder is exhausted"))
    steps: list[Step] = []
    for rung, rec in enumerate(ladder):
        cloud_event = cloud_step[1] if cloud_step is not None and rec.action == cloud_step[0] else None
        target = cloud_event.provider_event_id if cloud_event is not None else rec.target
        steps.append(
            Step(
                rung=rung,
                action=rec.action,
                action_id=action_id(diagnosis_id=diagnosis.id, rung=rung, action=rec.action, target=target),
                reason=rec.reason,
                target=target,
                timeout_s=rec.timeout_s,
                needs_approval=rec.action in policy.approval_required,
                cloud_event=cloud_event,
            )
        )
    return Plan(diagnosis_id=diagnosis.id, node=diagnosis.node, steps=tuple(steps), notes=tuple(notes))
