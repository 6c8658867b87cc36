"""The NATS server restarts under the detector: no healthy node is taken for a silent one.

A real nats-server (file store) is stopped for a few seconds and started again on the same port and store. The
detector's connection comes back within a moment, each node's probes only when that node's agent has reconnected,
one after the other over more than a second. Before, the detector judged silence again at the first probe after
the outage: the nodes whose agents came back later than that one were `node_down` (in a fleet, a third of it after
a 20 s restart, with rack partitions and deleted agent pods to follow). Now the detector judges no silence while
its own connection is down, and gives every node a full silence timeout after it is back.

As deployed: the server has the per-role authorization (the restarted one the same configuration file), the
detector runs under its role's credential and inbox prefix; the test stands in for the agents and the prober,
as admin. No permission violation logged."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest

from nodeheal.detector.rules import RuleConfig
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import NodeProbe, Reachability
from nodeheal.schemas.subjects import prober_probe_subject
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.deploy.natsauth_loader import role_nats, violations, write_auth
from tests.integration.detector.test_detector_nats import anomalies, probe, publish, started_runtime

pytestmark = pytest.mark.nats

NODES = [f"n{i}" for i in range(8)]


async def test_a_nats_server_restart_makes_no_healthy_node_silent(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    write_auth(tmp_path, "detector")
    served = {"store_dir": store, "config_file": str(tmp_path / "auth.conf"), "log_file": str(tmp_path / "nats.log")}
    server = EmbeddedNats(**served).start()
    port = server.port
    settings = NatsSettings(url=server.url)
    detector = role_nats(tmp_path, server.url, "detector")
    options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.2, "allow_reconnect": True}
    detector_nc = await connect(detector, name="detector", **options)
    agents_nc = await nats.connect(server.url, user_credentials=str(tmp_path / "admin.creds"), **options)
    restarted: EmbeddedNats | None = None
    try:
        await apply_topology(agents_nc.jetstream(), settings.topology())
        seq = 0

        async def one(node: str) -> None:
            nonlocal seq
            seq += 1
            await publish(agents_nc, settings, probe(node=node, seq=seq, used=40.0))

        async def reach(node: str) -> None:
            nonlocal seq
            seq += 1
            seen = NodeProbe(
                id=f"r-{node}-{seq}",
                time=datetime.now(tz=UTC),
                cluster="c1",
                node=node,
                source="prober",
                seq=seq,
                reachability=(
                    Reachability(check="icmp", target="10.0.0.1", ok=True),
                    Reachability(check="ssh_banner", target="10.0.0.1:22", ok=True),
                    Reachability(check="kubelet_healthz", target="10.0.0.1:10248", ok=True),
                ),
            )
            await agents_nc.jetstream().publish(
                prober_probe_subject("c1", node, prefix=settings.prefix), seen.to_json()
            )

        rules = RuleConfig(probe_interval_s=1.0, warmup_s=0.0, clear_probes=1)
        async with started_runtime(detector, detector_nc, rules):
            for _ in range(4):  # a healthy fleet, every agent probing each second
                for node in NODES:
                    await one(node)
                await asyncio.sleep(1.0)
            server.stop()
            await asyncio.sleep(4.0)  # longer than the silence timeout (2.5 probe intervals)
            restarted = EmbeddedNats(port=port, **served).start()
            for _ in range(200):  # both connections back (reconnect every 0.2 s)
                if agents_nc.is_connected and detector_nc.is_connected:
                    break
                await asyncio.sleep(0.05)
            for node in NODES:  # the prober is back first: every node answers from outside
                await reach(node)
            for node in NODES:  # each agent comes back at its own moment, 0.25 s after the one before
                await asyncio.sleep(0.25)
                await one(node)
            for _ in range(4):
                for node in NODES:
                    await one(node)
                await asyncio.sleep(1.0)
            found = await anomalies(agents_nc, settings)
    finally:
        await detector_nc.close()
        await agents_nc.close()
        for s in (server, restarted):
            if s is not None:
                s.stop()
    silent = [(a.node, a.kind, a.subject) for a in found if a.kind in ("node_down", "node_hang", "service_down")]
    assert silent == []
    assert violations(tmp_path) == []
