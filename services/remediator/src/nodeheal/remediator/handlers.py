"""The remediator's NATS side: the durable pull consumer on DIAGNOSES (shared by all replicas; the
shared consumer runtime `nodeheal.runtime.consumer`, faststream pull subscriber with up to
`max_concurrent` ladders at once), and the views every replica keeps (inventory feed, followers of
all diagnoses and cloud events).

Thin on purpose: decoding, dead-lettering and ack/nak are the runtime's; decisions live in
`runner`/`policy`.
A diagnosis is acknowledged only when its ladder ended; while it runs, `in_progress` keeps it ours;
if this replica dies, JetStream redelivers it after `ack_wait` to another replica, which waits for the
lease to expire and continues from the audit trail (never repeating a started action). A ladder that
still asks for a retry on the last delivery (`max_deliver`) is given up with a person told
(`Remediator.give_up`), never dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from opentelemetry import trace

from nodeheal.remediator import control
from nodeheal.remediator.actions.cloud import Clouds
from nodeheal.remediator.actions.kube import KubeActions, build_api_client
from nodeheal.remediator.actions.node import NodeAgent
from nodeheal.remediator.audit import AuditLog, AuditRefusedError, AuditUnavailableError
from nodeheal.remediator.leases import Leases
from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.maintenance import MaintenanceLoop
from nodeheal.remediator.runner import Disposition, Remediator
from nodeheal.remediator.settings import RemediatorSettings
from nodeheal.remediator.verify import Verifier
from nodeheal.remediator.views import FleetView
from nodeheal.runtime.connect import connect
from nodeheal.runtime.consumer import (
    TRANSIENT,
    ConsumerRuntime,
    Delivery,
    Inbound,
    Outbound,
    Rejected,
    Transient,
    describe,
)
from nodeheal.runtime.inventory import InventoryFeed
from nodeheal.runtime.metrics import pipeline_metrics
from nodeheal.runtime.startup import patiently
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.commands import NodeCommand
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.subjects import dlq_subject, wildcard

log = logging.getLogger("nodeheal.remediator.handlers")
# what stops a ladder for a while, not for good: NATS away or a stream between leaders, and a record AUDIT did not
# acknowledge (its refusal for good, `AuditRefusedError`, is caught before)
_PASSING: tuple[type[BaseException], ...] = (*TRANSIENT, AuditUnavailableError)
SERVICE = "remediator"
REPLAY_HEADER = "Nodeheal-Replay"


def inbound(settings: RemediatorSettings) -> Inbound[Diagnosis]:
    s = settings
    return Inbound(
        title="diagnoses",
        stream=s.nats.topology().stream(f"{s.nats.stream_prefix}DIAGNOSES").name,
        subject=wildcard("diagnosis", prefix=s.nats.prefix),
        durable=s.durable,
        model=Diagnosis,
        description="The remediator's durable consumer: a diagnosis is acked when its ladder ended.",
        # never fetch more than can run: a diagnosis waiting in memory behind long ladders would outlive
        # its ack_wait and be redelivered to another replica
        batch_size=max(1, min(s.batch_size, s.max_concurrent)),
        fetch_timeout_s=1.0,
        ack_wait_s=s.ack_wait_s,
        max_deliver=s.max_deliver,
        max_ack_pending=max(1000, s.batch_size * 8),
        nak_delay_s=s.retry_delay_s,
        ordered=False,
        max_workers=s.max_concurrent,
        span="remediate",
    )


def outbound(settings: RemediatorSettings) -> list[Outbound]:
    s = settings
    prefix = s.nats.prefix
    topo = s.nats.topology()
    return [
        Outbound(
            "audit",
            f"{prefix}.audit.{{cluster}}.{{node}}",
            RemediationRecord,
            "Intent before the action, then started / succeeded / failed / verified; trace_id of the incident.",
            topo.stream(f"{s.nats.stream_prefix}AUDIT").name,
        ),
        Outbound(
            "node commands",
            f"{prefix}.cmd.{{cluster}}.{{node}}",
            NodeCommand,
            "Request/reply to the node's agent; the reply is a NodeCommandResult.",
        ),
        Outbound(
            "dead letters",
            dlq_subject(SERVICE, prefix=prefix),
            DeadLetter,
            "Input this service rejected: the reason, where it came from, the raw bytes (acknowledged, never retried).",
            topo.stream(f"{s.nats.stream_prefix}DLQ").name,
        ),
    ]


class RemediatorService:
    def __init__(self, settings: RemediatorSettings, *, broker: NatsBroker | None = None) -> None:
        """`broker`: the process's faststream broker; the consumers run on it, so the process holds one NATS
        connection (without one, the consumers open their own)."""
        self.settings = settings
        self.view = FleetView(cluster=settings.cluster)  # this cluster's nodes only (one NATS, several clusters)
        self.nc: Client | None = None
        self._owns_nc = False
        self.js: JetStreamContext | None = None
        self.remediator: Remediator | None = None
        self.maintenance: MaintenanceLoop | None = None
        self.kube: KubeActions | None = None
        self.clouds = Clouds(settings.cloud)
        self.ready = asyncio.Event()
        self.tracer = trace.get_tracer("nodeheal.remediator")
        self.metrics = pipeline_metrics()
        self.consumers = ConsumerRuntime(
            service=SERVICE,
            nats=settings.nats,
            metrics=self.metrics,
            tracer=self.tracer,
            name=f"nodeheal-remediator-consumers-{settings.instance}",
            broker=broker,
        )
        self.consumers.consume(inbound(settings), self._diagnosis)
        self.consumers.publishes(*outbound(settings))
        self.inventory = InventoryFeed(
            f"{settings.nats.bucket_prefix}-inventory",
            cluster=settings.cluster,
            on_put=self.view.on_inventory,
            on_delete=self.view.on_inventory_delete,
        )

    async def start(self, nc: Client | None = None) -> None:
        """Run on `nc` (the process's broker connection; its owner closes it) or on a connection of our own."""
        s = self.settings
        self._owns_nc = nc is None
        self.nc = nc if nc is not None else await connect(s.nats, name=f"nodeheal-remediator-{s.instance}")
        js = self.js = self.nc.jetstream(timeout=s.nats.publish_timeout_s)
        topo = s.nats.topology()
        bp = s.nats.bucket_prefix
        # each JetStream call of the start waits out a briefly unavailable JetStream (`patiently`)
        leases_kv = await patiently(f"bucket {bp}-leases", lambda: js.key_value(f"{bp}-leases"))
        control_kv = await patiently(f"bucket {bp}-control", lambda: js.key_value(f"{bp}-control"))
        ttl = s.lease_ttl_s or (await patiently("lease bucket status", leases_kv.status)).ttl or 30.0
        if s.kube.enabled:
            self.kube = KubeActions(await build_api_client(s.kube), settings=s.kube)
        self.remediator = Remediator(
            settings=s,
            audit=AuditLog(
                js,
                stream=topo.stream(f"{s.nats.stream_prefix}AUDIT").name,
                prefix=s.nats.prefix,
                timeout_s=s.nats.publish_timeout_s,
                readers=max(1, s.stream_readers // 4),
            ),
            leases=Leases(leases_kv, holder=s.instance, ttl_s=ttl),
            ledger=Ledger(control_kv),
            control_kv=control_kv,
            view=self.view,
            node_agent=NodeAgent(self.nc, prefix=s.nats.prefix, timeout_s=s.node_command_timeout_s),
            kube=self.kube,
            clouds=self.clouds,
            verifier=Verifier(
                js,
                stream=topo.stream(f"{s.nats.stream_prefix}PROBES").name,
                prefix=s.nats.prefix,
                partitions=s.nats.probe_partitions,
                kube=self.kube,
                thresholds=s.health,
                timeout_s=s.verify_timeout_s,
                poll_s=s.verify_poll_s,
                readers=max(1, s.stream_readers - s.stream_readers // 4),
            ),
        )
        # the storms in force (hysteresis) come back from nodeheal-control
        await patiently("storms in force", self.remediator.restore)
        self.maintenance = MaintenanceLoop(self.remediator, interval_s=s.maintenance_interval_s)
        self.consumers.loop("maintenance", self.maintenance.run)
        prefix = s.nats.prefix
        if await self.inventory.open(js):
            await self.inventory.load()
            self.consumers.loop("inventory", self.inventory.watch)
        self.consumers.follow(
            "diagnoses",
            stream=f"{s.nats.stream_prefix}DIAGNOSES",
            subject=wildcard("diagnosis", prefix=prefix),
            model=Diagnosis,
            # as far back as a diagnosis can still be handled, not the unhealthy window alone: a ladder
            # waiting for capacity or approval is redelivered to a replica started after its node recovered,
            # which must know the recovery (the storm counts use the window, whatever is read)
            since_s=max(
                s.policy.unhealthy_window_s,
                s.policy.approval_timeout_s,
                s.max_deliver * (s.retry_delay_s + s.ack_wait_s),
            ),
            handler=self.view.on_diagnosis,
        )
        self.consumers.follow(
            "cloud",
            stream=f"{s.nats.stream_prefix}CLOUD",
            subject=wildcard("cloud", prefix=prefix),
            model=CloudSystemEvent,
            # all CLOUD keeps (30 days): a host event is announced once, up to weeks ahead (AWS about two
            # weeks, Azure's hardware predictions up to 7 days), and nothing more comes until its phase
            # changes; a replica started after the notice must still drain ahead of it
            since_s=None,
            handler=self.view.on_cloud,
            keep=self.view.keeps_cloud,  # the rest of CLOUD is passed over unvalidated (docs/remediator.md)
        )
        await self.consumers.start()
        self.ready.set()

    async def stop(self) -> None:
        await self.consumers.stop()
        if self.maintenance is not None:
            await self.maintenance.stop()
        if self.kube is not None:
            await self.kube.close()
        await self.clouds.close()
        if self.nc is not None and self._owns_nc:
            await self.nc.drain()

    async def readiness(self) -> tuple[bool, str]:
        if not self.ready.is_set():
            return False, "remediator: consumer not started"
        ok, detail = self.consumers.liveness()
        if not ok:
            return ok, detail
        return await self.consumers.readiness()

    def liveness(self) -> tuple[bool, str]:
        return self.consumers.liveness()

    # -- work -------------------------------------------------------------------------------------
    async def _diagnosis(self, diagnosis: Diagnosis, delivery: Delivery) -> None:
        """One diagnosis: its ladder runs to its end (acked) or asks to be retried later (nak'ed with
        `retry_delay_s`). The runtime's `remediate` span continues the diagnosis's trace, so every audit
        record carries its trace id. An audit record this diagnosis caused that AUDIT refuses for good (too large,
        not permitted) has the diagnosis dead-lettered at once with the reason and acked (`Rejected`): not
        retried, which could never store it. Nothing is done twice for it: a refused intent means the action was
        not taken, and a later diagnosis of the episode reads what AUDIT did store (a `started` is never
        repeated)."""
        try:
            await self._process(diagnosis, delivery)
        except AuditRefusedError as exc:
            raise Rejected(exc.reason) from exc

    async def _run_ladder(self, diagnosis: Diagnosis, delivery: Delivery) -> Disposition:
        assert self.remediator is not None
        try:
            return await self.remediator.handle(diagnosis, heartbeat=delivery.in_progress)
        except AuditRefusedError:
            raise
        except _PASSING as exc:
            # NATS away or a stream between leaders (a server of a cluster killed), AUDIT's among them (a record it
            # did not acknowledge: nothing was done after it): one line, not a traceback
            log.warning(
                "ladder stopped by a passing NATS error; will be redelivered",
                extra={"node": diagnosis.node, "error": describe(exc)},
            )
            return "retry"
        except Exception:
            log.exception("ladder crashed; will be redelivered", extra={"node": diagnosis.node})
            return "retry"

    async def _paused(self) -> bool:
        assert self.remediator is not None
        try:
            return (await control.read_pause(self.remediator.control_kv)).paused
        except Exception as exc:  # not known now: retried the usual way
            log.warning("pause switch not read", extra={"error": describe(exc)})
            return False

    async def _hold_while_paused(self, delivery: Delivery, at_most_s: float) -> None:
        """Up to `at_most_s`, ended early by `nodeheal resume` (or a switch that cannot be read): the delivery is
        kept ours with heartbeats."""
        loop = asyncio.get_running_loop()
        until = loop.time() + at_most_s
        while loop.time() < until and await self._paused():
            await delivery.in_progress()
            await asyncio.sleep(min(self.settings.control_poll_s, max(until - loop.time(), 0.0)))

    async def _process(self, diagnosis: Diagnosis, delivery: Delivery) -> None:
        assert self.remediator is not None
        if (delivery.headers or {}).get(REPLAY_HEADER, "").lower() in ("1", "true", "yes"):
            return  # acked: the replay sandbox must never reach a live remediator
        span: Any = trace.get_current_span()
        span.set_attribute("nodeheal.node", diagnosis.node)
        span.set_attribute("nodeheal.diagnosis.id", diagnosis.id)
        disposition = await self._run_ladder(diagnosis, delivery)
        while disposition == "retry" and await self._paused():
            # held while the pause lasts, not nak'ed: every retry counts towards MAX_DELIVER, and a pause longer
            # than MAX_DELIVER × RETRY_DELAY_S (12.5 min by default) handed every paused node to a person at once.
            # Tried again every RETRY_DELAY_S all the same (a diagnosis gone stale meanwhile is refused), and at once
            # on the resume
            await self._hold_while_paused(delivery, self.settings.retry_delay_s)
            disposition = await self._run_ladder(diagnosis, delivery)
        if disposition == "ack":
            return
        delivered = delivery.num_delivered
        if self.settings.max_deliver > 0 and delivered >= self.settings.max_deliver:
            # the last delivery: JetStream would not bring it back, so the ladder ends here, with a person told
            # (a failure of this hand-over raises: the runtime dead-letters the diagnosis with the reason)
            why = f"its ladder asked for a retry on delivery {delivered} of {self.settings.max_deliver}"
            if await self.remediator.give_up(diagnosis, why=why) != "ack":
                raise RuntimeError(f"{why}, and the hand-over to a person could not be recorded")
            return
        raise Transient(f"ladder of {diagnosis.node} asked to be retried")
