"""Where normalized events go: instance → node through `nodeheal-inventory`, the transition ledger,
publish to CLOUD with `Nats-Msg-Id` = the deterministic id; rejected input to the DLQ.

An instance that is not in the inventory is never dropped: its event is published on the subject of
a node named after the instance id, with `node_mapped=False` and the header `Nodeheal-Node-Mapped:
false`, and counted in `nodeheal_ingest_unmapped_total`, so an operator sees it and can fix the
inventory (docs/cloud-events.md). The ledger keeps where each transition went: once a later report of a
transition published that way maps to a node, it is published again under the node's subject (Nats-Msg-Id
`remap_message_id`), counted in `nodeheal_ingest_remapped_total`; before, it was a duplicate and the node
first heard of a maintenance weeks ahead only when it was in progress. A channel that reports a notice
once (a CMS push) would never report it again: the sink keeps the events it published unmapped (bounded,
also rebuilt from CLOUD at start) and `remap_pending` — run every `UNMAPPED_RECHECK_S` by the app — looks
each one up again and sends it to its node as soon as the inventory knows the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import prometheus_client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace

from nodeheal.cloud_events.normalize import TransitionLedger
from nodeheal.cloud_events.normalize.ledger import reschedule_message_id
from nodeheal.runtime.jetstream import dead_letter, publish_model, read_range
from nodeheal.runtime.telemetry import publish_span, start_incident
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.inventory import NodeInventory, instance_key
from nodeheal.schemas.subjects import cloud_subject, wildcard

_TRACER = trace.get_tracer("nodeheal.ingest")
log = logging.getLogger("nodeheal.cloud_events.ingest")

PUBLISHED = prometheus_client.Counter(
    "nodeheal_ingest_events_total", "Cloud events handled by the ingest", ["channel", "outcome"]
)
UNMAPPED = prometheus_client.Counter(
    "nodeheal_ingest_unmapped_total", "Events whose instance was not in the inventory", ["cloud"]
)
REJECTED = prometheus_client.Counter("nodeheal_ingest_rejected_total", "Input sent to the DLQ", ["reason"])

REMAPPED = prometheus_client.Counter(
    "nodeheal_ingest_remapped_total",
    "Transitions published under the instance id and sent again to the node the inventory now maps it to",
    ["cloud"],
)

UNMAPPED_WAITING = prometheus_client.Gauge(
    "nodeheal_ingest_unmapped_waiting",
    "Events published under an instance id the inventory did not know, not yet sent to a node",
)
LEDGER_OPEN = prometheus_client.Gauge(
    "nodeheal_ingest_ledger_open_events", "Cloud events the ingest's ledger holds open (not yet in a terminal phase)"
)
LEDGER_OVER_BOUND = prometheus_client.Gauge(
    "nodeheal_ingest_ledger_over_bound",
    "1 while the open events alone exceed ledger_max_entities: the ledger keeps them all, above its bound",
)
Outcome = Literal["published", "remapped", "duplicate", "stale"]


def check_ledger_bound(ledger: TransitionLedger) -> bool:
    """Set the ledger's gauges; log an error when the open events alone come to exceed its bound (once per
    crossing, not per event: `ledger.over_bound_said`). Returns whether it is over now.
    The ledger never forgets an open event (that would lose its end and leave its node drained): it grows
    past `ledger_max_entities` instead, and this is how an operator learns of it."""
    LEDGER_OPEN.set(ledger.open_count)
    over = ledger.over_bound
    LEDGER_OVER_BOUND.set(1 if over else 0)
    if over and not ledger.over_bound_said:
        log.error(
            "the ingest's ledger holds more open cloud events than ledger_max_entities; it keeps them all (memory "
            "grows past the bound). Raise NODEHEAL_INGEST_LEDGER_MAX_ENTITIES, or find why events are not closed",
            extra={"open_events": ledger.open_count, "max_entities": ledger.max_entities},
        )
    ledger.over_bound_said = over
    return over


MAX_PENDING_UNMAPPED = 50_000
"""Events published unmapped kept for `remap_pending` (the oldest are forgotten first; a later report of one
still remaps it)."""


class _EventLocks:
    """One asyncio lock per provider event while a report of it is being handled; gone when none waits."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._held.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._held[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._held[key]
            if users <= 1:
                del self._held[key]
            else:
                self._held[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._held)


@dataclass(frozen=True, slots=True)
class Delivery:
    event_id: str
    provider_event_id: str
    phase: str
    subject: str
    node: str
    node_mapped: bool
    outcome: Outcome

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.event_id,
            "provider_event_id": self.provider_event_id,
            "phase": self.phase,
            "subject": self.subject,
            "node": self.node,
            "node_mapped": self.node_mapped,
            "outcome": self.outcome,
        }


def remap_message_id(transition_id: str, node: str) -> str:
    """The message id of a transition published again under the node it now maps to: replicas and retries
    sending that node the same transition dedup, and it does not collide with the unmapped message's id."""
    return deterministic_id(transition_id, node, prefix="cloud-remap-")


class InventoryResolver:
    """instance id → `NodeInventory`, cached (hits for `ttl_s`, misses for at most 5 s)."""

    def __init__(self, kv: KeyValue | None, *, ttl_s: float) -> None:
        self.kv = kv
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, NodeInventory | None]] = {}

    async def resolve(self, instance_id: str) -> NodeInventory | None:
        now = time.monotonic()
        hit = self._cache.get(instance_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        found: NodeInventory | None = None
        if self.kv is not None:
            try:
                entry = await self.kv.get(instance_key(instance_id))
            except KeyNotFoundError:
                entry = None
            if entry is not None and entry.value:
                try:
                    found = NodeInventory.model_validate_json(entry.value)
                except ValueError:
                    log.warning("inventory entry is not a NodeInventory", extra={"instance_id": instance_id})
        ttl = self.ttl_s if found is not None else min(self.ttl_s, 5.0)
        if ttl > 0:
            self._cache[instance_id] = (now + ttl, found)
        return found


class CloudEventSink:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        prefix: str,
        cluster: str,
        service: str,
        inventory: InventoryResolver,
        ledger: TransitionLedger,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self.js = js
        self.prefix = prefix
        self.cluster = cluster
        self.service = service
        self.inventory = inventory
        self.ledger = ledger
        self.publish_timeout_s = publish_timeout_s
        self._locks = _EventLocks()
        check_ledger_bound(ledger)
        self.pending_unmapped: OrderedDict[tuple[str, str, str], CloudSystemEvent] = OrderedDict()
        """(cloud, provider event, phase) → the event as published under its instance id, until it reached a
        node, was superseded or the ledger forgot it."""

    def keep_unmapped(self, event: CloudSystemEvent) -> None:
        """Remember an event published under its instance id, for `remap_pending` (bounded)."""
        key = (event.cloud, event.provider_event_id, event.phase)
        self.pending_unmapped[key] = event
        self.pending_unmapped.move_to_end(key)
        while len(self.pending_unmapped) > MAX_PENDING_UNMAPPED:
            self.pending_unmapped.popitem(last=False)
        UNMAPPED_WAITING.set(len(self.pending_unmapped))

    async def remap_pending(self) -> int:
        """Send every kept unmapped event whose instance the inventory knows now to its node (the same path
        as a second report of it: `remapped`); forget those no longer waiting. Returns how many were sent.
        Raises on a NATS failure (the event stays kept; the next round tries again)."""
        sent = 0
        for key, event in list(self.pending_unmapped.items()):
            cloud, provider_event_id, phase = key
            if self.ledger.unmapped(cloud=cloud, provider_event_id=provider_event_id, phase=phase) is None:
                self.pending_unmapped.pop(key, None)  # reached a node, superseded by a later phase, or forgotten
                continue
            if await self.inventory.resolve(event.instance_id) is None:
                continue
            (delivery,) = await self.submit([event])
            if delivery.outcome == "remapped":
                sent += 1
            if delivery.node_mapped:
                self.pending_unmapped.pop(key, None)
        UNMAPPED_WAITING.set(len(self.pending_unmapped))
        return sent

    async def submit(self, events: list[CloudSystemEvent], *, node: str | None = None) -> list[Delivery]:
        """Publish each new transition. `node`: the node a node-local poller speaks for (no lookup).
        Raises on a NATS failure (the caller answers 503 or retries); nothing is recorded then."""
        out: list[Delivery] = []
        for event in events:
            # verdict, publish and record are one step per provider event: a second report of the same event
            # (CMS push and the poll) waits, so both cannot pass as new and land out of order
            async with self._locks.hold((event.cloud, event.provider_event_id)):
                out.append(await self._submit_one(event, node=node))
        return out

    async def _submit_one(self, event: CloudSystemEvent, *, node: str | None) -> Delivery:
        mapped_event = await self._map(event, node=node)
        subject = cloud_subject(mapped_event.cluster, mapped_event.node, prefix=self.prefix)
        verdict = self.ledger.verdict(
            cloud=event.cloud,
            provider_event_id=event.provider_event_id,
            phase=event.phase,
            not_before=event.not_before,
            channel=event.channel,
        )
        if verdict == "rescheduled":  # the same transition with a new start time: a message of its own
            new_id = reschedule_message_id(event)
            event = event.model_copy(update={"id": new_id})
            mapped_event = mapped_event.model_copy(update={"id": new_id})
        missed = (
            self.ledger.unmapped(cloud=event.cloud, provider_event_id=event.provider_event_id, phase=event.phase)
            if verdict == "duplicate" and mapped_event.node_mapped
            else None
        )
        outcome: Outcome
        if verdict in ("duplicate", "stale"):
            # seen again (every poll of a still open event): the last its ledger would forget
            self.ledger.touch(cloud=event.cloud, provider_event_id=event.provider_event_id)
        if verdict in ("new", "rescheduled"):
            await self._publish(mapped_event, subject, msg_id=event.id)
            self.ledger.admit(mapped_event)
            check_ledger_bound(self.ledger)
            if mapped_event.node_mapped is False:
                self.keep_unmapped(mapped_event)
            outcome = "published"
        elif missed is not None:
            # published under the instance id while the inventory did not know it; the node never got it
            mapped_event = mapped_event.model_copy(update={"id": missed})
            await self._publish(mapped_event, subject, msg_id=remap_message_id(missed, mapped_event.node))
            self.ledger.routed(
                cloud=event.cloud,
                provider_event_id=event.provider_event_id,
                phase=event.phase,
                message_id=missed,
                node=mapped_event.node,
                fresh=False,
            )
            REMAPPED.labels(event.cloud).inc()
            log.info(
                "event published under the instance id sent again to the node it maps to now",
                extra={"node": mapped_event.node, "provider_event_id": event.provider_event_id, "phase": event.phase},
            )
            outcome = "remapped"
        else:
            outcome = "stale" if verdict == "stale" else "duplicate"
        PUBLISHED.labels(event.channel, outcome).inc()
        if verdict == "stale":
            log.info(
                "late non-terminal report of a finished event not published",
                extra={
                    "node": mapped_event.node,
                    "provider_event_id": event.provider_event_id,
                    "phase": event.phase,
                },
            )
        return Delivery(
            event_id=mapped_event.id,
            provider_event_id=event.provider_event_id,
            phase=event.phase,
            subject=subject,
            node=mapped_event.node,
            node_mapped=bool(mapped_event.node_mapped),
            outcome=outcome,
        )

    async def _publish(self, mapped_event: CloudSystemEvent, subject: str, *, msg_id: str) -> None:
        # A cloud event starts an incident's trace; the detector continues it in the
        # cloud_maintenance anomaly the event causes (traceparent in the CLOUD message).
        with (
            start_incident(
                _TRACER,
                name="cloud event",
                attributes={
                    "nodeheal.node": mapped_event.node,
                    "nodeheal.cloud.event_id": mapped_event.provider_event_id,
                    "nodeheal.cloud.phase": mapped_event.phase,
                },
            ),
            publish_span(
                _TRACER,
                subject=subject,
                headers={"Nodeheal-Node-Mapped": "true" if mapped_event.node_mapped else "false"},
            ) as headers,
        ):
            pass
        await publish_model(
            self.js, subject, mapped_event, msg_id=msg_id, headers=headers, timeout_s=self.publish_timeout_s
        )

    async def _map(self, event: CloudSystemEvent, *, node: str | None) -> CloudSystemEvent:
        if node is not None:
            return event.model_copy(update={"node": node, "cluster": self.cluster, "node_mapped": True})
        record = await self.inventory.resolve(event.instance_id)
        if record is not None:
            return event.model_copy(update={"node": record.node, "cluster": record.cluster, "node_mapped": True})
        UNMAPPED.labels(event.cloud).inc()
        log.warning(
            "instance not in the inventory; published under its instance id",
            extra={"instance_id": event.instance_id, "provider_event_id": event.provider_event_id},
        )
        return event.model_copy(update={"node": event.instance_id, "cluster": self.cluster, "node_mapped": False})

    async def reject(self, *, reason: str, raw: bytes, where: str, headers: dict[str, str] | None = None) -> None:
        REJECTED.labels(reason.split(":", 1)[0][:40]).inc()
        await dead_letter(
            self.js,
            service=self.service,
            reason=reason,
            raw=raw,
            subject=where,
            headers=headers,
            prefix=self.prefix,
            timeout_s=self.publish_timeout_s,
            source=f"webhook {where}",  # the rate limit of the DLQ is per channel
        )


async def seed_ledger(
    js: JetStreamContext,
    *,
    stream: str,
    prefix: str,
    ledger: TransitionLedger,
    lookback: timedelta,
    unmapped: Callable[[CloudSystemEvent], None] | None = None,
    subjects: list[str] | None = None,
) -> int:
    """Rebuild the ledger from what CLOUD already holds, so a restart neither re-publishes
    transitions nor forgets which events are still open (reconciliation needs them) and what they said (a
    restarted Azure / GCE poller takes its open events over).

    One read of the stream (`nodeheal.runtime.jetstream.read_range`) to its end: a JetStream that goes away
    mid-read is waited out and the read resumes after the last event recorded (before, a fetch that timed
    out was taken for the end, and the start went on with half a ledger)."""
    if lookback <= timedelta(0):
        return 0
    count = 0
    published_unmapped: list[bytes] = []

    def record(msg: Msg) -> None:
        nonlocal count
        try:
            body = json.loads(msg.data)
            cloud, provider_event_id, phase = str(body["cloud"]), str(body["provider_event_id"]), str(body["phase"])
            verdict = ledger.record(
                cloud=cloud,
                provider_event_id=provider_event_id,
                phase=phase,
                not_before=body.get("not_before"),
                channel=body.get("channel"),
            )
            ledger.noted(cloud=cloud, fields=body)  # Azure's document counter: a restarted poller starts from it
            if verdict in ("new", "rescheduled"):
                # what it said: a restarted node-local poller takes its open events over (`open_reports`)
                ledger.reported(cloud=cloud, provider_event_id=provider_event_id, phase=phase, fields=body)
            mapped, node, message_id = body.get("node_mapped"), body.get("node"), body.get("id")
            if isinstance(mapped, bool) and isinstance(message_id, str) and (not mapped or isinstance(node, str)):
                # where it went: a restart still sends a transition published unmapped to its node
                ledger.routed(
                    cloud=cloud,
                    provider_event_id=provider_event_id,
                    phase=phase,
                    message_id=message_id,
                    node=node if mapped else None,
                    fresh=verdict in ("new", "rescheduled"),
                )
                if mapped is False and unmapped is not None:
                    published_unmapped.append(msg.data)
            count += 1
        except (ValueError, KeyError, TypeError):
            pass

    await read_range(
        js,
        stream=stream,
        filters=[wildcard("cloud", prefix=prefix)] if subjects is None else subjects,  # node-local: its own
        name="ingest-seed",
        on_msg=record,
        since=datetime.now(tz=UTC) - lookback,
        what="the ledger's seed from CLOUD",
    )
    if unmapped is not None:
        for data in published_unmapped:  # the ones still waiting are found by `remap_pending` (it asks the ledger)
            try:
                unmapped(CloudSystemEvent.model_validate_json(data))
            except ValueError:
                continue
    check_ledger_bound(ledger)
    return count
