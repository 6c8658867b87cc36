"""`nodeheal.runtime.jetstream.follow_stream`, the services' followers (the remediator's CLOUD and DIAGNOSES
views, the consumer runtime's `follow`): cancelled, a follower ends, even when the cancellation lands in
the loop turn in which a message reaches it."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from nodeheal.runtime.jetstream import follow_stream
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.subjects import anomaly_subject
from tests.support.broker import cancel_as_data_arrives

pytestmark = pytest.mark.nats


async def test_a_follower_cancelled_as_a_message_arrives_still_ends(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """Before, Python 3.11's `wait_for` inside nats-py's `fetch` handed the follower the message and dropped
    the cancellation (CPython gh-86296): the follower fetched again and again; a service's stop gave up on
    it after 5 s (`ConsumerRuntime.stop`) and it went on reading until the process ended."""
    reader_nc = await nats.connect(topology_ready.url)
    reader_js = reader_nc.jetstream()
    task: asyncio.Task[None] | None = None
    cancel_as_data_arrives(reader_js, lambda: task)
    got: list[Msg] = []
    subject = anomaly_subject("c1", "n1", prefix=topology_ready.prefix)
    task = asyncio.create_task(
        follow_stream(
            reader_js, stream=f"{topology_ready.stream_prefix}ANOMALIES", subject=subject, start=None, on_msg=got.append
        )
    )
    try:
        await asyncio.sleep(1.0)  # waiting in a fetch on an empty stream
        await js.publish(subject, b"one")
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=15)
    finally:
        await reader_nc.close()
    assert task.cancelled()


async def test_a_follower_whose_connection_closes_ends(topology_ready: NatsSettings) -> None:
    """nats-py turns the cancellation of a fetch on a closing connection into `ConnectionClosedError`, which the
    follower took for a lost reader and retried for good; now a closed connection ends it."""
    reader_nc = await nats.connect(topology_ready.url)
    reader_js = reader_nc.jetstream()
    subject = anomaly_subject("c1", "n1", prefix=topology_ready.prefix)
    task = asyncio.create_task(
        follow_stream(
            reader_js, stream=f"{topology_ready.stream_prefix}ANOMALIES", subject=subject, start=None, on_msg=print
        )
    )
    await asyncio.sleep(1.0)  # waiting in a fetch on an empty stream
    await reader_nc.close()
    await asyncio.wait({task}, timeout=15)
    assert task.done(), "the follower went on after its connection closed"
    assert isinstance(task.exception(), Exception)
