"""A restarted inventory watcher and what a watcher before it left in the bucket: unchanged Nodes are not written
again (each write reaches every service that watches the bucket), a Node changed while no watcher ran is, and an
index left inconsistent by a watcher killed between two writes is chosen again.

The real inventory watcher under the deployed `inventory` credential (the per-role server), against kmock's
Kubernetes emulator through the official client; what the bucket received is counted at the server (the
bucket stream's last sequence)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nodeheal.cloud_events.inventory.app import InventoryWatcher
from nodeheal.cloud_events.inventory.settings import InventorySettings
from nodeheal.schemas.inventory import NodeInventory, claim_key, instance_key, inventory_key
from tests.integration.deploy.natsauth_loader import RoleServer, role_server, violations

pytestmark = pytest.mark.nats

CLUSTER = "prod-1"
NODES = {"n1": "i-bp001", "n2": "i-bp002", "n3": "i-bp003"}


def _node(name: str, instance: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "creationTimestamp": "2025-01-01T00:00:00Z", "labels": {"nodeheal.io/rack": "r1"}},
        "spec": {"providerID": f"cn-hangzhou.{instance}"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[RoleServer]:
    async with role_server(tmp_path, "inventory") as d:
        yield d


@pytest.fixture
async def kube() -> AsyncIterator[tuple[kmock.KubernetesEmulator, client.CoreV1Api, str]]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["v1/nodes"] = kmock.ResourceInfo(kind="Node", namespaced=False, verbs={"list", "watch"})
        url = str(server.url).rstrip("/")
        configuration = client.Configuration()
        configuration.host = url
        core = client.CoreV1Api(client.ApiClient(configuration))
        for name, instance in NODES.items():
            await asyncio.to_thread(core.create_node, _node(name, instance))
        yield emulator, core, url


@contextlib.asynccontextmanager
async def _watcher(deployed: RoleServer, url: str) -> AsyncIterator[InventoryWatcher]:
    """The inventory service under its role, after its first list (the end of the list is written)."""
    settings = InventorySettings(
        nats=deployed.role, cluster=CLUSTER, kube_mode="url", api_url=url, read_timeout_s=2, retry_backoff_s=0.2
    )
    watcher = InventoryWatcher(settings)
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.synced.wait(), timeout=20)
        yield watcher
    finally:
        await watcher.stop()


async def _bucket(deployed: RoleServer) -> KeyValue:
    return await deployed.nc.jetstream().key_value(f"{deployed.settings.bucket_prefix}-inventory")


async def _updates(deployed: RoleServer) -> int:
    """Every write the bucket has received (puts and deletes), counted by the server."""
    kv = await _bucket(deployed)
    info = await deployed.nc.jetstream().stream_info(f"KV_{kv._name}")  # nats-py keeps the bucket name private
    return int(info.state.last_seq or 0)


async def _record(kv: KeyValue, key: str) -> NodeInventory | None:
    try:
        return NodeInventory.model_validate_json((await kv.get(key)).value or b"")
    except KeyNotFoundError:
        return None


async def test_a_restarted_watcher_writes_only_what_changed_while_it_was_away(
    deployed: RoleServer, kube: tuple[kmock.KubernetesEmulator, client.CoreV1Api, str]
) -> None:
    _, core, url = kube
    async with _watcher(deployed, url):
        pass
    first = await _updates(deployed)
    assert first == 3 * len(NODES)  # each node's record, its claim, the index

    async with _watcher(deployed, url) as restarted:
        assert restarted.store is not None and restarted.store.writes == 0
    assert await _updates(deployed) == first  # nothing unchanged written again

    # n2 relabelled while no watcher ran: its record, claim and index written again, nothing else
    await asyncio.to_thread(core.patch_node, "n2", {"metadata": {"labels": {"nodeheal.io/rack": "r9"}}})
    async with _watcher(deployed, url) as restarted:
        assert restarted.store is not None and restarted.store.writes == 1
    assert await _updates(deployed) == first + 3
    kv = await _bucket(deployed)
    for key in (inventory_key(CLUSTER, "n2"), claim_key("i-bp002", CLUSTER), instance_key("i-bp002")):
        record = await _record(kv, key)
        assert record is not None and record.rack == "r9", key
    assert violations(deployed.dir) == []


async def test_an_index_left_wrong_or_orphaned_by_a_killed_watcher_is_chosen_again(
    deployed: RoleServer, kube: tuple[kmock.KubernetesEmulator, client.CoreV1Api, str]
) -> None:
    """Between a claim's write and the index's (or a claim's delete and the index's) a watcher can be killed: the
    index then names another record than the claims choose, or an instance nobody claims. A restarted watcher
    whose Nodes are all unchanged still puts the index right."""
    _, _core, url = kube
    async with _watcher(deployed, url):
        pass
    kv = await _bucket(deployed)
    n1 = await _record(kv, instance_key("i-bp001"))
    assert n1 is not None
    stale = n1.model_copy(update={"rack": "r0"})  # the index as it was before n1's last change
    await kv.put(instance_key("i-bp001"), stale.to_json())
    await kv.delete(instance_key("i-bp003"))  # the index not written after n3's claim was
    gone = NodeInventory(cluster=CLUSTER, node="n0", instance_id="i-bp000")
    await kv.put(instance_key("i-bp000"), gone.to_json())  # n0's claim deleted, its index not yet

    async with _watcher(deployed, url) as restarted:
        assert restarted.store is not None and restarted.store.writes == 0

    assert await _record(kv, instance_key("i-bp001")) == await _record(kv, claim_key("i-bp001", CLUSTER))
    index3 = await _record(kv, instance_key("i-bp003"))
    assert index3 is not None and index3.node == "n3"
    assert await _record(kv, instance_key("i-bp000")) is None
    assert violations(deployed.dir) == []
