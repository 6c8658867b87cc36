"""A node whose placement is unknown (no zone, rack or node pool in the inventory) is not taken out of capacity:
its budget slot would count only against the cluster's, beside any number of nodes of its real zone, rack and
pool. Real nats-server, the real remediator, side effects counted at the Kubernetes emulator.

As deployed (the `deployed` fixture): the server runs deploy/nats/natsauth.py's per-role authorization, the
remediator connects under its role's credential and inbox, n1's restart is answered by the real agent code under
n1's own minted credential (it fails at the fake node's systemctl); no permission violation logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CommandTap,
    Deployed,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    serving_node,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats


async def test_a_node_of_unknown_placement_is_not_cordoned_until_the_inventory_places_it(
    deployed: Deployed, world: KubeWorld, tmp_path: Path
) -> None:
    """n1's inventory record has no zone, rack or pool; n3 has no inventory record at all; n2 is placed (zone z1,
    pool p). Each is diagnosed with a ladder that cordons. n2 is cordoned as before. n1's service restart (not a
    capacity step) goes on, but its cordon is held with a record that says what to fix; so is n3's. Before, both
    were cordoned, counted only against the cluster budget. Once the inventory places n1, its held ladder
    carries on and cordons it (held, not dropped)."""
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n1", cloud="alibaba", instance_id="i-n1")
    await add_inventory(nc, admin, "n2", zone="z1", node_pool="p", cloud="alibaba", instance_id="i-n2")
    tap = await CommandTap().watch(nc, "n1")
    # n1's kubelet restart fails at its node: its ladder goes on to the cordon
    async with serving_node(deployed, "n1", tmp_path, fail=True) as (fake, _agent):
        wide = {"max_count": 10}  # no budget in the way: only the placement decides
        settings = make_settings(
            deployed.remediator,
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
                nc, admin, diagnosis("n1", [("restart_service", "kubelet"), "cordon"], episode="ep-1")
            )
            await publish_diagnosis(nc, admin, diagnosis("n2", ["cordon"], episode="ep-2"))
            await publish_diagnosis(nc, admin, diagnosis("n3", ["cordon"], episode="ep-3"))

            async def decided() -> bool:
                records = await audit_records(nc, admin)
                return all(
                    any(r.node == n and r.action == "cordon" and r.phase in ("blocked", "started") for r in records)
                    for n in ("n1", "n2", "n3")
                )

            await wait_for(decided, timeout=30, what="each node's cordon blocked or started")
            await wait_for_record(nc, admin, node="n2", action="cordon", phase="succeeded")
            assert world.cordoned_nodes() == ["n2"]  # the placed node only
            assert [c.target for c in tap.commands] == ["kubelet"]  # the non-capacity step went on
            assert fake.restart_calls() == ["begin kubelet.service", "end kubelet.service"]  # asked at the node
            records = await audit_records(nc, admin)
            held = {r.node: r for r in records if r.action == "cordon" and r.phase == "blocked"}
            assert set(held) == {"n1", "n3"}, held
            for node, why in (("n1", "has no zone, rack or node pool"), ("n3", "has no inventory record")):
                assert why in held[node].reason and "label the Node" in held[node].reason, held[node].reason
                assert [c.name for c in held[node].checks if not c.passed] == ["budget.placement"]
            # the operator labels n1 and the inventory carries it: the held ladder carries on
            await add_inventory(nc, admin, "n1", zone="z1", node_pool="p", cloud="alibaba", instance_id="i-n1")
            await wait_for_record(nc, admin, node="n1", action="cordon", phase="succeeded")
        finally:
            await service.stop()
    assert world.cordoned_nodes() == ["n1", "n2"]
    records = await audit_records(nc, admin)
    assert not [r for r in records if r.node == "n3" and r.action == "cordon" and r.phase != "blocked"]
    assert deployed.violations() == []
