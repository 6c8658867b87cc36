"""The prober reads the inventory bucket, checks real local listeners and publishes reachability
probes to a real PROBES stream; a dead node is seen as a probe with every check failing."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from nodeheal.cloud_events.prober.app import Prober
from nodeheal.cloud_events.prober.settings import ProberSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.subjects import PROBER_KIND, wildcard
from tests.unit.cloud_events.prober_targets import local_node

pytestmark = pytest.mark.nats


async def _probes(nc: Client, settings: NatsSettings, count: int) -> list[NodeProbe]:
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        wildcard(PROBER_KIND, prefix=settings.prefix),  # the prober has its own subject kind
        durable=None,
        stream=f"{settings.stream_prefix}PROBES",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    found: list[NodeProbe] = []
    while len(found) < count:
        found += [NodeProbe.model_validate_json(m.data) for m in await sub.fetch(count - len(found), timeout=10)]
    await sub.unsubscribe()
    return found


async def test_round_publishes_reachability_and_sees_a_dead_node(topology_ready: NatsSettings, nc: Client) -> None:
    js = nc.jetstream()
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    alive = NodeInventory(cluster="prod-1", node="alive-1", addresses=("127.0.0.1",), ready=True)
    dead = NodeInventory(cluster="prod-1", node="dead-1", addresses=("127.0.0.2",), ready=False)
    other_cluster = NodeInventory(cluster="prod-2", node="elsewhere", addresses=("127.0.0.1",))
    for inv in (alive, dead, other_cluster):
        await kv.put(inventory_key(inv.cluster, inv.node), inv.to_json())

    async with local_node() as node:
        settings = ProberSettings(
            nats=topology_ready,
            cluster="prod-1",
            tcp_ports=[node.ssh_port, node.kubelet_port],
            ssh_port=node.ssh_port,
            healthz_url=f"http://{{address}}:{node.healthz_port}/healthz",
            timeout_s=2,
        )
        prober = Prober(settings)
        await prober.start()
        try:
            assert prober.inventory is not None
            await prober.inventory.initial.wait()
            result = await prober.run_round()
        finally:
            await prober.stop()

    assert (result.nodes, result.unreachable, result.published, result.failed_publishes) == (2, 1, 2, 0)
    probes = {p.node: p for p in await _probes(nc, topology_ready, 2)}
    assert set(probes) == {"alive-1", "dead-1"}
    assert all(p.source == "prober" and p.cluster == "prod-1" for p in probes.values())
    assert {(r.check, r.ok) for r in probes["alive-1"].reachability} == {
        ("tcp", True),
        ("ssh_banner", True),
        ("kubelet_healthz", True),
    }
    assert len(probes["alive-1"].reachability) == 4
    assert probes["dead-1"].reachability and not any(r.ok for r in probes["dead-1"].reachability)
    assert {r.error for r in probes["dead-1"].reachability if r.check == "tcp"} == {"connection refused"}


async def test_inventory_changes_reach_the_next_round(topology_ready: NatsSettings, nc: Client) -> None:
    js = nc.jetstream()
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    a = NodeInventory(cluster="prod-1", node="a", addresses=("127.0.0.2",))
    await kv.put(inventory_key("prod-1", "a"), a.to_json())
    settings = ProberSettings(nats=topology_ready, cluster="prod-1", tcp_ports=[1], ssh_port=None, healthz_url=None)
    prober = Prober(settings)
    await prober.start()
    try:
        assert prober.inventory is not None
        await prober.inventory.initial.wait()
        assert [n.node for n in prober.my_nodes()] == ["a"]
        await kv.delete(inventory_key("prod-1", "a"))
        b = NodeInventory(cluster="prod-1", node="b", addresses=("127.0.0.2",))
        await kv.put(inventory_key("prod-1", "b"), b.to_json())
        for _ in range(100):
            if [n.node for n in prober.my_nodes()] == ["b"]:
                break
            await prober.inventory.changed()
        assert [n.node for n in prober.my_nodes()] == ["b"]
    finally:
        await prober.stop()
