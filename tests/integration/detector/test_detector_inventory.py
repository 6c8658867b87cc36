"""A node deleted from the inventory left the fleet: the detector raises no node_down for its silence
(the remediator would only skip it), while a silent node still listed is found down as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.rules import RuleConfig
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import NodeInventory
from nodeheal.schemas.inventory import inventory_key
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, violations
from tests.integration.detector.test_detector_nats import anomalies, eventually, probe, publish, started_runtime

pytestmark = pytest.mark.nats


nc, topology_ready = admin_stands_in()  # the tests run on the per-role server; admin stands in


@pytest.fixture
async def runtime(deployed: RoleServer) -> AsyncIterator[DetectorRuntime]:
    """The detector under its role's credential, on a connection of its own."""
    rules = RuleConfig(probe_interval_s=0.5, down_after_missed=2.0, warmup_s=0, silence_recheck_s=0.2)
    async with started_runtime(deployed.role, await deployed.role_nc("detector"), rules) as rt:
        yield rt


async def test_a_node_deleted_from_the_inventory_raises_no_node_down(
    runtime: DetectorRuntime, nc: Client, topology_ready: NatsSettings, deployed: RoleServer
) -> None:
    s = topology_ready
    kv = await nc.jetstream().key_value(f"{s.bucket_prefix}-inventory")
    for node in ("alive", "gone", "silent"):
        record = NodeInventory(cluster="c1", node=node, instance_id=f"i-{node}", zone="z1", rack="r1")
        await kv.put(inventory_key("c1", node), record.to_json())
    for seq in (1, 2):
        for node in ("alive", "gone", "silent"):
            await publish(nc, s, probe(node=node, seq=seq, used=10.0))
    await eventually(lambda: len(runtime.detector.nodes) == 3)
    await kv.delete(inventory_key("c1", "gone"))  # the machine was deleted (a replace, a scale-down)
    await eventually(lambda: "c1/gone" not in runtime.detector.nodes)
    # "alive" keeps probing (the feed is alive); "gone" and "silent" stop; a late probe of "gone" from
    # the backlog does not bring it back
    await publish(nc, s, probe(node="gone", seq=3, used=10.0))
    for seq in range(3, 14):
        await publish(nc, s, probe(node="alive", seq=seq, used=10.0))
        await asyncio.sleep(0.25)

    async def silent_is_down() -> bool:
        return any(a.node == "silent" and a.kind == "node_down" for a in await anomalies(nc, s))

    await eventually(silent_is_down)
    got = await anomalies(nc, s)
    assert [(a.node, a.kind) for a in got if a.node == "gone"] == []
    assert "c1/gone" not in runtime.detector.nodes
    # listed again (the same name re-registered): its probes count again
    record = NodeInventory(cluster="c1", node="gone", instance_id="i-gone-2", zone="z1", rack="r1")
    await kv.put(inventory_key("c1", "gone"), record.to_json())
    await eventually(lambda: "c1/gone" not in runtime.detector.departed)
    await publish(nc, s, probe(node="gone", seq=4, used=10.0))
    await eventually(lambda: "c1/gone" in runtime.detector.nodes)
    assert violations(deployed.dir) == []
