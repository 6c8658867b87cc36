"""`nodeheal approve ACTION_ID` through the CLI entry point under the `admin` credential an operator uses, against
the real remediator under its role's credential on a real nats-server with the deployed per-role authorization: it approves only an action a ladder is waiting for (its last AUDIT record `awaiting_approval`),
and says so, exiting non-zero with nothing written, for an id no ladder waits for. Before, any `act-…` id
was written to the control bucket and reported "approved"."""

from __future__ import annotations

import asyncio
import re

import pytest
from click.testing import CliRunner, Result
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from nodeheal.cli.main import cli
from nodeheal.remediator.control import approval_key
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    Deployed,
    add_inventory,
    make_settings,
    mce_crash,
    publish_diagnosis,
    start_service,
    wait_for_record,
)

pytestmark = pytest.mark.nats


async def _approve(deployed: Deployed, action_id: str, *extra: str) -> Result:
    """The CLI as an operator runs it: the `admin` credential (docs/cli.md: approving writes the control bucket)."""
    settings = deployed.admin
    args = ["approve", action_id, *extra, "--nats-url", settings.url, "--by", "alice", *deployed.cli_creds()]
    args += ["--bucket-prefix", settings.bucket_prefix, "--prefix", settings.prefix]
    args += ["--stream-prefix", settings.stream_prefix]
    return await asyncio.to_thread(CliRunner().invoke, cli, args)


async def _approved(nc: Client, settings: NatsSettings, action_id: str) -> bool:
    kv = await nc.jetstream().key_value(f"{settings.bucket_prefix}-control")
    try:
        await kv.get(approval_key(action_id))
    except KeyNotFoundError:
        return False
    return True


async def test_approve_refuses_an_id_no_ladder_waits_for(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """n2's replace (ladder retire, replace) waits for approval. An unknown id is refused (AUDIT has no record of it); the waiting id is
    approved and the replace goes on; approving it again is refused (its last record is the replace's
    `intent` or later). Neither refused id is written to the control bucket."""
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "n2", zone="z1", node_pool="p1", cloud="alibaba", instance_id="i-n2")
    settings = make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint)
    settings.cloud.alibaba_launch_templates = {"p1": "lt-p1:2"}
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, mce_crash("n2", ["retire", "replace"]))
        waiting = await wait_for_record(nc, topology_ready, action="replace", phase="awaiting_approval", timeout=60)

        unknown = await _approve(deployed, "act-0123456789abcdef")
        assert unknown.exit_code == 1, unknown.output
        assert "no ladder is waiting for approval of act-0123456789abcdef" in unknown.output
        assert "has no record of it" in unknown.output and "Traceback" not in unknown.output
        assert not await _approved(nc, topology_ready, "act-0123456789abcdef")

        # the record names the command to run, the node included: only that node's AUDIT records are read
        command = re.search(r"nodeheal approve (act-\S+) --node (\S+)", waiting.reason)
        assert command is not None, waiting.reason
        assert command.groups() == (waiting.action_id, "c1/n2")
        elsewhere = await _approve(deployed, waiting.action_id, "--node", "c1/n9")
        assert elsewhere.exit_code == 1, elsewhere.output
        assert "has no record of it" in elsewhere.output and "on c1/n9 (--node)" in elsewhere.output
        assert not await _approved(nc, topology_ready, waiting.action_id)
        ok = await _approve(deployed, waiting.action_id, "--node", command.group(2))
        assert ok.exit_code == 0, ok.output
        assert f"approved {waiting.action_id} by alice" in ok.output
        await wait_for_record(nc, topology_ready, action="replace", phase="intent", timeout=30)
    finally:
        await service.stop()
    again = await _approve(deployed, waiting.action_id)
    assert again.exit_code == 1, again.output
    assert f"no ladder is waiting for approval of {waiting.action_id}" in again.output
    assert "its last record is replace " in again.output and "on c1/n2 at" in again.output
    assert "nothing approved" in again.output
    assert "Traceback" not in again.output
    assert deployed.violations() == []
