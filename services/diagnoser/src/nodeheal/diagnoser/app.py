"""Builds the diagnoser process: the service kit's broker (connection, /healthz /readyz /metrics) and
the diagnoser runtime on the broker's raw nats-py connection. Nothing else.

The consumers are raw nats-py pull subscriptions (batches, explicit acks) so the same code path serves
the three input streams and the ticker shares one lock with them; faststream gives the process shell.
"""

from __future__ import annotations

import asyncio

import prometheus_client
from faststream.asgi import AsgiFastStream

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import SERVICE, DiagnoserSettings
from nodeheal.runtime.logs import configure_logging
from nodeheal.runtime.service import build_asgi, make_broker, serve
from nodeheal.runtime.telemetry import install_log_correlation, setup_tracing


def build_app(settings: DiagnoserSettings) -> tuple[AsgiFastStream, list[DiagnoserRuntime]]:
    broker = make_broker(settings.nats, name=f"nodeheal-{SERVICE}-{settings.instance}")
    registry = prometheus_client.CollectorRegistry()
    holder: list[DiagnoserRuntime] = []

    async def started() -> None:
        runtime = DiagnoserRuntime(settings=settings, nc=broker.connection, registry=registry)
        holder.append(runtime)
        await runtime.start()

    async def stopping() -> None:
        for runtime in holder:
            await runtime.stop()

    async def consumers_bound() -> tuple[bool, str]:
        if not holder:
            return False, "diagnoser: not started yet"
        return await holder[0].readiness()

    app = build_asgi(
        broker,
        readiness=[consumers_bound],
        registry=registry,
        after_startup=[started],
        on_shutdown=[stopping],
    )
    return app, holder


def main() -> None:
    settings = DiagnoserSettings()
    configure_logging(SERVICE, fmt=settings.log_format, level=settings.log_level)
    setup_tracing(service=SERVICE, settings=settings.telemetry)
    install_log_correlation()
    app, _ = build_app(settings)
    asyncio.run(serve(app, host=settings.http_host, port=settings.http_port))
