"""The remediator's NATS side: the durable pull consumer on DIAGNOSES (shared by all replicas, real
batches), and the views every replica keeps (inventory watch, all diagnoses, cloud events).

Thin on purpose: parsing, dead-lettering and ack/nack live here; decisions live in `runner`/`policy`.
A diagnosis is acknowledged only when its ladder ended; while it runs, `in_progress` keeps it ours;
if this replica dies, JetStream redelivers it after `ack_wait` to another replica, which waits for the
lease to expire and continues from the audit trail (never repeating a started action).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from opentelemetry import trace
from pydantic import ValidationError

from nodeheal.remediator.actions.cloud import Clouds
from nodeheal.remediator.actions.kube import KubeActions, build_api_client
from nodeheal.remediator.actions.node import NodeAgent
from nodeheal.remediator.audit import AuditLog
from nodeheal.remediator.leases import Leases
from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.runner import Remediator
from nodeheal.remediator.settings import RemediatorSettings
from nodeheal.remediator.verify import Verifier
from nodeheal.remediator.views import FleetView
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import dead_letter, ensure_pull_consumer
from nodeheal.runtime.metrics import pipeline_metrics
from nodeheal.runtime.telemetry import consume_span
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.subjects import wildcard

log = logging.getLogger("nodeheal.remediator.handlers")
SERVICE = "remediator"
REPLAY_HEADER = "Nodeheal-Replay"


class RemediatorService:
    def __init__(self, settings: RemediatorSettings) -> None:
        self.settings = settings
        self.view = FleetView()
        self.nc: Client | None = None
        self._owns_nc = False
        self.js: JetStreamContext | None = None
        self.remediator: Remediator | None = None
        self.kube: KubeActions | None = None
        self.clouds = Clouds(settings.cloud)
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(settings.max_concurrent)
        self.ready = asyncio.Event()
        self.tracer = trace.get_tracer("nodeheal.remediator")
        self.metrics = pipeline_metrics()

    async def start(self, nc: Client | None = None) -> None:
        """Run on `nc` (the process's broker connection; its owner closes it) or on a connection of our own."""
        s = self.settings
        self._owns_nc = nc is None
        self.nc = nc if nc is not None else await connect(s.nats, name=f"nodeheal-remediator-{s.instance}")
        js = self.js = self.nc.jetstream(timeout=s.nats.publish_timeout_s)
        topo = s.nats.topology()
        bp = s.nats.bucket_prefix
        leases_kv = await js.key_value(f"{bp}-leases")
        control_kv = await js.key_value(f"{bp}-control")
        ttl = s.lease_ttl_s or (await leases_kv.status()).ttl or 30.0
        if s.kube.enabled:
            self.kube = KubeActions(await build_api_client(s.kube), settings=s.kube)
        self.remediator = Remediator(
            settings=s,
            audit=AuditLog(
                js,
                stream=topo.stream(f"{s.nats.stream_prefix}AUDIT").name,
                prefix=s.nats.prefix,
                timeout_s=s.nats.publish_timeout_s,
            ),
            leases=Leases(leases_kv, holder=s.instance, ttl_s=ttl),
            ledger=Ledger(control_kv),
            control_kv=control_kv,
            view=self.view,
            node_agent=NodeAgent(self.nc, prefix=s.nats.prefix, timeout_s=s.node_command_timeout_s),
            kube=self.kube,
            clouds=self.clouds,
            verifier=Verifier(
                self.nc, prefix=s.nats.prefix, kube=self.kube, timeout_s=s.verify_timeout_s, poll_s=s.verify_poll_s
            ),
        )
        diagnoses = f"{s.nats.stream_prefix}DIAGNOSES"
        await ensure_pull_consumer(
            js,
            stream=diagnoses,
            durable=s.durable,
            filter_subjects=[wildcard("diagnosis", prefix=s.nats.prefix)],
            ack_wait_s=s.ack_wait_s,
            max_deliver=s.max_deliver,
            max_ack_pending=max(1000, s.batch_size * 8),
        )
        await self._load_inventory()
        self._tasks.append(asyncio.create_task(self._watch_inventory()))
        self._tasks.append(asyncio.create_task(self._follow(diagnoses, "diagnosis", s.policy.unhealthy_window_s)))
        self._tasks.append(asyncio.create_task(self._follow(f"{s.nats.stream_prefix}CLOUD", "cloud", 3 * 86_400.0)))
        self._tasks.append(asyncio.create_task(self._consume(diagnoses)))
        self._tasks.append(asyncio.create_task(self._report_lag(diagnoses)))
        self.ready.set()

    async def stop(self) -> None:
        for task in [*self._tasks, *self._inflight]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._inflight, return_exceptions=True)
        self._tasks.clear()
        if self.kube is not None:
            await self.kube.close()
        await self.clouds.close()
        if self.nc is not None and self._owns_nc:
            await self.nc.drain()

    async def _report_lag(self, stream: str, every_s: float = 15.0) -> None:
        """Lag of the shared DIAGNOSES consumer into `nodeheal_consumer_pending_messages`."""
        assert self.js is not None
        while True:
            try:
                await self.metrics.report_consumer_lag(self.js, stream=stream, consumer=self.settings.durable)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("consumer lag not read", extra={"error": str(exc)})
            await asyncio.sleep(every_s)

    async def readiness(self) -> tuple[bool, str]:
        return self.ready.is_set(), "remediator: consumer not started"

    # -- views ------------------------------------------------------------------------------------
    async def _load_inventory(self) -> None:
        assert self.js is not None
        kv = await self.js.key_value(f"{self.settings.nats.bucket_prefix}-inventory")
        try:
            keys = await kv.keys()
        except Exception:  # an empty bucket raises NoKeysError
            return
        for key in keys:
            if key.startswith("node."):
                entry = await kv.get(key)
                self._on_inventory(entry.value)

    def _on_inventory(self, raw: bytes | None) -> None:
        if not raw:
            return
        try:
            self.view.on_inventory(NodeInventory.model_validate_json(raw))
        except ValidationError as exc:
            log.warning("unreadable inventory record", extra={"error": str(exc)})

    async def _watch_inventory(self) -> None:
        assert self.js is not None
        kv = await self.js.key_value(f"{self.settings.nats.bucket_prefix}-inventory")
        watcher = await kv.watch("node.>", include_history=False)
        async for entry in watcher:
            if entry is not None and entry.key.startswith("node."):
                self._on_inventory(entry.value)

    async def _follow(self, stream: str, kind: str, window_s: float) -> None:
        """Every replica sees every diagnosis / cloud event (an ordered consumer of its own)."""
        assert self.js is not None
        start = datetime.now(tz=UTC) - timedelta(seconds=window_s)
        sub = await self.js.subscribe(
            wildcard(kind, prefix=self.settings.nats.prefix),
            stream=stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start),
        )
        async for msg in sub.messages:
            try:
                if kind == "diagnosis":
                    self.view.on_diagnosis(Diagnosis.model_validate_json(msg.data))
                else:
                    self.view.on_cloud(CloudSystemEvent.model_validate_json(msg.data))
            except ValidationError:
                continue  # the work consumer dead-letters bad diagnoses; the view just skips them

    # -- work -------------------------------------------------------------------------------------
    async def _consume(self, stream: str) -> None:
        assert self.js is not None
        psub = await self.js.pull_subscribe_bind(self.settings.durable, stream)
        while True:
            free = self.settings.max_concurrent - len(self._inflight)
            if free <= 0:
                await asyncio.sleep(0.05)
                continue
            try:
                msgs = await psub.fetch(batch=min(self.settings.batch_size, free), timeout=1.0)
            except TimeoutError:
                continue
            except Exception as exc:
                log.warning("fetch failed; retrying", extra={"error": str(exc)})
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._process(msg))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _process(self, msg: Msg) -> None:
        assert self.js is not None
        assert self.remediator is not None
        if (msg.headers or {}).get(REPLAY_HEADER, "").lower() in ("1", "true", "yes"):
            await msg.ack()  # the replay sandbox must never reach a live remediator
            return
        try:
            diagnosis = Diagnosis.model_validate_json(msg.data)
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = f"not a nodeheal.diagnosis/v1: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            await dead_letter(
                self.js,
                service=SERVICE,
                reason=reason,
                raw=msg.data,
                subject=msg.subject,
                headers=dict(msg.headers or {}),
                prefix=self.settings.nats.prefix,
            )
            await msg.ack()
            return
        self.metrics.messages_consumed.labels(msg.metadata.stream).inc()
        try:
            # The ladder runs inside the diagnosis's trace: every audit record carries its trace id.
            with consume_span(
                self.tracer,
                subject=msg.subject,
                headers=msg.headers,
                name="remediate",
                attributes={"nodeheal.node": diagnosis.node, "nodeheal.diagnosis.id": diagnosis.id},
            ):
                disposition = await self.remediator.handle(diagnosis, heartbeat=msg.in_progress)
        except Exception:
            log.exception("ladder crashed; will be redelivered", extra={"node": diagnosis.node})
            disposition = "retry"
        with contextlib.suppress(Exception):
            if disposition == "ack":
                await msg.ack()
            else:
                await msg.nak(delay=self.settings.retry_delay_s)
