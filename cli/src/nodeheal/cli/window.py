"""Reading a time window of a stream, for `nodeheal replay` and `nodeheal audit tail`.

Read-only: this module creates named ephemeral pull consumers (or, when asked, one named durable) and
never publishes. It knows when a bounded read is done from the server's own counters (the consumer's
`num_pending` when it is created, then each message's `num_pending`), so an empty stream or an empty
window ends at once instead of after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from nodeheal.runtime.jetstream import close_reader, reader_config, stop_if_cancelled, stop_if_ending

log = logging.getLogger(__name__)

STALL_TIMEOUT_S = 30.0
"""A bounded read that receives nothing for this long while the server says messages are pending fails
(with what to check) instead of hanging."""

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_time(value: str, *, now: datetime) -> datetime:
    """`2026-03-01T12:00:00Z`, `2026-03-01 12:00` (UTC assumed), or a duration back from now: `90s`, `15m`,
    `2h`, `7d`, `1w`; `now` is now."""
    text = value.strip()
    if text == "now":
        return now
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        msg = (
            f"cannot read the time {value!r}: give an ISO time like 2026-03-01T12:00:00Z "
            "or a duration back from now like 15m, 2h, 7d"
        )
        raise ValueError(msg) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as the stream stored it."""

    stream: str
    seq: int
    stored_at: datetime
    subject: str
    data: bytes
    headers: dict[str, str] | None


def _config(*, subjects: list[str], since: datetime | None) -> ConsumerConfig:
    config = ConsumerConfig()
    if since is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = since.astimezone(UTC)
    else:
        config.deliver_policy = DeliverPolicy.ALL
    if len(subjects) > 1:
        config.filter_subjects = subjects
    return config


def _stored(stream: str, msg: object) -> tuple[StoredMessage, int]:
    from nats.aio.msg import Msg

    assert isinstance(msg, Msg)
    meta = msg.metadata
    stored = StoredMessage(
        stream=stream,
        seq=meta.sequence.stream,
        stored_at=meta.timestamp.astimezone(UTC),
        subject=msg.subject,
        data=msg.data,
        headers=dict(msg.headers) if msg.headers else None,
    )
    return stored, meta.num_pending


async def read_stream(
    js: JetStreamContext,
    *,
    stream: str,
    subjects: list[str],
    since: datetime | None = None,
    until: datetime | None = None,
    follow: bool = False,
    on_total: Callable[[int], None] | None = None,
    batch: int = 256,
) -> AsyncIterator[StoredMessage]:
    """Yield the stored messages of `subjects` from `since` (stream time) on, in stream order.

    Without `follow` it ends at `until` (stream time) or at the end of the stream as it was when the
    read began, whichever comes first. `on_total` is told how many messages the window may hold (for a
    progress bar).

    Through a named ephemeral pull consumer (no acks, memory-stored, deleted when the read ends; the server
    drops it 120 s after its last pull if this process dies; `runtime.jetstream.reader_config`): named,
    because the NATS permission matrix refuses the legacy server-named create that nats-py's ordered
    consumers use, so the read-only `reader` role can run it (deploy/nats/natsauth.py). With `follow`, a lost
    consumer (server restart) is recreated from the next stream sequence: nothing is skipped or printed twice.
    """
    if not subjects:
        return
    info = await js.stream_info(stream)
    if not follow and info.state.messages == 0:
        if on_total:
            on_total(0)
        return
    next_seq = 0
    sub = await _open_reader(js, stream=stream, subjects=subjects, since=since, next_seq=next_seq)
    try:
        cinfo = await sub.consumer_info()
        total = cinfo.num_pending or 0
        if on_total:
            on_total(total)
        if not follow and total == 0:
            return
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=5.0 if follow else STALL_TIMEOUT_S)
            except (TimeoutError, NatsTimeoutError):
                if follow:
                    stop_if_cancelled()
                    continue
                msg_ = (
                    f"stream {stream} stopped delivering for {STALL_TIMEOUT_S:.0f} s while messages were pending; "
                    "check the server (nats stream info) and retry"
                )
                raise RuntimeError(msg_) from None
            except Exception as exc:
                if not follow:
                    raise
                stop_if_ending(js, exc)
                # the consumer is gone (server restart, inactivity): a new one from where this one stopped
                await close_reader(js, sub)
                sub = await _reopen(js, stream=stream, subjects=subjects, since=since, next_seq=next_seq)
                continue
            stop_if_cancelled()  # a cancellation that met a delivery was dropped by the fetch (gh-86296)
            for msg in msgs:
                stored, pending = _stored(stream, msg)
                next_seq = stored.seq + 1
                if until is not None and not follow and stored.stored_at > until:
                    return
                yield stored
                if not follow and pending == 0:
                    return
    finally:
        await close_reader(js, sub)


async def _reopen(
    js: JetStreamContext, *, stream: str, subjects: list[str], since: datetime | None, next_seq: int
) -> JetStreamContext.PullSubscription:
    """A new reader from `next_seq`, tried once a second until the server takes it (a following read
    outlives a server restart). A stream that is gone ends the read (`NotFoundError`); anything else is
    said on stderr after `REOPEN_WARN_S` and every minute after, so a revoked permission does not look like
    a quiet stream."""
    tries = 0
    while True:
        await asyncio.sleep(1.0)
        tries += 1
        try:
            return await _open_reader(js, stream=stream, subjects=subjects, since=since, next_seq=next_seq)
        except NotFoundError:
            raise
        except Exception as exc:  # the server is not back yet, or refuses (permissions): retried, and said
            stop_if_ending(js, exc)
            log.debug("stream reader not recreated yet", extra={"stream": stream, "error": repr(exc)})
            if tries == REOPEN_WARN_S or (tries > REOPEN_WARN_S and tries % 60 == 0):
                sys.stderr.write(
                    f"still trying to read {stream} again after {tries} s ({exc!r}); "
                    "check the server and this user's permissions\n"
                )


REOPEN_WARN_S = 30
"""A following read that cannot recreate its reader says so on stderr after this many seconds."""


async def _open_reader(
    js: JetStreamContext, *, stream: str, subjects: list[str], since: datetime | None, next_seq: int
) -> JetStreamContext.PullSubscription:
    """The services' reader (`runtime.jetstream.reader_config`), on one subject or several."""
    config = reader_config(since.astimezone(UTC) if since is not None else None, next_seq)
    if len(subjects) > 1:
        config.filter_subjects = subjects
    return await js.pull_subscribe(subjects[0], durable=None, stream=stream, config=config)


async def read_durable(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    subjects: list[str],
    since: datetime | None = None,
    follow: bool = False,
    batch: int = 256,
) -> AsyncIterator[StoredMessage]:
    """Like `read_stream`, through a named durable pull consumer that remembers what was acknowledged:
    the next run starts after the last message this one yielded. `since` only applies when the durable
    is created."""
    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:
        config = _config(subjects=subjects, since=since)
        config.durable_name = durable
        config.ack_policy = AckPolicy.EXPLICIT
        if len(subjects) == 1:
            config.filter_subject = subjects[0]
        await js.add_consumer(stream, config=config)
    psub = await js.pull_subscribe_bind(durable, stream)
    try:
        while True:
            cinfo = await js.consumer_info(stream, durable)
            if not follow and (cinfo.num_pending or 0) == 0:
                return
            try:
                msgs = await psub.fetch(batch, timeout=5.0 if follow else STALL_TIMEOUT_S)
            except (TimeoutError, NatsTimeoutError):
                if follow:
                    stop_if_cancelled()
                    continue
                raise RuntimeError(
                    f"durable {durable} on {stream} delivered nothing for {STALL_TIMEOUT_S:.0f} s while "
                    "messages were pending; check `nats consumer info` and retry"
                ) from None
            stop_if_cancelled()
            for m in msgs:
                stored, _pending = _stored(stream, m)
                yield stored
                await m.ack()
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
