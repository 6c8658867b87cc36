"""A crash bucket without identity is no bug shared across hosts.

A crash report that carries no blamed function, frames, `BUG at` or specific panic string (here: crash(8) `sys`
summaries whose PANIC field is an oops header, corpus kb-346 and kb-641: two unrelated NULL dereferences on two RHEL 7
kernels) has a bucket made of its kind and that generic string. Three hosts with such reports were "the same crash
signature on 3 hosts: a kernel defect" (confidence 0.9) and shared one fleet record, so the kernel team heard of the
first and never of the others. A report that identifies its bug (the real pstore soft lockup of tests/data/kernel,
with its trace) still makes the fleet finding on its third host."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nodeheal.diagnoser.crash import bucket_key, classify, update_record
from nodeheal.diagnoser.kb import Matcher, load_knowledge_base
from nodeheal.diagnoser.kb.signature import signature_identified
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.schemas.crash import CrashEvidence, CrashReport
from nodeheal.schemas.diagnosis import Diagnosis
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly
from tests.unit.diagnoser.test_crash_counting import report as soft_lockup_report

CORPUS = Path(__file__).resolve().parents[2] / "data" / "kb" / "corpus.jsonl"
ROWS = {row["id"]: row for row in map(json.loads, CORPUS.read_text().splitlines())}
FLEET = "the same crash signature on"


def summary_report(node: str, at: datetime, excerpt: str) -> CrashReport:
    return CrashReport(
        cluster=CLUSTER,
        node=node,
        time=at,
        boot_id=f"{node}-boot-2",
        previous_boot_id=f"{node}-boot-1",
        unexpected=True,
        evidence=(
            CrashEvidence(
                source="kdump",
                path="/var/crash/127.0.0.1-2026-12-03-07:00:00/vmcore-dmesg.txt",
                written_at=at - timedelta(seconds=30),
                lines=tuple(ROWS[excerpt]["lines"]),
            ),
        ),
    )


def crash_then_reboot(diagnoser: Diagnoser, report: CrashReport, now: datetime) -> tuple[str, Diagnosis]:
    verdict = classify(report, diagnoser.matcher)
    diagnoser.on_crash(verdict, update_record(None, verdict, kernel=None, at=now) or {})
    outcome = None
    for key in diagnoser.on_anomaly(anomaly(report.node, "unexpected_reboot", at=now)):
        outcome = diagnoser.evaluate(key, now=now + timedelta(minutes=2))
    assert outcome is not None and outcome.diagnosis is not None
    return bucket_key(verdict), outcome.diagnosis


def test_three_hosts_whose_reports_identify_no_bug_are_not_one_kernel_defect() -> None:
    diagnoser = Diagnoser(matcher=Matcher(load_knowledge_base()))
    now = datetime.now(tz=UTC)
    seen = [
        crash_then_reboot(diagnoser, summary_report(node, now, excerpt), now)
        for node, excerpt in (("n1", "kb-346"), ("n2", "kb-641"), ("n3", "kb-641"))
    ]
    signatures = [d.crash_signature for _, d in seen]
    assert all(s is not None and not signature_identified(s) for s in signatures)
    assert len({s.bucket for s in signatures if s is not None}) == 1  # kind + the generic header: one exact key
    assert len({key for key, _ in seen}) == 3  # but a fleet record per host
    for _, diagnosis in seen:
        assert diagnosis.cause == "vmcore_crash_sys_summary"
        assert diagnosis.confidence == 0.8
        assert not any(FLEET in e.summary for e in diagnosis.evidence), diagnosis.evidence
    assert diagnoser.fleet.bucket_hosts == {}
    assert not any(scope.startswith("bucket:") for _, scope, _ in diagnoser.fleet.fault_events.values())


def test_three_hosts_with_one_identified_crash_are_one_kernel_defect() -> None:
    diagnoser = Diagnoser(matcher=Matcher(load_knowledge_base()))
    now = datetime.now(tz=UTC)
    seen = [crash_then_reboot(diagnoser, soft_lockup_report(node, now), now) for node in ("n1", "n2", "n3")]
    assert len({key for key, _ in seen}) == 1
    last = seen[-1][1]
    assert last.crash_signature is not None and signature_identified(last.crash_signature)
    assert any(FLEET in e.summary for e in last.evidence) and last.confidence == 0.9
    assert any(scope.startswith("bucket:") for _, scope, _ in diagnoser.fleet.fault_events.values())
