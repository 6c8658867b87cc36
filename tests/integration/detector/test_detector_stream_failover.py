"""The PROBES stream's leader dies in a three-server cluster: no healthy node is taken for a silent one.

Found in a `nodeheal demo --chaos --nats-cluster 3` run: the SIGKILLed server led PROBES, and the stream stored
nothing for 6.5 s until another server was elected. The detector's own connection (to another server) never
dropped and the other agents' probes came back the moment the new leader took them, so the detector judged
silence as usual: every node whose probes fell into the election (an agent keeps a refused probe and sends it
with its next one, an interval later) had been silent longer than 2.5 intervals. A fifth of the fleet went
`node_down` for a second; the diagnoser read that as rack and zone partitions and the remediator handed a
node that really had lost power to the network on-call instead of repairing it. Now a pause in what the stream
stored (the stored times of the probes the detector reads), far longer than the fleet's probes leave between
them, counts as the feed's outage: every node gets a full silence timeout from the end of it.

As deployed: three real nats-servers on loopback with the per-role authorization, streams at R3; the detector
under its role's credential and inbox prefix; 24 real node agents (`NodeAgent`, each on a fake node of its own, under
its node's credential, with deploy/'s publish timeout), probing every second: a refused probe is kept in the
agent's outbox and sent again with its next one. The
detector and the agents are connected to the two servers that survive, so no connection drops: only the
stream's leader is lost. A node that stops for good before the kill is still found down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from nodeheal.agent.app import PUBLISH_FAILURES, NodeAgent
from nodeheal.agent.settings import AgentSettings
from nodeheal.detector.rules import RuleConfig
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Anomaly
from nodeheal.sim.cluster import EmbeddedCluster
from tests.integration.deploy.natsauth_loader import load_natsauth, role_nats, write_auth
from tests.integration.detector.test_detector_nats import anomalies, started_runtime
from tests.unit.cloud_events.agent_fakenode import make_fake_node, statvfs_with

pytestmark = [pytest.mark.nats, pytest.mark.slow]

NODES = [f"n{i:02d}" for i in range(24)]
DEAD = "n00"  # stops probing for good before the kill: still found down
INTERVAL_S = 1.0


async def apart(nc: Client, stream: str, leader: str) -> None:
    """The detector's durable led by another server than the stream's leader: killed with the stream's leader,
    its own election holds every probe back until both are elected, and the detector then reads them all in one
    chunk, silences nobody, and the test says nothing."""
    js = nc.jetstream(timeout=10.0)
    for _ in range(50):
        info = await js.consumer_info(stream, "detector")
        if info.cluster is not None and info.cluster.leader not in (None, leader):
            return
        with contextlib.suppress(Exception):
            await nc.request(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.detector", b"", timeout=5.0)
        await asyncio.sleep(0.5)
    raise AssertionError("the detector's durable stayed on the PROBES leader's server")


async def test_a_probes_stream_leader_election_makes_no_healthy_node_silent(tmp_path: Path) -> None:
    bundle = write_auth(tmp_path, "detector")
    natsauth = load_natsauth()
    with EmbeddedCluster(3, log_dir=str(tmp_path), extra_config=(tmp_path / "auth.conf").read_text()) as cluster:
        admin = await nats.connect(cluster.url.split(","), user_credentials=str(tmp_path / "admin.creds"))
        settings = NatsSettings(url=cluster.url)
        connections: list[Client] = [admin]
        tasks: dict[str, asyncio.Task[None]] = {}
        agents: dict[str, NodeAgent] = {}
        failures_before = PUBLISH_FAILURES._value.get()
        try:
            js = admin.jetstream(timeout=30.0)
            await apply_topology(js, settings.topology(), replicas=3)
            probes_stream = settings.topology().stream(f"{settings.stream_prefix}PROBES").name
            leader = (await js.stream_info(probes_stream)).cluster.leader  # type: ignore[union-attr]
            doomed = next(i for i in range(3) if leader == f"{cluster.name}-{i}")
            survivors = ",".join(s.url for i, s in enumerate(cluster.servers) if i != doomed)
            options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.2}
            detector = role_nats(tmp_path, survivors, "detector")
            detector_nc = await connect(detector, name="detector", **options)
            connections.append(detector_nc)
            for node in NODES:  # the real agent on a fake node of its own, under its node's credential
                creds = tmp_path / f"agent-c1-{node}.creds"
                creds.write_text(bundle.user_creds("agent", cluster="c1", node=node))
                fake = make_fake_node(tmp_path / node, mounts=[("/dev/vda1", "/", "ext4", "rw,relatime")])
                fake.set_unit("kubelet.service", "active")
                settings_of = AgentSettings(
                    nats=NatsSettings(
                        url=survivors, creds_file=str(creds), inbox_prefix=natsauth.inbox_prefix("agent")
                    ),
                    cluster="c1",
                    node_name=node,
                    host_root=fake.root,
                    services=["kubelet"],
                    systemctl_command=[fake.systemctl],
                    state_dir=tmp_path / node / "agent-state",
                    interval_s=INTERVAL_S,
                    kernel_log="off",
                )
                agents[node] = NodeAgent(settings_of, statvfs=statvfs_with({"root": (50, 10)}))  # type: ignore[arg-type]
                await agents[node].start()
            rules = RuleConfig(probe_interval_s=INTERVAL_S, warmup_s=0.0, clear_probes=1)
            async with started_runtime(detector, detector_nc, rules):
                for node, agent in agents.items():  # each agent at its own phase of the interval
                    tasks[node] = asyncio.create_task(agent.run_probes())
                    await asyncio.sleep(INTERVAL_S / len(agents))
                await asyncio.sleep(4.0)  # a healthy fleet
                await apart(admin, probes_stream, leader)
                tasks[DEAD].cancel()  # DEAD's agent stops probing mid-loop: found down 2.5 intervals later
                await asyncio.sleep(0.5)
                cluster.kill(doomed)  # the PROBES leader: no probe is stored until another is elected
                started = time.monotonic()
                await asyncio.sleep(INTERVAL_S)
                while any(len(a.outbox) for n, a in agents.items() if n != DEAD):  # until every kept probe is stored
                    assert time.monotonic() - started < 60, "PROBES stored no probe for 60 s after the kill"
                    await asyncio.sleep(0.1)
                elected_after = time.monotonic() - started
                reader = await nats.connect(survivors.split(","), user_credentials=str(tmp_path / "admin.creds"))
                connections.append(reader)
                found: list[Anomaly] = []
                deadline = time.monotonic() + 30
                while not any(a.node == DEAD and a.kind == "node_down" for a in found):  # ANOMALIES may elect too
                    assert time.monotonic() < deadline, f"{DEAD}, silent since before the kill, never found down"
                    await asyncio.sleep(0.5)
                    with contextlib.suppress(Exception):
                        found = await anomalies(reader, settings)
                await asyncio.sleep(2 * INTERVAL_S)  # any other node's silence judged by now as well
                found = await anomalies(reader, settings)
                refused = int(PUBLISH_FAILURES._value.get() - failures_before)  # the agents' refused probes
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            for agent in agents.values():
                with contextlib.suppress(Exception):
                    await agent.stop()
            for nc in connections:
                await nc.close()
    # the election really kept probes out for longer than the fleet's own gaps (else the test proves nothing)
    assert elected_after > INTERVAL_S and refused > 0, (elected_after, refused)
    silent = sorted({a.node for a in found if a.kind in ("node_down", "node_hang", "service_down")})
    assert silent == [DEAD], f"healthy nodes taken for silent ones after a {elected_after:.1f} s election: {silent}"
    logs = [(tmp_path / f"nats-server-{i}.log").read_text() for i in range(3)]
    assert [line for log in logs for line in log.splitlines() if "Violation" in line] == []
