"""`--nats-cluster 3` kills one nats-server mid-run: the simulator's connections to it reconnect to
another server. A flush in flight on such a connection never ends (nats-py drops its PING on reconnect)
until its 10 s timeout, and the simulator, waiting for it, stalled every node's probes for 10 s — a power
loss was then read as a rack partition. The probes of the other connections go on meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import nats
import pytest

from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats
from nodeheal.sim.engine import FLUSH_TIMEOUT_S, FleetSimulator, SimTimings
from nodeheal.sim.fleet import FleetSpec

pytestmark = [pytest.mark.nats]


async def test_a_connection_moving_to_another_server_does_not_stall_the_other_probes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with (
        EmbeddedNats(log_file=str(tmp_path / "kept.log")) as kept,
        EmbeddedNats(log_file=str(tmp_path / "lost.log")) as lost,
    ):
        sim = FleetSimulator(
            spec=FleetSpec(nodes=60, seed=5), settings=NatsSettings(url=kept.url), timings=SimTimings(1.0)
        )
        nc = await connect(NatsSettings(url=kept.url), name="pytest-sim-kept")
        # half the agents speak through a server that will be killed; their client fails over to the other
        moving = await nats.connect(
            servers=[lost.url, kept.url], dont_randomize=True, reconnect_time_wait=0.2, max_reconnect_attempts=-1
        )
        names = list(sim.nodes)
        agents = {**dict.fromkeys(names[:30], nc), **dict.fromkeys(names[30:], moving)}
        try:
            await sim.start(prober_nc=nc, agent_nc=agents)
            await asyncio.sleep(1.5)
            assert lost.pid is not None
            os.kill(lost.pid, signal.SIGSTOP)  # a flush in flight on `moving` now waits for its PONG ...
            await asyncio.sleep(0.5)
            lost.kill()  # ... and the server dies: the client reconnects to `kept`, the PING is forgotten
            before = sim.stats.probes_published
            await asyncio.sleep(4.0)
            during = sim.stats.probes_published - before
        finally:
            await sim.stop()
            with contextlib.suppress(Exception):
                await moving.close()
            await nc.close()
    assert moving.stats["reconnects"] >= 1
    # every node went on being probed every second (~4 rounds of 60), not stalled behind the moved
    # connection's flush until its timeout
    assert during >= 2 * 60, during
    assert sim.stats.flush_timeouts == 0 and sim.stats.flush_wait_s_max < FLUSH_TIMEOUT_S
