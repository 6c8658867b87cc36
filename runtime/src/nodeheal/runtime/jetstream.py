"""JetStream helpers every service uses the same way: publish a model with a deterministic
`Nats-Msg-Id`, send rejected input to the DLQ with the reason and the raw bytes, and make sure a
service's durable pull consumer exists with the configuration we want."""

from __future__ import annotations

import logging
from typing import Protocol

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.subjects import DEFAULT_PREFIX, dlq_subject

log = logging.getLogger("nodeheal.runtime.jetstream")

MAX_DEAD_RAW = 64 * 1024


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
) -> PubAck:
    """Keep rejected input: the reason, where it came from and the raw bytes, on `<prefix>.dlq.<service>`.

    Bounded: at most `MAX_DEAD_RAW` bytes of the input, 2,000 characters of reason and 4,000 of
    headers are kept (the reason says when the input was cut), so a huge input still fits a NATS message.
    """
    if len(raw) > MAX_DEAD_RAW:
        reason = f"{reason} [input of {len(raw)} bytes, first {MAX_DEAD_RAW} kept]"
        raw = raw[:MAX_DEAD_RAW]
    if len(reason) > 2000:
        reason = reason[:2000] + "..."
    if headers and sum(len(k) + len(v) for k, v in headers.items()) > 4000:
        headers = {k[:100]: v[:200] for k, v in list(headers.items())[:20]}
    letter = DeadLetter.of(service=service, reason=reason, raw=raw, subject=subject, headers=headers)
    log.warning("dead-lettered input", extra={"service": service, "reason": reason, "subject": subject})
    return await js.publish(
        dlq_subject(service, prefix=prefix), letter.to_json(), headers={"Nats-Msg-Id": letter.id}, timeout=timeout_s
    )


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
) -> None:
    """Create the durable if it is missing; re-issue the editable fields if it exists (nats-py's
    `pull_subscribe` silently keeps an existing durable's old configuration)."""
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
        await js.add_consumer(stream, config=config)
        return
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
        return
    if (
        round((current.ack_wait or 0) * 1e3) != round(ack_wait_s * 1e3)
        or current.max_deliver != max_deliver
        or current.max_ack_pending != max_ack_pending
        or sorted(current.filter_subjects or ([current.filter_subject] if current.filter_subject else []))
        != sorted(filter_subjects or [])
    ):
        config.deliver_policy = current.deliver_policy
        config.ack_policy = current.ack_policy
        await js.add_consumer(stream, config=config)
