"""`nodeheal demo --chaos`: SIGKILL the services (and the nats-server) at seeded moments during the run and
start them again, as Kubernetes would after a failed liveness probe or a node loss.

The plan is a pure function of the seed, so a run can be repeated; what happened (who was killed when, how
long it was down, the pid before and after) goes into the report's `chaos` section, next to the referee's
counts of lost faults and repeated side effects.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("nodeheal.sim.chaos")


class Killable(Protocol):
    """A service process of the demo (nodeheal.cli.procs.ServiceProcess)."""

    name: str

    def kill(self) -> None: ...

    def start(self) -> None: ...

    @property
    def alive(self) -> bool: ...


@dataclass(frozen=True, slots=True, order=True)
class ChaosEvent:
    at_s: float  # seconds after fault injection starts
    target: str  # a service name, or "nats-<i>" for a server


@dataclass
class ChaosRecord:
    target: str
    at_s: float
    down_s: float
    restarted: bool
    error: str | None = None


def plan_chaos(
    *,
    seed: int,
    duration_s: float,
    services: Sequence[str],
    servers: int,
    kills_per_service: int = 1,
    server_kills: int = 1,
) -> list[ChaosEvent]:
    """Seeded kill moments: each service `kills_per_service` times and `server_kills` nats-servers, spread
    over the middle 80 % of the fault window (so faults are in flight when the kills land)."""
    rng = random.Random(f"chaos-{seed}")
    lo, hi = 0.1 * duration_s, 0.9 * duration_s
    events = [
        ChaosEvent(at_s=round(rng.uniform(lo, hi), 2), target=name)
        for name in services
        for _ in range(kills_per_service)
    ]
    for _ in range(server_kills if servers else 0):
        events.append(ChaosEvent(at_s=round(rng.uniform(lo, hi), 2), target=f"nats-{rng.randrange(servers)}"))
    return sorted(events)


@dataclass
class Chaos:
    """Runs a plan against live processes; `records` says what happened."""

    plan: Sequence[ChaosEvent]
    services: Mapping[str, Killable]
    # SIGKILLs a server: the planned one, or another it returns the index of (the demo's cluster: the one that
    # leads PROBES at that moment), which is then the one restarted and reported
    kill_server: Callable[[int], int | None] | None = None
    restart_server: Callable[[int], None] | None = None
    down_s: float = 1.0
    records: list[ChaosRecord] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)

    async def run(self, *, start: float) -> None:
        """Execute the plan; `start` is the time.time() of fault injection start."""
        tasks = []
        for event in self.plan:
            delay = start + event.at_s - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._one(event)))
        if tasks:
            await asyncio.gather(*tasks)

    async def _one(self, event: ChaosEvent) -> None:
        t = time.monotonic()
        record = ChaosRecord(target=event.target, at_s=event.at_s, down_s=0.0, restarted=False)
        self.records.append(record)
        self.busy.add(event.target)
        try:
            if event.target.startswith("nats-"):
                if self.kill_server is None or self.restart_server is None:
                    record.error = "the demo does not manage this nats-server (--nats-url): not killed"
                    return
                index = int(event.target.removeprefix("nats-"))
                killed = await asyncio.to_thread(self.kill_server, index)
                if killed is not None and killed != index:
                    index, record.target = killed, f"nats-{killed}"
                log.warning("chaos: SIGKILL %s", record.target)
                await asyncio.sleep(self.down_s)
                await asyncio.to_thread(self.restart_server, index)
            else:
                svc = self.services[event.target]
                svc.kill()
                log.warning("chaos: SIGKILL %s", event.target)
                await asyncio.sleep(self.down_s)
                svc.start()
            record.restarted = True
        except Exception as exc:  # the report says it; the demo goes on
            record.error = f"{type(exc).__name__}: {exc}"
        finally:
            record.down_s = round(time.monotonic() - t, 2)
            self.busy.discard(event.target)

    def summary(self) -> dict[str, Any]:
        return {
            "kills": len(self.records),
            "restarted": sum(1 for r in self.records if r.restarted),
            "events": [
                {"target": r.target, "at_s": r.at_s, "down_s": r.down_s, "restarted": r.restarted, "error": r.error}
                for r in self.records
            ],
        }
