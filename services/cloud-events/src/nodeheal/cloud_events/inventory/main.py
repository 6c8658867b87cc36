"""`python -m nodeheal.cloud_events inventory`: the inventory watcher process."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from nodeheal.cloud_events.inventory.app import InventoryWatcher
from nodeheal.cloud_events.inventory.settings import InventorySettings
from nodeheal.runtime.logs import configure_logging
from nodeheal.runtime.ops import OpsServer
from nodeheal.runtime.startup import StartWait, start_wait, waiting_check


async def run(settings: InventorySettings) -> None:
    watcher = InventoryWatcher(settings)
    wait = StartWait(service="inventory", patience_s=settings.nats.start_patience_s)
    ops = OpsServer(host=settings.http_host, port=settings.http_port, readiness=[waiting_check(wait), watcher.ready])
    await ops.start()
    with start_wait(wait):  # a JetStream away for longer than the patience ends the process (restarted)
        await watcher.start()
    for i, task in enumerate(watcher.loops()):
        ops.watch(f"inventory-{i}", task)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await watcher.stop()
    await ops.stop()


def main() -> None:
    settings = InventorySettings()
    configure_logging("inventory", fmt=settings.log_format, level=settings.log_level)
    asyncio.run(run(settings))
