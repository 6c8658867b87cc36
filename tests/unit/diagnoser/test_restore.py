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


def test_a_growing_zone_finding_is_said_again_with_its_nodes_once_and_survives_a_restart() -> None:
    """A zone's down spike raised with 4 dark nodes that reaches 6: said again (same finding id, a new
    message id) naming all 6; not again while nothing new goes dark, nor when a node comes back and goes
    dark again (no flapping); a restart reads the grown finding back and does not say it a third time."""
    first = make()
    downs = [anomaly(f"n{i}", "node_down", at=later(i * 0.1)) for i in range(6)]
    for item in downs[:4]:
        first.on_anomaly(item)
    raised, _ = first.correlate(now=later(1), cluster=CLUSTER)
    zone = next(f for f in raised if f.dimension == "zone")
    assert len(zone.affected_nodes) == 4
    for item in downs[4:]:
        first.on_anomaly(item)
    grown, _ = first.correlate(now=later(2), cluster=CLUSTER)
    assert sorted((f.dimension, f.value) for f in grown) == [("node_pool", "pool-a"), ("zone", "z1")]  # r1 is as said
    bigger = next(f for f in grown if f.dimension == "zone")
    assert bigger.finding_id == zone.finding_id and bigger.id != zone.id and bigger.detected_at == zone.detected_at
    assert set(zone.affected_nodes) < set(bigger.affected_nodes) and len(bigger.affected_nodes) == 6
    assert bigger.group_events == 6 and not bigger.cleared
    assert first.correlate(now=later(3), cluster=CLUSTER)[0] == []  # nothing new: nothing said
    first.on_anomaly(anomaly("n5", "node_down", status="resolved", at=later(3.5)))
    assert first.correlate(now=later(4), cluster=CLUSTER)[0] == []  # one back: the finding still names it
    first.on_anomaly(anomaly("n5", "node_down", at=later(4.5)))
    assert first.correlate(now=later(5), cluster=CLUSTER)[0] == []  # dark again: not new to the finding
    second = restart(downs, [*raised, *grown])
    assert second.correlate(now=later(6), cluster=CLUSTER)[0] == []  # the grown finding was read back
    restored = second.fleet.findings[("down_spike", "zone", "z1", "down")]
    assert restored.affected_nodes == bigger.affected_nodes


def test_an_episode_that_ended_unseen_is_said_as_recovered_when_a_live_core_would_have_said_it() -> None:
    """What fired and ended while no core ran is judged at the last moment a live core would have judged it:
    n2 went dark and came back with a new boot (the node_down ended inside its 60 s hold, the reboot outlived
    its 10 s crash-report wait: said, as what stood then, the reboot); n3 went dark 30 s only (inside the hold:
    a live core says nothing either); n4's containerd died and came back (said at once, live)."""
    inputs = [
        anomaly("n2", "node_down", at=later(0)),
        anomaly("n2", "unexpected_reboot", at=later(30)),
        anomaly("n2", "node_down", status="resolved", at=later(31)),
        anomaly("n2", "unexpected_reboot", status="resolved", at=later(50)),
        anomaly("n3", "node_down", at=later(0)),
        anomaly("n3", "node_down", status="resolved", at=later(30)),
        anomaly("n4", "service_down", subject="containerd", at=later(0)),
        anomaly("n4", "service_down", subject="containerd", status="resolved", at=later(5)),
    ]
    core = restart(inputs, [])
    assert core.open_nodes() == set()
    said = {d.node: d for d in core.recovered_verdicts(set(), now=later(120))}
    assert sorted(said) == ["n2", "n4"]
    for d in said.values():
        assert d.resolved and d.recovered and [r.action for r in d.recommended] == ["none"]
    assert said["n2"].anomaly_kinds == ("unexpected_reboot",)  # what stood when a live core would have judged
    assert set(said["n2"].anomaly_ids) == {inputs[0].id, inputs[1].id}  # the whole episode is named
    # when each episode ended (its last anomaly resolved), not when the restarted core said it
    assert (said["n2"].ended_at, said["n4"].ended_at) == (later(50), later(5))
    assert all(d.identified_at == later(120) for d in said.values())
    # a second restart that read them back says nothing again
    again = restart(inputs, list(said.values()))
    assert again.recovered_verdicts({i for d in said.values() for i in d.anomaly_ids}, now=later(200)) == []


def test_a_rack_that_went_dark_and_came_back_unseen_is_said_as_a_partition() -> None:
    """Rack r1 (n0-n3) dropped off the network for 90 s while no core ran. A live core said rack_partition for
    each of its nodes (no reboot); the restarted core judges the ended episodes at the moment a live core would
    have, and that moment had the whole rack dark: before, the peers were read as they are now (back), and each
    node was said as a lone node_crash — four machine crashes counted in the fleet's crash rate that never
    happened."""
    inputs = [anomaly(f"n{i}", "node_down", at=later(i * 0.2)) for i in range(4)]
    inputs += [anomaly(f"n{i}", "node_down", status="resolved", at=later(90 + i * 0.2)) for i in range(4)]
    live = make()
    for item in inputs[:4]:
        live.on_anomaly(item)
    assert {live.evaluate(f"{CLUSTER}/n{i}", now=later(80)).diagnosis.cause for i in range(4)} == {"rack_partition"}  # type: ignore[union-attr]

    core = restart(inputs, [])
    said = {d.node: d for d in core.recovered_verdicts(set(), now=later(120))}
    assert sorted(said) == ["n0", "n1", "n2", "n3"]
    assert {d.cause for d in said.values()} == {"rack_partition"}
    assert all(d.recovered and [r.action for r in d.recommended] == ["none"] for d in said.values())
    assert core.fleet.down_since == {} and core.fleet.dark_at == {}  # the rack is back: nothing left dark


def test_a_lone_node_that_went_dark_unseen_beside_a_rack_that_did_not_is_still_its_own_verdict() -> None:
    """Only n0 went dark (and came back with no reboot seen): no partition to borrow from its peers."""
    inputs = [anomaly("n0", "node_down", at=later(0)), anomaly("n0", "node_down", status="resolved", at=later(90))]
    core = restart(inputs, [])
    (said,) = core.recovered_verdicts(set(), now=later(120))
    assert said.cause != "rack_partition" and said.cause != "zone_partition"
