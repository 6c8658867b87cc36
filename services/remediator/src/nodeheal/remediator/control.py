"""Keys and values of the `nodeheal-control` bucket: the pause switch and approvals.

Written by people through the CLI (`nodeheal pause`, `nodeheal resume`, `nodeheal approve ACTION_ID`)
and read by the remediator before every step. Plain JSON so `nats kv get` shows it readably.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nodeheal.runtime.jetstream import kv_keys
from nodeheal.runtime.startup import patiently

PAUSE_KEY = "pause"
STORM_KEY_PREFIX = "storm."


def approval_key(action_id: str) -> str:
    return f"approval.{action_id}"


def storm_key(kind: str, value: str) -> str:
    from nodeheal.schemas.subjects import escape_token

    return f"{STORM_KEY_PREFIX}{kind}.{escape_token(value)}"


def storm_value(kind: str, value: str, *, unhealthy: int, size: int) -> bytes:
    return json.dumps({"kind": kind, "value": value, "unhealthy": unhealthy, "size": size}).encode()


async def read_storms(kv: KeyValue) -> list[tuple[str, str]]:
    """The storms in force (kind, value) as the replicas recorded them: the hysteresis survives a restart.

    The keys come from the bucket's subject index (`kv_keys`), each value from a get, every call waited out
    while JetStream is briefly away (`patiently`, inside the start). Not a KV watch: its iterator has no
    timeout (a JetStream that went away mid-read and stayed away left the start waiting for ever, never
    failing `/healthz`), and it may end on an early "nothing pending" marker (storms forgotten: 1 read in
    200 of 300 keys on a quiet machine)."""
    out: list[tuple[str, str]] = []
    keys = await patiently("storm keys", functools.partial(kv_keys, kv, pattern=f"{STORM_KEY_PREFIX}>"))
    for key in keys:
        try:
            entry = await patiently(f"storm {key}", functools.partial(kv.get, key))
        except KeyNotFoundError:
            continue  # ended since the listing
        try:
            data = json.loads(entry.value or b"{}")
            out.append((str(data["kind"]), str(data["value"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


@dataclass(frozen=True, slots=True)
class PauseState:
    paused: bool
    reason: str = ""
    by: str = ""


async def read_pause(kv: KeyValue) -> PauseState:
    try:
        entry = await kv.get(PAUSE_KEY)
    except KeyNotFoundError:
        return PauseState(paused=False)
    if not entry.value:
        return PauseState(paused=False)
    data = json.loads(entry.value)
    return PauseState(paused=bool(data.get("paused")), reason=str(data.get("reason", "")), by=str(data.get("by", "")))


async def write_pause(kv: KeyValue, *, paused: bool, reason: str, by: str) -> int:
    value = {"paused": paused, "reason": reason, "by": by, "at": datetime.now(tz=UTC).isoformat()}
    return await kv.put(PAUSE_KEY, json.dumps(value).encode())


async def is_approved(kv: KeyValue, action_id: str) -> str | None:
    """Who approved the action, or None."""
    try:
        entry = await kv.get(approval_key(action_id))
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    return str(json.loads(entry.value).get("by", "unknown"))


async def write_approval(kv: KeyValue, *, action_id: str, by: str, note: str = "") -> int:
    value = {"by": by, "note": note, "at": datetime.now(tz=UTC).isoformat()}
    return await kv.put(approval_key(action_id), json.dumps(value).encode())
