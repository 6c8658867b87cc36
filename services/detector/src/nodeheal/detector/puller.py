"""A batch puller for a JetStream pull consumer on raw nats-py, without a per-message await.

nats-py's `fetch()` awaits `next_msg()` per message, and `next_msg()` creates a task, a uuid and a
`wait_for` each time: tens of microseconds per message, more than the whole budget of the probe
path. This puller sends the pull requests itself (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`,
two batches in flight so the server never waits for us) to an inbox subscription without a
callback, awaits once for the first message of a chunk and then drains the subscription's queue
synchronously. Status messages (408 request expired, 409, 404) end a request; heartbeats are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError

STATUS_HDR = "Status"
ACK_TAIL = b" 4\r\n+ACK\r\n"
"""The rest of a `PUB <reply> 4` command carrying a JetStream `+ACK`."""


def stream_seq(reply: str) -> int | None:
    """The stream sequence of a JetStream message from its ack subject
    (`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<stored ns>.<pending>`, or the form with domain and
    account hash after `ACK`); None when the subject is not a JetStream ack subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        seq = tokens[5]
    elif len(tokens) >= 11:
        seq = tokens[7]
    else:
        return None
    return int(seq) if seq.isdigit() else None


def ack_sequences(reply: str) -> tuple[int, int, int] | None:
    """(delivery count, stream sequence, consumer sequence) of a JetStream message from its ack subject;
    None when the subject is not a JetStream ack subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        found = tokens[4:7]
    elif len(tokens) >= 11:
        found = tokens[6:9]
    else:
        return None
    if not all(t.isdigit() for t in found):
        return None
    return int(found[0]), int(found[1]), int(found[2])


def highest(msgs: Sequence[PulledMsg]) -> PulledMsg | None:
    """The message of the highest stream sequence (a redelivered one may come after a newer one)."""
    best: PulledMsg | None = None
    top = -1
    for msg in msgs:
        seq = stream_seq(msg.reply) if msg.reply else None
        if seq is not None and seq > top:
            best, top = msg, seq
    return best


class PulledMsg(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def reply(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, str] | None: ...


class Puller(Protocol):
    """What the probe loop needs from a puller."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def next_chunk(self, *, wait_s: float) -> Sequence[PulledMsg]: ...
    async def ack_all_through(self, msg: Any) -> None: ...
    async def ack_each(self, msgs: Sequence[Any]) -> None: ...


PENDING_HDR = "Nats-Pending-Messages"


class BatchPuller:
    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        consumer: str,
        batch: int = 1000,
        expires_s: float = 5.0,
        api_prefix: str = "$JS.API",
    ) -> None:
        self._nc = nc
        self.stream = stream
        self.consumer = consumer
        self.batch = batch
        self.expires_s = expires_s
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._sub: Subscription | None = None
        self._inbox = ""
        self._outstanding = 0
        self._last_activity = 0.0
        self.delivered = 0

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        # No callback: messages wait in the subscription's queue for `next_chunk` to drain them.
        # No pending limits: the pull requests bound what can be in flight.
        self._sub = await self._nc.subscribe(self._inbox, pending_msgs_limit=0, pending_bytes_limit=0)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _request(self) -> None:
        body = json.dumps({"batch": self.batch, "expires": int(self.expires_s * 1e9)}).encode()
        await self._nc.publish(self._next_subject, body, reply=self._inbox)
        self._outstanding += self.batch
        self._last_activity = time.monotonic()

    async def next_chunk(self, *, wait_s: float) -> list[Msg]:
        """The data messages that arrived (at least one), or [] after `wait_s` without any."""
        sub = self._sub
        assert sub is not None, "call start() first"
        # Keep two batches requested: while we process one, the server sends the next.
        while self._outstanding < 2 * self.batch:
            await self._request()
        queue = sub._pending_queue
        if queue.empty():
            try:
                first = await asyncio.wait_for(queue.get(), wait_s)
            except TimeoutError:
                if time.monotonic() - self._last_activity > self.expires_s + 1.0:
                    # Our requests expired without a status (e.g. a reconnect lost them): ask again.
                    self._outstanding = 0
                return []
            pending = [first]
        else:
            pending = [queue.get_nowait()]
        get = queue.get_nowait
        while not queue.empty():
            pending.append(get())
        out: list[Msg] = []
        append = out.append
        for msg in pending:
            hdr = msg.headers
            if hdr is not None and STATUS_HDR in hdr:
                status = hdr[STATUS_HDR]
                if status == "100":
                    continue  # idle heartbeat
                left = hdr.get(PENDING_HDR)
                self._outstanding = max(0, self._outstanding - int(left)) if left else 0
                continue
            append(msg)
        self._outstanding -= len(out)
        if self._outstanding < 0:
            self._outstanding = 0
        self.delivered += len(out)
        self._last_activity = time.monotonic()
        return out

    async def ack_all_through(self, msg: Msg) -> None:
        """AckPolicy.ALL: acknowledging this message acknowledges everything delivered before it."""
        if msg.reply:
            await self._nc.publish(msg.reply, b"+ACK")

    async def ack_each(self, msgs: Sequence[Msg]) -> None:
        """AckPolicy.EXPLICIT: one `+ACK` per message, exactly the ones given.

        The acks of a chunk are one write: the `PUB <reply> 4` commands are built here and handed to the
        client's outgoing buffer together (what `publish` does per message, without its per-call checks,
        header handling and flush kick, ~4 µs each: a tenth of the probe path's budget)."""
        nc = self._nc
        if nc.is_closed:
            raise ConnectionClosedError
        acks = [b"PUB " + msg.reply.encode() + ACK_TAIL for msg in msgs if msg.reply]
        if not acks:
            return
        nc.stats["out_msgs"] += len(acks)
        nc.stats["out_bytes"] += len(acks) * 4
        await nc._send_command(b"".join(acks))
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
