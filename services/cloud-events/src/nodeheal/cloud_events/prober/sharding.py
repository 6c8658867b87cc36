"""Which prober replica checks which node: a stable hash of the node name modulo the replica count.

crc32, not Python's `hash()` (salted per process), so every replica agrees without talking to the
others. The replica index comes from settings or from the StatefulSet pod name's ordinal suffix
(`nodeheal-prober-3` → 3)."""

from __future__ import annotations

import re
import zlib

_ORDINAL = re.compile(r"-(\d+)$")


def shard_of(node: str, shard_count: int) -> int:
    return zlib.crc32(node.encode()) % shard_count


def owns(node: str, *, shard_index: int, shard_count: int) -> bool:
    return shard_count <= 1 or shard_of(node, shard_count) == shard_index


def ordinal_from_instance(instance: str) -> int | None:
    match = _ORDINAL.search(instance)
    return int(match.group(1)) if match else None
