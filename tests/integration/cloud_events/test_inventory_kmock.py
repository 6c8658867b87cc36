"""The inventory watcher against kmock's Kubernetes emulator (the official client over HTTP) and a
real nats-server: the bucket is filled, updated on change and cleaned on node removal.

The watcher runs as deployed: under the `inventory` role's credential and inbox on a nats-server of the test's own
with the per-role authorization (the admin stands in for the services that read the bucket and for the operator
who changes its cap), and the server logs no permission violation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import pytest
from kubernetes import client
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nodeheal.cloud_events.inventory.app import InventoryWatcher
from nodeheal.cloud_events.inventory.settings import InventorySettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import NodeInventory, instance_key, inventory_key
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, deployed_as

pytestmark = pytest.mark.nats


deployed = deployed_as("inventory")  # the service under its role; no violation logged


nc, topology_ready = admin_stands_in()  # the admin stands in for the bucket's readers and the operator


def _node(name: str, *, instance: str, zone: str = "cn-hangzhou-k", ready: str = "True") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"topology.kubernetes.io/zone": zone, "node.kubernetes.io/instance-type": "ecs.ebmg7.32xlarge"},
        },
        "spec": {"providerID": f"cn-hangzhou.{instance}"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.7"}],
            "conditions": [{"type": "Ready", "status": ready}],
            "nodeInfo": {
                "osImage": "Alibaba Cloud Linux 3",
                "kernelVersion": "5.10.134-16.al8.x86_64",
                "architecture": "amd64",
                "bootID": "0f0e0d0c-1111-2222-3333-444455556666",
                "containerRuntimeVersion": "containerd://1.6.28",
                "kubeProxyVersion": "v1.30.1",
                "kubeletVersion": "v1.30.1",
                "machineID": "m1",
                "operatingSystem": "linux",
                "systemUUID": "u1",
            },
        },
    }


@pytest.fixture
async def kube() -> AsyncIterator[tuple[kmock.KubernetesEmulator, str]]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["v1/nodes"] = kmock.ResourceInfo(kind="Node", namespaced=False, verbs={"list", "watch"})
        yield emulator, str(server.url).rstrip("/")


def _core(url: str) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = url
    return client.CoreV1Api(client.ApiClient(configuration))


async def _until(kv: KeyValue, key: str, predicate: Callable[[NodeInventory | None], bool]) -> NodeInventory | None:
    """Follow the key with a KV watch until the predicate holds for its value (None = absent)."""
    watcher = await kv.watch(key)
    try:
        current: NodeInventory | None = None
        while True:
            entry = await watcher.updates(timeout=15)
            if entry is not None:
                current = (
                    None if entry.operation in ("DEL", "PURGE") else NodeInventory.model_validate_json(entry.value)
                )
            if predicate(current):
                return current
    finally:
        await watcher.stop()


async def test_inventory_follows_nodes(
    kube: tuple[kmock.KubernetesEmulator, str], deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    _emulator, url = kube
    core = _core(url)
    await asyncio.to_thread(core.create_node, _node("node-a", instance="i-aaa"))
    await asyncio.to_thread(core.create_node, _node("node-b", instance="i-bbb"))
    settings = InventorySettings(
        nats=deployed.role, cluster="prod-1", kube_mode="url", api_url=url, read_timeout_s=2, retry_backoff_s=0.2
    )
    watcher = InventoryWatcher(settings)
    kv = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory")
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.synced.wait(), timeout=15)
        a = await _until(kv, inventory_key("prod-1", "node-a"), lambda v: v is not None)
        assert a is not None
        assert (a.instance_id, a.cloud, a.zone, a.machine_model) == (
            "i-aaa",
            "alibaba",
            "cn-hangzhou-k",
            "ecs.ebmg7.32xlarge",
        )
        assert a.kernel == "5.10.134-16.al8.x86_64" and a.addresses == ("10.0.0.7",) and a.ready is True
        assert a.container_runtime == "containerd"
        by_instance = NodeInventory.model_validate_json((await kv.get(instance_key("i-bbb"))).value or b"")
        assert by_instance.node == "node-b"

        # a change of the Node reaches the bucket (through the watch)
        await asyncio.to_thread(
            core.patch_node, "node-a", {"metadata": {"labels": {"topology.kubernetes.io/zone": "cn-hangzhou-j"}}}
        )
        changed = await _until(
            kv, inventory_key("prod-1", "node-a"), lambda v: v is not None and v.zone == "cn-hangzhou-j"
        )
        assert changed is not None and changed.instance_id == "i-aaa"

        # a new node appears
        await asyncio.to_thread(core.create_node, _node("node-c", instance="i-ccc", ready="False"))
        c = await _until(kv, inventory_key("prod-1", "node-c"), lambda v: v is not None)
        assert c is not None and c.ready is False

        # a deleted node disappears from both keys
        await asyncio.to_thread(core.delete_node, "node-b")
        await _until(kv, inventory_key("prod-1", "node-b"), lambda v: v is None)
        with pytest.raises(KeyNotFoundError):
            await kv.get(instance_key("i-bbb"))
    finally:
        await watcher.stop()
    assert watcher.watcher.relists >= 1


async def test_relist_removes_nodes_deleted_while_away(
    kube: tuple[kmock.KubernetesEmulator, str], deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    _emulator, url = kube
    kv = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory")
    # a record left from before (its Node was deleted while no watcher ran), and one of another cluster
    stale = NodeInventory(cluster="prod-1", node="gone", instance_id="i-gone")
    await kv.put(inventory_key("prod-1", "gone"), stale.to_json())
    await kv.put(instance_key("i-gone"), stale.to_json())
    other = NodeInventory(cluster="prod-2", node="gone")
    await kv.put(inventory_key("prod-2", "gone"), other.to_json())
    await asyncio.to_thread(_core(url).create_node, _node("node-a", instance="i-aaa"))
    settings = InventorySettings(nats=deployed.role, cluster="prod-1", kube_mode="url", api_url=url, read_timeout_s=2)
    watcher = InventoryWatcher(settings)
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.synced.wait(), timeout=15)
        await _until(kv, inventory_key("prod-1", "gone"), lambda v: v is None)
        with pytest.raises(KeyNotFoundError):
            await kv.get(instance_key("i-gone"))
        assert (await kv.get(inventory_key("prod-2", "gone"))).value
        assert (await kv.get(inventory_key("prod-1", "node-a"))).value
    finally:
        await watcher.stop()


async def test_410_gone_leads_to_a_relist(
    kube: tuple[kmock.KubernetesEmulator, str], deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    emulator, url = kube
    answered = {"gone": False}

    def first_watch(request: kmock.Request) -> bool:
        if request.params.get("watch") == "true" and not answered["gone"]:
            answered["gone"] = True
            return True
        return False

    expired = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}
    emulator[first_watch] << json.dumps(expired).encode() + b"\n"  # one watch line, as the API server sends it
    core = _core(url)
    await asyncio.to_thread(core.create_node, _node("node-a", instance="i-aaa"))
    kv = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory")
    settings = InventorySettings(nats=deployed.role, cluster="prod-1", kube_mode="url", api_url=url, read_timeout_s=2)
    watcher = InventoryWatcher(settings)
    await watcher.start()
    try:
        await _until(kv, inventory_key("prod-1", "node-a"), lambda v: v is not None)
        await asyncio.to_thread(core.create_node, _node("node-b", instance="i-bbb"))
        await _until(kv, inventory_key("prod-1", "node-b"), lambda v: v is not None)
    finally:
        await watcher.stop()
    assert answered["gone"]
    assert watcher.watcher.relists == 2  # the first list, and the one after 410 Gone


async def test_a_full_inventory_bucket_is_said_with_what_to_do_and_the_watcher_catches_up_after(
    kube: tuple[kmock.KubernetesEmulator, str],
    deployed: RoleServer,
    topology_ready: NatsSettings,
    nc: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bucket's byte cap (3 % of `streams apply --store-gib`; the default 1 GiB holds about 10,000 nodes) is
    reached: the server refuses the write ("maximum bytes exceeded", a 503). Before, the watcher logged a traceback
    at every retry, like a NATS outage, and stayed ready while no Node was written. Now it says the bucket is
    full and what to run (once a minute, no traceback), is not ready while it is, and writes what waited once
    the cap is raised."""
    _emulator, url = kube
    core = _core(url)
    await asyncio.to_thread(core.create_node, _node("node-a", instance="i-aaa"))
    settings = InventorySettings(
        nats=deployed.role, cluster="prod-1", kube_mode="url", api_url=url, read_timeout_s=2, retry_backoff_s=0.2
    )
    watcher = InventoryWatcher(settings)
    js = nc.jetstream()
    bucket = f"{topology_ready.bucket_prefix}-inventory"
    kv = await js.key_value(bucket)
    await watcher.start()
    try:
        await asyncio.wait_for(watcher.synced.wait(), timeout=15)
        await _until(kv, instance_key("i-aaa"), lambda v: v is not None)
        info = await js.stream_info(f"KV_{bucket}")
        cap = info.config.max_bytes
        info.config.max_bytes = int(info.state.bytes or 0)  # full now: the next write is refused
        await js.update_stream(info.config)
        await asyncio.to_thread(core.create_node, _node("node-b", instance="i-bbb"))
        for _ in range(150):
            ok, why = await watcher.ready()
            if not ok:
                break
            await asyncio.sleep(0.1)
        assert not ok and "is full" in why and "--store-gib" in why, why
        said = [r for r in caplog.records if "is full" in r.getMessage()]
        assert said and not any(r.exc_info for r in said)
        info.config.max_bytes = cap
        await js.update_stream(info.config)
        b = await _until(kv, inventory_key("prod-1", "node-b"), lambda v: v is not None)
        assert b is not None and b.instance_id == "i-bbb"
        for _ in range(50):
            if (await watcher.ready())[0]:
                break
            await asyncio.sleep(0.1)
        assert await watcher.ready() == (True, "ok")
    finally:
        await watcher.stop()
