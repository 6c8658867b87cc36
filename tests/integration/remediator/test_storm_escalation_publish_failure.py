"""A storm's escalation whose AUDIT record could not be stored is recorded once AUDIT takes messages again.

The storm's key in nodeheal-control is what says "escalated" (the create decides which replica tells a person);
the escalation itself is the AUDIT record. The key was created and remembered before that record was
acknowledged: with AUDIT away (a stream without a leader: every publish fails), the record failed, the
diagnosis was nak'ed, and on every later pass the storm was "escalated already" (the key is there) — the
person was never told. The key is now kept with its record unsent, and the record is sent again by the next pass.
On a real nats-server with the deployed per-role authorization: the remediator under its role's credential and
inbox, AUDIT deleted and made again by admin (the provisioning Job's user)."""

from __future__ import annotations

import asyncio

import pytest

from nodeheal.runtime.provision import apply_topology
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    Deployed,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    start_service,
    wait_for,
)

pytestmark = [pytest.mark.nats, pytest.mark.slow]


@pytest.fixture
def world(bare_world: KubeWorld) -> KubeWorld:
    """The test adds its own nodes."""
    return bare_world


async def test_a_storm_escalation_whose_record_failed_is_recorded_when_audit_is_back(
    deployed: Deployed, world: KubeWorld
) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    for i in range(10):
        world.add_node(f"s{i}", zone="z1")
        await add_inventory(nc, topology_ready, f"s{i}", zone="z1", node_pool="p")
    settings = make_settings(deployed.remediator, kube_url=world.url, storm_threshold_pct=30, storm_min_unhealthy=3)
    service = await start_service(settings)
    try:
        await nc.jetstream().delete_stream(f"{topology_ready.stream_prefix}AUDIT")
        for node in [f"s{i}" for i in range(5)]:  # half the zone falls ill at once: a storm
            await publish_diagnosis(nc, topology_ready, diagnosis(node, ["cordon", "drain", "reboot"]))
        bucket = f"{topology_ready.bucket_prefix}-control"

        async def storm_key_written() -> bool:
            info = await nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.storm.>")
            return bool(info.state.subjects)

        await wait_for(storm_key_written, what="the storm's key")
        await asyncio.sleep(2.0)  # the ladders are retried every 0.5 s while AUDIT is away
        await apply_topology(nc.jetstream(), topology_ready.topology())

        async def escalated() -> bool:
            return any(r.action == "escalate" and "storm" in r.reason for r in await audit_records(nc, topology_ready))

        await wait_for(escalated, timeout=20.0, what="the storm's escalation in AUDIT")
        await asyncio.sleep(2.0)  # a repeat would come with the next retries
    finally:
        await service.stop()
    records = await audit_records(nc, topology_ready)
    escalations = [r for r in records if r.action == "escalate" and "storm" in r.reason]
    domains = [r.target for r in escalations]
    assert "storm:zone:z1" in domains, domains  # the zone (the pool and the cluster are in a storm too here)
    assert len(set(domains)) == len(domains), domains  # each storm escalated once
    assert deployed.violations() == []
