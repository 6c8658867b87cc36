"""One NATS serves several clusters, and the inventory bucket holds every cluster's Nodes (`node.<cluster>.<node>`).
A remediator serves one cluster: its view of the fleet (placements, domain sizes, instance ids, which nodes left)
must be its own cluster's. Before, it loaded and followed every cluster's records by node name alone: a node of
another cluster with the same name gave this cluster's node its instance id (a reboot went to the other
cluster's machine), its placement, and its deletion (the node "left the fleet"); and every other cluster's nodes
counted in this cluster's domain sizes (the percentage budgets). Real remediator service on a real nats-server
with the deployed per-role authorization; the reboot counted at the ECS emulator."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    Deployed,
    add_inventory,
    diagnosis,
    make_settings,
    publish_diagnosis,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats

OTHER = "c2"


async def _other_clusters_n1(deployed: Deployed) -> None:
    """c1's n1 (instance i-n1, zone z1, rack r1), and c2's node of the same name on another machine (i-n6, zone
    z9), with two more c2 nodes: the listing gives c2's keys after c1's."""
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n1", zone="z1", rack="r1", node_pool="p", cloud="alibaba", instance_id="i-n1")
    kv = await nc.jetstream().key_value(f"{admin.bucket_prefix}-inventory")
    for node, instance in (("n1", "i-n6"), ("m2", "i-m2"), ("m3", "i-m3")):
        record = NodeInventory(
            cluster=OTHER, node=node, zone="z9", rack="r9", node_pool="p", cloud="alibaba", instance_id=instance
        )
        await kv.put(inventory_key(OTHER, node), record.to_json())


async def test_a_reboot_goes_to_this_clusters_machine_not_another_clusters_node_of_the_same_name(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    await _other_clusters_n1(deployed)
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint))
    try:
        await publish_diagnosis(deployed.nc, deployed.admin, diagnosis("n1", ["reboot"]))
        call = await asyncio.wait_for(ecs.wait_for_call("RebootInstance"), timeout=20)
    finally:
        await service.stop()
    assert call.params["InstanceId"] == "i-n1"
    assert deployed.violations() == []


async def test_the_view_holds_this_clusters_nodes_only(deployed: Deployed, world: KubeWorld) -> None:
    nc, admin = deployed.nc, deployed.admin
    await _other_clusters_n1(deployed)
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
    try:
        view = service.view
        assert view.instance == {"n1": ("alibaba", "i-n1")}
        assert view.placement("n1").zone == "z1" and view.placement("n1").rack == "r1"
        sizes = view.sizes()
        assert (sizes.cluster, sizes.size("node_pool", "p"), sizes.size("zone", "z9")) == (1, 1, 0)

        # c2 deletes its n1 (followed by the watch); c1's n1 has not left the fleet. A later c1 record read
        # by the same watch is the barrier: the watch applies the bucket's changes in order.
        kv = await nc.jetstream().key_value(f"{admin.bucket_prefix}-inventory")
        await kv.delete(inventory_key(OTHER, "n1"))
        await kv.put(inventory_key(OTHER, "m4"), NodeInventory(cluster=OTHER, node="m4", zone="z9").to_json())
        await add_inventory(nc, admin, "n2", zone="z1", cloud="alibaba", instance_id="i-n2")

        async def barrier() -> bool:
            return "n2" in view.placements

        await wait_for(barrier, what="c1's n2 in the view")
        assert "n1" not in view.left and view.instance["n1"] == ("alibaba", "i-n1")
        assert "m4" not in view.placements and view.sizes().cluster == 2
    finally:
        await service.stop()


def _host_event(cluster: str, node: str, instance: str) -> CloudSystemEvent:
    now = datetime.now(tz=UTC)
    return CloudSystemEvent(
        cluster=cluster,
        node=node,
        cloud="alibaba",
        channel="api_history",
        provider_event_id=f"e-{cluster}-{node}",
        provider_event_type="SystemMaintenance.Reboot",
        action="reboot",
        cause="planned_maintenance",
        phase="scheduled",
        instance_id=instance,
        observed_at=now,
        not_before=now,
    )


async def test_another_clusters_sick_node_and_host_event_are_not_this_clusters(
    deployed: Deployed, world: KubeWorld
) -> None:
    """c2's n1 is diagnosed sick and has a host event: neither is c1's n1's (its storm counts, its drain ahead of
    a host event). The diagnosis is skipped as another cluster's; a c1 host event of n2 is the CLOUD barrier."""
    nc, admin = deployed.nc, deployed.admin
    await _other_clusters_n1(deployed)
    await add_inventory(nc, admin, "n2", zone="z1", cloud="alibaba", instance_id="i-n2")
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
    try:
        view = service.view
        other = diagnosis("n1", ["cordon"]).model_copy(update={"cluster": OTHER})
        await publish_diagnosis(nc, admin, other)
        await wait_for_record(nc, admin, node="n1", phase="skipped")
        js = nc.jetstream()
        for event in (_host_event(OTHER, "n1", "i-n6"), _host_event("c1", "n2", "i-n2")):
            await js.publish(cloud_subject(event.cluster, event.node, prefix=admin.prefix), event.to_json())

        async def barrier() -> bool:
            return bool(view.cloud.get("n2"))

        await wait_for(barrier, what="c1's host event of n2 in the view")
        assert "n1" not in view.sick_since and "n1" not in view.latest
        assert not view.cloud.get("n1")
    finally:
        await service.stop()
    assert not world.is_cordoned("n1")
