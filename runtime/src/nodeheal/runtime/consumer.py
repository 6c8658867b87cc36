"""The one consumer runtime of nodeheal: faststream JetStream pull subscribers (batch pulls, explicit
acks) with the same semantics in every service.

    runtime = ConsumerRuntime(service="diagnoser", nats=settings.nats)
    runtime.consume(Inbound(title="anomalies", stream="ANOMALIES", subject="nodeheal.anomaly.*.*",
                            durable="diagnoser", model=Anomaly), on_anomaly)
    runtime.loop("tick", ticker)              # a background loop whose death fails /healthz
    await runtime.start()                     # durables ensured, subscribers started, lag reported
    ok, detail = runtime.liveness()           # -> /healthz

What every consumer does, in this order (the middlewares below, outermost first):

- `OrderingMiddleware`: a consumer marked `ordered` handles one message at a time in stream order
  (faststream runs a pulled batch concurrently; the lock is taken in delivery order).
- `TracingMiddleware`: the handler runs inside a CONSUMER span that continues the message's
  `traceparent` (only for consumers with `span=`; the others see the headers on the `Delivery`).
- `SettleMiddleware` (the dead-letter middleware and the ack policy): a message is acked only
  after its handler returned, i.e. after its effects were published and PubAck'ed; *any* exception
  while decoding or validating (ValidationError, OverflowError, UnicodeDecodeError, RecursionError,
  ...) sends the raw bytes and the reason to `<prefix>.dlq.<service>` and acks; a transient failure
  (NATS timeout, no responders, a lost connection, a handler raising `Transient`) is nak'ed with the
  consumer's delay; a handler raising `Rejected` (what the message caused is refused for good) is
  dead-lettered with that reason at once and acked; any other handler failure is nak'ed too, and
  dead-lettered with its reason on the consumer's last delivery (`max_deliver`) so nothing vanishes silently.
- `MetricsMiddleware`: `nodeheal_messages_consumed_total{stream}` per message settled, and
  `nodeheal_messages_dead_lettered_total{service}`.

The runtime runs on the process's faststream broker when given one (`broker=`: one NATS connection
per service process; the detector's probe puller uses the same connection), else on a broker of its
own (`consumer_broker`, tests). The same `Inbound` declarations serve the process and the AsyncAPI
documents (`document()`): what the documents describe is what the subscribers are.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Generic, TypeVar

import nats.errors
import prometheus_client
from faststream import AckPolicy, BaseMiddleware
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.subscriber.usecases.basic import LogicSubscriber
from faststream.specification import AsyncAPI
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError
from opentelemetry import trace
from opentelemetry.trace import Tracer
from pydantic import BaseModel

from nodeheal.runtime.jetstream import (
    dead_letter,
    ensure_pull_consumer,
    follow_stream,
    message_origin,
    read_range,
    stop_if_cancelled,
)
from nodeheal.runtime.metrics import PipelineMetrics
from nodeheal.runtime.service import consumer_broker
from nodeheal.runtime.settings import NatsSettings
from nodeheal.runtime.startup import patiently
from nodeheal.runtime.telemetry import consume_span

log = logging.getLogger("nodeheal.runtime.consumer")

M = TypeVar("M", bound=BaseModel)


class Transient(Exception):  # noqa: N818 - a category, not an error of this module
    """Raised by a handler for a failure that a later try can fix: the message is nak'ed with a delay."""


class Kept(Transient):
    """A passing failure after the handler kept the message's effect itself (e.g. verdicts not yet stored, held to
    be sent again by the service's own loop): nak'ed like `Transient`, but on the last delivery acked without a
    dead letter — nothing of it is lost, and a letter would only invite a replay of what is already done."""


class Rejected(Exception):  # noqa: N818 - a category, not an error of this module
    """Raised by a handler when what the message causes is refused for good (a retry cannot change it: an
    output the server will never store): the message is dead-lettered at once with this reason and acked,
    not nak'ed and tried again (a redelivery may find nothing left to do and ack it without a trace)."""


TRANSIENT: tuple[type[BaseException], ...] = (
    Transient,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    # what `js.publish` raises for no responders: a stream without a leader (an election, a restart) or not
    # there yet — the message is nak'ed and tried again, never dead-lettered for it
    NoStreamResponseError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    ServiceUnavailableError,
    TimeoutError,
    ConnectionError,
)


class HandlerFailed(Exception):  # noqa: N818
    """Wraps what a handler raised, so the settle step tells it apart from a decoding failure."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True)
class Inbound(Generic[M]):
    """One durable pull consumer: what it reads, how it is configured, how it is documented."""

    title: str
    stream: str
    subject: str
    durable: str
    model: type[M]
    description: str = ""
    batch_size: int = 100
    fetch_timeout_s: float = 1.0
    ack_wait_s: float = 30.0
    max_deliver: int = 10
    max_ack_pending: int = 1000
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    nak_delay_s: float = 2.0
    ordered: bool = True
    max_workers: int = 1
    span: str | None = None


@dataclass(frozen=True)
class Outbound:
    """A subject the service publishes (documentation only: publishing goes through `publish_model`)."""

    title: str
    subject: str
    model: type[BaseModel]
    description: str
    stream: str | None = None


class Delivery:
    """What a handler may know about the message besides its decoded body."""

    __slots__ = ("msg",)

    def __init__(self, msg: Msg) -> None:
        self.msg = msg

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def headers(self) -> dict[str, str] | None:
        return self.msg.headers

    @property
    def stream(self) -> str:
        return self.msg.metadata.stream

    @property
    def num_delivered(self) -> int:
        return int(self.msg.metadata.num_delivered or 1)

    async def in_progress(self) -> None:
        """Tell the server the handler is still working (resets `ack_wait`)."""
        await self.msg.in_progress()


Handler = Callable[[M, Delivery], Awaitable[None]]


def bounded(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def describe(exc: BaseException) -> str:
    """A reason for the DLQ: the exception's type and a bounded message (a pydantic error lists its fields)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            parts = [
                f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}"
                for e in errors(include_url=False, include_input=False)[:5]
            ]
            return bounded(f"{type(exc).__name__}: {'; '.join(parts)}")
    try:
        text = str(exc)
    except Exception:  # an exception whose str() fails is still a reason
        text = repr(type(exc))
    return bounded(f"{type(exc).__name__}: {text}")


class _Base(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: Any, runtime: ConsumerRuntime) -> None:
        super().__init__(msg, context=context)
        self.runtime = runtime

    def _spec(self) -> Inbound[Any] | None:
        raw = self.msg
        if not isinstance(raw, Msg) or not raw.reply:
            return None
        try:
            meta = raw.metadata
        except Exception:
            return None
        return self.runtime.spec_of(meta.stream, meta.consumer)


class OrderingMiddleware(_Base):
    _lock: asyncio.Lock | None = None

    async def on_receive(self) -> None:
        spec = self._spec()
        if spec is not None and spec.ordered:
            self._lock = self.runtime.order_lock(spec)
            await self._lock.acquire()

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        if self._lock is not None:
            self._lock.release()
        return False


class TracingMiddleware(_Base):
    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        spec = self._spec()
        if spec is None or spec.span is None:
            return await call_next(msg)
        raw = self.msg
        assert isinstance(raw, Msg)
        with consume_span(self.runtime.tracer, subject=raw.subject, headers=raw.headers, name=spec.span):
            return await call_next(msg)


class SettleMiddleware(_Base):
    """Ack, nak or dead-letter each message once its handler is done (AckPolicy.MANUAL underneath)."""

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        raw = self.msg
        spec = self._spec()
        if spec is None or not isinstance(raw, Msg):
            return False
        if exc_val is not None and not isinstance(exc_val, Exception):
            return False  # cancelled (shutdown): neither acked nor dead-lettered, redelivered after ack_wait
        try:
            await self.runtime.settle(spec, raw, exc_val)
        except Exception as exc:
            # The DLQ itself failed: leave the message unacked (redelivered after ack_wait).
            log.warning("could not settle a message; it will be redelivered", extra={"error": describe(exc)})
        return True  # nothing escapes into faststream's loop


class MetricsMiddleware(_Base):
    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        raw = self.msg
        if isinstance(raw, Msg) and raw.reply:
            with contextlib.suppress(Exception):
                self.runtime.metrics.messages_consumed.labels(raw.metadata.stream).inc()
        return False


@dataclass
class _Follower:
    name: str
    stream: str
    subject: str
    since_s: float | None
    apply: Callable[[Msg], None]
    caught_up: bool = False


class ConsumerRuntime:
    """The consumers, background loops and consumer-lag reporting of one service process."""

    def __init__(
        self,
        *,
        service: str,
        nats: NatsSettings,
        metrics: PipelineMetrics | None = None,
        tracer: Tracer | None = None,
        name: str | None = None,
        lag_every_s: float = 15.0,
        graceful_timeout_s: float = 10.0,
        broker: NatsBroker | None = None,
    ) -> None:
        self.service = service
        self.nats = nats
        self.metrics = metrics or PipelineMetrics(prometheus_client.CollectorRegistry())
        self.tracer = tracer or trace.get_tracer(f"nodeheal.{service}")
        self.lag_every_s = lag_every_s
        middlewares = [
            functools.partial(cls, runtime=self)
            for cls in (OrderingMiddleware, MetricsMiddleware, SettleMiddleware, TracingMiddleware)
        ]
        self._shared = broker is not None
        if broker is not None:
            # the process's own broker (one NATS connection per service): our middlewares act only on
            # messages of the consumers declared here (`spec_of` finds no other)
            for middleware in middlewares:
                broker.add_middleware(middleware)
            self.broker = broker
        else:
            self.broker = consumer_broker(
                nats,
                service=service,
                name=name or f"nodeheal-{service}-consumers",
                graceful_timeout_s=graceful_timeout_s,
            )
            for middleware in middlewares:
                self.broker.add_middleware(middleware)
        self._specs: dict[tuple[str, str], Inbound[Any]] = {}
        self._subscribers: list[tuple[Inbound[Any], LogicSubscriber[Any]]] = []
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._loops: dict[str, Callable[[], Awaitable[None]]] = {}
        self._followers: list[_Follower] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lag: list[tuple[str, str]] = []
        self._outbound: list[Outbound] = []
        self._consumed: list[tuple[Inbound[Any], Handler[Any]]] = []
        self._documented: list[Inbound[Any]] = []
        self._started = False
        self._stopping = False
        self.skipped = 0
        self._loop_failures: dict[str, deque[tuple[float, str]]] = {}  # consumer title → (when, error), newest last
        self._last_settled: dict[str, float] = {}  # consumer title → when it last settled a message (monotonic)
        self.loop_restarts: dict[str, int] = {}  # consumer title → pull loops that ended with an error
        self._ack_floor: dict[tuple[str, str], int] = {}  # (stream, durable) → ack floor the last lag round read
        self._gone: dict[tuple[str, str], str] = {}  # (stream, durable) → why it is gone and not made again

    # ------------------------------------------------------------------ declaration

    def consume(self, spec: Inbound[M], handler: Handler[M]) -> None:
        """Declare a consumer: a faststream pull subscriber on `spec.stream` bound to the durable, added to
        the broker by `start()` once the durables exist (the broker may already be running)."""
        self._specs[(spec.stream, spec.durable)] = spec
        self._consumed.append((spec, handler))
        self._lag.append((spec.stream, spec.durable))

    def documents(self, spec: Inbound[Any]) -> None:
        """A consumer the service runs outside this runtime (the detector's probe path): in the AsyncAPI
        document and in the lag report, never started here."""
        self._documented.append(spec)
        self._lag.append((spec.stream, spec.durable))

    def publishes(self, *outbound: Outbound) -> None:
        """Document what the service publishes (AsyncAPI `send` operations)."""
        self._outbound.extend(outbound)

    def loop(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """A background loop the process cannot live without: if it ends, `/healthz` fails."""
        self._loops[name] = factory
        if self._started:
            self._tasks[name] = asyncio.create_task(self._guard(name, factory), name=f"{self.service}-{name}")

    def follow(
        self,
        name: str,
        *,
        stream: str,
        subject: str,
        model: type[M],
        since_s: float | None,
        handler: Callable[[M], None],
        keep: Callable[[bytes], bool] | None = None,
    ) -> None:
        """Every replica reads every message of `subject` from `since_s` ago on (None: from the first
        message the stream keeps), in order, with a reader of its own and no acks: views such as "which
        nodes are unhealthy". A message that does not validate
        (any exception) or that the handler fails on is skipped and counted; the work consumer of the
        same stream is the one that dead-letters it. `keep`, when given, looks at the raw message first
        (cheaply, e.g. at the one field that decides): False means the handler would discard the message,
        which is then passed over without being validated; a message it cannot tell about must be True
        (validated as without it, a malformed one skipped and counted)."""

        def apply(msg: Msg) -> None:
            try:
                if keep is not None and not keep(msg.data):
                    return
                handler(model.model_validate_json(msg.data))
            except Exception as exc:
                self.skipped += 1
                log.debug("follower skipped a message", extra={"stream": stream, "error": describe(exc)})

        self._followers.append(_Follower(name=name, stream=stream, subject=subject, since_s=since_s, apply=apply))

    async def _catch_up(self, follower: _Follower) -> None:
        """Read what the follower's stream holds now, before any subscriber or loop starts (a view is whole
        before anything acts on it: the remediator's maintenance loop would otherwise drain for a host event
        whose cancellation it had not read yet), then follow it from the next message on."""
        js = self.broker.connection.jetstream()
        start = None if follower.since_s is None else datetime.now(tz=UTC) - timedelta(seconds=follower.since_s)
        last = 0

        def apply(msg: Msg) -> None:
            nonlocal last
            last = max(last, msg.metadata.sequence.stream)
            follower.apply(msg)

        await read_range(
            js,
            stream=follower.stream,
            filters=[follower.subject],
            name=f"{self.service}-{follower.name}",
            on_msg=apply,
            since=start,
            what=f"the {follower.name} view from {follower.stream}",
        )

        async def run() -> None:
            # named ephemeral pull readers, not nats-py's ordered consumer: its legacy server-named create
            # is refused by the permission matrix (it could rewrite another service's durable)
            await follow_stream(
                js,
                stream=follower.stream,
                subject=follower.subject,
                start=start,
                on_msg=follower.apply,
                next_seq=last + 1 if last else 0,
            )

        self.loop(f"follow-{follower.name}", run)

    def report_lag_of(self, stream: str, durable: str) -> None:
        """Another durable (e.g. one consumed outside this runtime) whose lag is reported."""
        self._lag.append((stream, durable))

    def spec_of(self, stream: str, durable: str) -> Inbound[Any] | None:
        return self._specs.get((stream, durable))

    def order_lock(self, spec: Inbound[Any]) -> asyncio.Lock:
        key = (spec.stream, spec.durable)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def document(self, *, title: str, version: str, description: str, server: str) -> AsyncAPI:
        """The AsyncAPI document: the declared consumers, through the same `_declare` as the process's
        subscribers, on a broker that never connects; plus what the service publishes."""
        broker = NatsBroker(server)
        for spec, handler in self._consumed:
            _declare(broker, spec, handler, service=self.service)
        for spec in self._documented:
            _declare(broker, spec, _never, service=self.service)
        for item in self._outbound:
            broker.publisher(
                item.subject,
                schema=item.model,
                title=item.title,
                description=item.description,
                stream=JStream(item.stream, declare=False) if item.stream else None,
            )
        return AsyncAPI(broker, title=title, version=version, description=description)

    # ------------------------------------------------------------------ lifecycle

    async def ensure(self) -> None:
        """Create / update every declared durable with its configuration (before anything binds)."""
        await self.broker.connect()
        for spec in self._specs.values():
            await patiently(f"consumer {spec.durable} on {spec.stream}", functools.partial(self._ensure, spec))

    async def _ensure(self, spec: Inbound[Any], *, start_seq: int | None = None) -> bool:
        """`ensure_pull_consumer` for one declared durable, with its configuration (True: it was created)."""
        return await ensure_pull_consumer(
            self.broker.connection.jetstream(),
            stream=spec.stream,
            durable=spec.durable,
            filter_subjects=[spec.subject],
            ack_wait_s=spec.ack_wait_s,
            max_deliver=spec.max_deliver,
            max_ack_pending=spec.max_ack_pending,
            deliver_policy=spec.deliver_policy,
            start_seq=start_seq,
        )

    async def start(self) -> None:
        """Ensure the durables, declare the subscribers (once) and start them, then the loops. Each
        JetStream call waits out a briefly unavailable JetStream (`patiently`); a subscriber whose start
        failed is started again, never declared again."""
        await self.ensure()
        for follower in self._followers:
            if not follower.caught_up:
                await self._catch_up(follower)
                follower.caught_up = True
        inbox_prefix = f"{self.nats.inbox_prefix}.".encode()
        if not self._subscribers:
            for spec, handler in self._consumed:
                subscriber = _declare(self.broker, spec, handler, service=self.service, inbox_prefix=inbox_prefix)
                self._subscribers.append((spec, subscriber))
        if self._shared:
            for spec, subscriber in self._subscribers:
                await patiently(f"subscriber of {spec.durable} on {spec.stream}", subscriber.start)
        else:
            await patiently(f"{self.service} consumers", self.broker.start)
        self._started = True
        for name, factory in self._loops.items():
            self._tasks[name] = asyncio.create_task(self._guard(name, factory), name=f"{self.service}-{name}")
        self._tasks["lag"] = asyncio.create_task(self._report_lag(), name=f"{self.service}-lag")

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5.0)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            if self._shared:  # the process shell closes its broker (and the connection) after us
                await asyncio.wait_for(
                    asyncio.gather(*(subscriber.stop() for _, subscriber in self._subscribers)), timeout=15.0
                )
            else:
                await asyncio.wait_for(self.broker.stop(), timeout=15.0)

    async def _guard(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("loop %s died; /healthz fails so the pod is restarted", name)
            raise
        if not self._stopping:
            log.error("loop %s ended; /healthz fails so the pod is restarted", name)

    async def _report_lag(self) -> None:
        """Consumer lag of every declared durable into `nodeheal_consumer_pending_messages` (one loop
        per process, a server round trip per consumer)."""
        js = self.broker.connection.jetstream()
        while True:
            self._sweep_pull_tasks()  # also without a kubelet asking /healthz
            consumed = {(spec.stream, spec.durable): spec for spec, _ in self._consumed}
            for stream, durable in self._lag:
                try:
                    info = await js.consumer_info(stream, durable)
                    self.metrics.set_consumer_lag(info, stream=stream, consumer=durable)
                    if info.ack_floor is not None:
                        self._ack_floor[(stream, durable)] = int(info.ack_floor.stream_seq or 0)
                    self._gone.pop((stream, durable), None)
                except asyncio.CancelledError:
                    raise
                except NotFoundError as exc:
                    if (spec := consumed.get((stream, durable))) is not None:
                        await self._recreate(spec, exc)
                    else:
                        log.debug("consumer lag not read", extra={"stream": stream, "error": describe(exc)})
                except Exception as exc:
                    log.debug("consumer lag not read", extra={"stream": stream, "error": describe(exc)})
                stop_if_cancelled()  # a stop that landed as the server answered is not lost (gh-86296)
            await asyncio.sleep(self.lag_every_s)

    async def _recreate(self, spec: Inbound[Any], gone: BaseException) -> None:
        """A consumed durable is gone under the running service (`nats consumer rm`, its stream deleted and
        made again): its subscriber's fetches only time out, so nothing would be consumed and nothing would
        say so. It is created again with its configuration, from the first message after the acknowledged
        floor the last lag round read (at most `lag_every_s` old: what was acknowledged since is delivered
        again — at least once, as after any redelivery); with no floor read yet, by its deliver policy. When
        it cannot be created (the stream is gone too), `liveness` fails with the reason until it can."""
        key = (spec.stream, spec.durable)
        floor = self._ack_floor.get(key)
        start = floor + 1 if floor is not None else None
        try:
            created = await self._ensure(spec, start_seq=start)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._gone[key] = (
                f"consumer {spec.title!r}: its durable {spec.durable} on {spec.stream} is gone ({describe(gone)}) "
                f"and could not be created again: {describe(exc)}"
            )
            log.error("durable gone and not created again", extra={"durable": spec.durable, "error": describe(exc)})
            return
        self._gone.pop(key, None)
        if created:
            self.metrics.consumer_recreated.labels(self.service, spec.title).inc()
            log.error(
                "durable was gone under the running service; created again",
                extra={
                    "stream": spec.stream,
                    "durable": spec.durable,
                    "from_seq": start if start is not None else str(spec.deliver_policy),
                },
            )

    def _sweep_pull_tasks(self) -> None:
        """Let the ended pull-loop tasks faststream keeps go, counting those that ended with an error.

        faststream's supervisor starts a pull loop that raised again as a new task and never removes the old one
        from `subscriber.tasks`: each restart kept a task with its exception and traceback (memory that grew for
        the life of the pod, and a list the health check scanned whole). A task is let go once a newer one
        exists (the supervisor's callback has run for it: removing it earlier would stop the restart). An error
        other than the builtin `TimeoutError` (an idle fetch on a busy event loop, `PullLoopNoise`) is kept, last
        `LOOP_FAILURE_LIMIT` per consumer, for `liveness`."""
        now = time.monotonic()
        for spec, sub in self._subscribers:
            tasks: list[asyncio.Task[Any]] | None = getattr(sub, "tasks", None)
            if not tasks or len(tasks) < 2:
                continue
            kept: list[asyncio.Task[Any]] = []
            for task in tasks[:-1]:
                if not task.done():
                    kept.append(task)
                    continue
                exc = None if task.cancelled() else task.exception()
                if exc is None:
                    continue
                self.loop_restarts[spec.title] = self.loop_restarts.get(spec.title, 0) + 1
                self.metrics.consumer_loop_restarts.labels(self.service, spec.title, type(exc).__name__).inc()
                if not isinstance(exc, TimeoutError):
                    failures = self._loop_failures.setdefault(spec.title, deque(maxlen=LOOP_FAILURE_LIMIT))
                    failures.append((now, describe(exc)))
            tasks[:] = [*kept, tasks[-1]]

    def _failing(self, spec: Inbound[Any], now: float) -> str | None:
        """Why this consumer's pull loop counts as failing for good: `LOOP_FAILURE_LIMIT` errors (not idle
        timeouts) within `LOOP_FAILURE_WINDOW_S` and no message settled since the first of them. faststream
        restarts such a loop for ever, so before this `/healthz` stayed 200 while the consumer consumed nothing."""
        failures = self._loop_failures.get(spec.title)
        if not failures or len(failures) < LOOP_FAILURE_LIMIT:
            return None
        first, _ = failures[0]
        if now - first > LOOP_FAILURE_WINDOW_S or self._last_settled.get(spec.title, float("-inf")) >= first:
            return None
        return (
            f"consumer {spec.title!r} ({spec.stream}/{spec.durable}): its pull loop failed {len(failures)} times in "
            f"{now - first:.0f} s with no message handled; last error: {failures[-1][1]}"
        )

    def liveness(self) -> tuple[bool, str]:
        """False when a subscriber's pull loop or a background loop is gone (the pod must restart), or a pull loop
        keeps failing (`_failing`)."""
        if not self._started or self._stopping:
            return True, "ok"
        self._sweep_pull_tasks()
        now = time.monotonic()
        dead = [name for name, task in self._tasks.items() if task.done()]
        for spec, sub in self._subscribers:
            tasks = getattr(sub, "tasks", [])
            if not sub.running or (tasks and all(t.done() for t in tasks) and not _started_again(tasks[-1])):
                dead.append(f"consumer {spec.title!r} ({spec.stream}/{spec.durable})")
            elif (why := self._failing(spec, now)) is not None:
                dead.append(why)
        dead.extend(self._gone.values())
        if dead:
            return False, f"{self.service}: stopped: {', '.join(dead)}"
        return True, "ok"

    async def readiness(self) -> tuple[bool, str]:
        if not self._started:
            return False, f"{self.service}: consumers not started"
        if not self.broker.connection or not self.broker.connection.is_connected:
            return False, f"{self.service}: consumer connection to NATS is down"
        return True, "ok"

    # ------------------------------------------------------------------ settling one message

    async def settle(self, spec: Inbound[Any], msg: Msg, exc: BaseException | None) -> None:
        self._last_settled[spec.title] = time.monotonic()
        if exc is None:
            await msg.ack()
            return
        if isinstance(exc, HandlerFailed):
            cause = exc.cause
            delivered = int(msg.metadata.num_delivered or 1)
            if isinstance(cause, TRANSIENT):
                if spec.max_deliver > 0 and delivered >= spec.max_deliver and isinstance(cause, Kept):
                    log.info(
                        "last delivery failed; its effect is kept by the service, acked",
                        extra={"error": describe(cause), "stream": spec.stream, "delivered": delivered},
                    )
                    await msg.ack()
                    return
                if spec.max_deliver > 0 and delivered >= spec.max_deliver:
                    # the server would not deliver it again after this nak: kept with the reason, never dropped
                    await self._dead_letter(
                        spec,
                        msg,
                        f"still failing on delivery {delivered} of {spec.max_deliver} (a passing failure every "
                        f"time: {describe(cause)}); once the cause is gone, publish its raw bytes again on its subject",
                    )
                    await msg.ack()
                    return
                log.info("transient failure; nak with delay", extra={"error": describe(cause), "stream": spec.stream})
                await msg.nak(delay=spec.nak_delay_s)
                return
            if isinstance(cause, Rejected):
                await self._dead_letter(spec, msg, f"refused on delivery {delivered}: {bounded(str(cause))}")
                await msg.ack()
                return
            if spec.max_deliver > 0 and delivered >= spec.max_deliver:
                await self._dead_letter(spec, msg, f"handler failed on delivery {delivered}: {describe(cause)}")
                await msg.ack()
                return
            log.warning(
                "handler failed; nak with delay",
                exc_info=cause,
                extra={"error": describe(cause), "stream": spec.stream, "delivered": delivered},
            )
            await msg.nak(delay=spec.nak_delay_s)
            return
        # Anything else was raised before the handler ran: the input is bad. Keep it, with the reason.
        await self._dead_letter(spec, msg, f"not a valid {spec.model.__name__}: {describe(exc)}")
        await msg.ack()

    async def _dead_letter(self, spec: Inbound[Any], msg: Msg, reason: str) -> None:
        kept = await dead_letter(
            self.broker.connection.jetstream(),
            service=self.service,
            reason=f"{spec.stream} message rejected: {reason}",
            raw=msg.data,
            subject=msg.subject,
            headers=dict(msg.headers) if msg.headers else None,
            prefix=self.nats.prefix,
            timeout_s=self.nats.publish_timeout_s,
            origin=message_origin(msg.reply),
        )
        if kept is not None:  # None: the rate limit dropped it (`nodeheal_dlq_rate_limited_total`)
            self.metrics.messages_dead_lettered.labels(self.service).inc()


LOOP_FAILURE_LIMIT = 10
"""Errors of one consumer's pull loop (not idle timeouts), with no message settled since the first, that make it
failing (`ConsumerRuntime._failing`)..."""
LOOP_FAILURE_WINDOW_S = 600.0
"""...within this many seconds."""


def _started_again(task: asyncio.Task[Any]) -> bool:
    """Whether faststream's task supervisor starts this ended pull-loop task again: it does for one that raised
    (its done callback adds a new task at the next step of the event loop; until then this is the subscriber's
    newest task and it is done), not for one cancelled or returned, nor when `FASTSTREAM_SUPERVISOR_DISABLED` is
    set. A busy event loop ends the loop that way with nothing wrong: a fetch resumed after its timeout although
    the server answered in time raises the builtin `TimeoutError`, which faststream's pull loop does not
    suppress (`service.PullLoopNoise`). Reported as stopped, such a loop made `/healthz` answer 503 for a
    consumer that never stopped."""
    if task.cancelled() or task.exception() is None:
        return False
    return os.environ.get("FASTSTREAM_SUPERVISOR_DISABLED", "0").strip() in ("", "0")


async def _never(body: Any, delivery: Delivery) -> None:
    return None


def _declare(
    broker: NatsBroker, spec: Inbound[M], handler: Handler[M], *, service: str, inbox_prefix: bytes = b"_INBOX."
) -> LogicSubscriber[Any]:
    """The faststream subscriber of one consumer: a pull subscriber bound to the durable, batch pulls,
    MANUAL acks (the settle middleware acks), the model decoded by our decoder so that any exception
    of decoding is caught by the settle middleware."""
    model = spec.model

    async def decode(msg: Any, original: Any) -> Any:
        return model.model_validate_json(msg.body)

    async def on_message(body: Any, message: Any) -> None:
        try:
            await handler(body, Delivery(message.raw_message))
        except Exception as exc:
            raise HandlerFailed(exc) from exc

    on_message.__annotations__ = {"body": model, "message": NatsMessage, "return": None}
    on_message.__name__ = f"{service}_{spec.title.replace(' ', '_')}"
    on_message.__doc__ = spec.description or None
    subscriber = broker.subscriber(
        spec.subject,
        stream=JStream(spec.stream, declare=False),
        durable=spec.durable,
        config=ConsumerConfig(
            ack_wait=spec.ack_wait_s, max_deliver=spec.max_deliver, max_ack_pending=spec.max_ack_pending
        ),
        pull_sub=PullSub(batch_size=spec.batch_size, timeout=spec.fetch_timeout_s),
        ack_policy=AckPolicy.MANUAL,
        max_workers=spec.max_workers if spec.max_workers > 1 else None,
        decoder=decode,
        inbox_prefix=inbox_prefix,  # under per-role permissions each user may only subscribe to its own inboxes
        title=spec.title,
        description=spec.description or None,
    )
    subscriber(on_message)
    return subscriber
