"""Hand-built message sequences with known timings, shared by the replay tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nodeheal.cli.batch import operator_diagnosis
from nodeheal.schemas.anomaly import Anomaly, AnomalyKind, Evidence
from nodeheal.schemas.audit import RemediationPhase, RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import ActionName, Diagnosis, RecommendedAction
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.probe import NodeProbe, Reachability
from nodeheal.schemas.subjects import anomaly_subject, audit_subject, cloud_subject, diagnosis_subject, probe_subject

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
CLUSTER = "prod-1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def probe(node: str, t: float, *, ok: bool = True, seq: int = 0, source: str = "prober") -> NodeProbe:
    return NodeProbe(
        id=deterministic_id("probe", node, source, seq, t),
        time=at(t),
        cluster=CLUSTER,
        node=node,
        source=source,  # type: ignore[arg-type]
        seq=seq,
        reachability=(Reachability(check="tcp", target=f"{node}:22", ok=ok),),
        ready=ok,
    )


def agent_probe(node: str, t: float, seq: int, *, boot_id: str, uptime_s: float) -> NodeProbe:
    """A node agent's heartbeat probe at `t`: reachable, Ready, on boot `boot_id`."""
    return NodeProbe(
        id=deterministic_id("agent", node, seq),
        time=at(t),
        cluster=CLUSTER,
        node=node,
        source="agent",
        seq=seq,
        boot_id=boot_id,
        uptime_s=uptime_s,
        reachability=(Reachability(check="agent", target=node, ok=True),),
        ready=True,
    )


def firing(
    node: str, *, kind: AnomalyKind, onset: float, detected: float, subject: str | None = None, expected: bool = False
) -> Anomaly:
    key = f"{node}/{kind}/{subject or ''}"
    return Anomaly(
        id=deterministic_id(key, "firing", onset),
        time=at(detected),
        cluster=CLUSTER,
        node=node,
        anomaly_key=key,
        kind=kind,
        status="firing",
        severity="critical",
        subject=subject,
        fault_onset=at(onset),
        detected_at=at(detected),
        expected=expected,
        evidence=(Evidence(kind="probe", summary=f"{kind} seen", value=1.0),),
    )


def resolved(a: Anomaly, *, t: float) -> Anomaly:
    return a.model_copy(
        update={
            "id": deterministic_id(a.anomaly_key, "resolved", t),
            "status": "resolved",
            "resolved_at": at(t),
            "time": at(t),
        }
    )


def diagnosis(
    node: str, anomalies: list[Anomaly], *, t: float, cause: str, category: str = "software", resolved_: bool = False
) -> Diagnosis:
    return Diagnosis(
        id=deterministic_id("diag", node, cause, t, resolved_),
        time=at(t),
        cluster=CLUSTER,
        node=node,
        anomaly_ids=tuple(a.id for a in anomalies),
        anomaly_kinds=tuple(a.kind for a in anomalies),
        category=category,  # type: ignore[arg-type]
        cause=cause,
        confidence=0.9,
        identified_at=at(t),
        resolved=resolved_,
        recommended=(RecommendedAction(action="reboot", reason="because"),),
        evidence=(Evidence(kind="kernel_log", summary="soft lockup on CPU#3"),),
    )


def record(
    node: str,
    *,
    t: float,
    phase: RemediationPhase,
    action: ActionName = "reboot",
    diag: Diagnosis | None = None,
    action_id: str = "act-1",
    dry_run: bool = False,
    cause: str | None = None,
    episode_id: str | None = None,
) -> RemediationRecord:
    return RemediationRecord(
        id=deterministic_id("audit", node, action_id, phase),
        time=at(t),
        cluster=CLUSTER,
        node=node,
        action_id=action_id,
        action=action,
        phase=phase,
        reason=f"{phase} {action}",
        actor="remediator-0",
        diagnosis_id=diag.id if diag is not None else None,
        dry_run=dry_run,
        cause=cause if cause is not None else (diag.cause if diag is not None else None),
        episode_id=episode_id if episode_id is not None else (diag.episode if diag is not None else None),
    )


def operator_request(node: str, *, t: float, action: str = "reboot", batch_id: str = "b-test") -> Diagnosis:
    """What `nodeheal batch ACTION` publishes for one node (the command's own builder), made at `t`."""
    d = operator_diagnosis(
        batch_id=batch_id, action=action, node=node, cluster=CLUSTER, reason="kernel update", selector="pool=a"
    )
    return d.model_copy(update={"time": at(t), "identified_at": at(t)})


def cloud_event(node: str, *, t: float, phase: str = "scheduled") -> CloudSystemEvent:
    terminal = phase in {"completed", "avoided", "canceled", "failed"}
    return CloudSystemEvent(
        id=deterministic_id("cloud", node, phase),
        time=at(t),
        cluster=CLUSTER,
        node=node,
        cloud="alibaba",
        channel="simulator",
        provider_event_id=f"e-{node}",
        provider_event_type="SystemMaintenance.Reboot",
        action="reboot",
        cause="planned_maintenance",
        phase=phase,  # type: ignore[arg-type]
        is_terminal=terminal,
        instance_id=f"i-{node}",
        observed_at=at(t),
    )


def subject_of(m: NodeProbe | CloudSystemEvent | Anomaly | Diagnosis | RemediationRecord, prefix: str) -> str:
    """The subject the service that makes such a message publishes it on."""
    if isinstance(m, NodeProbe):
        return probe_subject(m.cluster, m.node, prefix=prefix)
    if isinstance(m, CloudSystemEvent):
        return cloud_subject(m.cluster, m.node, prefix=prefix)
    if isinstance(m, Anomaly):
        return anomaly_subject(m.cluster, m.node, prefix=prefix)
    if isinstance(m, Diagnosis):
        return diagnosis_subject(m.cluster, m.node, prefix=prefix)
    return audit_subject(m.cluster, m.node, prefix=prefix)
