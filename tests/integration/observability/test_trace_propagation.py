"""Trace context through real NATS headers (raw nats-py and JetStream), the sampler setting, and the
OTLP/HTTP exporter against a local HTTP endpoint."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.runtime.telemetry import (
    TelemetrySettings,
    consume_span,
    current_trace_id,
    publish_span,
    setup_tracing,
    start_incident,
    trace_id_from_headers,
)
from nodeheal.schemas.subjects import anomaly_subject, audit_subject, diagnosis_subject

pytestmark = pytest.mark.nats


def provider(ratio: float) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = setup_tracing(
        service="test", settings=TelemetrySettings(sample_ratio=ratio), exporter=exporter, set_global=False
    )
    return tp, exporter


class RawBody:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def to_json(self) -> bytes:
        return self.body


async def next_message(nc: Client, subject: str) -> tuple[asyncio.Future[Msg], object]:
    future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        if not future.done():
            future.set_result(msg)

    sub = await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    return future, sub


async def test_one_incident_keeps_one_trace_id_across_four_hops_through_jetstream(
    nc: Client, topology_ready: NatsSettings
) -> None:
    """ingest/detector → diagnoser → remediator → audit record, each hop a separate "service"
    (its own tracer provider), each message really stored in and read back from its stream."""
    prefix = topology_ready.prefix
    js = nc.jetstream()
    detector, det_spans = provider(1.0)
    diagnoser, diag_spans = provider(0.0)  # follows the parent's decision, not its own ratio
    remediator, rem_spans = provider(0.0)

    anomaly_subj = anomaly_subject("c1", "n1", prefix=prefix)
    with start_incident(detector.get_tracer("detector"), name="anomaly fired") as root:
        origin = f"{root.get_span_context().trace_id:032x}"
        with publish_span(detector.get_tracer("detector"), subject=anomaly_subj) as headers:
            await publish_model(js, anomaly_subj, RawBody(b"{}"), msg_id="a-1", headers=headers)

    anomalies = await js.pull_subscribe(
        anomaly_subj,
        durable=None,
        stream=topology_ready.topology().stream(f"{topology_ready.stream_prefix}ANOMALIES").name,
    )
    (msg,) = await anomalies.fetch(1, timeout=5)
    assert trace_id_from_headers(msg.headers) == origin
    diagnosis_subj = diagnosis_subject("c1", "n1", prefix=prefix)
    diag_tracer = diagnoser.get_tracer("diagnoser")
    with (
        consume_span(diag_tracer, subject=msg.subject, headers=msg.headers),
        publish_span(diag_tracer, subject=diagnosis_subj) as headers,
    ):
        await publish_model(js, diagnosis_subj, RawBody(b"{}"), msg_id="d-1", headers=headers)
    await msg.ack()

    diagnoses = await js.pull_subscribe(
        diagnosis_subj,
        durable=None,
        stream=topology_ready.topology().stream(f"{topology_ready.stream_prefix}DIAGNOSES").name,
    )
    (msg,) = await diagnoses.fetch(1, timeout=5)
    audit_subj = audit_subject("c1", "n1", prefix=prefix)
    with consume_span(remediator.get_tracer("remediator"), subject=msg.subject, headers=msg.headers) as span:
        assert span.is_recording()  # sampled because the incident was, although this service's ratio is 0
        record = b'{"trace_id": "%s"}' % current_trace_id().encode()  # type: ignore[union-attr]
        with publish_span(remediator.get_tracer("remediator"), subject=audit_subj) as headers:
            await publish_model(js, audit_subj, RawBody(record), msg_id="r-1", headers=headers)
    await msg.ack()

    audit = await js.pull_subscribe(
        audit_subj, durable=None, stream=topology_ready.topology().stream(f"{topology_ready.stream_prefix}AUDIT").name
    )
    (msg,) = await audit.fetch(1, timeout=5)
    assert msg.data == b'{"trace_id": "%s"}' % origin.encode()
    assert trace_id_from_headers(msg.headers) == origin

    for tp in (detector, diagnoser, remediator):
        tp.force_flush()
    spans = [*det_spans.get_finished_spans(), *diag_spans.get_finished_spans(), *rem_spans.get_finished_spans()]
    assert {f"{s.context.trace_id:032x}" for s in spans} == {origin}
    kinds = [s.kind for s in spans]
    assert kinds.count(SpanKind.CONSUMER) == 2 and kinds.count(SpanKind.PRODUCER) == 3
    # every consumer span's parent is the producer span that published the message it handled
    producers = {s.context.span_id for s in spans if s.kind == SpanKind.PRODUCER}
    assert all(s.parent is not None and s.parent.span_id in producers for s in spans if s.kind == SpanKind.CONSUMER)


async def test_an_unsampled_incident_stays_unsampled_downstream(nc: Client, nats_settings: NatsSettings) -> None:
    origin_tp, origin_spans = provider(0.0)
    downstream_tp, downstream_spans = provider(1.0)
    subject = f"{nats_settings.prefix}.raw.unsampled"
    future, sub = await next_message(nc, subject)
    with start_incident(origin_tp.get_tracer("o"), name="incident") as root:
        assert not root.is_recording()
        with publish_span(origin_tp.get_tracer("o"), subject=subject) as headers:
            await nc.publish(subject, b"x", headers=headers)
    msg = await asyncio.wait_for(future, timeout=5)
    assert msg.headers is not None
    assert int(msg.headers["traceparent"].rsplit("-", 1)[1], 16) & 1 == 0  # the sampled flag is off
    with consume_span(downstream_tp.get_tracer("d"), subject=subject, headers=msg.headers) as span:
        assert not span.is_recording()
        assert current_trace_id() == trace_id_from_headers(msg.headers)  # still correlatable in logs
    origin_tp.force_flush()
    downstream_tp.force_flush()
    assert origin_spans.get_finished_spans() == () and downstream_spans.get_finished_spans() == ()
    await sub.unsubscribe()  # type: ignore[attr-defined]


def test_sample_ratio_comes_from_settings_then_from_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.0")
    tp, _ = provider(0.0)  # explicit setting wins
    with start_incident(tp.get_tracer("t"), name="x") as span:
        assert not span.is_recording()
    env_tp = setup_tracing(service="t", exporter=InMemorySpanExporter(), set_global=False)
    with start_incident(env_tp.get_tracer("t"), name="x") as span:
        assert span.is_recording()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "lots")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG='lots'"):
        setup_tracing(service="t", set_global=False)


@pytest.fixture
def otlp_collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(b"")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def test_spans_are_exported_over_otlp_http(otlp_collector: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    endpoint, received = otlp_collector
    tp = setup_tracing(
        service="remediator", settings=TelemetrySettings(otlp_endpoint=endpoint, sample_ratio=1.0), set_global=False
    )
    with start_incident(tp.get_tracer("t"), name="repair") as span:
        trace_id = span.get_span_context().trace_id
    assert tp.force_flush(timeout_millis=10_000)
    (path, content_type, body) = received[0]
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    exported = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [int.from_bytes(s.trace_id, "big") for s in exported] == [trace_id]
    attributes = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}
    assert attributes["service.name"] == "nodeheal-remediator"
    tp.shutdown()
