"""Opening a nats-py connection the same way everywhere (reconnect forever, named, optional auth)."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import nats
from nats.aio.client import Client

from nodeheal.runtime.settings import NatsSettings


def connect_options(settings: NatsSettings, *, name: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        "allow_reconnect": True,
        "inbox_prefix": settings.inbox_prefix,
    }
    if settings.creds_file:
        options["user_credentials"] = settings.creds_file
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password or ""
    if settings.tls_ca_file:
        options["tls"] = tls_context(settings)
        quiet_tls_eof_warning()
    return options


class _TlsEofWarning(logging.Filter):
    """asyncio's "returning true from eof_received() has no effect when using ssl": logged once per TLS
    connection whose server goes away (nats-py's protocol asks to keep the transport open). It tells an
    operator nothing the reconnect does not (a chaos demo printed it 303 times); every other asyncio line
    passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


_TLS_EOF_FILTER = _TlsEofWarning()


def quiet_tls_eof_warning() -> None:
    """Drop that one asyncio warning (idempotent)."""
    logger = logging.getLogger("asyncio")
    if _TLS_EOF_FILTER not in logger.filters:
        logger.addFilter(_TLS_EOF_FILTER)


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """A client TLS context verifying the server against `tls_ca_file` (None without one)."""
    if not settings.tls_ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=settings.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        msg = (
            f"NATS CA file {settings.tls_ca_file!r} cannot be loaded ({exc}):"
            " point tls_ca_file (NATS_CA for the CLI) at the PEM bundle that signed the server's certificate"
        )
        raise ValueError(msg) from exc


async def connect(settings: NatsSettings, *, name: str, **overrides: Any) -> Client:
    options = connect_options(settings, name=name)
    options.update(overrides)
    return await nats.connect(**options)
