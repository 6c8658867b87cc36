"""The inventory's group index is kept up to date per inventory change (put, change, delete) instead of
re-grouping the whole fleet per anomaly / per correlation run: the index after any sequence of changes
equals one built from the final inventory, and the fleet tests computed from it equal the plain
definition (every group's members counted from the inventory)."""

from __future__ import annotations

import random
from datetime import timedelta

from nodeheal.diagnoser.correlation import (
    DIMENSIONS,
    CorrelationConfig,
    FleetEvent,
    GroupIndex,
    binomial_sf,
    down_spikes,
    group_stats,
    group_value,
)
from nodeheal.diagnoser.kb import default_matcher
from nodeheal.diagnoser.kpi import fleet_kpis
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.diagnoser.trend import TimedEvent, TrendConfig, sudden_rises
from nodeheal.schemas import NodeInventory
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly, inventory, later


def _random_inventory(rng: random.Random, name: str) -> NodeInventory:
    return inventory(
        name,
        rack=f"r{rng.randrange(6)}",
        zone=f"z{rng.randrange(2)}",
        kernel=rng.choice(["k1", "k2", "k3"]),
        model=rng.choice(["m1", "m2"]),
    )


def _churn(seed: int) -> tuple[GroupIndex, dict[str, NodeInventory]]:
    """Puts, moves, identical re-puts and deletes in random order, applied to an index and a dict."""
    rng = random.Random(seed)
    index = GroupIndex()
    inv: dict[str, NodeInventory] = {}
    for _ in range(600):
        name = f"n{rng.randrange(80)}"
        roll = rng.random()
        if roll < 0.15:
            index.remove(name)
            inv.pop(name, None)
        elif roll < 0.3 and name in inv:
            index.put(name, inv[name])  # the inventory watch re-delivers an unchanged record
        else:
            inv[name] = _random_inventory(rng, name)
            index.put(name, inv[name])
    return index, inv


def _members(index: GroupIndex) -> dict[tuple[str, str], set[str]]:
    return {g: set(m) for g, m in index.members.items()}


def _plain_group_stats(events: list[FleetEvent], inv: dict[str, NodeInventory], scope: str) -> list[tuple]:
    """The definition: every group of the inventory, its members counted one by one."""
    counted = [e for e in events if e.scope == scope and e.node in inv]
    if not inv or not counted:
        return []
    cfg = CorrelationConfig()
    groups: dict[tuple[str, str], list[str]] = {}
    for name, record in inv.items():
        for d in DIMENSIONS:
            v = group_value(record, d)
            if v is not None:
                groups.setdefault((d, v), []).append(name)
    tested = {k: v for k, v in groups.items() if cfg.min_group_size <= len(v) < len(inv)}
    by_node: dict[str, int] = {}
    for e in counted:
        by_node[e.node] = by_node.get(e.node, 0) + 1
    tests = max(1, sum(1 for v in tested.values() if sum(1 for n in v if n in by_node) >= cfg.min_nodes))
    out = []
    for (d, v), nodes in sorted(tested.items()):
        x = sum(by_node.get(n, 0) for n in nodes)
        p = binomial_sf(x, len(counted), len(nodes) / len(inv))
        out.append((d, v, x, len(nodes), p, tests, tuple(sorted(n for n in nodes if n in by_node))))
    return out


def test_index_kept_up_to_date_equals_one_built_from_the_final_inventory() -> None:
    for seed in range(5):
        index, inv = _churn(seed)
        rebuilt = GroupIndex.of(inv)
        assert _members(index) == _members(rebuilt)
        assert index.groups_of == rebuilt.groups_of
        assert len(index) == len(inv)
        assert all(members for members in index.members.values())  # an emptied group is gone


def test_fleet_tests_from_the_kept_index_match_the_definition() -> None:
    for seed in range(5):
        index, inv = _churn(seed)
        rng = random.Random(seed)
        names = [*sorted(inv), "not-in-inventory"]
        events = [FleetEvent(node=rng.choice(names), scope=rng.choice(["any", "bucket:b1"])) for _ in range(40)]
        for scope in ("any", "bucket:b1"):
            stats = group_stats(events=events, inventory=inv, scope=scope, groups=index)
            got = [
                (s.dimension, s.value, s.group_events, s.group_nodes, s.p_value, s.tests, s.affected_nodes)
                for s in stats
            ]
            assert got == _plain_group_stats(events, inv, scope)
        down = rng.sample(names, 30)
        cfg = CorrelationConfig(spike_fraction=0.2)
        assert down_spikes(down=down, inventory=inv, config=cfg, groups=index) == down_spikes(
            down=down, inventory=inv, config=cfg
        )


def test_a_node_moved_to_another_rack_counts_there_and_its_darkness_moves_with_it() -> None:
    diag = Diagnoser(matcher=default_matcher())
    for rack in ("r1", "r2"):
        for i in range(4):
            diag.on_inventory(inventory(f"{rack}-n{i}", rack=rack, zone="z1"))
    key = f"{CLUSTER}/r1-n0"
    diag.on_anomaly(anomaly("r1-n0", "node_down", at=later(0)))
    assert diag.fleet.peer_count(key, "rack") == 4
    assert diag.fleet.burst(key, "rack", gap=diag.config.decision.burst_window) == (key,)
    diag.on_inventory(inventory("r1-n0", rack="r2", zone="z1"))  # the machine was re-racked
    assert diag.fleet.peer_count(key, "rack") == 5
    assert sorted(diag.fleet.peers(key, "rack")) == sorted([key] + [f"{CLUSTER}/r2-n{i}" for i in range(4)])
    assert diag.fleet.peer_count(f"{CLUSTER}/r1-n1", "rack") == 3
    assert diag.fleet.dark_domains().get(("rack", "r2")) == [(later(0), key)]
    assert not diag.fleet.dark_domains().get(("rack", "r1"))
    # an unchanged record re-delivered by the inventory watch changes nothing
    diag.on_inventory(inventory("r1-n0", rack="r2", zone="z1"))
    assert diag.fleet.peer_count(key, "rack") == 5
    diag.forget_inventory(CLUSTER, "r1-n0")
    assert diag.fleet.peer_count(f"{CLUSTER}/r2-n1", "rack") == 4
    assert diag.fleet.peers(key, "rack") == [key]  # no inventory: a domain of its own


def test_kpis_from_the_kept_schedulable_set_equal_the_whole_inventory_walk() -> None:
    """The schedulable count is kept per inventory change (Ready / cordoned flips, nodes leaving) and
    per node going down / coming back: equal to walking the whole inventory, after every change."""
    rng = random.Random(5)
    diag = Diagnoser(matcher=default_matcher())
    names = [f"n{i}" for i in range(40)]
    for step in range(400):
        name = rng.choice(names)
        roll = rng.random()
        if roll < 0.1:
            diag.forget_inventory(CLUSTER, name)
        elif roll < 0.55:
            record = _random_inventory(rng, name).model_copy(
                update={"ready": rng.choice([True, False, None]), "unschedulable": rng.random() < 0.3}
            )
            diag.on_inventory(record)
        elif roll < 0.8:
            diag.on_anomaly(anomaly(name, "node_down", at=later(step)))
        else:
            diag.on_anomaly(anomaly(name, "node_down", at=later(step), status="resolved", onset=later(step - 1)))
        got = diag.kpis(now=later(step))
        want = fleet_kpis(
            inventory=diag.fleet.inventory, down=diag.fleet.down_since.keys(), crash_times=(), now=later(step)
        )
        assert (got.nodes, got.schedulable, got.online) == (want.nodes, want.schedulable, want.online)
        assert got.schedulable_rate == want.schedulable_rate


def test_sudden_rises_from_the_kept_index_equal_grouping_each_event_from_its_record() -> None:
    now = later(7 * 24 * 3600)
    cfg = TrendConfig(min_events=3, min_ratio=2.0)
    found = 0
    for seed in range(5):
        index, inv = _churn(seed)
        rng = random.Random(seed)
        names = [*sorted(inv), "not-in-inventory"]
        events = [
            TimedEvent(
                node=rng.choice(names[:8]) if rng.random() < 0.5 else rng.choice(names),
                scope=rng.choice(["any", "bucket:b1"]),
                at=now - timedelta(seconds=rng.choice([rng.uniform(0, 3500), rng.uniform(3600, 7 * 24 * 3600)])),
            )
            for _ in range(200)
        ]
        plain = sudden_rises(events=events, inventory=inv, now=now, config=cfg)
        assert sudden_rises(events=events, inventory=inv, now=now, config=cfg, groups=index) == plain
        found += len(plain)
    assert found  # the comparison covered groups that rise, not only empty answers
