"""What every normalizer shares: the context an event is observed in, typed access to JSON with
paths in the error messages, and the one place a `CloudSystemEvent` is built.

Pure: no I/O, no clock (the observation time comes in the context).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from nodeheal.cloud_events.normalize.errors import PayloadError
from nodeheal.cloud_events.normalize.times import parse_time
from nodeheal.schemas.cloud import (
    TERMINAL_PHASES,
    AckOption,
    Channel,
    Cloud,
    CloudAction,
    CloudCause,
    CloudPhase,
    CloudSystemEvent,
    Severity,
    cloud_event_message_id,
)

JsonObject = dict[str, Any]
MAX_TEXT = 4096
"""Provider strings longer than this are cut (descriptions); ids longer than `MAX_ID` are refused."""
MAX_ID = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class NormalizeContext:
    """Where and when a payload was observed.

    `node` is the Kubernetes node the payload speaks for when the channel runs on the node (metadata
    pollers); otherwise the node is the instance id until the ingest maps it through the inventory.
    `instance_id` fills in for channels whose payload names no instance (AWS IMDS, GCE metadata).
    """

    observed_at: datetime
    cluster: str = "default"
    node: str | None = None
    instance_id: str | None = None
    region: str | None = None
    zone: str | None = None


class Json:
    """Typed reads from decoded JSON; every failure is a `PayloadError` naming the path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str, where: str) -> PayloadError:
        return PayloadError(message, source=self.source, where=where)

    def obj(self, value: object, where: str) -> JsonObject:
        if not isinstance(value, dict):
            raise self.fail(f"expected a JSON object, got {_kind(value)}", where)
        return cast(JsonObject, value)

    def arr(self, value: object, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(f"expected a JSON array, got {_kind(value)}", where)
        return value

    def field_obj(self, parent: Mapping[str, Any], key: str, where: str) -> JsonObject:
        if key not in parent:
            raise self.fail(f"missing object {key!r}", where)
        return self.obj(parent[key], f"{where}.{key}")

    def req_str(self, parent: Mapping[str, Any], key: str, where: str, *, max_len: int = MAX_ID) -> str:
        value = parent.get(key)
        if value is None:
            raise self.fail(f"missing field {key!r}", where)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"field {key!r} must be a non-empty string, got {_show(value)}", f"{where}.{key}")
        if len(value) > max_len:
            raise self.fail(f"field {key!r} is {len(value)} characters long (limit {max_len})", f"{where}.{key}")
        return value.strip()

    def opt_str(self, parent: Mapping[str, Any], key: str, where: str, *, max_len: int = MAX_TEXT) -> str | None:
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(f"field {key!r} must be a string, got {_show(value)}", f"{where}.{key}")
        text = str(value).strip()
        return text[:max_len] if text else None

    def opt_int(self, parent: Mapping[str, Any], key: str, where: str) -> int | None:
        value = parent.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise self.fail(f"field {key!r} must be an integer, got {_show(value)}", f"{where}.{key}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise self.fail(f"field {key!r} must be an integer, got {_show(value)}", f"{where}.{key}")

    def time(self, parent: Mapping[str, Any], key: str, where: str) -> datetime | None:
        return parse_time(parent.get(key), source=self.source, where=f"{where}.{key}")


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _show(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def build_event(
    *,
    ctx: NormalizeContext,
    cloud: Cloud,
    channel: Channel,
    provider_event_id: str,
    provider_event_type: str,
    provider_status: str | None,
    action: CloudAction,
    cause: CloudCause,
    phase: CloudPhase,
    instance_id: str,
    raw: JsonObject | list[Any] | str | None,
    resource_ref: str | None = None,
    region: str | None = None,
    zone: str | None = None,
    account_id: str | None = None,
    published_at: datetime | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    deadline: datetime | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    expected_duration_s: int | None = None,
    severity: Severity | None = None,
    description: str | None = None,
    source_initiator: str | None = None,
    ack: Sequence[AckOption] = (),
    local_data_loss: bool = False,
    is_simulated: bool = False,
    extended: Mapping[str, Any] | None = None,
) -> CloudSystemEvent:
    """The message id is `cloud_event_message_id(cloud, provider_event_id, phase)`: every channel that
    reports the same transition produces the same id, which is the `Nats-Msg-Id`."""
    initiator = source_initiator if source_initiator in ("platform", "user") else None
    return CloudSystemEvent(
        id=cloud_event_message_id(cloud, provider_event_id, phase),
        time=ctx.observed_at,
        cluster=ctx.cluster,
        node=ctx.node or instance_id,
        cloud=cloud,
        channel=channel,
        provider_event_id=provider_event_id,
        provider_event_type=provider_event_type[:MAX_ID],
        provider_status=provider_status,
        action=action,
        cause=cause,
        phase=phase,
        is_terminal=phase in TERMINAL_PHASES,
        instance_id=instance_id,
        resource_ref=resource_ref,
        region=region or ctx.region,
        zone=zone or ctx.zone,
        account_id=account_id,
        published_at=published_at,
        not_before=not_before,
        not_after=not_after,
        deadline=deadline,
        started_at=started_at,
        finished_at=finished_at,
        expected_duration_s=expected_duration_s,
        severity=severity,
        description=description,
        source_initiator=initiator,  # type: ignore[arg-type]
        ack=tuple(ack),
        local_data_loss=local_data_loss,
        is_simulated=is_simulated,
        extended=dict(extended or {}),
        observed_at=ctx.observed_at,
        raw=raw,
    )
