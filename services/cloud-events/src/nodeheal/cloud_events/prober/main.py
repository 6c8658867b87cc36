"""`python -m nodeheal.cloud_events prober`: the active prober process."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from nodeheal.cloud_events.prober.app import Prober
from nodeheal.cloud_events.prober.settings import ProberSettings
from nodeheal.runtime.logs import configure_logging
from nodeheal.runtime.ops import OpsServer
from nodeheal.runtime.startup import StartWait, start_wait, waiting_check


async def run(settings: ProberSettings) -> None:
    prober = Prober(settings)
    wait = StartWait(service="prober", patience_s=settings.nats.start_patience_s)
    ops = OpsServer(host=settings.http_host, port=settings.http_port, readiness=[waiting_check(wait), prober.ready])
    await ops.start()
    with start_wait(wait):  # a JetStream away for longer than the patience ends the process (restarted)
        await prober.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    rounds = asyncio.create_task(prober.run())
    ops.watch("rounds", rounds)
    await stop.wait()
    await prober.stop()
    rounds.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await rounds
    await ops.stop()


def main() -> None:
    settings = ProberSettings()
    configure_logging("prober", fmt=settings.log_format, level=settings.log_level)
    asyncio.run(run(settings))
