"""One machine claimed by Nodes of two clusters: it moved from cluster prod-a to prod-b while prod-a still
lists its old Node object (NotReady, created before). One NATS serves both clusters, so both clusters'
inventory watchers (one `InventoryStore` each) write the one bucket. The index `instance.<id>` must name
prod-b's Ready Node whichever store wrote last, and prod-a's store dropping its stale Node must not take
the index away from prod-b. Before, the index was keyed by the instance id alone and each store wrote and
deleted it as if it were the only claimant: the last writer won, and prod-a's delete removed the index
that prod-b needed (a cloud event for the machine was then published unmapped).

Two real stores against a real nats-server; the ingest's `InventoryResolver` reads the index. The stores write as
deployed: through a connection under the `inventory` role's credential and inbox, the server running the per-role
authorization, no permission violation logged."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from nodeheal.cloud_events.ingest.sink import InventoryResolver
from nodeheal.cloud_events.inventory.store import InventoryStore
from nodeheal.runtime.jetstream import kv_keys
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import NodeInventory, claim_key, instance_key
from tests.integration.deploy.natsauth_loader import RoleServer, deployed_as

pytestmark = pytest.mark.nats


deployed = deployed_as("inventory")  # the service under its role; no violation logged


@pytest.fixture(name="js")
async def inventory_js(deployed: RoleServer) -> JetStreamContext:
    """What the inventory watchers write with: a connection under the `inventory` role."""
    return (await deployed.role_nc("inventory")).jetstream()


@pytest.fixture(name="topology_ready")
def admin_settings(deployed: RoleServer) -> NatsSettings:
    """The layout's names (provisioned on the per-role server by the admin)."""
    return deployed.settings


MACHINE = "i-bp1moved"
STALE = NodeInventory(
    cluster="prod-a",
    node="old-name",
    instance_id=MACHINE,
    ready=False,
    created_at=datetime(2024, 3, 1, 8, tzinfo=UTC),
)
LIVE = NodeInventory(
    cluster="prod-b",
    node="new-name",
    instance_id=MACHINE,
    ready=True,
    created_at=datetime(2025, 6, 1, 8, tzinfo=UTC),
)


async def _bucket(js: JetStreamContext, settings: NatsSettings) -> KeyValue:
    return await js.key_value(f"{settings.bucket_prefix}-inventory")


async def _named(kv: KeyValue) -> tuple[str, str] | None:
    record = await InventoryResolver(kv, ttl_s=0).resolve(MACHINE)
    return None if record is None else (record.cluster, record.node)


async def _listed(store: InventoryStore, record: NodeInventory) -> None:
    """The store's first list: the record, then the list's end (the index is written from then on)."""
    await store.upsert(record)
    await store.remove_absent([record.node])


@pytest.mark.parametrize("last", ["prod-a", "prod-b", "together"])
async def test_the_index_names_the_ready_node_whichever_cluster_wrote_last(
    js: JetStreamContext, topology_ready: NatsSettings, last: str
) -> None:
    kv = await _bucket(js, topology_ready)
    a, b = InventoryStore(kv, cluster="prod-a"), InventoryStore(kv, cluster="prod-b")
    if last == "prod-a":
        await _listed(b, LIVE)
        await _listed(a, STALE)
    elif last == "prod-b":
        await _listed(a, STALE)
        await _listed(b, LIVE)
    else:
        await asyncio.gather(_listed(a, STALE), _listed(b, LIVE))
    assert await _named(kv) == ("prod-b", "new-name")

    # a later change of the stale Node (a label) does not take the index back
    await a.upsert(STALE.model_copy(update={"labels": {"nodeheal.io/step": "2"}}))
    assert await _named(kv) == ("prod-b", "new-name")
    # each cluster's own claim is there
    assert sorted(await kv_keys(kv, pattern=f"claim.{MACHINE}.*")) == sorted(
        [claim_key(MACHINE, "prod-a"), claim_key(MACHINE, "prod-b")]
    )


async def test_one_clusters_delete_leaves_the_other_clusters_claim(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    kv = await _bucket(js, topology_ready)
    a, b = InventoryStore(kv, cluster="prod-a"), InventoryStore(kv, cluster="prod-b")
    await _listed(b, LIVE)
    await _listed(a, STALE)
    await a.upsert(STALE.model_copy(update={"labels": {"nodeheal.io/step": "2"}}))

    # prod-a's operator deletes the stale Node: the index stays on prod-b's Node
    await a.remove("old-name", instance_id=MACHINE)
    assert await _named(kv) == ("prod-b", "new-name")
    # and prod-b's later change still reaches it
    await b.upsert(LIVE.model_copy(update={"rack": "r7"}))
    record = await InventoryResolver(kv, ttl_s=0).resolve(MACHINE)
    assert record is not None
    assert (record.cluster, record.node, record.rack) == ("prod-b", "new-name", "r7")

    # the last claimant gone, the index goes
    await b.remove("new-name", instance_id=MACHINE)
    assert await _named(kv) is None


async def test_the_index_moves_to_the_other_cluster_when_its_node_goes(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """prod-b's Node goes first (the machine left prod-b): the index names prod-a's remaining claimant."""
    kv = await _bucket(js, topology_ready)
    a, b = InventoryStore(kv, cluster="prod-a"), InventoryStore(kv, cluster="prod-b")
    await _listed(a, STALE)
    await _listed(b, LIVE)
    assert await _named(kv) == ("prod-b", "new-name")
    await b.remove("new-name", instance_id=MACHINE)
    assert await _named(kv) == ("prod-a", "old-name")


async def test_a_relist_drops_this_clusters_stale_claim(js: JetStreamContext, topology_ready: NatsSettings) -> None:
    """prod-a's watcher restarts after old-name went while it was away (its node key is gone too: only the claim
    of the run before is left): the relist drops that claim, and the index names prod-b's Node."""
    kv = await _bucket(js, topology_ready)
    await kv.put(claim_key(MACHINE, "prod-a"), STALE.to_json())
    await kv.put(instance_key(MACHINE), STALE.to_json())
    b = InventoryStore(kv, cluster="prod-b")
    await _listed(b, LIVE)
    await InventoryStore(kv, cluster="prod-a").remove_absent([])
    assert await _named(kv) == ("prod-b", "new-name")
    with pytest.raises(Exception, match="not found"):
        await kv.get(claim_key(MACHINE, "prod-a"))
