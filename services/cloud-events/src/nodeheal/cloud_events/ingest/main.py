"""`python -m nodeheal.cloud_events ingest`: settings from the environment, logs, serve until SIGTERM."""

from __future__ import annotations

import sys

from aiohttp import web
from pydantic import ValidationError

from nodeheal.cloud_events.ingest.app import build_app
from nodeheal.cloud_events.ingest.settings import IngestSettings
from nodeheal.runtime.logs import configure_logging
from nodeheal.runtime.telemetry import install_log_correlation, setup_tracing


def main() -> int:
    try:
        settings = IngestSettings()
    except ValidationError as exc:
        print(f"nodeheal ingest: bad configuration (NODEHEAL_INGEST_*):\n{exc}", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging("cloud-events-ingest", fmt=settings.log_format, level=settings.log_level)
    setup_tracing(service="ingest", settings=settings.telemetry)
    install_log_correlation()
    try:
        app = build_app(settings, serve_while_starting=True)
    except ValueError as exc:
        print(f"nodeheal ingest: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    web.run_app(app, host=settings.http_host, port=settings.http_port, print=None, access_log=None)
    return 0
