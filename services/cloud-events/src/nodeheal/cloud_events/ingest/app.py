"""Builds the ingest process: the aiohttp application (event endpoints, /healthz, /readyz, /status,
/metrics), the NATS connection, the ledger seeded from CLOUD, and the configured pollers.

Readiness is what the pod can serve, its push endpoints: NATS connected and the ledger seeded. A poller's
failed round (the API's flow control, a region the RAM policy does not cover, a timeout) is not: it is said on
`/status`, in `nodeheal_ingest_poller_failing` / `nodeheal_ingest_polls_total{outcome="error"}` and in a log
line. Before, it made `/readyz` 503 until a round succeeded, and as every replica polls the same account they
all left the Service together, refusing the CloudMonitor / EventBridge pushes (spot notices lost).

aiohttp rather than the faststream ASGI kit: this service consumes nothing, it only publishes
(raw nats-py `publish_model`), and it needs streaming body limits and per-request status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import prometheus_client
from aiohttp import web
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from nodeheal.cloud_events.ingest.handlers import EventEndpoint
from nodeheal.cloud_events.ingest.pollers import (
    AlibabaHistoryPoller,
    AwsScheduledEventsPoller,
    AzureScheduledEventsPoller,
    GceMaintenancePoller,
    Poller,
)
from nodeheal.cloud_events.ingest.settings import IngestSettings
from nodeheal.cloud_events.ingest.sink import CloudEventSink, InventoryResolver, seed_ledger
from nodeheal.cloud_events.normalize import TransitionLedger
from nodeheal.runtime.connect import connect
from nodeheal.runtime.startup import StartWait, patiently, start_wait
from nodeheal.schemas.subjects import cloud_subject

log = logging.getLogger("nodeheal.cloud_events.ingest")


@dataclass
class IngestRuntime:
    """What runs while the app is up (tests reach into it to drive pollers and read state)."""

    settings: IngestSettings
    nc: Client | None = None
    sink: CloudEventSink | None = None
    pollers: list[Poller] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    seeded: int = 0
    wait: StartWait | None = None  # the start's wait for JetStream (readiness says what it waits for)
    starting: asyncio.Task[None] | None = None  # the start, when it runs behind the HTTP server
    start_failed: str | None = None  # why the start gave up: /healthz fails, the pod is restarted


RUNTIME: web.AppKey[IngestRuntime] = web.AppKey("runtime", IngestRuntime)


def build_pollers(settings: IngestSettings, sink: CloudEventSink) -> list[Poller]:
    pollers: list[Poller] = []
    if settings.alibaba.enabled:
        pollers.append(AlibabaHistoryPoller(sink=sink, cluster=settings.cluster, settings=settings.alibaba))
    if settings.azure.enabled:
        pollers.append(AzureScheduledEventsPoller(sink=sink, cluster=settings.cluster, settings=settings.azure))
    if settings.aws.enabled:
        pollers.append(AwsScheduledEventsPoller(sink=sink, cluster=settings.cluster, settings=settings.aws))
    if settings.gce.enabled:
        pollers.append(GceMaintenancePoller(sink=sink, cluster=settings.cluster, settings=settings.gce))
    return pollers


def build_app(
    settings: IngestSettings, *, start_pollers: bool = True, serve_while_starting: bool = False
) -> web.Application:
    """`serve_while_starting` (the process, `main`): HTTP answers while the start waits for JetStream —
    `/healthz` 200 (alive), `/readyz` 503 saying what it waits for, event posts 503 — and `/healthz` fails
    once the start gives up. Without it (tests' clients) the app's startup returns when the start is done."""
    problem = settings.auth_problem()
    if problem:
        raise ValueError(problem)
    runtime = IngestRuntime(settings=settings)
    # The body limit is enforced by EventEndpoint (413 + DLQ); aiohttp's own limit sits above it.
    app = web.Application(client_max_size=settings.max_body_bytes * 4)
    app[RUNTIME] = runtime
    endpoint = EventEndpoint(settings=settings, sink=lambda: runtime.sink)
    app.router.add_post("/v1/events/{source}", endpoint.handle)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)

    async def start() -> None:
        runtime.wait = StartWait(service=settings.service_name, patience_s=settings.nats.start_patience_s)
        try:
            with start_wait(runtime.wait):
                await _start(runtime, start_pollers=start_pollers)
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc)[:200]}"
            runtime.start_failed = f"start failed ({why}); the process must be restarted"
            log.exception("start failed; /healthz fails")
            if not serve_while_starting:
                raise

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if serve_while_starting:
            runtime.starting = asyncio.create_task(start(), name="ingest-start")
        else:
            await start()
        yield
        if runtime.starting is not None and not runtime.starting.done():
            runtime.starting.cancel()
        if runtime.starting is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runtime.starting
        await _stop(runtime)

    app.cleanup_ctx.append(lifecycle)
    return app


async def _start(runtime: IngestRuntime, *, start_pollers: bool) -> None:
    s = runtime.settings
    # each NATS / JetStream call of the start waits out a briefly absent server or JetStream (`patiently`)
    nats = s.nats_settings()
    runtime.nc = await patiently("connection to NATS", lambda: connect(nats, name=f"{s.service_name}:{s.instance}"))
    js = runtime.nc.jetstream()
    topo = s.nats.topology()
    kv: KeyValue | None = None
    bucket = topo.bucket(f"{s.nats.bucket_prefix}-inventory").name
    if s.inbox_per_node:
        # the per-node credential reads no inventory: its metadata poller names its node itself
        log.info("node-local ingest with its node's own credential: no inventory read")
    else:
        try:
            kv = await patiently(f"bucket {bucket}", lambda: js.key_value(bucket))
        except BucketNotFoundError:
            log.warning("inventory bucket missing: every event is published under its instance id (run streams apply)")
    stream = topo.stream(f"{s.nats.stream_prefix}CLOUD").name

    ledger = TransitionLedger(max_entities=s.ledger_max_entities)
    sink = CloudEventSink(
        js=js,
        prefix=s.nats.prefix,
        cluster=s.cluster,
        service=s.service_name,
        inventory=InventoryResolver(kv, ttl_s=s.inventory_cache_ttl_s),
        ledger=ledger,
        publish_timeout_s=s.nats.publish_timeout_s,
    )
    # A node-local pod (scope node: a DaemonSet's, one per node) reads only its node's subjects and keeps no
    # unmapped events: the fleet's history, and sweeping the events published under an instance id, are the
    # central ingest's. Before, every node's pod read all of CLOUD at start and swept and re-published every
    # unmapped event of the fleet each minute (50,000 nodes: 50,000 copies of each remap).
    node_scoped = s.node_scoped()
    subjects = [cloud_subject(s.cluster, n, prefix=s.nats.prefix) for n in s.local_nodes()] if node_scoped else None
    # one read to the stream's end; a JetStream away mid-read is waited out and the read resumes
    runtime.seeded = await seed_ledger(
        js,
        stream=stream,
        prefix=s.nats.prefix,
        ledger=ledger,
        lookback=timedelta(seconds=s.ledger_seed_lookback_s),
        unmapped=None if node_scoped else sink.keep_unmapped,
        subjects=subjects,
    )
    runtime.sink = sink
    runtime.pollers = build_pollers(s, runtime.sink)
    if start_pollers:
        runtime.tasks = [asyncio.create_task(p.run(runtime.stop), name=f"poller-{p.name}") for p in runtime.pollers]
    if s.unmapped_recheck_s > 0 and not node_scoped:
        runtime.tasks.append(
            asyncio.create_task(_recheck_unmapped(sink, runtime.stop, s.unmapped_recheck_s), name="unmapped-recheck")
        )
    log.info(
        "ingest started",
        extra={
            "seeded_transitions": runtime.seeded,
            "pollers": [p.name for p in runtime.pollers],
            "stream": stream,
            "scope": f"node {', '.join(s.local_nodes())}" if node_scoped else "fleet",
        },
    )


async def _recheck_unmapped(sink: CloudEventSink, stop: asyncio.Event, every_s: float) -> None:
    """Every `every_s`: events published under an instance id go to their node once the inventory knows it
    (a notice pushed once is never reported again). A NATS failure is logged and tried again next round."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        if stop.is_set():
            return
        try:
            sent = await sink.remap_pending()
        except Exception:
            log.exception("looking up unmapped events again failed; next round in %.0f s", every_s)
            continue
        if sent:
            log.info("unmapped events sent to their nodes", extra={"sent": sent, "waiting": len(sink.pending_unmapped)})


async def _stop(runtime: IngestRuntime) -> None:
    runtime.stop.set()
    for task in runtime.tasks:
        task.cancel()
    for task in runtime.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for poller in runtime.pollers:
        close = getattr(poller, "close", None)
        if close is not None:
            await close()
    if runtime.nc is not None:
        with contextlib.suppress(Exception):
            await runtime.nc.drain()


async def _healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.start_failed:
        return web.Response(text=runtime.start_failed, status=503)
    return web.Response(text="ok")


def _not_ready(runtime: IngestRuntime) -> list[str]:
    """Why the push endpoints cannot take an event now (empty: ready). Pollers are not asked."""
    problems = []
    if runtime.wait is not None and runtime.wait.waiting:
        problems.append(f"{runtime.settings.service_name}: {runtime.wait.waiting}")
    if runtime.nc is None or not runtime.nc.is_connected:
        problems.append("not connected to NATS")
    if runtime.sink is None:
        problems.append("ledger not seeded yet")
    return problems


async def _readyz(request: web.Request) -> web.Response:
    problems = _not_ready(request.app[RUNTIME])
    if problems:
        return web.Response(text="\n".join(problems), status=503)
    return web.Response(text="ready")


async def _status(request: web.Request) -> web.Response:
    """Readiness and each poller's latest round, as JSON (always 200: it is for people and dashboards)."""
    runtime = request.app[RUNTIME]
    problems = _not_ready(runtime)
    return web.json_response(
        {"ready": not problems, "problems": problems, "pollers": [p.status() for p in runtime.pollers]}
    )


async def _metrics(request: web.Request) -> web.Response:
    body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
