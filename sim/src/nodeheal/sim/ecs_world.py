"""A stateful, time-aware model of Alibaba Cloud ECS instances and their system events.

``EcsWorld`` is what the ECS OpenAPI emulator (``nodeheal.sim.ecs_api``) serves over HTTP, and what the fleet
simulator drives in-process: it holds instances (status, host, local disks) and system events with the real
lifecycle (Alibaba ECS "System events" docs; ``docs/cloud-events.md``)::

    Inquiring ──AcceptInquiredSystemEvent──► Executing ──► Executed
    Scheduled ──NotBefore reached──────────► Executing ──► Executed | Failed
    Scheduled/Inquiring ──RebootInstance (SystemMaintenance.Reboot) / RedeployInstance──► Avoided
    any open state ──platform cancels──► Canceled
    SystemFailure.* / InstanceFailure.* start at Executing (``inject_failure``)

Time only moves through the injected clock; ``tick()`` applies everything that became due, in time order
(so one big ``ManualClock.advance`` still runs reboot → event Executed in the right sequence). Observers get
``WorldChange`` notifications (instance down / up, event status changes) through ``on_change``; that is how
the fleet simulator learns "instance X is rebooting" and takes the node down, then brings it back.

This module must never talk to a real cloud and has no transport in it.
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Literal, NewType

from nodeheal.sim.clock import Clock, ManualClock

InstanceId = NewType("InstanceId", str)
EventId = NewType("EventId", str)
TaskId = NewType("TaskId", str)

EventStatus = Literal["Inquiring", "Scheduled", "Executing", "Executed", "Avoided", "Canceled", "Failed"]
InstanceStatus = Literal["Pending", "Running", "Starting", "Stopping", "Stopped"]
OperationKind = Literal["reboot", "redeploy", "stop"]
Initiator = Literal["api", "platform", "accept"]

OPEN_STATUSES: frozenset[str] = frozenset({"Inquiring", "Scheduled", "Executing"})
TERMINAL_STATUSES: frozenset[str] = frozenset({"Executed", "Avoided", "Canceled", "Failed"})
ALL_STATUSES: frozenset[str] = OPEN_STATUSES | TERMINAL_STATUSES
FINISHED_EVENT_RETENTION = timedelta(days=30)
SIMULATED_REASON = "A simulated event."

# Event codes whose executing action restarts the instance, moves it, or stops it.
_REBOOT_CODES = frozenset(
    {
        "SystemMaintenance.Reboot",
        "SystemFailure.Reboot",
        "InstanceFailure.Reboot",
        "SystemMaintenance.RebootAndIsolateErrorDisk",
        "SystemMaintenance.RebootAndReInitErrorDisk",
    }
)
_REDEPLOY_CODES = frozenset({"SystemMaintenance.Redeploy", "SystemFailure.Redeploy"})
_STOP_CODES = frozenset({"SystemMaintenance.Stop", "SystemFailure.Stop", "InstanceExpiration.Stop"})

# RedeployInstance answers these (code, status) pairs (reference §1.8).
_REDEPLOY_ANSWERS: frozenset[tuple[str, str]] = frozenset(
    {
        ("SystemMaintenance.Reboot", "Inquiring"),
        ("SystemMaintenance.Reboot", "Scheduled"),
        ("SystemMaintenance.Redeploy", "Inquiring"),
        ("SystemMaintenance.Redeploy", "Scheduled"),
        ("SystemFailure.Redeploy", "Inquiring"),
        ("SystemFailure.Redeploy", "Scheduled"),
        ("SystemMaintenance.RebootAndIsolateErrorDisk", "Inquiring"),
        ("SystemMaintenance.RebootAndReInitErrorDisk", "Inquiring"),
        ("SystemMaintenance.IsolateErrorDisk", "Inquiring"),
        ("SystemMaintenance.ReInitErrorDisk", "Inquiring"),
        ("SystemFailure.Reboot", "Executing"),
    }
)


def is_failure_code(event_type: str) -> bool:
    """Failure events have no window: they are published directly in ``Executing``."""
    return event_type.startswith(("SystemFailure.", "InstanceFailure."))


class EcsApiError(Exception):
    """An error the real ECS API would return: ``code`` and ``message`` as Alibaba words them, ``http_status``."""

    def __init__(self, *, code: str, message: str, http_status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


@dataclass
class EcsInstance:
    instance_id: InstanceId
    region_id: str
    zone_id: str
    host_id: str
    status: InstanceStatus = "Running"
    instance_name: str = ""
    has_local_disks: bool = True
    # Incremented each time the local disks are re-initialized (redeploy): the simulator compares it.
    local_disk_generation: int = 0
    boot_count: int = 0


@dataclass
class SystemEvent:
    event_id: EventId
    instance_id: InstanceId
    event_type: str
    status: EventStatus
    publish_time: datetime
    not_before: datetime | None
    reason: str = ""
    impact_level: str | None = None
    simulated: bool = False
    trigger_real_ops: bool = False
    execute_start_time: datetime | None = None
    finish_time: datetime | None = None
    response_result: str | None = None
    # How long a platform-run action with no instance effect (e.g. disk isolation) takes.
    execution_duration: timedelta = timedelta(minutes=2)
    # Events answered by a running operation: they turn Avoided when it completes, and never execute.
    answered_by: TaskId | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass
class Operation:
    """A running RebootInstance / RedeployInstance / platform action on one instance (``task_id`` = TaskId)."""

    task_id: TaskId
    kind: OperationKind
    initiator: Initiator
    instance_id: InstanceId
    started_at: datetime
    midpoint: datetime
    finishes_at: datetime
    target_host: str
    reached_midpoint: bool = False
    events_to_execute: list[EventId] = field(default_factory=list)
    events_to_avoid: list[EventId] = field(default_factory=list)


@dataclass(frozen=True)
class WorldChange:
    """One observable change: ``instance_down`` / ``instance_up`` / ``event_status``."""

    kind: Literal["instance_down", "instance_up", "event_status"]
    at: datetime
    instance_id: InstanceId
    reason: str
    initiator: Initiator | None = None
    task_id: TaskId | None = None
    event_id: EventId | None = None
    event_type: str | None = None
    event_status: str | None = None
    previous_status: str | None = None
    host_id: str | None = None
    local_disks_wiped: bool = False


@dataclass
class LaunchTemplate:
    """A launch template (``lt-…``): what ``RunInstances`` recreates a node pool's machine from."""

    template_id: str
    name: str
    region_id: str
    zone_id: str
    node_pool: str | None = None
    versions: tuple[int, ...] = (1,)
    default_version: int = 1


@dataclass(frozen=True)
class Released:
    """One ``DeleteInstance``: the instance that left and when."""

    instance_id: InstanceId
    at: datetime
    forced: bool


@dataclass(frozen=True)
class Created:
    """One instance ``RunInstances`` made: from which template (and version), for which ClientToken."""

    instance_id: InstanceId
    at: datetime
    template_id: str | None
    version: int | None
    client_token: str | None


@dataclass(frozen=True)
class RecordedCall:
    """One API call as it reached the endpoint, with the outcome."""

    action: str
    params: dict[str, str]
    at: datetime
    http_status: int
    error_code: str | None
    request_id: str
    access_key_id: str | None


ChangeListener = Callable[[WorldChange], None]
CallListener = Callable[[RecordedCall], None]


class EcsWorld:
    """The emulated ECS region(s): instances, system events, running operations and the call log."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        reboot_duration: timedelta = timedelta(seconds=60),
        redeploy_duration: timedelta = timedelta(minutes=5),
        stop_duration: timedelta = timedelta(seconds=30),
        seed: int = 0,
    ) -> None:
        self.clock: Clock = clock if clock is not None else ManualClock()
        self.reboot_duration = reboot_duration
        self.redeploy_duration = redeploy_duration
        self.stop_duration = stop_duration
        self.instances: dict[InstanceId, EcsInstance] = {}
        self.events: dict[EventId, SystemEvent] = {}
        self.operations: dict[TaskId, Operation] = {}
        self.finished_operations: dict[TaskId, Operation] = {}
        self.changes: list[WorldChange] = []
        # indexes so that a 50,000-instance world stays O(open events) per tick
        self._open: dict[EventId, SystemEvent] = {}
        self._events_by_instance: dict[InstanceId, list[SystemEvent]] = {}
        self._op_by_instance: dict[InstanceId, TaskId] = {}
        self._sorted_by_region: dict[str, list[EcsInstance]] = {}
        self.calls: list[RecordedCall] = []
        self._rng = random.Random(seed)  # ids only; deterministic per seed
        self._change_listeners: list[ChangeListener] = []
        self._call_listeners: list[CallListener] = []
        self._host_counter = 0
        self.launch_templates: dict[str, LaunchTemplate] = {}
        # regions this account's RAM policy does not cover: every call naming one is refused (Forbidden.RAM)
        self.forbidden_regions: set[str] = set()
        # pages (`PageNumber`) of DescribeInstanceHistoryEvents answered `Throttling.User` for as long as they
        # are listed here: a test throttles the k-th page of a scan (API flow control hit mid-scan)
        self.throttled_history_pages: set[int] = set()
        # pages of DescribeInstanceHistoryEvents refused `Throttling.User` this many more times (a brief throttle)
        self.history_page_refusals: dict[int, int] = {}
        # actions (`RebootInstance`, …) whose reply is held this many seconds after the call took effect: a client
        # whose read timeout is shorter sees no answer to a call that did run (a reply lost on the way back)
        self.reply_delays: dict[str, float] = {}
        self.released: dict[InstanceId, EcsInstance] = {}
        self.releases: list[Released] = []
        self.created: list[Created] = []
        self._by_client_token: dict[str, list[InstanceId]] = {}

    # ------------------------------------------------------------------ time

    def now(self) -> datetime:
        return self.clock.now()

    def advance(self, delta: timedelta) -> datetime:
        """Move a ``ManualClock`` forward and apply everything that became due."""
        if not isinstance(self.clock, ManualClock):
            raise TypeError(
                f"advance() needs a ManualClock, this world runs on {type(self.clock).__name__}; call tick() instead"
            )
        self.clock.advance(delta)
        self.tick()
        return self.clock.now()

    def tick(self) -> None:
        """Apply every transition whose time has come, earliest first."""
        now = self.now()
        while True:
            due = self._next_due()
            if due is None or due[0] > now:
                return
            due[1]()

    def _next_due(self) -> tuple[datetime, Callable[[], None]] | None:
        best: tuple[datetime, Callable[[], None]] | None = None

        def consider(when: datetime, action: Callable[[], None]) -> None:
            nonlocal best
            if best is None or when < best[0]:
                best = (when, action)

        for op in self.operations.values():
            if not op.reached_midpoint:
                consider(op.midpoint, partial(self._op_midpoint, op))
            else:
                consider(op.finishes_at, partial(self._op_finish, op))
        for event in self._open.values():
            if event.answered_by is not None:
                continue
            if event.status == "Scheduled" and event.not_before is not None:
                consider(event.not_before, partial(self._start_execution, event, at=event.not_before))
            elif event.status == "Executing" and not self._runs_an_operation(event):
                end = self._execution_end(event)
                consider(end, partial(self._set_status, event, "Executed", at=end))
        return best

    def _execution_end(self, event: SystemEvent) -> datetime:
        if event.simulated and is_failure_code(event.event_type) and event.not_before is not None:
            return event.not_before  # simulated failure events turn Executed at their NotBefore
        start = event.execute_start_time or event.publish_time
        return start if event.simulated else start + event.execution_duration

    def _runs_an_operation(self, event: SystemEvent) -> bool:
        return any(event.event_id in op.events_to_execute for op in self.operations.values())

    # ------------------------------------------------------------------ observers

    def on_change(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener`` for every ``WorldChange`` (synchronously); returns an unsubscribe function."""
        self._change_listeners.append(listener)
        return lambda: self._change_listeners.remove(listener)

    def on_call(self, listener: CallListener) -> Callable[[], None]:
        """Call ``listener`` for every recorded API call; returns an unsubscribe function."""
        self._call_listeners.append(listener)
        return lambda: self._call_listeners.remove(listener)

    def record_call(self, call: RecordedCall) -> None:
        self.calls.append(call)
        for listener in list(self._call_listeners):
            listener(call)

    def calls_to(self, action: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.action == action]

    def _emit(self, change: WorldChange) -> None:
        self.changes.append(change)
        for listener in list(self._change_listeners):
            listener(change)

    # ------------------------------------------------------------------ ids

    def _token(self, length: int) -> str:
        alphabet = string.ascii_lowercase + string.digits
        return "".join(self._rng.choice(alphabet) for _ in range(length))

    def new_request_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4)).upper()

    def _new_host_id(self) -> str:
        self._host_counter += 1
        return f"dh-sim{self._host_counter:04d}{self._token(8)}"

    # ------------------------------------------------------------------ fleet setup

    def add_instance(
        self,
        instance_id: str,
        *,
        region_id: str = "cn-hangzhou",
        zone_id: str | None = None,
        host_id: str | None = None,
        status: InstanceStatus = "Running",
        instance_name: str = "",
        has_local_disks: bool = True,
    ) -> EcsInstance:
        iid = InstanceId(instance_id)
        if iid in self.instances:
            raise ValueError(f"instance {instance_id!r} already exists in this EcsWorld; use a unique id")
        instance = EcsInstance(
            instance_id=iid,
            region_id=region_id,
            zone_id=zone_id if zone_id is not None else f"{region_id}-h",
            host_id=host_id if host_id is not None else self._new_host_id(),
            status=status,
            instance_name=instance_name or instance_id,
            has_local_disks=has_local_disks,
        )
        self.instances[iid] = instance
        self._sorted_by_region.pop(region_id, None)
        return instance

    def add_launch_template(
        self,
        template_id: str | None = None,
        *,
        node_pool: str | None = None,
        region_id: str = "cn-hangzhou",
        zone_id: str | None = None,
        name: str | None = None,
        versions: tuple[int, ...] = (1,),
    ) -> LaunchTemplate:
        """A launch template of a node pool (the fleet's machines are recreated from it by ``RunInstances``)."""
        tid = template_id or f"lt-{region_id[:2]}{self._token(18)}"
        template = LaunchTemplate(
            template_id=tid,
            name=name or (f"{node_pool}-template" if node_pool else tid),
            region_id=region_id,
            zone_id=zone_id if zone_id is not None else f"{region_id}-h",
            node_pool=node_pool,
            versions=versions,
            default_version=versions[0],
        )
        self.launch_templates[tid] = template
        return template

    def any_instance(self, instance_id: str) -> EcsInstance:
        """A live or released instance (events of a released instance stay visible, as in the real API)."""
        iid = InstanceId(instance_id)
        return self.instances.get(iid) or self.released[iid]

    def instances_in(self, region_id: str) -> list[EcsInstance]:
        """The region's instances ordered by id (cached; the API pages through it)."""
        cached = self._sorted_by_region.get(region_id)
        if cached is None:
            cached = sorted(
                (i for i in self.instances.values() if i.region_id == region_id), key=lambda i: i.instance_id
            )
            self._sorted_by_region[region_id] = cached
        return cached

    def instance(self, instance_id: str, *, region_id: str | None = None) -> EcsInstance:
        instance = self.instances.get(InstanceId(instance_id))
        if instance is None or (region_id is not None and instance.region_id != region_id):
            raise EcsApiError(
                code="InvalidInstanceId.NotFound",
                message="The specified InstanceId does not exist.",
                http_status=404,
            )
        return instance

    def event(self, event_id: str) -> SystemEvent:
        event = self.events.get(EventId(event_id))
        if event is None:
            raise EcsApiError(
                code="InvalidEventId.NotFound", message="The specified EventId does not exist.", http_status=404
            )
        return event

    def operation_for(self, instance_id: str) -> Operation | None:
        task_id = self._op_by_instance.get(InstanceId(instance_id))
        return self.operations[task_id] if task_id is not None else None

    def events_of(self, instance_id: str) -> list[SystemEvent]:
        """Every event ever published for the instance, oldest first."""
        return list(self._events_by_instance.get(InstanceId(instance_id), ()))

    # ------------------------------------------------------------------ platform side (what Alibaba does)

    def publish_event(
        self,
        instance_id: str,
        event_type: str,
        *,
        not_before: datetime | None = None,
        status: EventStatus | None = None,
        reason: str = "",
        impact_level: str | None = None,
        simulated: bool = False,
        trigger_real_ops: bool = False,
        execution_duration: timedelta | None = None,
        event_id: str | None = None,
    ) -> SystemEvent:
        """Publish a system event the way the platform does.

        Maintenance events default to ``Scheduled`` with ``not_before`` (default: now + 24 h); failure events
        (``SystemFailure.*``, ``InstanceFailure.*``) always start ``Executing`` and run their action now.
        """
        instance = self.instance(instance_id)
        now = self.now()
        if is_failure_code(event_type) and status not in (None, "Executing"):
            raise ValueError(f"{event_type} is a failure event; it starts Executing, not {status}")
        initial: EventStatus = "Executing" if is_failure_code(event_type) else (status or "Scheduled")
        if initial not in ("Inquiring", "Scheduled", "Executing"):
            raise ValueError(f"an event is published Inquiring, Scheduled or Executing, not {initial}")
        if not_before is None and not is_failure_code(event_type):
            not_before = now + timedelta(hours=24)
        eid = EventId(event_id) if event_id is not None else EventId(f"e-{instance.region_id[:2]}{self._token(18)}")
        if eid in self.events:
            raise ValueError(f"event id {eid!r} already exists")
        event = SystemEvent(
            event_id=eid,
            instance_id=instance.instance_id,
            event_type=event_type,
            status=initial,
            publish_time=now,
            not_before=not_before,
            reason=reason or (SIMULATED_REASON if simulated else _default_reason(event_type)),
            impact_level=impact_level,
            simulated=simulated,
            trigger_real_ops=trigger_real_ops,
            execution_duration=execution_duration if execution_duration is not None else timedelta(minutes=2),
        )
        self.events[eid] = event
        self._open[eid] = event
        self._events_by_instance.setdefault(instance.instance_id, []).append(event)
        self._emit(
            WorldChange(
                kind="event_status",
                at=now,
                instance_id=instance.instance_id,
                reason="published",
                event_id=eid,
                event_type=event_type,
                event_status=initial,
                previous_status=None,
            )
        )
        if initial == "Executing":
            event.execute_start_time = now
            self._run_action(event, at=now, initiator="platform")
        return event

    def inject_failure(self, instance_id: str, event_type: str = "SystemFailure.Reboot") -> SystemEvent:
        """A host failure: the event is published ``Executing`` and the platform acts at once."""
        if not is_failure_code(event_type):
            raise ValueError(f"inject_failure wants a SystemFailure.* or InstanceFailure.* code, got {event_type!r}")
        return self.publish_event(instance_id, event_type)

    def promote_inquiring(self, event_id: str, *, not_before: datetime) -> SystemEvent:
        """The platform moves an ``Inquiring`` event to ``Scheduled`` (inferred edge, reference §1.3)."""
        event = self.event(event_id)
        if event.status != "Inquiring":
            raise ValueError(f"event {event_id} is {event.status}, only an Inquiring event can become Scheduled")
        event.not_before = not_before
        self._set_status(event, "Scheduled", at=self.now())
        return event

    def cancel_event(self, event_id: str) -> SystemEvent:
        """The platform cancels an open event."""
        event = self.event(event_id)
        if not event.is_open:
            raise ValueError(f"event {event_id} is already {event.status}; only open events can be canceled")
        self._set_status(event, "Canceled", at=self.now())
        return event

    def fail_event(self, event_id: str) -> SystemEvent:
        """The event's action failed (the instance's running operation, if any, still completes)."""
        event = self.event(event_id)
        for op in self.operations.values():
            if event.event_id in op.events_to_execute:
                op.events_to_execute.remove(event.event_id)
        self._set_status(event, "Failed", at=self.now())
        return event

    # ------------------------------------------------------------------ user side (the API actions)

    def reboot_instance(self, instance_id: str, *, force_stop: bool = False) -> TaskId:
        """``RebootInstance``: Running → Stopping → Starting → Running; answers SystemMaintenance.Reboot.

        Returns the internal operation id (the real API returns only a RequestId).
        """
        instance = self.instance(instance_id)
        self._require_idle(instance, allowed=("Running",))
        now = self.now()
        avoid = [
            e.event_id
            for e in self._open_events(instance.instance_id)
            if e.event_type == "SystemMaintenance.Reboot"
            and e.status in ("Inquiring", "Scheduled")
            and (e.not_before is None or now < e.not_before)
        ]
        return self._start_operation(instance, kind="reboot", initiator="api", at=now, avoid=avoid)

    def redeploy_instance(self, instance_id: str, *, force_stop: bool = False) -> TaskId:
        """``RedeployInstance``: moves the instance to another host (local disks re-initialized); async."""
        instance = self.instance(instance_id)
        self._require_idle(instance, allowed=("Running", "Stopped"))
        now = self.now()
        answered = [
            e
            for e in self._open_events(instance.instance_id)
            if (e.event_type, e.status) in _REDEPLOY_ANSWERS and not e.simulated
        ]
        avoid = [e.event_id for e in answered if e.status != "Executing"]
        execute = [e.event_id for e in answered if e.status == "Executing"]
        return self._start_operation(instance, kind="redeploy", initiator="api", at=now, avoid=avoid, execute=execute)

    def accept_inquired_system_event(self, event_id: str, *, region_id: str | None = None) -> SystemEvent:
        """``AcceptInquiredSystemEvent``: an ``Inquiring`` event starts executing its default action now."""
        event = self.events.get(EventId(event_id))
        if event is None or (region_id is not None and self.any_instance(event.instance_id).region_id != region_id):
            raise EcsApiError(
                code="InvalidEventId.NotFound", message="The specified EventId does not exist.", http_status=404
            )
        if event.status != "Inquiring" or event.answered_by is not None:
            raise EcsApiError(
                code="InvalidEventId.NoInquiringEventFound",
                message=f"The specified event {event_id} is not in the Inquiring state (it is {event.status}).",
                http_status=403,
            )
        instance = self.instances[event.instance_id]
        if self.operation_for(instance.instance_id) is not None:
            raise EcsApiError(
                code="OperationConflict",
                message="The operation may conflict with other operations on the instance.",
                http_status=403,
            )
        self._start_execution(event, at=self.now(), initiator="accept")
        return event

    def delete_instance(self, instance_id: str, *, force: bool = False) -> None:
        """``DeleteInstance``: the instance is released (a Running one only with ``Force``; never mid-operation)."""
        instance = self.instance(instance_id)
        if self.operation_for(instance.instance_id) is not None or (instance.status != "Stopped" and not force):
            raise EcsApiError(
                code="IncorrectInstanceStatus",
                message=(
                    f"The current status of the resource does not support this operation. "
                    f"(instance {instance.instance_id} is {instance.status}; a running instance needs Force=true)"
                ),
                http_status=403,
            )
        now = self.now()
        was_running = instance.status == "Running"
        del self.instances[instance.instance_id]
        self.released[instance.instance_id] = instance
        self._sorted_by_region.pop(instance.region_id, None)
        self.releases.append(Released(instance_id=instance.instance_id, at=now, forced=force))
        for event in self._open_events(instance.instance_id):
            self._set_status(event, "Canceled", at=now)
        if was_running:
            self._emit(
                WorldChange(
                    kind="instance_down",
                    at=now,
                    instance_id=instance.instance_id,
                    reason="release",
                    initiator="api",
                    host_id=instance.host_id,
                )
            )

    def run_instances(
        self,
        *,
        region_id: str,
        template_id: str | None,
        version: int | None = None,
        amount: int = 1,
        client_token: str | None = None,
    ) -> list[InstanceId]:
        """``RunInstances`` from a launch template: ``amount`` new Running instances; the same ClientToken
        returns the instances of the first call and creates nothing (the API's idempotency)."""
        if client_token and client_token in self._by_client_token:
            return list(self._by_client_token[client_token])
        if template_id is None:
            raise EcsApiError(
                code="MissingParameter", message="LaunchTemplateId (or the instance settings) is required."
            )
        template = self.launch_templates.get(template_id)
        if template is None or template.region_id != region_id:
            raise EcsApiError(
                code="InvalidLaunchTemplate.NotFound",
                message=f"The specified launch template {template_id} does not exist.",
                http_status=404,
            )
        chosen = version if version is not None else template.default_version
        if chosen not in template.versions:
            raise EcsApiError(
                code="InvalidLaunchTemplateVersion.NotFound",
                message=f"The specified version {chosen} of launch template {template_id} does not exist.",
                http_status=404,
            )
        now = self.now()
        ids: list[InstanceId] = []
        for _ in range(amount):
            iid = InstanceId(f"i-{region_id[:2]}{self._token(18)}")
            self.add_instance(iid, region_id=region_id, zone_id=template.zone_id, instance_name=template.name)
            self.created.append(
                Created(instance_id=iid, at=now, template_id=template_id, version=chosen, client_token=client_token)
            )
            ids.append(iid)
        if client_token:
            self._by_client_token[client_token] = ids
        return ids

    def create_simulated_system_events(
        self, *, instance_ids: Iterable[str], event_type: str, not_before: datetime, region_id: str | None = None
    ) -> list[EventId]:
        """``CreateSimulatedSystemEvents``: drills; Reason ``A simulated event.``, no real action on the instance."""
        instances = [self.instance(i, region_id=region_id) for i in instance_ids]
        return [
            self.publish_event(
                inst.instance_id,
                event_type,
                not_before=not_before,
                status="Executing" if is_failure_code(event_type) else "Scheduled",
                simulated=True,
            ).event_id
            for inst in instances
        ]

    def cancel_simulated_system_events(self, event_ids: Iterable[str], *, region_id: str | None = None) -> None:
        for event_id in event_ids:
            event = self.event(event_id)
            if region_id is not None and self.any_instance(event.instance_id).region_id != region_id:
                raise EcsApiError(
                    code="InvalidEventId.NotFound", message="The specified EventId does not exist.", http_status=404
                )
            if not event.simulated:
                raise EcsApiError(
                    code="InvalidParameter.EventId",
                    message=f"The event {event_id} is not a simulated event and cannot be canceled.",
                    http_status=403,
                )
            if event.is_open:
                self._set_status(event, "Canceled", at=self.now())

    # ------------------------------------------------------------------ queries (used by the API layer)

    def health_status(self, instance: EcsInstance) -> str:
        if self.operation_for(instance.instance_id) is not None:
            return "Maintaining"
        if instance.status == "Stopped":
            return "NotApplicable"
        if instance.status != "Running":
            return "Initializing"
        if any(e.status in ("Scheduled", "Inquiring", "Executing") for e in self._open_events(instance.instance_id)):
            return "Warning"
        return "OK"

    def visible_events(self) -> list[SystemEvent]:
        """Events the API still shows: open ones forever, finished ones for 30 days."""
        horizon = self.now() - FINISHED_EVENT_RETENTION
        return [
            e for e in self.events.values() if e.is_open or (e.finish_time is not None and e.finish_time >= horizon)
        ]

    def _open_events(self, instance_id: InstanceId) -> list[SystemEvent]:
        return [e for e in self._events_by_instance.get(instance_id, ()) if e.is_open]

    # ------------------------------------------------------------------ mechanics

    def _require_idle(self, instance: EcsInstance, *, allowed: tuple[InstanceStatus, ...]) -> None:
        if self.operation_for(instance.instance_id) is not None or instance.status not in allowed:
            raise EcsApiError(
                code="IncorrectInstanceStatus",
                message=(
                    f"The current status of the resource does not support this operation. "
                    f"(instance {instance.instance_id} is {instance.status})"
                ),
                http_status=403,
            )

    def _start_operation(
        self,
        instance: EcsInstance,
        *,
        kind: OperationKind,
        initiator: Initiator,
        at: datetime,
        avoid: list[EventId] | None = None,
        execute: list[EventId] | None = None,
    ) -> TaskId:
        duration = {"reboot": self.reboot_duration, "redeploy": self.redeploy_duration, "stop": self.stop_duration}[
            kind
        ]
        task_id = TaskId(f"t-{instance.region_id[:2]}{self._token(18)}")
        op = Operation(
            task_id=task_id,
            kind=kind,
            initiator=initiator,
            instance_id=instance.instance_id,
            started_at=at,
            midpoint=at + duration / 2,
            finishes_at=at + duration,
            target_host=self._new_host_id() if kind == "redeploy" else instance.host_id,
            events_to_avoid=list(avoid or []),
            events_to_execute=list(execute or []),
        )
        self.operations[task_id] = op
        self._op_by_instance[instance.instance_id] = task_id
        for event_id in op.events_to_avoid:
            self.events[event_id].answered_by = task_id
        was_running = instance.status == "Running"
        instance.status = "Stopping" if was_running else "Starting"
        if not was_running:
            op.reached_midpoint = True  # a stopped instance (redeploy) goes straight to Starting
        self._emit(
            WorldChange(
                kind="instance_down",
                at=at,
                instance_id=instance.instance_id,
                reason=kind,
                initiator=initiator,
                task_id=task_id,
                host_id=instance.host_id,
            )
        )
        return task_id

    def _op_midpoint(self, op: Operation) -> None:
        op.reached_midpoint = True
        instance = self.instances[op.instance_id]
        if op.kind == "stop":
            self._op_finish(op)
            return
        instance.status = "Starting"
        if op.kind == "redeploy":
            instance.host_id = op.target_host

    def _op_finish(self, op: Operation) -> None:
        at = op.finishes_at if op.kind != "stop" else op.midpoint
        instance = self.instances[op.instance_id]
        del self.operations[op.task_id]
        self._op_by_instance.pop(op.instance_id, None)
        self.finished_operations[op.task_id] = op
        for event_id in op.events_to_avoid:
            event = self.events[event_id]
            event.answered_by = None
            if event.is_open:
                event.response_result = "true"
                self._set_status(event, "Avoided", at=at)
        if op.kind == "stop":
            instance.status = "Stopped"
        else:
            instance.status = "Running"
            instance.boot_count += 1
            if op.kind == "redeploy":
                instance.host_id = op.target_host
                if instance.has_local_disks:
                    instance.local_disk_generation += 1
            self._emit(
                WorldChange(
                    kind="instance_up",
                    at=at,
                    instance_id=instance.instance_id,
                    reason=op.kind,
                    initiator=op.initiator,
                    task_id=op.task_id,
                    host_id=instance.host_id,
                    local_disks_wiped=op.kind == "redeploy" and instance.has_local_disks,
                )
            )
        for event_id in op.events_to_execute:
            event = self.events[event_id]
            if event.status == "Executing":
                self._set_status(event, "Executed", at=at)

    def _start_execution(
        self,
        event: SystemEvent,
        *,
        at: datetime | None,
        initiator: Initiator = "platform",
    ) -> None:
        when = at if at is not None else self.now()
        event.execute_start_time = when
        self._set_status(event, "Executing", at=when)
        self._run_action(event, at=when, initiator=initiator)

    def _run_action(self, event: SystemEvent, *, at: datetime, initiator: Initiator) -> None:
        when = at
        if event.simulated and not event.trigger_real_ops:
            return  # simulated events change status only
        instance = self.instances[event.instance_id]
        running = self.operation_for(instance.instance_id)
        if running is not None:
            running.events_to_execute.append(event.event_id)  # the event completes with what is already running
            return
        kind: OperationKind | None = None
        if event.event_type in _REBOOT_CODES:
            kind = "reboot"
        elif event.event_type in _REDEPLOY_CODES:
            kind = "redeploy"
        elif event.event_type in _STOP_CODES:
            kind = "stop"
        if kind is None:
            return  # no instance effect; it turns Executed after execution_duration
        if instance.status not in ("Running",) and not (kind == "redeploy" and instance.status == "Stopped"):
            self._set_status(event, "Executed", at=when)  # nothing to restart: the action is a no-op
            return
        self._start_operation(instance, kind=kind, initiator=initiator, at=when, execute=[event.event_id])

    def _set_status(self, event: SystemEvent, status: EventStatus, *, at: datetime) -> None:
        before = event.status
        if before == status:
            return
        event.status = status
        if status in TERMINAL_STATUSES:
            self._open.pop(event.event_id, None)
            event.finish_time = at
            event.answered_by = None
        self._emit(
            WorldChange(
                kind="event_status",
                at=at,
                instance_id=event.instance_id,
                reason="status",
                event_id=event.event_id,
                event_type=event.event_type,
                event_status=status,
                previous_status=before,
            )
        )


def _default_reason(event_type: str) -> str:
    if event_type.startswith("SystemMaintenance."):
        return "System maintenance is scheduled due to hardware failure risk on the host."
    if event_type.startswith("SystemFailure."):
        return "The instance is being recovered because of a host failure."
    if event_type.startswith("InstanceFailure."):
        return "The instance is being restarted because of an instance (guest) error."
    return ""
