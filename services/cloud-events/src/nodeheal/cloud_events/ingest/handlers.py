"""HTTP handlers for the push channels: `POST /v1/events/<source>`. Thin: read the body within the
limit, authenticate, check the content type, normalize, hand to the sink.

Every refusal answers a 4xx whose JSON body says why. What an *unauthenticated* or oversized request
sent (401, 413) is never stored: it is counted (`nodeheal_ingest_http_refused_total`) and logged
(throttled), so whoever can reach the endpoint cannot write into NATS. An authenticated sender's bad
payload (400, 404, 415, 422) goes to the DLQ with the same reason, rate limited per channel. A NATS
failure answers 503 so the sender retries (CloudMonitor retries 3 times, EventBridge longer). The
answer to an accepted body lists each event's id, subject and outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import prometheus_client
from aiohttp import web

from nodeheal.cloud_events.ingest import auth
from nodeheal.cloud_events.ingest.settings import IngestSettings
from nodeheal.cloud_events.ingest.sink import CloudEventSink
from nodeheal.cloud_events.normalize import NormalizeContext, PayloadError, normalize_bytes

log = logging.getLogger("nodeheal.cloud_events.ingest.http")

CONTENT_TYPES = frozenset(
    {"application/json", "application/cloudevents+json", "application/cloudevents-batch+json", "text/plain"}
)
_SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})

Clock = Callable[[], datetime]

REFUSED = prometheus_client.Counter(
    "nodeheal_ingest_http_refused",
    "Webhook requests refused before authentication or over the size limit (not stored)",
    ["status", "source"],
)


class _ThrottledLog:
    """One log line per status and `every_s`, with the count since the last line: a flood of refused
    requests must not become a flood of log lines either."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[int, float] = {}
        self._count: dict[int, int] = {}

    def refused(self, status: int, reason: str, *, source: str, peer: str | None) -> None:
        self._count[status] = self._count.get(status, 0) + 1
        now = time.monotonic()
        if now - self._last.get(status, -1e9) < self.every_s:
            return
        self._last[status] = now
        count, self._count[status] = self._count[status], 0
        log.warning(
            "webhook request refused (not stored)",
            extra={"status": status, "reason": reason, "source": source, "peer": peer, "refused_since_last": count},
        )


def _utcnow() -> datetime:
    return datetime.now(tz=UTC)


class EventEndpoint:
    def __init__(
        self, *, settings: IngestSettings, sink: Callable[[], CloudEventSink | None], clock: Clock = _utcnow
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.clock = clock
        self._log = _ThrottledLog()

    async def _read(self, request: web.Request) -> tuple[bytes, int | None]:
        """The body, or nothing and the size seen when it is over the limit (reading stops there)."""
        limit = self.settings.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            return b"", declared
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(64 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                return b"", size
            chunks.append(chunk)
        return b"".join(chunks), None

    def _refused(self, request: web.Request, status: int, reason: str) -> web.Response:
        source = request.match_info.get("source", "?")
        known = source if source in self.settings.http_sources else "other"
        REFUSED.labels(str(status), known).inc()
        self._log.refused(status, reason, source=source, peer=request.remote)
        return _answer(status, error=reason)

    async def handle(self, request: web.Request) -> web.Response:
        sink = self.sink()
        if sink is None:
            return _answer(503, error="not connected to NATS yet; retry")
        source = request.match_info["source"]
        where = f"POST {request.path}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS}
        body, oversize = await self._read(request)

        async def refuse(status: int, reason: str) -> web.Response:
            try:
                await sink.reject(reason=reason, raw=body, where=where, headers=headers)
            except Exception as exc:
                log.error("could not dead-letter a refused request", extra={"error": str(exc), "reason": reason})
                return _answer(503, error=f"{reason}; and the payload could not be kept, retry later")
            return _answer(status, error=reason)

        if oversize is not None:
            return self._refused(
                request, 413, f"body too large: {oversize} bytes, the limit is {self.settings.max_body_bytes}"
            )
        s = self.settings
        problem = auth.check(
            headers=request.headers,
            query=request.query,
            body=body,
            token=s.auth_token.get_secret_value() if s.auth_token else None,
            hmac_secret=s.hmac_secret.get_secret_value() if s.hmac_secret else None,
            hmac_header=s.hmac_header,
            allow_query_token=s.allow_query_token,
            allow_unauthenticated=s.allow_unauthenticated,
        )
        if problem is not None:
            return self._refused(request, 401, problem)
        if source not in s.http_sources:
            return await refuse(404, f"no endpoint for source {source!r}; enabled: {', '.join(s.http_sources)}")
        content_type = request.content_type.lower()
        if content_type not in CONTENT_TYPES:
            return await refuse(415, f"content type {content_type or '(none)'!r} not accepted; send application/json")
        ctx = NormalizeContext(observed_at=self.clock(), cluster=s.cluster)
        try:
            events = normalize_bytes(source, body, ctx)
        except PayloadError as exc:
            return await refuse(400 if exc.source != "auto" else 422, str(exc))
        try:
            deliveries = await sink.submit(events)
        except Exception as exc:
            log.error("publishing to CLOUD failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return _answer(503, error="could not publish to the CLOUD stream; retry later")
        return web.json_response({"accepted": len(events), "events": [d.as_json() for d in deliveries]}, status=200)


def _answer(status: int, *, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
