"""`nodeheal.runtime.jetstream.read_stream`, the remediator's read of a node's AUDIT history: all the messages
through the sequence asked for, or an error — never a part of them taken for the whole. On a real nats-server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

from nodeheal.runtime.jetstream import IncompleteReadError, read_stream
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.subjects import audit_subject

pytestmark = pytest.mark.nats


def time_out_first_fetch(js: JetStreamContext) -> list[int]:
    """The first fetch of each reader `js` opens raises what nats-py's `fetch` raises when nothing came within
    its timeout (a server recovering from a restart, a slow read); later fetches are real. Returns the count of
    fetches made to time out."""
    timed_out: list[int] = []
    subscribe = js.pull_subscribe

    async def observed(*args: object, **kwargs: object) -> JetStreamContext.PullSubscription:
        sub = await subscribe(*args, **kwargs)  # type: ignore[arg-type]
        fetch = sub.fetch
        first = [True]

        async def late(*a: object, **kw: object) -> object:
            if first[0]:
                first[0] = False
                timed_out.append(1)
                raise NatsTimeoutError
            return await fetch(*a, **kw)  # type: ignore[arg-type]

        sub.fetch = late  # type: ignore[method-assign]
        return sub

    js.pull_subscribe = observed  # type: ignore[method-assign]
    return timed_out


async def _publish(js: JetStreamContext, subject: str, n: int) -> int:
    last = 0
    for i in range(n):
        last = (await js.publish(subject, f"record {i}".encode())).seq
    return last


async def test_a_fetch_that_times_out_before_the_last_sequence_raises(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """Before, the read returned what it had on its first fetch time-out (here nothing) as if it were all."""
    stream = f"{topology_ready.stream_prefix}AUDIT"
    subject = audit_subject("c1", "n1", prefix=topology_ready.prefix)
    last = await _publish(js, subject, 3)
    timed_out = time_out_first_fetch(js)
    with pytest.raises(IncompleteReadError, match="after 0 of 3 messages"):
        await read_stream(js, stream=stream, subject=subject, start=None, through_seq=last)
    assert timed_out == [1]


async def test_the_whole_history_and_an_empty_window_are_read(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """Through `through_seq`: every message; from a start after the last message: nothing, at once (the reader
    has none pending), without a fetch that waits for nothing."""
    stream = f"{topology_ready.stream_prefix}AUDIT"
    subject = audit_subject("c1", "n2", prefix=topology_ready.prefix)
    last = await _publish(js, subject, 3)
    msgs = await read_stream(js, stream=stream, subject=subject, start=None, through_seq=last)
    assert [m.data for m in msgs] == [b"record 0", b"record 1", b"record 2"]
    timed_out = time_out_first_fetch(js)
    later = datetime.now(tz=UTC) + timedelta(minutes=1)
    assert await read_stream(js, stream=stream, subject=subject, start=later, through_seq=last) == []
    assert timed_out == []  # nothing pending: no fetch made
