"""Builds the remediator process: the service (NATS consumer, views, runner) and the HTTP side
(/healthz /readyz /metrics) through the runtime's service kit. Nothing else lives here."""

from __future__ import annotations

import sys

from faststream.asgi import AsgiFastStream

from nodeheal.remediator.handlers import RemediatorService
from nodeheal.remediator.settings import RemediatorSettings
from nodeheal.runtime.logs import configure_logging
from nodeheal.runtime.service import build_asgi, consumer_broker
from nodeheal.runtime.telemetry import install_log_correlation, setup_tracing
from nodeheal.runtime.usage import exit_on_args


def build_app(settings: RemediatorSettings | None = None) -> tuple[AsgiFastStream, RemediatorService]:
    settings = settings or RemediatorSettings()
    broker = consumer_broker(settings.nats, service="remediator", name=f"nodeheal-remediator-{settings.instance}")
    service = RemediatorService(settings, broker=broker)

    async def started() -> None:
        # one connection per process: the service and its consumers run on the broker's (which /readyz pings)
        await service.start(broker.connection)

    app = build_asgi(
        broker,
        readiness=[service.readiness],
        liveness=[service.liveness],
        after_startup=[started],
        on_shutdown=[service.stop],
        service="remediator",
        start_patience_s=settings.nats.start_patience_s,
    )
    return app, service


def main() -> None:
    exit_on_args(
        sys.argv[1:],
        prog="python -m nodeheal.remediator",
        summary="One remediator replica: diagnoses → policy-checked, audited actions.",
        settings=RemediatorSettings,
    )
    from nodeheal.runtime.service import serve

    settings = RemediatorSettings()
    configure_logging("remediator", fmt=settings.log_format, level=settings.log_level)
    setup_tracing(service="remediator", settings=settings.telemetry)
    install_log_correlation()
    app, _ = build_app(settings)
    import asyncio

    asyncio.run(serve(app, host=settings.http_host, port=settings.http_port))
