"""The inventory watcher process: Kubernetes Node events → `nodeheal-inventory`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import prometheus_client
from nats.aio.client import Client

from nodeheal.cloud_events.inventory.mapping import node_to_inventory
from nodeheal.cloud_events.inventory.settings import InventorySettings
from nodeheal.cloud_events.inventory.store import BucketFullError, InventoryStore
from nodeheal.cloud_events.inventory.watcher import NodeEvent, NodeWatcher, build_api_client, run_in_thread
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import stop_if_cancelled
from nodeheal.runtime.startup import patiently
from nodeheal.schemas.base import utcnow

log = logging.getLogger("nodeheal.cloud_events.inventory")

NODE_EVENTS = prometheus_client.Counter("nodeheal_inventory_node_events", "Node events applied", ["type"])
NODES = prometheus_client.Gauge("nodeheal_inventory_nodes", "Nodes in this cluster's inventory")
LIST_BATCH = 64
"""Nodes of the first list whose records are written at once (one after the other, 50,000 took 65 s)."""


def _name(event: NodeEvent) -> str:
    return str(((event.node or {}).get("metadata") or {}).get("name") or "")


class InventoryWatcher:
    def __init__(self, settings: InventorySettings, *, watcher: NodeWatcher | None = None) -> None:
        self.settings = settings
        self.labels = settings.label_config()
        self.watcher = watcher or NodeWatcher(
            build_api_client(
                mode=settings.kube_mode,
                kubeconfig=settings.kubeconfig,
                context=settings.kube_context,
                api_url=settings.api_url,
                api_token=settings.api_token,
                verify_tls=settings.api_verify_tls,
            ),
            watch_timeout_s=settings.watch_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            retry_backoff_s=settings.retry_backoff_s,
        )
        self.nc: Client | None = None
        self.store: InventoryStore | None = None
        self.queue: asyncio.Queue[NodeEvent] = asyncio.Queue(maxsize=10_000)
        self.nodes: dict[str, str | None] = {}  # node → instance id
        self.synced = asyncio.Event()
        self.full: str | None = None
        """Why the bucket refuses the watcher's writes (`BucketFullError`), while it does: said by `ready`."""
        self._full_said = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []
        self._held: NodeEvent | None = None  # taken from the queue, not yet applied (`_next`)
        self.list_batch = LIST_BATCH

    async def start(self) -> None:
        # each NATS / JetStream call of the start waits out a briefly absent server or JetStream (`patiently`)
        name = f"nodeheal-inventory-{self.settings.instance}"
        nc = self.nc = await patiently("connection to NATS", lambda: connect(self.settings.nats, name=name))
        bucket = f"{self.settings.nats.bucket_prefix}-inventory"
        kv = await patiently(f"bucket {bucket}", lambda: nc.jetstream().key_value(bucket))
        store = self.store = InventoryStore(kv, cluster=self.settings.cluster)
        # what a watcher before this one wrote: unchanged Nodes are not written again by the first list
        await patiently(f"records of bucket {bucket}", store.load)
        self._tasks = [
            asyncio.create_task(run_in_thread(self.watcher, self.queue)),
            asyncio.create_task(self._apply_forever()),
        ]
        log.info("inventory watcher started", extra={"bucket": bucket, "cluster": self.settings.cluster})

    def loops(self) -> list[asyncio.Task[None]]:
        """The Kubernetes watch and the KV writer: if either ends, the process must be restarted."""
        return list(self._tasks)

    async def stop(self) -> None:
        self.watcher.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, timeout=self.settings.read_timeout_s + 5)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def ready(self) -> tuple[bool, str]:
        if self.nc is None or not self.nc.is_connected:
            return False, "inventory: not connected to NATS"
        if self.full is not None:
            return False, f"inventory: {self.full}"
        if not self.synced.is_set():
            return False, "inventory: the first list of Nodes has not finished"
        return True, "ok"

    async def _next(self) -> list[NodeEvent]:
        """The next event; during the first list, up to `list_batch` of its Nodes at once (distinct names, in list
        order: the store writes only their records then, independent keys; the claims and the index wait for the
        list's end)."""
        event = self._held if self._held is not None else await self.queue.get()
        self._held = None
        batch = [event]
        if self.store is None or self.store.listed or event.type != "ADDED":
            return batch
        names = {_name(event)}
        while len(batch) < self.list_batch and not self.queue.empty():
            more = self.queue.get_nowait()
            if more.type != "ADDED" or _name(more) in names:
                self._held = more  # the list's end (RELISTED), or a Node twice: applied after this batch
                break
            names.add(_name(more))
            batch.append(more)
        return batch

    async def _apply_all(self, batch: list[NodeEvent]) -> None:
        """Apply every event of the batch, all of them even when one fails; then the first failure is raised (the
        batch is applied again: an event already written is unchanged and writes nothing)."""
        if len(batch) == 1:
            return await self.apply(batch[0])
        results = await asyncio.gather(*(self.apply(e) for e in batch), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return None

    async def _apply_forever(self) -> None:
        while True:
            batch = await self._next()
            while True:
                try:
                    await self._apply_all(batch)
                    break
                except BucketFullError as exc:  # not NATS away: the operator must act; said without a traceback
                    stop_if_cancelled()
                    self.full = str(exc)
                    now = time.monotonic()
                    if now - self._full_said >= 60.0:
                        self._full_said = now
                        log.error("%s", exc)
                    await asyncio.sleep(self.settings.retry_backoff_s)
                except Exception:  # NATS away: keep the event and try again, nothing is skipped
                    stop_if_cancelled()
                    log.exception("could not apply a node event; retrying")
                    await asyncio.sleep(self.settings.retry_backoff_s)
            self.full = None
            # a stop that landed as a KV write was answered is not lost (gh-86296: `stop_if_cancelled`)
            stop_if_cancelled()

    async def apply(self, event: NodeEvent) -> None:
        assert self.store is not None
        NODE_EVENTS.labels(type=event.type.lower()).inc()
        if event.type == "RELISTED":
            await self.store.remove_absent(event.names)
            for gone in set(self.nodes) - set(event.names):
                self.nodes.pop(gone, None)
            self.synced.set()
        elif event.node is not None:
            name = str((event.node.get("metadata") or {}).get("name") or "")
            if not name:
                log.warning("ignoring a Node event without a name", extra={"type": event.type})
                return
            record = node_to_inventory(
                event.node, cluster=self.settings.cluster, labels_config=self.labels, now=utcnow()
            )
            if event.type == "DELETED":
                await self.store.remove(name, instance_id=record.instance_id)
                self.nodes.pop(name, None)
            else:
                await self.store.upsert(record)
                self.nodes[name] = record.instance_id
        NODES.set(len(self.nodes))
