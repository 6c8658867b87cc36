"""AWS EC2 instance metadata (IMDSv2) emulator: scheduled maintenance events, real wire format.

What an instance sees at ``http://169.254.169.254`` (the EC2 user guide's scheduled-events page; sample
``tests/data/cloud-events/aws-imds-scheduled-system-reboot-1.json``):

* ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds: 1..21600`` → a token (text).
  Missing/invalid TTL → 400; a proxied request (``X-Forwarded-For``) → 403.
* ``GET /latest/meta-data/events/maintenance/scheduled`` with ``X-aws-ec2-metadata-token`` → JSON list of
  ``{"NotBefore", "NotAfter", "Code", "Description", "EventId", "State"}`` (times ``21 Jan 2019 09:00:43 GMT``).
  No / unknown / expired token → 401 (IMDSv1 can be allowed with ``require_token=False``).
* ``/latest/meta-data/events/maintenance/history``: completed and canceled events (Description prefixed
  ``[Completed]`` / ``[Canceled]``); ``/latest/meta-data/instance-id``.

State is set by the test or simulator (``AwsMaintenanceEvents.add / complete / cancel``); AWS itself has no
acknowledge call, so the emulator accepts no writes besides the token. Never forwards anything to AWS.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from aiohttp import web

from nodeheal.sim._http import LocalHttpEmulator
from nodeheal.sim.clock import Clock, ManualClock, SystemClock

EventCode = Literal["instance-reboot", "system-reboot", "system-maintenance", "instance-retirement", "instance-stop"]
TOKEN_TTL_MAX_S: Final = 21600
IMDS_TIME_FORMAT: Final = "%d %b %Y %H:%M:%S GMT"


def imds_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime(IMDS_TIME_FORMAT)


@dataclass
class MaintenanceEvent:
    event_id: str
    code: EventCode
    description: str
    not_before: datetime
    not_after: datetime | None
    state: Literal["active", "completed", "canceled"] = "active"
    closed_at: datetime | None = None

    def render(self) -> dict[str, str]:
        prefix = {"active": "", "completed": "[Completed] ", "canceled": "[Canceled] "}[self.state]
        body = {
            "NotBefore": imds_time(self.not_before),
            "Code": self.code,
            "Description": prefix + self.description,
            "EventId": self.event_id,
            "State": self.state,
        }
        if self.not_after is not None:
            body["NotAfter"] = imds_time(self.not_after)
        return body


class AwsMaintenanceEvents:
    """Scheduled events of one instance. Closed events stay in ``scheduled`` for ``linger`` then move to history."""

    def __init__(
        self, *, instance_id: str = "i-0123456789abcdef0", clock: Clock | None = None, linger: timedelta | None = None
    ) -> None:
        self.instance_id = instance_id
        self.clock: Clock = clock if clock is not None else ManualClock()
        self.linger = linger if linger is not None else timedelta(minutes=10)
        self.events: dict[str, MaintenanceEvent] = {}
        self._counter = 0

    def now(self) -> datetime:
        return self.clock.now()

    def add(
        self,
        code: EventCode,
        *,
        not_before: datetime,
        not_after: datetime | None = None,
        description: str = "scheduled reboot",
        event_id: str | None = None,
    ) -> MaintenanceEvent:
        self._counter += 1
        eid = event_id or f"instance-event-{self._counter:017x}"
        event = MaintenanceEvent(eid, code, description, not_before, not_after)
        self.events[eid] = event
        return event

    def complete(self, event_id: str) -> None:
        self._close(event_id, "completed")

    def cancel(self, event_id: str) -> None:
        self._close(event_id, "canceled")

    def _close(self, event_id: str, state: Literal["completed", "canceled"]) -> None:
        event = self.events[event_id]
        if event.state != "active":
            raise ValueError(f"event {event_id} is already {event.state}")
        event.state = state
        event.closed_at = self.now()

    def scheduled(self) -> list[dict[str, str]]:
        now = self.now()
        return [
            e.render()
            for e in self.events.values()
            if e.state == "active" or (e.closed_at is not None and now - e.closed_at < self.linger)
        ]

    def history(self) -> list[dict[str, str]]:
        return [e.render() for e in self.events.values() if e.state != "active"]


class AwsImdsEmulator(LocalHttpEmulator):
    """Serves ``AwsMaintenanceEvents`` as IMDSv2."""

    name = "aws-imds"

    def __init__(
        self,
        events: AwsMaintenanceEvents | None = None,
        *,
        require_token: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.events = events if events is not None else AwsMaintenanceEvents()
        self.require_token = require_token
        self.tokens: dict[str, datetime] = {}
        super().__init__(clock=self.events.clock, host=host, port=port)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/latest/api/token", self._token)
        app.router.add_get("/latest/meta-data/events/maintenance/scheduled", self._scheduled)
        app.router.add_get("/latest/meta-data/events/maintenance/history", self._history)
        app.router.add_get("/latest/meta-data/instance-id", self._instance_id)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        if "X-Forwarded-For" in request.headers:
            return web.Response(status=403, text="Forbidden")
        raw_ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        try:
            ttl = int(raw_ttl)
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= TOKEN_TTL_MAX_S:
            return web.Response(status=400, text="Bad Request")
        token = secrets.token_urlsafe(40)
        self.tokens[token] = self.clock.now() + timedelta(seconds=ttl)
        return web.Response(text=token, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

    def _authorized(self, request: web.Request) -> bool:
        token = request.headers.get("X-aws-ec2-metadata-token")
        if token is None:
            return not self.require_token
        expires = self.tokens.get(token)
        return expires is not None and self.clock.now() < expires

    async def _scheduled(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401, text="Unauthorized")
        return web.json_response(self.events.scheduled())

    async def _history(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401, text="Unauthorized")
        return web.json_response(self.events.history())

    async def _instance_id(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401, text="Unauthorized")
        return web.Response(text=self.events.instance_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nodeheal.sim.aws_imds", description="AWS IMDSv2 emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--instance-id", default="i-0123456789abcdef0")
    args = parser.parse_args(argv)

    async def run() -> None:
        events = AwsMaintenanceEvents(instance_id=args.instance_id, clock=SystemClock())
        async with AwsImdsEmulator(events, host=args.host, port=args.port) as imds:
            print(f"AWS IMDS emulator: {imds.url}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
