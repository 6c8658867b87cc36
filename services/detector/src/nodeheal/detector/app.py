"""Builds the detector process: the service kit's broker (connection, /healthz /readyz /metrics) and
the detector runtime on the broker's raw nats-py connection. Nothing else.

faststream carries no subscriber here: its ~200 µs per message is 10x the probe path's budget, so
the probe, CLOUD and AUDIT consumers are raw nats-py (see docs/detector.md); faststream gives the
process shell (lifecycle, ASGI health and metrics routes).
"""

from __future__ import annotations

import asyncio

import prometheus_client
from faststream.asgi import AsgiFastStream

from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.settings import SERVICE, DetectorSettings
from nodeheal.runtime.logs import configure_logging
from nodeheal.runtime.service import build_asgi, make_broker, serve
from nodeheal.runtime.telemetry import install_log_correlation, setup_tracing


def build_app(settings: DetectorSettings) -> tuple[AsgiFastStream, list[DetectorRuntime]]:
    broker = make_broker(settings.nats, name=f"nodeheal-{SERVICE}-{settings.instance}")
    registry = prometheus_client.CollectorRegistry()
    holder: list[DetectorRuntime] = []

    async def started() -> None:
        runtime = DetectorRuntime(settings=settings, nc=broker.connection, registry=registry)
        holder.append(runtime)
        await runtime.start()

    async def stopping() -> None:
        for runtime in holder:
            await runtime.stop()

    async def consumers_bound() -> tuple[bool, str]:
        if not holder:
            return False, "detector: not started yet"
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
    settings = DetectorSettings()
    configure_logging(SERVICE, fmt=settings.log_format, level=settings.log_level)
    setup_tracing(service=SERVICE, settings=settings.telemetry)
    install_log_correlation()
    app, _ = build_app(settings)
    asyncio.run(serve(app, host=settings.http_host, port=settings.http_port))
