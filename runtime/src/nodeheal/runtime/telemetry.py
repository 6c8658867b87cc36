"""OpenTelemetry for nodeheal: one trace per incident, carried in NATS headers (W3C `traceparent`),
from where the incident starts through the diagnoser and the remediator to the audit record's `trace_id`.

Spans are made around raw nats-py work (`consume_span`, `publish_span`, `start_incident`); probes are
not traced. How the services use it, and the sampling rules: docs/observability.md. Nothing here talks
to NATS; export never blocks a handler (BatchSpanProcessor).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from pydantic import BaseModel, Field

log = logging.getLogger("nodeheal.runtime.telemetry")

TRACEPARENT = "traceparent"
_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class TelemetrySettings(BaseModel):
    """Nest as `telemetry: TelemetrySettings` in a service's settings: `NODEHEAL_<SVC>_TELEMETRY__SAMPLE_RATIO`.

    Unset fields fall back to the standard variables the manifests set (`OTEL_EXPORTER_OTLP_ENDPOINT`,
    `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SERVICE_NAME`), read when `setup_tracing` runs.
    """

    enabled: bool = Field(default=True, description="false: no spans at all (a no-op tracer)")
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP collector base URL, e.g. http://otel-collector:4318; unset: no export"
    )
    sample_ratio: float | None = Field(
        default=None, ge=0.0, le=1.0, description="share of incidents traced at their start (default 0.1)"
    )
    export_timeout_s: float = Field(default=10.0, gt=0)
    max_queue_size: int = Field(default=8192, ge=1, description="spans buffered for export; more are dropped")


DEFAULT_SAMPLE_RATIO = 0.1


def _ratio(settings: TelemetrySettings) -> float:
    if settings.sample_ratio is not None:
        return settings.sample_ratio
    raw = os.environ.get("OTEL_TRACES_SAMPLER_ARG")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            msg = f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a number: set a share between 0 and 1, e.g. 0.1"
            raise ValueError(msg) from None
        if not 0.0 <= value <= 1.0:
            msg = f"OTEL_TRACES_SAMPLER_ARG={raw!r} is outside 0..1: set a share, e.g. 0.1"
            raise ValueError(msg)
        return value
    return DEFAULT_SAMPLE_RATIO


def make_sampler(ratio: float) -> Sampler:
    """One decision where a trace starts; children always follow their parent's decision."""
    return ParentBased(root=TraceIdRatioBased(ratio))


def setup_tracing(
    *,
    service: str,
    settings: TelemetrySettings | None = None,
    exporter: SpanExporter | None = None,
    set_global: bool = True,
) -> TracerProvider:
    """Build the tracer provider of one service process (and make it the global one unless told not to).

    `exporter` overrides the OTLP exporter (tests pass an in-memory one)."""
    settings = settings or TelemetrySettings()
    ratio = _ratio(settings) if settings.enabled else 0.0
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or f"nodeheal-{service}",
            "service.namespace": "nodeheal",
        }
    )
    provider = TracerProvider(resource=resource, sampler=make_sampler(ratio))
    if exporter is None and settings.enabled:
        endpoint = settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces", timeout=settings.export_timeout_s)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=settings.max_queue_size))
    if set_global:
        trace.set_tracer_provider(provider)
    log.info(
        "tracing set up",
        extra={"sample_ratio": ratio, "exporter": type(exporter).__name__ if exporter else None},
    )
    return provider


# -- propagation through NATS headers ------------------------------------------------------------


def inject_headers(
    headers: MutableMapping[str, str] | None = None, *, context: otel_context.Context | None = None
) -> dict[str, str]:
    """Return `headers` (a copy) with `traceparent` (+ `tracestate`, `baggage`) of the current span,
    or of `context`. Without an active span nothing is added."""
    out: dict[str, str] = dict(headers or {})
    _PROPAGATOR.inject(out, context=context)
    return out


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context carried by a message's headers (an empty context when there is none)."""
    return _PROPAGATOR.extract(dict(headers or {}))


def trace_id_from_headers(headers: Mapping[str, str] | None) -> str | None:
    """32 lowercase hex digits from a `traceparent` header, or None."""
    value = (headers or {}).get(TRACEPARENT)
    if not value:
        return None
    match = _TRACEPARENT_RE.match(value.strip())
    if not match or match.group(1) == "0" * 32:
        return None
    return match.group(1)


def format_trace_id(trace_id: int) -> str:
    return f"{trace_id:032x}"


def current_trace_id() -> str | None:
    """The trace id of the current span (sampled or not), for `RemediationRecord.trace_id` and logs."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format_trace_id(span_context.trace_id)


# -- spans around raw nats-py work ------------------------------------------------------------------


def _messaging(subject: str, operation: str, extra: Attributes) -> dict[str, object]:
    attributes: dict[str, object] = {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
    }
    if extra:
        attributes.update(extra)
    return attributes


@contextmanager
def consume_span(
    tracer: Tracer,
    *,
    subject: str,
    headers: Mapping[str, str] | None,
    name: str | None = None,
    attributes: Attributes = None,
) -> Iterator[Span]:
    """Continue the trace a message carries (or start one if it carries none) while handling it."""
    parent = extract_context(headers)
    with tracer.start_as_current_span(
        name or f"{subject} process",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=_messaging(subject, "process", attributes),  # type: ignore[arg-type]
    ) as span:
        yield span


@contextmanager
def publish_span(
    tracer: Tracer,
    *,
    subject: str,
    headers: Mapping[str, str] | None = None,
    attributes: Attributes = None,
) -> Iterator[dict[str, str]]:
    """A PRODUCER span for one publish; yields the headers to send (yours plus `traceparent`)."""
    with tracer.start_as_current_span(
        f"{subject} publish",
        kind=SpanKind.PRODUCER,
        attributes=_messaging(subject, "publish", attributes),  # type: ignore[arg-type]
    ):
        yield inject_headers(dict(headers or {}))


@contextmanager
def start_incident(tracer: Tracer, *, name: str, attributes: Attributes = None) -> Iterator[Span]:
    """Start a new trace (a root span, whatever is current): where an incident begins."""
    with tracer.start_as_current_span(
        name, context=otel_context.Context(), kind=SpanKind.INTERNAL, attributes=attributes
    ) as span:
        yield span


# -- logs ---------------------------------------------------------------------------------------------


class TraceContextLogFilter(logging.Filter):
    """Adds `trace_id` and `span_id` to every record logged inside a span (the JSON formatter prints them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format_trace_id(span_context.trace_id)
            record.span_id = f"{span_context.span_id:016x}"
        return True


def install_log_correlation() -> None:
    """Put the trace id on log lines: call after `configure_logging` (it adds the filter to the root handlers)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, TraceContextLogFilter) for f in handler.filters):
            handler.addFilter(TraceContextLogFilter())
