"""Alibaba Cloud ECS system events → `CloudSystemEvent` (reference §1, §6.1, §6.2).

Three channels carry the same event: CloudMonitor notifications (`alibaba-cms`), EventBridge
CloudEvents (`alibaba-eventbridge`) and the polling APIs (`alibaba-api`:
`DescribeInstanceHistoryEvents`, `DescribeInstancesFullStatus`). The phase always comes from
`eventStatus` / `EventCycleStatus.Name`, never from the notification `name` (documentation samples
carry `...:Scheduled` on an `Avoided` notification); the notification `id` is never a dedup key.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from nodeheal.cloud_events.normalize.common import Json, JsonObject, NormalizeContext, build_event
from nodeheal.schemas.cloud import AckOption, Channel, CloudAction, CloudCause, CloudPhase, CloudSystemEvent, Severity

SRC_CMS = "alibaba-cms"
SRC_EB = "alibaba-eventbridge"
SRC_API = "alibaba-api"

PHASES: dict[str, CloudPhase] = {
    "inquiring": "pending_approval",
    "scheduled": "scheduled",
    "executing": "in_progress",
    "executed": "completed",
    "avoided": "avoided",
    "canceled": "canceled",
    "cancelled": "canceled",
    "failed": "failed",
}
_CAUSE_BY_PREFIX: dict[str, CloudCause] = {
    "SystemMaintenance": "planned_maintenance",
    "SystemFailure": "host_failure",
    "InstanceFailure": "guest_failure",
    "InstanceExpiration": "billing",
    "AccountUnbalanced": "billing",
}
_ACTION_BY_SUFFIX: dict[str, CloudAction] = {
    "Reboot": "reboot",
    "Redeploy": "redeploy",
    "Stop": "stop",
    "Delete": "terminate",
}
_SEVERITY: dict[str, Severity] = {"CRITICAL": "critical", "WARN": "warning", "WARNING": "warning", "INFO": "info"}
SIMULATED_REASON = "A simulated event."
PREEMPT_NOTICE = timedelta(minutes=5)


def action_and_cause(code: str) -> tuple[CloudAction, CloudCause]:
    """§6.1 for Alibaba codes; anything not recognised is `unknown`, never an error."""
    if code in ("ErrorDetected", "Stalled"):
        return "disk_repair", "host_failure"
    if code == "LiveMigrationAcrossDDH":
        return "live_migrate", "planned_maintenance"
    prefix, _, suffix = code.partition(".")
    cause = _CAUSE_BY_PREFIX.get(prefix, "unknown")
    if "ErrorDisk" in suffix:
        # `RebootAndIsolateErrorDisk` / `RebootAndReInitErrorDisk` restart the instance: a `reboot`, so the
        # remediator cordons and drains ahead of it (as `disk_repair` the instance restarted with its pods on
        # it); which disk and what is done to it stay in `extended` (`disk_detail`)
        return ("reboot" if suffix.startswith("RebootAnd") else "disk_repair"), cause
    return _ACTION_BY_SUFFIX.get(suffix, "unknown"), cause


def disk_detail(code: str) -> dict[str, str]:
    """What an ErrorDisk event does to the damaged local disk (`extended.error_disk`): `isolate` (taken out of
    use) or `reinit` (re-initialized: its data is lost, `local_data_loss`); empty for other codes."""
    suffix = code.partition(".")[2]
    if suffix.endswith("IsolateErrorDisk"):
        return {"error_disk": "isolate"}
    if suffix.endswith("ReInitErrorDisk"):
        return {"error_disk": "reinit"}
    return {}


def phase_of(status: str | None) -> CloudPhase:
    return PHASES.get((status or "").strip().lower(), "unknown")


def ack_options(*, code: str, phase: CloudPhase, not_before: datetime | None, simulated: bool) -> list[AckOption]:
    """What can be done early (reference §1.2 and §1.8)."""
    out: list[AckOption] = []
    redeployable = {
        "SystemMaintenance.Reboot": ("pending_approval", "scheduled"),
        "SystemMaintenance.Redeploy": ("pending_approval", "scheduled"),
        "SystemFailure.Redeploy": ("pending_approval", "scheduled"),
        "SystemFailure.Reboot": ("in_progress",),
        "SystemMaintenance.RebootAndIsolateErrorDisk": ("pending_approval",),
        "SystemMaintenance.RebootAndReInitErrorDisk": ("pending_approval",),
        "SystemMaintenance.IsolateErrorDisk": ("pending_approval",),
        "SystemMaintenance.ReInitErrorDisk": ("pending_approval",),
    }
    if code == "SystemMaintenance.Reboot" and phase in ("pending_approval", "scheduled"):
        out.append(AckOption(method="alibaba.RebootInstance", valid_until=not_before))
    if not simulated and phase in redeployable.get(code, ()):
        out.append(AckOption(method="alibaba.RedeployInstance", valid_until=not_before))
    if phase == "pending_approval":
        out.append(AckOption(method="alibaba.AcceptInquiredSystemEvent"))
    return out


def local_data_loss(code: str) -> bool:
    return code.endswith(".Redeploy") or code.endswith("ReInitErrorDisk")


def _instance_from_arn(arn: str | None) -> str | None:
    # acs:ecs:<region>:<uid>:instance/<id>
    if arn and "instance/" in arn:
        tail = arn.rsplit("instance/", 1)[1].strip()
        return tail or None
    return None


def _system_event(
    *,
    j: Json,
    ctx: NormalizeContext,
    channel: Channel,
    content: JsonObject,
    where: str,
    raw: JsonObject,
    status_fallback: str | None,
    region: str | None,
    account: str | None,
    resource_ref: str | None,
    severity: Severity | None,
) -> CloudSystemEvent:
    """`content` of a CMS notification or `data` of an EventBridge event for an instance/disk system event."""
    event_id = j.req_str(content, "eventId", where)
    code = j.req_str(content, "eventType", where)
    instance = j.opt_str(content, "instanceId", where) or j.opt_str(content, "ecsInstanceId", where)
    instance = instance or _instance_from_arn(resource_ref) or ctx.instance_id
    if not instance:
        raise j.fail("no instance: neither instanceId nor ecsInstanceId nor an instance resourceId", where)
    status = j.opt_str(content, "eventStatus", where) or status_fallback
    phase = phase_of(status)
    action, cause = action_and_cause(code)
    not_before = j.time(content, "notBefore", where)
    extended: dict[str, Any] = disk_detail(code)
    for key in ("diskId", "device", "ecsInstanceName"):
        if isinstance(content.get(key), str):
            extended[key] = content[key]
    return build_event(
        ctx=ctx,
        cloud="alibaba",
        channel=channel,
        provider_event_id=event_id,
        provider_event_type=code,
        provider_status=status,
        action=action,
        cause=cause,
        phase=phase,
        instance_id=instance,
        raw=raw,
        resource_ref=resource_ref,
        region=region,
        account_id=account,
        published_at=j.time(content, "publishTime", where),
        not_before=not_before,
        started_at=j.time(content, "executeStartTime", where),
        finished_at=j.time(content, "executeFinishTime", where),
        severity=severity,
        description=j.opt_str(content, "reason", where),
        ack=ack_options(code=code, phase=phase, not_before=not_before, simulated=False),
        local_data_loss=local_data_loss(code),
        extended=extended,
    )


_STATE_PHASE: dict[str, CloudPhase] = {
    "pending": "in_progress",
    "starting": "in_progress",
    "stopping": "in_progress",
    "running": "completed",
    "stopped": "completed",
    "deleted": "completed",
    "created": "completed",
}


def _state_change(
    *,
    j: Json,
    ctx: NormalizeContext,
    channel: Channel,
    content: JsonObject,
    where: str,
    raw: JsonObject,
    stamp: str,
    region: str | None,
    account: str | None,
    resource_ref: str | None,
    severity: Severity | None,
    published_at: datetime | None,
) -> CloudSystemEvent:
    """`Instance:StateChange`: a notification, not a lifecycle; each (instance, state, time) is its own event."""
    instance = j.opt_str(content, "resourceId", where) or j.opt_str(content, "instanceId", where)
    instance = instance or _instance_from_arn(resource_ref)
    if not instance:
        raise j.fail("StateChange without resourceId/instanceId", where)
    state = j.req_str(content, "state", where)
    return build_event(
        ctx=ctx,
        cloud="alibaba",
        channel=channel,
        provider_event_id=f"statechange:{instance}:{state}:{stamp}",
        provider_event_type="Instance:StateChange",
        provider_status=state,
        action="state_change",
        cause="unknown",
        phase=_STATE_PHASE.get(state.lower(), "unknown"),
        instance_id=instance,
        raw=raw,
        resource_ref=resource_ref,
        region=region,
        account_id=account,
        published_at=published_at,
        severity=severity,
        description=f"instance state {state}",
    )


def _preemption(
    *,
    j: Json,
    ctx: NormalizeContext,
    channel: Channel,
    content: JsonObject,
    where: str,
    raw: JsonObject,
    stamp: str,
    region: str | None,
    account: str | None,
    resource_ref: str | None,
    severity: Severity | None,
    published_at: datetime | None,
) -> CloudSystemEvent:
    """Spot release, sent 5 minutes before (reference §1.2): not_before = notification time + 5 min."""
    instance = j.opt_str(content, "instanceId", where) or _instance_from_arn(resource_ref)
    if not instance:
        raise j.fail("PreemptibleInstanceInterruption without instanceId", where)
    return build_event(
        ctx=ctx,
        cloud="alibaba",
        channel=channel,
        provider_event_id=f"preempt:{instance}:{stamp}",
        provider_event_type="Instance:PreemptibleInstanceInterruption",
        provider_status=j.opt_str(content, "action", where),
        action="terminate",
        cause="spot",
        phase="scheduled",
        instance_id=instance,
        raw=raw,
        resource_ref=resource_ref,
        region=region,
        account_id=account,
        published_at=published_at,
        not_before=published_at + PREEMPT_NOTICE if published_at else None,
        severity=severity,
        description="spot instance is released about 5 minutes after this notice",
        local_data_loss=True,
    )


def _content_object(j: Json, value: object, where: str) -> JsonObject:
    # MNS and some webhooks carry `content` as a JSON string.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise j.fail(f"content is a string but not JSON: {exc}", where) from None
    return j.obj(value, where)


def normalize_cms(payload: object, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    """A CloudMonitor notification, a JSON array of them, or a CMS `DescribeSystemEventAttribute` response."""
    j = Json(SRC_CMS)
    if isinstance(payload, list):
        return [e for i, item in enumerate(payload) for e in _cms_one(j, j.obj(item, f"$[{i}]"), ctx, f"$[{i}]")]
    body = j.obj(payload, "$")
    if "SystemEvents" in body:
        return _cms_api(j, body, ctx)
    return _cms_one(j, body, ctx, "$")


def _cms_one(j: Json, body: JsonObject, ctx: NormalizeContext, where: str) -> list[CloudSystemEvent]:
    name = j.req_str(body, "name", where)
    content = _content_object(j, body.get("content"), f"{where}.content")
    resource_ref = j.opt_str(body, "resourceId", where)
    region = j.opt_str(body, "regionId", where)
    account = j.opt_str(body, "userId", where)
    severity = _SEVERITY.get((j.opt_str(body, "level", where) or "").upper())
    event_time = j.time(body, "eventTime", where)
    stamp = j.opt_str(body, "eventTime", where) or j.opt_str(body, "id", where) or ""
    parts = name.split(":")
    status_in_name = parts[2] if len(parts) >= 3 else None
    common: dict[str, Any] = {
        "j": j,
        "ctx": ctx,
        "channel": "cms_notification",
        "content": content,
        "where": f"{where}.content",
        "raw": body,
        "region": region,
        "account": account,
        "resource_ref": resource_ref,
        "severity": severity,
    }
    if "eventId" in content:
        return [_system_event(**common, status_fallback=status_in_name)]
    if not stamp:
        raise j.fail(f"notification {name!r} has no eventId, eventTime or id to tell it apart", where)
    if name == "Instance:StateChange":
        return [_state_change(**common, stamp=stamp, published_at=event_time)]
    if name == "Instance:PreemptibleInstanceInterruption":
        return [_preemption(**common, stamp=stamp, published_at=event_time)]
    instance = _instance_from_arn(resource_ref) or j.opt_str(content, "instanceId", f"{where}.content")
    if not instance:
        raise j.fail(f"notification {name!r} has no eventId and names no instance", where)
    return [
        _unknown(
            ctx=ctx,
            channel="cms_notification",
            event_id=f"cms:{name}:{instance}:{stamp}",
            code=name,
            status=status_in_name,
            instance=instance,
            raw=body,
            region=region,
            resource_ref=resource_ref,
            published_at=event_time,
            severity=severity,
        )
    ]


def _unknown(
    *,
    ctx: NormalizeContext,
    channel: Channel,
    event_id: str,
    code: str,
    status: str | None,
    instance: str,
    raw: JsonObject,
    region: str | None,
    resource_ref: str | None,
    published_at: datetime | None,
    severity: Severity | None,
) -> CloudSystemEvent:
    action, cause = action_and_cause(code)
    return build_event(
        ctx=ctx,
        cloud="alibaba",
        channel=channel,
        provider_event_id=event_id,
        provider_event_type=code,
        provider_status=status,
        action=action,
        cause=cause,
        phase=phase_of(status),
        instance_id=instance,
        raw=raw,
        resource_ref=resource_ref,
        region=region,
        published_at=published_at,
        severity=severity,
    )


def _cms_api(j: Json, body: JsonObject, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    """`DescribeSystemEventAttribute`: CloudMonitor's own events (agent status etc.), not ECS system events."""
    events = j.arr(j.field_obj(body, "SystemEvents", "$").get("SystemEvent", []), "$.SystemEvents.SystemEvent")
    out: list[CloudSystemEvent] = []
    for i, item in enumerate(events):
        where = f"$.SystemEvents.SystemEvent[{i}]"
        entry = j.obj(item, where)
        name = j.req_str(entry, "Name", where)
        instance: str | None = None
        content = entry.get("Content")
        if isinstance(content, str):
            try:
                inner = json.loads(content)
            except ValueError:
                inner = None
            for note in inner if isinstance(inner, list) else [inner]:
                if isinstance(note, dict) and isinstance(note.get("resourceId"), str):
                    instance = _instance_from_arn(note["resourceId"])
                    if instance:
                        break
        instance = instance or j.opt_str(entry, "ResourceId", where)
        if not instance:
            raise j.fail(f"system event {name!r} names no resource", where)
        stamp = j.opt_str(entry, "Time", where) or "?"
        out.append(
            _unknown(
                ctx=ctx,
                channel="cms_notification",
                event_id=f"cms:{name}:{instance}:{stamp}",
                code=name,
                status=j.opt_str(entry, "Status", where),
                instance=instance,
                raw=entry,
                region=j.opt_str(entry, "RegionId", where),
                resource_ref=j.opt_str(entry, "ResourceId", where),
                published_at=j.time(entry, "Time", where),
                severity=_SEVERITY.get((j.opt_str(entry, "Level", where) or "").upper()),
            )
        )
    return out


def normalize_eventbridge(payload: object, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    """A CloudEvent (or a JSON array of them, the `cloudevents-batch` form). Events from other products
    than ECS (`source` not `acs.ecs`) give no events: they are valid, just not ours."""
    j = Json(SRC_EB)
    if isinstance(payload, list):
        return [e for i, item in enumerate(payload) for e in _eb_one(j, j.obj(item, f"$[{i}]"), ctx, f"$[{i}]")]
    return _eb_one(j, j.obj(payload, "$"), ctx, "$")


def _eb_one(j: Json, body: JsonObject, ctx: NormalizeContext, where: str) -> list[CloudSystemEvent]:
    envelope_id = j.req_str(body, "id", where)
    source = j.req_str(body, "source", where)
    etype = j.req_str(body, "type", where)
    if str(body.get("specversion", "1.0")) != "1.0":
        raise j.fail(f"specversion {body.get('specversion')!r} is not CloudEvents 1.0", f"{where}.specversion")
    published_at = j.time(body, "time", where)
    j.time(body, "aliyunpublishtime", where)  # validated: a corrupt envelope is refused, not half-read
    if source != "acs.ecs":
        return []
    data = _content_object(j, body.get("data"), f"{where}.data")
    if isinstance(data.get("content"), dict) and "eventId" not in data:
        data = {**data["content"], **{k: v for k, v in data.items() if k != "content"}}
    code = etype.split(":", 2)[-1] if etype.startswith("ecs:") else etype
    region = j.opt_str(body, "aliyunregionid", where)
    account = j.opt_str(body, "aliyunaccountid", where)
    subject = j.opt_str(body, "subject", where)
    common: dict[str, Any] = {
        "j": j,
        "ctx": ctx,
        "channel": "eventbridge",
        "content": data,
        "where": f"{where}.data",
        "raw": body,
        "region": region,
        "account": account,
        "resource_ref": subject,
        "severity": None,
    }
    if "eventId" in data:
        # a payload without `eventStatus` (disk events) takes it from the type, as CMS takes it from `name`
        # (`ecs:Disk:Stalled:Executing`): the same transition then has the same phase and id on both channels
        type_parts = etype.removeprefix("ecs:").split(":")
        return [_system_event(**common, status_fallback=type_parts[2] if len(type_parts) >= 3 else None)]
    if code == "StateChange":
        return [_state_change(**common, stamp=envelope_id, published_at=published_at)]
    if code == "PreemptibleInstanceInterruption":
        return [_preemption(**common, stamp=envelope_id, published_at=published_at)]
    instance = (
        j.opt_str(data, "instanceId", f"{where}.data")
        or j.opt_str(data, "resourceId", f"{where}.data")
        or _instance_from_arn(subject)
    )
    if not instance:
        raise j.fail(f"ECS event {etype!r} has no eventId and names no instance", f"{where}.data")
    return [
        _unknown(
            ctx=ctx,
            channel="eventbridge",
            event_id=f"{source}/{envelope_id}",
            code=code,
            status=j.opt_str(data, "eventStatus", f"{where}.data"),
            instance=instance,
            raw=body,
            region=region,
            resource_ref=subject,
            published_at=published_at,
            severity=None,
        )
    ]


def normalize_api(payload: object, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    """`DescribeInstanceHistoryEvents` or `DescribeInstancesFullStatus` response body (as the API and the
    SDK's `body.to_map()` give it). A `DescribeInstanceMaintenanceAttributes` response carries settings,
    not events: it gives no events."""
    j = Json(SRC_API)
    body = j.obj(payload, "$")
    if "InstanceSystemEventSet" in body:
        container = j.field_obj(body, "InstanceSystemEventSet", "$")
        items = j.arr(container.get("InstanceSystemEventType", []), "$.InstanceSystemEventSet.InstanceSystemEventType")
        return [
            _api_item(j, ctx, j.obj(item, w), w, channel="api_history", instance=None)
            for i, item in enumerate(items)
            for w in [f"$.InstanceSystemEventSet.InstanceSystemEventType[{i}]"]
        ]
    if "InstanceFullStatusSet" in body:
        container = j.field_obj(body, "InstanceFullStatusSet", "$")
        statuses = j.arr(container.get("InstanceFullStatusType", []), "$.InstanceFullStatusSet.InstanceFullStatusType")
        out: list[CloudSystemEvent] = []
        for i, status in enumerate(statuses):
            where = f"$.InstanceFullStatusSet.InstanceFullStatusType[{i}]"
            entry = j.obj(status, where)
            instance = j.req_str(entry, "InstanceId", where)
            scheduled = entry.get("ScheduledSystemEventSet") or {}
            events = j.arr(
                j.obj(scheduled, f"{where}.ScheduledSystemEventSet").get("ScheduledSystemEventType", []),
                f"{where}.ScheduledSystemEventSet.ScheduledSystemEventType",
            )
            for k, item in enumerate(events):
                w = f"{where}.ScheduledSystemEventSet.ScheduledSystemEventType[{k}]"
                out.append(_api_item(j, ctx, j.obj(item, w), w, channel="api_fullstatus", instance=instance))
        return out
    if "MaintenanceAttributes" in body:
        return []
    raise j.fail(
        "not a DescribeInstanceHistoryEvents / DescribeInstancesFullStatus response "
        "(no InstanceSystemEventSet or InstanceFullStatusSet)",
        "$",
    )


def _named(j: Json, item: JsonObject, key: str, where: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    return j.opt_str(j.obj(value, f"{where}.{key}"), "Name", f"{where}.{key}")


def _api_item(
    j: Json, ctx: NormalizeContext, item: JsonObject, where: str, *, channel: Channel, instance: str | None
) -> CloudSystemEvent:
    event_id = j.req_str(item, "EventId", where)
    code = _named(j, item, "EventType", where)
    if not code:
        raise j.fail("missing EventType.Name", where)
    status = _named(j, item, "EventCycleStatus", where)
    if channel == "api_fullstatus" and status is None:
        status = "Scheduled"  # DescribeInstancesFullStatus lists only Scheduled events (reference §0.4)
    instance_id = j.opt_str(item, "InstanceId", where) or instance or j.opt_str(item, "ResourceId", where)
    if not instance_id:
        raise j.fail("missing InstanceId", where)
    phase = phase_of(status)
    action, cause = action_and_cause(code)
    reason = j.opt_str(item, "Reason", where)
    simulated = reason == SIMULATED_REASON
    not_before = j.time(item, "NotBefore", where)
    extended_raw = item.get("ExtendedAttribute")
    extended = {**(dict(extended_raw) if isinstance(extended_raw, dict) else {}), **disk_detail(code)}
    impact = j.opt_str(item, "ImpactLevel", where)
    if impact:
        extended["ImpactLevel"] = impact
    finished = j.time(item, "EventFinishTime", where)
    return build_event(
        ctx=ctx,
        cloud="alibaba",
        channel=channel,
        provider_event_id=event_id,
        provider_event_type=code,
        provider_status=status,
        action=action,
        cause=cause,
        phase=phase,
        instance_id=instance_id,
        raw=item,
        published_at=j.time(item, "EventPublishTime", where),
        not_before=not_before,
        finished_at=finished if phase in ("completed", "avoided", "canceled", "failed") else None,
        description=reason,
        ack=ack_options(code=code, phase=phase, not_before=not_before, simulated=simulated),
        local_data_loss=local_data_loss(code),
        is_simulated=simulated,
        extended=extended,
    )
