"""Issue 13 item 2: the remediator verifies a repair under its production NATS role (deploy/nats/natsauth.py):
the fresh agent probes are read from the PROBES stream through an ordered consumer its role allows — no
core subscription on probe subjects — and the server logs no permission violation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodeheal.remediator.handlers import RemediatorService
from nodeheal.remediator.settings import CloudSettings, KubeSettings, RemediatorSettings
from nodeheal.runtime.settings import NatsSettings
from tests.integration.deploy.natsauth_loader import load_natsauth, per_role_server, violations
from tests.integration.remediator.harness import (
    Agent,
    add_inventory,
    audit_records,
    diagnosis,
    publish_diagnosis,
    publish_probe,
    wait_for_record,
)

pytestmark = pytest.mark.nats


async def test_verification_works_under_the_remediator_role(tmp_path: Path) -> None:
    async with per_role_server(tmp_path, "remediator") as (server, nc, admin):
        agent = Agent()
        await agent.serve(nc, admin, "p1")
        await add_inventory(nc, admin, "p1")
        settings = RemediatorSettings(
            nats=NatsSettings(
                url=server.url,
                creds_file=str(tmp_path / "remediator.creds"),
                inbox_prefix=load_natsauth().inbox_prefix("remediator"),
            ),
            cluster="c1",
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
        stop = asyncio.Event()

        async def probes() -> None:
            while not stop.is_set():
                await publish_probe(nc, admin, "p1")
                await asyncio.sleep(0.2)

        task = asyncio.create_task(probes())
        try:
            await publish_diagnosis(nc, admin, diagnosis("p1", [("restart_service", "kubelet"), "reboot"]))
            verified = await wait_for_record(nc, admin, phase="verified", node="p1", timeout=30)
        finally:
            stop.set()
            await task
            await service.stop()
        records = [r for r in await audit_records(nc, admin) if r.node == "p1"]
    assert verified.action == "restart_service" and "healthy agent probe" in verified.reason
    assert not [r for r in records if r.action == "reboot"]  # verification did not "fail" up the ladder
    assert [c.target for c in agent.commands] == ["kubelet"]
    assert violations(tmp_path) == []
