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


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(*, now_ms: int | None = None) -> MessageId:
    """A 26-character id, unique, lexicographically ordered by creation time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    return MessageId(_b32(ms, 10) + _b32(rand, 16))


def deterministic_id(*parts: object, prefix: str = "") -> MessageId:
    """Same parts, same id: the key for dedup (`Nats-Msg-Id`) and idempotency."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]
    return MessageId(f"{prefix}{digest}" if prefix else digest)
