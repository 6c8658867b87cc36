"""The remediator verifies a repair on a *full* agent probe newer than the action: the heartbeats an agent
sends between its full probes carry no disk or service data and never verify. Real nats-server, KubeWorld
over HTTP, the remediator service.

As deployed (the `deployed` fixture): the server runs deploy/nats/natsauth.py's per-role authorization, the
remediator connects under its role's credential and inbox, the node's restart is answered by the real agent code
under the node's own minted credential (counted at the fake node's systemctl; the commands on the wire seen by
an `admin` tap). The probes are the test's own (heartbeats only, then one full probe), sent on a connection with
the node's credential, where only that node may send them. No permission violation logged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodeheal.runtime.provision import apply_topology
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CommandTap,
    Deployed,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    publish_probe,
    serving_node,
    start_service,
    wait_for_record,
)

pytestmark = pytest.mark.nats


async def test_heartbeats_never_verify_a_repair_and_the_next_full_probe_does(
    deployed: Deployed, world: KubeWorld, tmp_path: Path
) -> None:
    nc, admin = deployed.nc, deployed.admin
    tap = await CommandTap().watch(nc, "n1")
    await add_inventory(nc, admin, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
    settings = make_settings(deployed.remediator, kube_url=world.url).model_copy(update={"verify_timeout_s": 60.0})
    async with (
        serving_node(deployed, "n1", tmp_path, probes=False) as (fake, agent),
        deployed.agent_connection("n1") as node,
    ):
        service = await start_service(settings)
        try:
            async with Probes(node, admin, "n1", full=False):  # healthy heartbeats every 0.2 s, no full probe
                await publish_diagnosis(nc, admin, diagnosis("n1", [("restart_service", "kubelet"), "escalate"]))
                succeeded = await wait_for_record(nc, admin, phase="succeeded")
                await asyncio.sleep(2.0)  # ten heartbeats newer than the action
                phases = [r.phase for r in await audit_records(nc, admin) if r.action_id == succeeded.action_id]
                assert "verified" not in phases and "failed" not in phases, phases
                await publish_probe(node, admin, "n1")  # the agent's full probe after the command
                verified = await wait_for_record(nc, admin, phase="verified")
        finally:
            await service.stop()
    assert verified.action_id == succeeded.action_id
    assert [c.target for c in tap.commands] == ["kubelet"]
    assert fake.restarts_logged() == ["kubelet.service"] and agent.executor.executed == 1  # at the node, once
    assert deployed.violations() == []


async def test_only_heartbeats_within_the_limit_fail_verification_and_say_so(
    deployed: Deployed, world: KubeWorld, tmp_path: Path
) -> None:
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
    async with (
        serving_node(deployed, "n1", tmp_path, probes=False) as (fake, _agent),
        deployed.agent_connection("n1") as node,
    ):
        service = await start_service(make_settings(deployed.remediator, kube_url=world.url))  # verify_timeout_s=4
        try:
            async with Probes(node, admin, "n1", full=False):
                await publish_diagnosis(nc, admin, diagnosis("n1", [("restart_service", "kubelet"), "escalate"]))
                failed = await wait_for_record(nc, admin, phase="failed")
        finally:
            await service.stop()
    assert "only heartbeats since the action, no full probe yet" in (failed.error or ""), failed
    assert fake.restarts_logged() == ["kubelet.service"]  # the restart ran at the node; only its proof is missing
    assert deployed.violations() == []


async def test_a_repair_is_verified_on_a_partitioned_probes_stream_whatever_the_remediators_setting(
    deployed: Deployed, world: KubeWorld, tmp_path: Path
) -> None:
    """PROBES partitioned (production: 64) stores a node's probes as `<subject>.<p>`; the production overlay
    told the detector and the prober the count, not the remediator, whose verifier then filtered on subjects
    that never exist and could verify no repair. The verifier reads the layout from the stream itself."""
    nc, admin = deployed.nc, deployed.admin
    partitioned = admin.model_copy(update={"probe_partitions": 4})
    js = nc.jetstream()
    await js.delete_stream(partitioned.topology().stream(f"{partitioned.stream_prefix}PROBES").name)
    await apply_topology(js, partitioned.topology())  # PROBES made again, partitioned (as admin provisions it)
    tap = await CommandTap().watch(nc, "n1")
    await add_inventory(nc, partitioned, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
    settings = make_settings(deployed.remediator, kube_url=world.url).model_copy(update={"verify_timeout_s": 30.0})
    assert settings.nats.probe_partitions == 0  # the remediator is not told
    async with (
        serving_node(deployed, "n1", tmp_path, probes=False) as (fake, _agent),
        deployed.agent_connection("n1") as node,
    ):
        service = await start_service(settings)
        try:
            await publish_diagnosis(nc, partitioned, diagnosis("n1", [("restart_service", "kubelet"), "escalate"]))
            succeeded = await wait_for_record(nc, partitioned, phase="succeeded")
            await publish_probe(node, partitioned, "n1")  # the agent's full probe after the command
            verified = await wait_for_record(nc, partitioned, phase="verified")
        finally:
            await service.stop()
    assert verified.action_id == succeeded.action_id
    assert [c.target for c in tap.commands] == ["kubelet"] and fake.restarts_logged() == ["kubelet.service"]
    assert deployed.violations() == []
