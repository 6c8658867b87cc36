"""`nodeheal bench inventory`: what the inventory watcher's store pays to write a fleet's first list.

The watcher (`nodeheal.cloud_events.inventory`) lists every Node at start and writes each one's record, its
cluster's claim of the machine (`claim.<instance>.<cluster>`) and the instance-id index (`instance.<instance>`,
chosen across every cluster's claims) into the `<bucket_prefix>-inventory` bucket. This bench runs the real
`InventoryStore` against an embedded nats-server with the production topology: `nodes` Node records (one
instance each) upserted as the first list delivers them, then `remove_absent` (the end of the list: the claims
and the index are written then), timed; then a restarted watcher lists the same Nodes again, twice: once as
the store did before it read the bucket at start (no `load`: every record written again) and once as it does now
(`load`, then the list: nothing unchanged written), each timed with the bucket updates it made. Last, a service's
start reading the inventory (`InventoryFeed.load`, a KV watch's initial values) beside the per-key `get` it
used before. It reports seconds, the KV operations' share per node and the keys written.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nodeheal.cloud_events.inventory.store import InventoryStore
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
about 1.6 KiB a node); production's `--store-gib 64` gives it 1.9 GiB. The default 1 GiB store's 31 MiB holds
about 20,000 nodes and refuses more (`maximum bytes exceeded`)."""


def _records(nodes: int) -> list[NodeInventory]:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        NodeInventory(
            cluster=CLUSTER,
            node=f"cn-hangzhou.10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            instance_id=f"i-bp{i:018x}",
            provider_id=f"cn-hangzhou.i-bp{i:018x}",
            cloud="alibaba",
            zone=f"cn-hangzhou-{'hij'[i % 3]}",
            rack=f"r{i % 40:03d}",
            ready=True,
            created_at=created + timedelta(seconds=i),
        )
        for i in range(nodes)
    ]


async def _list(store: InventoryStore, records: list[NodeInventory], *, load: bool = True) -> float:
    started = time.perf_counter()
    if load:
        await store.load()
    for record in records:
        await store.upsert(record)
    await store.remove_absent(r.node for r in records)
    return time.perf_counter() - started


async def _run(*, nodes: int) -> dict[str, Any]:
    records = _records(nodes)
    with EmbeddedNats() as server:
        nats = NatsSettings(url=server.url, store_bytes=STORE_BYTES)
        nc = await connect(nats, name="bench-inventory")
        try:
            js = nc.jetstream(timeout=30.0)
            await apply_topology(js, nats.topology())
            kv = await js.key_value(nats.topology().bucket(f"{nats.bucket_prefix}-inventory").name)
            stream = f"KV_{kv._name}"  # nats-py keeps the bucket name private

            async def updates() -> int:
                return int((await js.stream_info(stream)).state.last_seq or 0)

            first = await _list(InventoryStore(kv, cluster=CLUSTER), records)
            keys = await kv_keys(kv)
            stored = int((await js.stream_info(stream)).state.bytes or 0)
            seq = await updates()
            unread = await _list(InventoryStore(kv, cluster=CLUSTER), records, load=False)  # restarted, as before
            seq, unread_updates = await updates(), await updates() - seq
            again = await _list(InventoryStore(kv, cluster=CLUSTER), records)  # a restarted watcher now
            again_updates = await updates() - seq
            bucket = nats.topology().bucket(f"{nats.bucket_prefix}-inventory").name
            by_get, by_watch = await _service_load_by_get(kv), await _service_load(js, bucket)
        finally:
            await nc.close()
    kinds: dict[str, int] = {}
    for key in keys:
        kinds[key.split(".", 1)[0]] = kinds.get(key.split(".", 1)[0], 0) + 1
    return {
        "bench": "inventory",
        "nodes": nodes,
        "store_gib": STORE_BYTES / 2**30,
        "first_list_s": round(first, 2),
        "first_list_ms_per_node": round(first / nodes * 1e3, 3),
        "restart_list_without_load_s": round(unread, 2),
        "restart_list_without_load_updates": unread_updates,
        "restart_list_s": round(again, 2),
        "restart_list_ms_per_node": round(again / nodes * 1e3, 3),
        "restart_list_updates": again_updates,
        "service_load_by_get_s": round(by_get, 2),
        "service_load_s": round(by_watch, 2),
        "keys": kinds,
        "bucket_bytes_per_node": round(stored / nodes),
    }


async def _service_load(js: Any, bucket: str) -> float:
    """A service's start reading every node record (`InventoryFeed.load`: a KV watch's initial values)."""
    seen: list[NodeInventory] = []
    feed = InventoryFeed(bucket, on_put=seen.append)
    await feed.open(js)
    started = time.perf_counter()
    await feed.load()
    took = time.perf_counter() - started
    assert len(seen) == len({r.node for r in seen}) > 0
    return took


async def _service_load_by_get(kv: KeyValue) -> float:
    """The same read as `InventoryFeed.load` did it before: the keys, then a `get` of each, parsed."""
    started = time.perf_counter()
    for key in await kv_keys(kv, pattern="node.>"):
        try:
            NodeInventory.model_validate_json((await kv.get(key)).value or b"")
        except KeyNotFoundError:
            continue
    return time.perf_counter() - started


def run_inventory(*, nodes: int) -> dict[str, Any]:
    return asyncio.run(_run(nodes=nodes))
