"""The active prober process: keeps a local copy of this cluster's inventory (a KV watch on
`node.<cluster>.*`, so a round never reads 50,000 keys), checks the nodes of its shard with bounded
concurrency every interval, and publishes the results in `ProberResults` batches (one message per partition
of PROBES for up to `batch_max_results` nodes, `batch.ResultBatcher`) with asynchronous JetStream publishes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import prometheus_client
from nats.aio.client import Client
from nats.js.api import PubAck
from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from nodeheal.cloud_events.prober.batch import Batch, ResultBatcher
from nodeheal.cloud_events.prober.checks import CheckPlan, check_node
from nodeheal.cloud_events.prober.settings import ProberSettings
from nodeheal.cloud_events.prober.sharding import owns
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import stop_if_cancelled
from nodeheal.runtime.kvwatch import Loaded, follow
from nodeheal.runtime.startup import patiently
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.probe import Reachability
from nodeheal.schemas.subjects import escape_token

log = logging.getLogger("nodeheal.cloud_events.prober")

ROUNDS = prometheus_client.Counter("nodeheal_prober_rounds", "Probe rounds finished")
ROUND_SECONDS = prometheus_client.Histogram(
    "nodeheal_prober_round_seconds", "Duration of one round", buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120)
)
NODES_UNREACHABLE = prometheus_client.Gauge("nodeheal_prober_nodes_unreachable", "Nodes with every check failing")
NODES_UNADDRESSED = prometheus_client.Gauge(
    "nodeheal_prober_nodes_unaddressed", "Nodes of this shard with no address in the inventory: not checked"
)
PUBLISH_FAILURES = prometheus_client.Counter(
    "nodeheal_prober_publish_failures", "Node results whose batch was not acknowledged"
)

CheckFn = Callable[[str, CheckPlan], Awaitable[tuple[Reachability, ...]]]


@dataclass(frozen=True, slots=True)
class RoundResult:
    nodes: int
    unreachable: int
    published: int
    """results (nodes) whose batch the stream acknowledged"""
    failed_publishes: int
    """results whose batch was not acknowledged"""
    seconds: float
    messages: int = 0
    """`ProberResults` messages sent"""
    unaddressed: int = 0
    """nodes with no address in the inventory: not checked, not reported"""


class InventoryCache:
    """This cluster's `NodeInventory` records, kept current by a KV watch."""

    def __init__(self, kv: KeyValue, *, cluster: str) -> None:
        self.kv = kv
        self.cluster = cluster
        self.nodes: dict[str, NodeInventory] = {}
        self.initial = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        watcher = await self.kv.watch(f"node.{escape_token(self.cluster)}.*")
        self._task = asyncio.create_task(self._follow(watcher))

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in follow(watcher):
            if isinstance(entry, Loaded):  # the initial values are all here, the server agrees (`kvwatch`)
                self.initial.set()
                continue
            stop_if_cancelled()  # a stop that landed as an entry arrived is not lost
            if entry.operation in (KV_DEL, KV_PURGE):
                self.nodes.pop(entry.key, None)
            else:
                self._store(entry.key, entry.value or b"")
            async with self._changed:
                self._changed.notify_all()

    def _store(self, key: str, value: bytes) -> None:
        try:
            self.nodes[key] = NodeInventory.model_validate_json(value)
        except ValidationError as exc:
            log.warning(
                "ignoring an inventory record that is not a NodeInventory", extra={"key": key, "error": str(exc)}
            )

    async def changed(self, timeout_s: float = 5.0) -> None:
        """Wait until the next change of the inventory arrives (or `timeout_s` passes)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=timeout_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # bounded: a cancel lost in the watch's initial-load check (Python 3.11's `wait_for`, gh-86296) must not
            # hold the prober's SIGTERM until the kubelet's SIGKILL
            await asyncio.wait({self._task}, timeout=5.0)
            if not self._task.done():
                log.warning("inventory watch did not stop within 5 s; left to the process's end")


class Prober:
    def __init__(self, settings: ProberSettings, *, check: CheckFn = check_node) -> None:
        self.settings = settings
        self.plan = CheckPlan(
            tcp_ports=tuple(settings.tcp_ports),
            ssh_port=settings.ssh_port,
            healthz_url=settings.healthz_url,
            timeout_s=settings.timeout_s,
        )
        self.shard_index = settings.resolved_shard_index()
        self.check = check
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.inventory: InventoryCache | None = None
        self._seq = int(time.time())
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        # each NATS / JetStream call of the start waits out a briefly absent server or JetStream (`patiently`)
        name = f"nodeheal-prober-{self.settings.instance}"
        self.nc = await patiently("connection to NATS", lambda: connect(self.settings.nats, name=name))
        js = self.js = self.nc.jetstream(publish_async_max_pending=self.settings.max_pending_publishes)
        bucket = self.settings.nats.topology().bucket(f"{self.settings.nats.bucket_prefix}-inventory").name
        kv = await patiently(f"bucket {bucket}", lambda: js.key_value(bucket))
        self.inventory = InventoryCache(kv, cluster=self.settings.cluster)
        await patiently("inventory watch", self.inventory.start)
        log.info(
            "prober started",
            extra={"shard": self.shard_index, "shards": self.settings.shard_count, "bucket": bucket},
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self.inventory is not None:
            await self.inventory.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def ready(self) -> tuple[bool, str]:
        if self.nc is None or not self.nc.is_connected:
            return False, "prober: not connected to NATS"
        if self.inventory is None or not self.inventory.initial.is_set():
            return False, "prober: inventory not loaded yet"
        return True, "ok"

    def my_nodes(self) -> list[NodeInventory]:
        assert self.inventory is not None
        return [
            inv
            for inv in self.inventory.nodes.values()
            if owns(inv.node, shard_index=self.shard_index, shard_count=self.settings.shard_count)
        ]

    async def run_round(self) -> RoundResult:
        """Check every node of this replica's shard once; publish the results in `ProberResults` batches
        (one per partition of PROBES, at most `batch_max_results` entries each), sent as they fill up, every
        `batch_flush_s` while the round runs, and at its end."""
        assert self.js is not None
        js = self.js
        started = time.perf_counter()
        self._seq += 1
        nodes = self.my_nodes()
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        sent: list[tuple[asyncio.Future[PubAck], int]] = []  # (PubAck, results in that batch)
        unreachable = 0
        unaddressed = 0  # nodes the inventory has no address for: not checked
        failed = 0
        batcher = ResultBatcher(
            cluster=self.settings.cluster,
            partitions=self.settings.nats.probe_partitions,
            prefix=self.settings.nats.prefix,
            max_results=self.settings.batch_max_results,
            seq=self._seq,
        )

        async def send(batches: list[Batch]) -> None:
            nonlocal failed
            for batch in batches:
                try:
                    ack = await js.publish_async(
                        batch.subject,
                        batch.body,
                        # one id per batch: a re-sent batch is stored once (the stream's duplicate window) and
                        # counted once by the detector
                        headers={"Nats-Msg-Id": batch.msg_id},
                        wait_stall=self.settings.nats.publish_timeout_s,
                    )
                    sent.append((ack, batch.results))
                except Exception as exc:
                    failed += batch.results
                    log.warning("prober results not published", extra={"results": batch.results, "error": repr(exc)})

        async def one(inv: NodeInventory) -> None:
            nonlocal unreachable, unaddressed
            if not inv.addresses:
                # not checked, so not reported: the detector judges its silence without a prober verdict. Before,
                # it was sent as an unreachable node (a failed `tcp` check that never ran), and counted to node_down
                unaddressed += 1
                return
            async with semaphore:
                results = await self.check(inv.addresses[0], self.plan)
            if not any(r.ok for r in results):
                unreachable += 1
            full = batcher.add(inv.node, [r.model_dump(mode="json", exclude_none=True) for r in results], inv.ready)
            if full:
                await send(full)

        checked = asyncio.Event()

        async def flush_now_and_then() -> None:
            # a round with slow (timing-out) nodes lasts seconds: what was checked goes out meanwhile, so a
            # verdict waits at most `batch_flush_s` for its message. Stopped by `checked`, not by a cancel:
            # a cancel that lands while a publish waits for a free async-publish slot is turned into
            # `TooManyStalledMsgsError` by nats-py, which `send` counts as a failed publish, and the sender
            # went on for good (the round never ended; the prober stopped probing)
            while not checked.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(checked.wait(), timeout=self.settings.batch_flush_s)
                if not checked.is_set():
                    await send(batcher.drain())

        flusher = asyncio.create_task(flush_now_and_then())
        try:
            await asyncio.gather(*(one(inv) for inv in nodes))
        finally:
            checked.set()
            # its send under way ends within `publish_timeout_s`; a cancel of this round (shutdown) reaches it too
            await flusher
        await send(batcher.drain())
        published = 0
        if sent:
            done, pending = await asyncio.wait([ack for ack, _ in sent], timeout=self.settings.nats.publish_timeout_s)
            for future in pending:
                future.cancel()
            for ack, results in sent:
                if ack in done and ack.exception() is None:
                    published += results
                else:
                    failed += results
        seconds = time.perf_counter() - started
        if failed:
            PUBLISH_FAILURES.inc(failed)
        ROUNDS.inc()
        ROUND_SECONDS.observe(seconds)
        NODES_UNREACHABLE.set(unreachable)
        NODES_UNADDRESSED.set(unaddressed)
        if seconds > self.settings.interval_s:
            log.warning(
                "probe round took longer than the interval: add prober replicas (shard_count) or raise concurrency",
                extra={"seconds": round(seconds, 2), "nodes": len(nodes), "interval_s": self.settings.interval_s},
            )
        return RoundResult(
            nodes=len(nodes),
            unreachable=unreachable,
            published=published,
            failed_publishes=failed,
            seconds=seconds,
            messages=len(sent),
            unaddressed=unaddressed,
        )

    async def run(self) -> None:
        assert self.inventory is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.inventory.initial.wait(), timeout=30)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._stopping.is_set():
            try:
                result = await self.run_round()
                log.info(
                    "probe round",
                    extra={
                        "nodes": result.nodes,
                        "unreachable": result.unreachable,
                        "seconds": round(result.seconds, 3),
                    },
                )
            except Exception:
                log.exception("probe round failed")
            next_at += self.settings.interval_s
            delay = next_at - loop.time()
            if delay < 0:
                next_at, delay = loop.time(), 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
