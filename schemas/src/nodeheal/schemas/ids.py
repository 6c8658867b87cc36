"""Identifiers: NewTypes for the domain's names and the two kinds of message id.

`new_id()` gives a unique id that sorts by creation time (48-bit milliseconds + 80 random bits,
Crockford base32, like a ULID). `deterministic_id()` gives the same id for the same parts, which is
what `Nats-Msg-Id` deduplication and idempotent handlers key on. This module must never depend on
the transport.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import NewType

NodeName = NewType("NodeName", str)
ClusterName = NewType("ClusterName", str)
InstanceId = NewType("InstanceId", str)
MessageId = NewType("MessageId", str)
ActionId = NewType("ActionId", str)
AnomalyId = NewType("AnomalyId", str)
DiagnosisId = NewType("DiagnosisId", str)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
"""Two Crockford characters for each 10-bit value: half the steps of one character at a time."""
_RAND_SHIFTS = tuple(range(70, -1, -10))
"""80 random bits as eight 10-bit groups, most significant first (16 characters)."""
_last_ms: list[tuple[int, str]] = [(-1, "")]
"""The last millisecond's 10-character prefix: ids made in the same millisecond share it."""


def _b32(value: int, length: int) -> str:
    """The low `length` × 5 bits of `value`, Crockford base32, most significant first."""
    pairs = _PAIRS
    text = "".join([pairs[(value >> shift) & 1023] for shift in range(5 * (length - 2), -1, -10)])
    return _CROCKFORD[(value >> (5 * (length - 1))) & 31] + text if length % 2 else text


def new_id(*, now_ms: int | None = None) -> MessageId:
    """A 26-character id, unique, lexicographically ordered by creation time.

    Hot path (every probe has one): the time prefix is computed once per millisecond and the random
    part ten bits at a time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    last = _last_ms[0]
    if last[0] == ms:
        prefix = last[1]
    else:
        prefix = _b32(ms, 10)
        _last_ms[0] = (ms, prefix)
    rand = int.from_bytes(os.urandom(10), "big")
    pairs = _PAIRS
    return MessageId(prefix + "".join([pairs[(rand >> shift) & 1023] for shift in _RAND_SHIFTS]))


def deterministic_id(*parts: object, prefix: str = "") -> MessageId:
    """Same parts, same id: the key for dedup (`Nats-Msg-Id`) and idempotency."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]
    return MessageId(f"{prefix}{digest}" if prefix else digest)
