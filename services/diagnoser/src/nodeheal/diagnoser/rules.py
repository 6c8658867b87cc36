"""The cause decision: from a node's context and its peers to (cause, category, confidence, evidence,
ladder). Pure and deterministic: the same context and `now` give the same decision — the service,
replay and the simulator all call `decide`. The decision table is documented in docs/diagnoser.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nodeheal.diagnoser.kb.matcher import IO_ERROR_CLASSES, Finding, same_disk
from nodeheal.diagnoser.state import CrashFact, FleetState, KernelEvidence, NodeContext
from nodeheal.schemas.anomaly import Anomaly, Evidence
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.causes import category_of
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.commands import CLEAN_DISK_DEFAULT, FD_HOLDER_TARGET
from nodeheal.schemas.diagnosis import CrashSignature, RecommendedAction
from nodeheal.schemas.kernel import LOOKBACK_CLASSES, Category

SILENT_KINDS = frozenset({"node_down", "node_hang"})
RESTART_CAUSES: frozenset[str] = frozenset({"kubelet_down", "container_runtime_down", "ops_agent_down", "service_down"})
CLOUD_EXPLAINS = frozenset(
    {"node_down", "node_hang", "node_not_ready", "unexpected_reboot", "cloud_maintenance", "flapping", "service_down"}
)
FATAL_HARDWARE = frozenset({"mce_fatal_panic"})
# warnings: they name a cause only when nothing else explains the anomalies
WEAK_CLASSES = frozenset(
    {"oom_killer", "page_allocation_failure", "mce_hardware_error", "edac_memory_ce", "ghes_cper_hardware_error"}
)
CRASH_CLASSES = frozenset(
    {
        "kernel_panic",
        "kernel_bug",
        "kernel_oops_null_deref",
        "kernel_oops_gpf",
        "kernel_oops_divide_error",
        "hard_lockup",
        "soft_lockup",
        "hung_task",
        "rcu_stall",
        "vmcore_crash_sys_summary",
        "mce_fatal_panic",
    }
)
SERVICE_CAUSES = {
    "kubelet": "kubelet_down",
    "containerd": "container_runtime_down",
    "docker": "container_runtime_down",
    "crio": "container_runtime_down",
    "cri-o": "container_runtime_down",
}
CLOUD_ACTION_CAUSES = {
    "reboot": "host_maintenance_reboot",
    "redeploy": "host_maintenance_redeploy",
    "stop": "host_maintenance_stop",
    "terminate": "host_maintenance_stop",
    "live_migrate": "host_live_migration",
}


def fatal_hardware(finding: Finding) -> bool:
    """A hardware error the machine did not survive: fatal MCE, GHES `event severity: fatal`, EDAC `UE`."""
    return (
        finding.cls in FATAL_HARDWARE
        or (finding.cls == "ghes_cper_hardware_error" and finding.fields.get("severity") == "fatal")
        or (finding.cls == "edac_memory_ce" and finding.fields.get("severity") == "UE")
    )


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    kernel_lookback: timedelta = timedelta(minutes=30)
    io_lookback: timedelta = timedelta(minutes=30)
    crash_window: timedelta = timedelta(days=7)
    crash_separation: timedelta = timedelta(minutes=5)
    """Reports closer than this are one crash: a hard lockup is followed by the other CPUs' soft
    lockups, a panic by its oops; only separate crashes with different signatures point at hardware."""
    cloud_recent: timedelta = timedelta(minutes=30)
    cloud_imminent: timedelta = timedelta(minutes=30)
    burst_window: timedelta = timedelta(seconds=120)
    rack_min_down: int = 3
    rack_min_fraction: float = 0.5
    zone_min_down: int = 6
    zone_min_fraction: float = 0.3
    kernel_fleet_hosts: int = 3
    repeat_window: timedelta = timedelta(hours=24)
    repeat_limit: int = 3
    agent_services: tuple[str, ...] = ("agent", "ops-agent", "ops_agent")
    node_agent_services: tuple[str, ...] = ("nodeheal-agent",)
    """our own agent (the detector's `service_down` subject when the agent is silent on a node the
    prober reaches and whose kubelet answers): `agent_down`, fixed by restarting the agent's pod"""
    planned_grace: timedelta = timedelta(minutes=15)
    """an orderly shutdown or reboot the node logged (`planned_shutdown_reboot`: kured, an admin's `reboot`, an
    update manager) explains its downtime, its services stopping and its coming back this long after the last such
    line (a bare-metal machine's firmware and boot take minutes); what still fires after that is judged as usual"""


@dataclass
class Decision:
    cause: str
    category: Category
    confidence: float
    evidence: list[Evidence] = field(default_factory=list)
    kernel_classes: tuple[str, ...] = ()
    crash_signature: CrashSignature | None = None
    recommended: tuple[RecommendedAction, ...] = ()
    fault_onset: datetime | None = None
    hold_until: datetime | None = None
    """no verdict before this time (an orderly shutdown's downtime, `planned_grace`): the node is looked at again
    then, and judged on what still fires"""


def _act(action: str, reason: str, *, target: str | None = None, timeout_s: float | None = None) -> RecommendedAction:
    return RecommendedAction.model_validate(
        {"action": action, "reason": reason, "target": target, "timeout_s": timeout_s}
    )


# ------------------------------------------------------------------------------------------ signals

PLANNED_SHUTDOWN_CLASS = "planned_shutdown_reboot"
PLANNED_SUBJECTS = frozenset({"planned", PLANNED_SHUTDOWN_CLASS})
PLANNED_DOWNTIME = frozenset({*SILENT_KINDS, "node_not_ready", "unexpected_reboot", "service_down", "flapping"})
"""What an orderly shutdown or reboot causes: the node dark, NotReady, its services stopped, a new boot id."""


def _planned_downtime(
    decision: Decision,
    kernel: list[KernelEvidence],
    firing: list[Anomaly],
    kinds: set[str],
    anomaly_ev: list[Evidence],
    *,
    now: datetime,
    config: DecisionConfig,
) -> Decision | None:
    """An orderly shutdown or reboot the node logged (not ours: A' takes our own) is not a fault to repair. Within
    `planned_grace` of its last line, and when nothing else fires: back with a new boot id → `planned_reboot`,
    nothing to do; still dark, NotReady or with services stopped → no verdict until the grace ends (the node is
    looked at again then). Otherwise None: what fires is judged on the anomalies. Before, both got the default
    ladder (cordon, drain, reboot): a node kured or an admin rebooted was rebooted again."""
    at = max((k.observed_at for k in kernel if k.finding.cls == PLANNED_SHUTDOWN_CLASS), default=None)
    # the detector's kernel_fault of shutdown lines is `planned`; a crash report's episode is named by its class
    others = {a.kind for a in firing if not (a.kind == "kernel_fault" and a.subject in PLANNED_SUBJECTS)}
    if at is None or not others <= PLANNED_DOWNTIME or now >= at + config.planned_grace:
        return None
    decision.evidence.extend(anomaly_ev)
    if "unexpected_reboot" in kinds and not kinds & SILENT_KINDS:
        decision.cause, decision.category = "planned_reboot", "ops"
        decision.recommended = (
            _act("none", f"the node came back from an orderly reboot it logged at {at.isoformat()}: nothing to repair"),
        )
        return decision
    decision.hold_until = at + config.planned_grace
    decision.recommended = (
        _act(
            "none",
            f"an orderly shutdown or reboot was logged at {at.isoformat()}: its downtime is judged once it has lasted "
            f"{config.planned_grace.total_seconds():.0f} s",
        ),
    )
    return decision


def recent_kernel(ctx: NodeContext, *, now: datetime, config: DecisionConfig) -> list[KernelEvidence]:
    horizon = now - config.kernel_lookback
    return [k for k in ctx.kernel if k.observed_at >= horizon]


def io_errors_before(ctx: NodeContext, fs: KernelEvidence, *, config: DecisionConfig) -> list[KernelEvidence]:
    """Device I/O errors on the same disk at or before a filesystem error (same probe counts)."""
    horizon = fs.observed_at - config.io_lookback
    return [
        k
        for k in ctx.kernel
        if k.finding.cls in IO_ERROR_CLASSES
        and horizon <= k.observed_at <= fs.observed_at
        and same_disk(fs.finding.device, k.finding.device)
    ]


def relevant_cloud_event(ctx: NodeContext, *, now: datetime, config: DecisionConfig) -> CloudSystemEvent | None:
    """The cloud event that matters now: in progress, else the soonest pending / scheduled, else one
    that completed (or failed) in the last `cloud_recent`. Canceled / avoided events are ignored."""
    active = [e for e in ctx.cloud.values() if not e.is_terminal]
    if active:
        in_progress = [e for e in active if e.phase == "in_progress"]
        if in_progress:
            return in_progress[0]
        return min(active, key=lambda e: e.not_before or e.deadline or e.observed_at)
    done = [
        e
        for e in ctx.cloud.values()
        if e.phase in {"completed", "failed"} and (e.finished_at or e.observed_at) >= now - config.cloud_recent
    ]
    return max(done, key=lambda e: e.finished_at or e.observed_at) if done else None


@dataclass(frozen=True, slots=True)
class PeerView:
    dimension: str
    value: str
    down: tuple[str, ...]
    members: int

    @property
    def fraction(self) -> float:
        return len(self.down) / self.members if self.members else 0.0


def peer_view(
    fleet: FleetState, ctx: NodeContext, dimension: str, *, now: datetime, config: DecisionConfig
) -> PeerView | None:
    value = fleet.domain_of(ctx.key, dimension)
    if value is None:
        return None
    members = fleet.peer_count(ctx.key, dimension)
    # a burst: the dark peers chained to this node by onsets at most `burst_window` apart — a rack that
    # goes dark over minutes is one burst; measured from this node, not from "now", so a partition
    # that lasts an hour still reads as a partition when the node is re-evaluated late
    down = fleet.burst(ctx.key, dimension, gap=config.burst_window)
    return PeerView(dimension=dimension, value=value, down=down, members=members)


def partition_view(
    fleet: FleetState, ctx: NodeContext, *, now: datetime, config: DecisionConfig
) -> tuple[str, PeerView] | None:
    """The rack / zone burst this dark node belongs to, when it is large enough to be a partition.

    A zone partition takes the node's own rack down with it: a node whose rack is not dark (at least
    `zone_min_fraction` of it in the node's burst) is not absorbed by another rack's partition that
    happens to fill the zone's fraction — it is judged on its own (a hang next to a dark rack)."""
    rack = peer_view(fleet, ctx, "rack", now=now, config=config)
    if rack is not None and len(rack.down) >= config.rack_min_down and rack.fraction >= config.rack_min_fraction:
        return "rack_partition", rack
    zone = peer_view(fleet, ctx, "zone", now=now, config=config)
    if zone is None or len(zone.down) < config.zone_min_down or zone.fraction < config.zone_min_fraction:
        return None
    if rack is not None and rack.fraction < config.zone_min_fraction:
        return None
    return "zone_partition", zone


def repeated_repairs(ctx: NodeContext, *, now: datetime, config: DecisionConfig) -> int:
    horizon = now - config.repeat_window
    return sum(
        1
        for r in ctx.remediation
        if r.action in {"reboot", "redeploy"} and r.phase in {"succeeded", "verified"} and r.time >= horizon
    )


# ------------------------------------------------------------------------------------------ ladders


def ladder_for(
    cause: str, category: Category, *, target: str | None = None, repeated: int = 0, limit: int = 3
) -> tuple[RecommendedAction, ...]:
    escalate = _act("escalate", "the ladder is exhausted; a person must look at the node")
    if repeated >= limit:
        return (
            _act("cordon", f"{repeated} reboots/redeploys in the repeat window: keep workloads off"),
            _act(
                "escalate",
                f"repeated failure ({repeated} repairs) — quarantine and open a ticket instead of repairing again",
            ),
        )
    if cause in {"rack_partition", "zone_partition", "node_network_down"}:
        return (
            _act(
                "escalate",
                "network failure domain: rebooting or draining nodes cannot fix it and would add load;"
                " page the network on-call",
            ),
        )
    if cause == "agent_down":
        return (
            _act(
                "restart_agent",
                "the node answers and its kubelet is up; only our agent is silent: delete its pod so the"
                " DaemonSet recreates it (never a reason to drain or reboot the node)",
                target=target or "nodeheal-agent",
                timeout_s=120,
            ),
            _act("escalate", "the agent did not come back after its pod was recreated"),
        )
    if cause in RESTART_CAUSES:
        return (
            _act(
                "restart_service",
                "a local restart is the cheapest fix for a crashed or hung service",
                target=target,
                timeout_s=120,
            ),
            _act("cordon", "the service did not recover after a restart", timeout_s=30),
            _act("drain", "move workloads away before a disruptive step", timeout_s=600),
            _act("reboot", "restart the node to clear the service's kernel / runtime state", timeout_s=900),
            escalate,
        )
    if cause in {"disk_full", "disk_full_eviction", "inode_exhaustion"}:
        return (
            _act(
                "clean_disk",
                f"image / pod log / journal garbage collection frees space on {target or 'the node'} "
                "without disruption",
                # what to clean, in the node agent's allow-list terms (not the full mount point)
                target=CLEAN_DISK_DEFAULT,
                timeout_s=300,
            ),
            _act("cordon", "space did not come back after cleaning", timeout_s=30),
            _act("drain", "move workloads away from the full node", timeout_s=600),
            escalate,
        )
    if cause in {"fd_exhaustion", "too_many_open_files"}:
        return (
            _act(
                "restart_service",
                "restart the systemd unit of the process holding the most descriptors (the agent names it)",
                target=FD_HOLDER_TARGET,
                timeout_s=120,
            ),
            _act("escalate", "the descriptor holder is not a restartable service, or the restart did not help"),
        )
    if cause in {
        "high_load",
        "conntrack_full",
        "oom_killer",
        "page_allocation_failure",
        "kubelet_unhealthy_pleg",
        "node_not_ready",
    }:
        return (
            _act("cordon", "stop new pods landing on the struggling node", timeout_s=30),
            _act("drain", "shed load by moving pods away", timeout_s=600),
            _act("reboot", "the node did not recover after draining", timeout_s=900),
            escalate,
        )
    if cause in {"node_crash", "unexplained_reboot"}:
        return (
            _act("cordon", "the node went dark without a planned event", timeout_s=30),
            _act("drain", "reschedule its pods (the eviction may time out while it is dark)", timeout_s=300),
            _act("reboot", "power-cycle through the cloud API", timeout_s=900),
            _act("redeploy", "the node did not come back after a reboot: move it to another host", timeout_s=1800),
            escalate,
        )
    if category == "hardware":
        return (
            _act("cordon", "hardware fault: keep new workloads off", timeout_s=30),
            _act("drain", "move workloads before the host is replaced", timeout_s=600),
            _act(
                "redeploy",
                "move the instance to healthy hardware (cloud redeploy); local disks are lost",
                timeout_s=1800,
            ),
            escalate,
        )
    if cause == "flapping_node":
        return (
            _act("cordon", "the node keeps failing and recovering: keep workloads off", timeout_s=30),
            _act("drain", "move workloads to stable nodes", timeout_s=600),
            escalate,
        )
    # kernel defects, hangs, filesystem corruption, anything else
    return (
        _act("cordon", "keep new workloads off the faulty node", timeout_s=30),
        _act("drain", "move workloads away before rebooting", timeout_s=600),
        _act("reboot", "a reboot clears the kernel state (and runs fsck where configured)", timeout_s=900),
        _act("redeploy", "the fault came back after a reboot: move to another host", timeout_s=1800),
        escalate,
    )


def rotation_ladder(cause: str) -> tuple[RecommendedAction, ...]:
    """A machine that crashed on a hardware class leaves the fleet (machine rotation): cordon, drain,
    retire (labelled and tainted for replacement), replace (through the cloud API; the remediator's
    policy asks for approval), then a person."""
    return (
        _act("cordon", f"the machine crashed on a hardware fault ({cause}): keep new workloads off", timeout_s=30),
        _act("drain", "move workloads away before the machine leaves the fleet", timeout_s=600),
        _act(
            "retire",
            "take the machine out of the fleet: label and taint it for replacement (a reboot would put"
            " workloads back on failing hardware)",
            timeout_s=300,
        ),
        _act(
            "replace",
            "release the retired instance and recreate it from its node pool's launch template",
            timeout_s=3600,
        ),
        _act("escalate", "the machine could not be rotated out; a person must replace it"),
    )


def latest_crash(
    ctx: NodeContext, *, now: datetime, config: DecisionConfig, opened: set[str] | frozenset[str] = frozenset()
) -> CrashFact | None:
    """The node's most recent crash report within the kernel look-back (or one that opened the
    episode: `opened`, report ids), if any."""
    horizon = now - config.kernel_lookback
    recent = [c for c in ctx.crash_reports if c.at >= horizon or c.report_id in opened]
    return max(recent, key=lambda c: c.at) if recent else None


def crash_bucket_decision(decision: Decision, crash: CrashFact) -> bool:
    """Let the crash report's bucket decide (in place): a hardware class takes the machine out
    (returns True: the rotation ladder); a kernel bucket already seen on other nodes, or a new one,
    is rebooted (the kernel ladder), with the bucket's fleet record as evidence."""
    summary = (
        f"crash report: {crash.cls}, bucket {crash.bucket} — {crash.count} crash(es) on {crash.node_count}"
        f" node(s) in the fleet record (kernels {', '.join(crash.kernels) or '?'},"
        f" machine models {', '.join(crash.machine_models) or '?'})"
    )
    details: dict[str, object] = {
        "bucket": crash.bucket,
        "count": crash.count,
        "node_count": crash.node_count,
        "kernels": list(crash.kernels),
        "machine_models": list(crash.machine_models),
        "first_seen": crash.first_seen,
        "last_seen": crash.last_seen,
        "evidence_path": crash.evidence_path,
    }
    if crash.hardware:
        if decision.category != "hardware":
            return False
        decision.evidence.insert(
            0,
            _ev(
                "crash_report",
                f"{summary}: the machine crashed on a hardware fault; take it out of the fleet",
                value="hardware",
                ref=crash.report_id,
                at=crash.at,
                **details,
            ),
        )
        decision.confidence = max(decision.confidence, 0.9)
        return True
    if crash.signature is None or decision.category == "hardware":
        return False  # nothing to identify the bug, or this host's hardware is suspected (C2, taint M)
    if decision.cause not in CRASH_CLASSES and decision.cause != crash.cls:
        return False
    if crash.other_nodes > 0:
        verdict = f"a known kernel defect, already seen on {crash.other_nodes} other node(s): reboot"
        value = "known_bucket"
        decision.confidence = max(decision.confidence, 0.85)
    else:
        verdict = (
            "a new crash bucket: reboot; the evidence stays on the node (never cleaned) and the kernel team"
            " is told once"
        )
        value = "new_bucket"
    decision.category = "kernel"
    decision.crash_signature = decision.crash_signature or crash.signature
    decision.evidence.insert(
        0, _ev("crash_report", f"{summary}: {verdict}", value=value, ref=crash.report_id, at=crash.at, **details)
    )
    return False


def cloud_ladder(event: CloudSystemEvent, *, now: datetime, config: DecisionConfig) -> tuple[RecommendedAction, ...]:
    ref = event.provider_event_id
    eta = event.not_before or event.deadline
    expected = float(event.expected_duration_s or 1800)
    if event.action in {"stop", "terminate"}:
        return (
            _act("cordon", f"the cloud will {event.action} the instance ({ref})", target=ref, timeout_s=30),
            _act("drain", "move workloads before the instance goes away", target=ref, timeout_s=600),
            _act("escalate", "the instance will not come back by itself; replace it", target=ref),
        )
    if event.phase == "in_progress":
        return (
            _act(
                "wait_for_cloud_event",
                f"{event.provider_event_type} is executing; rebooting now would fight it",
                target=ref,
                timeout_s=expected,
            ),
            _act("escalate", "the cloud event did not finish in its expected time", target=ref),
        )
    if event.phase in {"completed", "failed"}:
        return (
            _act(
                "wait_for_cloud_event",
                f"{event.provider_event_type} {event.phase}; give the node time to rejoin",
                target=ref,
                timeout_s=600,
            ),
            _act("reboot", "the node did not come back after the cloud event", timeout_s=900),
            _act("escalate", "still unhealthy after the event and a reboot", target=ref),
        )
    steps: list[RecommendedAction] = [
        _act(
            "cordon",
            f"{event.provider_event_type} is {event.phase} for this instance ({ref})",
            target=ref,
            timeout_s=30,
        ),
        _act(
            "drain",
            "drain ahead of the cloud event" + (" (redeploy wipes local disks)" if event.action == "redeploy" else ""),
            target=ref,
            timeout_s=600,
        ),
    ]
    if event.phase == "pending_approval":
        steps.append(
            _act(
                "accept_cloud_event",
                "the event waits for our approval; accept it once drained",
                target=ref,
                timeout_s=expected,
            )
        )
    elif eta is not None and eta - now <= config.cloud_imminent:
        steps.append(
            _act(
                "wait_for_cloud_event",
                f"the host {event.action} starts within {config.cloud_imminent}; do not reboot on top of it",
                target=ref,
                timeout_s=max(60.0, (eta - now).total_seconds()) + expected,
            )
        )
    elif event.ack:
        steps.append(
            _act(
                "accept_cloud_event",
                "do the maintenance now, on our schedule, after draining",
                target=ref,
                timeout_s=expected,
            )
        )
    else:
        steps.append(
            _act(
                "wait_for_cloud_event",
                "nothing to run early; wait for the scheduled window",
                target=ref,
                timeout_s=expected,
            )
        )
    steps.append(_act("escalate", "the cloud event did not complete", target=ref))
    return tuple(steps)


def adjust_for_cloud(
    ladder: tuple[RecommendedAction, ...], event: CloudSystemEvent | None, *, now: datetime, config: DecisionConfig
) -> tuple[RecommendedAction, ...]:
    """A scheduled host reboot / redeploy changes any plan: never reboot or redeploy on top of it."""
    if event is None or event.is_terminal or event.action not in {"reboot", "redeploy"}:
        return ladder
    eta = event.not_before or event.deadline
    if event.phase != "in_progress" and (eta is None or eta - now > config.cloud_imminent):
        return ladder
    out: list[RecommendedAction] = []
    for step in ladder:
        if step.action in {"reboot", "redeploy"}:
            out.append(
                _act(
                    "wait_for_cloud_event",
                    f"host {event.action} {event.provider_event_id} is imminent; it replaces our {step.action}",
                    target=event.provider_event_id,
                    timeout_s=float(event.expected_duration_s or 1800),
                )
            )
        else:
            out.append(step)
    return tuple(out)


# ------------------------------------------------------------------------------------------ decision


def _ev(
    kind: str,
    summary: str,
    *,
    value: float | str | bool | None = None,
    ref: str | None = None,
    at: datetime | None = None,
    **details: object,
) -> Evidence:
    return Evidence(kind=kind, summary=summary, value=value, ref=ref, observed_at=at, details=dict(details))


def _kernel_decision(
    ctx: NodeContext,
    fleet: FleetState,
    kernel: list[KernelEvidence],
    *,
    now: datetime,
    config: DecisionConfig,
    rank: dict[str, int],
) -> Decision | None:
    if not kernel:
        return None
    classes = tuple(sorted({k.finding.cls for k in kernel}, key=lambda c: -rank.get(c, 0)))
    evidence = [
        _ev(
            "kernel_log",
            f"{k.finding.cls}: {k.finding.line.strip()[:300]}",
            value=k.finding.cls,
            ref=k.anomaly_id,
            at=k.observed_at,
            rule=k.finding.rule_id,
        )
        for k in sorted(kernel, key=lambda k: (-rank.get(k.finding.cls, 0), k.observed_at))[:8]
    ]
    onset = min(k.observed_at for k in kernel)
    signature = next(
        (k.signature for k in sorted(kernel, key=lambda k: k.observed_at, reverse=True) if k.signature), None
    )

    # 1. fatal hardware
    fatal = [k for k in kernel if fatal_hardware(k.finding)]
    if fatal:
        return Decision(
            cause=fatal[0].finding.cls,
            category="hardware",
            confidence=0.9,
            evidence=evidence,
            kernel_classes=classes,
            crash_signature=signature,
            fault_onset=onset,
        )

    # 2. different crash signatures on this host (Intel rule 1)
    horizon = now - config.crash_window
    buckets = crash_events(ctx.crashes, since=horizon, separation=config.crash_separation)
    if len(buckets) >= 2:
        evidence.insert(
            0,
            _ev(
                "history",
                f"{len(buckets)} different crash signatures on this host within {config.crash_window}",
                value=len(buckets),
                buckets=sorted(buckets),
            ),
        )
        return Decision(
            cause="heterogeneous_crashes",
            category="hardware",
            confidence=0.75,
            evidence=evidence,
            kernel_classes=classes,
            crash_signature=signature,
            fault_onset=onset,
        )

    # 3. storage: filesystem errors with / without device I/O errors before them
    fs = [k for k in kernel if k.finding.cls in LOOKBACK_CLASSES]
    io = [k for k in kernel if k.finding.cls in IO_ERROR_CLASSES]
    crashes = [k for k in kernel if k.finding.cls in CRASH_CLASSES]
    if fs and not crashes:
        before = [e for f in fs for e in io_errors_before(ctx, f, config=config)]
        if before:
            evidence.insert(
                0,
                _ev(
                    "kernel_log",
                    f"device I/O errors on {before[0].finding.device or 'the disk'} came before the filesystem errors",
                    value="io_before_fs",
                ),
            )
            return Decision(
                cause="disk_failure",
                category="hardware",
                confidence=0.9,
                evidence=evidence,
                kernel_classes=classes,
                fault_onset=onset,
            )
        evidence.insert(
            0, _ev("kernel_log", "filesystem errors with no device I/O errors before them", value="fs_without_io")
        )
        return Decision(
            cause="filesystem_corruption",
            category="kernel",
            confidence=0.75,
            evidence=evidence,
            kernel_classes=classes,
            fault_onset=onset,
        )
    if io and not crashes:
        return Decision(
            cause="disk_failure",
            category="hardware",
            confidence=0.8,
            evidence=evidence,
            kernel_classes=classes,
            fault_onset=onset,
        )

    # 4. the most decisive non-weak class names the cause
    strong = [k for k in kernel if k.finding.cls not in WEAK_CLASSES]
    pool = strong or kernel
    top = max(pool, key=lambda k: (rank.get(k.finding.cls, 0), k.observed_at))
    cls = top.finding.cls
    category: Category = top.finding.category
    confidence = 0.8 if strong else 0.6
    if signature is not None and cls in CRASH_CLASSES:
        hosts = fleet.bucket_hosts.get(signature.bucket, {})
        recent_hosts = [h for h, t in hosts.items() if t >= horizon]
        if len(recent_hosts) >= config.kernel_fleet_hosts:
            evidence.insert(
                0,
                _ev(
                    "fleet",
                    f"the same crash signature on {len(recent_hosts)} hosts: a kernel defect, not this host's hardware",
                    value=len(recent_hosts),
                    bucket=signature.bucket,
                ),
            )
            category = "kernel" if category != "hardware" or cls not in FATAL_HARDWARE else category
            confidence = 0.9
        if signature.taint and "M" in signature.taint:
            category, confidence = "hardware", 0.85
            evidence.insert(
                0, _ev("kernel_log", "taint M: a machine check happened before the crash", value=signature.taint)
            )
    return Decision(
        cause=cls,
        category=category,
        confidence=confidence,
        evidence=evidence,
        kernel_classes=classes,
        crash_signature=signature if cls in CRASH_CLASSES else None,
        fault_onset=onset,
    )


def _service_target(anomalies: list[Anomaly]) -> str | None:
    for a in anomalies:
        if a.kind == "service_down" and a.subject:
            return a.subject
    return None


_UNIT = re.compile(r"\b([A-Za-z0-9][A-Za-z0-9@_.-]*)\.service\b")
_RUNTIME_SOCKET = re.compile(r"/(containerd|docker|dockershim|crio|cri-dockerd)\.sock\b")
SERVICE_OF_CAUSE: dict[str, str] = {"kubelet_down": "kubelet", "container_runtime_down": "containerd"}
"""The unit a service cause restarts when neither its log line nor the node's inventory names one (the
kubelet's own view of a dead runtime rarely does): the agent refuses a restart without a unit in its
allow-list."""
RUNTIME_UNITS: dict[str, str] = {"containerd": "containerd", "cri-o": "crio", "docker": "docker"}
"""The systemd unit of each runtime the kubelet reports in `containerRuntimeVersion`."""


def service_in_kernel(cause: str, kernel: list[KernelEvidence], *, runtime: str | None = None) -> str | None:
    """The systemd unit a kernel/journal-line diagnosis of a dead service names: `kubelet.service: Main
    process exited` → kubelet; the kubelet's CRI error on `/run/containerd/containerd.sock` → containerd
    (`dockershim.sock` → docker); else, for a dead runtime, the unit of the runtime the node's inventory
    reports (`runtime`, e.g. `cri-o` → crio); else the cause's usual unit (`SERVICE_OF_CAUSE`). Only the
    lines of that cause are read, newest first."""
    for k in sorted((k for k in kernel if k.finding.cls == cause), key=lambda k: k.observed_at, reverse=True):
        line = k.finding.line
        unit = _UNIT.search(line)
        if unit is not None:
            return unit.group(1)
        socket = _RUNTIME_SOCKET.search(line)
        if socket is not None:
            return "docker" if socket.group(1) == "dockershim" else socket.group(1)
    if cause == "container_runtime_down" and runtime in RUNTIME_UNITS:
        return RUNTIME_UNITS[runtime]
    return SERVICE_OF_CAUSE.get(cause)


def decide(
    *, ctx: NodeContext, fleet: FleetState, now: datetime, config: DecisionConfig, rank: dict[str, int]
) -> Decision | None:
    """Why the node's firing anomalies happen, or None when nothing fires any more."""
    firing = sorted(ctx.firing.values(), key=lambda a: a.fault_onset)
    if not firing:
        return None
    kinds: set[str] = {a.kind for a in firing}
    onset = firing[0].fault_onset
    anomaly_ev = [
        _ev(
            "anomaly",
            f"{a.kind}{'/' + a.subject if a.subject else ''} firing since {a.fault_onset.isoformat()}",
            value=a.kind,
            ref=a.id,
            at=a.fault_onset,
        )
        for a in firing
    ]
    repeated = repeated_repairs(ctx, now=now, config=config)
    event = relevant_cloud_event(ctx, now=now, config=config)
    kernel = recent_kernel(ctx, now=now, config=config)
    # a crash report that opened the episode itself (reasoning._open_crash_episode) explains it as long
    # as it lasts, however old: its findings are not subject to the kernel look-back
    opened = {
        e.ref for a in firing if a.kind == "kernel_fault" for e in a.evidence if e.kind == "crash_report" and e.ref
    }
    kernel += [k for k in ctx.kernel if k.anomaly_id in opened and k not in kernel]

    # A. a cloud event explains downtime / NotReady / reboots (executing or just done), or announces one
    if event is not None and _cloud_explains(event, firing, kinds, now=now, config=config):
        cause = (
            "host_failure"
            if event.cause == "host_failure"
            else CLOUD_ACTION_CAUSES.get(event.action, "host_maintenance_reboot")
        )
        confidence = 0.95 if event.phase in {"in_progress", "completed"} else 0.85
        evidence = [
            _ev(
                "cloud_event",
                f"{event.cloud} {event.provider_event_type} ({event.phase}) for instance {event.instance_id}",
                value=event.phase,
                ref=event.id,
                at=event.observed_at,
                provider_event_id=event.provider_event_id,
                action=event.action,
                not_before=event.not_before.isoformat() if event.not_before else None,
            ),
            *anomaly_ev,
        ]
        ladder = cloud_ladder(event, now=now, config=config)
        return Decision(
            cause=cause,
            category=category_of(cause),
            confidence=confidence,
            evidence=evidence,
            recommended=ladder,
            fault_onset=onset,
        )

    # A'. our own remediation took the node down
    own = own_remediation(ctx, now=now, config=config)
    downtime = [a for a in firing if a.kind in OWN_DOWNTIME]
    # the original fault's anomalies (e.g. the kernel_fault that led to the reboot) may still be
    # firing: downtime that began after our own action is still ours, whatever else fires
    ours = (
        own is not None
        and (
            kinds <= OWN_DOWNTIME
            or (bool(downtime) and all(a.fault_onset >= own.time - OWN_ACTION_SLACK for a in downtime))
        )
        and not _after_verified(ctx, own, downtime)
    )
    if own is not None and ours:
        evidence = [
            _ev(
                "history",
                f"remediator ran {own.action} ({own.phase}) at {own.time.isoformat()}",
                value=own.action,
                ref=own.action_id,
                at=own.time,
            ),
            *anomaly_ev,
        ]
        return Decision(
            cause="planned_reboot",
            category="ops",
            confidence=0.8,
            evidence=evidence,
            recommended=(_act("none", f"downtime caused by our own {own.action}; the remediator verifies it"),),
            fault_onset=onset,
        )

    # A''. only our own agent is silent on a node that answers (kubelet up): restart the agent's pod
    agent = [a for a in firing if a.kind == "service_down" and a.subject in config.node_agent_services]
    if agent and len(agent) == len(firing):
        return Decision(
            cause="agent_down",
            category=category_of("agent_down"),
            confidence=0.85,
            evidence=anomaly_ev,
            recommended=ladder_for("agent_down", "software", target=agent[0].subject),
            fault_onset=onset,
        )

    # B. many nodes of one rack / zone dark at once: the network, not the nodes
    if kinds & SILENT_KINDS and not any(a.expected for a in firing if a.kind in SILENT_KINDS):
        found = partition_view(fleet, ctx, now=now, config=config)
        if found is not None:
            cause, view = found
            dimension = view.dimension
            evidence = [
                _ev(
                    "peer",
                    f"{len(view.down)} of {view.members} nodes of {dimension} {view.value}"
                    f" went dark together (onsets at most {config.burst_window} apart)",
                    value=view.fraction,
                    dimension=dimension,
                    group=view.value,
                    down=list(view.down[:50]),
                ),
                *anomaly_ev,
            ]
            return Decision(
                cause=cause,
                category="network",
                confidence=min(0.95, 0.6 + view.fraction / 2),
                evidence=evidence,
                recommended=ladder_for(cause, "network"),
                fault_onset=onset,
            )

    # C. kernel / journal evidence (the node's kernel_fault anomalies and its crash reports)
    decision = _kernel_decision(ctx, fleet, kernel, now=now, config=config, rank=rank)
    weak = decision is not None and decision.confidence < 0.7 and not kinds <= {"kernel_fault"}
    if decision is not None and not weak and decision.cause == PLANNED_SHUTDOWN_CLASS:
        planned = _planned_downtime(decision, kernel, firing, kinds, anomaly_ev, now=now, config=config)
        if planned is not None:
            return planned
        decision = None  # other faults fire, or the downtime outlived the grace: judged on the anomalies (D)
    if decision is not None and not weak:
        crash = latest_crash(ctx, now=now, config=config, opened=opened)
        rotate = crash is not None and crash_bucket_decision(decision, crash)
        decision.evidence.extend(anomaly_ev)
        target = _service_target(firing)
        if target is None and decision.cause in RESTART_CAUSES:
            inv = fleet.inventory.get(ctx.key)
            target = service_in_kernel(decision.cause, kernel, runtime=inv.container_runtime if inv else None)
        ladder = (
            rotation_ladder(decision.cause)
            if rotate
            else ladder_for(
                decision.cause,
                decision.category,
                target=target,
                repeated=repeated if decision.category == "hardware" else 0,
                limit=config.repeat_limit,
            )
        )
        decision.recommended = adjust_for_cloud(ladder, event, now=now, config=config)
        return decision

    # D. the anomalies themselves
    cause, category, confidence, target = _anomaly_cause(firing, ctx, config=config)
    evidence = list(anomaly_ev)
    if decision is not None:
        evidence.extend(decision.evidence[:3])
    ladder = adjust_for_cloud(
        ladder_for(cause, category, target=target, repeated=repeated, limit=config.repeat_limit),
        event,
        now=now,
        config=config,
    )
    return Decision(
        cause=cause,
        category=category,
        confidence=confidence,
        evidence=evidence,
        kernel_classes=decision.kernel_classes if decision else (),
        recommended=ladder,
        fault_onset=onset,
    )


OWN_ACTION_SLACK = timedelta(seconds=5)
OWN_DOWNTIME = frozenset({"node_down", "node_not_ready", "unexpected_reboot", "node_hang", "service_down", "flapping"})


def own_remediation(ctx: NodeContext, *, now: datetime, config: DecisionConfig) -> RemediationRecord | None:
    horizon = now - config.cloud_recent
    for record in reversed(ctx.remediation):
        if (
            record.action in {"reboot", "redeploy", "accept_cloud_event"}
            and record.phase in {"started", "succeeded"}
            and record.time >= horizon
        ):
            return record
    return None


def _after_verified(ctx: NodeContext, own: RemediationRecord, downtime: list[Anomaly]) -> bool:
    """Did all this downtime begin after our action was verified (the node came back healthy)? Then it is a new
    fault, not our reboot: before, any downtime within `cloud_recent` of our reboot was ours (`planned_reboot`,
    ladder `none`), and a crash twenty minutes after a verified reboot left the node dark."""
    verified = [r.time for r in ctx.remediation if r.action_id == own.action_id and r.phase == "verified"]
    if not verified or not downtime:
        return False
    return all(a.fault_onset > min(verified) for a in downtime)


def _cloud_explains(
    event: CloudSystemEvent, firing: list[Anomaly], kinds: set[str], *, now: datetime, config: DecisionConfig
) -> bool:
    if kinds <= {"cloud_maintenance"}:
        return True  # the announcement alone: the host maintenance is the node's episode (drain ahead of it)
    if "cloud_maintenance" in kinds and (event.not_before is None or event.not_before <= now + config.cloud_imminent):
        # its time has come (the platform may start it before a poll says in_progress): the downtime is the event's.
        # An event days ahead explains no other fault: before, its announcement alone took every later fault of
        # the node for the maintenance (a kernel panic days before it was never diagnosed)
        return True
    if event.phase in {"in_progress", "completed", "failed"}:
        return bool(kinds & CLOUD_EXPLAINS)
    # announced, not executing: it explains nothing yet (the ladder still takes it into account)
    return False


def _anomaly_cause(
    firing: list[Anomaly], ctx: NodeContext, *, config: DecisionConfig
) -> tuple[str, Category, float, str | None]:
    kinds = {a.kind for a in firing}
    by_kind = {a.kind: a for a in firing}
    services = [a for a in firing if a.kind == "service_down"]
    if services:
        svc = services[0].subject or ""
        if svc in config.node_agent_services:
            cause = "agent_down"
        elif svc in config.agent_services:
            cause = "ops_agent_down"
        else:
            cause = SERVICE_CAUSES.get(svc, "service_down")
        return cause, category_of(cause), 0.85, svc or None
    table: tuple[tuple[str, str, float], ...] = (
        ("disk_full", "disk_full", 0.9),
        ("inode_exhaustion", "inode_exhaustion", 0.9),
        ("fd_exhaustion", "fd_exhaustion", 0.9),
        ("readonly_fs", "readonly_filesystem", 0.7),
        ("high_load", "high_load", 0.8),
        ("node_hang", "node_hang", 0.7),
        ("flapping", "flapping_node", 0.7),
        ("node_down", "node_crash", 0.6),
        ("unexpected_reboot", "unexplained_reboot", 0.6),
        ("cloud_maintenance", "host_maintenance_reboot", 0.5),
        ("node_not_ready", "node_not_ready", 0.6),
    )
    for kind, cause, confidence in table:
        if kind in kinds:
            subject = by_kind[kind].subject
            return cause, category_of(cause), confidence, subject
    return "unknown", "unknown", 0.3, None


def crash_events(
    crashes: Iterable[tuple[datetime, CrashSignature]], *, since: datetime, separation: timedelta
) -> dict[str, CrashSignature]:
    """Distinct signatures of the separate crashes since `since`: reports within `separation` of the
    first report of a crash belong to it, and the crash is named by that first report."""
    out: dict[str, CrashSignature] = {}
    start: datetime | None = None
    for at, signature in sorted(((t, s) for t, s in crashes if t >= since), key=lambda x: x[0]):
        if start is not None and at - start < separation:
            continue
        start = at
        out.setdefault(signature.bucket, signature)
    return out
