"""`python -m nodeheal.agent`: the node agent process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from nodeheal.agent.app import NodeAgent
from nodeheal.agent.settings import AgentSettings
from nodeheal.runtime.logs import configure_logging
from nodeheal.runtime.ops import OpsServer
from nodeheal.runtime.usage import exit_on_args


async def run(settings: AgentSettings) -> None:
    agent = NodeAgent(settings)
    ops = OpsServer(host=settings.http_host, port=settings.http_port, readiness=[agent.ready])
    await ops.start()
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    probes = asyncio.create_task(agent.run_probes())
    ops.watch("probes", probes)
    await stop.wait()
    await agent.stop()
    probes.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probes
    await ops.stop()


def main() -> None:
    exit_on_args(
        sys.argv[1:],
        prog="python -m nodeheal.agent",
        summary="The node agent: probes this node, reads its kernel log, runs node-local repair commands.",
        settings=AgentSettings,
    )
    settings = AgentSettings()
    configure_logging("node-agent", fmt=settings.log_format, level=settings.log_level)
    asyncio.run(run(settings))
