"""Opening a nats-py connection the same way everywhere (reconnect forever, named, optional auth)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
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


log = logging.getLogger("nodeheal.runtime.connect")


class ConnectionLog:
    """What a service's connection says in its log: one warning when it drops, one line when it is back, and one
    line per distinct error while it is away — instead of nats-py's default, a traceback for every failed
    reconnect attempt (every 0.5 s while the server is away, in every process). Its own close says nothing."""

    def __init__(self, name: str, *, client_of: Callable[[], Client | None] | None = None) -> None:
        self.name = name
        self._client: Client | None = None
        self.client_of = client_of  # for a connection someone else opens (faststream's broker)
        self._down = False
        self._said: set[str] = set()

    @property
    def client(self) -> Client | None:
        return self._client if self._client is not None or self.client_of is None else self.client_of()

    @client.setter
    def client(self, value: Client | None) -> None:
        self._client = value

    def options(self) -> dict[str, Any]:
        return {"error_cb": self.on_error, "disconnected_cb": self.on_disconnect, "reconnected_cb": self.on_reconnect}

    async def on_error(self, exc: Exception) -> None:  # nats-py takes coroutine functions
        text = str(exc) or type(exc).__name__
        if self._down and text in self._said:
            return  # each failed reconnect attempt says the same
        self._said.add(text)
        level = logging.INFO if self._down else logging.WARNING
        log.log(level, "NATS connection %s: %s", self.name, text, extra={"connection": self.name, "error": text})

    async def on_disconnect(self) -> None:
        if self.client is not None and self.client.is_closed:
            return  # closed by its owner: nats-py calls this on close too
        if not self._down:
            self._down = True
            log.warning("NATS connection %s disconnected; reconnecting", self.name, extra={"connection": self.name})

    async def on_reconnect(self) -> None:
        if self._down:
            url = self.client.connected_url.netloc if self.client and self.client.connected_url else ""
            log.info("NATS connection %s reconnected %s", self.name, url, extra={"connection": self.name})
        self._down = False
        self._said.clear()


async def connect(settings: NatsSettings, *, name: str, **overrides: Any) -> Client:
    """A connection with `connect_options`; its drops and errors logged by a `ConnectionLog` unless the caller
    passes callbacks of its own (`overrides`)."""
    options = connect_options(settings, name=name)
    said = ConnectionLog(name)
    for key, callback in said.options().items():
        options.setdefault(key, callback)
    options.update(overrides)
    nc = await nats.connect(**options)
    said.client = nc
    return nc
