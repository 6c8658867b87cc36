"""The inventory bucket (`<bucket_prefix>-inventory`, written by the inventory watcher), read the same
way by every service that needs node placements: one KV watch of the `node.<cluster>.<node>` keys (every
cluster's, or with `cluster` one cluster's: `node.<cluster>.*`), whose initial values are the load and whose
later entries are the changes. A record that does not validate is logged and skipped (a KV holds no DLQ: the
watcher that writes it validates it first).

The load reads the watch's initial values (one ordered consumer streaming the bucket's last values), not a
`get` per key: at 20,000 nodes the gets took 11.2 s, the watch's initial values 0.8 s (docs/BENCHMARKS.md,
`nodeheal bench inventory`), and the watch that followed delivered every record a second time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from nodeheal.runtime.kvwatch import Loaded, follow
from nodeheal.runtime.startup import patiently
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.subjects import escape_token, unescape_token

log = logging.getLogger("nodeheal.runtime.inventory")

OnPut = Callable[[NodeInventory], None]
OnDelete = Callable[[str, str], None]


class InventoryFeed:
    def __init__(
        self, bucket: str, *, on_put: OnPut, on_delete: OnDelete | None = None, cluster: str | None = None
    ) -> None:
        self.bucket = bucket
        self.pattern = "node.>" if cluster is None else f"node.{escape_token(cluster)}.*"
        """The keys read and followed: every cluster's nodes, or one cluster's."""
        self.on_put = on_put
        self.on_delete = on_delete
        self.kv: KeyValue | None = None
        self.loaded = 0
        self._entries: AsyncIterator[KeyValue.Entry | Loaded] | None = None
        """The watch `load` opened (its later entries are `watch`'s), None before."""

    async def open(self, js: JetStreamContext) -> bool:
        """Bind the bucket; False (with a warning) when it is not provisioned (`nodeheal streams apply`).
        A JetStream that is briefly unavailable is waited out (`patiently`), not taken for a missing
        bucket: a service that started without its inventory would never learn node placements."""
        try:
            self.kv = await patiently(f"inventory bucket {self.bucket}", lambda: js.key_value(self.bucket))
        except NotFoundError as exc:
            log.warning(
                "inventory bucket unavailable; node placements unknown",
                extra={"bucket": self.bucket, "error": str(exc)},
            )
            return False
        return True

    def apply(self, key: str, value: bytes | None, op: str | None) -> None:
        """One entry of the bucket (a put, or a delete/purge)."""
        if not key.startswith("node."):
            return
        if op in {"DEL", "PURGE"} or not value:
            if self.on_delete is not None:
                _, _, rest = key.partition(".")
                cluster, _, node = rest.partition(".")
                self.on_delete(unescape_token(cluster), unescape_token(node))
            return
        try:
            record = NodeInventory.model_validate_json(value)
        except Exception as exc:
            log.warning("bad inventory record ignored", extra={"key": key, "error": str(exc)[:300]})
            return
        self.on_put(record)

    async def load(self) -> int:
        """Every record in the bucket now (the watch's initial values, confirmed by the server: `follow`);
        returns how many records were read. `watch` then follows the same watch from there."""
        kv = self.kv
        if kv is None:
            return 0
        watcher = await patiently(f"inventory watch of {self.bucket}", lambda: kv.watch(self.pattern))
        entries = self._entries = follow(watcher)
        async for entry in entries:
            if isinstance(entry, Loaded):
                break
            self._apply_entry(entry)
            self.loaded += 1
        return self.loaded

    async def watch(self) -> None:
        """Follow changes until cancelled (register it with `ConsumerRuntime.loop`: if it ends, /healthz fails):
        the watch `load` opened, or without a load a watch of its own (its initial values applied as changes)."""
        if self.kv is None:
            return await _forever()
        kv = self.kv
        entries = self._entries
        if entries is None:
            # the watch's first call belongs to the start (which launched this loop and may already be done): a
            # JetStream briefly away then is waited out with the start's patience, not a dead loop at once
            watcher = await patiently(
                f"inventory watch of {self.bucket}",
                lambda: kv.watch(self.pattern, include_history=False),
                for_the_start=True,
            )
            entries = self._entries = follow(watcher)
        async for entry in entries:
            if not isinstance(entry, Loaded):
                self._apply_entry(entry)
        return None

    def _apply_entry(self, entry: KeyValue.Entry) -> None:
        try:
            self.apply(entry.key, entry.value, entry.operation)
        except Exception:
            log.exception("inventory update not applied", extra={"key": entry.key})


async def _forever() -> None:
    import asyncio

    await asyncio.Event().wait()
