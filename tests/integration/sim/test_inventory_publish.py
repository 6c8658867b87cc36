"""The simulator's inventory fill survives a server that answers late: a put whose PubAck did not come in
time is sent again, so a 50,000-node demo on a loaded machine does not end at "starting the emulators:
nats: timeout" (it did). The server is stopped (SIGSTOP) for longer than the puts' timeout, then resumed."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats
from nodeheal.sim.engine import FleetSimulator
from nodeheal.sim.fleet import FleetSpec

pytestmark = [pytest.mark.nats]


async def test_inventory_records_whose_puback_came_late_are_sent_again() -> None:
    with EmbeddedNats() as server:
        settings = NatsSettings(url=server.url)
        nc = await connect(settings, name="pytest-inventory-publish")
        try:
            await apply_topology(nc.jetstream(), settings.topology())
            kv = await nc.jetstream(timeout=0.5).key_value(f"{settings.bucket_prefix}-inventory")
            sim = FleetSimulator(spec=FleetSpec(nodes=40, seed=5), settings=settings)
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            asyncio.get_running_loop().call_later(1.2, os.kill, server.pid, signal.SIGCONT)
            await sim.publish_inventory(kv)  # before: nats: timeout
            assert sim.stats.inventory_put_retries > 0
            keys = await kv.keys()
            nodes = [inv.node for inv in sim.inventory]
            assert len(nodes) == 40
            assert sum(1 for k in keys if k.startswith("node.")) == 40
        finally:
            await nc.close()
