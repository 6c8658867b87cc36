"""Azure Instance Metadata Service emulator: Scheduled Events (``/metadata/scheduledevents``), real wire format.

What a VM sees at ``http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01``
(Azure's Scheduled Events doc, samples ``tests/data/cloud-events/azure-imds-*.json``):

* ``GET`` with header ``Metadata: true`` → ``{"DocumentIncarnation": int, "Events": [...]}``; each event has
  ``EventId, EventType, ResourceType, Resources, EventStatus, NotBefore, Description, EventSource,
  DurationInSeconds`` (older api-versions omit the newer fields). Without the header, with a proxy
  header (``X-Forwarded-For``), or without / with an unknown ``api-version``: 400 with IMDS's ``{"error": ...}``.
* ``POST`` the same URL with ``{"StartRequests": [{"EventId": "..."}]}`` → 200; the event starts now.
* Only two statuses, ``Scheduled`` and ``Started``. A started event **disappears** after its duration; a
  canceled one disappears too. ``DocumentIncarnation`` increases on every change of the array.

``AzureScheduledEvents`` is the state (usable in-process); ``AzureImdsEmulator`` serves it over HTTP::

    events = AzureScheduledEvents(clock=ManualClock())
    ev = events.schedule("Reboot", resources=["vmss_3"], not_before=events.now() + timedelta(minutes=15))
    async with AzureImdsEmulator(events) as imds:           # imds.scheduled_events_url
        ...  # GET / POST with aiohttp; events.advance(timedelta(minutes=15)) → Started; then it disappears

``vm_name`` gives one VM's view: events whose ``Resources`` or ``audience`` include it (events are broadcast
to a whole availability set, so a VM can see events for other VMs; ``audience`` models that).
Never forwards anything to Azure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Final, Literal

from aiohttp import web

from nodeheal.sim._http import LocalHttpEmulator
from nodeheal.sim.clock import Clock, ManualClock, SystemClock

EventType = Literal["Freeze", "Reboot", "Redeploy", "Preempt", "Terminate"]
EventStatus = Literal["Scheduled", "Started"]

SUPPORTED_API_VERSIONS: Final = (
    "2017-03-01",
    "2017-08-01",
    "2017-11-01",
    "2019-01-01",
    "2019-08-01",
    "2020-07-01",
)
LATEST_API_VERSION: Final = "2020-07-01"
# Minimum notice per type (reference §3); Terminate is user-configurable 5-15 min.
MINIMUM_NOTICE: Final[dict[str, timedelta]] = {
    "Freeze": timedelta(minutes=15),
    "Reboot": timedelta(minutes=15),
    "Redeploy": timedelta(minutes=10),
    "Preempt": timedelta(seconds=30),
    "Terminate": timedelta(minutes=5),
}
DEFAULT_DESCRIPTION: Final[dict[str, str]] = {
    "Freeze": "Virtual machine is being paused because of a memory-preserving Live Migration operation.",
    "Reboot": "Host server is undergoing maintenance.",
    "Redeploy": "Host server is undergoing maintenance.",
    "Preempt": "Virtual machine is being evicted because of a Spot capacity change.",
    "Terminate": "Virtual machine is being deleted as requested by authorized user.",
}


def rfc1123(when: datetime) -> str:
    """``Mon, 19 Sep 2016 18:29:47 GMT``: the format IMDS uses for ``NotBefore``."""
    return format_datetime(when.astimezone(UTC), usegmt=True)


@dataclass
class ScheduledEvent:
    event_id: str
    event_type: EventType
    resources: list[str]
    status: EventStatus
    not_before: datetime | None
    description: str
    event_source: Literal["Platform", "User"]
    duration_s: int
    started_at: datetime | None = None
    audience: set[str] = field(default_factory=set)
    # How long a Started event stays visible when DurationInSeconds is -1 (unknown).
    unknown_duration: timedelta = timedelta(minutes=5)

    def visible_to(self, vm_name: str | None) -> bool:
        return vm_name is None or vm_name in self.resources or vm_name in self.audience

    def render(self, api_version: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "EventId": self.event_id,
            "EventStatus": self.status,
            "EventType": self.event_type,
            "ResourceType": "VirtualMachine",
            "Resources": list(self.resources),
            "NotBefore": rfc1123(self.not_before) if self.status == "Scheduled" and self.not_before else "",
        }
        if api_version >= "2019-01-01":
            body["Description"] = self.description
        if api_version >= "2019-08-01":
            body["EventSource"] = self.event_source
        if api_version >= "2020-07-01":
            body["DurationInSeconds"] = self.duration_s
        return body


@dataclass(frozen=True)
class AzureChange:
    """``scheduled`` / ``started`` / ``completed`` / ``canceled`` for one event (resources = affected VMs)."""

    kind: Literal["scheduled", "started", "completed", "canceled"]
    at: datetime
    event_id: str
    event_type: str
    resources: tuple[str, ...]
    initiator: Literal["platform", "start_request"] | None = None


class StartRequestError(ValueError):
    """A malformed StartRequests body or an unknown EventId (IMDS answers 400)."""


class AzureScheduledEvents:
    """The scheduled-events state of one availability set / scale set, on an injectable clock."""

    def __init__(self, *, clock: Clock | None = None, seed: int = 0) -> None:
        self.clock: Clock = clock if clock is not None else ManualClock()
        self.incarnation = 1
        self.events: dict[str, ScheduledEvent] = {}
        self.changes: list[AzureChange] = []
        self._listeners: list[Callable[[AzureChange], None]] = []
        self._seed = seed
        self._counter = 0

    def now(self) -> datetime:
        return self.clock.now()

    def on_change(self, listener: Callable[[AzureChange], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, change: AzureChange) -> None:
        self.changes.append(change)
        for listener in list(self._listeners):
            listener(change)

    def _new_id(self) -> str:
        self._counter += 1
        return str(uuid.UUID(int=(self._seed << 64) + self._counter, version=4)).upper()

    def schedule(
        self,
        event_type: EventType,
        *,
        resources: Iterable[str],
        not_before: datetime | None = None,
        description: str | None = None,
        event_source: Literal["Platform", "User"] = "Platform",
        duration_s: int = -1,
        audience: Iterable[str] = (),
        event_id: str | None = None,
    ) -> ScheduledEvent:
        """Publish a ``Scheduled`` event; ``not_before`` defaults to now + the type's minimum notice."""
        vms = list(resources)
        if not vms:
            raise ValueError("an Azure scheduled event needs at least one VM name in resources")
        event = ScheduledEvent(
            event_id=event_id or self._new_id(),
            event_type=event_type,
            resources=vms,
            status="Scheduled",
            not_before=not_before if not_before is not None else self.now() + MINIMUM_NOTICE[event_type],
            description=description if description is not None else DEFAULT_DESCRIPTION[event_type],
            event_source=event_source,
            duration_s=duration_s,
            audience=set(audience),
        )
        self.events[event.event_id] = event
        self.incarnation += 1
        self._emit(AzureChange("scheduled", self.now(), event.event_id, event_type, tuple(vms)))
        return event

    def fail_now(
        self, event_type: EventType = "Reboot", *, resources: Iterable[str], duration_s: int = -1
    ) -> ScheduledEvent:
        """A hardware failure: the event appears directly ``Started`` with no notice."""
        event = self.schedule(
            event_type,
            resources=resources,
            not_before=self.now(),
            description="Virtual machine has encountered a failure.",
            duration_s=duration_s,
        )
        self._start(event, initiator="platform")
        return event

    def cancel(self, event_id: str) -> None:
        event = self.events.pop(event_id)
        self.incarnation += 1
        self._emit(AzureChange("canceled", self.now(), event_id, event.event_type, tuple(event.resources)))

    def reschedule(self, event_id: str, not_before: datetime) -> None:
        """The platform moves a ``Scheduled`` event: a new ``NotBefore`` and a new ``DocumentIncarnation``
        (Azure: the incarnation changes whenever the document carries new information)."""
        event = self._find(event_id)
        if event is None or event.status != "Scheduled":
            raise KeyError(f"no scheduled event {event_id!r}")
        event.not_before = not_before
        self.incarnation += 1

    def start_requests(self, event_ids: Iterable[str]) -> None:
        """``POST {"StartRequests": [...]}``: every listed (existing) event starts now."""
        ids = list(event_ids)
        unknown = [i for i in ids if self._find(i) is None]
        if unknown:
            raise StartRequestError(f"unknown EventId(s) {unknown}")
        for event_id in ids:
            event = self._find(event_id)
            if event is not None and event.status == "Scheduled":
                self._start(event, initiator="start_request")

    def _find(self, event_id: str) -> ScheduledEvent | None:
        return self.events.get(event_id) or next(
            (e for k, e in self.events.items() if k.lower() == event_id.lower()), None
        )

    def _start(self, event: ScheduledEvent, *, initiator: Literal["platform", "start_request"]) -> None:
        event.status = "Started"
        event.started_at = self.now()
        self.incarnation += 1
        self._emit(
            AzureChange("started", self.now(), event.event_id, event.event_type, tuple(event.resources), initiator)
        )

    def _ends_at(self, event: ScheduledEvent) -> datetime:
        assert event.started_at is not None
        if event.duration_s >= 0:
            return event.started_at + timedelta(seconds=event.duration_s)
        return event.started_at + event.unknown_duration

    def tick(self) -> None:
        now = self.now()
        for event in list(self.events.values()):
            if event.status == "Scheduled" and event.not_before is not None and event.not_before <= now:
                self._start(event, initiator="platform")
            if event.status == "Started" and self._ends_at(event) <= now:
                del self.events[event.event_id]
                self.incarnation += 1
                self._emit(AzureChange("completed", now, event.event_id, event.event_type, tuple(event.resources)))

    def advance(self, delta: timedelta) -> None:
        if not isinstance(self.clock, ManualClock):
            raise TypeError("advance() needs a ManualClock; with a wall clock the emulator ticks by itself")
        self.clock.advance(delta)
        self.tick()

    def document(self, *, api_version: str = LATEST_API_VERSION, vm_name: str | None = None) -> dict[str, Any]:
        return {
            "DocumentIncarnation": self.incarnation,
            "Events": [e.render(api_version) for e in self.events.values() if e.visible_to(vm_name)],
        }


def _imds_error(message: str, *, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


class AzureImdsEmulator(LocalHttpEmulator):
    """Serves ``AzureScheduledEvents`` at ``/metadata/scheduledevents`` (and ``/metadata/instance/compute/name``)."""

    name = "azure-imds"

    def __init__(
        self,
        events: AzureScheduledEvents | None = None,
        *,
        vm_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tick_interval_s: float = 0.2,
    ) -> None:
        self.events = events if events is not None else AzureScheduledEvents()
        self.vm_name = vm_name
        super().__init__(clock=self.events.clock, host=host, port=port, tick_interval_s=tick_interval_s)

    @property
    def scheduled_events_url(self) -> str:
        return f"{self.url}/metadata/scheduledevents?api-version={LATEST_API_VERSION}"

    def tick(self) -> None:
        self.events.tick()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metadata/scheduledevents", self._get)
        app.router.add_post("/metadata/scheduledevents", self._post)
        app.router.add_get("/metadata/instance/compute/name", self._name)
        return app

    def _check(self, request: web.Request) -> web.Response | str:
        if "X-Forwarded-For" in request.headers:
            return _imds_error("Bad request. X-Forwarded-For header is not allowed.")
        if request.headers.get("Metadata", "").lower() != "true":
            return _imds_error("Bad request. Required metadata header not specified")
        api_version = request.query.get("api-version")
        if not api_version:
            return web.json_response(
                {
                    "error": "Bad request. api-version was not specified in the request. "
                    "For more information refer to aka.ms/azureimds",
                    "newest-versions": list(reversed(SUPPORTED_API_VERSIONS[-3:])),
                },
                status=400,
            )
        if api_version not in SUPPORTED_API_VERSIONS:
            return web.json_response(
                {
                    "error": "Bad request. api-version is invalid or was not specified in the request. "
                    "For more information refer to aka.ms/azureimds",
                    "newest-versions": list(reversed(SUPPORTED_API_VERSIONS[-3:])),
                },
                status=400,
            )
        return api_version

    async def _get(self, request: web.Request) -> web.Response:
        checked = self._check(request)
        if isinstance(checked, web.Response):
            return checked
        return web.json_response(self.events.document(api_version=checked, vm_name=self.vm_name))

    async def _post(self, request: web.Request) -> web.Response:
        checked = self._check(request)
        if isinstance(checked, web.Response):
            return checked
        try:
            payload = json.loads(await request.text())
            starts = payload["StartRequests"]
            if not isinstance(starts, list) or not starts:
                raise StartRequestError("StartRequests must be a non-empty list")
            ids = [str(item["EventId"]) for item in starts]
            self.events.start_requests(ids)
        except (json.JSONDecodeError, KeyError, TypeError, StartRequestError) as exc:
            return _imds_error(f"Bad request. Invalid StartRequests body: {exc}")
        return web.Response(status=200)

    async def _name(self, request: web.Request) -> web.Response:
        if request.headers.get("Metadata", "").lower() != "true":
            return _imds_error("Bad request. Required metadata header not specified")
        if request.query.get("format") != "text":
            return _imds_error("Bad request. Leaf node requires format=text")
        return web.Response(text=self.vm_name or "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nodeheal.sim.azure_imds", description="Azure IMDS emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--vm-name", default=None)
    args = parser.parse_args(argv)

    async def run() -> None:
        async with AzureImdsEmulator(
            AzureScheduledEvents(clock=SystemClock()), vm_name=args.vm_name, host=args.host, port=args.port
        ) as imds:
            print(f"Azure IMDS emulator: {imds.scheduled_events_url}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
