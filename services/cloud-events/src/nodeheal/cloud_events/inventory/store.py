"""Writing `NodeInventory` records to the `nodeheal-inventory` bucket: the node key, this cluster's claims
and the instance-id index, unchanged records not rewritten (Node objects change often; the bucket should
only change when the inventory does), stale keys removed after a relist.

One machine can be claimed by two live Nodes (the same `spec.providerID`): the kubelet re-registered it
under a new name while the old Node object still exists, in this cluster or in another one (a machine
moved from cluster A to cluster B while A still lists its old Node; one NATS serves every cluster, one
watcher per cluster). Each watcher writes only its own cluster's claim `claim.<id>.<cluster>`: the
record of the claimant `_rank` chooses among this cluster's live Nodes. The index `instance.<id>` names
the claimant `_rank` chooses among every cluster's claims (the Ready one, else the one created last, else
the greatest name, then cluster), and every watcher computes it the same way after it changed its claim:
read the index (its revision), list the claims, write the chosen record only if the index does not hold
it already, conditional on the revision read (another watcher wrote it since: read and choose again).
So whichever watcher writes last, the index is the same choice, and a watcher whose last claimant goes
deletes its claim and moves the index to another cluster's claimant; the index is deleted only when no
claim of any cluster is left. Until the first list is complete nothing is claimed: claimants seen so
far are not all claimants.

A restarted watcher first reads what the bucket holds (`load`: this cluster's node records and claims, every
cluster's claims and the index, one KV watch each): a Node whose record is unchanged is not written again, nor
its claim, nor its index when the index already names the claim `_rank` chooses. Before, a restart rewrote all
three records of every node (a 50,000-node restart list through the watcher's loop took 84 s and put 150,000
updates before every service that watches the bucket; now 23 s and none: docs/BENCHMARKS.md).
What the load finds inconsistent — an index that does not name the chosen claim, or
names an instance no cluster claims (a watcher killed between its two writes) — is written again at the end of
the first list."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nodeheal.runtime.jetstream import kv_keys
from nodeheal.runtime.kvwatch import last_values
from nodeheal.schemas.inventory import NodeInventory, claim_key, instance_key, inventory_key
from nodeheal.schemas.subjects import escape_token, unescape_token

log = logging.getLogger("nodeheal.cloud_events.inventory.store")

_WRONG_LAST_SEQUENCE = (10071, 10164)
_BUCKET_FULL = 10077  # "maximum bytes exceeded": the bucket's byte cap is reached (KV buckets refuse new writes)


class BucketFullError(Exception):
    """The inventory bucket refuses writes: its byte cap, a share of `nodeheal streams apply --store-gib`, is too
    small for the fleet. Said with what to do; the watcher keeps the event and tries again."""

    def __init__(self, kv: KeyValue) -> None:
        bucket = getattr(kv, "_name", "inventory")  # nats-py keeps the bucket name private
        super().__init__(
            f"the inventory bucket {bucket} is full (the server answers 'maximum bytes exceeded'): nodeheal streams "
            "apply gives it 3 % of --store-gib (31 MiB of the default 1 GiB), and each node takes about 3 KiB there "
            "(its record, its cluster's claim, the instance index: about 10,000 nodes per GiB of --store-gib). "
            "Re-run `nodeheal streams apply --store-gib N` with N for your fleet (production: 64) on a NATS volume "
            "that holds it; until then new and changed Nodes are not written (the watcher keeps trying)"
        )


_NEVER = datetime.min.replace(tzinfo=UTC)
SETTLE_CONCURRENCY = 64
"""Instances whose claim and index the end of a list writes at once (`remove_absent`)."""
INDEX_ATTEMPTS = 20
"""How many times one index update reads and chooses again after another watcher wrote the index between
its read and its conditional write (each retry follows a write that did succeed)."""


def _fingerprint(record: NodeInventory) -> str:
    return record.model_copy(update={"updated_at": None}).model_dump_json()


def _rank(record: NodeInventory) -> tuple[bool, datetime, str, str]:
    """Which claimant of an instance id a claim and the index name: the greatest. The Ready one (the kubelet
    of the machine posts status there), else the one created last (the kubelet registers the machine's
    current name; the older Node is what it left behind), else the greatest name, then the greatest cluster
    (deterministic: every watcher chooses the same)."""
    return (record.ready is True, record.created_at or _NEVER, record.node, record.cluster)


class InventoryStore:
    def __init__(self, kv: KeyValue, *, cluster: str) -> None:
        self.kv = kv
        self.cluster = cluster
        self._written: dict[str, tuple[str, str | None]] = {}  # node → (fingerprint, instance id)
        self._claims: dict[str, dict[str, NodeInventory]] = {}  # instance id → live Node → its record
        # instance id → the record this cluster's claim key holds (written here); a claimant's record is
        # replaced only when it changed, so `is` tells whether the claim is current without a second copy
        self._claimed: dict[str, NodeInventory] = {}
        self._listed = False  # the first list is complete: every claimant is known
        self._pending: set[str] = set()  # instance ids whose index waits for the first list
        # what `load` read, until the first list has settled: this cluster's stored node records (node → record;
        # the list takes each back as it finds the Node unchanged) and the instance ids whose index is not the
        # choice of the stored claims
        self._stored: dict[str, NodeInventory] = {}
        self._stale_index: set[str] = set()
        self.writes = 0
        self.deletes = 0

    @property
    def listed(self) -> bool:
        """The first list is complete (`remove_absent` ran): from then on an upsert writes claims and the index."""
        return self._listed

    async def load(self) -> int:
        """Read what the bucket holds before the first list (a restarted watcher): this cluster's node records
        (an unchanged Node is then not written again) and claims, and which instances' index is not the claim
        `_rank` chooses among every cluster's stored claims. Returns the node records read."""
        prefix = escape_token(self.cluster)
        for entry in await last_values(self.kv, f"node.{prefix}.*"):
            record = _record_of(entry.value)
            if record is not None and record.cluster == self.cluster:
                self._stored[record.node] = record
                self._written[record.node] = (_fingerprint(record), record.instance_id)
        # every cluster's claims and the index, as stored bytes: parsed only where a comparison needs it (an
        # instance claimed by more than one cluster, an index whose bytes are not its one claim's)
        claims: dict[str, list[bytes]] = {}
        for entry in await last_values(self.kv, "claim.>"):
            tokens = _tokens(entry.key)
            if len(tokens) != 3:  # not a key this store writes: left alone
                continue
            _, instance, cluster = tokens
            claims.setdefault(instance, []).append(entry.value or b"")
            if cluster == self.cluster and (record := _record_of(entry.value)) is not None:
                self._claimed[instance] = record
        index = {t[1]: e.value for e in await last_values(self.kv, "instance.>") if len(t := _tokens(e.key)) == 2}
        for instance, stored in claims.items():
            value = index.pop(instance, None)
            if value is None:
                self._stale_index.add(instance)
            elif len(stored) > 1 or value != stored[0]:
                best = max((r for r in map(_record_of, stored) if r is not None), key=_rank, default=None)
                if _record_of(value) != best:
                    self._stale_index.add(instance)
        self._stale_index.update(index)  # an index no claim backs
        if self._stored:
            log.info(
                "read the inventory a watcher before this one wrote",
                extra={"nodes": len(self._stored), "stale_index": len(self._stale_index)},
            )
        return len(self._stored)

    async def upsert(self, record: NodeInventory) -> bool:
        """Write the record if it changed; True when something was written."""
        fingerprint = _fingerprint(record)
        previous = self._written.get(record.node)
        if previous is not None and previous[0] == fingerprint:
            stored = self._stored.pop(record.node, None)
            if stored is not None and stored.instance_id:  # unchanged since a watcher before: claimed as stored
                self._claims.setdefault(stored.instance_id, {})[stored.node] = stored
                await self._settle(stored.instance_id)
            return False
        self._stored.pop(record.node, None)
        await self._put(inventory_key(self.cluster, record.node), record.to_json())
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
        """`node` no longer claims `instance`: this cluster's claim moves to its next claimant, or goes if it
        was the last one (then the index moves to another cluster's claim, or goes)."""
        claimants = self._claims.get(instance)
        if claimants is not None:
            claimants.pop(node, None)
            if not claimants:
                del self._claims[instance]
        if instance in self._claims:
            await self._settle(instance)
        else:
            self._claimed.pop(instance, None)
            self._pending.discard(instance)
            await self._delete(claim_key(instance, self.cluster))
            await self._reindex(instance)

    async def _settle(self, instance: str) -> None:
        """Make `claim.<id>.<cluster>` hold the record of the claimant `_rank` chooses (unless it already
        does), then the index the claim `_rank` chooses across clusters."""
        claimants = self._claims.get(instance)
        if not claimants:
            return
        if not self._listed:
            self._pending.add(instance)
            return
        best = max(claimants.values(), key=_rank)
        claimed = self._claimed.get(instance)
        if claimed is best:
            return
        if claimed == best:  # as a watcher before this one stored it
            self._claimed[instance] = best
            if instance in self._stale_index:
                self._stale_index.discard(instance)
                await self._reindex(instance)
            return
        await self._put(claim_key(instance, self.cluster), best.to_json())
        self._claimed[instance] = best
        self._stale_index.discard(instance)
        await self._reindex(instance)

    async def _reindex(self, instance: str) -> None:
        """Make `instance.<id>` hold the claim `_rank` chooses among every cluster's claims (deleted if none):
        read the index, then the claims, then write conditional on the index revision read."""
        key = instance_key(instance)
        for _ in range(INDEX_ATTEMPTS):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError as exc:  # never written (no entry), or deleted (the delete marker's revision)
                exists, current = False, None
                revision = (exc.entry.revision or 0) if exc.entry is not None else 0
            else:
                exists, current, revision = True, _record_of(entry.value), entry.revision or 0
            best = await self._best_claim(instance)
            if best == current and (best is not None or not exists):
                return  # already the choice (or absent, and nothing to choose)
            try:
                if best is None:
                    await self.kv.delete(key, last=revision)
                else:
                    await self.kv.update(key, best.to_json(), last=revision)
            except KeyWrongLastSequenceError:
                continue
            except APIError as exc:  # the server's "wrong last sequence" answer to a conditional write
                if exc.err_code == _BUCKET_FULL:
                    raise BucketFullError(self.kv) from exc
                if exc.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
                continue
            return
        log.warning(
            "instance index kept changing under this watcher; left to its next writer", extra={"instance_id": instance}
        )

    async def _best_claim(self, instance: str) -> NodeInventory | None:
        """The claim `_rank` chooses among every cluster's `claim.<id>.*` keys (None: no cluster claims it)."""
        claims: list[NodeInventory] = []
        for key in await kv_keys(self.kv, pattern=f"claim.{escape_token(instance)}.*"):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                continue  # deleted: its delete marker is still in the subject index
            record = _record_of(entry.value)
            if record is not None:
                claims.append(record)
        return max(claims, key=_rank, default=None)

    async def _put(self, key: str, value: bytes) -> None:
        try:
            await self.kv.put(key, value)
        except APIError as exc:
            if exc.err_code == _BUCKET_FULL:
                raise BucketFullError(self.kv) from exc
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
        # the claims and the index of every instance the list found: independent keys, written SETTLE_CONCURRENCY
        # at a time (each is four or five round trips; one after the other, 50,000 nodes took 99 s)
        pending = sorted(self._pending)
        for start in range(0, len(pending), SETTLE_CONCURRENCY):
            await asyncio.gather(*(self._settle(i) for i in pending[start : start + SETTLE_CONCURRENCY]))
        self._pending.clear()
        # an index the load found not to be the stored claims' choice, of an instance this list did not settle
        # (another cluster's, or no longer claimed): chosen again, as every watcher chooses
        stale = sorted(self._stale_index)
        for start in range(0, len(stale), SETTLE_CONCURRENCY):
            await asyncio.gather(*(self._reindex(i) for i in stale[start : start + SETTLE_CONCURRENCY]))
        self._stale_index.clear()
        self._stored.clear()
        # claims of this cluster left by a run before whose Node no longer claims the instance (its node key
        # rewritten with another instance id, or gone, while no watcher ran)
        suffix = f".{escape_token(self.cluster)}"
        live = {claim_key(instance, self.cluster) for instance in self._claims}  # read only the others' values
        for key in await kv_keys(self.kv, pattern=f"claim.*{suffix}"):
            if key in live:
                continue
            try:
                record = _record_of((await self.kv.get(key)).value)
            except KeyNotFoundError:
                continue
            if record is None or record.cluster != self.cluster or not record.instance_id:
                continue
            if record.instance_id not in self._claims:
                await self._delete(key)
                await self._reindex(record.instance_id)
        if removed:
            log.info("removed nodes that no longer exist", extra={"count": len(removed)})
        return removed


def _tokens(key: str) -> list[str]:
    """A key's tokens, unescaped: `claim.<instance>.<cluster>` → ["claim", instance, cluster]."""
    return [unescape_token(t) for t in key.split(".")]


def _record_of(value: bytes | None) -> NodeInventory | None:
    try:
        return NodeInventory.model_validate_json(value or b"")
    except ValueError:
        return None
