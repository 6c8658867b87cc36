"""A storm's escalation is recorded under whichever diagnosis first met the storm at a capacity gate, a
node of another failure domain too (its `target` is `storm:<kind>:<value>`). The 50,000-node demo: a
machine-check machine's approved `replace` was held back once, and when its diagnosis came back, the
storm escalation of another rack recorded under it was read as *its own* hand-over to a person: the ladder
ended there and the machine was never replaced."""

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
    wait_for_record,
)

pytestmark = pytest.mark.nats


@pytest.fixture
def world(bare_world: KubeWorld) -> KubeWorld:
    """The test adds its own nodes."""
    return bare_world


async def test_a_storm_elsewhere_does_not_end_the_ladder_that_noticed_it(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    for i in range(10):  # z1: half of it falls ill (a storm)
        world.add_node(f"s{i}", zone="z1")
        await add_inventory(nc, topology_ready, f"s{i}", zone="z1", node_pool="p")
    for i in range(20):  # z2: calm; its budget lets one node be out at a time
        world.add_node(f"c{i}", zone="z2")
        await add_inventory(nc, topology_ready, f"c{i}", zone="z2", node_pool="p")
    agent = Agent(delay_s=3.0)  # c1's restart keeps z2's one slot taken for a while
    await agent.serve(nc, topology_ready, "c1")
    roomy = {"max_count": 100, "max_pct": 100.0}
    settings = make_settings(
        topology_ready,
        kube_url=world.url,
        storm_threshold_pct=30,
        storm_min_unhealthy=3,
        cluster_budget=roomy,
        zone_budget={"max_count": 1, "max_pct": 100.0},
        pool_budget=roomy,
        rack_budget=roomy,
        disruptive_per_minute=100,
    )
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("c1", ["cordon", ("restart_service", "kubelet")]))
        await wait_for_record(nc, topology_ready, node="c1", action="cordon", phase="succeeded")
        for i in range(5):  # sick, with nothing to do (no capacity gate meets the storm on their account)
            await publish_diagnosis(nc, topology_ready, diagnosis(f"s{i}", ["none"]))
        await wait_for_record(nc, topology_ready, node="s4", action="escalate", phase="succeeded")
        # c0 is the first to meet z1's storm at a capacity gate: the storm's escalation is recorded under c0's
        # diagnosis; then z2's budget (c1 is out) holds c0's cordon back, and the diagnosis comes back later
        await publish_diagnosis(nc, topology_ready, diagnosis("c0", ["cordon", "drain"]))
        storm = await wait_for_record(nc, topology_ready, node="c0", action="escalate", target="storm:zone:z1")
        await wait_for_record(nc, topology_ready, node="c0", phase="blocked")
        # once c1 is handed over (its slot given back), c0's ladder goes on where it was held
        await wait_for_record(nc, topology_ready, node="c0", action="drain", phase="succeeded", timeout=30)
    finally:
        await service.stop()
    records = [r for r in await audit_records(nc, topology_ready) if r.node == "c0"]
    own = [r for r in records if r.action == "escalate" and r.target != storm.target]
    assert [(r.action, r.phase) for r in records if r.action in ("cordon", "drain") and r.phase == "succeeded"] == [
        ("cordon", "succeeded"),
        ("drain", "succeeded"),
    ]
    assert all("ladder is exhausted" in r.reason for r in own), [r.reason for r in own]
    assert world.is_cordoned("c0")
