"""JetStream helpers every service uses the same way: publish a model with a deterministic
`Nats-Msg-Id`, send rejected input to the DLQ with the reason and the raw bytes, and make sure a
service's durable pull consumer exists with the configuration we want."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import prometheus_client
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from nodeheal.runtime.startup import patiently
from nodeheal.schemas.dlq import MAX_RAW_BYTES, DeadLetter
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.subjects import DEFAULT_PREFIX, dlq_subject

log = logging.getLogger("nodeheal.runtime.jetstream")

DLQ_DROPPED = prometheus_client.Counter(
    "nodeheal_dlq_rate_limited",
    "Dead letters not stored because their source sent more than the DLQ rate limit",
    ["service"],
)


class DeadLetterLimiter:
    """A token bucket per source (a node's subject, a webhook channel): a source may dead-letter `burst`
    messages at once and `rate_per_s` after that; the rest are counted and logged, not stored. Bounds
    what one hostile or broken sender can put into the DLQ, on top of the stream's own caps."""

    def __init__(
        self,
        *,
        rate_per_s: float = 5.0,
        burst: float = 100.0,
        max_sources: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_sources = max_sources
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)
        self.dropped: dict[str, int] = {}

    def allow(self, source: str) -> bool:
        now = self.clock()
        tokens, at = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        if len(self._buckets) >= self.max_sources and source not in self._buckets:
            self._buckets.clear()  # a flood of distinct sources: forget, the stream's caps still hold
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            self.dropped[source] = self.dropped.get(source, 0) + 1
            return False
        self._buckets[source] = (tokens - 1.0, now)
        return True


DEFAULT_DLQ_LIMITER = DeadLetterLimiter()
"""Shared by every `dead_letter` call of a process unless a caller passes its own."""

MAX_DEAD_RAW = MAX_RAW_BYTES
"""At most this much of a rejected input is kept (`DeadLetter.of` cuts it and records `raw_size`)."""


class WireModel(Protocol):
    def to_json(self) -> bytes: ...


async def publish_model(
    js: JetStreamContext,
    subject: str,
    model: WireModel,
    *,
    msg_id: str,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> PubAck:
    """Publish and wait for the stream's acknowledgement; a duplicate within the window is not stored twice."""
    all_headers = {"Nats-Msg-Id": msg_id}
    if headers:
        all_headers.update(headers)
    return await js.publish(subject, model.to_json(), headers=all_headers, timeout=timeout_s)


async def dead_letter(
    js: JetStreamContext,
    *,
    service: str,
    reason: str,
    raw: bytes,
    subject: str | None = None,
    headers: dict[str, str] | None = None,
    prefix: str = DEFAULT_PREFIX,
    timeout_s: float = 5.0,
    source: str | None = None,
    limiter: DeadLetterLimiter | None = DEFAULT_DLQ_LIMITER,
    origin: str | None = None,
) -> PubAck | None:
    """Keep rejected input: the reason, where it came from and the raw bytes, on `<prefix>.dlq.<service>`.

    `origin` names the rejected message where it is stored (`message_origin`: its stream and stream
    sequence): the letter's id is derived from it, so the same message dead-lettered again (redelivered after
    a crash, or re-sent after a DLQ write failed) is stored once within the DLQ's duplicate window.

    Bounded: at most `MAX_DEAD_RAW` bytes of the input (`raw_size` keeps its length, the reason says it
    was cut), 2,000 characters of reason and 4,000 of headers, so a huge input still fits a NATS message.
    Rate limited per `source` (default: the subject it came from): over the limit nothing is stored, the
    drop is counted (`nodeheal_dlq_rate_limited_total`) and logged, None is returned.
    """
    key = f"{service}|{source or subject or '-'}"
    if limiter is not None and not limiter.allow(key):
        DLQ_DROPPED.labels(service).inc()
        dropped = limiter.dropped.get(key, 0)
        if dropped == 1 or dropped % 1000 == 0:
            log.warning(
                "dead letters of one source over the rate limit are dropped",
                extra={"service": service, "source": source or subject, "dropped": dropped, "reason": reason},
            )
        return None
    if len(raw) > MAX_DEAD_RAW:
        reason = f"{reason} [input of {len(raw)} bytes, first {MAX_DEAD_RAW} kept]"
    if len(reason) > 2000:
        reason = reason[:2000] + "..."
    if headers and sum(len(k) + len(v) for k, v in headers.items()) > 4000:
        headers = {k[:100]: v[:200] for k, v in list(headers.items())[:20]}
    letter = DeadLetter.of(
        service=service,
        reason=reason,
        raw=raw,
        subject=subject,
        headers=headers,
        id=deterministic_id("dlq", service, origin) if origin is not None else None,
    )
    log.warning("dead-lettered input", extra={"service": service, "reason": reason, "subject": subject})
    return await js.publish(
        dlq_subject(service, prefix=prefix), letter.to_json(), headers={"Nats-Msg-Id": letter.id}, timeout=timeout_s
    )


def message_origin(reply: str | None) -> str | None:
    """`<stream>:<stream sequence>` of a JetStream message, from its ack subject
    (`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<stored ns>.<pending>`, or the form with domain and
    account hash after `ACK`): the same on every delivery of it. None for a message that is not from JetStream."""
    if not reply:
        return None
    tokens = reply.split(".")
    if tokens[:2] != ["$JS", "ACK"]:
        return None
    if len(tokens) == 9:
        stream, seq = tokens[2], tokens[5]
    elif len(tokens) >= 11:
        stream, seq = tokens[4], tokens[7]
    else:
        return None
    return f"{stream}:{seq}" if seq.isdigit() else None


async def ensure_pull_consumer(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    filter_subjects: list[str] | None = None,
    ack_wait_s: float = 30.0,
    max_deliver: int = 10,
    max_ack_pending: int = 10_000,
    ack_policy: AckPolicy = AckPolicy.EXPLICIT,
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    start_seq: int | None = None,
) -> bool:
    """Create the durable if it is missing (from stream sequence `start_seq` when given, else by
    `deliver_policy`); re-issue the editable fields if it exists (nats-py's `pull_subscribe` silently keeps an
    existing durable's old configuration). True when it was created."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=ack_policy,
        deliver_policy=deliver_policy,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
        filter_subjects=filter_subjects or None,
    )
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        if start_seq is not None and start_seq > 0:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start_seq
        await js.add_consumer(stream, config=config)
        return True
    current = info.config
    if current.ack_policy != ack_policy:
        # Not editable: recreate the durable where the old one's acknowledged floor ended, so nothing
        # unacknowledged is skipped (an upgrade from AckPolicy.ALL to EXPLICIT, for instance).
        floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        log.warning(
            "recreating consumer with a new ack policy",
            extra={"stream": stream, "durable": durable, "from_seq": floor + 1, "ack_policy": str(ack_policy)},
        )
        await js.delete_consumer(stream, durable)
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = floor + 1
        await js.add_consumer(stream, config=config)
        return False
    if (
        round((current.ack_wait or 0) * 1e3) != round(ack_wait_s * 1e3)
        or current.max_deliver != max_deliver
        or current.max_ack_pending != max_ack_pending
        or sorted(current.filter_subjects or ([current.filter_subject] if current.filter_subject else []))
        != sorted(filter_subjects or [])
    ):
        config.deliver_policy = current.deliver_policy
        config.opt_start_seq = current.opt_start_seq
        config.opt_start_time = current.opt_start_time
        config.ack_policy = current.ack_policy
        await js.add_consumer(stream, config=config)
    return False


def reader_config(start: datetime | None, next_seq: int) -> ConsumerConfig:
    """An ephemeral, unacknowledged, memory-stored reader from a time or a sequence, dropped by the server 120 s
    after its last pull (a reader whose process died). nats-py names it (a random name) when `pull_subscribe`
    gets no durable, so it is created through the named subject: the permission matrix refuses the legacy
    server-named create, which could rewrite another service's durable. The services' readers and the CLI's
    (`nodeheal.cli.window`) use it."""
    if next_seq > 0:
        return ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=next_seq,
            inactive_threshold=120.0,
            mem_storage=True,
        )
    return ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_TIME if start is not None else DeliverPolicy.ALL,
        opt_start_time=start,
        inactive_threshold=120.0,
        mem_storage=True,
    )


async def close_reader(js: JetStreamContext, sub: JetStreamContext.PullSubscription) -> None:
    """Unsubscribe a reader and delete its ephemeral consumer now. nats-py's `unsubscribe()` leaves the
    consumer on the server until its inactive threshold: a service that opens short-lived readers under a
    storm (the remediator's verifications and audit reads) would otherwise pile up thousands of idle
    consumers and meet the server's "maximum consumers limit reached"."""
    try:
        await sub.unsubscribe()
    except Exception as exc:  # the connection may be closing; the consumer expires by itself
        log.debug("stream reader not unsubscribed", extra={"error": repr(exc)})
    stream, name = getattr(sub, "_stream", None), getattr(sub, "_consumer", None)
    if stream and name:
        try:
            await js.delete_consumer(stream, name)
        except Exception as exc:  # gone already, or the connection is closing: it expires by itself
            log.debug("stream reader not deleted", extra={"stream": stream, "error": repr(exc)})


def stop_if_cancelled() -> None:
    """End a loop whose task was asked to stop but never saw the `CancelledError`.

    On Python 3.11 `asyncio.wait_for` returns the awaited result when the cancellation lands in the loop turn
    in which that result arrives, and drops the cancellation (CPython gh-86296; 3.12 rewrote `wait_for`).
    nats-py's `fetch()` awaits `next_msg()`, which is such a `wait_for`, so a reader cancelled as a message
    reached it got the message instead. The task still counts the request (`Task.cancelling()`): a loop that
    would otherwise go on forever calls this after each wait."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def stop_if_ending(js: JetStreamContext, exc: Exception) -> None:
    """A following read never outlives its caller: when this task is being cancelled (Ctrl-C, the batch's
    end, a service's stop) or its connection was closed, the error `exc` of a fetch ends the read instead of
    a retry. nats-py turns the cancellation of a fetch on a closing connection into `ConnectionClosedError`:
    retried, the cancellation was lost and the read went on forever (a `nodeheal batch` interrupted under
    load did not exit)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc
    nc = getattr(js, "_nc", None)
    if nc is not None and (nc.is_closed or nc.is_draining):
        raise exc


async def follow_stream(
    js: JetStreamContext,
    *,
    stream: str,
    subject: str,
    start: datetime | None,
    on_msg: Callable[[Msg], None],
    batch: int = 256,
    wait_s: float = 5.0,
    next_seq: int = 0,
) -> None:
    """Read `subject` of `stream` from `start` on (or from stream sequence `next_seq`, when > 0), in order,
    forever (until cancelled): what nats-py's ordered consumer does, through named ephemeral pull consumers.
    A lost consumer (server restart, inactivity) is recreated from the next sequence, so nothing is skipped
    or read twice."""
    while True:
        try:
            sub = await js.pull_subscribe(subject, durable=None, stream=stream, config=reader_config(start, next_seq))
        except Exception as exc:
            stop_if_ending(js, exc)
            log.warning("stream reader not created; retrying", extra={"stream": stream, "error": repr(exc)})
            await asyncio.sleep(1.0)
            continue
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=wait_s)
                except TimeoutError:
                    stop_if_cancelled()
                    continue
                stop_if_cancelled()
                for msg in msgs:
                    next_seq = msg.metadata.sequence.stream + 1
                    on_msg(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stop_if_ending(js, exc)
            log.warning("stream reader lost; recreating", extra={"stream": stream, "error": repr(exc)})
            await asyncio.sleep(1.0)
        finally:
            await close_reader(js, sub)


class IncompleteReadError(RuntimeError):
    """A bounded read (`read_stream`) stopped before the end it was asked for: what it read is not all there is,
    and must not be taken for it."""


async def read_stream(
    js: JetStreamContext, *, stream: str, subject: str, start: datetime | None, through_seq: int, wait_s: float = 2.0
) -> list[Msg]:
    """All the messages of `subject` from `start` through stream sequence `through_seq`, in order, through one
    named ephemeral pull consumer — or `IncompleteReadError`, never a part of them.

    The read is complete when it reached `through_seq` (the subject's last message, read by the caller just
    before), or when it read as many messages as the reader had pending when it was created (`num_pending`:
    none when the subject's last message is older than `start`, which returns at once). A fetch that brings
    nothing within `wait_s` before that (a server still recovering from a restart, a reader lost with it, a
    slow read) raises `IncompleteReadError` (a failed fetch raises its own error): a caller that acts on what it
    read (the remediator's AUDIT history: what was already done on a node) would take a part for the whole."""
    sub = await js.pull_subscribe(subject, durable=None, stream=stream, config=reader_config(start, 0))
    out: list[Msg] = []
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while len(out) < pending and (not out or out[-1].metadata.sequence.stream < through_seq):
            try:
                msgs = await sub.fetch(256, timeout=wait_s)
            except TimeoutError as exc:
                msg = (
                    f"read of {subject} on {stream} stopped after {len(out)} of {pending} messages (through "
                    f"sequence {through_seq}): nothing came within {wait_s:g} s"
                )
                raise IncompleteReadError(msg) from exc
            out.extend(msgs)
        return out
    finally:
        await close_reader(js, sub)


async def read_range(
    js: JetStreamContext,
    *,
    stream: str,
    filters: Sequence[str],
    name: str,
    on_msg: Callable[[Msg], None],
    deliver: DeliverPolicy = DeliverPolicy.BY_START_TIME,
    since: datetime | None = None,
    what: str | None = None,
    batch: int = 2000,
    idle_s: float = 1.0,
    idle_limit: int = 5,
) -> int:
    """Read what `stream` holds now on `filters` (from `since`, everything when `since` is None, or the last
    message per subject with `DeliverPolicy.LAST_PER_SUBJECT`) once, in order, calling `on_msg` for each
    message; returns how many were handled. A start-up rebuild read (the detector's replay, the diagnoser's
    rebuild, the ingest's ledger seed).

    Through a named ephemeral pull consumer `<name>-<random>` (no acks, memory-stored, deleted after the
    read): named because the permission matrix refuses the legacy server-named create, which could rewrite
    another service's durable, so `name` must be a prefix the role may create (deploy/nats/natsauth.py).
    What "now" is: the consumer's pending count when it is created; the read ends when that many messages
    are handled. The pull requests are sent here (two batches of `batch` in flight) to an inbox without a
    callback, drained without a per-message await: nats-py's `fetch` costs tens of µs a message.

    A JetStream that goes away mid-read is waited out (`patiently`, inside a service start): the read
    resumes after the last message handled, so nothing is handled twice and nothing is skipped (a
    last-per-subject read starts again instead: seeding a subject twice gives the same seed). A read that
    stops short with messages still pending (or whose consumer the server forgot or someone deleted: its
    pull requests are answered with statuses only) is such a failure, not the end. An exception of `on_msg`
    ends the read (the caller decides what it skips)."""
    nc: Client = js._nc  # nats-py keeps the connection and API prefix private
    api: str = js._prefix
    last_seq = 0
    seen = 0
    resumable = deliver is not DeliverPolicy.LAST_PER_SUBJECT
    first = DeliverPolicy.ALL if deliver is DeliverPolicy.BY_START_TIME and since is None else deliver

    async def attempt() -> None:
        nonlocal last_seq, seen
        config = ConsumerConfig(
            name=f"{name}-{secrets.token_hex(8)}",
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if last_seq else first,
            opt_start_seq=last_seq + 1 if last_seq else None,
            opt_start_time=since if not last_seq and first is DeliverPolicy.BY_START_TIME else None,
            # one filter goes in the create request's subject (`CONSUMER.CREATE.<stream>.<name>.<filter>`), where a
            # permission can name it: the node-local ingest may only read its own node's subject
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=list(filters) if len(filters) != 1 else None,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        info = await js.add_consumer(stream, config=config)
        consumer = info.name
        total = info.num_pending or 0
        got = _Pulled()
        try:
            if total:
                await _pull_range(
                    nc, f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}", total, on_msg, got, batch, idle_s, idle_limit
                )
                if got.handled < total and await _reader_pending(js, stream, consumer):
                    problem = f"the read of {stream} stopped at {got.handled} of {total} messages"
                    raise TimeoutError(problem)
        finally:
            # counted also when the read broke off: a retry resumes after the last message handled
            seen += got.handled
            if resumable and got.last is not None:
                last_seq = got.last.metadata.sequence.stream
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, consumer)

    await patiently(what or f"read of {stream}", attempt)
    return seen


class _Pulled:
    __slots__ = ("handled", "last")

    def __init__(self) -> None:
        self.handled = 0
        self.last: Msg | None = None  # the last message handled (its sequence parsed once, at the end)


async def _pull_range(
    nc: Client,
    next_subject: str,
    total: int,
    on_msg: Callable[[Msg], None],
    got: _Pulled,
    batch: int,
    idle_s: float,
    idle_limit: int,
) -> None:
    """Up to `total` messages of one consumer into `got`; stops early after `idle_limit` waits of `idle_s`
    with none."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_msgs_limit=0, pending_bytes_limit=0)
    queue = sub._pending_queue  # no callback: the messages wait here and are drained without an await each
    request = json.dumps({"batch": batch, "expires": int(5e9)}).encode()
    outstanding = 0
    asked = 0.0
    idle = 0
    try:
        while got.handled < total and idle < idle_limit:
            while outstanding < 2 * batch:
                await nc.publish(next_subject, request, reply=inbox)
                outstanding += batch
                asked = time.monotonic()
            if queue.empty():
                try:
                    pending = [await asyncio.wait_for(queue.get(), idle_s)]
                except TimeoutError:
                    idle += 1
                    if time.monotonic() - asked > 6.0:
                        outstanding = 0  # the requests expired unanswered (e.g. lost with a reconnect): ask again
                    continue
            else:
                pending = [queue.get_nowait()]
            while not queue.empty():
                pending.append(queue.get_nowait())
            before = got.handled
            for msg in pending:
                headers = msg.headers
                if headers is not None and "Status" in headers:
                    if headers["Status"] != "100":  # not an idle heartbeat: a request ended (408, 409, 404)
                        left = headers.get("Nats-Pending-Messages")
                        outstanding = max(0, outstanding - int(left)) if left else 0
                    continue
                outstanding -= 1
                on_msg(msg)
                got.handled += 1
                got.last = msg
            # only status answers (e.g. the consumer is gone): as idle as no answer, so the read ends and says so
            idle = 0 if got.handled > before else idle + 1
            await asyncio.sleep(0)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _reader_pending(js: JetStreamContext, stream: str, name: str) -> bool:
    """Whether a read that stopped short left messages behind: its consumer still has some pending, or
    the consumer is gone (a restarted server forgets a memory-stored ephemeral) and so is its position."""
    try:
        return bool((await js.consumer_info(stream, name)).num_pending)
    except NotFoundError:
        return True


DIRECT_BATCH_MAX = 1000
"""Subjects per direct-get request: the server answers at most 1024 messages to one `multi_last`."""


async def last_per_subject_up_to(
    nc: Client,
    stream: str,
    subjects: list[str],
    *,
    up_to_seq: int,
    api_prefix: str = "$JS.API",
    timeout_s: float = 5.0,
) -> dict[str, Msg]:
    """The last message of each of `subjects` stored at or before stream sequence `up_to_seq` (a subject
    with none is absent): JetStream's batched direct get (`multi_last` + `up_to_seq`, nats-server
    2.11+, the stream needs `allow_direct`), `DIRECT_BATCH_MAX` subjects a request. What a durable
    consumer had seen when its process died is the stream as of its ack floor, not its last message."""
    out: dict[str, Msg] = {}
    if up_to_seq <= 0 or not subjects:
        return out
    for start in range(0, len(subjects), DIRECT_BATCH_MAX):
        page = subjects[start : start + DIRECT_BATCH_MAX]
        done = asyncio.get_running_loop().create_future()
        got: list[Msg] = []

        async def collect(msg: Msg, got: list[Msg] = got, done: asyncio.Future[str] = done) -> None:
            status = (msg.headers or {}).get("Status")
            if status is None:
                got.append(msg)
            elif not done.done():
                done.set_result(status)  # 204: end of batch; 404: nothing stored up to that sequence

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=collect)
        try:
            request = {"multi_last": page, "up_to_seq": up_to_seq, "batch": len(page)}
            await nc.publish(f"{api_prefix}.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
            status = await asyncio.wait_for(done, timeout_s)
        finally:
            await sub.unsubscribe()
        if status not in ("204", "404"):
            problem = f"direct get of {len(page)} subjects on {stream} up to {up_to_seq} failed: status {status}"
            if status == "503":  # no responders / JetStream unavailable: a later try may work
                raise ServiceUnavailableError(code=503, description=problem)
            raise RuntimeError(problem)
        for item in got:
            subject = (item.headers or {}).get("Nats-Subject")
            if subject:
                out[subject] = item
    return out


KEYS_PAGE_MAX = 100_000
"""Subjects the server lists in one STREAM.INFO answer (nats-server's JSMaxSubjectDetails); more are paged."""


async def kv_keys(kv: KeyValue, *, pattern: str = ">", timeout_s: float = 5.0) -> list[str]:
    """The keys of bucket `kv` that match `pattern`, from the stream's own
    subject index: STREAM.INFO with a subjects filter, paged. Keys whose last entry is a delete or purge
    are listed too (a `get` of them raises KeyNotFoundError, as for a key deleted since the listing).

    Not nats-py's `KeyValue.keys()`: that one reads an ordered consumer and stops at the first "nothing
    pending" marker, which it also puts when the consumer's first message is still in flight to the
    client; under load it answered "no keys" for a bucket that had some (a diagnoser restart then lost
    the crash history it was meant to read back). The stream's subject index has no such window."""
    bucket: str = kv._name  # nats-py keeps the bucket name, context and API prefix private
    js: JetStreamContext = kv._js
    stream, head = f"KV_{bucket}", f"$KV.{bucket}."
    nc: Client = js._nc
    subject = f"{js._prefix}.STREAM.INFO.{stream}"
    keys: list[str] = []
    offset = 0
    while True:
        request = {"subjects_filter": head + pattern, "offset": offset}
        reply = json.loads((await nc.request(subject, json.dumps(request).encode(), timeout=timeout_s)).data)
        if "error" in reply:
            error = reply["error"]
            if error.get("err_code") == 10059:  # stream not found
                raise NotFoundError(code=404, err_code=10059, description=error.get("description"))
            problem = f"listing the keys of {bucket}: {error.get('description')} (code {error.get('err_code')})"
            if error.get("code") == 503:  # JetStream temporarily unavailable (no meta leader): worth another try
                raise ServiceUnavailableError(code=503, err_code=error.get("err_code"), description=problem)
            raise RuntimeError(problem)
        state = reply.get("state") or {}
        page = list((state.get("subjects") or {}).keys())
        keys.extend(s[len(head) :] for s in page)
        offset += len(page)
        total = int(reply.get("total") or state.get("num_subjects") or 0)
        if not page or offset >= total:
            return sorted(keys)
