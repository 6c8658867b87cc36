"""Issue 13 item 2: the remediator verifies a repair under its production NATS role (deploy/nats/natsauth.py):
the fresh agent probes are read from the PROBES stream through an ordered consumer its role allows — no
core subscription on probe subjects — and the server logs no permission violation.

The node is served as deployed too: the real agent code under the node's own minted credential
(`natsauth.py mint-agent`) answers the restart and sends the probes that verify it; the restart is counted at
the fake node's systemctl."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodeheal.agent.app import NodeAgent
from nodeheal.remediator.handlers import RemediatorService
from nodeheal.remediator.settings import CloudSettings, KubeSettings, RemediatorSettings
from tests.integration.deploy.natsauth_loader import agent_nats, per_role_server, role_nats, violations
from tests.integration.remediator.harness import (
    CLUSTER,
    add_inventory,
    audit_records,
    diagnosis,
    publish_diagnosis,
    real_agent_with_a_dead_kubelet,
    wait_for_record,
)
from tests.unit.cloud_events.agent_fakenode import statvfs_with

pytestmark = pytest.mark.nats


async def test_verification_works_under_the_remediator_role(tmp_path: Path) -> None:
    async with per_role_server(tmp_path, "remediator", nodes=((CLUSTER, "p1"),)) as (server, nc, admin):
        fake, agent_settings = real_agent_with_a_dead_kubelet(
            agent_nats(tmp_path, server.url, CLUSTER, "p1"), "p1", tmp_path
        )
        agent = NodeAgent(agent_settings, statvfs=statvfs_with({"root": (50, 10)}))  # type: ignore[arg-type]
        await agent.start()
        probes = asyncio.create_task(agent.run_probes())
        await add_inventory(nc, admin, "p1")
        settings = RemediatorSettings(
            nats=role_nats(tmp_path, server.url, "remediator"),
            cluster=CLUSTER,
            instance="r-prod",
            ack_wait_s=3.0,
            retry_delay_s=0.5,
            verify_timeout_s=8.0,
            verify_poll_s=0.2,
            kube=KubeSettings(enabled=False),
            cloud=CloudSettings(provider="none"),
        )
        service = RemediatorService(settings)
        await service.start()
        try:
            await publish_diagnosis(nc, admin, diagnosis("p1", [("restart_service", "kubelet"), "reboot"]))
            verified = await wait_for_record(nc, admin, phase="verified", node="p1", timeout=30)
        finally:
            await service.stop()
            await agent.stop()
            await probes
        records = [r for r in await audit_records(nc, admin) if r.node == "p1"]
    assert verified.action == "restart_service" and "healthy agent probe" in verified.reason
    assert not [r for r in records if r.action == "reboot"]  # verification did not "fail" up the ladder
    assert fake.restarts_logged() == ["kubelet.service"]  # at the node, by the real agent, once
    assert agent.executor.executed == 1
    assert violations(tmp_path) == []
