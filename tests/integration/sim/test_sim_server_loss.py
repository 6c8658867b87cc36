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


async def test_a_node_whose_server_is_away_holds_its_probes_and_keeps_its_kernel_lines(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Seed 23's chaos run: after the nats-server's restart, 300 agent connections doing their TLS
    handshakes at once, the simulator kept collecting and buffering every node's probe until each
    connection's buffer overflowed ("outbound buffer limit exceeded", 8,626 times, a traceback each) —
    CPU the reconnects needed. A node whose connection is down holds its probe; its kernel lines wait for
    the next probe."""
    with (
        EmbeddedNats(log_file=str(tmp_path / "kept.log")) as kept,
        EmbeddedNats(log_file=str(tmp_path / "lost.log")) as lost,
    ):
        sim = FleetSimulator(
            spec=FleetSpec(nodes=20, seed=5), settings=NatsSettings(url=kept.url), timings=SimTimings(0.5)
        )
        nc = await connect(NatsSettings(url=kept.url), name="pytest-sim-kept")
        # a small buffer: what a few seconds of a big fleet's probes do to the default 2 MB
        away = await nats.connect(
            servers=[lost.url], reconnect_time_wait=0.2, max_reconnect_attempts=-1, pending_size=4096
        )
        names = list(sim.nodes)
        agents = {**dict.fromkeys(names[:10], nc), **dict.fromkeys(names[10:], away)}
        try:
            await sim.start(prober_nc=nc, agent_nc=agents)
            await asyncio.sleep(1.0)
            lost.kill()
            await asyncio.sleep(0.5)
            sim.nodes[names[15]].pending_kernel.append("BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:99]")
            await asyncio.sleep(3.0)
        finally:
            await sim.stop()
            with contextlib.suppress(Exception):
                await away.close()
            await nc.close()
    assert sim.stats.publish_errors == 0
    assert sim.stats.probes_held > 0
    # the line is in the agent's kernel reader, not in a probe that went nowhere
    assert not sim.nodes[names[15]].pending_kernel
    assert sim.agent(sim.nodes[names[15]]).kmsg.unread >= 1
