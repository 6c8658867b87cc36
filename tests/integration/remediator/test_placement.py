"""A node whose placement is unknown (no zone, rack or node pool in the inventory) is not taken out of capacity:
its budget slot would count only against the cluster's, beside any number of nodes of its real zone, rack and
pool. Real nats-server, the real remediator, side effects counted at the Kubernetes emulator."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    Agent,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats


async def test_a_node_of_unknown_placement_is_not_cordoned_until_the_inventory_places_it(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    """n1's inventory record has no zone, rack or pool; n3 has no inventory record at all; n2 is placed (zone z1,
    pool p). Each is diagnosed with a ladder that cordons. n2 is cordoned as before. n1's service restart (not a
    capacity step) goes on, but its cordon is held with a record that says what to fix; so is n3's. Before, both
    were cordoned, counted only against the cluster budget. Once the inventory places n1, its held ladder
    carries on and cordons it (held, not dropped)."""
    await add_inventory(nc, topology_ready, "n1", cloud="alibaba", instance_id="i-n1")
    await add_inventory(nc, topology_ready, "n2", zone="z1", node_pool="p", cloud="alibaba", instance_id="i-n2")
    agent = Agent(ok=False)  # n1's kubelet restart fails: its ladder goes on to the cordon
    await agent.serve(nc, topology_ready, "n1")
    wide = {"max_count": 10}  # no budget in the way: only the placement decides
    settings = make_settings(
        topology_ready,
        kube_url=world.url,
        storm_threshold_pct=100,
        storm_min_unhealthy=100,
        cluster_budget=wide,
        zone_budget=wide,
        rack_budget=wide,
        pool_budget=wide,
    )
    service = await start_service(settings)
    try:
        await publish_diagnosis(
            nc, topology_ready, diagnosis("n1", [("restart_service", "kubelet"), "cordon"], episode="ep-1")
        )
        await publish_diagnosis(nc, topology_ready, diagnosis("n2", ["cordon"], episode="ep-2"))
        await publish_diagnosis(nc, topology_ready, diagnosis("n3", ["cordon"], episode="ep-3"))

        async def decided() -> bool:
            records = await audit_records(nc, topology_ready)
            return all(
                any(r.node == n and r.action == "cordon" and r.phase in ("blocked", "started") for r in records)
                for n in ("n1", "n2", "n3")
            )

        await wait_for(decided, timeout=30, what="each node's cordon blocked or started")
        await wait_for_record(nc, topology_ready, node="n2", action="cordon", phase="succeeded")
        assert world.cordoned_nodes() == ["n2"]  # the placed node only
        assert [c.target for c in agent.commands] == ["kubelet"]  # the non-capacity step went on
        records = await audit_records(nc, topology_ready)
        held = {r.node: r for r in records if r.action == "cordon" and r.phase == "blocked"}
        assert set(held) == {"n1", "n3"}, held
        for node, why in (("n1", "has no zone, rack or node pool"), ("n3", "has no inventory record")):
            assert why in held[node].reason and "label the Node" in held[node].reason, held[node].reason
            assert [c.name for c in held[node].checks if not c.passed] == ["budget.placement"]
        # the operator labels n1 and the inventory carries it: the held ladder carries on
        await add_inventory(nc, topology_ready, "n1", zone="z1", node_pool="p", cloud="alibaba", instance_id="i-n1")
        await wait_for_record(nc, topology_ready, node="n1", action="cordon", phase="succeeded")
    finally:
        await service.stop()
    assert world.cordoned_nodes() == ["n1", "n2"]
    records = await audit_records(nc, topology_ready)
    assert not [r for r in records if r.node == "n3" and r.action == "cordon" and r.phase != "blocked"]
