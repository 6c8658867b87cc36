"""A service start that waits out a JetStream that is briefly unavailable.

A nats-server restarting, or a cluster electing its meta leader after one of three servers died,
answers JetStream API calls with 503 ("JetStream system temporarily unavailable"), with no responders,
or not at all for a few seconds. A start that fails on the first such answer leaves the process alive
with no consumers until its liveness probe restarts it (56 s in the chaos demo's cluster run, while
faults came and went). Instead each JetStream call of a start runs through `patiently`: it is retried
with a bounded backoff while the service's `StartWait` has patience left, and the wait is visible —
a log line per call and every ~10 s, and `/readyz` says "waiting for JetStream (...)". When the
patience is spent the last error is raised, the start fails and `/healthz` fails, so Kubernetes restarts
the pod.

Only the individual calls are retried, never a whole start: a start declares subscribers and metrics
once, so retrying it would declare them twice. Each call passed to `patiently` must therefore be safe
to repeat (a lookup, an idempotent create, a read that resumes where it stopped).

The shell (`nodeheal.runtime.service.build_asgi`) runs every start hook inside a `StartWait`; outside of
one (a runtime started directly, e.g. by a test) `patiently` tries once, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

import nats.errors
from nats.js.errors import ServerError, ServiceUnavailableError

log = logging.getLogger("nodeheal.runtime.startup")

T = TypeVar("T")

UNAVAILABLE: tuple[type[BaseException], ...] = (
    ServiceUnavailableError,  # 503: no JetStream, no meta leader, no responders to the API request
    ServerError,  # 500: e.g. a stream's leader lost mid-request
    nats.errors.NoRespondersError,
    nats.errors.NoServersError,  # the first connect of a process whose server is not back yet
    nats.errors.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    TimeoutError,
    ConnectionError,
)
"""What a briefly absent server or JetStream looks like to a client: worth another try."""


class StartWait:
    """How long one service start may wait for JetStream in all, and what it is waiting for now."""

    def __init__(
        self,
        *,
        service: str,
        patience_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_give_up: str = "/healthz fails, the pod is restarted",
    ) -> None:
        self.service = service
        self.on_give_up = on_give_up  # what follows when the patience is spent, for the log line
        self.patience_s = patience_s
        self.clock = clock
        self.began = clock()
        self.waiting: str | None = None  # what the start waits for (readiness says it), None when not waiting
        self.retries = 0
        self.done = False  # the start is over: loops it created (and inherited the context) call once

    def left_s(self) -> float:
        return self.patience_s - (self.clock() - self.began)


_CURRENT: ContextVar[StartWait | None] = ContextVar("nodeheal_start_wait", default=None)


@contextlib.contextmanager
def start_wait(wait: StartWait) -> Iterator[StartWait]:
    """Run a start (and everything it awaits) under `wait`."""
    token = _CURRENT.set(wait)
    try:
        yield wait
    finally:
        wait.done = True
        wait.waiting = None
        _CURRENT.reset(token)


def current_wait() -> StartWait | None:
    return _CURRENT.get()


def waiting_check(wait: StartWait) -> Callable[[], Awaitable[tuple[bool, str]]]:
    """A readiness check (`/readyz`) that says what `wait`'s start is waiting for."""

    async def start_not_waiting() -> tuple[bool, str]:
        if wait.waiting:
            return False, f"{wait.service}: {wait.waiting}"
        return True, "ok"

    return start_not_waiting


async def patiently(
    what: str, call: Callable[[], Awaitable[T]], *, max_delay_s: float = 5.0, for_the_start: bool = False
) -> T:
    """`await call()`, again after 0.25, 0.5, 1 … `max_delay_s` seconds while it fails with one of
    `UNAVAILABLE` and the current `StartWait` has patience left; then the last error is raised.
    Without a `StartWait` (not inside a service start) it is one plain call.

    `for_the_start`: the first call of a loop the start launched (the inventory watch), which may run
    after the start hook has returned: still patient while the start's patience lasts (counted from the
    start's beginning), and `/readyz` says what it waits for. Once the start is over a loop's later calls
    are plain calls."""
    wait = _CURRENT.get()
    if wait is None or (wait.done and not for_the_start):
        return await call()
    delay = 0.25
    last_logged = -1e9
    while True:
        try:
            result = await call()
        except UNAVAILABLE as exc:
            left = wait.left_s()
            reason = f"{type(exc).__name__}: {str(exc)[:200] or 'no detail'}"
            if left <= 0:
                wait.waiting = None
                log.error(
                    f"JetStream still unavailable; the start gives up ({wait.on_give_up})",
                    extra={"service": wait.service, "during": what, "error": reason, "patience_s": wait.patience_s},
                )
                raise
            wait.waiting = f"waiting for JetStream ({what}: {reason})"
            wait.retries += 1
            now = wait.clock()
            if now - last_logged >= 10.0:
                last_logged = now
                log.warning(
                    "JetStream unavailable during start; waiting",
                    extra={"service": wait.service, "during": what, "error": reason, "left_s": round(left, 1)},
                )
            await asyncio.sleep(min(delay, max(left, 0.05)))
            delay = min(delay * 2, max_delay_s)
            continue
        if wait.waiting is not None:
            log.info("JetStream available again; the start goes on", extra={"service": wait.service, "during": what})
            wait.waiting = None
        return result
