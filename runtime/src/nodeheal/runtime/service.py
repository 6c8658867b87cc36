"""What every nodeheal service process shares: base settings, the faststream broker, and the HTTP
side (`/healthz`, `/readyz`, `/metrics`) served with uvicorn next to the broker.

`/healthz` answers 200 while the event loop runs and every consumer loop of the service is alive (a
loop that died, or a start hook that raised, answers 503 so Kubernetes restarts the pod; NATS being
away is never a reason: nats-py reconnects by itself); `/readyz` checks the broker connection and
every readiness check the service registered (e.g. its consumer exists).

Each start hook runs inside a `StartWait` (nodeheal.runtime.startup): its JetStream calls wait out a
JetStream that is briefly unavailable for up to `NatsSettings.start_patience_s`; meanwhile `/readyz`
says "waiting for JetStream (...)" and `/healthz` stays 200; after that the start fails and so does
`/healthz`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol, TypeVar

import prometheus_client
import uvicorn
from faststream.asgi import AsgiFastStream, AsgiResponse, Request, get
from faststream.nats import NatsBroker
from faststream.nats.security import NatsCredentials, NatsUserPassword
from faststream.security import BaseSecurity
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from nodeheal.runtime.connect import ConnectionLog, connect_options, tls_context
from nodeheal.runtime.settings import NatsSettings
from nodeheal.runtime.startup import StartWait, start_wait
from nodeheal.runtime.telemetry import TelemetrySettings

ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]
LivenessCheck = Callable[[], tuple[bool, str]]


class ServiceSettings(BaseSettings):
    """Base for each service's settings class (which sets its own `env_prefix`).

    Nested values use `__`: `NODEHEAL_DETECTOR_NATS__URL=nats://nats:4222`. `NATS_URL` is honoured
    as a fallback for the URL.
    """

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    nats: NatsSettings = Field(default_factory=NatsSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    cluster: str = Field(default="default", description="Kubernetes cluster name used in subjects")
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_format: Literal["json", "text", "auto"] = "auto"
    log_level: str = "INFO"
    instance: str = Field(default_factory=socket.gethostname, description="replica identity (pod name)")

    def model_post_init(self, __context: Any) -> None:
        import os

        env_url = os.environ.get("NATS_URL")
        if env_url and "url" not in self.nats.model_fields_set:
            object.__setattr__(self, "nats", self.nats.model_copy(update={"url": env_url}))


def broker_security(settings: NatsSettings) -> BaseSecurity | None:
    """faststream's form of the connection's authentication and TLS: a `.creds` file (JWT + NKey), or
    user/password, or TLS alone; each with the CA of `tls_ca_file` when set."""
    ctx = tls_context(settings)
    if settings.creds_file:
        return NatsCredentials(settings.creds_file, ssl_context=ctx)
    if settings.user:
        return NatsUserPassword(settings.user, settings.password or "", ssl_context=ctx)
    if ctx is not None:
        return BaseSecurity(ssl_context=ctx)
    return None


def make_broker(settings: NatsSettings, *, name: str, **kwargs: Any) -> NatsBroker:
    """The service's faststream broker with the same connection options as `connect()` (reconnect
    forever, inbox prefix, credentials, TLS)."""
    options = connect_options(settings, name=name)
    servers = options.pop("servers")
    for key in ("user_credentials", "user", "password", "tls"):
        options.pop(key, None)
    kwargs.setdefault("graceful_timeout", 10.0)
    said = ConnectionLog(name)  # its drops in two log lines, not a traceback per reconnect attempt
    for key, callback in said.options().items():
        kwargs.setdefault(key, callback)
    broker = NatsBroker(servers, security=broker_security(settings), **options, **kwargs)
    said.client_of = lambda: broker._connection  # faststream keeps it private; closed by its stop: no drop to say
    return broker


class PullLoopNoise(logging.Filter):
    """faststream's pull loop suppresses `nats.errors.TimeoutError` around `fetch()`, but nats-py raises
    the builtin `TimeoutError` (its base class) when a fetch finds nothing, so an idle consumer's loop
    ends with it and faststream's task supervisor logs "raised an exception, retrying" with a traceback
    (once per process) and starts the loop again — nothing failed, nothing was lost. That record and the
    supervisor's "callback for Task-N is being executed" (at every loop end) go to DEBUG; a loop ending
    with any other exception is still logged as the error it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "is being executed..." in message and message.startswith("callback for "):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        elif "raised an exception, retrying" in message and record.exc_info:
            exc = record.exc_info[1]
            if isinstance(exc, TimeoutError):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                record.msg, record.args = "pull loop: an idle fetch timed out; the loop starts again", None
                record.exc_info, record.exc_text = None, None
        # a record demoted below the logger's level is dropped here (the level was checked before us)
        return record.levelno >= logging.getLogger(record.name).getEffectiveLevel()


_PULL_LOOP_NOISE = PullLoopNoise()


def consumer_broker(nats: NatsSettings, *, service: str, name: str, graceful_timeout_s: float = 10.0) -> NatsBroker:
    """A service's faststream broker for consumers: faststream's own access log ("Received", "Processed"
    per message) goes through our logging at DEBUG (per-message INFO lines would be most of a busy
    service's log), and so does its pull loop's idle-fetch noise (`PullLoopNoise`)."""
    logger = logging.getLogger(f"nodeheal.{service}.consumers")
    if _PULL_LOOP_NOISE not in logger.filters:
        logger.addFilter(_PULL_LOOP_NOISE)
    return make_broker(
        nats,
        name=name,
        logger=logger,
        log_level=logging.DEBUG,
        graceful_timeout=graceful_timeout_s,
    )


def build_asgi(
    broker: NatsBroker,
    *,
    readiness: Sequence[ReadinessCheck] = (),
    liveness: Sequence[LivenessCheck] = (),
    registry: prometheus_client.CollectorRegistry | None = None,
    on_startup: Sequence[Callable[..., Any]] = (),
    after_startup: Sequence[Callable[..., Any]] = (),
    on_shutdown: Sequence[Callable[..., Any]] = (),
    asyncapi: Any = None,
    service: str = "service",
    start_patience_s: float = 120.0,
) -> AsgiFastStream:
    registry = registry or prometheus_client.REGISTRY
    failed: list[str] = []  # a start hook that raised: the process serves HTTP but consumes nothing
    waits: list[StartWait] = []  # one per start hook: what it waits for while JetStream is unavailable

    def guarded(hook: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def start() -> Any:
            wait = StartWait(service=service, patience_s=start_patience_s)
            waits.append(wait)
            try:
                with start_wait(wait):
                    return await hook()
            except Exception as exc:
                failed.append(f"start failed ({type(exc).__name__}: {str(exc)[:200]}); the process must be restarted")
                logging.getLogger("nodeheal.runtime.service").exception("start failed; /healthz fails")
                raise

        return start

    @get
    async def healthz(request: Request) -> AsgiResponse:
        problems = [*failed, *(detail for ok, detail in (check() for check in liveness) if not ok)]
        if problems:
            return AsgiResponse("\n".join(problems).encode(), status_code=503)
        return AsgiResponse(b"ok", status_code=200)

    @get
    async def readyz(request: Request) -> AsgiResponse:
        problems = [f"{service}: {wait.waiting}" for wait in waits if wait.waiting]
        if not await broker.ping(timeout=2.0):
            problems.append("broker: not connected to NATS")
        for check in readiness:
            try:
                ok, detail = await check()
            except Exception as exc:
                ok, detail = False, f"{check.__name__}: {exc}"
            if not ok:
                problems.append(detail)
        if problems:
            return AsgiResponse("\n".join(problems).encode(), status_code=503)
        return AsgiResponse(b"ready", status_code=200)

    return AsgiFastStream(
        broker,
        asgi_routes=[
            ("/healthz", healthz),
            ("/readyz", readyz),
            ("/metrics", prometheus_client.make_asgi_app(registry)),
        ],
        on_startup=on_startup,
        after_startup=[guarded(hook) for hook in after_startup],
        on_shutdown=on_shutdown,
        specification=asyncapi,
        asyncapi_path="/docs/asyncapi" if asyncapi is not None else None,
    )


async def serve(app: AsgiFastStream, *, host: str, port: int) -> None:
    """Run the ASGI app (broker + HTTP) until SIGTERM/SIGINT."""
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="warning", access_log=False)
    await uvicorn.Server(config).serve()


class RawRuntime(Protocol):
    """A service whose consumers run on the broker's raw nats-py connection (detector, diagnoser)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def readiness(self) -> tuple[bool, str]: ...

    def liveness(self) -> tuple[bool, str]: ...


RuntimeT = TypeVar("RuntimeT", bound=RawRuntime)


def build_runtime_app(
    *,
    service: str,
    nats: NatsSettings,
    instance: str,
    factory: Callable[[NatsBroker, prometheus_client.CollectorRegistry], RuntimeT],
) -> tuple[AsgiFastStream, list[RuntimeT]]:
    """The process shell for a consumer service: the kit's broker (connection, /healthz /readyz
    /metrics) and the service runtime, started once the connection is up and stopped before it closes.
    The runtime gets the broker itself: its consumers (nodeheal.runtime.consumer) and its own nats-py
    work (`broker.connection`) share the process's one NATS connection. The returned list holds the
    runtime once it has started (tests reach it there)."""
    broker = consumer_broker(nats, service=service, name=f"nodeheal-{service}-{instance}")
    registry = prometheus_client.CollectorRegistry()
    holder: list[RuntimeT] = []

    async def started() -> None:
        runtime = factory(broker, registry)
        holder.append(runtime)
        await runtime.start()

    async def stopping() -> None:
        for runtime in holder:
            await runtime.stop()

    async def consumers_bound() -> tuple[bool, str]:
        if not holder:
            return False, f"{service}: not started yet"
        return await holder[0].readiness()

    def loops_alive() -> tuple[bool, str]:
        return holder[0].liveness() if holder else (True, "ok")

    app = build_asgi(
        broker,
        readiness=[consumers_bound],
        liveness=[loops_alive],
        registry=registry,
        after_startup=[started],
        on_shutdown=[stopping],
        service=service,
        start_patience_s=nats.start_patience_s,
    )
    return app, holder
