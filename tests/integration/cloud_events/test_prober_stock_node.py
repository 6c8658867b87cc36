"""Reachability on a stock node (issue 13 item 7), end to end on a real nats-server: the real prober
checks real local listeners shaped like stock nodes (kubelet TLS on its port answering 401, plain
healthz on 127.0.0.1 only), the real detector turns agent silence into anomalies and the real
diagnoser names the cause. An agent outage on a node whose kubelet answers is `agent_down` (restart
the agent's pod, never a reboot); a node whose kubelet port accepts TCP but never answers is hung."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.client import Client

from nodeheal.cloud_events.prober.app import Prober
from nodeheal.cloud_events.prober.settings import ProberSettings
from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.rules import RuleConfig
from nodeheal.detector.settings import DetectorSettings
from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Diagnosis, NodeProbe
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from nodeheal.schemas.subjects import probe_subject
from tests.integration.deploy.natsauth_loader import per_role_server, role_nats, violations
from tests.integration.diagnoser.test_diagnoser_service import wait_for_diagnosis
from tests.unit.cloud_events.prober_targets import hung_listener, stock_kubelet
from tests.unit.diagnoser.scenarios import CLUSTER

pytestmark = pytest.mark.nats


async def agent_probe(nc: Client, settings: NatsSettings, node: str, seq: int) -> None:
    probe = NodeProbe(
        id=f"{node}-agent-{seq}",
        time=datetime.now(tz=UTC),
        cluster=CLUSTER,
        node=node,
        source="agent",
        seq=seq,
        boot_id="b1",
        ready=True,
    )
    await nc.jetstream().publish(
        probe_subject(CLUSTER, node, prefix=settings.prefix), probe.to_json(), headers={"Nats-Msg-Id": probe.id}
    )


async def test_agent_outage_on_a_stock_node_is_agent_down_and_a_hung_node_is_a_hang(tmp_path: Path) -> None:
    """Each service under its role's credential on a nats-server with the deployed per-role authorization; the
    test writes the inventory and the agents' last probes as admin."""
    directory = tmp_path / "nats"
    directory.mkdir()
    async with per_role_server(directory, "detector", "diagnoser", "prober") as (server, nc, s):
        detector_nc = await connect(role_nats(directory, server.url, "detector"), name="detector")
        diagnoser_nc = await connect(role_nats(directory, server.url, "diagnoser"), name="diagnoser")
        try:
            roles = {role: role_nats(directory, server.url, role) for role in ("detector", "diagnoser", "prober")}
            await _stock_node(nc, s, roles, detector_nc, diagnoser_nc, tmp_path)
        finally:
            await diagnoser_nc.close()
            await detector_nc.close()
    assert violations(directory) == []


async def _stock_node(
    nc: Client,
    s: NatsSettings,
    roles: dict[str, NatsSettings],
    detector_nc: Client,
    diagnoser_nc: Client,
    tmp_path: Path,
) -> None:
    js = nc.jetstream()
    kv = await js.key_value(f"{s.bucket_prefix}-inventory")
    nodes = {"agent-gone": "127.0.0.2", "hung": "127.0.0.3"}
    for i, (node, address) in enumerate(nodes.items()):
        inv = NodeInventory(cluster=CLUSTER, node=node, addresses=(address,), ready=True, rack=f"r{i}", zone="z1")
        await kv.put(inventory_key(CLUSTER, node), inv.to_json())

    detector = DetectorRuntime(
        settings=DetectorSettings(
            nats=roles["detector"],
            batch_size=100,
            tick_s=0.1,
            rules=RuleConfig(probe_interval_s=1.0, silence_recheck_s=0.5),
        ),
        nc=detector_nc,
    )
    diagnoser = DiagnoserRuntime(
        settings=DiagnoserSettings(
            nats=roles["diagnoser"], cluster=CLUSTER, tick_s=0.1, node_down_hold_s=0.5, fetch_timeout_s=0.3
        ),
        nc=diagnoser_nc,
    )
    async with (
        stock_kubelet(tmp_path, address=nodes["agent-gone"]) as kubelet,
        hung_listener(nodes["hung"], kubelet.port),
    ):
        # the prober as shipped, except the port (a free one instead of 10250) and a fast round
        defaults = ProberSettings()
        assert (defaults.tcp_ports, defaults.ssh_port) == ([10250], None)
        assert defaults.healthz_url == "https://{address}:10250/healthz"
        prober = Prober(
            ProberSettings(
                nats=roles["prober"],
                cluster=CLUSTER,
                tcp_ports=[kubelet.port],
                healthz_url=f"https://{{address}}:{kubelet.port}/healthz",
                interval_s=0.5,
                timeout_s=0.5,
            )
        )
        await detector.start()
        await diagnoser.start()
        await prober.start()
        rounds = asyncio.create_task(prober.run())
        try:
            for node in nodes:  # the agents report once, then fall silent
                await agent_probe(nc, s, node, 1)
            gone = await wait_for_diagnosis(nc, s, "agent-gone", lambda d: not d.resolved, timeout_s=30)
            hung = await wait_for_diagnosis(nc, s, "hung", lambda d: not d.resolved, timeout_s=30)
        finally:
            await prober.stop()
            rounds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rounds
            await diagnoser.stop()
            await detector.stop()

    assert (gone.cause, gone.category, gone.anomaly_kinds) == ("agent_down", "software", ("service_down",))
    assert [(r.action, r.target) for r in gone.recommended] == [("restart_agent", "nodeheal-agent"), ("escalate", None)]
    assert hung.cause == "node_hang" and hung.anomaly_kinds == ("node_hang",)
    assert not _reboots(gone)


def _reboots(d: Diagnosis) -> bool:
    return any(r.action in {"reboot", "redeploy", "drain", "cordon"} for r in d.recommended)
