"""`/healthz`, `/readyz` and `/metrics` for the edge processes that speak raw nats-py (agent, prober,
inventory watcher) rather than through a faststream broker.

`/healthz` answers while the event loop runs and every registered liveness check passes (a loop
that died answers 503, so Kubernetes restarts the pod; NATS being away is not a reason: nats-py
reconnects by itself); `/readyz` runs the registered checks and answers 503 with the
problems, one per line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import prometheus_client
from aiohttp import web

ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]
LivenessCheck = Callable[[], tuple[bool, str]]

log = logging.getLogger("nodeheal.runtime.ops")


class OpsServer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        readiness: Sequence[ReadinessCheck] = (),
        liveness: Sequence[LivenessCheck] = (),
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.readiness = list(readiness)
        self.liveness = list(liveness)
        self._stopping = False
        self.registry = registry or prometheus_client.REGISTRY
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    def watch(self, name: str, task: asyncio.Task[Any]) -> None:
        """A loop the process cannot live without: once it ends, `/healthz` answers 503."""

        def alive() -> tuple[bool, str]:
            if task.done() and not self._stopping:
                return False, f"loop {name!r} stopped"
            return True, "ok"

        self.liveness.append(alive)

    async def _healthz(self, request: web.Request) -> web.Response:
        problems = [detail for ok, detail in (check() for check in self.liveness) if not ok]
        if problems:
            return web.Response(text="\n".join(problems), status=503)
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        problems: list[str] = []
        for check in self.readiness:
            try:
                ok, detail = await check()
            except Exception as exc:
                ok, detail = False, f"{getattr(check, '__name__', 'check')}: {exc}"
            if not ok:
                problems.append(detail)
        if problems:
            return web.Response(text="\n".join(problems), status=503)
        return web.Response(text="ready")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("serving /healthz /readyz /metrics", extra={"port": self.bound_port})

    async def stop(self) -> None:
        self._stopping = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
