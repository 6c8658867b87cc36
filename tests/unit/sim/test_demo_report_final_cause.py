"""The demo report's final cause is the last verdict on the fault, not the verdict on our own repair."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nodeheal.cli.timeline import ActionEntry, DiagnosisEntry, EvidenceEntry, Incident
from nodeheal.sim.demo_report import _final_cause

T0 = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)


def _diagnosis(i: int, cause: str, *evidence: EvidenceEntry) -> DiagnosisEntry:
    return DiagnosisEntry.model_construct(
        id=f"d{i}",
        identified_at=T0 + timedelta(seconds=10 * i),
        cause=cause,
        category="kernel",
        confidence=0.9,
        resolved=False,
        recovered=False,
        anomaly_ids=(),
        kernel_classes=(),
        recommended=(),
        evidence=evidence,
    )


def _incident(*diagnoses: DiagnosisEntry) -> Incident:
    return Incident.model_construct(
        incident_id="i1", node="n1", diagnoses=diagnoses, actions=(ActionEntry.model_construct(action_id="act-1"),)
    )


def test_the_verdict_on_our_own_reboot_is_not_the_faults_final_cause() -> None:
    """Chaos run at fc54080: two kernel faults ended `planned_reboot` — the new episode of the node's downtime
    during the remediator's reboot, diagnosed as ours, joined the incident and was taken as its final cause."""
    ours = EvidenceEntry(kind="history", summary="remediator ran reboot (started)", value="reboot", ref="act-1")
    inc = _incident(_diagnosis(1, "kernel_panic"), _diagnosis(2, "planned_reboot", ours))
    assert _final_cause(inc) == "kernel_panic"


def test_a_planned_reboot_not_of_our_doing_stays_the_final_cause() -> None:
    other = EvidenceEntry(kind="history", summary="remediator ran reboot (started)", ref="someone-elses")
    shutdown = EvidenceEntry(kind="kernel_log", summary="reboot: Restarting system")
    assert _final_cause(_incident(_diagnosis(1, "node_crash"), _diagnosis(2, "planned_reboot", other))) == (
        "planned_reboot"
    )
    assert _final_cause(_incident(_diagnosis(1, "node_crash"), _diagnosis(2, "planned_reboot", shutdown))) == (
        "planned_reboot"
    )


def test_when_our_reboot_is_the_only_verdict_it_is_reported() -> None:
    ours = EvidenceEntry(kind="history", summary="remediator ran reboot (started)", ref="act-1")
    assert _final_cause(_incident(_diagnosis(1, "planned_reboot", ours))) == "planned_reboot"
