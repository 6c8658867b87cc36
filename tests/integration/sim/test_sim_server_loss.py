"""`--nats-cluster 3` kills one nats-server mid-run: the simulator's connections to it reconnect to
another server. A flush in flight on such a connection never ends (nats-py drops its PING on reconnect)
until its 10 s timeout, and the simulator, waiting for it, stalled every node's probes for 10 s — a power
loss was then read as a rack partition. The probes of the other connections go on meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats
from nodeheal.sim.engine import FLUSH_TIMEOUT_S, FleetSimulator, SimTimings
from nodeheal.sim.fleet import FleetSpec

pytestmark = [pytest.mark.nats]


@contextlib.asynccontextmanager
async def _split_fleet(
    tmp_path: Path, *, nodes: int, interval_s: float, kept_nodes: int, **other: Any
) -> AsyncIterator[tuple[EmbeddedNats, FleetSimulator, list[str], Client]]:
    """Two nats-servers, `kept` and `lost`; a fleet whose prober and first `kept_nodes` agents speak through
    `kept`, the rest through a connection that starts on `lost` (`other`: its nats-py options). Yields the
    server to lose, the started simulator, the node names and the other connection; stops and closes everything."""
    with (
        EmbeddedNats(log_file=str(tmp_path / "kept.log")) as kept,
        EmbeddedNats(log_file=str(tmp_path / "lost.log")) as lost,
    ):
        sim = FleetSimulator(
            spec=FleetSpec(nodes=nodes, seed=5), settings=NatsSettings(url=kept.url), timings=SimTimings(interval_s)
        )
        nc = await connect(NatsSettings(url=kept.url), name="pytest-sim-kept")
        servers = [lost.url, kept.url] if other.pop("fail_over", False) else [lost.url]
        other_nc = await nats.connect(servers=servers, reconnect_time_wait=0.2, max_reconnect_attempts=-1, **other)
        names = list(sim.nodes)
        agents = {**dict.fromkeys(names[:kept_nodes], nc), **dict.fromkeys(names[kept_nodes:], other_nc)}
        try:
            await sim.start(prober_nc=nc, agent_nc=agents)
            yield lost, sim, names, other_nc
        finally:
            await sim.stop()
            with contextlib.suppress(Exception):
                await other_nc.close()
            await nc.close()


async def test_a_connection_moving_to_another_server_does_not_stall_the_other_probes(tmp_path: Path) -> None:
    # half the agents speak through a server that will be killed; their client fails over to the other
    async with _split_fleet(tmp_path, nodes=60, interval_s=1.0, kept_nodes=30, fail_over=True, dont_randomize=True) as (
        lost,
        sim,
        _,
        moving,
    ):
        await asyncio.sleep(1.5)
        assert lost.pid is not None
        os.kill(lost.pid, signal.SIGSTOP)  # a flush in flight on `moving` now waits for its PONG ...
        await asyncio.sleep(0.5)
        lost.kill()  # ... and the server dies: the client reconnects to `kept`, the PING is forgotten
        before = sim.stats.probes_published
        await asyncio.sleep(4.0)
        during = sim.stats.probes_published - before
    assert moving.stats["reconnects"] >= 1
    # every node went on being probed every second (~4 rounds of 60), not stalled behind the moved
    # connection's flush until its timeout
    assert during >= 2 * 60, during
    assert sim.stats.flush_timeouts == 0 and sim.stats.flush_wait_s_max < FLUSH_TIMEOUT_S


async def test_a_node_whose_server_is_away_holds_its_probes_and_keeps_its_kernel_lines(tmp_path: Path) -> None:
    """Seed 23's chaos run: after the nats-server's restart, 300 agent connections doing their TLS
    handshakes at once, the simulator kept collecting and buffering every node's probe until each
    connection's buffer overflowed ("outbound buffer limit exceeded", 8,626 times, a traceback each) —
    CPU the reconnects needed. A node whose connection is down holds its probe; its kernel lines wait for
    the next probe."""
    # a small buffer on the lost server's connection: what a few seconds of a big fleet's probes do to 2 MB
    async with _split_fleet(tmp_path, nodes=20, interval_s=0.5, kept_nodes=10, pending_size=4096) as (
        lost,
        sim,
        names,
        _,
    ):
        await asyncio.sleep(1.0)
        lost.kill()
        await asyncio.sleep(0.5)
        sim.nodes[names[15]].pending_kernel.append("BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:99]")
        await asyncio.sleep(3.0)
    assert sim.stats.publish_errors == 0
    assert sim.stats.probes_held > 0
    # the line is in the agent's kernel reader, not in a probe that went nowhere
    assert not sim.nodes[names[15]].pending_kernel
    assert sim.agent(sim.nodes[names[15]]).kmsg.unread >= 1
