"""The node_down hold belongs to the failure domain (issue 13 item 8): a rack that goes dark over
seconds or minutes is judged as one set — a partition, no reboot — and a lone dark node is a crash.

Driven like the service drives the core: anomalies arrive at their times, held verdicts are revisited
every 0.5 s, and every diagnosis the core hands out is what would be published."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from nodeheal.diagnoser.kb import default_matcher
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.schemas import Anomaly, Diagnosis
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly, inventory, later

RACK = 40


def fleet() -> Diagnoser:
    diag = Diagnoser(matcher=default_matcher())
    for rack in range(6):
        for i in range(RACK):
            diag.on_inventory(inventory(f"r{rack}-n{i}", rack=f"r{rack}", zone=f"z{rack % 2}"))
    return diag


def drive(diag: Diagnoser, arrivals: list[tuple[float, Anomaly]], *, until_s: float) -> list[Diagnosis]:
    """Feed anomalies at their second; revisit held nodes every 0.5 s (as `DiagnoserRuntime.tick`)."""
    published: list[Diagnosis] = []
    held: dict[str, float] = {}
    pending = sorted(arrivals, key=lambda x: x[0])
    t = 0.0
    while t <= until_s:
        touched: set[str] = set()
        while pending and pending[0][0] <= t:
            touched |= diag.on_anomaly(pending.pop(0)[1])
        touched |= {k for k, due in held.items() if due <= t}
        for key in sorted(touched):
            outcome = diag.evaluate(key, now=later(t))
            if outcome.hold_until is not None:
                held[key] = (outcome.hold_until - later(0)).total_seconds()
                continue
            held.pop(key, None)
            if outcome.diagnosis is not None:
                published.append(outcome.diagnosis)
        t += 0.5
    return published


def spread(nodes: list[str], *, over_s: float, seed: int, start_s: float = 10.0) -> list[tuple[float, Anomaly]]:
    """Dark nodes arriving evenly over `over_s` with ±40 % jitter of the gap, in random order."""
    rng = random.Random(seed)
    order = nodes[:]
    rng.shuffle(order)
    gap = over_s / max(1, len(order) - 1)
    out = []
    for i, node in enumerate(order):
        at = start_s + i * gap + rng.uniform(-0.4, 0.4) * gap
        out.append((at, anomaly(node, "node_down", at=later(at), onset=later(at - 15))))
    return out


def reboot_ladders(published: list[Diagnosis]) -> list[Diagnosis]:
    return [d for d in published if d.cause == "node_crash" or any(r.action == "reboot" for r in d.recommended)]


@pytest.mark.parametrize("over_s", [10.0, 60.0, 150.0])
@pytest.mark.parametrize("seed", range(4))
def test_a_rack_going_dark_over_time_reboots_none_of_its_nodes(over_s: float, seed: int) -> None:
    diag = fleet()
    rack = [f"r1-n{i}" for i in range(RACK)]
    published = drive(diag, spread(rack, over_s=over_s, seed=seed), until_s=over_s + 300)
    assert reboot_ladders(published) == []
    last = {d.node: d for d in published}
    assert set(last) == set(rack)  # every node diagnosed, once as the set
    assert {d.cause for d in last.values()} == {"rack_partition"}
    assert all([r.action for r in d.recommended] == ["escalate"] for d in last.values())
    assert len(published) == RACK  # judged together: no first verdict that had to be corrected


@pytest.mark.parametrize("second_after_s", [6.0, 12.0, 20.0, 30.0])
@pytest.mark.parametrize("seed", range(3))
def test_a_rack_whose_second_node_goes_dark_seconds_after_the_first_gets_no_crash(
    second_after_s: float, seed: int
) -> None:
    # one port, then a pause of `second_after_s`, then the rest of the switch over the next 20 s: the
    # first node's hold must outlast the pause (a fixed 5 s hold gave it a node_crash and a reboot ladder)
    diag = fleet()
    rack = [f"r1-n{i}" for i in range(RACK)]
    first = (10.0, anomaly(rack[0], "node_down", at=later(10), onset=later(-5)))
    second_at = 10.0 + second_after_s
    rest = spread(rack[1:], over_s=20.0, seed=seed, start_s=second_at)
    published = drive(diag, [first, *rest], until_s=second_at + 300)
    assert reboot_ladders(published) == []
    assert {d.node for d in published} == set(rack)
    assert {d.cause for d in published} == {"rack_partition"} and len(published) == RACK


def test_a_lone_dark_node_is_a_crash_after_the_hold() -> None:
    diag = fleet()
    published = drive(diag, [(10.0, anomaly("r2-n7", "node_down", at=later(10)))], until_s=120)
    assert [(d.node, d.cause) for d in published] == [("r2-n7", "node_crash")]
    # node_down_hold = 60 s after detection: known well within the 5-minute budget
    assert published[0].identified_at == later(70)
    assert any(r.action == "reboot" for r in published[0].recommended)


def test_two_unrelated_crashes_in_one_rack_are_held_longer_then_each_a_crash() -> None:
    diag = fleet()
    arrivals = [
        (10.0, anomaly("r3-n1", "node_down", at=later(10))),
        (14.0, anomaly("r3-n9", "node_down", at=later(14))),
    ]
    published = drive(diag, arrivals, until_s=120)
    assert sorted((d.node, d.cause) for d in published) == [("r3-n1", "node_crash"), ("r3-n9", "node_crash")]
    # the rack might have been going dark: each waited its own hold (longer than the quiet after the second)
    assert sorted(d.identified_at for d in published) == [later(70), later(74)]


def test_the_hold_is_bounded_while_a_domain_keeps_going_dark() -> None:
    diag = fleet()
    zone_nodes = [f"r{r}-n{i}" for r in (0, 2, 4) for i in range(RACK)]  # zone z0, 120 nodes
    # a zone dying very slowly: one node every 5 s for 10 minutes; nodes are judged at most 240 s in
    arrivals = spread(zone_nodes, over_s=600, seed=1)
    published = drive(diag, arrivals, until_s=400)
    first_at = min(t for t, _ in arrivals)
    assert published, "nothing judged within the bound"
    assert min(d.identified_at for d in published) <= later(first_at + 240.5)
    assert reboot_ladders(published) == []


def test_an_expected_node_down_does_not_hold_its_rack() -> None:
    diag = fleet()
    diag.on_anomaly(anomaly("r4-n0", "node_down", at=later(0), expected=True))
    published = drive(diag, [(10.0, anomaly("r4-n1", "node_down", at=later(10)))], until_s=90)
    assert [(d.node, d.cause, d.identified_at) for d in published] == [("r4-n1", "node_crash", later(70))]


def test_agent_outage_on_a_reachable_node_is_agent_down_never_a_reboot() -> None:
    diag = fleet()
    diag.on_anomaly(anomaly("r5-n3", "service_down", subject="nodeheal-agent", at=later(1)))
    out = diag.evaluate(f"{CLUSTER}/r5-n3", now=later(1) + timedelta(milliseconds=10))
    assert out.diagnosis is not None
    d = out.diagnosis
    assert (d.cause, d.category) == ("agent_down", "software")
    assert [(r.action, r.target) for r in d.recommended] == [("restart_agent", "nodeheal-agent"), ("escalate", None)]


def test_a_rack_that_goes_dark_at_once_is_named_without_waiting_for_quiet() -> None:
    diag = fleet()
    rack = [f"r1-n{i}" for i in range(RACK)]
    arrivals = spread(rack, over_s=2.0, seed=3)
    published = drive(diag, arrivals, until_s=60)
    assert {d.cause for d in published} == {"rack_partition"} and len(published) == RACK
    # the arrival that makes it a partition releases the held verdicts: no 15 s wait for quiet
    assert max(d.identified_at for d in published) <= later(max(t for t, _ in arrivals) + 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_nodes_with_an_earlier_resolved_episode_are_held_like_the_others(seed: int) -> None:
    """In a large fleet many nodes have had an episode today (a high load, a full disk) that resolved. The hold was
    given only to a node with no diagnosis at all: a node whose last diagnosis was a resolved one was judged at
    once when it went dark, so the first such nodes of a rack going dark port by port (before the rack was a
    partition) got `node_crash` and a reboot ladder. Now a resolved episode counts as none."""
    diag = fleet()
    rack = [f"r1-n{i}" for i in range(RACK)]
    earlier: list[tuple[float, Anomaly]] = []
    for node in rack[:8]:
        earlier.append((0.5, anomaly(node, "high_load", at=later(0.5))))
        earlier.append((2.0, anomaly(node, "high_load", at=later(2.0), status="resolved", onset=later(0.5))))
    published = drive(diag, earlier + spread(rack, over_s=60.0, seed=seed), until_s=400)
    assert {d.cause for d in published if d.time < later(5)} == {"high_load"}  # the earlier episodes
    assert reboot_ladders([d for d in published if d.time >= later(5)]) == []
    last = {d.node: d for d in published}
    assert {last[n].cause for n in rack} == {"rack_partition"}
