"""The detector's transport side: the probe hot path on raw nats-py, the low-volume CLOUD / AUDIT
consumers, anomaly publishing, the DLQ, and the rebuild of state at start. Thin: every decision is
in `rules.Detector`.

Hot path per chunk of pulled probes (the one consumer that steps around the shared faststream
runtime, see docs/detector.md): decode each with msgspec and feed the rules (a probe that fails
either way, for any exception, is set aside for the DLQ), run due timers, publish what the rules
emitted (waiting for the stream's PubAcks), dead-letter the bad ones, then acknowledge the chunk with one
cumulative ack (AckPolicy.ALL) on its highest stream sequence. One process owns the durable, so every
probe of it up to that sequence is finished; the probes a killed process left delivered and unacknowledged
are read from the stream and processed with the next process's first chunk (`_unfinished`), so its first
ack covers nothing unfinished. An anomaly or dead letter that could not be published is retried before
anything more is acknowledged, so a crash re-delivers the probes and the deterministic message ids dedupe
the re-emission.

CLOUD and AUDIT are consumed through `nodeheal.runtime.consumer` (faststream pull subscribers):
each message is acked after the anomalies it caused are PubAck'ed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import prometheus_client
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import Tracer
from pydantic import ValidationError

from nodeheal.detector.fastpath import BatchRoute, ProbeIdentity, probe_decoder, results_decoder
from nodeheal.detector.puller import BatchPuller, PulledMsg, Puller, ack_sequences, highest, stream_seq
from nodeheal.detector.rules import MAINTENANCE_ACTIONS, Detector
from nodeheal.detector.settings import SERVICE, DetectorSettings
from nodeheal.runtime.consumer import ConsumerRuntime, Delivery, Inbound, Outbound, Transient
from nodeheal.runtime.inventory import InventoryFeed
from nodeheal.runtime.jetstream import (
    dead_letter,
    ensure_pull_consumer,
    last_per_subject_up_to,
    message_origin,
    read_range,
)
from nodeheal.runtime.metrics import PipelineMetrics, observe_stage
from nodeheal.runtime.startup import patiently
from nodeheal.runtime.telemetry import TRACEPARENT, consume_span, publish_span, start_incident
from nodeheal.runtime.testhooks import kill_point
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.prober import ProberResults, result_id
from nodeheal.schemas.subjects import anomaly_subject, dlq_subject, wildcard

log = logging.getLogger("nodeheal.detector")


_TRACE_KEYS = (TRACEPARENT, "tracestate")
_MAX_TRACKED_TRACES = 200_000  # firing anomalies / recent cloud events whose trace context is kept
_MAX_BATCH_IDS = 20_000  # prober batches remembered by id (a re-delivered one counts once): minutes of rounds


def _trace_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    if not headers or TRACEPARENT not in headers:
        return None
    return {k: headers[k] for k in _TRACE_KEYS if k in headers}


def _rejected(why: str) -> str:
    return f"probe rejected: {why[:1000]}; fix the sender (schema nodeheal.probe/v1)"


def _rejected_batch(why: str) -> str:
    return f"prober results rejected: {why[:1000]}; fix the sender (schema nodeheal.prober-results/v1)"


def _remember(store: dict[str, dict[str, str]], key: str, value: dict[str, str]) -> None:
    store[key] = value
    if len(store) > _MAX_TRACKED_TRACES:
        del store[next(iter(store))]  # the oldest: a trace context lost costs a new trace, nothing else


def inbound(settings: DetectorSettings) -> list[Inbound[Any]]:
    """The detector's consumers on the shared runtime (the probe path is separate: `probe_contract`)."""
    topo = settings.nats.topology()
    prefix = settings.nats.prefix
    common: dict[str, Any] = {
        "durable": settings.side_durable,
        "batch_size": 100,
        "fetch_timeout_s": 1.0,
        "ack_wait_s": 30.0,
        "max_deliver": 10,
        "max_ack_pending": 1000,
        "deliver_policy": DeliverPolicy.NEW,
        "nak_delay_s": 1.0,
    }
    return [
        Inbound(
            title="cloud events",
            stream=topo.stream(f"{settings.nats.stream_prefix}CLOUD").name,
            subject=wildcard("cloud", prefix=prefix),
            model=CloudSystemEvent,
            description="Cloud maintenance becomes an anomaly of its own.",
            **common,
        ),
        Inbound(
            title="audit",
            stream=topo.stream(f"{settings.nats.stream_prefix}AUDIT").name,
            subject=wildcard("audit", prefix=prefix),
            model=RemediationRecord,
            description="Remediation in progress on a node: its expected downtime is no anomaly.",
            **common,
        ),
    ]


def probe_contract(settings: DetectorSettings) -> Inbound[NodeProbe]:
    """The probe consumer as documented; it runs on the detector's own batch puller (`_run_probes`)."""
    return Inbound(
        title="probes",
        stream=settings.nats.topology().stream(f"{settings.nats.stream_prefix}PROBES").name,
        subject=settings.probe_filters()[0],
        durable=settings.probe_durable,
        model=NodeProbe,
        description="Batch-pulled by the detector's durable consumer (its own batch puller, not a faststream"
        " subscriber: the one documented exception, docs/detector.md). AckPolicy.ALL: one cumulative ack per chunk,"
        " on its highest stream sequence, sent after the chunk's anomalies and dead letters were acknowledged by"
        " their streams; probes no ack covered are redelivered after a crash (anomaly ids are deterministic).",
        batch_size=settings.batch_size,
        ack_wait_s=settings.ack_wait_s,
        max_deliver=-1,
        max_ack_pending=settings.max_ack_pending,
    )


def prober_results_contract(settings: DetectorSettings) -> Inbound[ProberResults]:
    """The prober's batches, read by the same durable and puller as the probes (`_run_probes`)."""
    return Inbound(
        title="prober results",
        stream=settings.nats.topology().stream(f"{settings.nats.stream_prefix}PROBES").name,
        subject=settings.probe_filters()[1],
        durable=settings.probe_durable,
        model=ProberResults,
        description="The active prober's results in batches (`<prefix>.prober.<cluster>._r<k>`, one message per"
        " partition of PROBES for up to 500 nodes), read by the probe durable with the probes; each entry is judged"
        " as one prober probe. A batch that fails decoding, names another cluster or holds a node of another"
        " partition goes to the DLQ whole. Single prober probes (`prober.<cluster>.<node>`) are still accepted.",
        batch_size=settings.batch_size,
        ack_wait_s=settings.ack_wait_s,
        max_deliver=-1,
        max_ack_pending=settings.max_ack_pending,
    )


def outbound(settings: DetectorSettings) -> list[Outbound]:
    prefix = settings.nats.prefix
    return [
        Outbound(
            "anomalies",
            f"{prefix}.anomaly.{{cluster}}.{{node}}",
            Anomaly,
            "Firing and resolved; deterministic Nats-Msg-Id; carries traceparent (an incident's trace starts).",
            settings.nats.topology().stream(f"{settings.nats.stream_prefix}ANOMALIES").name,
        ),
        Outbound(
            "dead letters",
            dlq_subject(SERVICE, prefix=prefix),
            DeadLetter,
            "Input this service rejected: the reason, where it came from, the raw bytes (acknowledged, never retried).",
            settings.nats.topology().stream(f"{settings.nats.stream_prefix}DLQ").name,
        ),
    ]


class Metrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        reg = registry
        self.probes = prometheus_client.Counter("nodeheal_detector_probes", "Probes processed", registry=reg)
        self.dead = prometheus_client.Counter(
            "nodeheal_detector_dead_lettered", "Inputs sent to the DLQ", ["stream"], registry=reg
        )
        self.anomalies = prometheus_client.Counter(
            "nodeheal_detector_anomalies", "Anomalies published", ["kind", "status"], registry=reg
        )
        self.nodes = prometheus_client.Gauge("nodeheal_detector_nodes", "Nodes tracked", registry=reg)
        self.chunk = prometheus_client.Histogram(
            "nodeheal_detector_chunk_size",
            "Probes per processed chunk",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=reg,
        )
        self.prober_results = prometheus_client.Counter(
            "nodeheal_detector_prober_results", "Prober results judged from ProberResults batches", registry=reg
        )
        self.publish_failures = prometheus_client.Counter(
            "nodeheal_detector_publish_failures", "Anomaly publishes that failed (retried)", registry=reg
        )
        self.feed_lag = prometheus_client.Gauge(
            "nodeheal_detector_feed_lag_seconds",
            "How far behind PROBES the probe loop reads: seconds between the server storing the newest probe"
            " handled and handling it",
            registry=reg,
        )
        self.feed_pauses = prometheus_client.Counter(
            "nodeheal_detector_feed_pauses",
            "Pauses of PROBES taken for the stream's outage (it stored nothing from anyone for far longer than the"
            " fleet's probes leave between them): no node's silence counts them",
            registry=reg,
        )


class DetectorRuntime:
    """Owns the detector's consumers for one process (one replica)."""

    def __init__(
        self,
        *,
        settings: DetectorSettings,
        nc: Client,
        registry: prometheus_client.CollectorRegistry | None = None,
        broker: NatsBroker | None = None,
        clock: Callable[[], float] = time.time,
        on_published: Callable[[Anomaly, float], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.clock = clock
        self.topology = settings.nats.topology()
        self.detector = Detector(config=settings.rules, started_at=clock(), adopt_unknown=not settings.partitions)
        self._reconnects = int(nc.stats.get("reconnects", 0))
        reg = registry if registry is not None else prometheus_client.CollectorRegistry()
        self.metrics = Metrics(reg)
        self.pipeline = PipelineMetrics(reg)
        # Traces start when an anomaly fires (never per probe); its resolution continues the same trace.
        self.tracer = tracer or trace.get_tracer("nodeheal.detector")
        self._incident_traces: dict[str, dict[str, str]] = {}  # anomaly_key -> trace headers of the firing
        self._cloud_traces: dict[str, dict[str, str]] = {}  # CLOUD message id -> its trace headers (ingest's)
        self.on_published = on_published
        self._unpublished: list[Anomaly] = []
        # `_flush` runs from the probe loop and from the CLOUD / AUDIT handlers: one at a time, so a caller's flush
        # returns only once everything queued before it is stored (the probe loop acks on that)
        self._flush_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._probe_puller: Puller | None = None
        self._progress_at = time.monotonic()  # the probe loop's last step (a chunk, a sweep, a publish window)
        self.unfinished_reads = 0  # how often the stream was read for what a killed process left (`_unfinished`)
        self.identity = ProbeIdentity(prefix=settings.nats.prefix)
        self._batches_seen: dict[str, None] = {}  # ids of the prober batches processed (bounded, oldest first)
        self.probes_stream = self.topology.stream(f"{settings.nats.stream_prefix}PROBES").name
        self.cloud_stream = self.topology.stream(f"{settings.nats.stream_prefix}CLOUD").name
        self.audit_stream = self.topology.stream(f"{settings.nats.stream_prefix}AUDIT").name
        self.anomalies_stream = self.topology.stream(f"{settings.nats.stream_prefix}ANOMALIES").name
        self.consumers = ConsumerRuntime(
            service=SERVICE,
            nats=settings.nats,
            metrics=self.pipeline,
            tracer=self.tracer,
            name=f"nodeheal-detector-consumers-{settings.instance}",
            broker=broker,  # the process's broker: one NATS connection (None: a broker of its own)
        )
        # the inventory bucket, for one thing: a node deleted from it left the fleet (no silence anomaly)
        self.inventory = InventoryFeed(
            self.topology.bucket(f"{settings.nats.bucket_prefix}-inventory").name,
            on_put=lambda record: self.detector.rejoin(record.cluster, record.node),
            on_delete=self._left_fleet,
        )
        side = inbound(settings)
        self.consumers.consume(side[0], self._cloud_message)
        self.consumers.consume(side[1], self._audit_message)
        self.consumers.documents(probe_contract(settings))
        self.consumers.documents(prober_results_contract(settings))
        self.consumers.publishes(*outbound(settings))

    # ------------------------------------------------------------------ lifecycle

    async def ensure_consumers(self, *, probe_deliver: DeliverPolicy = DeliverPolicy.NEW) -> None:
        s = self.settings
        await patiently(
            f"consumer {s.probe_durable} on {self.probes_stream}",
            lambda: ensure_pull_consumer(
                self.js,
                stream=self.probes_stream,
                durable=s.probe_durable,
                filter_subjects=s.probe_filters(),
                ack_wait_s=s.ack_wait_s,
                max_deliver=-1,
                max_ack_pending=s.max_ack_pending,
                ack_policy=AckPolicy.ALL,
                deliver_policy=probe_deliver,
            ),
        )
        await self.consumers.ensure()

    async def start(self, *, rebuild: bool = True, probe_deliver: DeliverPolicy = DeliverPolicy.NEW) -> None:
        await self.ensure_consumers(probe_deliver=probe_deliver)
        if rebuild:
            await self.rebuild()
        if await self.inventory.open(self.js):
            # deletes only matter from now on: no initial load (50,000 gets); the watch streams the bucket
            self.consumers.loop("inventory", self.inventory.watch)
        self._probe_puller = self._make_probe_puller()
        await self._probe_puller.start()
        self._progress_at = time.monotonic()  # the rebuild was no stall of the loop
        self._tasks = [asyncio.create_task(self._run_probes(), name="detector-probes")]
        await self.consumers.start()
        self._ready = True
        log.info(
            "detector started",
            extra={
                "durable": self.settings.probe_durable,
                "filters": self.settings.probe_filters(),
                "nodes_known": len(self.detector.nodes),
            },
        )

    def _left_fleet(self, cluster: str, node: str) -> None:
        if self.detector.forget(cluster, node):
            log.info("node left the inventory; its silence is no longer tracked", extra={"node": node})

    def _make_probe_puller(self) -> Puller:
        s = self.settings
        return BatchPuller(
            self.nc,
            stream=self.probes_stream,
            consumer=s.probe_durable,
            batch=s.batch_size,
            expires_s=s.fetch_expires_s,
        )

    async def stop(self, *, grace_s: float = 5.0) -> None:
        """Let the loops finish their current chunk (publish, then ack), flush, and close."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._tasks = []
        await self.consumers.stop()
        try:
            await self._flush(self.clock())
        except Exception:
            log.exception("anomalies left unpublished at shutdown; the probes were not acknowledged")
        if self._probe_puller is not None:
            await self._probe_puller.stop()
        log.info("detector stopped", extra={"nodes": len(self.detector.nodes)})

    async def readiness(self) -> tuple[bool, str]:
        if not self._ready:
            return False, "detector: rebuilding state / consumers not bound yet"
        for stream, durable in (
            (self.probes_stream, self.settings.probe_durable),
            (self.cloud_stream, self.settings.side_durable),
            (self.audit_stream, self.settings.side_durable),
        ):
            try:
                await self.js.consumer_info(stream, durable)
            except NotFoundError:
                return False, f"detector: consumer {durable!r} on stream {stream!r} is missing; run the service again"
        dead = [t.get_name() for t in self._tasks if t.done()]
        if dead:
            return False, f"detector: loops stopped: {', '.join(dead)}"
        return await self.consumers.readiness()

    def liveness(self) -> tuple[bool, str]:
        """False once the probe loop or a consumer of the runtime died, or the probe loop is stuck (no step for
        `stall_s`): /healthz fails, the pod restarts. A loop that is alive and stepping but behind its stream
        is not a liveness failure (a restart would only add a rebuild to the backlog): that shows in
        `nodeheal_detector_feed_lag_seconds` and the consumer's pending count."""
        if not self._ready or self._stopping.is_set():
            return True, "ok"
        dead = [t.get_name() for t in self._tasks if t.done()]
        if dead:
            return False, f"detector: loops stopped: {', '.join(dead)}"
        idle = time.monotonic() - self._progress_at
        if idle > self.settings.stall_s:
            return False, f"detector: the probe loop made no progress for {idle:.0f} s (stuck); the pod must restart"
        return self.consumers.liveness()

    # ------------------------------------------------------------------ rebuild after a restart

    async def _replay(
        self,
        stream: str,
        filters: list[str],
        *,
        deliver: DeliverPolicy,
        since: datetime | None,
        on_msg: Callable[[Msg], None],
    ) -> int:
        """Read a stream once (`nodeheal.runtime.jetstream.read_range`: resumes after the last message handled
        when JetStream goes away mid-read) through a consumer named `<durable>-replay-…`."""
        return await read_range(
            self.js,
            stream=stream,
            filters=filters,
            name=f"{self.settings.durable}-replay",
            on_msg=on_msg,
            deliver=deliver,
            since=since,
            what=f"state replay of {stream}",
        )

    async def _unfinished(self, chunk: Sequence[PulledMsg]) -> list[PulledMsg]:
        """The probes a previous process of this durable died holding, at or below this process's first chunk.

        Acks are cumulative (AckPolicy.ALL): one ack covers every probe of the durable up to its stream
        sequence. A process killed between fetching and acking leaves probes delivered and unacknowledged
        between the durable's ack floor and the first probe delivered to the next process (deliveries come
        in stream order), and that process's first ack would cover them. So before its first ack the new
        process reads every probe of its filters in (ack floor, the chunk's highest sequence] from the
        stream, and the ones not in the chunk are processed with it: nothing below an ack is unfinished."""
        top = max((seq for seq in (stream_seq(m.reply) for m in chunk if m.reply) if seq is not None), default=0)
        info = await self.js.consumer_info(self.probes_stream, self.settings.probe_durable)
        floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0
        if top <= floor:
            return []
        # Nothing to read when this chunk holds every delivery of the durable since its ack floor (first deliveries,
        # consumer sequences floor+1 … floor+n without a gap): nobody else was delivered a probe that is not acked
        # (a fresh durable, a clean stop). A killed process's deliveries leave a gap before this process's first.
        floor_delivery = int(info.ack_floor.consumer_seq or 0) if info.ack_floor is not None else 0
        delivered = [ack_sequences(m.reply) for m in chunk if m.reply]
        if delivered and all(q is not None and q[0] == 1 for q in delivered):
            deliveries = sorted(q[2] for q in delivered if q is not None)
            if deliveries == list(range(floor_delivery + 1, floor_delivery + 1 + len(deliveries))):
                return []
        self.unfinished_reads += 1
        have = {stream_seq(m.reply) for m in chunk if m.reply}
        config = ConsumerConfig(
            name=f"{self.settings.durable}-replay-{secrets.token_hex(8)}",
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=floor + 1,
            filter_subjects=self.settings.probe_filters(),
            inactive_threshold=30.0,
            mem_storage=True,
        )
        created = await self.js.add_consumer(self.probes_stream, config=config)
        puller = BatchPuller(self.nc, stream=self.probes_stream, consumer=created.name, batch=2000, expires_s=2.0)
        await puller.start()
        found: list[PulledMsg] = []
        idle = 0
        try:
            while idle < 3:
                got = await puller.next_chunk(wait_s=1.0)
                if not got:
                    idle += 1
                    continue
                idle = 0
                seqs = [(stream_seq(m.reply), m) for m in got]
                found += [m for seq, m in seqs if seq is not None and seq <= top and seq not in have]
                if any(seq is not None and seq >= top for seq, _ in seqs):
                    break
        finally:
            await puller.stop()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.probes_stream, created.name)
        if found:
            log.warning(
                "probes a previous process left unacknowledged are processed before the first ack",
                extra={"probes": len(found), "ack_floor": floor, "first_ack_through": top},
            )
        return found

    async def _ack_floor(self) -> int:
        """The stream sequence up to which the probe durable has acknowledged everything."""
        try:
            info = await patiently(
                "the probe durable's ack floor",
                lambda: self.js.consumer_info(self.probes_stream, self.settings.probe_durable),
            )
        except Exception as exc:
            log.warning("probe durable unreadable; boot ids are seeded from the last probes", extra={"error": str(exc)})
            return 2**63
        return int(info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0

    async def _seed_boots(self, subjects: dict[str, tuple[str, str]], *, floor: int) -> int:
        """Re-seed the boot id of every node whose last probe lies beyond the ack floor from its last
        probe at or before it (none: unknown, the next probe sets it). Returns how many were re-seeded."""
        if not subjects:
            return 0
        try:
            found = await patiently(
                "boot ids as of the ack floor",
                lambda: last_per_subject_up_to(
                    self.nc, self.probes_stream, list(subjects), up_to_seq=floor, api_prefix=self.js._prefix
                ),
            )
        except Exception as exc:
            log.warning(
                "boot ids as of the ack floor unreadable; seeded from the last probes (a reboot while the"
                " detector was away may go unseen)",
                extra={"error": str(exc)[:300], "nodes": len(subjects)},
            )
            return 0
        for subject, (cluster, node) in subjects.items():
            msg = found.get(subject)
            boot: str | None = None
            if msg is not None:
                with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                    boot = probe_decoder.decode(msg.data).boot_id
            self.detector.seed_boot(cluster, node, boot)
        return len(subjects)

    async def rebuild(self) -> None:
        """Know the fleet and what was firing before the first live probe: seed nodes (and boot ids)
        from the last probe per node, rebuild cloud-event and remediation windows (state only), then
        replay ANOMALIES so exactly what was firing is firing again. Nothing is published here."""
        s = self.settings
        det = self.detector
        now = self.clock()
        since = datetime.fromtimestamp(now, tz=UTC) - timedelta(seconds=s.restore_lookback_s)
        counts: dict[str, int] = {}
        if s.seed_from_last_probes:
            # what the killed process had processed ends at its durable's ack floor: probes stored after
            # it are delivered again, so a node's boot id is seeded as of the floor (a node that rebooted
            # while we were away is then an unexpected_reboot when its new boot's probes arrive)
            floor = await self._ack_floor()
            beyond: dict[str, tuple[str, str]] = {}  # subject -> (cluster, node)

            def seed(msg: Msg) -> None:
                route = self.identity.route(msg.subject)
                if route is not None:  # a prober batch (the last of its partition): its nodes are known
                    try:
                        batch = results_decoder.decode(msg.data)
                    except (msgspec.ValidationError, msgspec.DecodeError):
                        return
                    if self.identity.batch_mismatch(msg.subject, route, batch, partitions=s.partitions) is None:
                        for probe in batch.probes():
                            det.seed_last_probe(probe, now=now)
                    return
                try:
                    probe = probe_decoder.decode(msg.data)
                except (msgspec.ValidationError, msgspec.DecodeError):
                    return
                if self.identity.mismatch(msg.subject, probe) is None:
                    try:
                        stored_at: float | None = msg.metadata.timestamp.timestamp()
                        sequence = msg.metadata.sequence.stream
                    except Exception:
                        stored_at, sequence = None, 0
                    det.seed_last_probe(probe, now=now, stored_at=stored_at)
                    if probe.source != "prober" and sequence > floor:
                        beyond[msg.subject] = (probe.cluster, probe.node)

            counts["probes"] = await self._replay(
                self.probes_stream, s.probe_filters(), deliver=DeliverPolicy.LAST_PER_SUBJECT, since=None, on_msg=seed
            )
            counts["boots_as_of_ack_floor"] = await self._seed_boots(beyond, floor=floor)
            det.seeded(now=now)

        def cloud(msg: Msg) -> None:
            try:
                event = CloudSystemEvent.model_validate_json(msg.data)
            except ValidationError:
                return
            if event.action in MAINTENANCE_ACTIONS:  # only these change what the detector decides
                det.observe_cloud(event, now=now, at=min(now, event.observed_at.timestamp()))

        # all of CLOUD, not the restore window: a host event is announced once, days or weeks ahead (AWS
        # about two weeks), and nothing more comes until its phase changes; its maintenance condition must
        # be firing again after a restart, or its end resolves nothing and its downtime is unexplained
        counts["cloud"] = await self._replay(
            self.cloud_stream,
            [wildcard("cloud", prefix=s.nats.prefix)],
            deliver=DeliverPolicy.ALL,
            since=None,
            on_msg=cloud,
        )

        def audit(msg: Msg) -> None:
            try:
                record = RemediationRecord.model_validate_json(msg.data)
            except ValidationError:
                return
            # as of the record's own time: a repair a day old does not explain a node's downtime after the restart
            det.observe_remediation(record, now=now)

        counts["audit"] = await self._replay(
            self.audit_stream,
            [wildcard("audit", prefix=s.nats.prefix)],
            deliver=DeliverPolicy.BY_START_TIME,
            since=since,
            on_msg=audit,
        )
        det.outbox.clear()  # state only: what the replays would have emitted was published before

        def restore(msg: Msg) -> None:
            try:
                anomaly = Anomaly.model_validate_json(msg.data)
            except ValidationError:
                return
            if not anomaly.replay:
                det.restore(anomaly, now=now)
                context = _trace_headers(msg.headers)
                if anomaly.status == "firing" and context is not None:
                    _remember(self._incident_traces, anomaly.anomaly_key, context)
                elif anomaly.status == "resolved":
                    self._incident_traces.pop(anomaly.anomaly_key, None)

        counts["anomalies"] = await self._replay(
            self.anomalies_stream,
            [wildcard("anomaly", prefix=s.nats.prefix)],
            deliver=DeliverPolicy.BY_START_TIME,
            since=since,
            on_msg=restore,
        )
        det.outbox.clear()
        log.info("state rebuilt", extra={"read": counts, "nodes": len(det.nodes), "firing": len(det.firing())})

    # ------------------------------------------------------------------ the probe hot path

    def _watch_feed(self, now: float) -> None:
        """Our own connection: while it is down the detector judges no silence, and after it is back (a reconnect:
        the NATS server restarted) every node gets a full silence timeout before its silence is judged
        (`Detector.lost_feed` / `feed_back`): the agents come back each at its own moment."""
        det = self.detector
        reconnects = int(self.nc.stats.get("reconnects", 0))
        if not self.nc.is_connected:
            if not det.feed_away:
                log.warning("connection to NATS lost: no silence is judged until it is back")
                det.lost_feed()
        elif det.feed_away or reconnects != self._reconnects:
            log.warning("connection to NATS back: silence judged again after one silence timeout")
            det.feed_back(now=now)
        self._reconnects = reconnects

    def _watch_stream(self, chunk: Sequence[PulledMsg], now: float) -> None:
        """What the probe stream stored: a pause in it far longer than the fleet's probes leave between them is the
        stream's outage (its leader lost, another being elected), and no node's silence counts it
        (`Detector.stream_stored`). Judged before the chunk's probes: a prober verdict among them may judge a
        silence at once."""
        det = self.detector
        first, last = stored_at(chunk[0].reply), stored_at(chunk[-1].reply)
        if first is None or last is None:
            return
        shortest = det.feed_pause_s
        widest = widest_gap(chunk) if last - first >= shortest else 0.0
        pause = det.stream_stored(first=first, last=last, count=len(chunk), now=now, widest=widest)
        if pause is not None:
            self.metrics.feed_pauses.inc()
            log.warning(
                "the probe stream stored nothing for a while (its leader lost and another elected, or every agent "
                "cut off from it): the pause counts in no node's silence",
                extra={"pause_s": round(pause, 2), "shortest_outage_s": round(shortest, 2)},
            )

    async def _run_probes(self) -> None:
        puller = self._probe_puller
        assert puller is not None
        det = self.detector
        decode = probe_decoder.decode
        mismatch = self.identity.mismatch
        route_of = self.identity.route
        observe = det.observe_probe
        tick_s = self.settings.tick_s
        last_tick = 0.0
        first = True  # the first chunk also carries what a previous process left unfinished (`_unfinished`)
        unsent: list[tuple[PulledMsg, str]] = []  # dead letters of a chunk whose ack failed: sent before the next ack
        tick_limit = self.settings.tick_limit
        while not self._stopping.is_set():
            self._progress_at = time.monotonic()
            try:
                # a sweep that stopped at its limit goes on at once (the next chunk is not waited for)
                chunk = await puller.next_chunk(wait_s=0.0 if det.tick_behind else tick_s)
            except Exception:
                log.exception("pulling probes failed; retrying")
                await asyncio.sleep(1.0)
                continue
            pulled = chunk  # in stream order: what `_unfinished` puts before it was stored earlier
            if chunk:
                kill_point("detector.fetched")
            if chunk and first:
                try:
                    chunk = [*await self._unfinished(chunk), *chunk]
                except Exception:
                    # not processed, not acknowledged: delivered again after ack_wait; the next chunk reads again
                    log.exception("reading what a previous process left unfinished failed; chunk left unacked")
                    await asyncio.sleep(1.0)
                    continue
                first = False
            now = self.clock()
            self._watch_feed(now)
            if pulled:
                self._watch_stream(pulled, now)
            bad, unsent = unsent, []
            for msg in chunk:
                route = route_of(msg.subject)
                if route is not None:  # a prober batch: each entry judged as one prober probe
                    why = self._observe_batch(msg, route, now)
                    if why is not None:
                        bad.append((msg, why))
                    continue
                try:
                    probe = decode(msg.data)
                    t = probe.time
                    if t is not None and t.utcoffset():
                        t.astimezone(UTC)  # as the schema does: the UTC instant must exist (OverflowError)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    bad.append((msg, _rejected(str(exc))))
                    continue
                except Exception as exc:  # anything else a hostile payload can raise (RecursionError...)
                    bad.append((msg, _rejected(f"{type(exc).__name__}: {exc}")))
                    continue
                wrong = mismatch(msg.subject, probe)
                if wrong is not None:
                    bad.append((msg, f"{wrong}; a node speaks only for itself (the subject is what NATS authorised)"))
                    continue
                try:
                    observe(probe, now=now)
                except Exception as exc:  # e.g. OverflowError of a time at the end of the calendar
                    bad.append((msg, _rejected(f"cannot be evaluated: {type(exc).__name__}: {exc}")))
            if chunk:
                lag = stream_lag(chunk[-1].reply, time.time())
                if lag is not None:
                    det.feed_lag = lag
                    self.metrics.feed_lag.set(lag)
            if now - last_tick >= tick_s or det.outbox or det.tick_behind:
                det.tick(now=now, limit=tick_limit)
                last_tick = now
            try:
                await self._flush(now)
                if bad:
                    await self._dead_letter_probes(bad)
                bad = []
                if chunk:
                    kill_point("detector.published")
                    # one cumulative ack, on the chunk's highest stream sequence: every probe of this durable up
                    # to it is finished (earlier chunks were acked or are retried first; `_unfinished`)
                    top = highest(chunk)
                    if top is not None:
                        await puller.ack_all_through(top)
            except Exception:
                # Not acknowledged: the anomalies (`_unpublished`) and dead letters are sent again before the next
                # ack, which covers these probes too; a crash re-delivers them; anomaly ids are deterministic.
                log.exception("publishing anomalies or dead letters failed; will retry before acking more")
                unsent = bad
                await asyncio.sleep(0.5)
            if chunk:
                self.metrics.probes.inc(len(chunk))
                self.metrics.chunk.observe(len(chunk))
                self.metrics.nodes.set(len(det.nodes))

    def _observe_batch(self, msg: PulledMsg, route: BatchRoute, now: float) -> str | None:
        """One `ProberResults` message: checked whole (decoding, identity, partition) before any entry counts,
        then each entry fed to the rules as the prober `NodeProbe` it stands for. A batch seen before (its
        id: a re-delivery, a re-send the stream's duplicate window let through) is counted once. Returns the
        reason when the batch is rejected; it goes to the DLQ whole, and nothing of it was applied — unless the
        rules fail on an entry (they do not on reachability), when the entries before it were."""
        try:
            batch = results_decoder.decode(msg.data)
            t = batch.time
            if t is not None and t.utcoffset():
                t.astimezone(UTC)  # as the schema does: the UTC instant must exist (OverflowError)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return _rejected_batch(str(exc))
        except Exception as exc:  # anything else a hostile payload can raise
            return _rejected_batch(f"{type(exc).__name__}: {exc}")
        wrong = self.identity.batch_mismatch(msg.subject, route, batch, partitions=self.settings.partitions)
        if wrong is not None:
            return f"{wrong}; the prober speaks only for the nodes of the partition it published to"
        det = self.detector
        seen = self._batches_seen
        if batch.id:
            if batch.id in seen:
                det.counters.duplicates += 1
                return None
            seen[batch.id] = None
            if len(seen) > _MAX_BATCH_IDS:
                del seen[next(iter(seen))]
        batch_id = batch.id or f"{msg.subject}@{stream_seq(msg.reply) if msg.reply else 0}"
        observe = det.observe_probe
        probes = batch.probes([result_id(batch_id, i) for i in range(len(batch.results))])
        for i, probe in enumerate(probes):
            try:
                observe(probe, now=now)
            except Exception as exc:  # the rules never raise on reachability; said, not hidden, if they do
                log.exception("a prober result could not be evaluated", extra={"node": probe.node})
                return _rejected_batch(
                    f"entry {i} (node {probe.node!r}) cannot be evaluated: {type(exc).__name__}: {exc}"
                )
        self.metrics.prober_results.inc(len(probes))
        return None

    async def _flush(self, now: float) -> None:
        """Publish what the rules emitted, in order, up to `publish_window` anomalies at a time (each window's
        PubAcks awaited before the next), so a storm of tens of thousands leaves the event loop free between
        windows. A window never holds two anomalies of one anomaly key (it ends before the second), so a
        resolution is never in flight with its firing. A window with a failure stops the flush: what failed
        and everything after it is kept, in order, for the next try (an anomaly's resolution must never
        overtake its firing), and `Transient` is raised (a CLOUD / AUDIT message is nak'ed and tried again).

        One flush at a time (`_flush_lock`): the probe loop and the CLOUD / AUDIT handlers all flush, and a
        flush returns only after everything queued before it was PubAck'ed — never while another caller's
        window holds it in flight."""
        async with self._flush_lock:
            det = self.detector
            if det.outbox:
                self._unpublished.extend(det.outbox)
                det.outbox.clear()
            window = self.settings.publish_window
            while self._unpublished:
                size = _window_size(self._unpublished, window)
                pending, self._unpublished = self._unpublished[:size], self._unpublished[size:]
                failed = await self._publish_window(pending)
                self._progress_at = time.monotonic()
                if failed:
                    self._unpublished = failed + self._unpublished
                    msg = f"{len(failed)} anomalies could not be published to {self.anomalies_stream}"
                    raise Transient(msg)

    async def _publish_window(self, pending: list[Anomaly]) -> list[Anomaly]:
        """Publish one window concurrently; returns the ones that failed (in their order)."""
        prefix = self.settings.nats.prefix
        timeout = self.settings.nats.publish_timeout_s
        subjects = [anomaly_subject(a.cluster, a.node, prefix=prefix) for a in pending]
        results = await asyncio.gather(
            *(
                self.js.publish(subject, a.to_json(), headers=self._headers(a, subject), timeout=timeout)
                for a, subject in zip(pending, subjects, strict=True)
            ),
            return_exceptions=True,
        )
        published_at = self.clock()
        failed: list[Anomaly] = []
        for anomaly, result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(anomaly)
                self.metrics.publish_failures.inc()
                continue
            self.metrics.anomalies.labels(anomaly.kind, anomaly.status).inc()
            self.pipeline.anomalies.labels(anomaly.kind, anomaly.status).inc()
            self.pipeline.messages_published.labels(self.anomalies_stream).inc()
            if anomaly.status == "firing":
                observe_stage(
                    self.pipeline.time_to_detect,
                    fault_class=anomaly.kind,
                    onset=anomaly.fault_onset,
                    at=anomaly.detected_at,
                )
            elif anomaly.status == "resolved":
                self._incident_traces.pop(anomaly.anomaly_key, None)
            log.info(
                "anomaly %s",
                anomaly.status,
                extra={"node": anomaly.node, "kind": anomaly.kind, "subject": anomaly.subject, "id": anomaly.id},
            )
            if self.on_published is not None:
                self.on_published(anomaly, published_at)
        return failed

    def _headers(self, anomaly: Anomaly, subject: str) -> dict[str, str]:
        """`Nats-Msg-Id` plus the incident's trace context: a firing anomaly starts the incident's trace
        (or continues the cloud event's that explains it); its resolution continues the firing's trace.
        A re-publish after a failure reuses the context kept for the anomaly key."""
        headers = {"Nats-Msg-Id": anomaly.id}
        key = anomaly.anomaly_key
        parent = self._incident_traces.get(key)
        attributes = {
            "nodeheal.node": anomaly.node,
            "nodeheal.cluster": anomaly.cluster,
            "nodeheal.anomaly.kind": anomaly.kind,
            "nodeheal.anomaly.status": anomaly.status,
            "nodeheal.anomaly.id": anomaly.id,
        }
        if parent is None and anomaly.kind == "cloud_maintenance":
            parent = next((self._cloud_traces[r] for r in anomaly.probe_ids if r in self._cloud_traces), None)
        if parent is None:
            if anomaly.status != "firing":
                return headers  # a resolution whose firing was never traced here (e.g. before an upgrade)
            with (
                start_incident(self.tracer, name="anomaly fired", attributes=attributes),
                publish_span(self.tracer, subject=subject, headers=headers) as out,
            ):
                pass
        else:
            with (
                consume_span(self.tracer, subject=subject, headers=parent, name=f"anomaly {anomaly.status}"),
                publish_span(self.tracer, subject=subject, headers=headers, attributes=attributes) as out,
            ):
                pass
        if anomaly.status == "firing":
            context = _trace_headers(out)
            if context is not None:
                _remember(self._incident_traces, key, context)
        return out

    async def _dead_letter_probes(self, bad: list[tuple[PulledMsg, str]]) -> None:
        """Send each dead letter and take it off `bad`: when a send fails, `bad` holds only those not sent yet
        (the caller retries them). Each letter's id comes from the probe's stream sequence, so a probe
        dead-lettered again after a crash is stored once."""
        while bad:
            msg, reason = bad[0]
            kept = await dead_letter(
                self.js,
                service=SERVICE,
                reason=reason,
                raw=msg.data,
                subject=msg.subject,
                headers=dict(msg.headers) if msg.headers else None,
                prefix=self.settings.nats.prefix,
                origin=message_origin(msg.reply),
            )
            bad.pop(0)
            if kept is not None:  # None: the rate limit dropped it (`nodeheal_dlq_rate_limited_total`)
                self.metrics.dead.labels("probes").inc()

    # ------------------------------------------------------------------ CLOUD and AUDIT (low volume)

    def _on_cloud(self, raw: bytes, headers: dict[str, str] | None, now: float) -> None:
        event = CloudSystemEvent.model_validate_json(raw)
        context = _trace_headers(headers)
        if context is not None:  # a maintenance anomaly it causes continues ingest's trace
            _remember(self._cloud_traces, event.id, context)
        self.detector.observe_cloud(event, now=now)

    def _on_audit(self, raw: bytes, headers: dict[str, str] | None, now: float) -> None:
        self.detector.observe_remediation(RemediationRecord.model_validate_json(raw), now=now)

    async def _cloud_message(self, event: CloudSystemEvent, delivery: Delivery) -> None:
        self._on_cloud(delivery.data, delivery.headers, self.clock())
        await self._flush(self.clock())

    async def _audit_message(self, record: RemediationRecord, delivery: Delivery) -> None:
        self._on_audit(delivery.data, delivery.headers, self.clock())
        await self._flush(self.clock())


def _window_size(queue: Sequence[Anomaly], window: int) -> int:
    """How many of the queue's first anomalies go out together: at most `window`, and none of them with the
    anomaly key of an earlier one (a firing and its resolution are never in flight at once)."""
    keys: set[str] = set()
    limit = min(window, len(queue))
    for i in range(limit):
        key = queue[i].anomaly_key
        if key in keys:
            return i
        keys.add(key)
    return max(1, limit)


def stored_at(reply: str) -> float | None:
    """When the server stored a JetStream message (seconds since the epoch), from its ack subject
    (`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<stored ns>.<pending>`, or the 12-token form
    with domain and account hash); None when the subject is not a JetStream ack subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        stamp = tokens[7]
    elif len(tokens) >= 11:
        stamp = tokens[9]
    else:
        return None
    try:
        return int(stamp) / 1e9
    except ValueError:
        return None


def stream_lag(reply: str, wall: float) -> float | None:
    """Seconds between the server storing a JetStream message and now (`stored_at`); None when the subject is not
    a JetStream ack subject."""
    stored = stored_at(reply)
    return None if stored is None else max(0.0, wall - stored)


def widest_gap(chunk: Sequence[PulledMsg]) -> float:
    """The widest gap between the stored times of two consecutive messages of `chunk` (0 when fewer than two
    carry one)."""
    widest, before = 0.0, None
    for msg in chunk:
        t = stored_at(msg.reply)
        if t is None:
            continue
        if before is not None and t - before > widest:
            widest = t - before
        before = t
    return widest
