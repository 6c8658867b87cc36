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
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.msg import Msg
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


def _stored(stream: str, msg: Msg) -> tuple[StoredMessage, int]:
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
) -> AsyncGenerator[StoredMessage, None]:
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
            _say_still_trying(stream, tries, exc)


def _say_still_trying(what: str, tries: int, exc: Exception) -> None:
    if tries == REOPEN_WARN_S or (tries > REOPEN_WARN_S and tries % 60 == 0):
        sys.stderr.write(
            f"still trying to read {what} again after {tries} s ({exc!r}); "
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


ACK_SEND_TURNS = 8
"""At most this many turns of the event loop are given to the client's flusher after an acknowledgement."""

DURABLE_BATCH = 32
"""Messages a durable read fetches at a time. Each is acknowledged after it was handed on; what was fetched and
not handed on is given back (nak) when the read ends, but a small batch also keeps a slow stdout (a paused
pager) from holding many messages past the consumer's ack wait, after which the server redelivers them."""

HELD_MARGIN_S = 5.0
"""A bounded durable read whose only remaining messages are delivered to another reader (not yet acknowledged)
waits for them the consumer's ack wait plus this, then ends and says so."""

OWN_ACKS_CHECKS = 4
OWN_ACKS_PAUSE_S = 0.02
"""At a bounded read's end, what consumer info counts as delivered and unacknowledged is asked again up to
OWN_ACKS_CHECKS times (after a round trip and 20, 40, 60, 80 ms) before it is taken for another reader's."""

_CONSUMER_NOT_FOUND = 10014
"""JetStream's error code for "consumer not found" (a 404 with the stream still there)."""


async def read_durable(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    subjects: list[str],
    since: datetime | None = None,
    follow: bool = False,
    batch: int = DURABLE_BATCH,
    ack_send_turns: int = ACK_SEND_TURNS,
    own_acks_checks: int = OWN_ACKS_CHECKS,
) -> AsyncGenerator[StoredMessage, None]:
    """Like `read_stream`, through a named durable pull consumer that remembers what was acknowledged:
    the next run starts after the last message this one yielded. `since` only applies when the durable
    is created.

    A message is acknowledged once it was yielded (when the caller asks for the next one, or when the read
    is closed after it); every message fetched and not yet yielded is given back (nak) when the read ends,
    however it ends (the caller's `break`, a cancellation, an error), so the next read starts with it, in
    order. A caller that could not use the message just yielded (its stdout closed) throws the error into
    the read (`athrow`): that message is given back too. Close the generator before the connection
    (`contextlib.aclosing`), or the give-back cannot be sent.

    Without `follow` the read ends when the durable has nothing left: nothing pending and nothing delivered
    and unacknowledged (`num_pending + num_ack_pending == 0`). Messages another reader of the same durable
    holds unacknowledged are waited for (they come back to this read when that reader naks them or lets
    the ack wait pass) up to the consumer's ack wait plus `HELD_MARGIN_S`, said on stderr; then the read ends,
    saying how many it did not get. With `follow`, a lost connection or consumer leader (server restart, leader
    election) is retried once a second, said on stderr after `REOPEN_WARN_S`; the durable keeps the position.

    `ack_send_turns` (`ACK_SEND_TURNS`) and `own_acks_checks` (`OWN_ACKS_CHECKS`): 0 turns leaves the
    acknowledgements to the client's flusher, 0 checks takes what looks held at the end for another reader's
    at once (how the read was before; `nodeheal bench audit-read` measures both against the defaults)."""
    await _ensure_durable(js, stream=stream, durable=durable, subjects=subjects, since=since)
    psub = await js.pull_subscribe_bind(durable, stream)
    fetched: deque[Msg] = deque()  # fetched, not yet yielded: given back at the end
    taken: Msg | None = None  # yielded, not yet acknowledged: acknowledged at the end
    held_until: float | None = None  # (bounded read) when to stop waiting for messages another reader holds
    held_reported = False
    checks = 0  # consumer info asked again while what looks held may be our own acks in flight
    nc: Any = getattr(js, "_nc", None)  # the client under `js` (nats-py keeps it private): its flusher, a round trip
    try:
        while True:
            try:
                cinfo = await js.consumer_info(stream, durable)
            except NotFoundError as exc:
                raise _gone(exc, stream=stream, durable=durable) from exc
            except Exception as exc:
                if not follow:
                    raise
                stop_if_ending(js, exc)
                psub = await _rebind(js, psub, stream=stream, durable=durable)
                continue
            timeout = 5.0 if follow else STALL_TIMEOUT_S
            waiting_for_held = False
            if not follow:
                pending, held = cinfo.num_pending or 0, cinfo.num_ack_pending or 0
                if pending + held == 0:
                    return
                if pending == 0 and checks < own_acks_checks:
                    # our own last acknowledgements may not be counted yet: the server applies them apart from
                    # answering consumer info. Before, a read's end then waited 5 s on "records delivered to
                    # another reader" that were its own. A round trip, a short pause, and ask again
                    checks += 1
                    if nc is not None and nc.is_connected:
                        # a lost connection is for the next consumer info to say, not this courtesy round trip
                        with contextlib.suppress(Exception):
                            await nc.flush(timeout=2)
                    await asyncio.sleep(OWN_ACKS_PAUSE_S * checks)
                    continue
                if pending == 0:  # only delivered-and-unacknowledged ones left: ours (given back) or another's
                    waiting_for_held = True
                    now = asyncio.get_running_loop().time()
                    if held_until is None:
                        held_until = now + (cinfo.config.ack_wait or 30.0) + HELD_MARGIN_S
                    if now >= held_until:
                        sys.stderr.write(
                            f"stopped with {held} records of durable {durable} on {stream} delivered to another "
                            "reader and not acknowledged; they were not printed (nats consumer info)\n"
                        )
                        return
                    timeout = min(5.0, max(held_until - now, 0.5))
            try:
                msgs = await psub.fetch(batch, timeout=timeout)
            except (TimeoutError, NatsTimeoutError):
                stop_if_cancelled()
                if follow:
                    continue
                if waiting_for_held:
                    if not held_reported:
                        held_reported = True
                        sys.stderr.write(
                            f"{held} records of durable {durable} on {stream} are delivered to another reader and "
                            f"not acknowledged; waiting for them up to {cinfo.config.ack_wait or 30.0:.0f} s\n"
                        )
                    continue
                raise RuntimeError(
                    f"durable {durable} on {stream} delivered nothing for {STALL_TIMEOUT_S:.0f} s while "
                    "messages were pending; check `nats consumer info` and retry"
                ) from None
            except Exception as exc:
                if not follow:
                    raise
                stop_if_ending(js, exc)
                psub = await _rebind(js, psub, stream=stream, durable=durable)
                continue
            fetched.extend(msgs)
            checks = 0
            stop_if_cancelled()
            while fetched:
                taken = fetched.popleft()
                stored, _pending = _stored(stream, taken)
                try:
                    yield stored
                except GeneratorExit:
                    raise
                except BaseException:  # thrown in by the caller (`athrow`): it could not use this one
                    fetched.appendleft(taken)
                    taken = None
                    raise
                await taken.ack()
                taken = None
                await _acks_sent(nc, ack_send_turns)
                held_until = None  # progress: a new wait for held messages starts from here
                stop_if_cancelled()  # Ctrl-C: the rest of the batch is given back, not printed
    finally:
        if taken is not None:  # the caller got it and stopped (a break): it counts as read
            with contextlib.suppress(Exception):
                await taken.ack()
        await _give_back(js, psub, fetched)


DURABLE_MARK = "nodeheal read_durable"
"""The description of every durable `read_durable` creates: a durable without it is someone else's."""


class ForeignDurableError(RuntimeError):
    """`--durable NAME` names a durable this command did not create (a service's own, most likely)."""


def _foreign(config: ConsumerConfig) -> bool:
    """Is this durable not one `read_durable` made? Ours carry `DURABLE_MARK`; one made before the mark existed
    has no description, explicit acks and no delivery limit. The services' durables all set `max_deliver`
    (dead letters after it) and deliver into their own handlers: reading one would take its records from it."""
    if config.description == DURABLE_MARK:
        return False
    legacy = not config.description and config.ack_policy == AckPolicy.EXPLICIT and config.max_deliver in (None, -1)
    return not legacy


async def _ensure_durable(
    js: JetStreamContext, *, stream: str, durable: str, subjects: list[str], since: datetime | None
) -> None:
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        config = _config(subjects=subjects, since=since)
        config.durable_name = durable
        config.ack_policy = AckPolicy.EXPLICIT
        config.description = DURABLE_MARK
        if len(subjects) == 1:
            config.filter_subject = subjects[0]
        await js.add_consumer(stream, config=config)
        return
    if _foreign(info.config):
        raise ForeignDurableError(
            f"durable {durable!r} on {stream} was not made by this command (description "
            f"{info.config.description or 'none'}, max_deliver {info.config.max_deliver}): it is another "
            "consumer's — a service's own durable would lose its records to this read. Pass another --durable NAME "
            "(a new name starts a new subscriber; add --since to choose where)"
        )


def _gone(exc: NotFoundError, *, stream: str, durable: str) -> Exception:
    """A durable deleted under a read ends it with that said (not as a missing stream)."""
    if exc.err_code == _CONSUMER_NOT_FOUND:
        return RuntimeError(f"durable {durable} on {stream} no longer exists (deleted?); run again to create it anew")
    return exc


async def _acks_sent(nc: Any, turns: int) -> None:
    """Let the client's flusher hand what it holds (the acknowledgement just made) to the socket before the
    next message is yielded. nats-py buffers a publish and writes it from its flusher task, which runs only
    when the event loop does: a caller that prints a whole batch without waiting (stdout is blocking) kept
    every acknowledgement of the batch in the buffer, and a SIGKILL then lost them (the next run printed
    those records again). The flusher is woken by the ack; one turn of the loop runs it (a few more if
    other tasks are ahead of it; at most `turns`, never a wait). `nc` is the client under the read's JetStream
    context."""
    for _ in range(turns):
        if nc is None or not nc.is_connected or nc.pending_data_size == 0:
            return
        await asyncio.sleep(0)


async def _give_back(js: JetStreamContext, psub: JetStreamContext.PullSubscription, fetched: deque[Msg]) -> None:
    """Nak, in order, every message fetched and not yielded, and whatever reached the subscription after its
    last fetch (a pull that was still open), then unsubscribe: the server redelivers them to the next read at
    once instead of after the ack wait. Best effort: on a lost connection they come back after the ack wait.
    A round trip first: what the server sent for a pull cut short (a stop mid-fetch) reaches the queue before
    the unsubscribe, instead of being dropped here and held by the server for the ack wait."""
    nc = getattr(js, "_nc", None)
    stopping = False
    if nc is not None and nc.is_connected:
        try:
            await nc.flush(timeout=2)
        except asyncio.CancelledError:
            # a stop requested while the task was busy (Ctrl-C during a blocked print) lands at the first real
            # wait, this one: give back first, then go on stopping
            stopping = True
        except Exception:  # noqa: S110 - best effort, as below
            pass
    queue = getattr(getattr(psub, "_sub", None), "_pending_queue", None)
    while queue is not None and not queue.empty():
        late = queue.get_nowait()
        if isinstance(late, Msg) and late.reply and not JetStreamContext.is_status_msg(late):
            fetched.append(late)
    with contextlib.suppress(Exception):
        await psub.unsubscribe()
    while fetched:
        msg = fetched.popleft()
        with contextlib.suppress(Exception):
            await msg.nak()
    if nc is not None and nc.is_connected:
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
    if stopping:
        raise asyncio.CancelledError


async def _rebind(
    js: JetStreamContext, psub: JetStreamContext.PullSubscription, *, stream: str, durable: str
) -> JetStreamContext.PullSubscription:
    """(following durable read) once a second until the server answers for the durable again (a restart, a new
    leader), then a new pull subscription on it; said on stderr after `REOPEN_WARN_S` and every minute after.
    A deleted durable or stream ends the read."""
    await _give_back(js, psub, deque())
    tries = 0
    while True:
        await asyncio.sleep(1.0)
        tries += 1
        try:
            await js.consumer_info(stream, durable)
            return await js.pull_subscribe_bind(durable, stream)
        except NotFoundError as exc:
            raise _gone(exc, stream=stream, durable=durable) from exc
        except Exception as exc:  # the server is not back yet, or has no leader for it yet: retried, and said
            stop_if_ending(js, exc)
            log.debug("durable not reachable yet", extra={"stream": stream, "error": repr(exc)})
            _say_still_trying(f"durable {durable} on {stream}", tries, exc)
