"""What `dead_letter` keeps is bounded: a source over its rate limit is counted, not stored (another
source is not affected), and a huge rejected input keeps only its first MAX_RAW_BYTES."""

from __future__ import annotations

import prometheus_client
import pytest
from nats.js.client import JetStreamContext

from nodeheal.runtime.jetstream import DeadLetterLimiter, dead_letter, message_origin
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.dlq import MAX_RAW_BYTES, DeadLetter
from nodeheal.schemas.subjects import dlq_subject

pytestmark = pytest.mark.nats


def dropped() -> float:
    value = prometheus_client.REGISTRY.get_sample_value("nodeheal_dlq_rate_limited_total", {"service": "limits-test"})
    return value or 0.0


async def stored(js: JetStreamContext, settings: NatsSettings) -> int:
    return int((await js.stream_info(f"{settings.stream_prefix}DLQ")).state.messages)


async def test_one_source_over_its_rate_is_dropped_and_counted_others_are_kept(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    now = [0.0]
    limiter = DeadLetterLimiter(rate_per_s=1.0, burst=5.0, clock=lambda: now[0])
    dropped_before = dropped()

    async def letter(raw: bytes, subject: str) -> object:
        return await dead_letter(
            js,
            service="limits-test",
            reason="bad",
            raw=raw,
            subject=subject,
            prefix=topology_ready.prefix,
            limiter=limiter,
        )

    kept = [await letter(b"x", "flood") for _ in range(20)]
    assert sum(ack is not None for ack in kept) == 5  # the burst
    assert dropped() == dropped_before + 15
    other = await letter(b"y", "quiet")
    assert other is not None  # per source: the flood does not silence another sender
    now[0] += 2.0  # two tokens back
    later = [await letter(b"x", "flood") for _ in range(3)]
    assert sum(ack is not None for ack in later) == 2
    assert await stored(js, topology_ready) == 5 + 1 + 2


async def test_a_huge_rejected_input_keeps_its_head_and_its_size(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    raw = bytes(range(256)) * (MAX_RAW_BYTES // 256 * 3)
    ack = await dead_letter(
        js, service="limits-test", reason="too big", raw=raw, subject="big", prefix=topology_ready.prefix, limiter=None
    )
    assert ack is not None
    msg = await js.get_last_msg(
        f"{topology_ready.stream_prefix}DLQ", dlq_subject("limits-test", prefix=topology_ready.prefix)
    )
    letter = DeadLetter.model_validate_json(msg.data)
    assert letter.raw == raw[:MAX_RAW_BYTES]
    assert letter.raw_size == len(raw)


async def test_the_same_message_dead_lettered_again_is_stored_once(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """A message rejected on two deliveries (a crash between the DLQ write and the ack, or a re-send after a
    DLQ write failed) names the same origin, its stream and sequence: the DLQ keeps one letter. Another
    message with the same bytes (another origin) is its own letter."""
    prefix = topology_ready.prefix
    subject = f"{prefix}.probe.c1.n1"
    await js.publish(subject, b"\xff not json")
    sub = await js.pull_subscribe(subject, durable="dlq-origin")
    (first,) = await sub.fetch(1, timeout=5)
    await first.nak()
    (again,) = await sub.fetch(1, timeout=5)
    assert again.metadata.num_delivered == 2
    origins = {message_origin(first.reply), message_origin(again.reply)}
    assert origins == {f"{topology_ready.stream_prefix}PROBES:1"}
    for msg in (first, again):
        await dead_letter(
            js,
            service="limits-test",
            reason="bad",
            raw=msg.data,
            subject=msg.subject,
            prefix=prefix,
            origin=message_origin(msg.reply),
            limiter=None,
        )
    await dead_letter(
        js,
        service="limits-test",
        reason="bad",
        raw=b"\xff not json",
        subject=subject,
        prefix=prefix,
        origin=f"{topology_ready.stream_prefix}PROBES:2",
        limiter=None,
    )
    assert await stored(js, topology_ready) == 2


def test_the_origin_of_a_message_comes_from_either_form_of_its_ack_subject() -> None:
    assert message_origin("$JS.ACK.PROBES.det.3.41.17.1700000000000000000.0") == "PROBES:41"
    assert message_origin("$JS.ACK.hub.ACCHASH.PROBES.det.3.41.17.1700000000000000000.0.rnd") == "PROBES:41"
    assert message_origin("_INBOX.abc.1") is None
    assert message_origin(None) is None
