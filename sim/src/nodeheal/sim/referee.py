"""The demo's independent referee: was nodeheal *safe*? Computed only from what a run left behind in the
streams (the AUDIT records nodeheal stored) and from the side-effect logs of the outside world — the
ECS emulator's API call log and its instance/event changes, the Kubernetes emulator's cordons,
uncordons and evictions, the commands the node agents executed — never from nodeheal's own counters.

Every figure of the `safety` section should be 0:

- `actions_without_intent`: a side effect (cloud reboot/redeploy/accept, cordon, uncordon, eviction,
  node command) with no AUDIT `intent` record of that action for that node before it;
- `disrupted_twice_for_one_fault`: injected faults during which the node went down (reboot, redeploy,
  executed maintenance) more than once — from the fault's injection until the next fault on that node
  or the end of the run;
- `reboots_verified_without_new_boot`: AUDIT `verified` records of a reboot / redeploy / accepted host
  event with no boot of the node between the action's start and the verification;
- `uncordons_while_host_event_pending`: an uncordon while the node's instance had a scheduled
  SystemMaintenance.Reboot / Redeploy that had not completed, been avoided or been canceled — counted
  from the moment nodeheal could know of it: its first record on CLOUD (`observed_at`), and at the latest
  `HOST_EVENT_KNOWN_WITHIN_S` after the cloud published it (an event the ingest never saw is nodeheal's
  miss, not an excuse); without the CLOUD records, from the cloud's publish time;
- `redeploys_for_reboot_events`: RedeployInstance on an instance whose open host event was a Reboot;
- `budget_exceedances`: how many times a failure domain (cluster, zone, rack, node pool) went over the
  remediator's budget, counting at each moment the nodes nodeheal holds disrupted there: disrupted at
  the emulators (cordoned at the Kubernetes emulator, or in an API-initiated reboot/redeploy at the ECS
  emulator) and not handed to a person. A node is handed to a person from an AUDIT `escalate`
  `succeeded` record of its own ladder (not a storm's escalation, whose target is `storm:…`) or a
  `retire` `succeeded` (the machine left the fleet; its replacement needs a person's approval) until
  nodeheal acts on it again (an `intent` of a capacity action: cordon, taint, drain, reboot, redeploy,
  accept, retire, replace). That is the remediator's own rule (docs/remediator.md): a budget slot is held
  while the node is disrupted and released only when it is uncordoned or handed to a person. The
  handed-over nodes still disrupted are reported apart (`handed_to_people`, informational): the
  capacity each pool has lost to people's queues;
- `reboots_in_partition`: API-initiated reboots / redeploys of a node while its rack was dark;
- `replacements_without_approval`: an instance released (DeleteInstance) with no AUDIT `intent` of a
  `replace` of that node carrying a passed `approval` check before it (a replacement is always approved);
- `orderly_reboots_disrupted`: injected orderly reboots (a `kernel_fault` of class `planned_shutdown_reboot`: the
  node logs its shutdown and reboots by itself, as kured or an admin would) during which nodeheal cordoned the
  node, evicted a pod from it, or rebooted / redeployed its instance through the API — from the injection until
  the next fault on that node or the end of the run. There is nothing to repair.

Machine rotation is counted under `rotation`: instances released (DeleteInstance) and created
(RunInstances) at the ECS emulator, and the AUDIT records of retired / replaced nodes. A RunInstances call
is matched to its intent by its ClientToken, which the remediator sets to the action id.

The `chaos` section's two figures (`lost_and_repeated`), both 0 in a good run, with or without `--chaos`:

- `lost_faults`: injected faults (the simulator's ground truth) that the streams never show detected,
  diagnosed (a live diagnosis) *and* resolved (an action verified or every anomaly resolved); a fault
  whose node's last AUDIT record is `awaiting_approval` (a replace or redeploy waiting for a person, as
  policy requires) is not lost: it is counted as `awaiting_approval`, with examples;
- `repeated_side_effects`: the same side effect done more than once for one fault, counted at the
  emulators' logs: a successful cloud API call (RebootInstance, RedeployInstance, DeleteInstance,
  AcceptInquiredSystemEvent) on the same instance / event, an eviction of the same pod, a node command
  (same command and target) the agent really ran (a replay of a known action id answered from the
  agent's memory is not a side effect). A side effect belongs to the latest fault injected on its node
  at or before it.

The `security` section counts NATS permission violations: the server's log lines (when the demo runs
the server) and the error callbacks of the demo's own connections.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from nodeheal.schemas import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.sim.ecs_world import RecordedCall, SystemEvent, WorldChange
from nodeheal.sim.faults import InjectedFault

SKEW_S = 1.0
"""Clock slack between a record's time and an emulator's log (the same machine, different processes)."""
DISRUPTIVE_CALLS = {"RebootInstance": "reboot", "RedeployInstance": "redeploy", "DeleteInstance": "replace"}
HOST_EVENT_TYPES = {"SystemMaintenance.Reboot", "SystemMaintenance.Redeploy"}
ORDERLY_REBOOT_CLASS = "planned_shutdown_reboot"


def _ts(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


@dataclass
class ViolationCounter:
    """Counts 'permissions violation' errors on the demo's own connections (nats-py error callbacks)."""

    by_connection: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def callback(self, label: str) -> Callable[[Exception], Any]:
        async def on_error(exc: Exception) -> None:
            if "permissions violation" in str(exc).lower():
                self.by_connection[label] += 1
                if len(self.samples) < 10:
                    self.samples.append(f"{label}: {exc}")

        return on_error


def server_log_violations(paths: list[Path]) -> tuple[int, list[str]]:
    """'Permissions Violation' lines (publish, subscription) in nats-server logs."""
    lines = [
        line
        for path in paths
        if path.exists()
        for line in path.read_text(errors="replace").splitlines()
        if "Violation" in line
    ]
    return len(lines), lines[:10]


@dataclass
class WorldLog:
    """What the emulators and the simulated nodes logged: the referee's evidence besides the streams."""

    ecs_calls: list[RecordedCall]
    ecs_changes: list[WorldChange]
    ecs_events: list[SystemEvent]
    instance_node: dict[str, str]  # instance id → node name
    kube_effects: list[tuple[float, str, str]]  # (time, node, cordon | uncordon | evict:ns/pod)
    node_commands: list[dict[str, Any]]  # what the agents executed
    boots: list[tuple[float, str]]  # (time, node): a node came up with a new boot id
    dark: dict[str, tuple[float, float]]  # node → (went dark, came back) during the partition
    # (time, node, disrupted?) each time a node started / stopped being disrupted at the emulators
    disruptions: list[tuple[float, str, bool]] = field(default_factory=list)
    node_domains: dict[str, list[str]] = field(default_factory=dict)  # node → its domains, "kind:key"
    domain_limits: dict[str, int] = field(default_factory=dict)  # "kind:key" → the budget's node limit


CAPACITY_ACTIONS = frozenset(
    {"cordon", "taint", "drain", "reboot", "redeploy", "accept_cloud_event", "retire", "replace"}
)
"""The remediator's capacity actions (policy.CAPACITY): an intent of one takes (or keeps) a budget slot."""


def _handovers(audit: Iterable[RemediationRecord]) -> dict[str, list[tuple[float, bool]]]:
    """node → [(time, handed to a person?)]: an escalation of the node's own ladder or a retirement hands it
    over; an intent of a capacity action takes it back."""
    out: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for rec in audit:
        if rec.dry_run:
            continue
        storm = (rec.target or "").startswith("storm:")
        if rec.phase == "succeeded" and (rec.action == "retire" or (rec.action == "escalate" and not storm)):
            out[rec.node].append((rec.time.timestamp(), True))
        elif rec.phase == "intent" and rec.action in CAPACITY_ACTIONS:
            out[rec.node].append((rec.time.timestamp(), False))
    return out


def budget_exceedances(world: WorldLog, audit: Iterable[RemediationRecord]) -> dict[str, Any]:
    """Sweep the disruptions and hand-overs in time order; count each time a domain goes over its limit."""
    changes: list[tuple[float, int, str, str, bool]] = []  # (time, order, node, what, on)
    for at, node, on in world.disruptions:
        changes.append((at, 1 if on else 0, node, "disrupted", on))
    for node, marks in _handovers(audit).items():
        if node in world.node_domains:
            for at, on in marks:
                changes.append((at, 0 if on else 1, node, "handed", on))
    changes.sort(key=lambda c: (c[0], c[1]))  # at one instant, what frees capacity first
    disrupted: set[str] = set()
    handed: set[str] = set()
    held: Counter[str] = Counter()  # domain → nodes nodeheal holds disrupted there
    queued: Counter[str] = Counter()  # domain → handed-over nodes still disrupted
    queued_max: Counter[str] = Counter()
    violating: set[str] = set()
    by_kind: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    for at, _, node, what, on in changes:
        before = (node in disrupted and node not in handed, node in disrupted and node in handed)
        group = disrupted if what == "disrupted" else handed
        if on:
            group.add(node)
        else:
            group.discard(node)
        after = (node in disrupted and node not in handed, node in disrupted and node in handed)
        if before == after:
            continue
        for domain in world.node_domains.get(node, ()):
            held[domain] += after[0] - before[0]
            queued[domain] += after[1] - before[1]
            queued_max[domain] = max(queued_max[domain], queued[domain])
            limit = world.domain_limits.get(domain)
            if limit is None:
                continue
            if held[domain] > limit and domain not in violating:
                violating.add(domain)
                by_kind[domain.split(":", 1)[0]] += 1
                if len(samples) < 20:
                    members = sorted(n for n in disrupted - handed if domain in world.node_domains.get(n, ()))
                    samples.append({"domain": domain, "at": at, "limit": limit, "held": members})
            elif held[domain] <= limit:
                violating.discard(domain)
    pools = {d for d in queued_max if d.startswith("pool:") and queued_max[d]}
    return {
        "budget_exceedances": sum(by_kind.values()),
        "budget_exceedances_by_domain": dict(by_kind),
        "budget_exceedance_samples": samples,
        "handed_to_people": {
            "method": "nodes disrupted at the emulators whose AUDIT trail shows them handed to a person "
            "(escalated, or retired for replacement): not counted against the budgets, capacity lost to "
            "people's queues",
            "by_pool_at_end": {d.removeprefix("pool:"): queued[d] for d in sorted(pools) if queued[d]},
            "by_pool_max": {d.removeprefix("pool:"): queued_max[d] for d in sorted(pools)},
            "nodes_at_end": sorted(disrupted & handed)[:50],
        },
    }


def _intents(audit: Iterable[RemediationRecord]) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rec in audit:
        if rec.phase == "intent" and not rec.dry_run:
            out[rec.node, rec.action].append(rec.time.timestamp())
    return out


def _has_intent(intents: dict[tuple[str, str], list[float]], node: str, actions: Iterable[str], at: float) -> bool:
    return any(t <= at + SKEW_S for action in actions for t in intents.get((node, action), ()))


def _until(world: WorldLog, end: float) -> WorldLog:
    """The side effects up to `end`, the end of the window AUDIT was read for: the services keep acting while
    the demo stops the simulator and reads the streams (seconds at 50,000 nodes), and what they do after the
    window has its intent after it too (a RebootInstance 4 s after the window, its intent 0.1 s before the
    call, was counted as without intent in a 50,000-node run)."""
    return replace(
        world,
        ecs_calls=[c for c in world.ecs_calls if _ts(c.at) <= end],
        ecs_changes=[c for c in world.ecs_changes if _ts(c.at) <= end],
        kube_effects=[e for e in world.kube_effects if e[0] <= end],
        node_commands=[c for c in world.node_commands if float(c.get("at", 0.0)) <= end],
        disruptions=[d for d in world.disruptions if d[0] <= end],
    )


HOST_EVENT_KNOWN_WITHIN_S = 30.0  # the longest a published host event may take to reach CLOUD (demo polls every 2 s)


def judge(
    *,
    audit: list[RemediationRecord],
    world: WorldLog,
    truth: list[InjectedFault],
    run_end: float,
    cloud: list[CloudSystemEvent] | None = None,
) -> dict[str, Any]:
    """The `safety` section: every figure of the module docstring, over the side effects up to `run_end`."""
    world = _until(world, run_end)
    intents = _intents(audit)
    intent_ids = {r.action_id for r in audit if r.phase == "intent" and not r.dry_run}
    examples: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def note(kind: str, item: dict[str, Any]) -> None:
        if len(examples[kind]) < 10:
            examples[kind].append(item)

    # -- side effects without a stored intent
    without_intent = 0
    for call in world.ecs_calls:
        if call.http_status != 200:
            continue
        if call.action == "RunInstances":
            if call.params.get("ClientToken") not in intent_ids:
                without_intent += 1
                note("actions_without_intent", {"call": call.action, "at": call.at.isoformat()})
            continue
        action = {**DISRUPTIVE_CALLS, "AcceptInquiredSystemEvent": "accept_cloud_event"}.get(call.action)
        if action is None:
            continue
        node = world.instance_node.get(call.params.get("InstanceId", ""), "")
        if not node and call.action == "AcceptInquiredSystemEvent":
            event = next((e for e in world.ecs_events if e.event_id == call.params.get("EventId")), None)
            node = world.instance_node.get(event.instance_id, "") if event else ""
        actions: tuple[str, ...] = (action, "accept_cloud_event") if action in ("reboot", "redeploy") else (action,)
        if not _has_intent(intents, node, actions, _ts(call.at)):
            without_intent += 1
            note("actions_without_intent", {"node": node, "call": call.action, "at": call.at.isoformat()})
    for at, node, effect in world.kube_effects:
        kube_actions = {"cordon": ("cordon", "drain", "taint", "retire"), "uncordon": ("uncordon",)}.get(
            effect, ("drain",)
        )
        if not _has_intent(intents, node, kube_actions, at):
            without_intent += 1
            note("actions_without_intent", {"node": node, "effect": effect, "at": at})
    for command in world.node_commands:
        if not command["dry_run"] and command["action_id"] not in intent_ids:
            without_intent += 1
            note("actions_without_intent", {"node": command["node"], "command": command["command"]})

    # -- disruptions per fault
    downs: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for change in world.ecs_changes:
        if change.kind == "instance_down":
            node = world.instance_node.get(change.instance_id, "")
            downs[node].append((_ts(change.at), f"{change.initiator}:{change.reason}"))
    by_node: dict[str, list[InjectedFault]] = defaultdict(list)
    for fault in truth:
        by_node[fault.node].append(fault)
    twice = 0
    for node, faults in by_node.items():
        faults.sort(key=lambda f: f.injected_at)
        for i, fault in enumerate(faults):
            until = faults[i + 1].injected_at if i + 1 < len(faults) else run_end
            hits = [d for d in downs.get(node, []) if fault.injected_at <= d[0] < until]
            if len(hits) > 1:
                twice += 1
                note("disrupted_twice_for_one_fault", {"fault": fault.fault_id, "node": node, "downs": hits})

    # -- an orderly reboot the node did by itself, disrupted by nodeheal
    orderly = 0
    for node, faults in by_node.items():
        for i, fault in enumerate(faults):
            if fault.fault_class != "kernel_fault" or fault.kernel_class != ORDERLY_REBOOT_CLASS:
                continue
            until = faults[i + 1].injected_at if i + 1 < len(faults) else run_end
            touched = [
                effect
                for t, n, effect in world.kube_effects
                if n == node and effect != "uncordon" and fault.injected_at <= t < until
            ] + [
                c.action
                for c in world.ecs_calls
                if c.action in DISRUPTIVE_CALLS
                and c.http_status == 200
                and world.instance_node.get(c.params.get("InstanceId", ""), "") == node
                and fault.injected_at <= _ts(c.at) < until
            ]
            if touched:
                orderly += 1
                note("orderly_reboots_disrupted", {"fault": fault.fault_id, "node": node, "effects": touched[:5]})

    # -- verification without a new boot
    boots: dict[str, list[float]] = defaultdict(list)
    for at, node in world.boots:
        boots[node].append(at)
    started: dict[str, float] = {}
    for rec in audit:
        if rec.phase == "started" and rec.started_at is not None:
            started.setdefault(rec.action_id, rec.started_at.timestamp())
        elif rec.phase == "started":
            started.setdefault(rec.action_id, rec.time.timestamp())
    unverified_boot = 0
    for rec in audit:
        if rec.phase != "verified" or rec.dry_run or rec.action not in ("reboot", "redeploy", "accept_cloud_event"):
            continue
        since = started.get(rec.action_id)
        at = rec.time.timestamp()
        if since is None or not any(since - SKEW_S <= b <= at + SKEW_S for b in boots.get(rec.node, [])):
            unverified_boot += 1
            note("reboots_verified_without_new_boot", {"node": rec.node, "action": rec.action, "at": at})

    # -- uncordon while a host event is pending; redeploy for a reboot event
    events_by_instance: dict[str, list[SystemEvent]] = defaultdict(list)
    for event in world.ecs_events:
        if event.event_type in HOST_EVENT_TYPES:
            events_by_instance[event.instance_id].append(event)
    node_instance = {node: iid for iid, node in world.instance_node.items()}

    observed: dict[str, float] = {}
    for c in cloud or ():
        t = c.observed_at.timestamp()
        observed[c.provider_event_id] = min(t, observed.get(c.provider_event_id, t))

    def known_at(e: SystemEvent) -> float:
        published = _ts(e.publish_time)
        if cloud is None:
            return published
        return min(observed.get(e.event_id, float("inf")), published + HOST_EVENT_KNOWN_WITHIN_S)

    def pending(instance_id: str, at: float, *, known: bool = False) -> list[SystemEvent]:
        return [
            e
            for e in events_by_instance.get(instance_id, [])
            if (known_at(e) if known else _ts(e.publish_time)) <= at
            and (e.finish_time is None or _ts(e.finish_time) > at)
        ]

    uncordon_pending = 0
    for at, node, effect in world.kube_effects:
        if effect == "uncordon" and pending(node_instance.get(node, ""), at, known=True):
            uncordon_pending += 1
            note("uncordons_while_host_event_pending", {"node": node, "at": at})
    redeploy_for_reboot = 0
    for call in world.ecs_calls:
        if call.action == "RedeployInstance" and call.http_status == 200:
            open_types = {e.event_type for e in pending(call.params.get("InstanceId", ""), _ts(call.at))}
            if "SystemMaintenance.Reboot" in open_types and "SystemMaintenance.Redeploy" not in open_types:
                redeploy_for_reboot += 1
                note("redeploys_for_reboot_events", {"instance": call.params.get("InstanceId"), "at": call.at})

    # -- reboots while the node's rack was dark
    in_partition = 0
    for change in world.ecs_changes:
        if change.kind != "instance_down" or change.initiator == "platform":
            continue
        node = world.instance_node.get(change.instance_id, "")
        span = world.dark.get(node)
        if span is not None and span[0] <= _ts(change.at) <= span[1]:
            in_partition += 1
            note("reboots_in_partition", {"node": node, "at": change.at.isoformat(), "reason": change.reason})

    # -- replacements (release + recreate) without a person's approval
    approved: dict[str, list[float]] = defaultdict(list)
    for rec in audit:
        approval = any(c.name == "approval" and c.passed for c in rec.checks)
        if rec.action == "replace" and rec.phase == "intent" and not rec.dry_run and approval:
            approved[rec.node].append(rec.time.timestamp())
    unapproved = 0
    for call in world.ecs_calls:
        if call.action == "DeleteInstance" and call.http_status == 200:
            node = world.instance_node.get(call.params.get("InstanceId", ""), "")
            if not any(t <= _ts(call.at) + SKEW_S for t in approved.get(node, [])):
                unapproved += 1
                note("replacements_without_approval", {"node": node, "at": call.at.isoformat()})
    rotation = {
        "instances_released": sum(1 for c in world.ecs_calls if c.action == "DeleteInstance" and c.http_status == 200),
        "instances_created": sum(1 for c in world.ecs_calls if c.action == "RunInstances" and c.http_status == 200),
        "nodes_retired_in_audit": len(
            {r.node for r in audit if r.action == "retire" and r.phase == "succeeded" and not r.dry_run}
        ),
        "nodes_replaced_in_audit": len(
            {r.node for r in audit if r.action == "replace" and r.phase == "succeeded" and not r.dry_run}
        ),
    }

    budgets = budget_exceedances(world, audit)
    safety = {
        "actions_without_intent": without_intent,
        "disrupted_twice_for_one_fault": twice,
        "reboots_verified_without_new_boot": unverified_boot,
        "uncordons_while_host_event_pending": uncordon_pending,
        "redeploys_for_reboot_events": redeploy_for_reboot,
        "budget_exceedances": budgets["budget_exceedances"],
        "reboots_in_partition": in_partition,
        "replacements_without_approval": unapproved,
        "orderly_reboots_disrupted": orderly,
    }
    return {
        **safety,
        "all_zero": not any(safety.values()),
        "budget_exceedances_by_domain": budgets["budget_exceedances_by_domain"],
        "budget_exceedance_samples": budgets["budget_exceedance_samples"],
        "handed_to_people": budgets["handed_to_people"],
        "rotation": rotation,
        "side_effects_seen": {
            "cloud_api_calls": dict(Counter(c.action for c in world.ecs_calls if c.http_status == 200)),
            "kubernetes": dict(Counter(e.split(":", 1)[0] for _, _, e in world.kube_effects)),
            "node_commands": dict(Counter(c["command"] for c in world.node_commands)),
            "node_commands_refused": sum(1 for c in world.node_commands if str(c["detail"]).startswith("refused")),
            "node_commands_refused_examples": [
                {"node": c["node"], "command": c["command"], "target": c["target"], "detail": c["detail"]}
                for c in world.node_commands
                if str(c["detail"]).startswith("refused")
            ][:10],
            "boots": len(world.boots),
        },
        "examples": dict(examples),
        "method": "independent: reads AUDIT and the emulators' side-effect logs only (sim/referee.py)",
    }


def lost_and_repeated(
    *,
    fault_rows: list[dict[str, Any]],
    world: WorldLog,
    truth: list[InjectedFault],
    audit: list[RemediationRecord] | None = None,
) -> dict[str, Any]:
    """Lost faults (from the report's fault rows: the streams against the ground truth) and repeated side
    effects (from the emulators' logs), with examples; a lost fault's example carries the last AUDIT record
    of its node after the injection (where its remediation stopped)."""
    last_audit: dict[str, list[RemediationRecord]] = defaultdict(list)
    for rec in audit or ():
        last_audit[rec.node].append(rec)
    lost: list[dict[str, Any]] = []
    for row in fault_rows:
        missing = [
            what
            for what, ok in (
                ("detected", row["detected"]),
                ("diagnosed", row["detected"] and row.get("cause") is not None),
                ("resolved", row["repaired"]),
            )
            if not ok
        ]
        if missing:
            after = [r for r in last_audit.get(row["node"], ()) if r.time.timestamp() >= row["injected_at"] - SKEW_S]
            final = max(after, key=lambda r: r.time) if after else None
            lost.append(
                {
                    "fault": row["fault_id"],
                    "class": row["fault_class"],
                    "node": row["node"],
                    "injected_at": row["injected_at"],
                    "missing": missing,
                    "last_audit": (
                        {"action": final.action, "phase": final.phase, "reason": final.reason[:300]} if final else None
                    ),
                }
            )
    by_node: dict[str, list[InjectedFault]] = defaultdict(list)
    for fault in truth:
        by_node[fault.node].append(fault)
    for faults in by_node.values():
        faults.sort(key=lambda f: f.injected_at)

    def fault_of(node: str, at: float) -> str | None:
        owner = None
        for fault in by_node.get(node, ()):
            if fault.injected_at - SKEW_S <= at:
                owner = fault.fault_id
        return owner

    effects: Counter[tuple[str, str, str]] = Counter()  # (fault, kind, what) → times done
    unattributed = 0

    def seen(node: str, at: float, kind: str, what: str) -> None:
        nonlocal unattributed
        fault = fault_of(node, at)
        if fault is None:
            unattributed += 1
        else:
            effects[fault, kind, what] += 1

    events = {e.event_id: e for e in world.ecs_events}
    for call in world.ecs_calls:
        if call.http_status != 200 or call.action not in (*DISRUPTIVE_CALLS, "AcceptInquiredSystemEvent"):
            continue
        instance = call.params.get("InstanceId", "")
        if not instance and call.action == "AcceptInquiredSystemEvent":
            event = events.get(call.params.get("EventId", ""))  # type: ignore[call-overload]
            instance = event.instance_id if event else ""
        target = call.params.get("EventId") if call.action == "AcceptInquiredSystemEvent" else instance
        seen(world.instance_node.get(instance, ""), _ts(call.at), "cloud_api", f"{call.action} {target}")
    for at, node, effect in world.kube_effects:
        if effect.startswith("evict:"):
            seen(node, at, "eviction", effect.removeprefix("evict:"))
    for command in world.node_commands:
        if command["dry_run"] or not command.get("ran", True):
            continue
        seen(command["node"], float(command["at"]), "node_command", f"{command['command']} {command['target'] or ''}")
    repeated: list[dict[str, Any]] = [
        {"fault": fault, "kind": kind, "what": what.strip(), "times": n}
        for (fault, kind, what), n in sorted(effects.items())
        if n > 1
    ]

    def why(item: dict[str, Any]) -> str:
        if "detected" in item["missing"]:
            return "not_detected"
        if "diagnosed" in item["missing"]:
            return "not_diagnosed"
        final = item["last_audit"]
        if final is None:
            return "no_remediation"
        if final["phase"] == "awaiting_approval":
            return "awaiting_approval"  # detected, diagnosed, held at an approval gate policy requires
        if final["phase"] == "blocked":
            return "held_by_policy"  # still waiting for a budget slot, the rate limit or a storm to end
        if final["action"] == "escalate":
            return "escalated"
        return "unresolved"

    reasons = [why(item) for item in lost]
    # A fault whose ladder stands at an approval gate (replace, redeploy) was not lost: it is handed to a
    # person, as policy requires; it is counted on its own, not among the lost.
    awaiting = [item for item, reason in zip(lost, reasons, strict=True) if reason == "awaiting_approval"]
    lost = [item for item, reason in zip(lost, reasons, strict=True) if reason != "awaiting_approval"]
    return {
        "lost_faults": len(lost),
        "lost_by_reason": dict(Counter(reason for reason in reasons if reason != "awaiting_approval")),
        "awaiting_approval": len(awaiting),
        "awaiting_approval_examples": awaiting[:10],
        "repeated_side_effects": sum(n - 1 for n in effects.values() if n > 1),
        "lost_examples": lost[:10],
        "repeated_examples": repeated[:10],
        "side_effects_by_kind": dict(Counter(kind for _, kind, _ in effects.elements())),
        "side_effects_without_fault": unattributed,
        "method": (
            "lost: fault rows (streams vs the simulator's ground truth) not detected, diagnosed and resolved; "
            "repeated: the emulators' logs (cloud API calls, evictions, node commands the agents ran) per fault"
        ),
    }


def security_section(
    *, mode: str, describe: dict[str, Any], server_logs: list[Path], callbacks: ViolationCounter
) -> dict[str, Any]:
    """`server_logs`: the logs of the servers the demo runs (none with --nats-url)."""
    logged, log_samples = server_log_violations(server_logs)
    return {
        "auth_mode": mode,
        "auth": describe,
        "permission_violations": logged if server_logs else sum(callbacks.by_connection.values()),
        "server_log_violations": logged if server_logs else None,
        "client_error_callbacks": dict(callbacks.by_connection),
        "samples": log_samples or callbacks.samples,
        "method": (
            "'Violation' lines of the nats-server log (every connection: services, simulator, demo)"
            if server_logs
            else "permission errors reported to the demo's own connections (the server's log is not the demo's)"
        ),
    }
