"""A KV watch's initial values end when the server confirms the client holds them (`runtime.kvwatch`), not at
nats-py's marker alone: under load that marker can come before the records the server has already sent (a CI
run once saw a prober declare its inventory loaded with no node in it). The marker-first order is rebuilt here
on a real nats-server by moving the marker to the front of the watcher's queue."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from nodeheal.cloud_events.prober.app import InventoryCache
from nodeheal.runtime.inventory import InventoryFeed
from nodeheal.runtime.kvwatch import caught_up, initial_values, last_values
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from tests.support.broker import ScratchBucket

pytestmark = pytest.mark.nats


async def _marker_first(watcher: KeyValue.KeyWatcher, records: int) -> list[KeyValue.Entry]:
    """Wait until the watch's `records` records and nats-py's marker are queued, then leave only the marker
    there: the records are returned, for the test to hand them over late (as a loaded machine does)."""
    queue: asyncio.Queue[KeyValue.Entry | None] = watcher._updates  # type: ignore[attr-defined]
    for _ in range(200):
        if queue.qsize() == records + 1:
            break
        await asyncio.sleep(0.01)
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    assert items.count(None) == 1 and len(items) == records + 1, items
    queue.put_nowait(None)
    return [i for i in items if i is not None]


def _hand_over(watcher: KeyValue.KeyWatcher, held: list[KeyValue.Entry]) -> None:
    for entry in held:
        watcher._updates.put_nowait(entry)  # type: ignore[attr-defined]


async def test_the_initial_values_are_all_read_even_when_the_marker_comes_first(
    scratch_bucket: ScratchBucket,
) -> None:
    kv = await scratch_bucket("watch")
    for key in ("node.c1.a", "node.c1.b", "node.c2.a"):
        await kv.put(key, b"{}")
    await kv.delete("node.c1.b")  # a deleted key's marker is one of the initial records too

    watcher = await kv.watch("node.c1.*")
    held = await _marker_first(watcher, 2)
    # the server has sent two records the client has not handed over: not caught up at the marker
    assert not await caught_up(watcher, 0)

    async def read() -> list[KeyValue.Entry]:
        return [e async for e in initial_values(watcher)]

    reading = asyncio.create_task(read())
    await asyncio.sleep(0.2)
    assert not reading.done()  # the marker alone did not end the initial values
    _hand_over(watcher, held)
    entries = await asyncio.wait_for(reading, timeout=10)
    assert [(e.key, e.operation) for e in entries] == [("node.c1.a", None), ("node.c1.b", "DEL")]
    assert await caught_up(watcher, len(entries))
    await watcher.stop()  # type: ignore[no-untyped-call]

    empty = await kv.watch("node.c9.*")  # nothing stored: the marker alone ends the initial values
    assert [e async for e in initial_values(empty)] == []
    await empty.stop()  # type: ignore[no-untyped-call]


async def test_last_values_are_each_keys_last_value_without_the_deleted_ones(scratch_bucket: ScratchBucket) -> None:
    """What a start reads with one watch instead of a get per key (the inventory store, the diagnoser's crash
    histories): each key's last value once, deleted keys left out, other keys' patterns not read."""
    kv = await scratch_bucket("last")
    for key, value in (("crash.c1.a", b"1"), ("crash.c1.b", b"2"), ("crash.c1.a", b"3"), ("node.c1.a", b"4")):
        await kv.put(key, value)
    await kv.delete("crash.c1.b")
    assert [(e.key, e.value) for e in await last_values(kv, "crash.>")] == [("crash.c1.a", b"3")]
    assert await last_values(kv, "claim.>") == []


async def test_the_inventory_load_and_its_watch_are_one_watch(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """The diagnoser's and remediator's start: `InventoryFeed.load` reads the watch's initial values (each record
    once, a deleted node's marker as a delete) and the inventory loop follows that same watch: a later change is
    delivered, the loaded records are not delivered a second time."""
    bucket = f"{topology_ready.bucket_prefix}-inventory"
    kv = await js.key_value(bucket)
    early = [NodeInventory(cluster="prod-1", node=n) for n in ("a", "b")]
    for record in early:
        await kv.put(inventory_key("prod-1", record.node), record.to_json())
    await kv.put(inventory_key("prod-1", "gone"), NodeInventory(cluster="prod-1", node="gone").to_json())
    await kv.delete(inventory_key("prod-1", "gone"))
    got: list[NodeInventory] = []
    deleted: list[tuple[str, str]] = []
    feed = InventoryFeed(bucket, on_put=got.append, on_delete=lambda c, n: deleted.append((c, n)))
    assert await feed.open(js)
    assert await feed.load() == 3 and got == early and deleted == [("prod-1", "gone")]
    watching = asyncio.create_task(feed.watch())
    try:
        late = NodeInventory(cluster="prod-1", node="c")
        await kv.put(inventory_key("prod-1", "c"), late.to_json())
        for _ in range(100):
            if late in got:
                break
            await asyncio.sleep(0.05)
        assert got == [*early, late]
    finally:
        watching.cancel()


async def test_the_prober_inventory_is_not_loaded_empty_when_the_marker_comes_first(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    a = NodeInventory(cluster="prod-1", node="a", addresses=("127.0.0.2",))
    await kv.put(inventory_key("prod-1", "a"), a.to_json())
    cache = InventoryCache(kv, cluster="prod-1")
    watcher = await kv.watch("node.prod-1.*")
    held = await _marker_first(watcher, 1)
    task = asyncio.create_task(cache._follow(watcher))
    try:
        await asyncio.sleep(0.2)
        assert not cache.initial.is_set()  # not loaded at the marker: a record is still on its way
        _hand_over(watcher, held)
        await asyncio.wait_for(cache.initial.wait(), timeout=10)
        assert [n.node for n in cache.nodes.values()] == ["a"]
    finally:
        task.cancel()
        await watcher.stop()  # type: ignore[no-untyped-call]
