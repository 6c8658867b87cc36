"""Crash reports in the diagnoser's core. Every crash report counts once towards the fleet rates (the correlator's input): alone while no
episode of its node is open (our own reboot brought the node back, nothing fires), and through the
diagnosis of the episode it explains once there is one — never twice. Real pstore bytes of a Debian
6.1 soft lockup (tests/data/kernel). A machine found crashed on hardware with nothing firing (our
own reboot brought it back) still gets its rotation: the crash report opens the episode, which ends
with the retirement (a fatal machine check from the knowledge-base corpus)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nodeheal.diagnoser.crash import classify, update_record
from nodeheal.diagnoser.kb import Matcher, load_knowledge_base
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.crash import CrashEvidence, CrashReport
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly

DATA = Path(__file__).resolve().parents[2] / "data" / "kernel"


def report(node: str, at: datetime) -> CrashReport:
    lines = (DATA / "softlockup" / "pstore" / "dmesg-ramoops-0").read_text().splitlines()
    return CrashReport(
        cluster=CLUSTER,
        node=node,
        time=at,
        boot_id=f"{node}-boot-2",
        previous_boot_id=f"{node}-boot-1",
        unexpected=True,
        evidence=(
            CrashEvidence(
                source="pstore",
                path="/sys/fs/pstore/dmesg-ramoops-0",
                record=lines[0],
                written_at=at - timedelta(seconds=30),
                lines=tuple(lines[1:][-400:]),
            ),
        ),
    )


def counted(diagnoser: Diagnoser, node: str) -> list[str]:
    return [
        k for k, (n, scope, _) in diagnoser.fleet.fault_events.items() if n == f"{CLUSTER}/{node}" and scope == "any"
    ]


def test_a_crash_counts_once_alone_or_through_the_episode_it_explains() -> None:
    diagnoser = Diagnoser(matcher=Matcher(load_knowledge_base()))
    now = datetime.now(tz=UTC)

    # n1: back after our own reboot, nothing fires: the crash counts alone, no diagnosis
    alone = classify(report("n1", now), diagnoser.matcher)
    touched = diagnoser.on_crash(alone, update_record(None, alone, kernel=None, at=now) or {})
    assert all(diagnoser.evaluate(key, now=now).diagnosis is None for key in touched)
    assert counted(diagnoser, "n1") == [f"crash:{alone.report_id}|any"]

    # n2: the crash report first, then the detector's unexpected_reboot: one count, the episode's
    verdict = classify(report("n2", now), diagnoser.matcher)
    diagnoser.on_crash(verdict, update_record(None, verdict, kernel=None, at=now) or {})
    reboot = anomaly("n2", "unexpected_reboot", at=now)
    for key in diagnoser.on_anomaly(reboot):
        outcome = diagnoser.evaluate(key, now=now)
    assert outcome.diagnosis is not None and outcome.diagnosis.cause == "soft_lockup"
    assert counted(diagnoser, "n2") == [f"{reboot.id}|any"]
    # the same report again (a redelivery): nothing changes
    diagnoser.on_crash(verdict, update_record(None, verdict, kernel=None, at=now) or {})
    assert counted(diagnoser, "n2") == [f"{reboot.id}|any"]


def mce_report(node: str, at: datetime) -> CrashReport:
    corpus = Path(__file__).resolve().parents[2] / "data" / "kb" / "corpus.jsonl"
    row = next(json.loads(t) for t in corpus.read_text().splitlines() if json.loads(t)["id"] == "kb-151")
    return CrashReport(
        cluster=CLUSTER,
        node=node,
        time=at,
        boot_id=f"{node}-boot-2",
        previous_boot_id=f"{node}-boot-1",
        unexpected=False,  # our own forced reboot brought it back
        evidence=(CrashEvidence(source="pstore", path="/sys/fs/pstore/dmesg-ramoops-0", lines=tuple(row["lines"])),),
    )


def audit(node: str, action: str, phase: str, at: datetime) -> RemediationRecord:
    return RemediationRecord(
        cluster=CLUSTER,
        node=node,
        time=at,
        action_id=f"act-{action}-{node}",
        action=action,  # type: ignore[arg-type]
        phase=phase,  # type: ignore[arg-type]
        reason="test",
        actor="remediator-0",
    )


def test_a_hardware_crash_found_with_nothing_firing_opens_its_episode_until_the_machine_is_retired() -> None:
    diagnoser = Diagnoser(matcher=Matcher(load_knowledge_base()))
    now = datetime.now(tz=UTC)
    verdict = classify(mce_report("n3", now), diagnoser.matcher)
    touched = diagnoser.on_crash(verdict, update_record(None, verdict, kernel=None, at=now) or {})
    [first] = [d for key in touched if (d := diagnoser.evaluate(key, now=now).diagnosis) is not None]
    assert (first.cause, first.category) == ("mce_fatal_panic", "hardware")
    assert [r.action for r in first.recommended] == ["cordon", "drain", "retire", "replace", "escalate"]

    # the ladder's audit trail touches the node for longer than the kernel look-back: the verdict holds
    later = now + timedelta(minutes=45)
    for key in diagnoser.on_audit(audit("n3", "drain", "succeeded", later)):
        assert diagnoser.evaluate(key, now=later).diagnosis is None
    # retired: the episode ends
    done = now + timedelta(minutes=50)
    [end] = [
        d
        for key in diagnoser.on_audit(audit("n3", "retire", "succeeded", done))
        if (d := diagnoser.evaluate(key, now=done).diagnosis)
    ]
    assert end.resolved and end.anomaly_ids == first.anomaly_ids


def test_a_reboot_raised_after_the_crash_report_is_named_by_the_episodes_diagnosis() -> None:
    """The chaos demo's "undiagnosed" machine check: the node came back while the detector was
    restarting, so its crash report arrived first and opened the episode on its own (a diagnosis naming
    only the report's episode); the detector's unexpected_reboot came two seconds later. The verdict
    did not change, so nothing was said again and no diagnosis named the reboot anomaly — a reader of
    the streams (`nodeheal replay`, the demo's referee) saw an undiagnosed reboot. The first real
    anomaly joining the episode is said once: same episode, same verdict and ladder, naming it."""
    diagnoser = Diagnoser(matcher=Matcher(load_knowledge_base()))
    now = datetime.now(tz=UTC)
    verdict = classify(mce_report("n5", now), diagnoser.matcher)
    touched = diagnoser.on_crash(verdict, update_record(None, verdict, kernel=None, at=now) or {})
    [first] = [d for key in touched if (d := diagnoser.evaluate(key, now=now).diagnosis) is not None]
    later = now + timedelta(seconds=2)
    reboot = anomaly("n5", "unexpected_reboot", at=later)
    [second] = [d for key in diagnoser.on_anomaly(reboot) if (d := diagnoser.evaluate(key, now=later).diagnosis)]
    assert reboot.id in second.anomaly_ids
    assert second.id != first.id  # a new message (not dropped as a duplicate of the first)
    assert (second.episode_id, second.cause, second.category) == (first.episode_id, first.cause, first.category)
    assert [r.action for r in second.recommended] == [r.action for r in first.recommended]
    # said once: the next anomaly of the episode changes nothing
    again = now + timedelta(seconds=4)
    more = anomaly("n5", "kernel_fault", at=again, subject="hardware")
    assert all(diagnoser.evaluate(key, now=again).diagnosis is None for key in diagnoser.on_anomaly(more))


def test_an_unexpected_reboot_waits_for_its_crash_report_before_it_is_unexplained() -> None:
    """The chaos demo saw a kernel panic first said to be `unexplained_reboot`: the detector's
    unexpected_reboot reached the diagnoser 1 ms before the agent's crash report of the same boot. A first
    verdict of an unexplained reboot now waits `crash_report_wait` (10 s) from the anomaly's detection."""
    diagnoser = Diagnoser(matcher=Matcher(load_knowledge_base()))
    now = datetime.now(tz=UTC)
    reboot = anomaly("n7", "unexpected_reboot", at=now)
    [key] = diagnoser.on_anomaly(reboot)
    held = diagnoser.evaluate(key, now=now)
    assert held.diagnosis is None and held.hold_until == reboot.detected_at + timedelta(seconds=10)
    arrived = now + timedelta(milliseconds=1)
    verdict = classify(report("n7", arrived), diagnoser.matcher)
    [first] = [
        d
        for k in diagnoser.on_crash(verdict, update_record(None, verdict, kernel=None, at=arrived) or {})
        if (d := diagnoser.evaluate(k, now=arrived).diagnosis) is not None
    ]
    assert first.cause == "soft_lockup"  # the first verdict names the crash

    # no crash report comes: unexplained once the wait is over, not before
    lone = anomaly("n8", "unexpected_reboot", at=now)
    [key] = diagnoser.on_anomaly(lone)
    assert diagnoser.evaluate(key, now=now + timedelta(seconds=9)).diagnosis is None
    after = diagnoser.evaluate(key, now=lone.detected_at + timedelta(seconds=10)).diagnosis
    assert after is not None and after.cause == "unexplained_reboot"
