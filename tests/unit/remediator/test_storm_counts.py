"""The storm guard's unhealthy counts, kept as diagnoses arrive (`FleetView.unhealthy_counts`), against the counting
they replace (every sick node's placement, per decision: `FleetView.unhealthy` into `evaluate_storms`) — the same
verdicts through diagnoses, recoveries, re-diagnoses with older times, inventory moves and deletes, and the window
passing, so the storm guard decides exactly as before at a cost that no longer grows with the sick nodes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from nodeheal.remediator import policy
from nodeheal.remediator.settings import PolicySettings
from nodeheal.remediator.views import FleetView
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.inventory import NodeInventory

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
WINDOW_S = 60.0


def inventory(node: str, rng: random.Random) -> NodeInventory:
    return NodeInventory(
        cluster="c", node=node, zone=f"z{rng.randrange(3)}", rack=f"r{rng.randrange(12)}", node_pool=f"p{rng.randrange(2)}"
    )  # fmt: skip


def diagnosis(node: str, at: datetime, *, resolved: bool = False) -> Diagnosis:
    return Diagnosis(
        cluster="c", node=node, anomaly_ids=(f"a-{node}",), category="hardware", cause="node_crash",
        confidence=0.9, identified_at=at, resolved=resolved,
    )  # fmt: skip


def counted(view: FleetView, now: datetime) -> dict[tuple[policy.DomainKind, str], int]:
    """What evaluate_storms counted from `unhealthy()` before the counts were kept."""
    counts: dict[tuple[policy.DomainKind, str], int] = {}
    for placement in view.unhealthy(now=now, window_s=WINDOW_S).values():
        for key in placement.domains():
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_kept_counts_decide_as_the_counting_over_every_sick_node() -> None:
    rng = random.Random(19)
    view = FleetView()
    nodes = [f"n{i}" for i in range(120)]
    for node in nodes[:100]:  # 20 nodes are diagnosed before the inventory knows them
        view.on_inventory(inventory(node, rng))
    pol = PolicySettings(storm_threshold_pct=20, storm_min_unhealthy=3, storm_resume_pct=5)
    previously: frozenset[tuple[policy.DomainKind, str]] = frozenset()
    now = T0
    storms_seen = 0
    for step in range(3000):
        now += timedelta(seconds=rng.choice((0.0, 0.1, 0.5, 2.0)))
        node = rng.choice(nodes)
        roll = rng.random()
        if roll < 0.55:
            view.on_diagnosis(diagnosis(node, now - timedelta(seconds=rng.choice((0.0, 0.0, 5.0, 90.0)))))
        elif roll < 0.8:
            view.on_diagnosis(diagnosis(node, now, resolved=True))
        elif roll < 0.9:
            view.on_inventory(inventory(node, rng))  # a new record: it may have moved
        elif roll < 0.93:
            view.on_inventory_delete("c", node)
        if step % 3 == 0:  # decisions come between some of the diagnoses, not after each
            kept = view.unhealthy_counts(now=now, window_s=WINDOW_S)
            assert kept == counted(view, now), step
            sizes = view.sizes()
            verdicts = policy.evaluate_storms(counts=kept, sizes=sizes, previously=previously, policy=pol)
            before = policy.evaluate_storms(
                unhealthy=view.unhealthy(now=now, window_s=WINDOW_S), sizes=sizes, previously=previously, policy=pol
            )
            assert verdicts == before, step
            previously = frozenset(k for k, v in verdicts.items() if v.in_storm)
            storms_seen += len(previously)
    assert storms_seen > 0  # the guard was exercised, not only calm domains


def test_the_window_passing_empties_the_counts() -> None:
    rng = random.Random(7)
    view = FleetView()
    for i in range(10):
        view.on_inventory(inventory(f"n{i}", rng))
        view.on_diagnosis(diagnosis(f"n{i}", T0))
    assert view.unhealthy_counts(now=T0, window_s=WINDOW_S)[("cluster", "*")] == 10
    view.on_diagnosis(diagnosis("n0", T0 + timedelta(seconds=50)))  # diagnosed again: still sick after the window
    assert view.unhealthy_counts(now=T0 + timedelta(seconds=61), window_s=WINDOW_S) == counted(
        view, T0 + timedelta(seconds=61)
    )
    assert view.unhealthy_counts(now=T0 + timedelta(seconds=61), window_s=WINDOW_S)[("cluster", "*")] == 1
    assert view.unhealthy_counts(now=T0 + timedelta(seconds=200), window_s=WINDOW_S) == {}
