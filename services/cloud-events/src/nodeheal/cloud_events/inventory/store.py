"""Writing `NodeInventory` records to the `nodeheal-inventory` bucket: the node key and the
instance-id index, unchanged records not rewritten (Node objects change often; the bucket should
only change when the inventory does), stale keys removed after a relist.

One machine can be claimed by two live Nodes (the same `spec.providerID`): the kubelet re-registered it
under a new name while the old Node object still exists. The index `instance.<id>` then names one of
them, chosen by `_rank` from every live claimant this process knows (the Ready one, else the one created
last, else the greatest name), whichever of them changed last; when the Node it names goes, it is
rewritten for the next claimant. It is deleted only when no claimant is left, and only if it still
names the Node being removed (compare-and-delete on its revision: another cluster's inventory, or
another claimant, may have written it since). Until the first list is complete the index is not
written at all: claimants seen so far are not all claimants."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nodeheal.runtime.jetstream import kv_keys
from nodeheal.schemas.inventory import NodeInventory, instance_key, inventory_key
from nodeheal.schemas.subjects import escape_token

log = logging.getLogger("nodeheal.cloud_events.inventory.store")

_WRONG_LAST_SEQUENCE = (10071, 10164)
_NEVER = datetime.min.replace(tzinfo=UTC)


def _fingerprint(record: NodeInventory) -> str:
    return record.model_copy(update={"updated_at": None}).model_dump_json()


def _rank(record: NodeInventory) -> tuple[bool, datetime, str]:
    """Which claimant of an instance id the index names: the greatest. The Ready one (the kubelet of the
    machine posts status there), else the one created last (the kubelet registers the machine's current
    name; the older Node is what it left behind), else the greatest name (deterministic)."""
    return (record.ready is True, record.created_at or _NEVER, record.node)


class InventoryStore:
    def __init__(self, kv: KeyValue, *, cluster: str) -> None:
        self.kv = kv
        self.cluster = cluster
        self._written: dict[str, tuple[str, str | None]] = {}  # node → (fingerprint, instance id)
        self._claims: dict[str, dict[str, NodeInventory]] = {}  # instance id → live Node → its record
        # instance id → the record its key holds (written here); a claimant's record is replaced only when it
        # changed, so `is` tells whether the key is current without a second copy of every record
        self._index: dict[str, NodeInventory] = {}
        self._listed = False  # the first list is complete: every claimant is known
        self._pending: set[str] = set()  # instance ids whose index waits for the first list
        self.writes = 0
        self.deletes = 0

    async def upsert(self, record: NodeInventory) -> bool:
        """Write the record if it changed; True when something was written."""
        fingerprint = _fingerprint(record)
        previous = self._written.get(record.node)
        if previous is not None and previous[0] == fingerprint:
            return False
        await self.kv.put(inventory_key(self.cluster, record.node), record.to_json())
        if record.instance_id:
            self._claims.setdefault(record.instance_id, {})[record.node] = record
            await self._settle(record.instance_id)
        old_instance = previous[1] if previous else None
        if old_instance and old_instance != record.instance_id:
            await self._unclaim(old_instance, record.node)
        self._written[record.node] = (fingerprint, record.instance_id)
        self.writes += 1
        return True

    async def remove(self, node: str, *, instance_id: str | None = None) -> None:
        previous = self._written.pop(node, None)
        # the index first: whoever sees the node key gone may rely on the index being gone too
        for instance in {instance_id, previous[1] if previous else None} - {None}:
            assert instance is not None
            await self._unclaim(instance, node)
        await self._delete(inventory_key(self.cluster, node))
        self.deletes += 1

    async def _unclaim(self, instance: str, node: str) -> None:
        """`node` no longer claims `instance`: the index moves to the next claimant, or goes if it was node's."""
        claimants = self._claims.get(instance)
        if claimants is not None:
            claimants.pop(node, None)
            if not claimants:
                del self._claims[instance]
        if instance in self._claims:
            await self._settle(instance)
        else:
            self._index.pop(instance, None)
            self._pending.discard(instance)
            await self._delete_index_of(instance, node)

    async def _settle(self, instance: str) -> None:
        """Make `instance.<id>` hold the record of the claimant `_rank` chooses (unless it already does)."""
        claimants = self._claims.get(instance)
        if not claimants:
            return
        if not self._listed:
            self._pending.add(instance)
            return
        best = max(claimants.values(), key=_rank)
        if self._index.get(instance) is best:
            return
        await self.kv.put(instance_key(instance), best.to_json())
        self._index[instance] = best

    async def _delete_index_of(self, instance: str, node: str) -> None:
        """Delete `instance.<id>` if it names (this cluster, node), and nothing was written to it since read."""
        key = instance_key(instance)
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return
        try:
            named = NodeInventory.model_validate_json(entry.value or b"")
        except ValueError:
            named = None
        if named is not None and (named.cluster, named.node) != (self.cluster, node):
            return
        try:
            await self.kv.delete(key, last=entry.revision)
        except KeyWrongLastSequenceError:
            pass
        except APIError as exc:  # the server's "wrong last sequence" answer to a conditional delete
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                raise

    async def _delete(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except KeyNotFoundError:
            pass

    async def remove_absent(self, present: Iterable[str]) -> list[str]:
        """After a (re)list: delete the records of nodes of this cluster that no longer exist, and write
        the index of every instance id the first list found."""
        names = set(present)
        self._listed = True
        removed: list[str] = []
        for node in [n for n in self._written if n not in names]:  # seen by this process, gone since
            await self.remove(node)
            removed.append(inventory_key(self.cluster, node))
        keep = {inventory_key(self.cluster, n) for n in names}
        prefix = f"node.{escape_token(self.cluster)}."
        for key in await kv_keys(self.kv, pattern=prefix + "*"):
            if key not in keep:
                try:
                    entry = await self.kv.get(key)
                except KeyNotFoundError:
                    continue  # deleted before: its delete marker is still in the subject index
                record = _record_of(entry.value)
                if record is not None and record.instance_id:
                    await self._unclaim(record.instance_id, record.node)
                await self._delete(key)
                removed.append(key)
                self.deletes += 1
        for instance in sorted(self._pending):
            await self._settle(instance)
        self._pending.clear()
        if removed:
            log.info("removed nodes that no longer exist", extra={"count": len(removed)})
        return removed


def _record_of(value: bytes | None) -> NodeInventory | None:
    try:
        return NodeInventory.model_validate_json(value or b"")
    except ValueError:
        return None
