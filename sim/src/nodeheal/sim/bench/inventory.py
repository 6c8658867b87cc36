"""`nodeheal bench inventory`: what the inventory watcher pays to write a fleet's list, and a service to read it.

The watcher (`nodeheal.cloud_events.inventory`) lists every Node at start and writes each one's record, its
cluster's claim of the machine (`claim.<instance>.<cluster>`) and the instance-id index (`instance.<instance>`,
chosen across every cluster's claims) into the `<bucket_prefix>-inventory` bucket. This bench runs the real
`InventoryWatcher` apply loop (its batching, the Node-to-record mapping, the real `InventoryStore`) against an
embedded nats-server with the production topology, fed the list's events as its Kubernetes thread feeds them
(`nodes` Node objects, one instance each, then the list's end): the first list into an empty bucket, once with
the Nodes written one at a time (as before `LIST_BATCH`) and once as the watcher does now, each on its own server;
then, on the second server, a restarted watcher's list of the same Nodes, once as the store did before it read
the bucket at start (no `load`) and once as it does now, each timed with the bucket updates it made. Last, a
service's start reading the inventory (`InventoryFeed.load`, a KV watch's initial values) beside the per-key `get`
it used before. It reports seconds, the KV operations' share per node and the keys written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nodeheal.cloud_events.inventory.app import LIST_BATCH, InventoryWatcher
from nodeheal.cloud_events.inventory.settings import InventorySettings
from nodeheal.cloud_events.inventory.store import InventoryStore
from nodeheal.cloud_events.inventory.watcher import NodeEvent
from nodeheal.runtime.connect import connect
from nodeheal.runtime.inventory import InventoryFeed
from nodeheal.runtime.jetstream import kv_keys
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.sim.embedded import EmbeddedNats

CLUSTER = "bench"
STORE_BYTES = 8 * 2**30
"""The inventory bucket's share (3 %) of it is 245 MiB, room for 50,000 nodes' three records (node, claim, index;
about 3 KiB a node with an ACK Node's labels, addresses and node info); production's `--store-gib 64` gives it
1.9 GiB. The default 1 GiB store's 31 MiB holds about 10,000 nodes and refuses more (`maximum bytes exceeded`)."""


def _nodes(nodes: int) -> list[dict[str, Any]]:
    """The Node objects of the list, as an ACK cluster's API server gives them: the labels, addresses and
    `nodeInfo` every Node carries (the record's size, and so the bucket's bytes per node, is a real one's)."""
    created = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[dict[str, Any]] = []
    for i in range(nodes):
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        name, zone, instance = f"cn-hangzhou.{ip}", f"cn-hangzhou-{'hij'[i % 3]}", f"i-bp{i:018x}"
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux",
            "topology.kubernetes.io/region": "cn-hangzhou",
            "topology.kubernetes.io/zone": zone,
            "nodeheal.io/rack": f"r{i % 40:03d}",
            "alibabacloud.com/nodepool-id": f"np{i % 8:016x}",
            "node.kubernetes.io/instance-type": "ecs.ebmg7.32xlarge",
        }
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "creationTimestamp": (created + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
                    "labels": labels,
                },
                "spec": {"providerID": f"cn-hangzhou.{instance}"},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "nodeInfo": {
                        "osImage": "Alibaba Cloud Linux 3.2104 U10 (OpenAnolis Edition)",
                        "kernelVersion": "5.10.134-16.3.al8.x86_64",
                        "architecture": "amd64",
                        "containerRuntimeVersion": "containerd://1.6.28",
                        "kubeletVersion": "v1.30.1-aliyun.1",
                        "operatingSystem": "linux",
                    },
                },
            }
        )
    return out


async def _list(
    nats: NatsSettings, kv: KeyValue, nodes: list[dict[str, Any]], *, load: bool = True, batch: int = LIST_BATCH
) -> float:
    """One list through the watcher's apply loop, from its first event to its end applied (`synced`)."""
    # the Kubernetes client is never called: the list's events are fed here as the watcher's thread feeds them
    settings = InventorySettings(nats=nats, cluster=CLUSTER, kube_mode="url", api_url="http://127.0.0.1:9")
    watcher = InventoryWatcher(settings)
    watcher.list_batch = batch
    store = watcher.store = InventoryStore(kv, cluster=CLUSTER)
    started = time.perf_counter()
    if load:
        await store.load()
    applying = asyncio.create_task(watcher._apply_forever())
    try:
        for node in nodes:
            await watcher.queue.put(NodeEvent(type="ADDED", node=node))
        await watcher.queue.put(NodeEvent(type="RELISTED", names=tuple(n["metadata"]["name"] for n in nodes)))
        await watcher.synced.wait()
        return time.perf_counter() - started
    finally:
        applying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await applying


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[tuple[NatsSettings, Any, KeyValue]]:
    with EmbeddedNats() as server:
        nats = NatsSettings(url=server.url, store_bytes=STORE_BYTES)
        nc = await connect(nats, name="bench-inventory")
        try:
            js = nc.jetstream(timeout=30.0)
            await apply_topology(js, nats.topology())
            yield nats, js, await js.key_value(nats.topology().bucket(f"{nats.bucket_prefix}-inventory").name)
        finally:
            await nc.close()


async def _run(*, nodes: int, progress: Callable[[str], None]) -> dict[str, Any]:
    listed = _nodes(nodes)
    progress("the first list, one record at a time (as before)")
    async with _server() as (nats, _js, kv):
        one_by_one = await _list(nats, kv, listed, batch=1)  # the first list as before: one record at a time
    async with _server() as (nats, js, kv):
        stream = f"KV_{kv._name}"  # nats-py keeps the bucket name private

        async def updates() -> int:
            return int((await js.stream_info(stream)).state.last_seq or 0)

        progress("the first list, as the watcher writes it")
        first = await _list(nats, kv, listed)
        keys = await kv_keys(kv)
        stored = int((await js.stream_info(stream)).state.bytes or 0)
        seq = await updates()
        progress("a restarted watcher's list without reading the bucket first (as before)")
        unread = await _list(nats, kv, listed, load=False)  # a restarted watcher, as before
        seq, unread_updates = await updates(), await updates() - seq
        progress("a restarted watcher's list, the bucket read first")
        again = await _list(nats, kv, listed)  # a restarted watcher now
        again_updates = await updates() - seq
        bucket = nats.topology().bucket(f"{nats.bucket_prefix}-inventory").name
        progress("a service's inventory load: a get per key (as before), then one watch")
        by_get, (by_watch, loaded) = await _service_load_by_get(kv), await _service_load(js, bucket)
    kinds: dict[str, int] = {}
    for key in keys:
        kinds[key.split(".", 1)[0]] = kinds.get(key.split(".", 1)[0], 0) + 1
    return {
        "bench": "inventory",
        "nodes": nodes,
        "store_gib": STORE_BYTES / 2**30,
        "first_list_one_by_one_s": round(one_by_one, 4),
        "first_list_s": round(first, 4),
        "first_list_ms_per_node": round(first / nodes * 1e3, 3),
        "restart_list_without_load_s": round(unread, 4),
        "restart_list_without_load_updates": unread_updates,
        "restart_list_s": round(again, 4),
        "restart_list_ms_per_node": round(again / nodes * 1e3, 3),
        "restart_list_updates": again_updates,
        "service_load_by_get_s": round(by_get, 4),
        "service_load_s": round(by_watch, 4),
        "service_load_records": loaded,
        "keys": kinds,
        "bucket_bytes_per_node": round(stored / nodes),
    }


async def _service_load(js: Any, bucket: str) -> tuple[float, int]:
    """A service's start reading every node record (`InventoryFeed.load`: a KV watch's initial values): the
    seconds it took and the records it read."""
    seen: list[NodeInventory] = []
    feed = InventoryFeed(bucket, on_put=seen.append)
    await feed.open(js)
    started = time.perf_counter()
    await feed.load()
    took = time.perf_counter() - started
    assert len(seen) == len({r.node for r in seen}) > 0
    return took, len(seen)


async def _service_load_by_get(kv: KeyValue) -> float:
    """The same read as `InventoryFeed.load` did it before: the keys, then a `get` of each, parsed."""
    started = time.perf_counter()
    for key in await kv_keys(kv, pattern="node.>"):
        try:
            NodeInventory.model_validate_json((await kv.get(key)).value or b"")
        except KeyNotFoundError:
            continue
    return time.perf_counter() - started


def run_inventory(*, nodes: int, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """`progress` is told each stage as it begins (the bench of 50,000 nodes takes minutes)."""
    return asyncio.run(_run(nodes=nodes, progress=progress))
