"""agent_down → restart_agent: the remediator deletes the node agent's pod on that node (its DaemonSet makes a
new one), nothing else, and verifies on the new agent's probes — no cordon, no drain, no reboot. On a real
nats-server with the deployed per-role authorization: the remediator under its role's credential and inbox."""

from __future__ import annotations

import pytest

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

AGENT = {"app.kubernetes.io/name": "nodeheal", "app.kubernetes.io/component": "agent"}


@pytest.fixture
def agents(world: KubeWorld) -> KubeWorld:
    """n1 and n2 each run a node agent pod of the DaemonSet and a workload pod."""
    for node in ("n1", "n2"):
        world.add_pod(f"nodeheal-agent-{node}", node=node, namespace="nodeheal", labels=AGENT, owner_kind="DaemonSet")
        world.add_pod(f"web-{node}", node=node, namespace="default", labels={"app": "web"})
    return world


def _pods(world: KubeWorld) -> set[tuple[str, str]]:
    """Pods the emulator still has (kmock keeps a deleted object's history, marked deleted)."""
    objects = world.emulator.objects
    return {(ns, name) for (kind, ns, name) in objects if "pods" in str(kind) and not objects[kind, ns, name].deleted}


async def test_restart_agent_deletes_only_that_nodes_agent_pod_and_verifies(
    deployed: Deployed, agents: KubeWorld
) -> None:
    world = agents
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
    before = _pods(world)
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
    try:
        async with Probes(nc, topology_ready, "n1"):  # the new agent reports
            await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["restart_agent", "escalate"]))
            verified = await wait_for_record(nc, topology_ready, phase="verified")
    finally:
        await service.stop()
    assert verified.action == "restart_agent"
    assert before - _pods(world) == {("nodeheal", "nodeheal-agent-n1")}
    actions = {r.action for r in await audit_records(nc, topology_ready)}
    assert not actions & {"cordon", "drain", "reboot", "redeploy"}
    assert not world.is_cordoned("n1")
    assert deployed.violations() == []
