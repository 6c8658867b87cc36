"""GCE metadata server emulator: ``instance/maintenance-event`` and friends, with hanging GETs.

What a VM sees at ``http://metadata.google.internal/computeMetadata/v1/`` (GCE metadata server docs,
samples ``tests/data/cloud-events/gce-maintenance-event-*.txt``):

* ``GET /computeMetadata/v1/instance/maintenance-event`` with ``Metadata-Flavor: Google`` → text
  ``NONE`` | ``MIGRATE_ON_HOST_MAINTENANCE`` | ``TERMINATE_ON_HOST_MAINTENANCE``, with ``ETag`` and
  ``Metadata-Flavor: Google`` response headers. Without the header (or with ``X-Forwarded-For``) → 403.
* ``?wait_for_change=true[&last_etag=E][&timeout_sec=N]``: hangs until the value's ETag differs from ``E``
  (or from the current one when ``E`` is absent); on timeout it returns the current value (200).
* Also ``instance/preempted`` (``FALSE``/``TRUE``), ``instance/scheduling/on-host-maintenance``,
  ``instance/id``, ``instance/name``; unknown keys → 404.

``GceMetadata.set(key, value)`` (or ``set_maintenance_event``) drives it; call it from the event loop the
emulator runs on (hanging GETs are woken through asyncio). Never forwards anything to Google.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from datetime import datetime
from typing import Final, Literal

from aiohttp import web

from nodeheal.sim._http import LocalHttpEmulator
from nodeheal.sim.clock import Clock, ManualClock, SystemClock

MaintenanceEvent = Literal["NONE", "MIGRATE_ON_HOST_MAINTENANCE", "TERMINATE_ON_HOST_MAINTENANCE"]
MAINTENANCE_EVENT_KEY: Final = "instance/maintenance-event"
DEFAULT_WAIT_TIMEOUT_S: Final = 60.0


def etag(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class GceMetadata:
    """The metadata values of one VM; every ``set`` wakes hanging GETs."""

    def __init__(self, *, instance_name: str = "gke-node-1", instance_id: str = "1234567890123456789") -> None:
        self.values: dict[str, str] = {
            MAINTENANCE_EVENT_KEY: "NONE",
            "instance/preempted": "FALSE",
            "instance/scheduling/on-host-maintenance": "MIGRATE",
            "instance/id": instance_id,
            "instance/name": instance_name,
        }
        self.history: list[tuple[str, str]] = []
        self.hanging_gets = 0  # requests currently held open by wait_for_change
        self.hanging_get_seen = asyncio.Event()  # set once a request is held open (a test awaits "in flight")
        self._changed = asyncio.Event()

    def set(self, key: str, value: str) -> None:
        if self.values.get(key) == value:
            return
        self.values[key] = value
        self.history.append((key, value))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def set_maintenance_event(self, value: MaintenanceEvent) -> None:
        self.set(MAINTENANCE_EVENT_KEY, value)

    async def wait_for_change(self, key: str, *, last_etag: str, timeout_s: float) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self.hanging_gets += 1
        self.hanging_get_seen.set()
        try:
            while etag(self.values[key]) == last_etag:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
        finally:
            self.hanging_gets -= 1
        return self.values[key]


class GceMetadataEmulator(LocalHttpEmulator):
    """Serves ``GceMetadata`` under ``/computeMetadata/v1/``."""

    name = "gce-metadata"

    def __init__(
        self,
        metadata: GceMetadata | None = None,
        *,
        clock: Clock | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_wait_s: float = 3600.0,
    ) -> None:
        self.metadata = metadata if metadata is not None else GceMetadata()
        self.max_wait_s = max_wait_s
        super().__init__(clock=clock if clock is not None else ManualClock(), host=host, port=port)

    @property
    def maintenance_event_url(self) -> str:
        return f"{self.url}/computeMetadata/v1/{MAINTENANCE_EVENT_KEY}"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/computeMetadata/v1/{key:.+}", self._get)
        return app

    async def _get(self, request: web.Request) -> web.Response:
        if "X-Forwarded-For" in request.headers or request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.\n")
        key = request.match_info["key"].rstrip("/")
        if key not in self.metadata.values:
            return web.Response(status=404, text="Not Found\n", headers={"Metadata-Flavor": "Google"})
        value = self.metadata.values[key]
        if request.query.get("wait_for_change", "").lower() == "true":
            try:
                timeout_s = min(float(request.query.get("timeout_sec", DEFAULT_WAIT_TIMEOUT_S)), self.max_wait_s)
            except ValueError:
                return web.Response(status=400, text="Invalid timeout_sec\n", headers={"Metadata-Flavor": "Google"})
            last = request.query.get("last_etag", etag(value))
            value = await self.metadata.wait_for_change(key, last_etag=last, timeout_s=timeout_s)
        return web.Response(
            text=value,
            content_type="application/text",
            headers={"Metadata-Flavor": "Google", "ETag": etag(value)},
        )

    def now(self) -> datetime:
        return self.clock.now()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nodeheal.sim.gce_metadata", description="GCE metadata emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    async def run() -> None:
        async with GceMetadataEmulator(clock=SystemClock(), host=args.host, port=args.port) as gce:
            print(f"GCE metadata emulator: {gce.maintenance_event_url}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
