"""Builds the detector process: the service kit's broker (connection, /healthz /readyz /metrics) and
the detector runtime on the broker's raw nats-py connection. Nothing else.

CLOUD and AUDIT are consumed through the shared consumer runtime (faststream pull subscribers on the
same broker and connection); the probe path keeps its own batch puller (on that connection too),
because faststream's ~200 µs per message is 10x its budget (see docs/detector.md). `/healthz` fails
when any of these loops stopped.
"""

from __future__ import annotations

import asyncio
import sys

from faststream.asgi import AsgiFastStream

from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.settings import SERVICE, DetectorSettings
from nodeheal.runtime.logs import configure_logging
from nodeheal.runtime.service import build_runtime_app, serve
from nodeheal.runtime.telemetry import install_log_correlation, setup_tracing
from nodeheal.runtime.usage import exit_on_args


def build_app(settings: DetectorSettings) -> tuple[AsgiFastStream, list[DetectorRuntime]]:
    return build_runtime_app(
        service=SERVICE,
        nats=settings.nats,
        instance=settings.instance,
        factory=lambda broker, registry: DetectorRuntime(
            settings=settings, nc=broker.connection, registry=registry, broker=broker
        ),
    )


def main() -> None:
    exit_on_args(
        sys.argv[1:],
        prog="python -m nodeheal.detector",
        summary="The detector: per-node state from PROBES and CLOUD → anomalies on ANOMALIES.",
        settings=DetectorSettings,
    )
    settings = DetectorSettings()
    configure_logging(SERVICE, fmt=settings.log_format, level=settings.log_level)
    setup_tracing(service=SERVICE, settings=settings.telemetry)
    install_log_correlation()
    app, _ = build_app(settings)
    asyncio.run(serve(app, host=settings.http_host, port=settings.http_port))
