"""Shared plumbing for the local metadata-service emulators: lifecycle, free port, call log, awaiting calls.

Binds 127.0.0.1 by default and never proxies anything anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Self

from aiohttp import web
from aiohttp.typedefs import Handler

from nodeheal.sim.clock import Clock, ManualClock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpCall:
    """One request as it reached an emulator, with the status it got."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: str
    status: int
    at: datetime


class LocalHttpEmulator:
    """Base class: ``async with Sub(...) as emu`` → ``emu.url`` / ``emu.port``; ``emu.calls``; ``wait_for_call``."""

    name = "emulator"

    def __init__(self, *, clock: Clock, host: str = "127.0.0.1", port: int = 0, tick_interval_s: float = 0.2) -> None:
        self.clock = clock
        self.host = host
        self._requested_port = port
        self._tick_interval_s = tick_interval_s
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._port: int | None = None
        self.calls: list[HttpCall] = []
        self._waiters: list[tuple[Callable[[HttpCall], bool], asyncio.Future[HttpCall]]] = []

    # subclasses ---------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        raise NotImplementedError

    def tick(self) -> None:
        """Apply time-driven transitions (called before each request and by the wall-clock ticker)."""

    # lifecycle ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started; use `async with {type(self).__name__}(...)`")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = self.build_app()
        app.middlewares.append(self._recording_middleware)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self._requested_port).start()
        self._port = int(self._runner.addresses[0][1])
        if not isinstance(self.clock, ManualClock):
            self._ticker = asyncio.create_task(self._tick_forever(), name=f"{self.name}-tick-{self._port}")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _tick_forever(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("%s tick failed", self.name)
            await asyncio.sleep(self._tick_interval_s)

    # call log -----------------------------------------------------------------------------------

    @web.middleware
    async def _recording_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.text() if request.can_read_body else ""
        self.tick()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        call = HttpCall(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            status=response.status,
            at=self.clock.now(),
        )
        self.calls.append(call)
        for wanted, future in list(self._waiters):
            if not future.done() and wanted(call):
                future.set_result(call)
        return response

    async def wait_for_call(
        self, where: Callable[[HttpCall], bool], *, timeout_s: float = 10.0, include_past: bool = True
    ) -> HttpCall:
        """The first (past or future) call matching ``where``; TimeoutError lists what did arrive."""
        if include_past:
            for call in self.calls:
                if where(call):
                    return call
        future: asyncio.Future[HttpCall] = asyncio.get_running_loop().create_future()
        entry = (where, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            seen = [(c.method, c.path, c.status) for c in self.calls[-10:]]
            raise TimeoutError(
                f"no matching call reached {self.name} at {self.url} in {timeout_s}s; saw {seen}"
            ) from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
