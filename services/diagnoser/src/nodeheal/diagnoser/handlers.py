"""The diagnoser's transport side: durable pull consumers on ANOMALIES, CLOUD and AUDIT (the shared
consumer runtime, `nodeheal.runtime.consumer`: faststream pull subscribers, batch pulls, one message
at a time in stream order), the inventory feed, and publishing of diagnoses and fleet findings with
deterministic `Nats-Msg-Id`s. Thin: every decision is made by `reasoning.Diagnoser`.

A message is acked once the diagnoses it caused are PubAck'ed; bad input (any exception while
decoding or validating) is dead-lettered with the reason and the raw bytes; a failed publish naks it
with a delay (the handlers are idempotent, so a redelivery is harmless). A diagnosis or finding the
server refuses for good (an API error such as too large) is kept in the DLQ, never only logged: the input that
decided it is dead-lettered with the reason (`Rejected`), and one decided with no input at hand (the
tick, the start) is dead-lettered itself — its JSON, the subject it was for, the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import prometheus_client
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace
from opentelemetry.trace import Tracer

from nodeheal.diagnoser.crash import CrashBuckets, bucket_notice, classify, is_hardware, kernel_of, notice_due
from nodeheal.diagnoser.durable import DurableState, RebuildReport, kill_point, kill_unsent_min
from nodeheal.diagnoser.kb import Matcher, load_knowledge_base
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.diagnoser.settings import SERVICE, DiagnoserSettings
from nodeheal.runtime.consumer import (
    TRANSIENT,
    ConsumerRuntime,
    Delivery,
    Inbound,
    Kept,
    Outbound,
    Rejected,
    Transient,
    describe,
)
from nodeheal.runtime.inventory import InventoryFeed
from nodeheal.runtime.jetstream import dead_letter, publish_model
from nodeheal.runtime.metrics import PipelineMetrics, observe_stage
from nodeheal.runtime.singleton import Singleton, SingletonLostError
from nodeheal.runtime.startup import patiently
from nodeheal.runtime.telemetry import TRACEPARENT, consume_span, publish_span, start_incident
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.subjects import diagnosis_subject, dlq_subject, finding_subject, wildcard

log = logging.getLogger("nodeheal.diagnoser")

CLOCK_OFFSET = prometheus_client.Gauge(
    "nodeheal_diagnoser_anomaly_clock_offset_seconds",
    "NATS server's store time minus the anomaly's detected_at, of the latest anomaly (the writer's clock and publish"
    " delay)",
)
CLOCK_OFFSET_WARN_S = 10.0
"""An anomaly whose writer's clock is further than this from the NATS server's is said (at most once a minute)."""

_TRACE_KEYS = (TRACEPARENT, "tracestate")
# diagnoses in flight together (different nodes): a partition judged at once is thousands of verdicts, and one
# PubAck round trip after another was what the service spent on them (a starved 50,000-node run: 18.9 a second)
PUBLISH_WINDOW = 256
_MAX_TRACKED = 200_000  # anomaly ids whose trace context / first identification is remembered
_MAX_LETTERS = 10_000  # refused outputs waiting for the DLQ (it is down too), and refused inputs remembered


def _now() -> datetime:
    return datetime.now(tz=UTC)


def inbound(settings: DiagnoserSettings) -> list[Inbound[Any]]:
    """The diagnoser's four consumers (one durable name, one consumer per stream)."""
    topo = settings.nats.topology()
    prefix = settings.nats.prefix
    common: dict[str, Any] = {
        "durable": settings.durable,
        "batch_size": settings.batch_size,
        "fetch_timeout_s": settings.fetch_timeout_s,
        "ack_wait_s": settings.ack_wait_s,
        "max_deliver": settings.max_deliver,
        "max_ack_pending": 10_000,
        "deliver_policy": DeliverPolicy.ALL,
        "nak_delay_s": settings.nak_delay_s,
    }

    def stream(base: str) -> str:
        return topo.stream(f"{settings.nats.stream_prefix}{base}").name

    return [
        Inbound(
            title="anomalies",
            stream=stream("ANOMALIES"),
            subject=wildcard("anomaly", prefix=prefix),
            model=Anomaly,
            description="The diagnoser's durable consumer.",
            **common,
        ),
        Inbound(
            title="cloud events",
            stream=stream("CLOUD"),
            subject=wildcard("cloud", prefix=prefix),
            model=CloudSystemEvent,
            description="Joined with the node's anomalies.",
            **common,
        ),
        Inbound(
            title="audit",
            stream=stream("AUDIT"),
            subject=wildcard("audit", prefix=prefix),
            model=RemediationRecord,
            description="Remediation history of a node.",
            **common,
        ),
        Inbound(
            title="crash reports",
            stream=stream("CRASHES"),
            subject=wildcard("crash", prefix=prefix),
            model=CrashReport,
            description=(
                "The agents' crash reports (the previous boot's pstore / kdump / journal evidence): classified,"
                " counted in the bucket's fleet record, and the bucket decides the node's episode."
            ),
            **{**common, "batch_size": 16, "max_ack_pending": 1000},
        ),
    ]


def outbound(settings: DiagnoserSettings) -> list[Outbound]:
    topo = settings.nats.topology()
    prefix = settings.nats.prefix
    diagnoses = topo.stream(f"{settings.nats.stream_prefix}DIAGNOSES").name
    return [
        Outbound(
            "diagnoses",
            f"{prefix}.diagnosis.{{cluster}}.{{node}}",
            Diagnosis,
            "Cause, category, confidence, evidence, the recommended action ladder.",
            diagnoses,
        ),
        Outbound(
            "fleet findings",
            finding_subject(prefix=prefix),
            FleetFinding,
            "A group failing far above the fleet rate or its own history; and, once per crash bucket, the"
            " kernel team's notice of a new crash bucket (kind new_crash_bucket).",
            diagnoses,
        ),
        Outbound(
            "dead letters",
            dlq_subject(SERVICE, prefix=prefix),
            DeadLetter,
            "Input this service rejected: the reason, where it came from, the raw bytes (acknowledged, never retried).",
            topo.stream(f"{settings.nats.stream_prefix}DLQ").name,
        ),
    ]


def _remember(seen: dict[str, None], key: str) -> None:
    """Add `key` to an insertion-ordered set bounded by `_MAX_TRACKED` (the oldest forgotten first)."""
    seen[key] = None
    if len(seen) > _MAX_TRACKED:
        del seen[next(iter(seen))]


class DiagnoserRuntime:
    def __init__(
        self,
        *,
        settings: DiagnoserSettings,
        nc: Client,
        registry: prometheus_client.CollectorRegistry | None = None,
        broker: NatsBroker | None = None,
        clock: Callable[[], datetime] = _now,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.clock = clock
        self.diagnoser = Diagnoser(
            matcher=Matcher(load_knowledge_base(settings.rules_file)), config=settings.diagnoser_config()
        )
        self.topology = settings.nats.topology()
        self.prefix = settings.nats.prefix
        self._lock = asyncio.Lock()
        self._offset_said = float("-inf")  # when a clock offset was last said (monotonic)
        self._held: dict[str, datetime] = {}
        # verdicts decided but not yet stored in DIAGNOSES (their publish failed, or is under way): the core
        # remembers a verdict as said when it decides it, so it is sent from here until its PubAck comes
        self._unsent: dict[str, Diagnosis] = {}
        self._unsent_findings: list[FleetFinding] = []  # the same for fleet findings (the tick's correlation runs)
        # refused for good: outputs to keep in the DLQ (subject, bytes, reason), sent until the DLQ takes them,
        # and the inputs whose own verdict was refused (input id -> reason), so a redelivery is dead-lettered too
        self._letters: list[tuple[str, bytes, str]] = []
        self._refused: dict[str, str] = {}
        self.durable: DurableState | None = None
        self.rebuilt: RebuildReport | None = None  # what the last start read back (also logged)
        self._ready = False
        self._stopping = False
        self._last_correlation = datetime.min.replace(tzinfo=UTC)
        registry = registry or prometheus_client.CollectorRegistry()
        self.pipeline = PipelineMetrics(registry)
        # A diagnosis continues the trace of the (first traced) anomaly it explains.
        self.tracer = tracer or trace.get_tracer("nodeheal.diagnoser")
        self._anomaly_traces: dict[str, dict[str, str]] = {}  # anomaly id -> trace headers it carried
        self._identified: dict[str, None] = {}  # first anomaly ids of episodes already in time_to_identify
        self._identified_own: dict[str, None] = {}  # ... already in nodeheal_diagnoser_time_to_identify_seconds
        self._streams = {
            base: self.topology.stream(f"{settings.nats.stream_prefix}{base}").name
            for base in ("ANOMALIES", "CLOUD", "AUDIT", "DIAGNOSES", "CRASHES")
        }
        self.m_out = prometheus_client.Counter(
            "nodeheal_diagnoser_diagnoses_total", "Diagnoses published by cause", ["cause", "resolved"],
            registry=registry,
        )  # fmt: skip
        self.m_findings = prometheus_client.Counter(
            "nodeheal_diagnoser_findings_total", "Fleet findings published by kind", ["kind"], registry=registry
        )
        self.m_fleet = self.pipeline.fleet_rate  # one of the shared families (the dashboard reads it)
        self.m_tti = prometheus_client.Histogram(
            "nodeheal_diagnoser_time_to_identify_seconds",
            "From the anomaly's detection to the first diagnosis of the episode",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 30, 60),
            registry=registry,
        )
        self.consumers = ConsumerRuntime(
            service=SERVICE,
            nats=settings.nats,
            metrics=self.pipeline,
            tracer=self.tracer,
            name=f"nodeheal-diagnoser-consumers-{settings.instance}",
            broker=broker,  # the process's broker: one NATS connection (None: a broker of its own)
        )
        for spec in inbound(settings):
            if spec.model is CrashReport:
                self.consumers.consume(spec, self._crash)
            else:
                self.consumers.consume(spec, self._message)
        self.consumers.publishes(*outbound(settings))
        self.inventory = InventoryFeed(
            self.topology.bucket(f"{settings.nats.bucket_prefix}-inventory").name,
            on_put=self._on_inventory,
            on_delete=self.diagnoser.forget_inventory,
        )
        self.m_crashes = prometheus_client.Counter(
            "nodeheal_diagnoser_crash_reports_total",
            "Crash reports classified, by verdict (hardware, known_bucket, new_bucket, unexplained) and class",
            ["outcome", "cls"],
            registry=registry,
        )
        self.crash_buckets: CrashBuckets | None = None  # the per-bucket fleet records (bound on start)
        self.singleton: Singleton | None = None  # one process per cluster (bound on start)
        self._keeper: asyncio.Task[None] | None = None
        self.lost_singleton: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # one process at a time, before anything is read: a rollout's surge pod or a pod left running on a
        # partitioned node would split the messages between two memories (a held node_down was lost)
        state_kv = await self._bucket("diagnoser")
        if state_kv is not None:
            self.singleton = Singleton(
                kv=state_kv,
                key=f"singleton.{self.settings.cluster}",
                holder=f"{self.settings.instance}:{os.getpid()}",
                instance=self.settings.instance,
                ttl_s=self.settings.singleton_ttl_s,
                renew_s=max(0.2, self.settings.singleton_ttl_s / 6),
            )
            await self.singleton.acquire()
            self._keeper = asyncio.create_task(self._keep_singleton(self.singleton), name="diagnoser-singleton")
        if await self.inventory.open(self.js):
            await self.inventory.load()
            self.consumers.loop("inventory", self.inventory.watch)
        # state that survives a restart (durable.py): read back before the first live message
        crash_kv = await self._bucket("crash-buckets")
        self.crash_buckets = CrashBuckets(crash_kv) if crash_kv is not None else None
        self.durable = DurableState(
            js=self.js,
            diagnoser=self.diagnoser,
            streams=self._streams,
            prefix=self.prefix,
            bucket=state_kv,
            lookback=timedelta(seconds=self.settings.rebuild_lookback_s),
            cloud_lookback=timedelta(seconds=self.settings.rebuild_cloud_lookback_s),
            history_lookback=self.diagnoser.config.trend.horizon,
            keep_trace=self._keep_trace,
            crash_buckets=self.crash_buckets,
        )
        report = self.rebuilt = await self.durable.rebuild(now=self.clock())
        for ctx in self.diagnoser.fleet.nodes.values():  # episodes already identified before the restart
            if ctx.published is not None and not ctx.published.resolved and ctx.published.anomaly_ids:
                self._identified[ctx.published.anomaly_ids[0]] = None
        async with self._lock:
            for diagnosis in report.recovered:  # before the nodes' open episodes: those are newer
                await self._publish(diagnosis)  # patient at start, like the open episodes' verdicts
            await self._evaluate(report.open_nodes)
        self.consumers.loop("tick", self._ticker)
        await self.consumers.start()
        self._ready = True
        log.info("diagnoser started", extra={"prefix": self.prefix, "durable": self.settings.durable})

    async def stop(self) -> None:
        self._ready = False
        self._stopping = True
        await self.consumers.stop()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeper
        if self.singleton is not None and self.lost_singleton is None:
            await self.singleton.release()  # the next process starts at once

    async def _keep_singleton(self, singleton: Singleton) -> None:
        try:
            await singleton.keep()
        except SingletonLostError as exc:
            # another process may be consuming now: stop at once; /healthz fails, the pod is restarted and waits
            self.lost_singleton = str(exc)
            log.error("singleton lost; consumers stopped", extra={"error": str(exc)})
            self._ready = False
            await self.consumers.stop()

    async def readiness(self) -> tuple[bool, str]:
        if self.singleton is not None and self.singleton.waiting_for is not None:
            return False, f"diagnoser: waiting for the process holding the singleton ({self.singleton.waiting_for})"
        if not self._ready:
            return False, "diagnoser: consumers not bound yet"
        ok, detail = self.consumers.liveness()
        if not ok:
            return ok, detail
        return await self.consumers.readiness()

    def liveness(self) -> tuple[bool, str]:
        if self.lost_singleton is not None:
            return False, f"diagnoser: stopped: {self.lost_singleton}"
        return self.consumers.liveness()

    async def _bucket(self, what: str) -> KeyValue | None:
        """The bucket, or None when it is not provisioned; a briefly unavailable JetStream is waited out
        at start (a bucket taken for missing then would leave crash history unsaved for the process's life)."""
        name = self.topology.bucket(f"{self.settings.nats.bucket_prefix}-{what}").name
        try:
            return await patiently(f"bucket {name}", lambda: self.js.key_value(name))
        except NotFoundError as exc:  # the buckets are provisioned by `nodeheal streams apply`
            log.warning("bucket unavailable", extra={"bucket": name, "error": str(exc)})
            return None

    # ------------------------------------------------------------------ consumption

    async def _message(self, item: Anomaly | CloudSystemEvent | RemediationRecord, delivery: Delivery) -> None:
        """One input message (in stream order per stream); returns once its diagnoses are PubAck'ed."""
        if isinstance(item, Anomaly):
            self._clock_offset(item, delivery)
        await self._on_message(item, delivery.headers)

    def _clock_offset(self, anomaly: Anomaly, delivery: Delivery) -> None:
        """How far the anomaly's writer's clock (its `detected_at`) is from the NATS server's (the time it stored
        the message): the node_down hold, the burst windows and our own actions' windows compare times written on
        different machines, so they assume clocks within a few seconds (NTP). Measured, exported, and said when off
        by more than `CLOCK_OFFSET_WARN_S` (a detector backlog shows as a large positive offset too)."""
        try:
            stored = delivery.msg.metadata.timestamp
        except Exception:  # not a JetStream message (a test's direct call): nothing to measure
            return
        if stored is None:
            return
        offset = (stored - anomaly.detected_at).total_seconds()
        CLOCK_OFFSET.set(offset)
        if abs(offset) > CLOCK_OFFSET_WARN_S:
            now = time.monotonic()
            if now - self._offset_said >= 60.0:
                self._offset_said = now
                log.warning(
                    "anomaly written with a clock far from the NATS server's: node_down holds and time windows are"
                    " off by as much; check NTP on the detector's and the server's machines (or the detector is"
                    " publishing a backlog)",
                    extra={"offset_s": round(offset, 1), "node": anomaly.node, "anomaly_key": anomaly.anomaly_key},
                )

    async def _crash(self, report: CrashReport, delivery: Delivery) -> None:
        """One crash report: classified, counted once per boot in its bucket's fleet record, handed to the
        node's episode (diagnoses PubAck'ed), and — the first time a kernel bucket is seen — the kernel
        team's notice, published before the record remembers it was sent (a retry is deduplicated by
        its `Nats-Msg-Id`). Returns once all of it is stored; then the report is acked."""
        self._refused_before(report.id)
        if self.crash_buckets is None:
            kv = await self._bucket("crash-buckets")
            if kv is None:
                msg = "the crash-buckets KV bucket is missing (nodeheal streams apply)"
                raise Transient(msg)
            self.crash_buckets = CrashBuckets(kv)
        verdict = classify(report, self.diagnoser.matcher)
        inventory = self.diagnoser.fleet.inventory.get(f"{report.cluster}/{report.node}")
        record = await self.crash_buckets.count(
            verdict,
            kernel=kernel_of(verdict, report),
            machine_model=getattr(inventory, "machine_model", None),
            at=self.clock(),
        )
        async with self._lock:
            touched = self.diagnoser.on_crash(verdict, record)
            refused = await self._evaluate(touched, own=True)
        noticed = False
        if notice_due(verdict, record):
            notice = bucket_notice(
                record,
                cluster=self.settings.cluster,
                now=self.clock(),
                window_s=self.diagnoser.config.decision.crash_window.total_seconds(),
            )
            try:
                await self._publish_finding(notice)
            except TRANSIENT:
                raise
            except Exception as exc:  # not remembered as sent: the bucket's next report tries again
                refused.append(f"its kernel-team notice {notice.id} was refused by the server: {describe(exc)}")
            else:
                record = await self.crash_buckets.mark_noticed(
                    str(record["bucket"]), notice_id=notice.id, at=self.clock()
                )
                noticed = True
        if verdict.cls is None:
            outcome = "unexplained"
        elif is_hardware(verdict):
            outcome = "hardware"
        else:
            outcome = "known_bucket" if int(record.get("node_count", 1)) > 1 else "new_bucket"
        self.m_crashes.labels(outcome, verdict.cls or "").inc()
        log.warning(
            "crash classified",
            extra={
                "node": report.node,
                "boot_id": report.boot_id,
                "cls": verdict.cls,
                "hardware": is_hardware(verdict),
                "bucket": record.get("bucket"),
                "bucket_count": record.get("count"),
                "bucket_nodes": record.get("node_count"),
                "new_bucket": record.get("count") == 1,
                "kernel_team_told": noticed,
            },
        )
        self._reject(report.id, refused)

    async def _on_message(
        self, item: Anomaly | CloudSystemEvent | RemediationRecord, headers: dict[str, str] | None
    ) -> None:
        self._refused_before(item.id)
        async with self._lock:
            touched: set[str] = set()
            if isinstance(item, Anomaly):
                self._keep_trace(item.id, headers)
                touched |= self.diagnoser.on_anomaly(item)
            elif isinstance(item, CloudSystemEvent):
                touched |= self.diagnoser.on_cloud_event(item)
            elif isinstance(item, RemediationRecord):
                touched |= self.diagnoser.on_audit(item)
            refused = await self._evaluate(touched, own=True)
        self._reject(item.id, refused)

    def _refused_before(self, input_id: str) -> None:
        """An input whose own verdict was refused, delivered again (its dead letter failed, or it was
        redelivered before): dead-lettered again with the same reason (its verdict is said already)."""
        reason = self._refused.get(input_id)
        if reason is not None:
            raise Rejected(reason)

    def _reject(self, input_id: str, refused: list[str]) -> None:
        """What this input decided was refused for good: the consumer runtime dead-letters it with the reason."""
        if not refused:
            return
        reason = "; ".join(refused)
        self._refused[input_id] = reason
        if len(self._refused) > _MAX_LETTERS:
            del self._refused[next(iter(self._refused))]
        raise Rejected(reason)

    def _on_inventory(self, record: NodeInventory) -> None:
        """An inventory change that can change verdicts (a dark node moved rack or zone) has those nodes
        evaluated at the next tick."""
        now = self.clock()
        for key in self.diagnoser.on_inventory(record):
            self._held[key] = min(self._held.get(key, now), now)

    async def _evaluate(self, keys: set[str], *, own: bool = False) -> list[str]:
        """Judge `keys` and send every verdict not yet stored. `own`: an input is being handled, and a verdict
        decided here that the server refuses for good is that input's to answer for — its reason is returned
        (the caller raises `Rejected`: the input is dead-lettered). Any other refused verdict is dead-lettered
        itself."""
        now = self.clock()
        decided: set[str] = set()
        for key in sorted(keys):
            outcome = self.diagnoser.evaluate(key, now=now)
            if outcome.hold_until is not None:
                self._held[key] = outcome.hold_until
                continue
            self._held.pop(key, None)
            if outcome.diagnosis is not None:
                self._unsent[key] = outcome.diagnosis  # a newer verdict of the node replaces one not yet stored
                decided.add(key)
        refused = await self._send_unsent(own=decided if own else set())
        if self.durable is not None:
            await self.durable.save()  # crash history, before the input that added it is acknowledged
        return refused

    async def _send_unsent(self, *, own: set[str] | None = None) -> list[str]:
        """Publish every verdict not yet stored, `PUBLISH_WINDOW` at a time (one node's verdicts are never in
        flight together: one entry per node, and the caller holds the lock). Each leaves `_unsent` on its
        PubAck. What failed for a passing reason (`TRANSIENT`: no stream leader, a time-out, a lost connection)
        is kept and sent again by the next input or tick — the core already counts it as said, so without this
        a redelivered input found the verdict unchanged and it was never stored; the first such failure is
        raised once all were tried (the input being handled is nak'ed). A verdict the server refuses for good
        (an API error such as too large) leaves `_unsent` — tried again it would fail every input after it — and is
        kept in the DLQ: the reasons of those of `own` (the keys the input being handled decided) are returned
        for that input to be dead-lettered (then nothing is raised: a redelivery would find nothing to refuse
        and ack it), every other one is dead-lettered itself."""
        own = own or set()
        refused: list[str] = []
        if not self._unsent:
            await self._send_letters()
            return refused
        pending = sorted(self._unsent.items())
        failed: BaseException | None = None
        for start in range(0, len(pending), PUBLISH_WINDOW):
            window = pending[start : start + PUBLISH_WINDOW]
            results = await asyncio.gather(*(self._publish(d) for _, d in window), return_exceptions=True)
            for (key, diagnosis), result in zip(window, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    if isinstance(result, TRANSIENT):
                        failed = failed or result
                        continue  # kept: sent again by the next input or tick
                    what = f"diagnosis {diagnosis.id} of {diagnosis.cluster}/{diagnosis.node} ({diagnosis.cause})"
                    log.error(
                        "diagnosis refused by the server; kept in the DLQ",
                        extra={"node": diagnosis.node, "diagnosis_id": diagnosis.id, "error": repr(result)},
                    )
                    if key in own:
                        refused.append(f"its {what} was refused by the server: {describe(result)}")
                    else:
                        subject = diagnosis_subject(diagnosis.cluster, diagnosis.node, prefix=self.prefix)
                        reason = f"{what} not stored: refused by the server: {describe(result)}"
                        self._letter(subject, diagnosis.to_json(), reason)
                if self._unsent.get(key) is diagnosis:
                    del self._unsent[key]
        await self._send_letters()
        if failed is not None:
            log.warning(
                "diagnoses not stored; kept to send again",
                extra={"unsent": len(self._unsent), "error": f"{type(failed).__name__}: {failed}"},
            )
            await self._kill_point_unsent()
            if not refused:
                # kept in `_unsent` (and found again by a restart's rebuild): the input need not go to the DLQ
                raise Kept(
                    f"{len(self._unsent)} diagnoses not stored yet, kept to send again: {describe(failed)}"
                ) from failed
        return refused

    def _letter(self, subject: str, raw: bytes, reason: str) -> None:
        """Keep a refused output for the DLQ (sent by `_send_letters`; bounded)."""
        self._letters.append((subject, raw, reason))
        if len(self._letters) > _MAX_LETTERS:
            dropped = self._letters.pop(0)
            log.error("refused output dropped: too many wait for the DLQ", extra={"reason": dropped[2][:300]})

    async def _send_letters(self) -> None:
        """Dead-letter the refused outputs, oldest first; one the DLQ does not take now waits for the next try
        (the next input or tick), logged."""
        while self._letters:
            subject, raw, reason = self._letters[0]
            try:
                kept = await dead_letter(
                    self.js,
                    service=SERVICE,
                    reason=reason,
                    raw=raw,
                    subject=subject,
                    prefix=self.prefix,
                    timeout_s=self.settings.nats.publish_timeout_s,
                )
            except Exception as exc:
                log.warning(
                    "refused output not dead-lettered yet; tried again at the next tick",
                    extra={"waiting": len(self._letters), "error": describe(exc)},
                )
                return
            if kept is not None:  # None: the rate limit dropped it (`nodeheal_dlq_rate_limited_total`)
                self.pipeline.messages_dead_lettered.labels(SERVICE).inc()
            self._letters.pop(0)

    async def _kill_point_unsent(self) -> None:
        """The kill tests' `unsent_kept`: a publish failed with verdicts and fleet findings both kept in memory
        only (decided, not stored, not yet sent again), and at least `NODEHEAL_TEST_KILL_UNSENT_MIN` verdicts."""
        if self._unsent and self._unsent_findings and len(self._unsent) >= kill_unsent_min():
            await kill_point("unsent_kept", self.nc)

    def _keep_trace(self, anomaly_id: str, headers: dict[str, str] | None) -> None:
        if not headers or TRACEPARENT not in headers:
            return
        self._anomaly_traces[anomaly_id] = {k: headers[k] for k in _TRACE_KEYS if k in headers}
        if len(self._anomaly_traces) > _MAX_TRACKED:
            del self._anomaly_traces[next(iter(self._anomaly_traces))]

    def _trace_headers(self, diagnosis: Diagnosis, subject: str) -> dict[str, str]:
        """The headers of a diagnosis: the incident's trace continued from the first of its anomalies
        that carried one (a new trace if none did, so the remediator's ladder still has one)."""
        attributes = {
            "nodeheal.node": diagnosis.node,
            "nodeheal.cluster": diagnosis.cluster,
            "nodeheal.diagnosis.cause": diagnosis.cause,
            "nodeheal.diagnosis.id": diagnosis.id,
        }
        parent = next((self._anomaly_traces[a] for a in diagnosis.anomaly_ids if a in self._anomaly_traces), None)
        if parent is None:
            with (
                start_incident(self.tracer, name="diagnosis without traced anomaly", attributes=attributes),
                publish_span(self.tracer, subject=subject) as headers,
            ):
                return headers
        with (
            consume_span(self.tracer, subject=subject, headers=parent, name="diagnose", attributes=attributes),
            publish_span(self.tracer, subject=subject) as headers,
        ):
            return headers

    def _observe_identified(self, diagnosis: Diagnosis) -> None:
        """Both time-to-identify histograms once per episode: the shared one from the fault's onset, the
        diagnoser's own from the first anomaly's detection, each at the first unresolved diagnosis of the
        episode that has what it measures from (a first diagnosis without an onset leaves the shared one to a
        later update that has it). Later diagnoses of the episode are not observed again."""
        if diagnosis.resolved or not diagnosis.anomaly_ids:
            return
        first_id = diagnosis.anomaly_ids[0]
        shared_done, own_done = first_id in self._identified, first_id in self._identified_own
        if shared_done and own_done:
            return
        ctx = self.diagnoser.fleet.nodes.get(f"{diagnosis.cluster}/{diagnosis.node}")
        first = next((a for a in (ctx.anomalies if ctx else ()) if a.id == first_id), None)
        onset = diagnosis.fault_onset or (first.fault_onset if first is not None else None)
        if not shared_done and onset is not None:
            _remember(self._identified, first_id)
            observe_stage(
                self.pipeline.time_to_identify, fault_class=diagnosis.category, onset=onset, at=diagnosis.identified_at
            )
        if not own_done and first is not None:
            _remember(self._identified_own, first_id)
            self.m_tti.observe(max(0.0, (diagnosis.identified_at - first.detected_at).total_seconds()))

    async def _publish(self, diagnosis: Diagnosis) -> None:
        subject = diagnosis_subject(diagnosis.cluster, diagnosis.node, prefix=self.prefix)
        headers = self._trace_headers(diagnosis, subject)
        # at start (the open episodes' verdicts) a briefly unavailable JetStream is waited out; live, one
        # try (a failure naks the input); the Nats-Msg-Id makes a repeated publish one message
        await patiently(
            f"diagnosis of {diagnosis.node}",
            lambda: publish_model(
                self.js,
                subject,
                diagnosis,
                msg_id=diagnosis.id,
                headers=headers,
                timeout_s=self.settings.nats.publish_timeout_s,
            ),
        )
        self.m_out.labels(diagnosis.cause, str(diagnosis.resolved).lower()).inc()
        self.pipeline.diagnoses.labels(diagnosis.category, diagnosis.cause).inc()
        self.pipeline.messages_published.labels(self._streams["DIAGNOSES"]).inc()
        await kill_point("after_publish_diagnosis", self.nc)
        self._observe_identified(diagnosis)
        log.info(
            "diagnosis",
            extra={
                "node": diagnosis.node,
                "cause": diagnosis.cause,
                "category": diagnosis.category,
                "confidence": diagnosis.confidence,
                "resolved": diagnosis.resolved,
                "diagnosis_id": diagnosis.id,
            },
        )

    async def _send_findings(self) -> None:
        """Publish the fleet findings not yet stored, in the order they were found; each leaves the list on its
        PubAck. A passing failure is raised with the rest kept for the next tick (before, a finding whose publish
        failed was never said: the core had counted it raised); one refused for good is dead-lettered itself (its
        JSON, the finding subject, the reason) and the next is sent."""
        while self._unsent_findings:
            finding = self._unsent_findings[0]
            try:
                await self._publish_finding(finding)
            except TRANSIENT:
                await self._kill_point_unsent()
                raise
            except Exception as exc:
                log.error(
                    "fleet finding refused by the server; kept in the DLQ",
                    extra={"finding_id": finding.finding_id, "error": repr(exc)},
                )
                reason = (
                    f"fleet finding {finding.id} ({finding.kind}) not stored: refused by the server: {describe(exc)}"
                )
                self._letter(finding_subject(prefix=self.prefix), finding.to_json(), reason)
            self._unsent_findings.pop(0)
        await self._send_letters()

    async def _publish_finding(self, finding: FleetFinding) -> None:
        await publish_model(
            self.js,
            finding_subject(prefix=self.prefix),
            finding,
            msg_id=finding.id,
            timeout_s=self.settings.nats.publish_timeout_s,
        )
        self.m_findings.labels(finding.kind).inc()
        log.warning(
            "fleet finding",
            extra={"finding_id": finding.finding_id, "finding": finding.message, "cleared": finding.cleared},
        )

    # ------------------------------------------------------------------ timers

    async def tick(self) -> None:
        """Revisit held node_down decisions and run fleet correlation when it is due."""
        now = self.clock()
        async with self._lock:
            due = {k for k, t in self._held.items() if t <= now}
            holding = len(due) < len(self._held)
            if (now - self._last_correlation).total_seconds() >= self.settings.correlation_interval_s:
                self._last_correlation = now
                findings, touched = self.diagnoser.correlate(now=now, cluster=self.settings.cluster)
                # remembered first: if a publish below fails, the next tick still revisits these nodes
                for key in touched:
                    self._held[key] = now
                due |= touched
                self._unsent_findings += findings  # remembered first, like the verdicts: the core counts them said
                kpis = self.diagnoser.kpis(now=now)
                self.m_fleet.labels("crash").set(kpis.crash_rate)
                self.m_fleet.labels("schedulable").set(kpis.schedulable_rate)
                self.m_fleet.labels("online").set(kpis.online_rate)
            await self._send_findings()  # before the diagnoses that may carry them
            if holding:
                await kill_point("in_node_down_hold", self.nc)  # verdicts held, their anomalies acked
            if due or self._unsent:
                await self._evaluate(due)  # also sends again what an earlier publish failed to store

    async def _ticker(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.tick_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("tick failed; retrying next tick", extra={"error": str(exc)})
