"""From a diagnosis, the policy and the node's cloud events to a plan: the ordered ladder of steps.

Pure: no NATS, no Kubernetes. The diagnoser recommends a ladder; the planner keeps its order, gives
every step an action id that is deterministic per *episode* (`act-<sha256(episode, action, target)>`:
an updated diagnosis of the same fault maps its steps onto the same ids, so a cordon, drain or reboot
already done for the episode is continued, never repeated), marks which steps need approval, and hands
the node to the cloud when the cloud already has plans for the machine:

- a pending host Reboot / Redeploy / Stop / Terminate that starts within `host_reboot_guard_s` (or is in
  progress): our own `reboot` / `redeploy` becomes `wait_for_cloud_event` (the hand-over to the
  maintenance loop, `maintenance.py`, which drains within `cloud_drain_lead_s` of `not_before`, accepts
  early with the matching API, waits for CLOUD to show the event finished, verifies and uncordons);
- steps the diagnoser aimed at a pending host event (cordon / drain / accept / wait with the event id as
  target) collapse into that one hand-over: the timing is the maintenance loop's.

`maintenance_steps` is the maintenance loop's own plan for one host event (episode `cloud:<cloud>:<id>`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nodeheal.remediator.policy import CAPACITY, DISRUPTIVE, FIXES, ROTATION
from nodeheal.remediator.settings import PolicySettings
from nodeheal.schemas.causes import OPERATOR_REQUEST
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import ActionName, Diagnosis, RecommendedAction
from nodeheal.schemas.ids import ActionId, deterministic_id

HOST_ACTIONS = frozenset({"reboot", "redeploy", "stop", "terminate"})
_AIMED = frozenset({"cordon", "drain", "accept_cloud_event", "wait_for_cloud_event"})


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


def action_id(*, diagnosis_id: str, rung: int = 0, action: str, target: str | None) -> ActionId:
    """Same episode, action and target → same id: a redelivered or updated diagnosis never acts twice.

    `diagnosis_id` is the key the id is made for: the episode (`Diagnosis.episode`) for ladder steps; the
    rung is not part of it, so an amended ladder with the steps in other places continues the same ones."""
    del rung
    return ActionId(deterministic_id(diagnosis_id, action, target or "", prefix="act-"))


def cloud_episode(event: CloudSystemEvent) -> str:
    return f"cloud:{event.cloud}:{event.provider_event_id}"


def latest_cloud_events(events: Sequence[CloudSystemEvent]) -> list[CloudSystemEvent]:
    """The latest state of each provider event (a terminal phase is never overwritten by a late non-terminal one)."""
    latest: dict[tuple[str, str], CloudSystemEvent] = {}
    for ev in sorted(events, key=lambda e: e.observed_at):
        key = (ev.cloud, ev.provider_event_id)
        if key in latest and latest[key].is_terminal:
            continue
        latest[key] = ev
    return list(latest.values())


def pending_cloud_events(events: Sequence[CloudSystemEvent]) -> list[CloudSystemEvent]:
    """The latest state of each provider event, keeping those not finished yet."""
    return [e for e in latest_cloud_events(events) if not e.is_terminal]


def _starts_at(ev: CloudSystemEvent) -> datetime | None:
    return ev.not_before or ev.started_at or ev.deadline


def host_events(events: Sequence[CloudSystemEvent]) -> list[CloudSystemEvent]:
    """Pending events that take the machine away (reboot, redeploy, stop, terminate), soonest first."""
    pending = [e for e in pending_cloud_events(events) if e.action in HOST_ACTIONS]
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(pending, key=lambda e: (e.phase != "in_progress", _starts_at(e) or far))


def within(ev: CloudSystemEvent, *, seconds: float, now: datetime) -> bool:
    """Is the event in progress, without a start time, or starting within `seconds`?"""
    start = _starts_at(ev)
    return ev.phase == "in_progress" or start is None or start - now <= timedelta(seconds=seconds)


def plan(
    *,
    diagnosis: Diagnosis,
    cloud_events: Sequence[CloudSystemEvent],
    policy: PolicySettings,
    now: datetime,
    aliases: Mapping[str, str] | None = None,
) -> Plan:
    """`aliases`: a host event's other ids (a second channel's report of it) → the id it is kept under
    (`FleetView.event_aliases`), so a step the diagnoser aimed at either report is aimed at the one event."""
    ladder: list[RecommendedAction] = [
        r
        if r.target is None or not aliases or r.target not in aliases
        else r.model_copy(update={"target": aliases[r.target]})
        for r in diagnosis.recommended
        if r.action != "none"
    ]
    notes: list[str] = []
    pending = host_events(cloud_events)
    pending_ids = {e.provider_event_id for e in pending}
    near = [e for e in pending if within(e, seconds=policy.host_reboot_guard_s, now=now)]
    handover: CloudSystemEvent | None = None
    rewritten: list[RecommendedAction] = []
    for rec in ladder:
        aimed = rec.target in pending_ids and rec.action in (
            "cordon",
            "drain",
            "accept_cloud_event",
            "wait_for_cloud_event",
        )
        ours = rec.action in ("reboot", "redeploy") and near
        if aimed or ours:
            event = next(e for e in pending if e.provider_event_id == rec.target) if aimed else near[0]
            if handover is None:
                handover = event
                rewritten.append(
                    RecommendedAction(
                        action="wait_for_cloud_event",
                        target=event.provider_event_id,
                        reason=f"cloud {event.action} {event.provider_event_id} is scheduled: the maintenance loop "
                        "drains ahead of it, lets it run and verifies afterwards",
                    )
                )
            continue
        rewritten.append(rec)
    ladder = rewritten
    if handover is not None:
        notes.append(f"handed to cloud {handover.action} {handover.provider_event_id}")
        # the hand-over ends the ladder: what comes after it is the cloud's (and then verification's)
        cut = next(i for i, r in enumerate(ladder) if r.action == "wait_for_cloud_event")
        ladder = ladder[: cut + 1]
    elif diagnosis.cause == OPERATOR_REQUEST or any(r.action in ROTATION for r in ladder):
        pass  # an operator's request, a rotation: the runner escalates only when a step did not succeed
    elif not ladder or ladder[-1].action != "escalate":
        ladder.append(RecommendedAction(action="escalate", reason="the ladder is exhausted"))
    key = diagnosis.episode
    steps: list[Step] = []
    for rung, rec in enumerate(ladder):
        cloud_event = handover if handover is not None and rec.action == "wait_for_cloud_event" else None
        target = cloud_event.provider_event_id if cloud_event is not None else rec.target
        steps.append(
            Step(
                rung=rung,
                action=rec.action,
                action_id=action_id(diagnosis_id=key, action=rec.action, target=target),
                reason=rec.reason,
                target=target,
                timeout_s=rec.timeout_s,
                needs_approval=needs_approval(rec.action, policy),
                cloud_event=cloud_event,
            )
        )
    return Plan(diagnosis_id=diagnosis.id, node=diagnosis.node, steps=tuple(steps), notes=tuple(notes))


def handover_step(diagnosis: Diagnosis, event: CloudSystemEvent, *, rung: int, timeout_s: float | None) -> Step:
    """The `wait_for_cloud_event` step `plan` would have put in place of a reboot / redeploy, had `event` been
    known then (the same action id)."""
    return Step(
        rung=rung,
        action="wait_for_cloud_event",
        action_id=action_id(
            diagnosis_id=diagnosis.episode, action="wait_for_cloud_event", target=event.provider_event_id
        ),
        reason=f"cloud {event.action} {event.provider_event_id} was announced after the plan: the maintenance loop "
        "drains ahead of it, lets it run and verifies afterwards",
        target=event.provider_event_id,
        timeout_s=timeout_s,
        cloud_event=event,
    )


def needs_approval(action: str, policy: PolicySettings) -> bool:
    """`replace` releases the machine for good: a person approves it, whatever the approval list says."""
    return action == "replace" or action in policy.approval_required


def rotation_steps(diagnosis: Diagnosis, *, policy: PolicySettings, why: str, rung: int) -> tuple[Step, ...]:
    """Machine rotation of a node that exhausted its repair budget: cordon, drain, retire, replace (approval).
    The ids are the episode's own (target none), so the steps a ladder already ran are continued, not repeated."""
    reasons: tuple[tuple[ActionName, str], ...] = (
        ("cordon", "rotation: keep new pods off"),
        ("drain", "rotation: move the workloads away"),
        ("retire", f"rotation: {why}"),
        ("replace", f"rotation: release and recreate the machine from its node pool's launch template ({why})"),
    )
    return tuple(
        Step(
            rung=rung + i,
            action=action,
            action_id=action_id(diagnosis_id=diagnosis.episode, action=action, target=None),
            reason=reason,
            needs_approval=needs_approval(action, policy),
        )
        for i, (action, reason) in enumerate(reasons)
    )


ACCEPT_METHODS: dict[str, frozenset[str]] = {
    # the API that runs *this* event early: never RedeployInstance for a Reboot event. AWS (EC2's own
    # calls need boto3) and GCE (performMaintenance needs the Compute client) have none here: no SDK of
    # the lock file serves them, so their host events are drained within the lead and waited for
    "reboot": frozenset({"alibaba.RebootInstance", "alibaba.AcceptInquiredSystemEvent", "azure.StartRequests"}),
    "redeploy": frozenset({"alibaba.RedeployInstance", "alibaba.AcceptInquiredSystemEvent", "azure.StartRequests"}),
}


def shared_with(event: CloudSystemEvent) -> list[str]:
    """The machines one provider event covers. An Azure scheduled event lists every VM it will act on in
    `Resources`, and `StartRequests` for its `EventId` starts it on all of them: accepting it early once
    *this* node is drained would reboot the others undrained. Such an event is never accepted early; it
    runs at `not_before`, by which time every listed node's own maintenance has drained it."""
    raw = event.extended.get("Resources")
    if not isinstance(raw, list):
        return []
    return sorted({r.strip() for r in raw if isinstance(r, str) and r.strip()})


def loses_local_data(event: CloudSystemEvent) -> bool:
    """Running `event` early wipes local data: a redeploy, or any event the normalizer marks `local_data_loss`
    (Alibaba `RebootAndReInitErrorDisk` re-initializes a local disk). A person approves its early accept,
    whatever the approval list says; unapproved, it runs at its own time."""
    return event.action == "redeploy" or event.local_data_loss


def maintenance_steps(event: CloudSystemEvent, *, policy: PolicySettings, postponed: int = 0) -> tuple[Step, ...]:
    """What the maintenance loop does for one host event: cordon, drain, and (when allowed) accept it early.

    `postponed`: how often the cloud moved the event beyond the drain lead after it was prepared for (the node
    uncordoned meanwhile, `Remediator.postpone_host_event`): each time starts a round with its own action ids,
    so the node is cordoned and drained again when the event comes due again (0: the ids of before)."""
    key = cloud_episode(event)
    ref = event.provider_event_id
    ident = ref if postponed == 0 else f"{ref}@{postponed}"
    steps = [
        Step(
            rung=0,
            action="cordon",
            action_id=action_id(diagnosis_id=key, action="cordon", target=ident),
            reason=f"cloud {event.action} {ref} starts at {event.not_before}: keep new pods off",
            target=ref,
            cloud_event=event,
        ),
        Step(
            rung=1,
            action="drain",
            action_id=action_id(diagnosis_id=key, action="drain", target=ident),
            reason=f"move workloads away before cloud {event.action} {ref}",
            target=ref,
            cloud_event=event,
        ),
    ]
    # only the event's own cloud's API (an offer naming another cloud's call is never taken)
    methods = {a.method for a in event.ack if a.method.partition(".")[0] == event.cloud} & ACCEPT_METHODS.get(
        event.action, frozenset()
    )
    if (
        policy.accept_cloud_events_early
        and methods
        and event.phase in ("scheduled", "pending_approval")
        and len(shared_with(event)) <= 1
    ):
        steps.append(
            Step(
                rung=2,
                action="accept_cloud_event",
                action_id=action_id(diagnosis_id=key, action="accept_cloud_event", target=ident),
                reason=f"drained: run cloud {event.action} {ref} now rather than at {event.not_before}",
                target=ref,
                needs_approval=loses_local_data(event) or "accept_cloud_event" in policy.approval_required,
                cloud_event=event,
            )
        )
    return tuple(steps)
