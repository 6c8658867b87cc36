"""Keys and values of the `nodeheal-control` bucket: the pause switch and approvals, and the storms.

Written by people through the CLI (`nodeheal pause`, `nodeheal resume`, `nodeheal approve ACTION_ID`)
and read by the remediator before every step. Plain JSON so `nats kv get` shows it readably.

A storm's key (`storm.<kind>.<value>`) is the remediators' own: created when the storm starts (the create
decides which replica escalates it), deleted when it ends. Its value carries the escalation (`escalation`:
the AUDIT record's action id, reason and the diagnosis that met the storm) and `recorded`: false from the
create until that AUDIT record is stored, then true (a compare-and-set update). A key that says escalated
but not recorded is an escalation a replica must still record — also after a restart.
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


@dataclass(frozen=True, slots=True)
class StormEscalation:
    """What a storm's AUDIT record needs, kept in the storm's key until that record is stored."""

    action_id: str
    reason: str
    cluster: str
    node: str
    diagnosis_id: str
    cause: str | None = None
    episode_id: str | None = None
    trace_id: str | None = None
    by: str = ""
    """the replica that records it (the creator, or the one that took it over after a restart)"""
    at: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "action_id": self.action_id,
            "reason": self.reason,
            "cluster": self.cluster,
            "node": self.node,
            "diagnosis_id": self.diagnosis_id,
            "cause": self.cause,
            "episode_id": self.episode_id,
            "trace_id": self.trace_id,
            "by": self.by,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> StormEscalation:
        def opt(name: str) -> str | None:
            got = data.get(name)
            return None if got is None else str(got)

        return cls(
            action_id=str(data["action_id"]),
            reason=str(data["reason"]),
            cluster=str(data["cluster"]),
            node=str(data["node"]),
            diagnosis_id=str(data["diagnosis_id"]),
            cause=opt("cause"),
            episode_id=opt("episode_id"),
            trace_id=opt("trace_id"),
            by=str(data.get("by") or ""),
            at=str(data.get("at") or ""),
        )


def storm_value(
    kind: str,
    value: str,
    *,
    unhealthy: int,
    size: int,
    escalation: StormEscalation | None = None,
    recorded: bool = True,
) -> bytes:
    body: dict[str, object] = {"kind": kind, "value": value, "unhealthy": unhealthy, "size": size}
    if escalation is not None:
        body["escalation"] = escalation.to_dict()
        body["recorded"] = recorded
    return json.dumps(body).encode()


@dataclass(frozen=True, slots=True)
class StormEntry:
    """A storm key as read: its domain, its revision, and the escalation still to record (None: recorded,
    or a key written before escalations were kept in it)."""

    kind: str
    value: str
    revision: int
    unhealthy: int = 0
    size: int = 0
    unrecorded: StormEscalation | None = None

    def value_with(self, escalation: StormEscalation, *, recorded: bool) -> bytes:
        return storm_value(
            self.kind, self.value, unhealthy=self.unhealthy, size=self.size, escalation=escalation, recorded=recorded
        )


def parse_storm(raw: bytes | None, *, revision: int) -> StormEntry | None:
    try:
        data = json.loads(raw or b"{}")
        escalation = data.get("escalation")
        unrecorded = (
            StormEscalation.from_dict(escalation)
            if isinstance(escalation, dict) and data.get("recorded") is False
            else None
        )
        return StormEntry(
            kind=str(data["kind"]),
            value=str(data["value"]),
            revision=revision,
            unhealthy=int(data.get("unhealthy", 0)),
            size=int(data.get("size", 0)),
            unrecorded=unrecorded,
        )
    except (ValueError, KeyError, TypeError):
        return None


async def read_storm(kv: KeyValue, kind: str, value: str) -> StormEntry | None:
    """The storm's key now (None: no key, the storm ended)."""
    try:
        entry = await kv.get(storm_key(kind, value))
    except KeyNotFoundError:
        return None
    return parse_storm(entry.value, revision=entry.revision or 0)


async def read_storms(kv: KeyValue) -> list[StormEntry]:
    """The storms in force (kind, value) as the replicas recorded them: the hysteresis survives a restart.

    The keys come from the bucket's subject index (`kv_keys`), each value from a get, every call waited out
    while JetStream is briefly away (`patiently`, inside the start). Not a KV watch: its iterator has no
    timeout (a JetStream that went away mid-read and stayed away left the start waiting for ever, never
    failing `/healthz`), and it may end on an early "nothing pending" marker (storms forgotten: 1 read in
    200 of 300 keys on a quiet machine)."""
    out: list[StormEntry] = []
    keys = await patiently("storm keys", functools.partial(kv_keys, kv, pattern=f"{STORM_KEY_PREFIX}>"))
    for key in keys:
        try:
            entry = await patiently(f"storm {key}", functools.partial(kv.get, key))
        except KeyNotFoundError:
            continue  # ended since the listing
        found = parse_storm(entry.value, revision=entry.revision or 0)
        if found is not None:
            out.append(found)
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
