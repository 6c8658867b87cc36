"""The core's restart path (what durable.py feeds it): a second Diagnoser rebuilt from what the first
one read and said continues exactly where the first stopped — no verdict said again, the same
diagnosis ids, findings not re-raised, a held verdict still held, an open episode resolved."""

from __future__ import annotations

from nodeheal.diagnoser.kb import default_matcher
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.schemas import Anomaly, Diagnosis
from nodeheal.schemas.finding import FleetFinding
from tests.unit.diagnoser.scenarios import CLUSTER, OOPS_A, anomaly, inventory, later


def make() -> Diagnoser:
    diag = Diagnoser(matcher=default_matcher())
    for i in range(8):
        diag.on_inventory(inventory(f"n{i}", rack="r1" if i < 4 else "r2", zone="z1", kernel=f"k{i % 2}"))
    return diag


def restart(inputs: list[Anomaly], said: list[Diagnosis | FleetFinding]) -> Diagnoser:
    fresh = make()
    for item in inputs:
        fresh.restore_anomaly(item)
    last: dict[str, Diagnosis] = {}
    for out in said:
        if isinstance(out, FleetFinding):
            fresh.restore_finding(out)
        else:
            fresh.restore_fault_event(out)
            last[f"{out.cluster}/{out.node}"] = out
    for key, diagnosis in last.items():
        fresh.restore_published(key, diagnosis)
    return fresh


def test_a_restarted_core_continues_where_the_first_stopped() -> None:
    first = make()
    inputs = [
        anomaly("n0", "kernel_fault", subject="crash", lines=OOPS_A, at=later(0)),
        anomaly("n1", "service_down", subject="containerd", at=later(0)),
        anomaly("n5", "node_down", at=later(10)),  # held when the first core stops
    ]
    said: list[Diagnosis | FleetFinding] = []
    for item in inputs:
        first.on_anomaly(item)
    for key in (f"{CLUSTER}/n0", f"{CLUSTER}/n1", f"{CLUSTER}/n5"):
        outcome = first.evaluate(key, now=later(11))
        if outcome.diagnosis is not None:
            said.append(outcome.diagnosis)
    assert [d.node for d in said if isinstance(d, Diagnosis)] == ["n0", "n1"]
    assert first.evaluate(f"{CLUSTER}/n5", now=later(11)).hold_until == later(70)

    # the containerd fault clears while the core is down
    resolved = anomaly("n1", "service_down", subject="containerd", status="resolved", at=later(12))
    second = restart([*inputs, resolved], said)
    assert second.open_nodes() == {f"{CLUSTER}/n0", f"{CLUSTER}/n1", f"{CLUSTER}/n5"}
    assert second.evaluate(f"{CLUSTER}/n0", now=later(13)).diagnosis is None  # unchanged: not said again
    end = second.evaluate(f"{CLUSTER}/n1", now=later(13)).diagnosis
    assert end is not None and end.resolved and end.anomaly_ids == said[1].anomaly_ids  # type: ignore[union-attr]
    assert second.evaluate(f"{CLUSTER}/n5", now=later(13)).hold_until == later(70)  # still held, same end
    crash = second.evaluate(f"{CLUSTER}/n5", now=later(70)).diagnosis
    assert crash is not None and crash.cause == "node_crash"
    # the same verdict the first core would have given, with the same id
    assert first.evaluate(f"{CLUSTER}/n5", now=later(70)).diagnosis == crash
    # the crash counted towards the fleet rates exactly once
    assert sorted(k.split("|")[1] for k in second.fleet.fault_events if k.startswith(said[0].anomaly_ids[0])) == [  # type: ignore[union-attr]
        "any",
        "bucket:" + said[0].crash_signature.bucket,  # type: ignore[union-attr]
        "category:kernel",
    ]


def test_fleet_findings_are_not_raised_again_after_a_restart() -> None:
    first = make()
    for i in range(4):
        first.on_anomaly(anomaly(f"n{i}", "node_down", at=later(i * 0.1)))
    findings, _ = first.correlate(now=later(1), cluster=CLUSTER)
    assert sorted((f.dimension, f.value) for f in findings) == [("node_pool", "pool-a"), ("rack", "r1"), ("zone", "z1")]
    second = restart([anomaly(f"n{i}", "node_down", at=later(i * 0.1)) for i in range(4)], list(findings))
    again, _ = second.correlate(now=later(2), cluster=CLUSTER)
    assert again == []  # still flagged, already said
    for i in range(4):
        second.on_anomaly(anomaly(f"n{i}", "node_down", status="resolved", at=later(i * 0.1)))
    assert second.correlate(now=later(3), cluster=CLUSTER)[0] == []  # hysteresis: absent, not yet cleared
    cleared, _ = second.correlate(now=later(3 + 601), cluster=CLUSTER)
    assert sorted((f.value, f.cleared, f.finding_id) for f in cleared) == sorted(
        (f.value, True, f.finding_id) for f in findings
    )
