"""Alibaba Cloud ECS OpenAPI emulator: the real ``alibabacloud_ecs20140526`` SDK calls it unchanged.

It speaks the RPC-style wire format of ``Ecs 2014-05-26`` as the SDK sends it: ``POST /`` with every parameter
in the query string (lists flattened to ``EventId.1``, ``InstanceEventCycleStatus.2``...), the action and
version in ``x-acs-action`` / ``x-acs-version`` and an ``Authorization: ACS3-HMAC-SHA256 Credential=<AK>,...``
header (the default V3 signature); the older V2 form (``Action``, ``Version``, ``AccessKeyId``, ``Signature``
as query or form parameters) is accepted too. Responses are JSON in the real shapes; errors are Alibaba's
``{"RequestId", "HostId", "Code", "Message", "Recommend"}`` with an HTTP 4xx, which the SDK raises as
``alibabacloud_tea_openapi.exceptions.ClientException`` (``e.code``, ``e.status_code``).

Actions: ``DescribeInstanceHistoryEvents``, ``DescribeInstancesFullStatus``, ``RebootInstance``,
``RedeployInstance``, ``AcceptInquiredSystemEvent``, ``DeleteInstance`` (``Force`` for a Running instance),
``RunInstances`` (from a launch template: ``LaunchTemplateId`` / ``LaunchTemplateVersion``, ``Amount``,
idempotent on ``ClientToken``), ``CreateSimulatedSystemEvents``, ``CancelSimulatedSystemEvents``.
Anything else is ``InvalidAction.NotFound`` (404). State lives in an
``EcsWorld`` (``nodeheal.sim.ecs_world``), which the fleet simulator can also drive in-process.

Usage (in-process and standalone): docs/emulators.md. A small control surface under ``/_sim/`` (not part
of the real API) publishes events and reads state.
This module must never forward anything to a real cloud; it binds 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from nodeheal.sim.clock import Clock, ManualClock, SystemClock
from nodeheal.sim.ecs_world import (
    ALL_STATUSES,
    TERMINAL_STATUSES,
    EcsApiError,
    EcsInstance,
    EcsWorld,
    EventStatus,
    InstanceId,
    RecordedCall,
    SystemEvent,
    WorldChange,
)

if TYPE_CHECKING:
    from alibabacloud_tea_openapi.models import Config

__all__ = [
    "EcsApiError",
    "EcsEmulator",
    "EcsWorld",
    "ManualClock",
    "RecordedCall",
    "SystemClock",
    "WorldChange",
    "build_app",
]

log = logging.getLogger(__name__)

API_VERSION: Final = "2014-05-26"
HOST_ID: Final = "ecs.aliyuncs.com"
TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
MAX_PAGE_SIZE: Final = 100
MAX_IDS: Final = 100

# Numeric codes: only the ones seen in Alibaba's own examples are real (reference §1.2); the rest are
# emulator-assigned, all >= 900 so that nobody mistakes them for real values. Consumers must match on Name.
EVENT_TYPE_CODES: Final[Mapping[str, int]] = {
    "SystemMaintenance.Reboot": 1,
    "SystemFailure.Reboot": 65,
    "InstanceExpiration.Stop": 34,
}
EVENT_STATUS_CODES: Final[Mapping[str, int]] = {
    "Executed": 0,
    "Avoided": 8,
    "Scheduled": 24,
    "Inquiring": 901,
    "Executing": 902,
    "Canceled": 903,
    "Failed": 904,
}
INSTANCE_STATUS_CODES: Final[Mapping[str, int]] = {
    "Running": 1,
    "Pending": 901,
    "Starting": 902,
    "Stopping": 903,
    "Stopped": 904,
}
HEALTH_STATUS_CODES: Final[Mapping[str, int]] = {
    "Warning": 64,
    "OK": 900,
    "Impaired": 901,
    "Maintaining": 902,
    "Initializing": 903,
    "InsufficientData": 904,
    "NotApplicable": 905,
}
KNOWN_EVENT_TYPES: Final = frozenset(
    {
        "SystemMaintenance.Reboot",
        "SystemMaintenance.Redeploy",
        "SystemMaintenance.Stop",
        "SystemFailure.Reboot",
        "SystemFailure.Redeploy",
        "SystemFailure.Stop",
        "SystemFailure.Delete",
        "InstanceFailure.Reboot",
        "SystemMaintenance.IsolateErrorDisk",
        "SystemMaintenance.ReInitErrorDisk",
        "SystemMaintenance.RebootAndIsolateErrorDisk",
        "SystemMaintenance.RebootAndReInitErrorDisk",
        "SystemMaintenance.CleanInactiveDisks",
        "SystemMaintenance.PerformanceImpact",
        "InstanceExpiration.Stop",
        "InstanceExpiration.Delete",
        "AccountUnbalanced.Stop",
        "AccountUnbalanced.Delete",
    }
)
_EVENT_TYPE_CODE_FALLBACK: Final = 900


def _fmt(when: datetime | None) -> str | None:
    return when.astimezone(UTC).strftime(TIME_FORMAT) if when is not None else None


# ---------------------------------------------------------------------------------------------- parameters


class _Params:
    """The flat ``name -> value`` map a request carried (query string and form body merged)."""

    def __init__(self, raw: Mapping[str, str]) -> None:
        self.raw = dict(raw)

    def get(self, name: str) -> str | None:
        value = self.raw.get(name)
        return value if value not in (None, "") else None

    def required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise EcsApiError(
                code=f"Missing{name.replace('.', '')}",
                message=f'The input parameter "{name}" that is mandatory for processing this request is not supplied.',
                http_status=400,
            )
        return value

    def repeated(self, name: str, *, limit: int | None = None) -> list[str]:
        """``Name.1``, ``Name.2``, ... in index order (what the SDK makes of a Python list)."""
        pattern = re.compile(rf"^{re.escape(name)}\.(\d+)$")
        indexed = sorted(
            (int(m.group(1)), value) for key, value in self.raw.items() if (m := pattern.match(key)) and value != ""
        )
        values = [value for _, value in indexed]
        if limit is not None and len(values) > limit:
            raise EcsApiError(
                code=f"InvalidParameter.{name}",
                message=f"The specified parameter {name}.N has {len(values)} values; at most {limit} are allowed.",
                http_status=400,
            )
        return values

    def integer(self, name: str, *, default: int, low: int, high: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise EcsApiError(
                code=f"InvalidParameter.{name}",
                message=f"The specified parameter {name}={value!r} is not valid; it must be an integer {low}..{high}.",
                http_status=400,
            )
        return number

    def boolean(self, name: str) -> bool:
        value = self.get(name)
        return value is not None and value.lower() == "true"

    def time(self, name: str) -> datetime | None:
        value = self.get(name)
        if value is None:
            return None
        for fmt in (TIME_FORMAT, "%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
            try:
                return datetime.strptime(value, fmt).replace(tzinfo=UTC)
            except ValueError:
                continue
        raise EcsApiError(
            code=f"InvalidParameter.{name}",
            message=f"The specified parameter {name}={value!r} is not valid; use UTC yyyy-MM-ddTHH:mm:ssZ.",
            http_status=400,
        )

    def statuses(self, name: str) -> list[str]:
        values = self.repeated(name)
        for value in values:
            if value not in ALL_STATUSES:
                raise EcsApiError(
                    code=f"InvalidParameter.{name}",
                    message=f"The specified {name}.N value {value!r} is not valid; use one of {sorted(ALL_STATUSES)}.",
                    http_status=400,
                )
        return values


def _in_window(when: datetime | None, start: datetime | None, end: datetime | None) -> bool:
    if start is None and end is None:
        return True
    if when is None:
        return False
    return (start is None or when >= start) and (end is None or when <= end)


# ---------------------------------------------------------------------------------------------- rendering


def render_event(world: EcsWorld, event: SystemEvent, *, with_instance: bool = True) -> dict[str, Any]:
    """One system event in the ``InstanceSystemEventType`` / ``ScheduledSystemEventType`` shape."""
    instance = world.any_instance(event.instance_id)
    extended: dict[str, Any] = {"HostId": instance.host_id}
    if event.status == "Inquiring":
        extended["CanAccept"] = "true"
    if event.response_result is not None:
        extended["ResponseResult"] = event.response_result
    body: dict[str, Any] = {
        "EventId": event.event_id,
        "EventType": {
            "Code": EVENT_TYPE_CODES.get(event.event_type, _EVENT_TYPE_CODE_FALLBACK),
            "Name": event.event_type,
        },
        "EventCycleStatus": {"Code": EVENT_STATUS_CODES[event.status], "Name": event.status},
        "EventPublishTime": _fmt(event.publish_time),
        "Reason": event.reason,
        "ExtendedAttribute": extended,
    }
    if with_instance:
        body["InstanceId"] = event.instance_id
        body["ResourceType"] = "instance"
    if event.not_before is not None:
        body["NotBefore"] = _fmt(event.not_before)
    if event.finish_time is not None and event.status in TERMINAL_STATUSES:
        body["EventFinishTime"] = _fmt(event.finish_time)
    if event.impact_level is not None:
        body["ImpactLevel"] = event.impact_level
    return body


# ---------------------------------------------------------------------------------------------- actions

ActionHandler = Callable[[EcsWorld, _Params], dict[str, Any]]


def _region(world: EcsWorld, params: _Params) -> str:
    region_id = params.required("RegionId")
    if region_id in world.forbidden_regions:
        raise EcsApiError(
            code="Forbidden.RAM",
            message="User not authorized to operate on the specified resource, or this API doesn't support RAM.",
            http_status=403,
        )
    return region_id


def describe_instance_history_events(world: EcsWorld, params: _Params) -> dict[str, Any]:
    region_id = _region(world, params)
    instance_ids = {i for i in [params.get("InstanceId"), *params.repeated("ResourceId", limit=MAX_IDS)] if i}
    event_ids = set(params.repeated("EventId", limit=MAX_IDS))
    statuses = set(params.statuses("InstanceEventCycleStatus"))
    single_status = params.get("EventCycleStatus")
    if single_status is not None:
        if single_status not in ALL_STATUSES:
            raise EcsApiError(
                code="InvalidParameter.EventCycleStatus",
                message=f"The specified EventCycleStatus {single_status!r} is not valid.",
                http_status=400,
            )
        statuses.add(single_status)
    if not statuses:
        statuses = set(TERMINAL_STATUSES)  # the real default: finished events only (the polling trap)
    types = set(params.repeated("InstanceEventType", limit=30))
    if (single_type := params.get("EventType")) is not None:
        types.add(single_type)
    resource_type = params.get("ResourceType") or "instance"
    nb_start, nb_end = params.time("NotBefore.Start"), params.time("NotBefore.End")
    pub_start, pub_end = params.time("EventPublishTime.Start"), params.time("EventPublishTime.End")

    matching = [
        e
        for e in world.visible_events()
        if world.any_instance(e.instance_id).region_id == region_id
        and resource_type == "instance"
        and (not instance_ids or e.instance_id in instance_ids)
        and (not event_ids or e.event_id in event_ids)
        and e.status in statuses
        and (not types or e.event_type in types)
        and _in_window(e.not_before, nb_start, nb_end)
        and _in_window(e.publish_time, pub_start, pub_end)
    ]
    matching.sort(key=lambda e: (e.publish_time, e.event_id), reverse=True)
    total = len(matching)

    if params.get("NextToken") is not None or params.get("MaxResults") is not None:
        max_results = params.integer("MaxResults", default=10, low=1, high=MAX_PAGE_SIZE)
        offset = _decode_token(params.get("NextToken"))
        page = matching[offset : offset + max_results]
        next_offset = offset + len(page)
        return {
            "TotalCount": total,
            "NextToken": _encode_token(next_offset) if next_offset < total else "",
            "InstanceSystemEventSet": {"InstanceSystemEventType": [render_event(world, e) for e in page]},
        }
    page_size = params.integer("PageSize", default=10, low=1, high=MAX_PAGE_SIZE)
    page_number = params.integer("PageNumber", default=1, low=1, high=2**31 - 1)
    if page_number in world.throttled_history_pages or world.history_page_refusals.get(page_number, 0) > 0:
        if world.history_page_refusals.get(page_number, 0) > 0:
            world.history_page_refusals[page_number] -= 1
        raise EcsApiError(code="Throttling.User", message="Request was denied due to user flow control.")
    start = (page_number - 1) * page_size
    page = matching[start : start + page_size]
    return {
        "TotalCount": total,
        "PageNumber": page_number,
        "PageSize": page_size,
        "InstanceSystemEventSet": {"InstanceSystemEventType": [render_event(world, e) for e in page]},
    }


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"nodeheal-sim:{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str | None) -> int:
    if token is None:
        return 0
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = decoded.partition(":")
        if prefix != "nodeheal-sim":
            raise ValueError(prefix)
        return int(number)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EcsApiError(
            code="InvalidParameter.NextToken",
            message=f"The specified NextToken {token!r} is not valid; pass the NextToken of the previous page.",
            http_status=400,
        ) from exc


def describe_instances_full_status(world: EcsWorld, params: _Params) -> dict[str, Any]:
    region_id = _region(world, params)
    instance_ids = set(params.repeated("InstanceId", limit=MAX_IDS))
    event_ids = set(params.repeated("EventId", limit=MAX_IDS))
    status_filter = params.get("Status")
    health_filter = params.get("HealthStatus")
    types = set(params.repeated("InstanceEventType", limit=30))
    if (single_type := params.get("EventType")) is not None:
        types.add(single_type)
    nb_start, nb_end = params.time("NotBefore.Start"), params.time("NotBefore.End")
    pub_start, pub_end = params.time("EventPublishTime.Start"), params.time("EventPublishTime.End")
    event_filtered = bool(event_ids or types or nb_start or nb_end or pub_start or pub_end)
    page_size = params.integer("PageSize", default=10, low=1, high=MAX_PAGE_SIZE)
    page_number = params.integer("PageNumber", default=1, low=1, high=2**31 - 1)

    if instance_ids:
        found = (world.instances.get(InstanceId(i)) for i in sorted(instance_ids))
        candidates = [i for i in found if i is not None and i.region_id == region_id]
    else:
        candidates = world.instances_in(region_id)
    start = (page_number - 1) * page_size

    def scheduled_events(instance: EcsInstance) -> list[SystemEvent]:
        return [
            e
            for e in world.events_of(instance.instance_id)
            if e.status == "Scheduled"  # the real API shows Scheduled events only (reference §0.4)
            and (not event_ids or e.event_id in event_ids)
            and (not types or e.event_type in types)
            and _in_window(e.not_before, nb_start, nb_end)
            and _in_window(e.publish_time, pub_start, pub_end)
        ]

    if not (status_filter or health_filter or event_filtered):
        # fast path for paging through a big fleet: render only the requested page
        page = candidates[start : start + page_size]
        rows = [_render_full_status(world, i, world.health_status(i), scheduled_events(i)) for i in page]
        total = len(candidates)
    else:
        matched: list[dict[str, Any]] = []
        for instance in candidates:
            if status_filter and instance.status != status_filter:
                continue
            health = world.health_status(instance)
            if health_filter and health != health_filter:
                continue
            scheduled = scheduled_events(instance)
            if event_filtered and not scheduled:
                continue
            matched.append(_render_full_status(world, instance, health, scheduled))
        rows = matched[start : start + page_size]
        total = len(matched)
    return {
        "TotalCount": total,
        "PageNumber": page_number,
        "PageSize": page_size,
        "InstanceFullStatusSet": {"InstanceFullStatusType": rows},
    }


def _render_full_status(
    world: EcsWorld, instance: EcsInstance, health: str, scheduled: list[SystemEvent]
) -> dict[str, Any]:
    scheduled.sort(key=lambda e: (e.publish_time, e.event_id))
    return {
        "InstanceId": instance.instance_id,
        "Status": {"Code": INSTANCE_STATUS_CODES[instance.status], "Name": instance.status},
        "HealthStatus": {"Code": HEALTH_STATUS_CODES[health], "Name": health},
        "ScheduledSystemEventSet": {
            "ScheduledSystemEventType": [render_event(world, e, with_instance=False) for e in scheduled]
        },
    }


def reboot_instance(world: EcsWorld, params: _Params) -> dict[str, Any]:
    instance_id = params.required("InstanceId")
    if params.boolean("DryRun"):
        instance = world.instance(instance_id)
        world._require_idle(instance, allowed=("Running",))
        raise EcsApiError(
            code="DryRunOperation", message="Request validation has been passed with DryRun flag set.", http_status=400
        )
    world.reboot_instance(instance_id, force_stop=params.boolean("ForceStop"))
    return {}


def redeploy_instance(world: EcsWorld, params: _Params) -> dict[str, Any]:
    instance_id = params.required("InstanceId")
    task_id = world.redeploy_instance(instance_id, force_stop=params.boolean("ForceStop"))
    return {"TaskId": task_id}


def delete_instance(world: EcsWorld, params: _Params) -> dict[str, Any]:
    instance_id = params.required("InstanceId")
    if params.boolean("DryRun"):
        world.instance(instance_id)
        raise EcsApiError(
            code="DryRunOperation", message="Request validation has been passed with DryRun flag set.", http_status=400
        )
    world.delete_instance(instance_id, force=params.boolean("Force"))
    return {}


def run_instances(world: EcsWorld, params: _Params) -> dict[str, Any]:
    region_id = _region(world, params)
    version = params.get("LaunchTemplateVersion")
    ids = world.run_instances(
        region_id=region_id,
        template_id=params.get("LaunchTemplateId"),
        version=params.integer("LaunchTemplateVersion", default=1, low=1, high=2**31 - 1) if version else None,
        amount=params.integer("Amount", default=1, low=1, high=100),
        client_token=params.get("ClientToken"),
    )
    return {"OrderId": f"2{world.new_request_id()[:14].replace('-', '')}", "TradePrice": 0.0,
            "InstanceIdSets": {"InstanceIdSet": list(ids)}}  # fmt: skip


def accept_inquired_system_event(world: EcsWorld, params: _Params) -> dict[str, Any]:
    region_id = _region(world, params)
    event_id = params.required("EventId")
    world.accept_inquired_system_event(event_id, region_id=region_id)
    return {}


def create_simulated_system_events(world: EcsWorld, params: _Params) -> dict[str, Any]:
    region_id = _region(world, params)
    event_type = params.required("EventType")
    if event_type not in KNOWN_EVENT_TYPES:
        raise EcsApiError(
            code="InvalidParameter.EventType",
            message=f"The specified EventType {event_type!r} is not supported for simulated events.",
            http_status=400,
        )
    instance_ids = params.repeated("InstanceId", limit=MAX_IDS)
    if not instance_ids:
        params.required("InstanceId.1")
    not_before = params.time("NotBefore")
    if not_before is None:
        params.required("NotBefore")
        raise AssertionError("unreachable")  # pragma: no cover - required() raised
    event_ids = world.create_simulated_system_events(
        instance_ids=instance_ids, event_type=event_type, not_before=not_before, region_id=region_id
    )
    return {"EventIdSet": {"EventId": list(event_ids)}}


def cancel_simulated_system_events(world: EcsWorld, params: _Params) -> dict[str, Any]:
    region_id = _region(world, params)
    event_ids = params.repeated("EventId", limit=MAX_IDS)
    if not event_ids:
        params.required("EventId.1")
    world.cancel_simulated_system_events(event_ids, region_id=region_id)
    return {}


ACTIONS: Final[Mapping[str, ActionHandler]] = {
    "DescribeInstanceHistoryEvents": describe_instance_history_events,
    "DescribeInstancesFullStatus": describe_instances_full_status,
    "RebootInstance": reboot_instance,
    "RedeployInstance": redeploy_instance,
    "AcceptInquiredSystemEvent": accept_inquired_system_event,
    "DeleteInstance": delete_instance,
    "RunInstances": run_instances,
    "CreateSimulatedSystemEvents": create_simulated_system_events,
    "CancelSimulatedSystemEvents": cancel_simulated_system_events,
}

# Parameters that describe the request rather than the action (signature, format); kept out of RecordedCall.
_PROTOCOL_PARAMS: Final = frozenset(
    {
        "Action",
        "Version",
        "AccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "SignatureType",
        "Timestamp",
        "Format",
        "SecurityToken",
    }
)
_ACS3_AUTH = re.compile(r"^(?P<algo>ACS3-[A-Z0-9-]+)\s+(?P<rest>.*)$")


# ---------------------------------------------------------------------------------------------- HTTP


def _error_body(*, request_id: str, code: str, message: str) -> dict[str, str]:
    return {
        "RequestId": request_id,
        "HostId": HOST_ID,
        "Code": code,
        "Message": message,
        "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}&product=Ecs",
    }


def _access_key_id(request: web.Request, params: _Params) -> str:
    """The caller's AccessKeyId, from the V3 Authorization header or the V2 query parameters."""
    authorization = request.headers.get("Authorization")
    if authorization:
        match = _ACS3_AUTH.match(authorization.strip())
        if match is None:
            raise EcsApiError(
                code="IncompleteSignature",
                message="The request signature does not conform to Aliyun standards. (Authorization header malformed)",
                http_status=400,
            )
        fields = dict(part.strip().split("=", 1) for part in match.group("rest").split(",") if "=" in part)
        if not fields.get("Credential"):
            raise EcsApiError(
                code="MissingAccessKeyId", message="AccessKeyId is mandatory for this action.", http_status=400
            )
        if not fields.get("Signature"):
            raise EcsApiError(
                code="IncompleteSignature",
                message="The request signature does not conform to Aliyun standards. (no Signature)",
                http_status=400,
            )
        return fields["Credential"]
    access_key_id = params.get("AccessKeyId")
    if access_key_id is None:
        raise EcsApiError(
            code="MissingAccessKeyId", message="AccessKeyId is mandatory for this action.", http_status=400
        )
    if params.get("Signature") is None:
        raise EcsApiError(
            code="IncompleteSignature",
            message="The request signature does not conform to Aliyun standards. (no Signature)",
            http_status=400,
        )
    return access_key_id


def build_app(world: EcsWorld, *, access_key_ids: Collection[str] | None = None) -> web.Application:
    """The aiohttp application serving the ECS RPC endpoint (``/``) and the ``/_sim/`` control surface."""

    async def rpc(request: web.Request) -> web.Response:
        raw: dict[str, str] = dict(request.query)
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            raw.update({k: v for k, v in form.items() if isinstance(v, str)})
        params = _Params(raw)
        action = params.get("Action") or request.headers.get("x-acs-action") or ""
        version = params.get("Version") or request.headers.get("x-acs-version") or ""
        request_id = world.new_request_id()
        recorded = {k: v for k, v in raw.items() if k not in _PROTOCOL_PARAMS}
        access_key_id: str | None = None
        try:
            world.tick()
            access_key_id = _access_key_id(request, params)
            if access_key_ids is not None and access_key_id not in access_key_ids:
                raise EcsApiError(
                    code="InvalidAccessKeyId.NotFound", message="Specified access key is not found.", http_status=404
                )
            if not action:
                params.required("Action")
            if version != API_VERSION:
                raise EcsApiError(
                    code="InvalidVersion",
                    message=f"Specified parameter Version {version!r} is not valid; Ecs speaks {API_VERSION}.",
                    http_status=400,
                )
            handler = ACTIONS.get(action)
            if handler is None:
                raise EcsApiError(
                    code="InvalidAction.NotFound",
                    message=f"Specified api {action!r} is not found, please check your url and method.",
                    http_status=404,
                )
            body = {"RequestId": request_id, **handler(world, params)}
            status, error_code = 200, None
        except EcsApiError as err:
            body = _error_body(request_id=request_id, code=err.code, message=err.message)
            status, error_code = err.http_status, err.code
        except Exception:
            log.exception("ECS emulator failed on %s %s", action, recorded)
            body = _error_body(
                request_id=request_id,
                code="InternalError",
                message="The request processing has failed due to some unknown error, exception or failure.",
            )
            status, error_code = 500, "InternalError"
        world.record_call(
            RecordedCall(
                action=action,
                params=recorded,
                at=world.now(),
                http_status=status,
                error_code=error_code,
                request_id=request_id,
                access_key_id=access_key_id,
            )
        )
        delay = world.reply_delays.get(action)
        if delay:
            await asyncio.sleep(delay)  # the call took effect; its answer is late
        return web.json_response(body, status=status, headers={"x-acs-request-id": request_id})

    async def sim_publish(request: web.Request) -> web.Response:
        """POST /_sim/events {"instance_id", "event_type", "not_before"?, "status"?}: the platform publishes."""
        try:
            payload = await request.json()
            not_before = payload.get("not_before")
            status: EventStatus | None = payload.get("status")
            event = world.publish_event(
                payload["instance_id"],
                payload["event_type"],
                not_before=datetime.fromisoformat(not_before.replace("Z", "+00:00")) if not_before else None,
                status=status,
            )
        except (KeyError, ValueError, TypeError, EcsApiError, json.JSONDecodeError) as exc:
            return web.json_response({"error": f"cannot publish event: {exc!r}"}, status=400)
        return web.json_response(render_event(world, event))

    async def sim_state(_: web.Request) -> web.Response:
        world.tick()
        return web.json_response(
            {
                "now": _fmt(world.now()),
                "instances": [
                    {
                        "InstanceId": i.instance_id,
                        "RegionId": i.region_id,
                        "ZoneId": i.zone_id,
                        "HostId": i.host_id,
                        "Status": i.status,
                        "LocalDiskGeneration": i.local_disk_generation,
                        "HealthStatus": world.health_status(i),
                    }
                    for i in world.instances.values()
                ],
                "events": [render_event(world, e) for e in world.events.values()],
            }
        )

    app = web.Application()
    app.router.add_route("POST", "/", rpc)
    app.router.add_route("GET", "/", rpc)
    app.router.add_post("/_sim/events", sim_publish)
    app.router.add_get("/_sim/state", sim_state)
    return app


class EcsEmulator:
    """Serves an ``EcsWorld`` on 127.0.0.1:<free port> as the ECS OpenAPI endpoint.

    ``async with EcsEmulator(world) as emu:`` → ``emu.endpoint`` (``"127.0.0.1:PORT"``, what the SDK's
    ``Config(endpoint=..., protocol="http")`` wants), ``emu.sdk_config()``, ``emu.calls``,
    ``await emu.wait_for_call("RebootInstance")``. With a non-manual clock a background task ticks the world
    every ``tick_interval_s`` so NotBefore / reboot completion happen on time even with no API traffic.
    """

    def __init__(
        self,
        world: EcsWorld | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_key_ids: Collection[str] | None = None,
        tick_interval_s: float = 0.2,
    ) -> None:
        self.world = world if world is not None else EcsWorld()
        self.host = host
        self._requested_port = port
        self._access_key_ids = access_key_ids
        self._tick_interval_s = tick_interval_s
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._port: int | None = None
        self._call_waiters: list[tuple[Callable[[RecordedCall], bool], asyncio.Future[RecordedCall]]] = []
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EcsEmulator is not started; use `async with EcsEmulator(world) as emu:`")
        return self._port

    @property
    def endpoint(self) -> str:
        """``host:port`` for ``alibabacloud_tea_openapi.models.Config(endpoint=...)``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def calls(self) -> list[RecordedCall]:
        return self.world.calls

    def sdk_config(
        self,
        *,
        region_id: str = "cn-hangzhou",
        access_key_id: str = "sim-access-key-id",
        access_key_secret: str = "sim-access-key-secret",  # noqa: S107 - a fake credential for a local emulator
        read_timeout_ms: int = 10_000,
    ) -> Config:
        """An SDK ``Config`` pointing at this emulator (plain HTTP, fake credentials)."""
        from alibabacloud_tea_openapi.models import Config

        return Config(
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            endpoint=self.endpoint,
            protocol="http",
            region_id=region_id,
            read_timeout=read_timeout_ms,
            connect_timeout=read_timeout_ms,
        )

    async def wait_for_call(
        self,
        action: str,
        *,
        where: Callable[[RecordedCall], bool] | None = None,
        timeout_s: float = 10.0,
        include_past: bool = True,
    ) -> RecordedCall:
        """The first (past or future) call of ``action`` matching ``where``; TimeoutError names what was seen."""

        def wanted(call: RecordedCall) -> bool:
            return call.action == action and (where is None or where(call))

        if include_past:
            for call in self.world.calls:
                if wanted(call):
                    return call
        future: asyncio.Future[RecordedCall] = asyncio.get_running_loop().create_future()
        entry = (wanted, future)
        self._call_waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            seen = [(c.action, c.params, c.error_code) for c in self.world.calls[-10:]]
            raise TimeoutError(
                f"no {action} call reached the ECS emulator at {self.endpoint} within {timeout_s}s; last calls: {seen}"
            ) from None
        finally:
            if entry in self._call_waiters:
                self._call_waiters.remove(entry)

    def _on_call(self, call: RecordedCall) -> None:
        for wanted, future in list(self._call_waiters):
            if not future.done() and wanted(call):
                future.set_result(call)

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._runner = web.AppRunner(build_app(self.world, access_key_ids=self._access_key_ids), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        addresses = self._runner.addresses
        self._port = int(addresses[0][1])
        self._unsubscribe = self.world.on_call(self._on_call)
        if not isinstance(self.world.clock, ManualClock):
            self._ticker = asyncio.create_task(self._tick_forever(), name=f"ecs-emulator-tick-{self._port}")

    async def _tick_forever(self) -> None:
        while True:
            try:
                self.world.tick()
            except Exception:
                log.exception("ECS emulator world tick failed")
            await asyncio.sleep(self._tick_interval_s)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._port = None

    async def __aenter__(self) -> EcsEmulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# ---------------------------------------------------------------------------------------------- standalone


async def _serve_forever(emulator: EcsEmulator, started: Callable[[EcsEmulator], Awaitable[None]] | None) -> None:
    async with emulator:
        if started is not None:
            await started(emulator)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nodeheal.sim.ecs_api", description="Alibaba Cloud ECS OpenAPI emulator (local only)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (printed on start)")
    parser.add_argument("--region", default="cn-hangzhou")
    parser.add_argument("--instances", default="", help="comma-separated instance ids to create (Running)")
    parser.add_argument("--reboot-seconds", type=float, default=60.0)
    parser.add_argument("--redeploy-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    clock: Clock = SystemClock()
    world = EcsWorld(
        clock=clock,
        reboot_duration=timedelta(seconds=args.reboot_seconds),
        redeploy_duration=timedelta(seconds=args.redeploy_seconds),
    )
    for instance_id in filter(None, (i.strip() for i in args.instances.split(","))):
        world.add_instance(instance_id, region_id=args.region)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def announce(emulator: EcsEmulator) -> None:
        log.info(
            "ECS emulator listening on %s (region %s, %d instances)", emulator.url, args.region, len(world.instances)
        )

    asyncio.run(_serve_forever(EcsEmulator(world, host=args.host, port=args.port), announce))


if __name__ == "__main__":
    main()
