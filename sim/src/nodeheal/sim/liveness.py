"""The kubelet's startup and liveness probes for the demo's service processes.

In Kubernetes a service whose `/healthz` fails is restarted: `deploy/base/<service>.yaml` gives every
service a startup probe (every 2 s, up to 60 failures) and then a liveness probe (every 10 s, 3 s timeout,
3 failures). A process that keeps running with `/healthz` 503 — a consumer loop that died, a start that
timed out while its nats-server was away — is restarted by the kubelet, not left up. The demo starts its
services as plain processes, so without this it would keep such a process as it is (a remediator with no
consumers for the rest of the run) and judge the system on a world Kubernetes does not make. This module
does what the kubelet does, with the manifests' numbers (a unit test holds the two equal), and records each
restart for the report.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("nodeheal.sim.liveness")

# deploy/base/<service>.yaml (tests/unit/sim/test_liveness.py reads the manifests and compares)
STARTUP_PERIOD_S = 2.0
STARTUP_FAILURES = 60
LIVENESS_PERIOD_S = 10.0
LIVENESS_TIMEOUT_S = 3.0
LIVENESS_FAILURES = 3


class Probed(Protocol):
    """A service process of the demo (nodeheal.cli.procs.ServiceProcess)."""

    name: str
    http_port: int

    def kill(self) -> None: ...

    def start(self) -> None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class ProbeTimings:
    startup_period_s: float = STARTUP_PERIOD_S
    startup_failures: int = STARTUP_FAILURES
    period_s: float = LIVENESS_PERIOD_S
    timeout_s: float = LIVENESS_TIMEOUT_S
    failures: int = LIVENESS_FAILURES


@dataclass(slots=True)
class _Watch:
    pid: int | None = None
    started: bool = False  # the startup probe passed once for this pid
    failures: int = 0
    next_at: float = 0.0
    last: str = ""


@dataclass(slots=True)
class LivenessRestart:
    service: str
    at_s: float  # seconds since the supervisor started
    phase: str  # "startup" or "liveness"
    reason: str  # the last /healthz answer


def healthz(port: int, *, timeout_s: float) -> tuple[bool, str]:
    """GET /healthz: (passed, what it answered) — a kubelet httpGet probe passes on 200–399."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout_s) as resp:
            return 200 <= resp.status < 400, f"{resp.status}"
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode(errors="replace").strip()
        return False, f"{exc.code} {body}".strip()
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"


@dataclass
class Liveness:
    """Probe every service as the kubelet would and restart the one that fails; `paused()` names the
    services somebody else is restarting right now (the chaos monkey), which are left alone."""

    services: Sequence[Probed]
    timings: ProbeTimings = field(default_factory=ProbeTimings)
    paused: Callable[[], set[str]] = field(default=set)
    clock: Callable[[], float] = time.monotonic
    restarts: list[LivenessRestart] = field(default_factory=list)
    restarting: set[str] = field(default_factory=set)  # being restarted by this supervisor right now
    _watch: dict[str, _Watch] = field(default_factory=dict)
    _t0: float = 0.0

    async def run(self) -> None:
        self._t0 = self.clock()
        while True:
            await self.step()
            await asyncio.sleep(min(self.timings.startup_period_s, self.timings.period_s) / 4)

    async def step(self) -> None:
        """Probe every service that is due (one round)."""
        now = self.clock()
        paused = self.paused()
        due = []
        for svc in self.services:
            pid = svc.pid
            w = self._watch.get(svc.name)
            if w is None:  # watched from when it was ready: its startup probe has passed
                self._watch[svc.name] = w = _Watch(pid=pid, started=True, next_at=now + self.timings.period_s)
            elif pid != w.pid:  # started (again) by somebody: a new container, a new startup probe
                self._watch[svc.name] = w = _Watch(pid=pid, next_at=now + self.timings.startup_period_s)
            if svc.name in paused or not svc.alive or now < w.next_at:
                continue
            due.append((svc, w))
        if not due:
            return
        answers = await asyncio.gather(
            *(asyncio.to_thread(healthz, svc.http_port, timeout_s=self.timings.timeout_s) for svc, _ in due)
        )
        now = self.clock()
        for (svc, w), (ok, what) in zip(due, answers, strict=True):
            w.last = what
            t = self.timings
            if ok:
                w.started, w.failures = True, 0
            else:
                w.failures += 1
            w.next_at = now + (t.period_s if w.started else t.startup_period_s)
            limit = t.failures if w.started else t.startup_failures
            if not ok and w.failures >= limit and svc.name not in self.paused():
                await self._restart(svc, phase="liveness" if w.started else "startup", reason=what)

    async def _restart(self, svc: Probed, *, phase: str, reason: str) -> None:
        log.warning(
            "liveness: %s failed its %s probe (%s): restarting it, as the kubelet would", svc.name, phase, reason
        )
        self.restarts.append(
            LivenessRestart(service=svc.name, at_s=round(self.clock() - self._t0, 1), phase=phase, reason=reason)
        )
        self.restarting.add(svc.name)
        try:
            await asyncio.to_thread(svc.kill)
            svc.start()
        finally:
            self.restarting.discard(svc.name)

    def summary(self) -> dict[str, Any]:
        return {
            "liveness_restarts": len(self.restarts),
            "liveness_events": [
                {"service": r.service, "at_s": r.at_s, "phase": r.phase, "reason": r.reason} for r in self.restarts
            ],
        }
