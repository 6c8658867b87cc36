"""Per-node leases in `nodeheal-leases`: ownership is decided only by create / compare-and-set.

`kv.create` succeeds for one replica only; renewals are `kv.update(last=rev)`, so a replica that lost
its lease (a pause longer than the bucket TTL, after which another replica created the key anew) fails
its next renewal and stops. The current revision is the fencing token: it travels in every
`NodeCommand.lease_revision` and every audit record. Reads (`get`) never decide ownership: they may be
served by a follower. A crashed holder's key ages out with the bucket TTL (kured #137: a lock held by a
dead node must not block the fleet forever).

Revisions count within one bucket: a bucket created anew (JetStream rebuilt after a disaster) starts again at
1. So a lease also carries its bucket's creation time (`epoch`, µs, from the bucket's stream info, read at each
acquire): it travels as `NodeCommand.lease_epoch`, and the agent's fence compares (epoch, revision). Without it,
every agent that had executed a higher revision of the old bucket refused every command for good.

Renewals of one lease take turns (`Lease.turn`): the ladder's fence right before a side effect and the keeper's
periodic renewal used to send the same `last` revision at once, and the loser marked the lease lost though
nobody else held it. A renewal refused for its revision reads the key once: a value that holds this lease's own
`token` (a renewal of ours whose reply was lost) is adopted and renewed again by compare-and-set, so ownership is
still decided only by compare-and-set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nodeheal.runtime.consumer import describe
from nodeheal.schemas.inventory import inventory_key

log = logging.getLogger("nodeheal.remediator.leases")


class LeaseLostError(RuntimeError):
    """Our lease was taken or expired: stop acting on the node at once."""


@dataclass(slots=True)
class Lease:
    key: str
    node: str
    holder: str
    revision: int
    lost: bool = False
    epoch: int | None = None
    """the bucket's creation time (µs since 1970); None when its stream info could not be read"""
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    """this lease's own mark in the key's value: a renewal of ours whose reply was lost is recognised by it"""
    turn: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)
    """renewals of this lease take turns (each needs the revision the one before it wrote)"""


class Leases:
    def __init__(self, kv: KeyValue, *, holder: str, ttl_s: float) -> None:
        self.kv = kv
        self.holder = holder
        self.ttl_s = ttl_s

    @staticmethod
    def key(cluster: str, node: str) -> str:
        return inventory_key(cluster, node)

    def _value(self, *, node: str, action: str, token: str) -> bytes:
        now = datetime.now(tz=UTC).isoformat()
        body = {"holder": self.holder, "node": node, "action": action, "renewed_at": now, "token": token}
        return json.dumps(body).encode()

    def value_of(self, lease: Lease, *, action: str = "") -> bytes:
        """What a renewal of `lease` writes."""
        return self._value(node=lease.node, action=action, token=lease.token)

    async def acquire(self, *, cluster: str, node: str, action: str) -> Lease | None:
        key = self.key(cluster, node)
        token = secrets.token_hex(8)
        try:
            revision = await self.kv.create(key, self._value(node=node, action=action, token=token))
        except KeyWrongLastSequenceError:
            return None
        return Lease(key=key, node=node, holder=self.holder, revision=revision, epoch=await self.epoch(), token=token)

    async def epoch(self) -> int | None:
        """The bucket's creation time in µs (the lease epoch). Read at every acquire, so a bucket created anew
        while this process runs is seen by its next lease; None (the agent then fences by revision alone, as
        before) when the stream info cannot be read now."""
        try:
            created = (await self.kv.status()).stream_info.created
        except Exception as exc:
            log.warning("lease bucket's creation time not read", extra={"error": describe(exc)})
            return None
        if created is None:
            return None
        return int(created.timestamp() * 1_000_000)

    async def renew(self, lease: Lease, *, action: str = "") -> None:
        async with lease.turn:
            if lease.lost:
                raise LeaseLostError(f"lease on {lease.node} already lost")
            value = self.value_of(lease, action=action)
            try:
                lease.revision = await self.kv.update(lease.key, value, last=lease.revision)
                return
            except KeyWrongLastSequenceError as exc:
                refused: Exception = exc
            ours = await self._still_ours(lease)
            if ours is not None:
                try:
                    lease.revision = await self.kv.update(lease.key, value, last=ours)
                    log.info("lease renewal adopted after a lost reply", extra={"node": lease.node, "revision": ours})
                    return
                except KeyWrongLastSequenceError as exc:
                    refused = exc
            lease.lost = True
            msg = f"lease on node {lease.node} (revision {lease.revision}) was taken or expired; stopping"
            raise LeaseLostError(msg) from refused

    async def _still_ours(self, lease: Lease) -> int | None:
        """The key's revision when its value is this lease's (`token`): a renewal of ours was stored and its reply
        lost. None when the key is gone or another holder's. Only a hint (a read may be a follower's): the caller
        renews by compare-and-set on it."""
        try:
            entry = await self.kv.get(lease.key)
            held = json.loads(entry.value or b"{}")
        except (KeyNotFoundError, ValueError):
            return None
        if not isinstance(held, dict) or held.get("token") != lease.token or entry.revision is None:
            return None
        return int(entry.revision)

    async def release(self, lease: Lease) -> None:
        if lease.lost:
            return
        try:
            await self.kv.delete(lease.key, last=lease.revision)
        except Exception as exc:  # an expired lease needs no release
            log.info("lease release skipped", extra={"node": lease.node, "error": str(exc)})

    async def keep(self, lease: Lease, *, stop: asyncio.Event) -> None:
        """Renew every ttl/3 until `stop` is set; on loss mark the lease lost and return."""
        interval = max(self.ttl_s / 3, 0.05)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            try:
                await self.renew(lease)
            except LeaseLostError:
                log.error("lease lost", extra={"node": lease.node})
                return
            except Exception as exc:  # NATS briefly away: keep trying until the TTL decides
                log.warning("lease renewal failed", extra={"node": lease.node, "error": str(exc)})
