"""`nodeheal batch` with the people's `admin` credential against the real remediator under its own role
(deploy/nats/natsauth.py): the operator diagnosis is published, the node is cordoned, the batch reads its
progress from AUDIT, and the server logs no permission violation — no role was widened for it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodeheal.cli.main import cli
from nodeheal.remediator.handlers import RemediatorService
from nodeheal.remediator.settings import CloudSettings, KubeSettings, RemediatorSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import load_natsauth, per_role_server, violations
from tests.integration.remediator.harness import add_inventory

pytestmark = pytest.mark.nats


async def test_a_batch_cordon_runs_with_the_admin_credential_and_no_violation(tmp_path: Path) -> None:
    async with per_role_server(tmp_path, "remediator") as (server, nc, admin), KubeWorld() as world:
        for node in ("b1", "b2"):
            world.add_node(node, zone="z1", node_pool="batch-pool")
            await add_inventory(nc, admin, node, zone="z1", node_pool="batch-pool")
        service = RemediatorService(
            RemediatorSettings(
                nats=NatsSettings(
                    url=server.url,
                    creds_file=str(tmp_path / "remediator.creds"),
                    inbox_prefix=load_natsauth().inbox_prefix("remediator"),
                ),
                cluster="c1",
                instance="r-prod",
                ack_wait_s=3.0,
                retry_delay_s=0.5,
                kube=KubeSettings(api_url=world.url),
                cloud=CloudSettings(provider="none"),
            )
        )
        await service.start()
        try:
            args = ["batch", "cordon", "--selector", "nodeheal.io/node-pool=batch-pool", "--max-parallel", "2"]
            args += ["--json", "--cluster", "c1", "--kube-url", world.url, "--nats-url", server.url]
            args += ["--creds", str(tmp_path / "admin.creds")]
            result = await asyncio.to_thread(CliRunner().invoke, cli, args, catch_exceptions=False)
        finally:
            await service.stop()
        cordoned = world.cordoned_nodes()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"] == {"done": 2}
    assert cordoned == ["b1", "b2"]
    assert violations(tmp_path) == []
