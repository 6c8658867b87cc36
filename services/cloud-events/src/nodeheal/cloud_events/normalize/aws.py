"""AWS EC2 scheduled events → `CloudSystemEvent` (reference §2, §6.1, §6.2).

`aws-imds`: the IMDS `events/maintenance/scheduled` (or `.../history`) array. It names no instance;
the instance comes from the context (the poller reads `meta-data/instance-id`).
`aws-api`: `DescribeInstanceStatus` output (`InstanceStatuses[].Events[]`), an `Events` array, or
single event objects as in the EC2 docs. `aws-eventbridge`: EC2 state-change notifications, Spot
interruption warnings and AWS Health scheduled changes (one event per affected instance).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from nodeheal.cloud_events.normalize.common import Json, JsonObject, NormalizeContext, build_event
from nodeheal.schemas.cloud import AckOption, CloudAction, CloudCause, CloudPhase, CloudSystemEvent

SRC_IMDS = "aws-imds"
SRC_API = "aws-api"
SRC_EB = "aws-eventbridge"

CODES: dict[str, tuple[CloudAction, CloudCause]] = {
    "instance-reboot": ("reboot", "planned_maintenance"),
    "system-reboot": ("reboot", "planned_maintenance"),
    "system-maintenance": ("network_power_maintenance", "planned_maintenance"),
    "instance-stop": ("stop", "planned_maintenance"),
    # Stopped (EBS) or terminated (instance store): the node leaves either way; see docs/cloud-events.md.
    "instance-retirement": ("stop", "host_failure"),
}
_STATE_PHASE: dict[str, CloudPhase] = {"completed": "completed", "canceled": "canceled", "cancelled": "canceled"}
SPOT_NOTICE = timedelta(minutes=2)


def _phase(*, state: str | None, description: str | None, not_before: datetime | None, now: datetime) -> CloudPhase:
    """§6.2: active before NotBefore → scheduled, after → in_progress; completed / canceled as given.
    The API has no State; its Description gets a `[Completed]` / `[Canceled]` prefix instead."""
    if state and state.lower() in _STATE_PHASE:
        return _STATE_PHASE[state.lower()]
    desc = (description or "").lower()
    if desc.startswith("[completed]"):
        return "completed"
    if desc.startswith(("[canceled]", "[cancelled]")):
        return "canceled"
    if state is not None and state.lower() != "active":
        return "unknown"
    if not_before is None or now < not_before:
        return "scheduled"
    return "in_progress"


def _ack(code: str, *, phase: CloudPhase, deadline: datetime | None, not_before: datetime | None) -> list[AckOption]:
    if phase not in ("scheduled", "in_progress"):
        return []
    out: list[AckOption] = []
    if code == "instance-reboot":
        out.append(AckOption(method="aws.RebootInstances", valid_until=not_before))
    if code in ("system-reboot", "system-maintenance", "instance-stop", "instance-retirement"):
        out.append(AckOption(method="aws.StopStartInstances", valid_until=not_before))
    if deadline is not None and phase == "scheduled":
        out.append(AckOption(method="aws.ModifyInstanceEventStartTime", valid_until=deadline))
    return out


def _scheduled_event(
    j: Json, item: JsonObject, where: str, *, ctx: NormalizeContext, instance: str, channel: str, zone: str | None
) -> CloudSystemEvent:
    event_id = j.opt_str(item, "EventId", where) or j.req_str(item, "InstanceEventId", where)
    code = j.req_str(item, "Code", where)
    state = j.opt_str(item, "State", where)
    description = j.opt_str(item, "Description", where)
    not_before = j.time(item, "NotBefore", where)
    deadline = j.time(item, "NotBeforeDeadline", where)
    phase = _phase(state=state, description=description, not_before=not_before, now=ctx.observed_at)
    action, cause = CODES.get(code, ("unknown", "unknown"))
    return build_event(
        ctx=ctx,
        cloud="aws",
        channel="imds" if channel == SRC_IMDS else "api_fullstatus",
        provider_event_id=event_id,
        provider_event_type=code,
        # The API has no State: say what the Description prefix said, or "active".
        provider_status=state or (phase if phase in ("completed", "canceled") else "active"),
        action=action,
        cause=cause,
        phase=phase,
        instance_id=instance,
        raw=item,
        zone=zone,
        not_before=not_before,
        not_after=j.time(item, "NotAfter", where),
        deadline=deadline,
        description=description,
        ack=_ack(code, phase=phase, deadline=deadline, not_before=not_before),
    )


def _context_instance(j: Json, ctx: NormalizeContext) -> str:
    instance = ctx.instance_id or ctx.node
    if not instance:
        raise j.fail("the payload names no instance; give the instance id (--instance-id) it was read on", "$")
    return instance


def normalize_imds(payload: object, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    j = Json(SRC_IMDS)
    items = j.arr(payload, "$")
    instance = _context_instance(j, ctx) if items else ""
    return [
        _scheduled_event(j, j.obj(item, f"$[{i}]"), f"$[{i}]", ctx=ctx, instance=instance, channel=SRC_IMDS, zone=None)
        for i, item in enumerate(items)
    ]


def normalize_api(payload: object, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    j = Json(SRC_API)
    out: list[CloudSystemEvent] = []
    if isinstance(payload, dict) and "InstanceStatuses" in payload:
        statuses = j.arr(payload["InstanceStatuses"], "$.InstanceStatuses")
        for i, status in enumerate(statuses):
            where = f"$.InstanceStatuses[{i}]"
            entry = j.obj(status, where)
            instance = j.req_str(entry, "InstanceId", where)
            zone = j.opt_str(entry, "AvailabilityZone", where)
            for k, item in enumerate(j.arr(entry.get("Events", []), f"{where}.Events")):
                w = f"{where}.Events[{k}]"
                out.append(
                    _scheduled_event(j, j.obj(item, w), w, ctx=ctx, instance=instance, channel=SRC_API, zone=zone)
                )
        return out
    if isinstance(payload, dict) and "Events" in payload:
        items, base = j.arr(payload["Events"], "$.Events"), "$.Events"
    elif isinstance(payload, list):
        items, base = payload, "$"
    elif isinstance(payload, dict) and ("InstanceEventId" in payload or "EventId" in payload):
        items, base = [payload], "$"
    else:
        raise j.fail("not DescribeInstanceStatus output (no InstanceStatuses, Events or InstanceEventId)", "$")
    for i, item in enumerate(items):
        where = base if base == "$" and not isinstance(payload, list) else f"{base}[{i}]"
        entry = j.obj(item, where)
        instance = j.opt_str(entry, "InstanceId", where) or _context_instance(j, ctx)
        out.append(_scheduled_event(j, entry, where, ctx=ctx, instance=instance, channel=SRC_API, zone=None))
    return out


_EC2_STATE_PHASE: dict[str, CloudPhase] = {
    "pending": "in_progress",
    "stopping": "in_progress",
    "shutting-down": "in_progress",
    "running": "completed",
    "stopped": "completed",
    "terminated": "completed",
}
_HEALTH_STATUS: dict[str, CloudPhase] = {"upcoming": "scheduled", "open": "in_progress", "closed": "completed"}


def health_action_cause(type_code: str, category: str | None) -> tuple[CloudAction, CloudCause]:
    code = type_code.upper()
    causes: dict[str, CloudCause] = {"scheduledchange": "planned_maintenance", "issue": "host_failure"}
    cause = causes.get((category or "").lower(), "unknown")
    if "RETIREMENT" in code:
        return "stop", "host_failure"
    if "REBOOT" in code:
        return "reboot", cause
    if "INSTANCE_STOP" in code:
        return "stop", cause
    if "NETWORK_MAINTENANCE" in code or "POWER_MAINTENANCE" in code:
        return "network_power_maintenance", cause
    return "unknown", cause


def normalize_eventbridge(payload: object, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    """Events of other sources or types give no events (valid, not ours); a body that is not an
    EventBridge event at all is an error."""
    j = Json(SRC_EB)
    if isinstance(payload, list):
        return [e for i, item in enumerate(payload) for e in _eb_one(j, j.obj(item, f"$[{i}]"), ctx, f"$[{i}]")]
    return _eb_one(j, j.obj(payload, "$"), ctx, "$")


def _eb_one(j: Json, body: JsonObject, ctx: NormalizeContext, where: str) -> list[CloudSystemEvent]:
    envelope_id = j.req_str(body, "id", where)
    source = j.req_str(body, "source", where)
    detail_type = j.req_str(body, "detail-type", where)
    detail = j.field_obj(body, "detail", where)
    time = j.time(body, "time", where)
    region = j.opt_str(body, "region", where)
    account = j.opt_str(body, "account", where)
    dw = f"{where}.detail"
    if source == "aws.ec2" and detail_type == "EC2 Instance State-change Notification":
        instance = j.req_str(detail, "instance-id", dw)
        state = j.req_str(detail, "state", dw)
        return [
            build_event(
                ctx=ctx,
                cloud="aws",
                channel="eventbridge",
                provider_event_id=envelope_id,
                provider_event_type=detail_type,
                provider_status=state,
                action="state_change",
                cause="unknown",
                phase=_EC2_STATE_PHASE.get(state.lower(), "unknown"),
                instance_id=instance,
                raw=body,
                resource_ref=_first_str(body.get("resources")),
                region=region,
                account_id=account,
                published_at=time,
                description=f"instance state {state}",
            )
        ]
    if source == "aws.ec2" and detail_type == "EC2 Spot Instance Interruption Warning":
        instance = j.req_str(detail, "instance-id", dw)
        return [
            build_event(
                ctx=ctx,
                cloud="aws",
                channel="eventbridge",
                provider_event_id=envelope_id,
                provider_event_type=detail_type,
                provider_status=j.opt_str(detail, "instance-action", dw),
                action="terminate",
                cause="spot",
                phase="scheduled",
                instance_id=instance,
                raw=body,
                region=region,
                account_id=account,
                published_at=time,
                not_before=time + SPOT_NOTICE if time else None,
                local_data_loss=True,
            )
        ]
    if source == "aws.health" and detail_type == "AWS Health Event":
        return _health(j, body, detail, ctx, where, time=time, region=region, account=account)
    return []


def _first_str(value: object) -> str | None:
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None


def _health(
    j: Json,
    body: JsonObject,
    detail: JsonObject,
    ctx: NormalizeContext,
    where: str,
    *,
    time: datetime | None,
    region: str | None,
    account: str | None,
) -> list[CloudSystemEvent]:
    dw = f"{where}.detail"
    if (j.opt_str(detail, "service", dw) or "").upper() != "EC2":
        return []
    arn = j.req_str(detail, "eventArn", dw)
    type_code = j.req_str(detail, "eventTypeCode", dw)
    category = j.opt_str(detail, "eventTypeCategory", dw)
    status = j.opt_str(detail, "statusCode", dw)
    start = j.time(detail, "startTime", dw)
    end = j.time(detail, "endTime", dw)
    if status is not None:
        phase = _HEALTH_STATUS.get(status.lower(), "unknown")
    elif start is not None and time is not None:
        # No statusCode (the documented sample has none): before startTime it is still upcoming.
        phase = "scheduled" if time < start else "in_progress"
    else:
        phase = "unknown"
    description: str | None = None
    descriptions = detail.get("eventDescription")
    if isinstance(descriptions, list) and descriptions and isinstance(descriptions[0], dict):
        description = j.opt_str(descriptions[0], "latestDescription", f"{dw}.eventDescription[0]")
    instances: list[str] = []
    entities = detail.get("affectedEntities")
    if entities is not None:
        for i, entity in enumerate(j.arr(entities, f"{dw}.affectedEntities")):
            instances.append(
                j.req_str(j.obj(entity, f"{dw}.affectedEntities[{i}]"), "entityValue", f"{dw}.affectedEntities[{i}]")
            )
    if not instances:
        instances = [r for r in body.get("resources") or [] if isinstance(r, str) and r.strip()]
    if not instances:
        raise j.fail("AWS Health event names no affected instance (affectedEntities / resources)", dw)
    action, cause = health_action_cause(type_code, category)
    extended: dict[str, Any] = {"eventArn": arn}
    return [
        build_event(
            ctx=ctx,
            cloud="aws",
            channel="health_api",
            # One Health event covers many instances: the id names the instance (reference §6).
            provider_event_id=f"{arn}#{instance}",
            provider_event_type=type_code,
            provider_status=status,
            action=action,
            cause=cause,
            phase=phase,
            instance_id=instance,
            raw=body,
            resource_ref=arn,
            region=region,
            account_id=account,
            published_at=time,
            not_before=start,
            not_after=end,
            description=description,
            extended=extended,
        )
        for instance in dict.fromkeys(instances)
    ]
