"""Writing `NodeInventory` records to the `nodeheal-inventory` bucket: the node key and the
instance-id index, unchanged records not rewritten (Node objects change often; the bucket should
only change when the inventory does), stale keys removed after a relist."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nodeheal.runtime.jetstream import kv_keys
from nodeheal.schemas.inventory import NodeInventory, instance_key, inventory_key
from nodeheal.schemas.subjects import escape_token

log = logging.getLogger("nodeheal.cloud_events.inventory.store")


def _fingerprint(record: NodeInventory) -> str:
    return record.model_copy(update={"updated_at": None}).model_dump_json()


class InventoryStore:
    def __init__(self, kv: KeyValue, *, cluster: str) -> None:
        self.kv = kv
        self.cluster = cluster
        self._written: dict[str, tuple[str, str | None]] = {}  # node → (fingerprint, instance id)
        self.writes = 0
        self.deletes = 0

    async def upsert(self, record: NodeInventory) -> bool:
        """Write the record if it changed; True when something was written."""
        fingerprint = _fingerprint(record)
        previous = self._written.get(record.node)
        if previous is not None and previous[0] == fingerprint:
            return False
        payload = record.to_json()
        await self.kv.put(inventory_key(self.cluster, record.node), payload)
        if record.instance_id:
            await self.kv.put(instance_key(record.instance_id), payload)
        old_instance = previous[1] if previous else None
        if old_instance and old_instance != record.instance_id:
            await self._delete(instance_key(old_instance))
        self._written[record.node] = (fingerprint, record.instance_id)
        self.writes += 1
        return True

    async def remove(self, node: str, *, instance_id: str | None = None) -> None:
        previous = self._written.pop(node, None)
        # the index first: whoever sees the node key gone may rely on the index being gone too
        for instance in {instance_id, previous[1] if previous else None} - {None}:
            assert instance is not None
            await self._delete(instance_key(instance))
        await self._delete(inventory_key(self.cluster, node))
        self.deletes += 1

    async def _delete(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except KeyNotFoundError:
            pass

    async def remove_absent(self, present: Iterable[str]) -> list[str]:
        """After a (re)list: delete the records of nodes of this cluster that no longer exist."""
        keep = {inventory_key(self.cluster, n) for n in present}
        prefix = f"node.{escape_token(self.cluster)}."
        removed: list[str] = []
        for key in await kv_keys(self.kv, pattern=prefix + "*"):
            if key not in keep:
                try:
                    entry = await self.kv.get(key)
                except KeyNotFoundError:
                    continue  # deleted before: its delete marker is still in the subject index
                instance = _instance_of(entry.value)
                if instance:
                    await self._delete(instance_key(instance))
                await self._delete(key)
                removed.append(key)
                self.deletes += 1
        if removed:
            log.info("removed nodes that no longer exist", extra={"count": len(removed)})
        return removed


def _instance_of(value: bytes | None) -> str | None:
    try:
        return NodeInventory.model_validate_json(value or b"").instance_id
    except ValueError:
        return None
