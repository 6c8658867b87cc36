"""The diagnoser's transport side: durable pull consumers on ANOMALIES, CLOUD and AUDIT (raw nats-py,
batches), a watch on the inventory bucket, and publishing of diagnoses and fleet findings with
deterministic `Nats-Msg-Id`s. Thin: every decision is made by `reasoning.Diagnoser`.

Bad input is dead-lettered with the reason and the raw bytes and acknowledged; a failed publish naks
the batch's remaining messages with a delay (the handlers are idempotent, so a redelivery is harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import prometheus_client
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import FetchTimeoutError
from nats.js.kv import KeyValue
from opentelemetry import trace
from opentelemetry.trace import Tracer
from pydantic import BaseModel, ValidationError

from nodeheal.diagnoser.durable import DurableState, kill_point
from nodeheal.diagnoser.kb import Matcher, load_knowledge_base
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.diagnoser.settings import SERVICE, DiagnoserSettings
from nodeheal.runtime.jetstream import dead_letter, ensure_pull_consumer, publish_model
from nodeheal.runtime.metrics import PipelineMetrics, observe_stage
from nodeheal.runtime.telemetry import TRACEPARENT, consume_span, publish_span, start_incident
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.subjects import diagnosis_subject, finding_subject, wildcard

log = logging.getLogger("nodeheal.diagnoser")

_TRACE_KEYS = (TRACEPARENT, "tracestate")
_MAX_TRACKED = 200_000  # anomaly ids whose trace context / first identification is remembered


def _now() -> datetime:
    return datetime.now(tz=UTC)


class DiagnoserRuntime:
    def __init__(
        self,
        *,
        settings: DiagnoserSettings,
        nc: Client,
        registry: prometheus_client.CollectorRegistry | None = None,
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
        self._tasks: list[asyncio.Task[None]] = []
        self._held: dict[str, datetime] = {}
        self.durable: DurableState | None = None
        self._ready = False
        self._stopping = False
        self._last_correlation = datetime.min.replace(tzinfo=UTC)
        registry = registry or prometheus_client.CollectorRegistry()
        self.pipeline = PipelineMetrics(registry)
        # A diagnosis continues the trace of the (first traced) anomaly it explains.
        self.tracer = tracer or trace.get_tracer("nodeheal.diagnoser")
        self._anomaly_traces: dict[str, dict[str, str]] = {}  # anomaly id -> trace headers it carried
        self._identified: dict[str, None] = {}  # first anomaly ids of episodes already in time_to_identify
        self._streams = {
            base: self.topology.stream(f"{settings.nats.stream_prefix}{base}").name
            for base in ("ANOMALIES", "CLOUD", "AUDIT", "DIAGNOSES")
        }
        self.m_in = prometheus_client.Counter(
            "nodeheal_diagnoser_messages_total", "Input messages by stream and outcome", ["stream", "outcome"],
            registry=registry,
        )  # fmt: skip
        self.m_out = prometheus_client.Counter(
            "nodeheal_diagnoser_diagnoses_total", "Diagnoses published by cause", ["cause", "resolved"],
            registry=registry,
        )  # fmt: skip
        self.m_findings = prometheus_client.Counter(
            "nodeheal_diagnoser_findings_total", "Fleet findings published by kind", ["kind"], registry=registry
        )
        self.m_fleet = prometheus_client.Gauge(
            "nodeheal_fleet_rate",
            "Fleet KPIs as the diagnoser sees them: crash (episodes per node per day, last 24 h), "
            "schedulable and online (share of the inventory's nodes)",
            ["kpi"],
            registry=registry,
        )
        self.m_tti = prometheus_client.Histogram(
            "nodeheal_diagnoser_time_to_identify_seconds",
            "From the anomaly's detection to the first diagnosis of the episode",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 30, 60),
            registry=registry,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        consumers: list[tuple[str, str, type[BaseModel]]] = [
            ("ANOMALIES", "anomaly", Anomaly),
            ("CLOUD", "cloud", CloudSystemEvent),
            ("AUDIT", "audit", RemediationRecord),
        ]
        kv = await self._inventory_bucket()
        if kv is not None:
            await self._load_inventory(kv)
            self._tasks.append(asyncio.create_task(self._watch_inventory(kv), name="diagnoser-inventory"))
        # state that survives a restart (durable.py): read back before the first live message
        self.durable = DurableState(
            js=self.js,
            diagnoser=self.diagnoser,
            streams=self._streams,
            prefix=self.prefix,
            bucket=await self._bucket("diagnoser"),
            lookback=timedelta(seconds=self.settings.rebuild_lookback_s),
            cloud_lookback=timedelta(seconds=self.settings.rebuild_cloud_lookback_s),
            history_lookback=self.diagnoser.config.trend.horizon,
            keep_trace=self._keep_trace,
        )
        report = await self.durable.rebuild(now=self.clock())
        for ctx in self.diagnoser.fleet.nodes.values():  # episodes already identified before the restart
            if ctx.published is not None and not ctx.published.resolved and ctx.published.anomaly_ids:
                self._identified[ctx.published.anomaly_ids[0]] = None
        async with self._lock:
            await self._evaluate(report.open_nodes)
        for base, kind, model in consumers:
            stream = self.topology.stream(f"{self.settings.nats.stream_prefix}{base}").name
            await ensure_pull_consumer(
                self.js,
                stream=stream,
                durable=self.settings.durable,
                filter_subjects=[wildcard(kind, prefix=self.prefix)],
                ack_wait_s=self.settings.ack_wait_s,
                max_deliver=self.settings.max_deliver,
                deliver_policy=DeliverPolicy.ALL,
            )
            sub = await self.js.pull_subscribe_bind(durable=self.settings.durable, stream=stream)
            self._tasks.append(asyncio.create_task(self._consume(sub, base, model), name=f"diagnoser-{kind}"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="diagnoser-tick"))
        self._tasks.append(asyncio.create_task(self._report_lag(), name="diagnoser-lag"))
        self._ready = True
        log.info("diagnoser started", extra={"prefix": self.prefix, "durable": self.settings.durable})

    async def stop(self) -> None:
        self._ready = False
        self._stopping = True
        # nats-py can turn the cancellation of a pending fetch into its own timeout, which the loops
        # treat as "nothing yet": the flag ends them, and the bounded waits make sure stop() returns
        for _ in range(3):
            pending = [t for t in self._tasks if not t.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5.0)
        for task in self._tasks:
            if task.done() and not task.cancelled():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        self._tasks.clear()

    async def readiness(self) -> tuple[bool, str]:
        if not self._ready:
            return False, "diagnoser: consumers not bound yet"
        dead = [t.get_name() for t in self._tasks if t.done()]
        if dead:
            return False, f"diagnoser: tasks stopped: {', '.join(dead)}"
        return True, "ok"

    # ------------------------------------------------------------------ inventory

    async def _inventory_bucket(self) -> KeyValue | None:
        return await self._bucket("inventory")

    async def _bucket(self, what: str) -> KeyValue | None:
        name = self.topology.bucket(f"{self.settings.nats.bucket_prefix}-{what}").name
        try:
            return await self.js.key_value(name)
        except Exception as exc:  # the buckets are provisioned by `nodeheal streams apply`
            log.warning(
                "bucket unavailable"
                + ("; peers and fleet groups unknown" if what == "inventory" else "; crash history not kept"),
                extra={"bucket": name, "error": str(exc)},
            )
            return None

    def _apply_inventory(self, key: str, value: bytes | None, op: str | None) -> None:
        if not key.startswith("node."):
            return
        if op in {"DEL", "PURGE"} or not value:
            _, _, rest = key.partition(".")
            cluster, _, node = rest.partition(".")
            from nodeheal.schemas.subjects import unescape_token

            self.diagnoser.forget_inventory(unescape_token(cluster), unescape_token(node))
            return
        try:
            self.diagnoser.on_inventory(NodeInventory.model_validate_json(value))
        except ValidationError as exc:
            log.warning("bad inventory record ignored", extra={"key": key, "error": str(exc)[:300]})

    async def _load_inventory(self, kv: KeyValue) -> None:
        try:
            keys = await kv.keys()
        except Exception:
            return  # empty bucket
        for key in keys:
            with contextlib.suppress(Exception):
                entry = await kv.get(key)
                self._apply_inventory(key, entry.value, None)

    async def _watch_inventory(self, kv: KeyValue) -> None:
        watcher = await kv.watchall(include_history=False)
        async for entry in watcher:
            if entry is None:
                continue
            async with self._lock:
                self._apply_inventory(entry.key, entry.value, entry.operation)

    # ------------------------------------------------------------------ consumption

    async def _consume(self, sub: Any, base: str, model: type[BaseModel]) -> None:
        while not self._stopping:
            try:
                msgs: list[Msg] = await sub.fetch(self.settings.batch_size, timeout=self.settings.fetch_timeout_s)
            except (TimeoutError, FetchTimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetch failed; retrying", extra={"stream": base, "error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            await self._process(msgs, base, model)

    async def _process(self, msgs: list[Msg], base: str, model: type[BaseModel]) -> None:
        async with self._lock:
            touched: set[str] = set()
            good: list[Msg] = []
            for msg in msgs:
                try:
                    item = model.model_validate_json(msg.data)
                except ValidationError as exc:
                    await self._reject(msg, base, f"not a valid {model.__name__}: {exc.errors()[:3]}")
                    continue
                if isinstance(item, Anomaly):
                    self._keep_trace(item.id, msg.headers)
                    touched |= self.diagnoser.on_anomaly(item)
                elif isinstance(item, CloudSystemEvent):
                    touched |= self.diagnoser.on_cloud_event(item)
                elif isinstance(item, RemediationRecord):
                    touched |= self.diagnoser.on_audit(item)
                good.append(msg)
            try:
                await self._evaluate(touched)
            except Exception as exc:
                log.warning("publish failed; input will be redelivered", extra={"stream": base, "error": str(exc)})
                for msg in good:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=self.settings.nak_delay_s)
                self.m_in.labels(base, "nak").inc(len(good))
                self.pipeline.messages_consumed.labels(self._streams[base]).inc(len(good))
                return
            for msg in good:
                with contextlib.suppress(Exception):
                    await msg.ack()
            self.m_in.labels(base, "ok").inc(len(good))
            self.pipeline.messages_consumed.labels(self._streams[base]).inc(len(good))

    async def _reject(self, msg: Msg, base: str, reason: str) -> None:
        await dead_letter(
            self.js,
            service=SERVICE,
            reason=reason,
            raw=msg.data,
            subject=msg.subject,
            headers=dict(msg.headers or {}),
            prefix=self.prefix,
        )
        await msg.ack()
        self.m_in.labels(base, "dead_letter").inc()
        self.pipeline.messages_dead_lettered.labels(SERVICE).inc()
        self.pipeline.messages_consumed.labels(self._streams[base]).inc()

    async def _evaluate(self, keys: set[str]) -> None:
        now = self.clock()
        for key in sorted(keys):
            outcome = self.diagnoser.evaluate(key, now=now)
            if outcome.hold_until is not None:
                self._held[key] = outcome.hold_until
                continue
            self._held.pop(key, None)
            if outcome.diagnosis is not None:
                await self._publish(outcome.diagnosis)
        if self.durable is not None:
            await self.durable.save()  # crash history, before the input that added it is acknowledged

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
        """time_to_identify once per episode (the first unresolved diagnosis of its first anomaly)."""
        first_id = diagnosis.anomaly_ids[0]
        if diagnosis.resolved or first_id in self._identified:
            return
        ctx = self.diagnoser.fleet.nodes.get(f"{diagnosis.cluster}/{diagnosis.node}")
        first = next((a for a in (ctx.anomalies if ctx else ()) if a.id == first_id), None)
        onset = diagnosis.fault_onset or (first.fault_onset if first is not None else None)
        if onset is None:
            return
        self._identified[first_id] = None
        if len(self._identified) > _MAX_TRACKED:
            del self._identified[next(iter(self._identified))]
        observe_stage(
            self.pipeline.time_to_identify, fault_class=diagnosis.category, onset=onset, at=diagnosis.identified_at
        )

    async def _publish(self, diagnosis: Diagnosis) -> None:
        subject = diagnosis_subject(diagnosis.cluster, diagnosis.node, prefix=self.prefix)
        await publish_model(
            self.js,
            subject,
            diagnosis,
            msg_id=diagnosis.id,
            headers=self._trace_headers(diagnosis, subject),
            timeout_s=self.settings.nats.publish_timeout_s,
        )
        self.m_out.labels(diagnosis.cause, str(diagnosis.resolved).lower()).inc()
        self.pipeline.diagnoses.labels(diagnosis.category, diagnosis.cause).inc()
        self.pipeline.messages_published.labels(self._streams["DIAGNOSES"]).inc()
        await kill_point("after_publish_diagnosis", self.nc)
        self._observe_identified(diagnosis)
        if not diagnosis.resolved and diagnosis.anomaly_ids:
            ctx = self.diagnoser.fleet.nodes.get(f"{diagnosis.cluster}/{diagnosis.node}")
            first = next((a for a in (ctx.anomalies if ctx else ()) if a.id == diagnosis.anomaly_ids[0]), None)
            if first is not None:
                self.m_tti.observe(max(0.0, (diagnosis.identified_at - first.detected_at).total_seconds()))
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
                for finding in findings:
                    await self._publish_finding(finding)
                kpis = self.diagnoser.kpis(now=now)
                self.m_fleet.labels("crash").set(kpis.crash_rate)
                self.m_fleet.labels("schedulable").set(kpis.schedulable_rate)
                self.m_fleet.labels("online").set(kpis.online_rate)
            if holding:
                await kill_point("in_node_down_hold", self.nc)  # verdicts held, their anomalies acked
            if due:
                await self._evaluate(due)

    async def _report_lag(self, every_s: float = 15.0) -> None:
        """Consumer lag of the three inputs into `nodeheal_consumer_pending_messages`."""
        while True:
            for base in ("ANOMALIES", "CLOUD", "AUDIT"):
                try:
                    await self.pipeline.report_consumer_lag(
                        self.js, stream=self._streams[base], consumer=self.settings.durable
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("consumer lag not read", extra={"stream": base, "error": str(exc)})
            await asyncio.sleep(every_s)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("tick failed; retrying next tick", extra={"error": str(exc)})
