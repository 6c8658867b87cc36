"""The inventory watcher takes the first list's Nodes from its queue up to `list_batch` at a time (their records
are independent keys; one after the other, 50,000 took 65 s): never a Node twice in one batch, never past the
list's end, and one at a time once the first list is complete (claims and the index are written per event then)."""

from __future__ import annotations

from typing import Any

import pytest

from nodeheal.cloud_events.inventory.app import InventoryWatcher
from nodeheal.cloud_events.inventory.settings import InventorySettings
from nodeheal.cloud_events.inventory.store import InventoryStore
from nodeheal.cloud_events.inventory.watcher import NodeEvent
from nodeheal.runtime.settings import NatsSettings


def _added(name: str) -> NodeEvent:
    node: dict[str, Any] = {"metadata": {"name": name}}
    return NodeEvent(type="ADDED", node=node)


def _names(batch: list[NodeEvent]) -> list[str]:
    return [e.node["metadata"]["name"] if e.node else e.type for e in batch]


@pytest.fixture
def watcher() -> InventoryWatcher:
    settings = InventorySettings(nats=NatsSettings(), cluster="c1", kube_mode="url", api_url="http://127.0.0.1:9")
    watcher = InventoryWatcher(settings)
    watcher.store = InventoryStore(kv=None, cluster="c1")  # type: ignore[arg-type]  # the batching reads no bucket
    watcher.list_batch = 3
    return watcher


async def test_the_first_list_is_taken_in_batches_of_distinct_nodes_up_to_its_end(watcher: InventoryWatcher) -> None:
    for event in [*map(_added, "abcda"), NodeEvent(type="RELISTED", names=tuple("abcd")), _added("e")]:
        watcher.queue.put_nowait(event)
    batches = [_names(await watcher._next()) for _ in range(4)]
    assert batches == [["a", "b", "c"], ["d", "a"], ["RELISTED"], ["e"]]


async def test_a_node_twice_ends_the_batch_and_comes_next(watcher: InventoryWatcher) -> None:
    for event in map(_added, "aba"):
        watcher.queue.put_nowait(event)
    assert _names(await watcher._next()) == ["a", "b"]
    assert _names(await watcher._next()) == ["a"]


async def test_after_the_first_list_events_are_taken_one_at_a_time(watcher: InventoryWatcher) -> None:
    assert watcher.store is not None
    watcher.store._listed = True
    for event in map(_added, "abc"):
        watcher.queue.put_nowait(event)
    assert [_names(await watcher._next()) for _ in range(3)] == [["a"], ["b"], ["c"]]
