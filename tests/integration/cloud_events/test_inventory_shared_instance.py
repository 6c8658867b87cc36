"""Two Nodes claiming one machine (the same `spec.providerID`): instance i-bp1abc re-registers as Node
`new-name` while the stale Node `old-name` still exists. The `instance.<id>` index must name new-name
from the moment it exists, whatever happens to old-name (modified NotReady by the node-lifecycle
controller, deleted by the operator, deleted while the watcher was away and found by a relist (as after
a 410 Gone)), and after a restart of the watcher.

The inventory service runs for real against kmock's Kubernetes emulator (the official client over HTTP)
and a real nats-server, as deployed: under the `inventory` role's credential and inbox, the server running the
per-role authorization (the admin's connection follows the bucket), no permission violation logged. Every write to the bucket is followed in order with a KV watch on the whole
bucket; a change to a third Node (`probe`) serves as a barrier: once its record shows step N, every
write caused by the Node events before it is in the log (events are applied in order)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import pytest
from kubernetes import client
from nats.aio.client import Client
from nats.js.kv import KeyValue

from nodeheal.cloud_events.inventory.app import InventoryWatcher
from nodeheal.cloud_events.inventory.settings import InventorySettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import NodeInventory, instance_key, inventory_key
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, deployed_as

pytestmark = pytest.mark.nats


deployed = deployed_as("inventory")  # the service under its role; no violation logged


nc, topology_ready = admin_stands_in()  # the admin's connection follows the bucket

CLUSTER = "prod-1"
MACHINE = "i-bp1abc"
STEP_LABEL = "nodeheal.io/step"


def _node(name: str, *, instance: str, created: str, ready: str = "True") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "creationTimestamp": created, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"providerID": f"cn-hangzhou.{instance}"},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


OLD = _node("old-name", instance=MACHINE, created="2024-03-01T08:00:00Z")
NEW = _node("new-name", instance=MACHINE, created="2025-06-01T08:00:00Z")
PROBE = _node("probe", instance="i-probe", created="2024-01-01T00:00:00Z")


@pytest.fixture
async def kube() -> AsyncIterator[tuple[kmock.KubernetesEmulator, str]]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["v1/nodes"] = kmock.ResourceInfo(kind="Node", namespaced=False, verbs={"list", "watch"})
        yield emulator, str(server.url).rstrip("/")


def _core(url: str) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = url
    return client.CoreV1Api(client.ApiClient(configuration))


class BucketLog:
    """Every write to the bucket, in the order the stream holds them: (key, node named or None for a delete)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.entries: list[tuple[str, NodeInventory | None]] = []

    async def __aenter__(self) -> BucketLog:
        self.watch = await self.kv.watch(">")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.watch.stop()

    async def until_step(self, step: int) -> None:
        """Read the log up to the probe record that shows `step`."""
        probe = inventory_key(CLUSTER, "probe")
        await self.until(lambda k, r: k == probe and r is not None and r.labels.get(STEP_LABEL) == str(step))

    async def until(self, predicate: Callable[[str, NodeInventory | None], bool]) -> None:
        """Read the log up to the first write (key, record or None) the predicate accepts."""
        while True:
            entry = await self.watch.updates(timeout=20)
            if entry is None:  # end of the values that were there when the watch began
                continue
            record = (
                None if entry.operation in ("DEL", "PURGE") else NodeInventory.model_validate_json(entry.value or b"")
            )
            self.entries.append((entry.key, record))
            if predicate(entry.key, record):
                return

    def index(self) -> list[str | None]:
        """What `instance.i-bp1abc` named, write after write (None: deleted)."""
        return [None if r is None else r.node for k, r in self.entries if k == instance_key(MACHINE)]


async def _barrier(core: client.CoreV1Api, log: BucketLog, step: int) -> None:
    await asyncio.to_thread(core.patch_node, "probe", {"metadata": {"labels": {STEP_LABEL: str(step)}}})
    await log.until_step(step)


async def _names(kv: KeyValue) -> str:
    return NodeInventory.model_validate_json((await kv.get(instance_key(MACHINE))).value or b"").node


def _after_new(index: list[str | None]) -> list[str | None]:
    assert "new-name" in index, index
    return index[index.index("new-name") :]


def _settings(nats: NatsSettings, url: str) -> InventorySettings:
    return InventorySettings(
        nats=nats, cluster=CLUSTER, kube_mode="url", api_url=url, read_timeout_s=2, retry_backoff_s=0.2
    )


@contextlib.asynccontextmanager
async def _synced_watcher(
    nats: NatsSettings, url: str, kv: KeyValue
) -> AsyncIterator[tuple[InventoryWatcher, BucketLog]]:
    """The real inventory watcher against kmock, after its first list, with every write to `kv` logged; stopped
    at the end."""
    watcher = InventoryWatcher(_settings(nats, url))
    async with BucketLog(kv) as log:
        await watcher.start()
        try:
            await asyncio.wait_for(watcher.synced.wait(), timeout=20)
            yield watcher, log
        finally:
            await watcher.stop()


@pytest.mark.parametrize("old_modified", [True, False], ids=["old-modified", "old-untouched"])
async def test_the_stale_node_neither_takes_nor_deletes_the_index(
    kube: tuple[kmock.KubernetesEmulator, str],
    deployed: RoleServer,
    topology_ready: NatsSettings,
    nc: Client,
    old_modified: bool,
) -> None:
    _emulator, url = kube
    core = _core(url)
    await asyncio.to_thread(core.create_node, PROBE)
    await asyncio.to_thread(core.create_node, OLD)  # ADDED old (in the first list)
    kv = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory")
    async with _synced_watcher(deployed.role, url, kv) as (_, log):
        await _barrier(core, log, 1)
        assert await _names(kv) == "old-name"  # the only claimant

        await asyncio.to_thread(core.create_node, NEW)  # ADDED new: the kubelet registers the machine anew
        await _barrier(core, log, 2)
        assert await _names(kv) == "new-name"

        if old_modified:  # MODIFIED old: the node-lifecycle controller marks the stale Node NotReady
            not_ready = {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
            await asyncio.to_thread(core.patch_node, "old-name", not_ready)
        await _barrier(core, log, 3)
        assert await _names(kv) == "new-name"

        await asyncio.to_thread(core.delete_node, "old-name")  # DELETED old: the operator removes it
        await _barrier(core, log, 4)
        assert await _names(kv) == "new-name"

        # a later change of new-name still reaches the index
        await asyncio.to_thread(core.patch_node, "new-name", {"metadata": {"labels": {"nodeheal.io/rack": "r7"}}})
        await _barrier(core, log, 5)
        by_instance = NodeInventory.model_validate_json((await kv.get(instance_key(MACHINE))).value or b"")
        assert (by_instance.cluster, by_instance.node, by_instance.rack) == (CLUSTER, "new-name", "r7")
    # at no point after new-name appeared did the index name anything else, nor vanish
    assert set(_after_new(log.index())) == {"new-name"}, log.index()


@pytest.mark.parametrize("old_modified", [True, False], ids=["old-modified", "old-untouched"])
async def test_a_relist_keeps_the_index_on_the_live_node(
    kube: tuple[kmock.KubernetesEmulator, str],
    deployed: RoleServer,
    topology_ready: NatsSettings,
    nc: Client,
    old_modified: bool,
) -> None:
    emulator, url = kube
    core = _core(url)
    await asyncio.to_thread(core.create_node, PROBE)
    await asyncio.to_thread(core.create_node, OLD)
    kv = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory")
    async with _synced_watcher(deployed.role, url, kv) as (watcher, log):
        await asyncio.to_thread(core.create_node, NEW)
        if old_modified:
            not_ready = {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
            await asyncio.to_thread(core.patch_node, "old-name", not_ready)
        await _barrier(core, log, 1)
        assert await _names(kv) == "new-name"

        # old-name goes while the watcher is away (no DELETED event), and its resourceVersion expires:
        # what the watcher does on 410 Gone (forget the version, list again) happens at the next watch
        emulator.objects[kmock.resource("", "v1", "nodes"), None, "old-name"].delete()
        watcher.watcher.resource_version = None
        # the open watch ends at its read timeout; the relist's cleanup deletes old-name's record
        await log.until(lambda k, r: k == inventory_key(CLUSTER, "old-name") and r is None)
        await _barrier(core, log, 2)
        assert watcher.watcher.relists == 2
        assert await _names(kv) == "new-name"
        with pytest.raises(Exception, match="not found"):
            await kv.get(inventory_key(CLUSTER, "old-name"))

        await asyncio.to_thread(core.patch_node, "new-name", {"metadata": {"labels": {"nodeheal.io/rack": "r7"}}})
        await _barrier(core, log, 3)
        by_instance = NodeInventory.model_validate_json((await kv.get(instance_key(MACHINE))).value or b"")
        assert (by_instance.node, by_instance.rack) == ("new-name", "r7")
    assert set(_after_new(log.index())) == {"new-name"}, log.index()


async def test_a_restart_with_both_nodes_listed_does_not_flip_the_index(
    kube: tuple[kmock.KubernetesEmulator, str], deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    """The list gives old-name before new-name; the index (new-name, from the run before) stays put."""
    _emulator, url = kube
    core = _core(url)
    await asyncio.to_thread(core.create_node, PROBE)
    await asyncio.to_thread(core.create_node, OLD)
    await asyncio.to_thread(core.create_node, NEW)
    kv = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory")
    before = NodeInventory(cluster=CLUSTER, node="new-name", instance_id=MACHINE)
    await kv.put(instance_key(MACHINE), before.to_json())
    async with _synced_watcher(deployed.role, url, kv) as (_, log):
        await _barrier(core, log, 1)
        assert await _names(kv) == "new-name"
    assert set(log.index()) == {"new-name"}, log.index()
