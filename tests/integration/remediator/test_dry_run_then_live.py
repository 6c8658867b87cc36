"""The shipped configuration starts in dry run (`POLICY__DRY_RUN=true`), so every installation switches to live
with diagnoses in flight. A ladder whose cordon and drain ran in dry run and whose reboot was held (here by the
disruption rate) is redelivered to the live remediator: it must cordon and drain for real before it reboots.
Before, the live ladder took the dry-run `succeeded` records for done and rebooted a node it had never cordoned or
drained, its pod still on it (found by a read-only review). On a real nats-server with the deployed per-role
authorization: both remediators under the remediator role's credential and inbox."""

from __future__ import annotations

import asyncio

import pytest

from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    Deployed,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    start_service,
    wait_for_record,
)

pytestmark = pytest.mark.nats


async def test_a_ladder_begun_in_dry_run_cordons_and_drains_for_real_before_its_live_reboot(
    deployed: Deployed, bare_world: KubeWorld, ecs: EcsEmulator
) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    world = bare_world
    world.add_node("n1", zone="z1")
    world.add_pod("web-1", node="n1", labels={"app": "web"})
    await add_inventory(nc, topology_ready, "n1", zone="z1", node_pool="p", cloud="alibaba", instance_id="i-n1")
    calm = {"storm_threshold_pct": 100, "storm_min_unhealthy": 100}
    dry = make_settings(
        deployed.remediator,
        kube_url=world.url,
        ecs_endpoint=ecs.endpoint,
        dry_run=True,
        disruptive_per_minute=1,
        **calm,
    )
    service = await start_service(dry)
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["cordon", "drain", "reboot"]))
        await wait_for_record(nc, topology_ready, action="reboot", phase="blocked")
    finally:
        await service.stop()
    assert world.cordoned_nodes() == [] and ecs.calls == []  # the dry run touched nothing
    live = make_settings(
        deployed.remediator,
        kube_url=world.url,
        ecs_endpoint=ecs.endpoint,
        dry_run=False,
        disruptive_per_minute=10,
        **calm,
    )
    service = await start_service(live)
    try:
        async with Probes(nc, topology_ready, "n1"):
            call = await asyncio.wait_for(ecs.wait_for_call("RebootInstance"), timeout=30)
            cordoned_at_reboot = world.is_cordoned("n1")
            pods_at_reboot = world.pods_on("n1")
    finally:
        await service.stop()
    assert call.params.get("InstanceId") == "i-n1"
    assert cordoned_at_reboot and pods_at_reboot == []
    live_records = [(r.action, r.phase) for r in await audit_records(nc, topology_ready) if not r.dry_run]
    assert live_records[:6] == [
        ("cordon", "intent"), ("cordon", "started"), ("cordon", "succeeded"),
        ("drain", "intent"), ("drain", "started"), ("drain", "succeeded"),
    ]  # fmt: skip
    assert deployed.violations() == []
