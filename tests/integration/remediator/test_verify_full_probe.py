"""The remediator verifies a repair on a *full* agent probe newer than the action: the heartbeats an agent
sends between its full probes carry no disk or service data and never verify. Real nats-server, KubeWorld
over HTTP, the remediator service."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    Agent,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    publish_probe,
    start_service,
    wait_for_record,
)
from tests.support.broker import remove_topology

pytestmark = pytest.mark.nats


async def test_heartbeats_never_verify_a_repair_and_the_next_full_probe_does(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    agent = Agent()
    await agent.serve(nc, topology_ready, "n1")
    await add_inventory(nc, topology_ready, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
    settings = make_settings(topology_ready, kube_url=world.url).model_copy(update={"verify_timeout_s": 60.0})
    service = await start_service(settings)
    try:
        async with Probes(nc, topology_ready, "n1", full=False):  # healthy heartbeats every 0.2 s, no full probe
            await publish_diagnosis(nc, topology_ready, diagnosis("n1", [("restart_service", "kubelet"), "escalate"]))
            succeeded = await wait_for_record(nc, topology_ready, phase="succeeded")
            await asyncio.sleep(2.0)  # ten heartbeats newer than the action
            phases = [r.phase for r in await audit_records(nc, topology_ready) if r.action_id == succeeded.action_id]
            assert "verified" not in phases and "failed" not in phases, phases
            await publish_probe(nc, topology_ready, "n1")  # the agent's full probe after the command
            verified = await wait_for_record(nc, topology_ready, phase="verified")
    finally:
        await service.stop()
    assert verified.action_id == succeeded.action_id
    assert [c.target for c in agent.commands] == ["kubelet"]


async def test_only_heartbeats_within_the_limit_fail_verification_and_say_so(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    agent = Agent()
    await agent.serve(nc, topology_ready, "n1")
    await add_inventory(nc, topology_ready, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
    service = await start_service(make_settings(topology_ready, kube_url=world.url))  # verify_timeout_s=4
    try:
        async with Probes(nc, topology_ready, "n1", full=False):
            await publish_diagnosis(nc, topology_ready, diagnosis("n1", [("restart_service", "kubelet"), "escalate"]))
            failed = await wait_for_record(nc, topology_ready, phase="failed")
    finally:
        await service.stop()
    assert "only heartbeats since the action, no full probe yet" in (failed.error or ""), failed


async def test_a_repair_is_verified_on_a_partitioned_probes_stream_whatever_the_remediators_setting(
    nats_settings: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    """PROBES partitioned (production: 64) stores a node's probes as `<subject>.<p>`; the production overlay
    told the detector and the prober the count, not the remediator, whose verifier then filtered on subjects
    that never exist and could verify no repair. The verifier reads the layout from the stream itself."""
    partitioned = nats_settings.model_copy(update={"probe_partitions": 4})
    js = nc.jetstream()
    await apply_topology(js, partitioned.topology())
    try:
        agent = Agent()
        await agent.serve(nc, partitioned, "n1")
        await add_inventory(nc, partitioned, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
        settings = make_settings(nats_settings, kube_url=world.url).model_copy(update={"verify_timeout_s": 30.0})
        assert settings.nats.probe_partitions == 0  # the remediator is not told
        service = await start_service(settings)
        try:
            await publish_diagnosis(nc, partitioned, diagnosis("n1", [("restart_service", "kubelet"), "escalate"]))
            succeeded = await wait_for_record(nc, partitioned, phase="succeeded")
            await publish_probe(nc, partitioned, "n1")  # the agent's full probe after the command
            verified = await wait_for_record(nc, partitioned, phase="verified")
        finally:
            await service.stop()
        assert verified.action_id == succeeded.action_id
    finally:
        await remove_topology(js, partitioned)
