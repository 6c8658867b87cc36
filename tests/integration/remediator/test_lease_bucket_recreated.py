"""The leases bucket created anew (JetStream rebuilt after a disaster): its revisions start again at 1.

The real node agent (its fence kept in its state directory, as deployed) executed a restart under a lease of
the old bucket, whose revision had grown. The bucket is then deleted and created again, and a new fault comes.
Before, the agent refused the new restart for good (`lease revision 1 is older than revision N this agent
already executed`) and the ladder escalated: after a rebuild no node-local repair ran anywhere in the fleet
until someone deleted every node's fence file. The lease now carries its bucket's creation time
(`NodeCommand.lease_epoch`), so the agent starts a new fence and the restart runs and is verified. Side effects
counted at the node (its systemctl's log)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodeheal.agent.app import NodeAgent
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import agent_nats, per_role_server, role_nats, violations
from tests.integration.remediator.harness import (
    CLUSTER,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    real_agent_with_a_dead_kubelet,
    short_leases,
    start_service,
    wait_for_record,
)
from tests.unit.cloud_events.agent_fakenode import statvfs_with

pytestmark = pytest.mark.nats


async def test_a_lease_bucket_created_anew_does_not_fence_out_every_repair(tmp_path: Path) -> None:
    """As deployed: the per-role server of deploy/nats/natsauth.py, the remediator under its role's credential,
    the agent under its node's own; the bucket is made again by `admin` (the provisioning Job's credential)."""
    name = "epoch-1"
    async with per_role_server(tmp_path, "remediator", nodes=((CLUSTER, name),)) as (server, nc, admin):
        fake, settings = real_agent_with_a_dead_kubelet(agent_nats(tmp_path, server.url, CLUSTER, name), name, tmp_path)
        agent = NodeAgent(settings, statvfs=statvfs_with({"root": (50, 10)}))  # type: ignore[arg-type]
        await agent.start()
        probes = asyncio.create_task(agent.run_probes())
        leases = await nc.jetstream().key_value(f"{admin.bucket_prefix}-leases")
        for i in range(20):  # the old bucket has been in use: its revisions are well past 1
            await leases.put(f"other.node-{i}", b"{}")
        remediator = role_nats(tmp_path, server.url, "remediator")
        first, second = diagnosis(name, [("restart_service", "kubelet"), "escalate"]), None
        try:
            async with KubeWorld() as world:
                world.add_node(name, zone="z1")
                service = await start_service(make_settings(remediator, kube_url=world.url))
                try:
                    await publish_diagnosis(nc, admin, first)
                    await wait_for_record(nc, admin, diagnosis_id=first.id, phase="verified", timeout=30)
                finally:
                    await service.stop()
                old_fence = agent.executor.last_revision
                assert old_fence > 20
                await short_leases(nc, admin, ttl=30)  # deleted and created again: revisions restart at 1
                fake.set_unit("kubelet.service", "failed")
                service = await start_service(make_settings(remediator, kube_url=world.url))
                try:
                    second = diagnosis(name, [("restart_service", "kubelet"), "escalate"])
                    await publish_diagnosis(nc, admin, second)
                    await wait_for_record(nc, admin, diagnosis_id=second.id, phase="verified", timeout=30)
                finally:
                    await service.stop()
        finally:
            await agent.stop()
            await probes
        records = [r for r in await audit_records(nc, admin) if r.node == name]
    assert fake.restarts_logged() == ["kubelet.service", "kubelet.service"]
    assert agent.executor.fenced == 0
    assert agent.executor.last_revision < old_fence  # a new fence, of the new bucket
    assert [r for r in records if r.action == "escalate"] == []
    assert violations(tmp_path) == []
