"""`nodeheal audit tail --durable NAME` only reads durables it made. Before, it bound to any durable of that
name: as admin (the CLI user the docs name) `--durable detector` acknowledged the live detector's AUDIT records,
which the detector then never got (it takes our own reboots for faults without them); under the reader
credential the server refused the fetches and the command stalled 30 s, then blamed the consumer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from click.testing import CliRunner, Result
from nats.js.api import AckPolicy, ConsumerConfig

from nodeheal.cli.main import cli
from nodeheal.runtime.jetstream import ensure_pull_consumer, publish_model
from tests.integration.deploy.natsauth_loader import per_role_server
from tests.unit.replay.factories import record, subject_of

pytestmark = pytest.mark.nats


async def _cli(url: str, creds: Path, *args: str) -> Result:
    env = {"NATS_URL": url, "NATS_CREDS": str(creds), "NATS_CA": ""}
    return await asyncio.to_thread(CliRunner().invoke, cli, ["audit", "tail", *args], env=env)


async def _records(url: str, creds: Path, n: int) -> None:
    rem = await nats.connect(url, user_credentials=str(creds), inbox_prefix="_INBOX.remediator")
    try:
        for i in range(n):
            r = record("node-x", t=i, phase="intent", action_id=f"act-{i}")
            await publish_model(rem.jetstream(), subject_of(r, "nodeheal"), r, msg_id=r.id)
    finally:
        await rem.close()


@pytest.mark.parametrize(("service", "creds"), [("detector", "admin"), ("diagnoser", "reader")])
async def test_a_services_durable_is_refused_and_left_untouched(tmp_path: Path, service: str, creds: str) -> None:
    async with per_role_server(tmp_path, "remediator", service, "reader") as (server, nc, _admin):
        own = await nats.connect(
            server.url, user_credentials=str(tmp_path / f"{service}.creds"), inbox_prefix=f"_INBOX.{service}"
        )
        try:
            await ensure_pull_consumer(own.jetstream(), stream="AUDIT", durable=service)
        finally:
            await own.close()
        await _records(server.url, tmp_path / "remediator.creds", 3)

        res = await _cli(server.url, tmp_path / f"{creds}.creds", "--durable", service)

        assert res.exit_code == 1
        assert f"durable {service!r} on AUDIT was not made by this command" in res.output
        assert "Pass another --durable NAME" in res.output
        info = await nc.jetstream().consumer_info("AUDIT", service)
        assert info.num_pending == 3 and info.num_ack_pending == 0 and not info.ack_floor.stream_seq


async def test_a_durable_made_before_the_mark_is_still_resumed(tmp_path: Path) -> None:
    """A subscriber's durable made by an earlier `audit tail` (no description, explicit acks, no delivery
    limit) keeps its place after the upgrade."""
    async with per_role_server(tmp_path, "remediator") as (server, nc, _admin):
        await _records(server.url, tmp_path / "remediator.creds", 3)
        await nc.jetstream().add_consumer(
            "AUDIT",
            config=ConsumerConfig(
                durable_name="ops", ack_policy=AckPolicy.EXPLICIT, filter_subject="nodeheal.audit.*.*"
            ),
        )
        first = await _cli(server.url, tmp_path / "admin.creds", "--durable", "ops")
        await _records(server.url, tmp_path / "remediator.creds", 4)  # one more: act-3
        second = await _cli(server.url, tmp_path / "admin.creds", "--durable", "ops")

        assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
        assert [f"act-{i}" in first.stdout for i in range(4)] == [True, True, True, False]
        assert [f"act-{i}" in second.stdout for i in range(4)] == [False, False, False, True]
