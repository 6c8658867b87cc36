"""The prober reads the inventory bucket, checks real local listeners and publishes its results in
`ProberResults` batches to a real PROBES stream; a dead node is seen as an entry with every check failing.
With PROBES partitioned, the server stores each batch in the partition of the nodes it carries.

The prober runs as deployed: under the `prober` role's credential and inbox on a nats-server of the test's own
with the per-role authorization (the admin stands in for the inventory watcher and the reader of PROBES), and the
server logs no permission violation. The partition test alone runs on the shared server: its layout (PROBES in
eight partitions) is not the one the per-role server is provisioned with."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from nodeheal.cloud_events.prober.app import Prober, RoundResult
from nodeheal.cloud_events.prober.settings import ProberSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from nodeheal.schemas.prober import ProberResults
from nodeheal.schemas.subjects import PROBER_KIND, prober_probe_subject, unescape_token
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, deployed_as
from tests.unit.cloud_events.prober_targets import hung_listener, local_node

pytestmark = pytest.mark.nats


deployed = deployed_as("prober")  # the service under its role; no violation logged


nc, topology_ready = admin_stands_in()  # the admin stands in for the inventory watcher and PROBES' reader


async def _stored(nc: Client, settings: NatsSettings, count: int) -> list[tuple[str, ProberResults]]:
    """The first `count` prober messages of PROBES: (stored subject, batch)."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        f"{settings.prefix}.{PROBER_KIND}.>",  # the prober has its own subject kind (`.>`: partitions too)
        durable=None,
        stream=f"{settings.stream_prefix}PROBES",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    found: list[tuple[str, ProberResults]] = []
    while len(found) < count:
        found += [
            (m.subject, ProberResults.model_validate_json(m.data))
            for m in await sub.fetch(count - len(found), timeout=10)
        ]
    await sub.unsubscribe()
    return found


async def _one_round_against_a_local_node(
    nc: Client, nats: NatsSettings, nodes: tuple[NodeInventory, ...]
) -> RoundResult:
    """Put `nodes` in the inventory (with `nc`), then one prober round (under `nats`, the prober's settings) whose
    checks reach a real local node at 127.0.0.1 (ssh, kubelet and healthz listeners); other addresses answer
    nothing."""
    kv = await nc.jetstream().key_value(f"{nats.bucket_prefix}-inventory")
    for inv in nodes:
        await kv.put(inventory_key(inv.cluster, inv.node), inv.to_json())
    async with local_node() as node:
        settings = ProberSettings(
            nats=nats,
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
            return await prober.run_round()
        finally:
            await prober.stop()


async def test_round_publishes_reachability_and_sees_a_dead_node(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    alive = NodeInventory(cluster="prod-1", node="alive-1", addresses=("127.0.0.1",), ready=True)
    dead = NodeInventory(cluster="prod-1", node="dead-1", addresses=("127.0.0.2",), ready=False)
    other_cluster = NodeInventory(cluster="prod-2", node="elsewhere", addresses=("127.0.0.1",))
    result = await _one_round_against_a_local_node(nc, deployed.role, (alive, dead, other_cluster))

    assert (result.nodes, result.unreachable, result.published, result.failed_publishes) == (2, 1, 2, 0)
    assert result.messages == 1  # both nodes' results in one message (PROBES not partitioned)
    [(subject, batch)] = await _stored(nc, topology_ready, 1)
    assert subject == f"{topology_ready.prefix}.prober.prod-1._r0" and batch.node == "_r0"
    assert batch.source == "prober" and batch.cluster == "prod-1" and (batch.partitions, batch.partition) == (0, 0)
    entries = {r.node: r for r in batch.results}
    assert set(entries) == {"alive-1", "dead-1"}
    assert (entries["alive-1"].ready, entries["dead-1"].ready) == (True, False)
    assert {(r.check, r.ok) for r in entries["alive-1"].reachability} == {
        ("tcp", True),
        ("ssh_banner", True),
        ("kubelet_healthz", True),
    }
    assert len(entries["alive-1"].reachability) == 4
    assert entries["dead-1"].reachability and not any(r.ok for r in entries["dead-1"].reachability)
    assert {r.error for r in entries["dead-1"].reachability if r.check == "tcp"} == {"connection refused"}


async def _alive_and_hung(js: JetStreamContext, nats: NatsSettings) -> None:
    """Two nodes in the inventory: alive-1 on 127.0.0.1, hung-1 on 127.0.0.3 (where a test hangs the healthz)."""
    kv = await js.key_value(f"{nats.bucket_prefix}-inventory")
    for name, address in (("alive-1", "127.0.0.1"), ("hung-1", "127.0.0.3")):
        inv = NodeInventory(cluster="prod-1", node=name, addresses=(address,))
        await kv.put(inventory_key("prod-1", name), inv.to_json())


async def _prober_of_two(
    kubelet_port: int, healthz_port: int, *, nats: NatsSettings, timeout_s: float, max_pending_publishes: int = 4000
) -> Prober:
    """A started prober that flushes every 0.3 s and knows both nodes of `_alive_and_hung`."""
    settings = ProberSettings(
        nats=nats,
        cluster="prod-1",
        tcp_ports=[kubelet_port],
        ssh_port=None,
        healthz_url=f"http://{{address}}:{healthz_port}/healthz",
        timeout_s=timeout_s,
        batch_flush_s=0.3,
        max_pending_publishes=max_pending_publishes,
    )
    prober = Prober(settings)
    await prober.start()
    assert prober.inventory is not None
    while len(prober.my_nodes()) < 2:
        await prober.inventory.changed()
    return prober


async def test_a_slow_round_sends_what_was_checked_before_the_round_ends(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    """A node that hangs the kubelet's answer keeps the round going for the check's whole timeout; the nodes
    checked meanwhile do not wait for it: their batch is stored after `batch_flush_s`, long before the round
    ends (their verdict would otherwise be as late as the slowest node of the round)."""
    js = nc.jetstream()
    await _alive_and_hung(js, topology_ready)
    stream = f"{topology_ready.stream_prefix}PROBES"
    async with local_node() as node, hung_listener("127.0.0.3", node.healthz_port):
        prober = await _prober_of_two(node.kubelet_port, node.healthz_port, nats=deployed.role, timeout_s=4)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            round_ = asyncio.create_task(prober.run_round())
            while (await js.stream_info(stream)).state.messages == 0:
                assert not round_.done(), "nothing was sent before the round ended"
                await asyncio.sleep(0.05)
            first_after = loop.time() - started
            result = await round_
        finally:
            await prober.stop()
    assert first_after < 2.0 and result.seconds >= 3.5, (first_after, result.seconds)
    assert (result.messages, result.published, result.unreachable) == (2, 2, 1)
    first, second = (b for _, b in await _stored(nc, topology_ready, 2))
    assert [r.node for r in first.results] == ["alive-1"] and [r.node for r in second.results] == ["hung-1"]
    assert {(r.check, r.ok) for r in second.results[0].reachability} == {("tcp", False), ("kubelet_healthz", False)}


async def test_with_partitions_each_batch_is_stored_in_the_partition_of_its_nodes(nats_url: str) -> None:
    """The prober computes the server's partition hash itself (FNV-1a of the subject's cluster and node tokens):
    a batch's routing token lands it in the partition whose nodes it carries, and that is where the server puts
    those nodes' own probe subjects too (so the detector replica owning a node gets its batch)."""
    from nodeheal.runtime.provision import apply_topology
    from tests.support.broker import remove_topology, unique_settings

    s = unique_settings(nats_url).model_copy(update={"probe_partitions": 8})
    nc = await nats.connect(nats_url)  # the shared server (this module's `nc` is the per-role server's admin)
    js = nc.jetstream()
    await apply_topology(js, s.topology())
    try:
        kv = await js.key_value(f"{s.bucket_prefix}-inventory")
        names = [f"cn-hangzhou.10.0.{i // 200}.{i % 200}" for i in range(60)] + ["node_with_underscore", "n1"]
        for name in names:
            inv = NodeInventory(cluster="prod-1", node=name, addresses=("127.0.0.2",))
            await kv.put(inventory_key("prod-1", name), inv.to_json())
        settings = ProberSettings(nats=s, cluster="prod-1", tcp_ports=[1], ssh_port=None, healthz_url=None, timeout_s=1)
        prober = Prober(settings)
        await prober.start()
        try:
            assert prober.inventory is not None
            for _ in range(100):
                if len(prober.my_nodes()) == len(names):
                    break
                await prober.inventory.changed()
            result = await prober.run_round()
        finally:
            await prober.stop()
        assert result.published == len(names) and 1 < result.messages <= 8
        # each node's own subject, stored by the server: where it puts that node
        for name in names:
            await js.publish(prober_probe_subject("prod-1", name, prefix=s.prefix), b"{}")
        stored = await _raw(nc, s, result.messages + len(names))
        server_partition = {
            unescape_token(subject.split(".")[-2]): int(subject.split(".")[-1])
            for subject, _ in stored
            if not subject.split(".")[-2].startswith("_r")
        }
        batches = [
            (subject, ProberResults.model_validate_json(data))
            for subject, data in stored
            if ".prober.prod-1._r" in subject
        ]
        assert sum(len(b.results) for _, b in batches) == len(names)
        for subject, batch in batches:
            assert int(subject.split(".")[-1]) == batch.partition  # stored where the prober aimed it
            assert {server_partition[r.node] for r in batch.results} == {batch.partition}
    finally:
        await remove_topology(js, s)
        await nc.close()


async def _raw(nc: Client, settings: NatsSettings, count: int) -> list[tuple[str, bytes]]:
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        f"{settings.prefix}.{PROBER_KIND}.>",
        durable=None,
        stream=f"{settings.stream_prefix}PROBES",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    found: list[tuple[str, bytes]] = []
    while len(found) < count:
        found += [(m.subject, m.data) for m in await sub.fetch(count - len(found), timeout=10)]
    await sub.unsubscribe()
    return found


async def test_inventory_changes_reach_the_next_round(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    js = nc.jetstream()
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    a = NodeInventory(cluster="prod-1", node="a", addresses=("127.0.0.2",))
    await kv.put(inventory_key("prod-1", "a"), a.to_json())
    settings = ProberSettings(nats=deployed.role, cluster="prod-1", tcp_ports=[1], ssh_port=None, healthz_url=None)
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


async def test_a_round_ends_while_the_server_is_slow_to_acknowledge(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    """The round's end stopped its every-`batch_flush_s` sender by cancelling it. When that sender was
    waiting for a free async-publish slot (the server slow to acknowledge: every slot taken), nats-py turned
    the cancellation into `TooManyStalledMsgsError`, the sender logged it as a failed publish and went on
    sending forever: the round never ended, and the prober stopped probing with its readiness still green.
    Here every slot is taken while a node's check hangs the round past the first flush."""
    js = nc.jetstream()
    await _alive_and_hung(js, topology_ready)
    async with local_node() as node, hung_listener("127.0.0.3", node.healthz_port):
        prober = await _prober_of_two(
            node.kubelet_port,
            node.healthz_port,
            nats=deployed.role.model_copy(update={"publish_timeout_s": 3.0}),
            timeout_s=2,
            max_pending_publishes=1,
        )
        try:
            assert prober.js is not None
            slots = prober.js._publish_async_pending_semaphore
            await slots.acquire()  # the one slot taken: every publish waits `publish_timeout_s`, then fails
            round_ = asyncio.create_task(prober.run_round())
            try:
                # the round lasts the hung check (2 s), then each send waits out `publish_timeout_s` (3 s)
                await asyncio.wait({round_}, timeout=30)
                assert round_.done(), "the round did not end"
            finally:
                slots.release()
                round_.cancel()
                await asyncio.gather(round_, return_exceptions=True)
            result = round_.result()
        finally:
            await prober.stop()
    assert (result.nodes, result.unreachable, result.published) == (2, 1, 0)


async def test_a_node_without_an_address_is_not_reported_unreachable(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    """A node the inventory has no address for yet (the cloud controller has not initialised it) was never checked:
    it is left out of the batch (the detector judges its silence without a prober verdict) and counted as such.
    Before, it was sent as unreachable, a failed `tcp` check that never ran, which counts towards node_down."""
    alive = NodeInventory(cluster="prod-1", node="alive-2", addresses=("127.0.0.1",), ready=True)
    new = NodeInventory(cluster="prod-1", node="no-address-yet", addresses=(), ready=False)
    result = await _one_round_against_a_local_node(nc, deployed.role, (alive, new))
    assert (result.unreachable, result.unaddressed, result.published) == (0, 1, 1)
    [(_subject, batch)] = await _stored(nc, topology_ready, 1)
    assert [r.node for r in batch.results] == ["alive-2"]
