"""Builds the diagnoser process: the service kit's broker (connection, /healthz /readyz /metrics) and
the diagnoser runtime on that broker (its consumers) and its raw nats-py connection: one NATS connection.
Nothing else.

The four consumers (anomalies, cloud events, audit, crash reports) run on the shared consumer
runtime (faststream pull subscribers, batches, explicit acks, one message at a time per stream); the
ticker shares one lock with them.
"""

from __future__ import annotations

import asyncio
import sys

from faststream.asgi import AsgiFastStream

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import SERVICE, DiagnoserSettings
from nodeheal.runtime.logs import configure_logging
from nodeheal.runtime.service import build_runtime_app, serve
from nodeheal.runtime.telemetry import install_log_correlation, setup_tracing
from nodeheal.runtime.usage import exit_on_args


def build_app(settings: DiagnoserSettings) -> tuple[AsgiFastStream, list[DiagnoserRuntime]]:
    return build_runtime_app(
        service=SERVICE,
        nats=settings.nats,
        instance=settings.instance,
        factory=lambda broker, registry: DiagnoserRuntime(
            settings=settings, nc=broker.connection, registry=registry, broker=broker
        ),
    )


def main() -> None:
    exit_on_args(
        sys.argv[1:],
        prog="python -m nodeheal.diagnoser",
        summary="The diagnoser: anomalies, cloud events and kernel logs → diagnoses on DIAGNOSES.",
        settings=DiagnoserSettings,
    )
    settings = DiagnoserSettings()
    configure_logging(SERVICE, fmt=settings.log_format, level=settings.log_level)
    setup_tracing(service=SERVICE, settings=settings.telemetry)
    install_log_correlation()
    app, _ = build_app(settings)
    asyncio.run(serve(app, host=settings.http_host, port=settings.http_port))
